//! One Stripe budget per account across replicas: three `paybridge serve` processes (the built
//! binary) on one PostgreSQL share `PAYBRIDGE_STRIPE_MAX_RPS`. Creates and unsettled returns are
//! driven at each as hard as they go; the Stripe fake counts what arrives, each replica telling
//! itself apart by its own secret key. No one-second window carries more than the budget and the
//! replicas' bursts, none is starved, and once one is killed the two others take up its share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::child::ServeProcess;
use crate::support::{
    BILLING_TOKEN, GATEWAY_TOKEN, LocalStripe, as_tenant, count_rows, create_request, eventually,
};
use paybridge::pb::v1 as pb;
use tonic::Code;

/// The account's budget, requests per second.
const BUDGET: u64 = 30;
const REPLICAS: usize = 3;
/// The documented burst: each replica's bucket holds a tenth of its share, at least one request
/// (three shares of 10/s: 1 each; two of 15/s: 1 each).
const BURST: u64 = 3;
/// Callers per replica for each of creates and returns.
const CALLERS: usize = 6;
/// How long the three run under load before one is killed.
const LOAD: Duration = Duration::from_secs(20);
/// How long the two others run after the kill.
const AFTER_KILL: Duration = Duration::from_secs(15);
/// Within this of the kill, the two others send at the whole budget.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(10);
/// How late a request may reach the Stripe fake after it left its replica's budget: a loaded
/// machine (the whole suite on two cores) holds up a replica's runtime or the fake's one Python
/// thread, and the requests held up arrive together. On an idle machine the busiest second is
/// within the budget plus the burst (the figure is printed); the assertion allows each window
/// the requests this lateness can crowd into it.
const LATE_BY_AT_MOST_MS: u64 = 500;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn key_of(replica: usize) -> String {
    format!("sk_test_shared_budget_r{replica:02}")
}

/// The fake logs the last 4 characters of each request's key.
fn tail_of(replica: usize) -> String {
    let key = key_of(replica);
    key[key.len() - 4..].to_owned()
}

/// Calls answered, and refusals by code.
#[derive(Default)]
struct Load {
    answered: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl Load {
    fn refused(&self, status: &tonic::Status) {
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ),
            "{status:?}"
        );
        *self
            .refused
            .lock()
            .expect("lock")
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
    }
}

/// Creates with fresh keys until `stop`; each payment made joins `made`.
async fn create_until(
    serve: ServeProcess,
    name: String,
    stop: Arc<AtomicBool>,
    made: Arc<Mutex<Vec<(String, String)>>>,
    load: Arc<Load>,
) {
    let grpc = serve.client();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let request = as_tenant(
            BILLING_TOKEN,
            create_request(&format!("{name}-{n}"), &format!("INV-{name}-{n}")),
        );
        match grpc.clone().create_invoice_payment(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                let payment = answer.payment.expect("payment");
                made.lock()
                    .expect("lock")
                    .push((payment.stripe_payment_intent_id, answer.client_secret));
                load.answered.fetch_add(1, Ordering::SeqCst);
            }
            // The replica was killed under this call.
            Err(_) if stop.load(Ordering::SeqCst) => {}
            Err(status) => load.refused(&status),
        }
    }
}

/// Verifies returns of the replica's unsettled payments, in turn, until `stop`: each reads its
/// intent at Stripe.
async fn return_until(
    serve: ServeProcess,
    caller: usize,
    stop: Arc<AtomicBool>,
    made: Arc<Mutex<Vec<(String, String)>>>,
    load: Arc<Load>,
) {
    let grpc = serve.client();
    let mut turn = caller;
    while !stop.load(Ordering::SeqCst) {
        let next = {
            let made = made.lock().expect("lock");
            (!made.is_empty()).then(|| made[turn % made.len()].clone())
        };
        let Some((intent, secret)) = next else {
            // Nothing made yet on this replica.
            tokio::task::yield_now().await;
            continue;
        };
        turn += CALLERS;
        let request = as_tenant(
            GATEWAY_TOKEN,
            pb::VerifyReturnRequest {
                payment_intent: intent,
                payment_intent_client_secret: secret,
                redirect_status: "succeeded".to_owned(),
            },
        );
        match grpc.clone().verify_return(request).await {
            Ok(_) => {
                load.answered.fetch_add(1, Ordering::SeqCst);
            }
            // The replica was killed under this call.
            Err(_) if stop.load(Ordering::SeqCst) => {}
            Err(status) => load.refused(&status),
        }
    }
}

