//! The tenants file followed while serving: a changed file applies without a restart; a bad one
//! keeps the old set, is counted (and logged with its line, by the binary), and health stays
//! SERVING. `paybridge tenant new` makes a tenant a running core then accepts; `tenant check`
//! says why a file would be refused.

use std::time::Duration;

use paybridge::pb::v1 as pb;
use tokio::process::Command;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::support::child::ServeProcess;
use crate::support::{
    BILLING_TOKEN, Db, ORDERS_TOKEN, TestApp, as_tenant, eventually, metric_sum, sha256_hex,
    tenants_toml,
};

const RELOAD_WITHIN: Duration = Duration::from_secs(10);

/// The code a list call as `token` gets: OK or why not.
async fn list_as(app: &TestApp, token: &str) -> Code {
    match app
        .client
        .clone()
        .list_payments(as_tenant(token, pb::ListPaymentsRequest::default()))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn health(app: &TestApp) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

/// A `[[tenants]]` table for `id` with the token `token`.
fn tenant_block(id: &str, token: &str) -> String {
    format!(
        "\n[[tenants]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n\
         allowed_redirect_origins = [\"https://{id}.example.com\"]\n\
         success_url = \"https://{id}.example.com/paid\"\n\
         failure_url = \"https://{id}.example.com/failed\"\n",
        sha256_hex(token)
    )
}

/// Writes the tenants file as Kubernetes updates a mounted Secret's file: a new file renamed over
/// the old one in one step (a reader sees the old file or the new one).
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("new file");
    std::fs::rename(&next, path).expect("swap");
}

