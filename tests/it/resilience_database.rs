//! The database failing under load. PostgreSQL (a cluster of this test's own) stopped and started
//! again while clients create: health goes NOT_SERVING, calls fail UNAVAILABLE, and paybridge
//! recovers by itself. SQLite: many concurrent writers and a lock held by another connection are
//! waited out, never answered with an error.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Db, Options, TestApp, create_request, eventually};
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A PostgreSQL cluster for one test, stopped and removed on drop.
struct OwnCluster {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres")
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let dir = tempfile::tempdir().expect("dir");
        let output = Command::new(script())
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .expect("throwaway-postgres");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .expect("url")
            .to_owned();
        OwnCluster { dir, url }
    }

    /// `pg_ctl` on the cluster's data directory, as its owner (the script's layout).
    fn pg_ctl(&self, args: &[&str]) {
        let pg = self.dir.path().join("pg");
        let cluster = std::fs::read_to_string(pg.join("cluster-path"))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|_| pg.join("cluster"));
        let bindir = String::from_utf8(
            Command::new("pg_config")
                .arg("--bindir")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
        .trim()
        .to_owned();
        let bindir = if bindir.is_empty() || !PathBuf::from(&bindir).join("pg_ctl").exists() {
            std::fs::read_dir("/usr/lib/postgresql")
                .expect("postgresql installed")
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("pg_ctl").exists())
                .max()
                .expect("pg_ctl")
        } else {
            PathBuf::from(bindir)
        };
        let pg_ctl = bindir.join("pg_ctl");
        let data = cluster.join("data");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = command
            .current_dir(&cluster)
            .args(args)
            .arg("-D")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {args:?}");
    }
}

impl OwnCluster {
    /// Starts the stopped cluster on its old port, with the options the script uses.
    fn start_again(&self) {
        let port = std::fs::read_to_string(self.dir.path().join("pg/port")).expect("port");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            port.trim()
        );
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", "/dev/null", "-o", &options]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

async fn health(app: &TestApp) -> Option<ServingStatus> {
    let mut client = HealthClient::new(app.channel.clone());
    let check = client.check(tonic_health::pb::HealthCheckRequest {
        service: "paybridge.v1.PaymentService".to_owned(),
    });
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(answer)) => ServingStatus::try_from(answer.into_inner().status).ok(),
        _ => None,
    }
}

/// Whether health reports `want` within `within`.
async fn wait_for_health(app: &TestApp, want: ServingStatus, within: Duration) -> bool {
    eventually(within, || async {
        match health(app).await {
            Some(status) if status == want => Ok(()),
            other => Err(other),
        }
    })
    .await
    .is_ok()
}

