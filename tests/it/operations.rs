//! Operating paybridge: health, reflection, migrations, configuration errors, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;
use crate::support::{Db, TestApp, eventually};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_status(app: &TestApp, service: &str) -> ServingStatus {
    let answer = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    answer.status()
}

async fn health_is_serving_once_the_database_is_migrated(db: Db) {
    let app = TestApp::spawn(db).await;
    eventually(Duration::from_secs(10), || async {
        match health_status(&app, "paybridge.v1.PaymentService").await {
            ServingStatus::Serving => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the payment service is SERVING within 10 s");
    assert_eq!(health_status(&app, "").await, ServingStatus::Serving);
    app.stop().await.expect("stops cleanly");
}

/// The service names reflection lists over one of its versions (`v1` or `v1alpha`).
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect(concat!("reflection ", stringify!($version)))
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("stream")
            .expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer {answer:?}");
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
    }};
}

/// Both reflection versions answer (clients such as Python's grpcio-reflection speak only
/// `v1alpha`), and each lists every service.
async fn reflection_lists_the_services_over_v1_and_v1alpha(db: Db) {
    let app = TestApp::spawn(db).await;
    let v1 = reflected_services!(v1, app.channel.clone());
    let v1alpha = reflected_services!(v1alpha, app.channel.clone());
    for names in [v1, v1alpha] {
        for service in [
            "paybridge.v1.PaymentService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                names.iter().any(|name| name == service),
                "{service} in {names:?}"
            );
        }
    }
}

async fn metrics_count_calls_stripe_requests_and_transitions_without_ids_or_secrets(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(support::create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    app.get("pay_aaaaaaaaaaaaaaaaaaaaaaaaaa", false)
        .await
        .expect_err("not found");
    let text = reqwest::get(format!("http://{}/metrics", app.admin_addr))
        .await
        .expect("metrics endpoint")
        .text()
        .await
        .expect("text");
    for expected in [
        r#"paybridge_grpc_requests_total{method="CreateInvoicePayment",code="OK"} 1"#,
        r#"paybridge_grpc_requests_total{method="GetPayment",code="NOT_FOUND"} 1"#,
        r#"paybridge_stripe_requests_total{operation="POST /v1/payment_intents",outcome="ok"} 1"#,
        r#"paybridge_payment_transitions_total{from="creating",to="requires_payment_method",source="create"}"#,
        "paybridge_grpc_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    for secret_or_id in [
        answer.client_secret.as_str(),
        payment.id.as_str(),
        payment.stripe_payment_intent_id.as_str(),
        "sk_test",
    ] {
        assert!(
            !text.contains(secret_or_id),
            "{secret_or_id} leaked into metrics"
        );
    }
}

on_both_databases!(
    metrics_count_calls_stripe_requests_and_transitions_without_ids_or_secrets,
    health_is_serving_once_the_database_is_migrated,
    reflection_lists_the_services_over_v1_and_v1alpha,
);

// The binary itself, as an operator runs it (SQLite: no cluster needed).

fn paybridge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paybridge"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn write_tenants(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(&path, support::tenants_toml()).expect("tenants file");
    path
}

#[test]
fn migrate_creates_the_sqlite_file_and_is_repeatable() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("fresh.db");
    for _ in 0..2 {
        let output = paybridge()
            .args([
                "migrate",
                "--database-url",
                &format!("sqlite:{}", db.display()),
            ])
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(db.exists());
}