async fn a_changed_tenants_file_applies_without_a_restart(db: Db) {
    let app = TestApp::spawn(db).await;
    assert_eq!(list_as(&app, "shop-token").await, Code::Unauthenticated);
    let current = std::fs::read_to_string(app.tenants_file()).expect("tenants file");
    // A tenant added, and orders' token rotated.
    let next = current.replace(&sha256_hex(ORDERS_TOKEN), &sha256_hex("orders-rotated"))
        + &tenant_block("shop", "shop-token");
    assert_ne!(next, current);
    replace_file(&app.tenants_file(), &next);

    eventually(RELOAD_WITHIN, || async {
        match list_as(&app, "shop-token").await {
            Code::Ok => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the new tenant is accepted");
    // The same set has orders' new token and not its old one; billing is untouched.
    assert_eq!(list_as(&app, "orders-rotated").await, Code::Ok);
    assert_eq!(list_as(&app, ORDERS_TOKEN).await, Code::Unauthenticated);
    assert_eq!(list_as(&app, BILLING_TOKEN).await, Code::Ok);
    assert_eq!(
        metric_sum(
            &app.admin_addr,
            "paybridge_config_reloads_total",
            "result=\"applied\""
        )
        .await,
        1
    );

    // A tenant removed is refused from then on.
    replace_file(&app.tenants_file(), &current);
    eventually(RELOAD_WITHIN, || async {
        match list_as(&app, "shop-token").await {
            Code::Unauthenticated => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the removed tenant is refused");
    assert_eq!(list_as(&app, ORDERS_TOKEN).await, Code::Ok);
}

async fn a_bad_tenants_file_keeps_the_old_set_and_health_stays_serving(db: Db) {
    let app = TestApp::spawn(db).await;
    eventually(RELOAD_WITHIN, || async {
        match health(&app).await {
            ServingStatus::Serving => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("serving");
    let good = std::fs::read_to_string(app.tenants_file()).expect("tenants file");
    // shop's success URL lies outside its origins; and it would add a tenant.
    let bad = good.clone()
        + &tenant_block("shop", "shop-token").replace(
            "https://shop.example.com/paid",
            "https://evil.example.com/paid",
        );
    replace_file(&app.tenants_file(), &bad);
    eventually(RELOAD_WITHIN, || async {
        match metric_sum(
            &app.admin_addr,
            "paybridge_config_file_rejected",
            "file=\"tenants\"",
        )
        .await
        {
            1 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the bad file is refused");
    assert_eq!(
        metric_sum(
            &app.admin_addr,
            "paybridge_config_reloads_total",
            "result=\"rejected\""
        )
        .await,
        1
    );
    assert_eq!(list_as(&app, BILLING_TOKEN).await, Code::Ok, "old set kept");
    assert_eq!(list_as(&app, "shop-token").await, Code::Unauthenticated);
    assert_eq!(health(&app).await, ServingStatus::Serving);

    // A file that makes a tenant's token the gateway's is refused too.
    let gateway = good.replace(
        &sha256_hex(ORDERS_TOKEN),
        &sha256_hex(crate::support::GATEWAY_TOKEN),
    );
    replace_file(&app.tenants_file(), &gateway);
    eventually(RELOAD_WITHIN, || async {
        match metric_sum(
            &app.admin_addr,
            "paybridge_config_reloads_total",
            "result=\"rejected\"",
        )
        .await
        {
            2 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the gateway's token is refused");
    assert_eq!(list_as(&app, ORDERS_TOKEN).await, Code::Ok);

    // Fixed again: applied, the flag goes back to 0.
    replace_file(
        &app.tenants_file(),
        &(good + &tenant_block("shop", "shop-token")),
    );
    eventually(RELOAD_WITHIN, || async {
        match list_as(&app, "shop-token").await {
            Code::Ok => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the fixed file applies");
    assert_eq!(
        metric_sum(
            &app.admin_addr,
            "paybridge_config_file_rejected",
            "file=\"tenants\""
        )
        .await,
        0
    );
    assert_eq!(health(&app).await, ServingStatus::Serving);
}

async fn a_tenant_made_by_tenant_new_is_accepted_by_a_running_core(db: Db) {
    let app = TestApp::spawn(db).await;
    let output = Command::new(env!("CARGO_BIN_EXE_paybridge"))
        .args([
            "tenant",
            "new",
            "shop",
            "--origin",
            "https://shop.example.com",
            "--origin",
            "shopapp:",
            "--success-url",
            "https://shop.example.com/paid",
            "--failure-url",
            "shopapp://failed",
        ])
        .env_clear()
        .output()
        .await
        .expect("tenant new runs");
    assert!(output.status.success(), "{output:?}");
    let block = String::from_utf8(output.stdout).expect("utf-8");
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    let token = stderr
        .lines()
        .find(|line| line.starts_with("pbt_"))
        .expect("the token, on its own line")
        .to_owned();
    assert!(!block.contains(&token), "stdout holds only the hash");
    assert!(block.contains(&sha256_hex(&token)), "{block}");
    assert_eq!(stderr.matches(&token).count(), 1, "shown once");

    let mut text = std::fs::read_to_string(app.tenants_file()).expect("tenants file");
    text.push('\n');
    text.push_str(&block);
    replace_file(&app.tenants_file(), &text);
    eventually(RELOAD_WITHIN, || async {
        match list_as(&app, &token).await {
            Code::Ok => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the new tenant's token works");
}

on_both_databases!(
    a_changed_tenants_file_applies_without_a_restart,
    a_bad_tenants_file_keeps_the_old_set_and_health_stays_serving,
    a_tenant_made_by_tenant_new_is_accepted_by_a_running_core,
);

/// `paybridge tenant check FILE`: exit code, stdout and stderr.
async fn tenant_check(path: &std::path::Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_paybridge"))
        .args(["tenant", "check"])
        .arg(path)
        .env_clear()
        .output()
        .await
        .expect("tenant check runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).expect("utf-8"),
        String::from_utf8(output.stderr).expect("utf-8"),
    )
}

#[tokio::test]
async fn tenant_check_passes_a_good_file_and_names_the_line_of_a_bad_one() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tenants.toml");
    std::fs::write(&path, tenants_toml()).expect("file");
    let (ok, stdout, _) = tenant_check(&path).await;
    assert!(ok);
    assert!(stdout.contains("2 tenants (billing, orders)"), "{stdout}");

    let bad = tenants_toml().replace(
        "success_url = \"https://orders.example.com/thanks\"",
        "success_url = \"https://evil.example.com/thanks\"",
    );
    let line = bad
        .lines()
        .position(|l| l.contains("evil.example.com"))
        .expect("the bad line")
        + 1;
    std::fs::write(&path, bad).expect("file");
    let (ok, stdout, stderr) = tenant_check(&path).await;
    assert!(!ok, "exits non-zero");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("line {line}: tenant orders: success_url")),
        "{stderr}"
    );

    let (ok, _, stderr) = tenant_check(&dir.path().join("absent.toml")).await;
    assert!(!ok);
    assert!(stderr.contains("absent.toml"), "{stderr}");
}

/// The binary logs a refused file with the line at fault, and keeps serving the old set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_a_refused_tenants_file_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = crate::support::LocalStripe::start().await;
    let database_url = format!("sqlite:{}", dir.path().join("paybridge.db").display());
    let serve = ServeProcess::new(dir.path(), database_url, stripe.base_url.clone())
        .env("PAYBRIDGE_RELOAD_INTERVAL", "100ms");
    let mut running = serve.start().await;
    let path = dir.path().join("tenants.toml");
    let bad = tenants_toml().replacen("token_sha256", "token_sha265", 1);
    let line = bad
        .lines()
        .position(|l| l.contains("token_sha265"))
        .expect("the bad line")
        + 1;
    replace_file(&path, &bad);
    eventually(RELOAD_WITHIN, || async {
        match metric_sum(
            &serve.admin_addr,
            "paybridge_config_file_rejected",
            "file=\"tenants\"",
        )
        .await
        {
            1 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("refused");
    let mut client = serve.client();
    client
        .list_payments(as_tenant(BILLING_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("the old set still serves");
    running.child.kill().await.expect("stopped");
    let log = running.log.await.expect("log").join("\n");
    assert!(
        log.contains(&format!("line {line}: unknown field `token_sha265`")),
        "{log}"
    );
    assert!(log.contains("keeping the previous one"), "{log}");
}
