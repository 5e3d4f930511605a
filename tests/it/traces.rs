//! OpenTelemetry traces, end to end with the built binaries: a browser's return through
//! `paybridge gateway` carrying a W3C `traceparent` is one trace — the gateway's request, its call
//! to the core, the core's call, its store calls and its Stripe request — exported over
//! OTLP/HTTP to a stub collector; the log lines and the latency exemplars name that trace. With
//! no endpoint set nothing is exported (nor traced), and nothing fails.

use std::time::Duration;

use crate::support;
use crate::support::child::{GatewayProcess, Running, ServeProcess};
use crate::support::otlp::{CLIENT, Collector, ExportedSpan, SERVER};
use crate::support::{BILLING_TOKEN, Db, LocalStripe, as_tenant, create_request, eventually};
use paybridge::pb::v1 as pb;

/// A core and a gateway in front of it, with `env` for both, and a paid payment.
struct Paid {
    _dir: tempfile::TempDir,
    _stripe: LocalStripe,
    serve: ServeProcess,
    core: Running,
    gateway_process: GatewayProcess,
    gateway: Running,
    created: pb::CreateInvoicePaymentResponse,
}

async fn paid_payment_behind_a_gateway(db: Db, env: &[(&str, String)]) -> Paid {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("traces.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    let mut serve = ServeProcess::new(dir.path(), database_url, stripe.base_url.clone());
    let mut gateway_process = GatewayProcess::new(format!("http://{}", serve.grpc_addr));
    for (name, value) in env {
        serve = serve.env(name, value);
        gateway_process = gateway_process.env(name, value);
    }
    let core = serve.start().await;
    let gateway = gateway_process.start().await;
    let created = serve
        .client()
        .create_invoice_payment(as_tenant(BILLING_TOKEN, create_request("k-1", "INV-1")))
        .await
        .expect("created")
        .into_inner();
    let intent = &created
        .payment
        .as_ref()
        .expect("payment")
        .stripe_payment_intent_id;
    stripe.pay_succeeding(intent, &created.client_secret).await;
    Paid {
        _dir: dir,
        _stripe: stripe,
        serve,
        core,
        gateway_process,
        gateway,
        created,
    }
}

impl Paid {
    /// The browser's return to the gateway, with `traceparent` if given; the gateway's answer.
    async fn return_with(&self, traceparent: Option<&str>) -> reqwest::Response {
        let payment = self.created.payment.as_ref().expect("payment");
        let url = format!(
            "http://{}/payment/return?payment_intent={}&payment_intent_client_secret={}&redirect_status=succeeded",
            self.gateway_process.addr, payment.stripe_payment_intent_id, self.created.client_secret
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut request = http.get(url);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        // The gateway may answer 503 until the core reports SERVING.
        eventually(Duration::from_secs(10), || {
            let request = request.try_clone().expect("clonable");
            async move {
                let response = request.send().await.map_err(|e| e.to_string())?;
                if response.status().as_u16() == 303 {
                    Ok(response)
                } else {
                    Err(format!("{}", response.status()))
                }
            }
        })
        .await
        .expect("the return is verified within 10 s")
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn one<'a>(
    spans: &'a [ExportedSpan],
    what: &str,
    test: impl Fn(&ExportedSpan) -> bool,
) -> &'a ExportedSpan {
    let found: Vec<&ExportedSpan> = spans.iter().filter(|span| test(span)).collect();
    assert_eq!(found.len(), 1, "one {what} in the trace: {spans:#?}");
    found[0]
}

/// Whether `ancestor` is `span` or one of its parents within `spans`.
fn descends_from(spans: &[ExportedSpan], span: &ExportedSpan, ancestor: &ExportedSpan) -> bool {
    let mut current = Some(span);
    while let Some(at) = current {
        if at.span_id == ancestor.span_id {
            return true;
        }
        current = spans.iter().find(|s| s.span_id == at.parent_span_id);
    }
    false
}

async fn a_return_with_a_traceparent_is_one_trace_through_the_gateway_the_core_and_stripe(db: Db) {
    let collector = Collector::start().await;
    let paid = paid_payment_behind_a_gateway(
        db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("PAYBRIDGE_LOG_FORMAT", "json".to_owned()),
        ],
    )
    .await;
    let payment = paid.created.payment.clone().expect("payment");
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let response = paid
        .return_with(Some(&format!("00-{trace_id}-{caller_span}-01")))
        .await;
    assert_eq!(response.status().as_u16(), 303);

    // The gateway's request, its call to the core, the core's call, Stripe's read of the intent.
    let spans = eventually(Duration::from_secs(15), || async {
        let spans = collector.trace(&trace_id);
        let core_done = spans
            .iter()
            .any(|s| s.service == "paybridge" && s.kind == SERVER);
        let gateway_done = spans
            .iter()
            .any(|s| s.service == "paybridge-gateway" && s.kind == SERVER);
        if core_done && gateway_done {
            Ok(spans)
        } else {
            Err(spans)
        }
    })
    .await
    .expect("the gateway's and the core's spans of the trace are exported within 15 s");

    let request = one(&spans, "gateway request", |s| {
        s.service == "paybridge-gateway" && s.kind == SERVER
    });
    assert_eq!(request.name, "GET /payment/return");
    assert_eq!(
        request.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(request.attribute("http.response.status_code"), Some("303"));
    let call = one(&spans, "gateway call to the core", |s| {
        s.service == "paybridge-gateway" && s.kind == CLIENT
    });
    assert_eq!(call.name, "paybridge.v1.PaymentService/VerifyReturn");
    assert!(descends_from(&spans, call, request), "{spans:#?}");
    let rpc = one(&spans, "core call", |s| {
        s.service == "paybridge" && s.kind == SERVER
    });
    assert_eq!(rpc.name, "paybridge.v1.PaymentService/VerifyReturn");
    assert_eq!(
        rpc.parent_span_id, call.span_id,
        "propagated from the gateway"
    );
    assert_eq!(rpc.attribute("rpc.grpc.status_code"), Some("OK"));
    assert_eq!(rpc.attribute("payment_id"), Some(payment.id.as_str()));
    assert_eq!(rpc.attribute("tenant"), Some("billing"));
    assert_eq!(rpc.attribute("status"), Some("PAYMENT_STATUS_SUCCEEDED"));

    // Stripe's request is a client span under the core's call, with Stripe's request id.
    let stripe = one(&spans, "Stripe request", |s| {
        s.service == "paybridge" && s.kind == CLIENT
    });
    assert_eq!(stripe.name, "GET /v1/payment_intents/{id}");
    assert!(descends_from(&spans, stripe, rpc), "{spans:#?}");
    assert_eq!(stripe.attribute("outcome"), Some("ok"));
    assert!(
        stripe
            .attribute("stripe.request_id")
            .is_some_and(|id| id.starts_with("req_")),
        "{stripe:#?}"
    );
    // The store's work is in the trace too, under the core's call.
    let store: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("store."))
        .collect();
    assert!(!store.is_empty(), "{spans:#?}");
    assert!(
        store.iter().all(|s| descends_from(&spans, s, rpc)),
        "{spans:#?}"
    );

    // Only calls, requests and reconciler sweeps start traces: a store call never does.
    for span in collector.spans() {
        if span.parent_span_id.is_empty() {
            assert!(
                span.kind == SERVER
                    || span.name == "reconcile_once"
                    || span.name == "reconcile_refunds_once",
                "a trace started by {span:#?}"
            );
        }
    }

    // Never a secret in any span.
    for span in collector.spans() {
        for value in span.attributes.values() {
            for secret in [
                &paid.created.client_secret,
                "sk_test_paybridge",
                "gateway-test-token",
            ] {
                assert!(!value.contains(secret), "{span:#?}");
            }
        }
    }

    // The log lines of the call carry its trace id (JSON logs).
    let gateway_line = paid
        .gateway
        .lines()
        .into_iter()
        .find(|line| line.contains(r#""path":"\"/payment/return\"""#))
        .expect("the gateway's access log line");
    assert!(
        gateway_line.contains(&format!(r#""trace_id":"{trace_id}""#))
            && gateway_line.contains(r#""span_id":""#),
        "{gateway_line}"
    );
    let core_lines: Vec<String> = paid
        .core
        .lines()
        .into_iter()
        .filter(|line| line.contains(&trace_id))
        .collect();
    assert!(
        !core_lines.is_empty(),
        "a core log line of the call: {:#?}",
        paid.core.lines()
    );

    // The latency histograms' exemplars link to the trace (OpenMetrics).
    let exemplar = format!(r#"# {{trace_id="{trace_id}"}}"#);
    let core_metrics = metrics(paid.serve.admin_addr).await;
    assert!(
        core_metrics.lines().any(|line| {
            line.starts_with("paybridge_grpc_request_duration_seconds_bucket{")
                && line.contains(r#"method="VerifyReturn""#)
                && line.contains(&exemplar)
        }),
        "{core_metrics}"
    );
    let gateway_metrics = metrics(paid.gateway_process.admin_addr).await;
    assert!(
        gateway_metrics.lines().any(|line| {
            line.starts_with("paybridge_gateway_request_duration_seconds_bucket{")
                && line.contains(r#"route="/payment/return""#)
                && line.contains(&exemplar)
        }),
        "{gateway_metrics}"
    );
}

/// On SQLite only: the database plays no part, and the stub holds a fixed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_nothing_fails() {
    // A stub where an exporter would send by default (OTLP/HTTP's localhost:4318), so that an
    // export despite the missing endpoint would be seen.
    let default = Collector::start_on("127.0.0.1:4318".parse().expect("addr"))
        .await
        .expect("port 4318 is free for this test");
    let paid = paid_payment_behind_a_gateway(
        Db::Sqlite,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
            ("PAYBRIDGE_LOG_FORMAT", "json".to_owned()),
        ],
    )
    .await;
    let trace_id = random_hex(16);
    let response = paid
        .return_with(Some(&format!("00-{trace_id}-{}-01", random_hex(8))))
        .await;
    assert_eq!(response.status().as_u16(), 303);

    // Both stop cleanly (a flush at exit would export anything batched).
    let Paid { core, gateway, .. } = paid;
    let (gateway_status, _, gateway_log) = gateway.terminate(Duration::from_secs(10)).await;
    let (core_status, _, core_log) = core.terminate(Duration::from_secs(10)).await;
    assert!(gateway_status.success() && core_status.success());
    assert_eq!(default.requests(), 0, "nothing exported");
    for line in gateway_log.iter().chain(&core_log) {
        let lowered = line.to_lowercase();
        assert!(
            !(lowered.contains("opentelemetry")
                || lowered.contains("otlp")
                || lowered.contains("export")),
            "{line}"
        );
    }
    // No OpenTelemetry layer without an endpoint (its cost): the lines carry no trace ids.
    let access = gateway_log
        .iter()
        .find(|line| line.contains(r#""path":"\"/payment/return\"""#))
        .expect("the gateway's access log line");
    assert!(!access.contains("trace_id"), "{access}");
    assert!(
        !gateway_log
            .iter()
            .chain(&core_log)
            .any(|line| line.contains(&trace_id))
    );
}

on_both_databases!(
    a_return_with_a_traceparent_is_one_trace_through_the_gateway_the_core_and_stripe
);