/// Waits (at most 30 s) until `counter` has grown past `from`.
async fn wait_for_more(counter: &AtomicU64, from: u64, what: &str) {
    eventually(Duration::from_secs(30), || async {
        match counter.load(Ordering::SeqCst) {
            now if now > from => Ok(()),
            now => Err(now),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 30 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_is_unavailable_then_recovers_without_a_restart() {
    let cluster = OwnCluster::start();
    let app =
        Arc::new(TestApp::spawn_on(Db::Postgres, Options::default(), cluster.url.clone()).await);
    assert!(wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(10)).await);

    // The outage's phase: 0 before, 1 while the server is stopped (set once the stop has
    // finished, cleared before it starts again), 2 after.
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Calls sent while the server is stopped, and calls that succeeded.
    let sent_while_down = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (app, phase, stop) = (Arc::clone(&app), Arc::clone(&phase), Arc::clone(&stop));
        let (sent_while_down, succeeded) = (Arc::clone(&sent_while_down), Arc::clone(&succeeded));
        clients.push(tokio::spawn(async move {
            let (mut ok, mut waited, mut unavailable, mut other) = (0u64, 0u64, 0u64, Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("pg-{client}-{n}");
                let sent_in = phase.load(Ordering::SeqCst);
                if sent_in == 1 {
                    sent_while_down.fetch_add(1, Ordering::SeqCst);
                }
                let result = app.create(create_request(&key, &key)).await;
                let answered_in = phase.load(Ordering::SeqCst);
                if result.is_ok() {
                    succeeded.fetch_add(1, Ordering::SeqCst);
                }
                match result {
                    Ok(_) if answered_in == 1 => {
                        other.push(format!("{key} succeeded while the database was down"))
                    }
                    // In flight during the outage, answered once the database was back: the
                    // call waited for a connection instead of failing.
                    Ok(_) if sent_in <= 1 && answered_in == 2 => waited += 1,
                    Ok(_) => ok += 1,
                    Err(status) if status.code() == Code::Unavailable => unavailable += 1,
                    Err(status) => other.push(format!(
                        "{key} (sent in phase {sent_in}, answered in {answered_in}): {status:?}"
                    )),
                }
                // The load's pace: about 50 calls a second per client.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, waited, unavailable, other)
        }));
    }
    wait_for_more(&succeeded, 0, "no create succeeded before the outage").await;

    // Stop (fast: open sessions are terminated, as in a failover), wait, start on the same port.
    cluster.pg_ctl(&["stop", "-m", "fast", "-w"]);
    phase.store(1, Ordering::SeqCst);
    let not_serving =
        wait_for_health(&app, ServingStatus::NotServing, Duration::from_secs(5)).await;
    wait_for_more(&sent_while_down, 0, "no call was sent during the outage").await;
    let health_while_down = health(&app).await;
    phase.store(2, Ordering::SeqCst);
    cluster.start_again();
    let serving_again =
        wait_for_health(&app, ServingStatus::Serving, Duration::from_secs(15)).await;
    let succeeded_before_end = succeeded.load(Ordering::SeqCst);
    wait_for_more(
        &succeeded,
        succeeded_before_end,
        "no create succeeded after the restart",
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let (mut ok, mut waited, mut unavailable, mut other) = (0, 0, 0, Vec::new());
    for client in clients {
        let (o, w, u, x) = client.await.expect("client");
        ok += o;
        waited += w;
        unavailable += u;
        other.extend(x);
    }
    // After the outage, a fresh create on the same paybridge works.
    let after = app.create(create_request("pg-after", "pg-after")).await;
    eprintln!(
        "postgres restart: {} calls, {ok} ok, {waited} in flight while down and answered after, \
         {unavailable} UNAVAILABLE, {} other; health NOT_SERVING while down: {not_serving} \
         ({health_while_down:?}), SERVING again: {serving_again}",
        ok + waited + unavailable + other.len() as u64,
        other.len()
    );
    assert!(not_serving, "health did not go NOT_SERVING");
    assert!(serving_again, "health did not come back without a restart");
    assert!(
        other.is_empty(),
        "calls failed otherwise than UNAVAILABLE: {other:#?}"
    );
    // Every call in flight during the outage either failed UNAVAILABLE or waited for the
    // database (none succeeded while it was down: checked above); some were.
    assert!(
        unavailable + waited > 0,
        "no call was in flight during the outage"
    );
    after.expect("creates work again after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_and_locked_are_waited_out_not_answered_as_errors() {
    let app = Arc::new(TestApp::spawn(Db::Sqlite).await);
    // Another process's connection holds the write lock for 1.5 s while 64 writers arrive.
    let mut holder = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .expect("second connection");
    sqlx::query("begin immediate")
        .execute(&mut holder)
        .await
        .expect("lock");
    let started = Instant::now();
    let mut writers = Vec::new();
    for n in 0..64 {
        let app = Arc::clone(&app);
        writers.push(tokio::spawn(async move {
            let key = format!("busy-{n}");
            let created = app.create(create_request(&key, &key)).await?;
            let id = created.payment.expect("payment").id;
            // A write that is not a create: cancel every fourth one.
            if n % 4 == 0 {
                app.cancel(&id).await?;
            }
            app.get(&id, false).await.map(|_| ())
        }));
    }
    // The lock's hold is the scenario: longer than a write usually waits, shorter than the wait
    // paybridge allows for the lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let through = writers.iter().filter(|w| w.is_finished()).count();
    assert_eq!(
        through, 0,
        "{through} writers finished while another connection held the write lock"
    );
    sqlx::query("commit")
        .execute(&mut holder)
        .await
        .expect("unlock");
    let mut errors = Vec::new();
    for writer in writers {
        if let Err(status) = writer.await.expect("writer") {
            errors.push(status);
        }
    }
    eprintln!(
        "sqlite busy: 64 concurrent writers (+16 cancels, 64 reads) behind a 1.5 s lock: {} errors, {:?} in all",
        errors.len(),
        started.elapsed()
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(app.stripe.payment_intents().await.len(), 64);
}