#[test]
fn a_bad_configuration_stops_start_up_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().expect("dir");
    let tenants = write_tenants(dir.path());
    let secret = "sk_test_must_never_be_printed";
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![(
                "PAYBRIDGE_TENANTS_FILE",
                dir.path().join("missing.toml").display().to_string(),
            )],
            "PAYBRIDGE_TENANTS_FILE",
        ),
        (
            vec![
                ("PAYBRIDGE_TENANTS_FILE", tenants.display().to_string()),
                (
                    "PAYBRIDGE_STRIPE_SECRET_KEY",
                    "pk_test_wrong_kind".to_owned(),
                ),
            ],
            "PAYBRIDGE_STRIPE_SECRET_KEY",
        ),
        (
            vec![
                ("PAYBRIDGE_TENANTS_FILE", tenants.display().to_string()),
                ("PAYBRIDGE_RECONCILE_NONSENSE", String::new()),
                ("PAYBRIDGE_STRIPE_TIMEOUT", "ten seconds".to_owned()),
            ],
            "PAYBRIDGE_STRIPE_TIMEOUT",
        ),
        (
            vec![
                ("PAYBRIDGE_TENANTS_FILE", tenants.display().to_string()),
                ("PAYBRIDGE_DATABASE_URL", "mysql://db/paybridge".to_owned()),
            ],
            "PAYBRIDGE_DATABASE_URL",
        ),
    ];
    for (overrides, setting) in cases {
        let mut command = paybridge();
        command
            .current_dir(dir.path())
            .arg("serve")
            .env("PAYBRIDGE_STRIPE_SECRET_KEY", secret)
            .env("PAYBRIDGE_STRIPE_PUBLISHABLE_KEY", "pk_test_x")
            .env("PAYBRIDGE_GRPC_ADDR", "127.0.0.1:0");
        for (name, value) in &overrides {
            command.env(name, value);
        }
        let output = command.output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting}: started anyway");
        assert!(
            stderr.contains(setting)
                || stderr.contains(
                    &setting
                        .replace("PAYBRIDGE_", "--")
                        .to_lowercase()
                        .replace('_', "-")
                ),
            "{setting}: {stderr}"
        );
        assert!(!stderr.contains(secret), "the secret key leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn serve_drains_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let tenants = write_tenants(dir.path());
    let mut child = paybridge()
        .current_dir(dir.path())
        .arg("serve")
        .env("PAYBRIDGE_TENANTS_FILE", &tenants)
        .env("PAYBRIDGE_STRIPE_SECRET_KEY", "sk_test_x")
        .env("PAYBRIDGE_STRIPE_PUBLISHABLE_KEY", "pk_test_x")
        .env("PAYBRIDGE_STRIPE_API_BASE", "http://127.0.0.1:9")
        .env("PAYBRIDGE_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYBRIDGE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("paybridge serving"))
        .expect("logs that it serves");
    let log: serde_json::Value = serde_json::from_str(&serving).expect("JSON log line");
    assert!(
        log["grpc_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{log}"
    );
    assert!(
        dir.path().join("paybridge.db").exists(),
        "SQLite file created on first start"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("exits");
    assert!(status.success(), "exit {status:?}; log: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

/// The pod's layout with the built binaries: `serve` with its socket, `gateway` on one thread
/// calling it there, each with its own metrics address from one environment. A paid return
/// redirects to the success URL, and both exit zero on SIGTERM (the core removing its socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_reaches_the_serve_binary_through_its_socket_and_both_stop_cleanly() {
    use crate::support::child::{ServeProcess, free_port};
    use crate::support::gateway::GatewayTest;
    use crate::support::{BILLING_TOKEN, GATEWAY_TOKEN, LocalStripe, as_tenant, create_request};

    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("core.sock");
    let stripe = LocalStripe::start().await;
    let database_url = format!("sqlite:{}", dir.path().join("paybridge.db").display());
    let serve = ServeProcess::new(dir.path(), database_url, stripe.base_url.clone())
        .env("PAYBRIDGE_GRPC_SOCKET", &socket.display().to_string());
    let core = serve.start().await;
    assert!(socket.exists(), "the core made its socket");

    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let gateway_admin_addr = format!("127.0.0.1:{}", free_port());
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_paybridge"))
        .arg("gateway")
        .env_clear()
        .env("PAYBRIDGE_GATEWAY_ADDR", &gateway_addr)
        .env("PAYBRIDGE_CORE_URL", format!("unix://{}", socket.display()))
        .env("PAYBRIDGE_GATEWAY_TOKEN", GATEWAY_TOKEN)
        .env("PAYBRIDGE_GATEWAY_ADMIN_ADDR", &gateway_admin_addr)
        // As in one environment file for both processes: serve's, which the gateway ignores.
        .env("PAYBRIDGE_ADMIN_ADDR", serve.admin_addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting paybridge gateway");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    eventually(Duration::from_secs(30), || async {
        let ready = http
            .get(format!("http://{gateway_addr}/readyz"))
            .send()
            .await;
        match ready {
            Ok(response) if response.status() == 200 => Ok(()),
            other => Err(other.map(|response| response.status())),
        }
    })
    .await
    .expect("the gateway is ready within 30 s");

    let metrics = http
        .get(format!("http://{gateway_admin_addr}/metrics"))
        .send()
        .await
        .expect("the gateway's metrics on PAYBRIDGE_GATEWAY_ADMIN_ADDR");
    assert_eq!(metrics.status(), 200);

    let created = serve
        .client()
        .create_invoice_payment(as_tenant(BILLING_TOKEN, create_request("k-pod", "INV-POD")))
        .await
        .expect("created")
        .into_inner();
    let payment = created.payment.clone().expect("payment");
    stripe
        .pay_succeeding(&payment.stripe_payment_intent_id, &created.client_secret)
        .await;
    let query = GatewayTest::return_query(
        &payment.stripe_payment_intent_id,
        &created.client_secret,
        "succeeded",
    );
    let response = http
        .get(format!("http://{gateway_addr}/payment/return?{query}"))
        .send()
        .await
        .expect("return");
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().expect("location");
    assert!(
        location.starts_with("https://billing.example.com/paid?"),
        "{location}"
    );

    let gateway_pid = gateway.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &gateway_pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .expect("the gateway exits within 30 s")
        .expect("wait");
    assert!(status.success(), "gateway exit {status:?}");
    let (status, _, log) = core.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "serve exit {status:?}: {log:?}");
    assert!(!socket.exists(), "the core removed its socket");
}