/// The most requests among `arrivals` (sorted, unix ms) in any window of `width_ms`, and where
/// that window starts.
fn busiest_window(arrivals: &[u64], width_ms: u64) -> (u64, u64) {
    let mut best = (0, 0);
    let mut first = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while arrivals[first] + width_ms <= *at {
            first += 1;
        }
        let count = (last - first + 1) as u64;
        if count > best.0 {
            best = (count, arrivals[first]);
        }
    }
    best
}

/// Requests arriving in `[from, to)` (unix ms).
fn between(arrivals: &[u64], from: u64, to: u64) -> u64 {
    arrivals
        .iter()
        .filter(|at| (from..to).contains(*at))
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_share_one_stripe_budget() {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = crate::support::postgres::fresh_database().await;
    let mut serves = Vec::new();
    let mut running = Vec::new();
    for replica in 0..REPLICAS {
        let serve = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
            .env("PAYBRIDGE_STRIPE_SECRET_KEY", &key_of(replica))
            .env("PAYBRIDGE_STRIPE_MAX_RPS", &BUDGET.to_string());
        running.push(serve.start().await);
        serves.push(serve);
    }
    // Each has taken its third once the last one joined (the first two gave up part of theirs).
    let third = 1_000_000 / REPLICAS as i64;
    eventually(Duration::from_secs(10), || async {
        let settled = count_rows(
            &database_url,
            &format!("select count(*) from stripe_budget_share where share_ppm >= {third}"),
        )
        .await;
        if settled == REPLICAS as i64 {
            Ok(())
        } else {
            Err(settled)
        }
    })
    .await
    .expect("three replicas with a third each");

    let load = Arc::new(Load::default());
    let stops: Vec<Arc<AtomicBool>> = (0..REPLICAS)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let started = unix_ms();
    let mut callers = Vec::new();
    for (replica, serve) in serves.iter().enumerate() {
        let made = Arc::new(Mutex::new(Vec::new()));
        for caller in 0..CALLERS {
            callers.push(tokio::spawn(create_until(
                serve.clone(),
                format!("r{replica}c{caller}"),
                Arc::clone(&stops[replica]),
                Arc::clone(&made),
                Arc::clone(&load),
            )));
            callers.push(tokio::spawn(return_until(
                serve.clone(),
                caller,
                Arc::clone(&stops[replica]),
                Arc::clone(&made),
                Arc::clone(&load),
            )));
        }
    }
    tokio::time::sleep(LOAD).await;
    // kill -9 the last replica; its callers stop.
    let killed = REPLICAS - 1;
    stops[killed].store(true, Ordering::SeqCst);
    running.pop().expect("running").kill9().await;
    let killed_at = unix_ms();
    tokio::time::sleep(AFTER_KILL).await;
    for stop in &stops {
        stop.store(true, Ordering::SeqCst);
    }
    let ended = unix_ms();
    for caller in callers {
        caller.await.expect("caller");
    }

    let log = stripe.requests_since(started).await;
    let mut all = Vec::new();
    let mut by_replica: Vec<Vec<u64>> = vec![Vec::new(); REPLICAS];
    for request in &log {
        let arrived =
            request["at_ms"].as_u64().expect("at_ms") - request["ms"].as_u64().expect("ms");
        if arrived >= ended {
            continue;
        }
        let tail = request["key_tail"].as_str().unwrap_or_default();
        let replica = (0..REPLICAS)
            .find(|r| tail_of(*r) == tail)
            .unwrap_or_else(|| panic!("a request of another key: {request}"));
        by_replica[replica].push(arrived);
        all.push(arrived);
    }
    all.sort_unstable();
    for arrivals in &mut by_replica {
        arrivals.sort_unstable();
    }

    let (busiest, at) = busiest_window(&all, 1000);
    let (busiest_5s, at_5s) = busiest_window(&all, 5000);
    // Before the kill: each replica's rate, from the moment every caller was busy.
    let steady_from = started + 2_000;
    let steady_secs = (killed_at - steady_from) as f64 / 1000.0;
    let rates: Vec<f64> = by_replica
        .iter()
        .map(|arrivals| between(arrivals, steady_from, killed_at) as f64 / steady_secs)
        .collect();
    // After the kill: the two others, second by second.
    let survivors: Vec<u64> = {
        let mut arrivals: Vec<u64> = by_replica[..killed].concat();
        arrivals.sort_unstable();
        arrivals
    };
    let per_second_after: Vec<u64> = (0..AFTER_KILL.as_secs())
        .map(|s| between(&survivors, killed_at + s * 1000, killed_at + (s + 1) * 1000))
        .collect();
    let taken_over_in = per_second_after
        .iter()
        .position(|count| *count * 10 >= BUDGET * 9)
        .map(|s| s + 1);
    let late_from = killed_at + TAKE_OVER_WITHIN.as_millis() as u64;
    let late_secs = (ended - late_from) as f64 / 1000.0;
    let late_rates: Vec<f64> = by_replica[..killed]
        .iter()
        .map(|arrivals| between(arrivals, late_from, ended) as f64 / late_secs)
        .collect();
    eprintln!(
        "shared Stripe budget {BUDGET}/s, burst {BURST}: {} Stripe requests, {} calls answered, \
         refused {:?}; busiest one-second window {busiest} (from {at}), five-second window \
         {busiest_5s} (from {at_5s}); before the kill per \
         replica {rates:.1?}/s; after the kill, the two others per second {per_second_after:?} \
         (at 90 % of the budget after {taken_over_in:?} s), {late_rates:.1?}/s from {} s on",
        all.len(),
        load.answered.load(Ordering::SeqCst),
        load.refused.lock().expect("lock"),
        TAKE_OVER_WITHIN.as_secs(),
    );

    // In any window of w seconds: at most w × the budget plus the burst, plus what arrived late
    // from before the window.
    let late_allowance = BUDGET * LATE_BY_AT_MOST_MS / 1000;
    assert!(
        busiest <= BUDGET + BURST + late_allowance,
        "{busiest} Stripe requests in the second from {at}: over {BUDGET}/s plus a burst of \
         {BURST} (and {late_allowance} late)"
    );
    assert!(
        busiest_5s <= 5 * BUDGET + BURST + late_allowance,
        "{busiest_5s} Stripe requests in the five seconds from {at_5s}: over {BUDGET}/s plus a \
         burst of {BURST} (and {late_allowance} late)"
    );
    let fair = BUDGET as f64 / REPLICAS as f64;
    for (replica, rate) in rates.iter().enumerate() {
        assert!(
            *rate >= fair / 4.0,
            "replica {replica} starved: {rate:.1}/s of a fair {fair:.1}/s"
        );
    }
    let whole_after: f64 = late_rates.iter().sum();
    assert!(
        whole_after >= BUDGET as f64 * 0.85,
        "{TAKE_OVER_WITHIN:?} after the kill the two others send {whole_after:.1}/s of {BUDGET}/s"
    );
    for (replica, rate) in late_rates.iter().enumerate() {
        assert!(
            *rate > fair * 1.2,
            "replica {replica} did not take up part of the killed one's share: {rate:.1}/s"
        );
    }
    for running in running {
        running.kill9().await;
    }
}
