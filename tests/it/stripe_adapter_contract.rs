//! Contract tests of the Stripe adapter against wiremock: the exact requests paybridge sends to
//! Stripe, and how it reads Stripe's answers (bodies from Stripe's own example objects in
//! `tests/fixtures/stripe/`, copied from stripe-mock's `fixtures3.json`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paybridge::adapters::stripe::{StripeConfig, StripeConfigError, StripeProvider};
use paybridge::app::ports::{
    LastPaymentError, NewCustomer, NewPaymentIntent, NewRefund, PaymentProvider, ProviderError,
    ProviderRefund,
};
use paybridge::domain::{PaymentStatus, RefundReason, RefundStatus};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk_test_51PaybridgeContractKey0000000000";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

/// Stripe's example PaymentIntent with id, amount and status adjusted.
fn intent_body(id: &str, amount: i64, status: &str) -> Value {
    let mut pi = fixture("payment_intent");
    pi["id"] = json!(id);
    pi["amount"] = json!(amount);
    pi["status"] = json!(status);
    pi["client_secret"] = json!(format!("{id}_secret_abc123"));
    pi
}

/// Stripe's example Refund of `pi` with id, amount and status adjusted.
fn refund_body(id: &str, pi: &str, amount: i64, status: &str) -> Value {
    let mut re = fixture("refund");
    re["id"] = json!(id);
    re["payment_intent"] = json!(pi);
    re["amount"] = json!(amount);
    re["status"] = json!(status);
    re
}

/// A page of a Stripe list.
fn list_body(data: Vec<Value>, has_more: bool) -> Value {
    json!({"object": "list", "data": data, "has_more": has_more, "url": "/v1/refunds"})
}

fn config(base: &str, max_retries: u32, timeout: Duration) -> StripeConfig {
    StripeConfig {
        secret_key: SecretString::from(KEY),
        api_base: base.parse().expect("url"),
        request_timeout: timeout,
        max_retries,
        max_requests_per_second: 1000,
    }
}

fn provider_for(base: &str, max_retries: u32, timeout: Duration) -> StripeProvider {
    StripeProvider::with_retry_backoff(
        config(base, max_retries, timeout),
        Duration::from_millis(5),
        Duration::from_millis(20),
    )
    .expect("provider")
}

fn provider(server: &MockServer) -> StripeProvider {
    provider_for(&server.uri(), 2, Duration::from_secs(5))
}

fn form(req: &Request) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(map.len(), pairs.len(), "duplicate form fields: {pairs:?}");
    map
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

fn assert_common_headers(req: &Request) {
    assert_eq!(
        header(req, "authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let version = header(req, "stripe-version").expect("Stripe-Version sent");
    assert_eq!(version, stripe_client_core::VERSION.as_str());
    assert!(!version.is_empty());
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn new_intent() -> NewPaymentIntent {
    NewPaymentIntent {
        capture_method: paybridge::domain::CaptureMethod::Automatic,
        amount: 4200,
        currency: "eur".to_owned(),
        customer: Some("cus_QXg1o8vcGmoR32".to_owned()),
        description: Some("Invoice INV-7 for billing".to_owned()),
        metadata: map(&[
            ("paybridge_payment_id", "pay_01J9Z"),
            ("invoice_id", "INV-7"),
            ("tenant", "billing"),
        ]),
        idempotency_key: "paybridge-create-pay_01J9Z".to_owned(),
    }
}

fn new_refund() -> NewRefund {
    NewRefund {
        payment_intent: "pi_3Refunded".to_owned(),
        amount: 300,
        reason: Some(RefundReason::RequestedByCustomer),
        metadata: map(&[
            ("paybridge_refund_id", "ref_01J9Z"),
            ("paybridge_payment_id", "pay_01J9Z"),
            ("tenant", "billing"),
            ("order", "o-7"),
        ]),
        idempotency_key: "paybridge-refund-ref_01J9Z".to_owned(),
    }
}

/// A request's query, decoded (`created[gte]`, not `created%5Bgte%5D`).
fn query(req: &Request) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> = req.url.query_pairs().into_owned().collect();
    let map: BTreeMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(
        map.len(),
        pairs.len(),
        "duplicate query parameters: {pairs:?}"
    );
    map
}

async fn received(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.expect("recording on")
}

fn stripe_error(code: &str, message: &str, param: &str) -> Value {
    json!({
        "error": {
            "code": code,
            "doc_url": format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")),
            "message": message,
            "param": param,
            "request_log_url": "https://dashboard.stripe.com/test/logs/req_123",
            "type": "invalid_request_error"
        }
    })
}

#[tokio::test]
async fn unmodified_fixture_parses() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_1PgafyB7WZ01zgkWSjxsAJo3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("payment_intent")))
        .mount(&server)
        .await;
    let intent = provider(&server)
        .retrieve_payment_intent("pi_1PgafyB7WZ01zgkWSjxsAJo3")
        .await
        .expect("Stripe's own example parses");
    assert_eq!(intent.id, "pi_1PgafyB7WZ01zgkWSjxsAJo3");
    assert_eq!(intent.amount, 1099);
    assert_eq!(intent.currency, "usd");
    assert_eq!(intent.status, PaymentStatus::RequiresPaymentMethod);
    assert_eq!(
        intent.last_payment_error,
        Some(LastPaymentError {
            code: None,
            message: None
        })
    );
}

#[tokio::test]
async fn create_payment_intent_sends_exact_form_and_headers() {
    let server = MockServer::start().await;
    let mut body = intent_body("pi_3Create", 4200, "requires_payment_method");
    body["currency"] = json!("eur");
    body["metadata"] =
        json!({"paybridge_payment_id": "pay_01J9Z", "invoice_id": "INV-7", "tenant": "billing"});
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(1)
        .mount(&server)
        .await;

    let intent = provider(&server)
        .create_payment_intent(new_intent())
        .await
        .expect("created");

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v1/payment_intents");
    assert_eq!(req.url.query(), None);
    assert_common_headers(req);
    assert_eq!(
        header(req, "idempotency-key"),
        Some("paybridge-create-pay_01J9Z")
    );
    assert_eq!(
        header(req, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        form(req),
        map(&[
            ("amount", "4200"),
            ("currency", "eur"),
            ("customer", "cus_QXg1o8vcGmoR32"),
            ("description", "Invoice INV-7 for billing"),
            ("metadata[paybridge_payment_id]", "pay_01J9Z"),
            ("metadata[invoice_id]", "INV-7"),
            ("metadata[tenant]", "billing"),
        ])
    );

    assert_eq!(intent.id, "pi_3Create");
    assert_eq!(intent.status, PaymentStatus::RequiresPaymentMethod);
    assert_eq!(intent.amount, 4200);
    assert_eq!(intent.currency, "eur");
    assert_eq!(
        intent.client_secret.as_deref(),
        Some("pi_3Create_secret_abc123")
    );
    assert_eq!(intent.metadata, new_intent().metadata);
    // The client secret never shows in Debug output.
    assert!(!format!("{intent:?}").contains("secret_abc123"));
}

#[tokio::test]
async fn create_payment_intent_without_customer_or_description_sends_only_the_rest() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Minimal",
            1099,
            "requires_payment_method",
        )))
        .mount(&server)
        .await;
    let request = NewPaymentIntent {
        capture_method: paybridge::domain::CaptureMethod::Automatic,
        amount: 1099,
        currency: "usd".to_owned(),
        customer: None,
        description: None,
        metadata: map(&[("paybridge_payment_id", "pay_2")]),
        idempotency_key: "key-2".to_owned(),
    };
    provider(&server)
        .create_payment_intent(request)
        .await
        .expect("created");
    let reqs = received(&server).await;
    assert_eq!(
        form(&reqs[0]),
        map(&[
            ("amount", "1099"),
            ("currency", "usd"),
            ("metadata[paybridge_payment_id]", "pay_2"),
        ])
    );
    assert_eq!(header(&reqs[0], "idempotency-key"), Some("key-2"));
}

#[tokio::test]
async fn create_customer_sends_email_name_metadata_and_key() {
    let server = MockServer::start().await;
    let mut body = fixture("customer");
    body["id"] = json!("cus_New123");
    Mock::given(method("POST"))
        .and(path("/v1/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let id = provider(&server)
        .create_customer(NewCustomer {
            email: "ada@example.com".to_owned(),
            name: Some("Ada Lovelace".to_owned()),
            metadata: map(&[("tenant", "billing")]),
            idempotency_key: "cust-key-1".to_owned(),
        })
        .await
        .expect("customer");
    assert_eq!(id, "cus_New123");
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v1/customers");
    assert_common_headers(req);
    assert_eq!(header(req, "idempotency-key"), Some("cust-key-1"));
    assert_eq!(
        form(req),
        map(&[
            ("email", "ada@example.com"),
            ("name", "Ada Lovelace"),
            ("metadata[tenant]", "billing"),
        ])
    );
}

#[tokio::test]
async fn retrieve_sends_a_plain_get_without_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Get"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Get",
            500,
            "processing",
        )))
        .mount(&server)
        .await;
    let intent = provider(&server)
        .retrieve_payment_intent("pi_3Get")
        .await
        .expect("retrieved");
    assert_eq!(intent.status, PaymentStatus::Processing);
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "GET");
    assert_eq!(req.url.path(), "/v1/payment_intents/pi_3Get");
    assert_eq!(req.url.query(), None);
    assert!(req.body.is_empty());
    assert_common_headers(req);
    assert_eq!(header(req, "idempotency-key"), None);
    assert_eq!(header(req, "content-type"), None);
}

#[tokio::test]
async fn cancel_posts_with_idempotency_key_and_no_fields() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents/pi_3Cancel/cancel"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Cancel",
            700,
            "canceled",
        )))
        .mount(&server)
        .await;
    let intent = provider(&server)
        .cancel_payment_intent("pi_3Cancel", "cancel-pay_9")
        .await
        .expect("canceled");
    assert_eq!(intent.status, PaymentStatus::Canceled);
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v1/payment_intents/pi_3Cancel/cancel");
    assert_common_headers(req);
    assert_eq!(header(req, "idempotency-key"), Some("cancel-pay_9"));
    assert!(form(req).is_empty());
}

#[tokio::test]
async fn server_error_then_success_retries_with_the_same_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Retry",
            4200,
            "requires_payment_method",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    let intent = provider
        .create_payment_intent(new_intent())
        .await
        .expect("second attempt succeeds");
    assert_eq!(intent.id, "pi_3Retry");
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(
            header(req, "idempotency-key"),
            Some("paybridge-create-pay_01J9Z")
        );
        assert_eq!(form(req), form(&reqs[0]));
    }
    assert_eq!(provider.stats().requests_sent, 2);
}

#[tokio::test]
async fn repeated_429_gives_unavailable_after_max_retries() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Busy"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({
            "error": {"type": "invalid_request_error", "code": "rate_limit",
                      "message": "Too many requests hit the API too quickly."}
        })))
        .mount(&server)
        .await;
    let err = provider_for(&server.uri(), 3, Duration::from_secs(5))
        .retrieve_payment_intent("pi_3Busy")
        .await
        .expect_err("rate limited");
    assert!(
        matches!(&err, ProviderError::Unavailable(m) if m.contains("429")),
        "{err:?}"
    );
    assert_eq!(received(&server).await.len(), 4, "1 attempt + 3 retries");
}

#[tokio::test]
async fn stripe_should_retry_false_is_obeyed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("Stripe-Should-Retry", "false")
                .set_body_json(json!({"error": {"type": "api_error", "message": "boom"}})),
        )
        .mount(&server)
        .await;
    let err = provider(&server)
        .create_payment_intent(new_intent())
        .await
        .expect_err("500");
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Later"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Later"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Later",
            1,
            "succeeded",
        )))
        .mount(&server)
        .await;
    let started = Instant::now();
    let intent = provider(&server)
        .retrieve_payment_intent("pi_3Later")
        .await
        .expect("after waiting");
    assert_eq!(intent.status, PaymentStatus::Succeeded);
    assert!(started.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let port = {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let provider = provider_for(
        &format!("http://127.0.0.1:{port}"),
        2,
        Duration::from_secs(2),
    );
    let err = provider
        .retrieve_payment_intent("pi_3Nobody")
        .await
        .expect_err("nobody listens");
    assert!(matches!(&err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains(KEY));
    assert_eq!(provider.stats().requests_sent, 3);
    assert_eq!(provider.stats().connections_opened, 0);
}

#[tokio::test]
async fn slow_answer_times_out_as_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents/pi_3Slow/cancel"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(intent_body("pi_3Slow", 1, "canceled"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let started = Instant::now();
    let err = provider_for(&server.uri(), 1, Duration::from_millis(200))
        .cancel_payment_intent("pi_3Slow", "cancel-slow")
        .await
        .expect_err("too slow");
    assert!(matches!(&err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(header(req, "idempotency-key"), Some("cancel-slow"));
    }
}

#[tokio::test]
async fn not_found_maps_to_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(stripe_error(
            "resource_missing",
            "No such payment_intent: 'pi_3Missing'",
            "intent",
        )))
        .mount(&server)
        .await;
    let err = provider(&server)
        .retrieve_payment_intent("pi_3Missing")
        .await
        .expect_err("404");
    assert!(matches!(err, ProviderError::NotFound), "{err:?}");
    assert_eq!(received(&server).await.len(), 1, "404 is not retried");
}

#[tokio::test]
async fn bad_request_is_rejected_with_stripes_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(400).set_body_json(stripe_error(
            "parameter_invalid_integer",
            "Invalid integer: -5",
            "amount",
        )))
        .mount(&server)
        .await;
    let err = provider(&server)
        .create_payment_intent(new_intent())
        .await
        .expect_err("400");
    match err {
        ProviderError::Rejected {
            status,
            code,
            message,
        } => {
            assert_eq!(status, 400);
            assert_eq!(code.as_deref(), Some("parameter_invalid_integer"));
            assert_eq!(message, "Invalid integer: -5");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(received(&server).await.len(), 1, "400 is not retried");
}

#[tokio::test]
async fn every_stripe_status_maps() {
    let server = MockServer::start().await;
    let cases = [
        (
            "requires_payment_method",
            PaymentStatus::RequiresPaymentMethod,
        ),
        ("requires_confirmation", PaymentStatus::RequiresConfirmation),
        ("requires_action", PaymentStatus::RequiresAction),
        ("processing", PaymentStatus::Processing),
        ("requires_capture", PaymentStatus::RequiresCapture),
        ("succeeded", PaymentStatus::Succeeded),
        ("canceled", PaymentStatus::Canceled),
    ];
    for (i, (stripe_status, _)) in cases.iter().enumerate() {
        let id = format!("pi_3Status{i}");
        Mock::given(method("GET"))
            .and(path(format!("/v1/payment_intents/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
                &id,
                100,
                stripe_status,
            )))
            .mount(&server)
            .await;
    }
    let provider = provider(&server);
    for (i, (stripe_status, expected)) in cases.iter().enumerate() {
        let intent = provider
            .retrieve_payment_intent(&format!("pi_3Status{i}"))
            .await
            .expect("retrieved");
        assert_eq!(intent.status, *expected, "{stripe_status}");
        assert_eq!(intent.status.as_str(), *stripe_status);
    }
}

#[tokio::test]
async fn unknown_status_is_unexpected() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Odd"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Odd",
            100,
            "requires_telepathy",
        )))
        .mount(&server)
        .await;
    let err = provider(&server)
        .retrieve_payment_intent("pi_3Odd")
        .await
        .expect_err("unknown status");
    assert!(
        matches!(&err, ProviderError::Unexpected(m) if m.contains("requires_telepathy")),
        "{err:?}"
    );
}

#[tokio::test]
async fn last_payment_error_is_mapped() {
    let server = MockServer::start().await;
    let mut body = intent_body("pi_3Declined", 100, "requires_payment_method");
    body["last_payment_error"] = json!({
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds."
    });
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Declined"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let intent = provider(&server)
        .retrieve_payment_intent("pi_3Declined")
        .await
        .expect("retrieved");
    assert_eq!(
        intent.last_payment_error,
        Some(LastPaymentError {
            code: Some("card_declined".to_owned()),
            message: Some("Your card has insufficient funds.".to_owned()),
        })
    );
}

#[tokio::test]
async fn unparseable_answer_names_the_missing_field() {
    let server = MockServer::start().await;
    let mut body = intent_body("pi_3Broken", 100, "succeeded");
    body.as_object_mut()
        .expect("object")
        .remove("amount_received");
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Broken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3NotJson"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"))
        .mount(&server)
        .await;
    let provider = provider(&server);
    let err = provider
        .retrieve_payment_intent("pi_3Broken")
        .await
        .expect_err("missing field");
    assert!(
        matches!(&err, ProviderError::Unexpected(m) if m.contains("`amount_received` is missing")),
        "{err:?}"
    );
    let err = provider
        .retrieve_payment_intent("pi_3NotJson")
        .await
        .expect_err("not JSON");
    assert!(
        matches!(&err, ProviderError::Unexpected(m) if m.contains("not JSON")),
        "{err:?}"
    );
}

#[tokio::test]
async fn ids_that_are_not_stripe_ids_never_reach_stripe() {
    let server = MockServer::start().await;
    let provider = provider(&server);
    for id in ["", "pi_1/../../customers", "pi_1?expand[]=customer", "pi 1"] {
        let err = provider
            .retrieve_payment_intent(id)
            .await
            .expect_err("bad id");
        assert!(matches!(err, ProviderError::NotFound), "{id}: {err:?}");
    }
    assert!(received(&server).await.is_empty());
}

#[test]
fn secret_key_never_shows_in_debug_or_errors() {
    let config = config("http://127.0.0.1:9", 2, Duration::from_secs(1));
    let debug = format!("{config:?}");
    assert!(!debug.contains(KEY), "{debug}");
    assert!(!debug.contains("sk_test"), "{debug}");
    assert!(debug.contains("127.0.0.1:9"));

    let provider = StripeProvider::new(config.clone()).expect("valid");
    let debug = format!("{provider:?}");
    assert!(!debug.contains("sk_test"), "{debug}");

    let publishable = "pk_test_51NotASecretKeyButStillNotToBeLogged";
    let err = StripeProvider::new(StripeConfig {
        secret_key: SecretString::from(publishable),
        ..config.clone()
    })
    .expect_err("publishable key refused");
    assert!(matches!(err, StripeConfigError::InvalidSecretKey));
    assert!(!err.to_string().contains(publishable));

    let err = StripeProvider::new(StripeConfig {
        api_base: "ftp://api.stripe.com".parse().expect("url"),
        ..config.clone()
    })
    .expect_err("ftp refused");
    assert!(matches!(err, StripeConfigError::InvalidApiBase(_)));

    let err = StripeProvider::new(StripeConfig {
        api_base: "https://user:hunter2@api.stripe.com".parse().expect("url"),
        ..config
    })
    .expect_err("credentials in the URL refused");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn default_config_points_at_stripe() {
    let config = StripeConfig::new(SecretString::from(KEY));
    assert_eq!(config.api_base.as_str(), "https://api.stripe.com/");
    StripeProvider::new(config).expect("valid");
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection_to_wiremock() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payment_intents/pi_3Pool"))
        .respond_with(ResponseTemplate::new(200).set_body_json(intent_body(
            "pi_3Pool",
            100,
            "succeeded",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    for _ in 0..5 {
        provider
            .retrieve_payment_intent("pi_3Pool")
            .await
            .expect("retrieved");
    }
    let stats = provider.stats();
    assert_eq!(stats.requests_sent, 5);
    assert_eq!(stats.connections_opened, 1);
}

/// A tiny keep-alive HTTP/1.1 server that counts the TCP connections it accepts, so the reuse is
/// measured on the server side too, not only by the client's own counter.
fn counting_server(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                loop {
                    let mut content_length = 0usize;
                    let mut line = String::new();
                    // Request line and headers.
                    let mut first = true;
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if !first
                            && let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            content_length = value.trim().parse().expect("length");
                        }
                        first = false;
                    }
                    let mut request_body = vec![0; content_length];
                    if reader.read_exact(&mut request_body).is_err() {
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(&body).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn sequential_requests_reuse_one_tcp_connection() {
    let body = serde_json::to_vec(&intent_body("pi_3Tcp", 100, "processing")).expect("json");
    let (base, accepted) = counting_server(body);
    let provider = provider_for(&base, 0, Duration::from_secs(5));
    for i in 0..6 {
        if i % 2 == 0 {
            provider
                .retrieve_payment_intent("pi_3Tcp")
                .await
                .expect("retrieved");
        } else {
            provider
                .cancel_payment_intent("pi_3Tcp", &format!("k{i}"))
                .await
                .expect("posted");
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "server accepted once");
    let stats = provider.stats();
    assert_eq!(stats.requests_sent, 6);
    assert_eq!(stats.connections_opened, 1);
}

// --- Refunds ------------------------------------------------------------------------------------

#[tokio::test]
async fn unmodified_refund_fixture_parses() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds/re_1Pgc72B7WZ01zgkWqPvrRrPE"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("refund")))
        .mount(&server)
        .await;
    let refund = provider(&server)
        .retrieve_refund("re_1Pgc72B7WZ01zgkWqPvrRrPE")
        .await
        .expect("Stripe's own example parses");
    assert_eq!(
        refund,
        ProviderRefund {
            id: "re_1Pgc72B7WZ01zgkWqPvrRrPE".to_owned(),
            payment_intent: None,
            amount: 100,
            currency: "usd".to_owned(),
            status: RefundStatus::Succeeded,
            reason: None,
            failure_reason: None,
            metadata: BTreeMap::new(),
            created: 1234567890,
            releases_uncaptured: false,
        }
    );
}

#[tokio::test]
async fn create_refund_sends_exact_form_and_headers() {
    let server = MockServer::start().await;
    let mut body = refund_body("re_3Create", "pi_3Refunded", 300, "pending");
    body["currency"] = json!("eur");
    body["reason"] = json!("requested_by_customer");
    body["metadata"] = json!({
        "paybridge_refund_id": "ref_01J9Z", "paybridge_payment_id": "pay_01J9Z",
        "tenant": "billing", "order": "o-7",
    });
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(1)
        .mount(&server)
        .await;

    let refund = provider(&server)
        .create_refund(new_refund())
        .await
        .expect("created");

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v1/refunds");
    assert_eq!(req.url.query(), None);
    assert_common_headers(req);
    assert_eq!(
        header(req, "idempotency-key"),
        Some("paybridge-refund-ref_01J9Z")
    );
    assert_eq!(
        header(req, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        form(req),
        map(&[
            ("payment_intent", "pi_3Refunded"),
            ("amount", "300"),
            ("reason", "requested_by_customer"),
            ("metadata[paybridge_refund_id]", "ref_01J9Z"),
            ("metadata[paybridge_payment_id]", "pay_01J9Z"),
            ("metadata[tenant]", "billing"),
            ("metadata[order]", "o-7"),
        ])
    );

    assert_eq!(
        refund,
        ProviderRefund {
            id: "re_3Create".to_owned(),
            payment_intent: Some("pi_3Refunded".to_owned()),
            amount: 300,
            currency: "eur".to_owned(),
            status: RefundStatus::Pending,
            reason: Some(RefundReason::RequestedByCustomer),
            failure_reason: None,
            metadata: new_refund().metadata,
            created: 1234567890,
            releases_uncaptured: false,
        }
    );
}

#[tokio::test]
async fn create_refund_without_reason_sends_none() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(refund_body(
            "re_3NoReason",
            "pi_3Refunded",
            300,
            "succeeded",
        )))
        .mount(&server)
        .await;
    let mut request = new_refund();
    request.reason = None;
    request.metadata = map(&[("paybridge_refund_id", "ref_2")]);
    provider(&server)
        .create_refund(request)
        .await
        .expect("created");
    let reqs = received(&server).await;
    assert_eq!(
        form(&reqs[0]),
        map(&[
            ("payment_intent", "pi_3Refunded"),
            ("amount", "300"),
            ("metadata[paybridge_refund_id]", "ref_2"),
        ])
    );
}

#[tokio::test]
async fn every_reason_is_sent_in_stripes_spelling() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(refund_body(
            "re_3Reason",
            "pi_3Refunded",
            300,
            "succeeded",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    for (i, reason) in RefundReason::ALL.into_iter().enumerate() {
        let mut request = new_refund();
        request.reason = Some(reason);
        request.idempotency_key = format!("k{i}");
        provider.create_refund(request).await.expect("created");
    }
    let sent: Vec<String> = received(&server)
        .await
        .iter()
        .map(|req| form(req)["reason"].clone())
        .collect();
    assert_eq!(sent, ["requested_by_customer", "duplicate", "fraudulent"]);
}

#[tokio::test]
async fn refund_above_what_remains_is_rejected_with_stripes_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(400).set_body_json(stripe_error(
            "amount_too_large",
            "Refund amount ($3.00) is greater than unrefunded amount on charge ($2.00)",
            "amount",
        )))
        .mount(&server)
        .await;
    let err = provider(&server)
        .create_refund(new_refund())
        .await
        .expect_err("400");
    match err {
        ProviderError::Rejected {
            status,
            code,
            message,
        } => {
            assert_eq!(status, 400);
            assert_eq!(code.as_deref(), Some("amount_too_large"));
            assert_eq!(
                message,
                "Refund amount ($3.00) is greater than unrefunded amount on charge ($2.00)"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(received(&server).await.len(), 1, "400 is not retried");
}

#[tokio::test]
async fn refund_create_after_a_server_error_is_retried_with_the_same_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(refund_body(
            "re_3Retry",
            "pi_3Refunded",
            300,
            "succeeded",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    let refund = provider
        .create_refund(new_refund())
        .await
        .expect("second attempt succeeds");
    assert_eq!(refund.id, "re_3Retry");
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(
            header(req, "idempotency-key"),
            Some("paybridge-refund-ref_01J9Z")
        );
        assert_eq!(form(req), form(&reqs[0]));
    }
    assert_eq!(provider.stats().requests_sent, 2);
}

#[tokio::test]
async fn retrieve_refund_sends_a_plain_get_and_a_404_is_not_found() {
    let server = MockServer::start().await;
    let mut body = refund_body("re_3Failed", "pi_3Refunded", 300, "failed");
    body["failure_reason"] = json!("expired_or_canceled_card");
    body["reason"] = json!("expired_uncaptured_charge");
    Mock::given(method("GET"))
        .and(path("/v1/refunds/re_3Failed"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds/re_3Missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(stripe_error(
            "resource_missing",
            "No such refund: 're_3Missing'",
            "id",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    let refund = provider
        .retrieve_refund("re_3Failed")
        .await
        .expect("retrieved");
    assert_eq!(refund.status, RefundStatus::Failed);
    assert_eq!(
        refund.failure_reason.as_deref(),
        Some("expired_or_canceled_card")
    );
    assert_eq!(refund.reason, None, "Stripe's own reason is none of ours");
    let err = provider
        .retrieve_refund("re_3Missing")
        .await
        .expect_err("404");
    assert!(matches!(err, ProviderError::NotFound), "{err:?}");

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2, "404 is not retried");
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "GET");
    assert_eq!(req.url.path(), "/v1/refunds/re_3Failed");
    assert_eq!(req.url.query(), None);
    assert!(req.body.is_empty());
    assert_common_headers(req);
    assert_eq!(header(req, "idempotency-key"), None);
}

#[tokio::test]
async fn every_refund_status_maps_and_an_unknown_one_is_unexpected() {
    let server = MockServer::start().await;
    let cases = [
        ("pending", RefundStatus::Pending),
        ("requires_action", RefundStatus::RequiresAction),
        ("succeeded", RefundStatus::Succeeded),
        ("failed", RefundStatus::Failed),
        ("canceled", RefundStatus::Canceled),
    ];
    for (i, (stripe_status, _)) in cases.iter().enumerate() {
        let id = format!("re_3Status{i}");
        Mock::given(method("GET"))
            .and(path(format!("/v1/refunds/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(refund_body(
                &id,
                "pi_3Refunded",
                100,
                stripe_status,
            )))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v1/refunds/re_3Odd"))
        .respond_with(ResponseTemplate::new(200).set_body_json(refund_body(
            "re_3Odd",
            "pi_3Refunded",
            100,
            "creating",
        )))
        .mount(&server)
        .await;
    let provider = provider(&server);
    for (i, (stripe_status, expected)) in cases.iter().enumerate() {
        let refund = provider
            .retrieve_refund(&format!("re_3Status{i}"))
            .await
            .expect("retrieved");
        assert_eq!(refund.status, *expected, "{stripe_status}");
        assert_eq!(refund.status.as_str(), *stripe_status);
    }
    let err = provider
        .retrieve_refund("re_3Odd")
        .await
        .expect_err("not Stripe's");
    assert!(
        matches!(&err, ProviderError::Unexpected(m) if m.contains("`creating`")),
        "{err:?}"
    );
}

#[tokio::test]
async fn list_refunds_reads_every_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .and(query_param_is_missing("starting_after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![
                refund_body("re_3Fourth", "pi_3Refunded", 40, "pending"),
                refund_body("re_3Third", "pi_3Refunded", 30, "succeeded"),
            ],
            true,
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .and(query_param("starting_after", "re_3Third"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![
                refund_body("re_3Second", "pi_3Refunded", 20, "failed"),
                refund_body("re_3First", "pi_3Refunded", 10, "succeeded"),
            ],
            false,
        )))
        .mount(&server)
        .await;
    let refunds = provider(&server)
        .list_refunds("pi_3Refunded")
        .await
        .expect("listed");
    let ids: Vec<&str> = refunds.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["re_3Fourth", "re_3Third", "re_3Second", "re_3First"]);
    assert_eq!(refunds[2].status, RefundStatus::Failed);
    assert_eq!(refunds[3].amount, 10);

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(req.method.as_str(), "GET");
        assert_eq!(req.url.path(), "/v1/refunds");
        assert!(req.body.is_empty());
        assert_common_headers(req);
        assert_eq!(header(req, "idempotency-key"), None);
    }
    assert_eq!(
        query(&reqs[0]),
        map(&[("payment_intent", "pi_3Refunded"), ("limit", "100")])
    );
    assert_eq!(
        query(&reqs[1]),
        map(&[
            ("payment_intent", "pi_3Refunded"),
            ("limit", "100"),
            ("starting_after", "re_3Third"),
        ])
    );
}

#[tokio::test]
async fn list_recent_refunds_asks_for_what_is_left_of_the_limit() {
    let server = MockServer::start().await;
    let page = |first: usize, count: usize| {
        (first..first + count)
            .map(|i| refund_body(&format!("re_3Recent{i}"), "pi_3Refunded", 1, "succeeded"))
            .collect::<Vec<_>>()
    };
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .and(query_param_is_missing("starting_after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(page(0, 100), true)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .and(query_param("starting_after", "re_3Recent99"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(page(100, 50), true)))
        .mount(&server)
        .await;
    let provider = provider(&server);
    let refunds = provider
        .list_recent_refunds(1_764_000_000, 150)
        .await
        .expect("listed");
    assert_eq!(
        refunds.len(),
        150,
        "stops at the limit though Stripe has more"
    );
    assert_eq!(refunds[149].id, "re_3Recent149");
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        query(&reqs[0]),
        map(&[("created[gte]", "1764000000"), ("limit", "100")])
    );
    assert_eq!(
        query(&reqs[1]),
        map(&[
            ("created[gte]", "1764000000"),
            ("limit", "50"),
            ("starting_after", "re_3Recent99"),
        ])
    );

    // A small limit is one page, however much Stripe has; none is no request.
    let refunds = provider
        .list_recent_refunds(1_764_000_000, 0)
        .await
        .expect("nothing asked");
    assert!(refunds.is_empty());
    assert_eq!(received(&server).await.len(), 2);
}

#[tokio::test]
async fn an_unparseable_refund_in_a_list_is_named_by_its_index() {
    let server = MockServer::start().await;
    let mut broken = refund_body("re_3Broken", "pi_3Refunded", 1, "succeeded");
    broken.as_object_mut().expect("object").remove("currency");
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![
                refund_body("re_3Fine", "pi_3Refunded", 1, "succeeded"),
                broken,
            ],
            false,
        )))
        .mount(&server)
        .await;
    let err = provider(&server)
        .list_refunds("pi_3Refunded")
        .await
        .expect_err("missing field");
    assert!(
        matches!(&err, ProviderError::Unexpected(m) if m.contains("`data[1].currency` is missing")),
        "{err:?}"
    );
}

#[tokio::test]
async fn refund_ids_that_are_not_stripe_ids_never_reach_stripe() {
    let server = MockServer::start().await;
    let provider = provider(&server);
    for id in ["", "re_1/../../customers", "re_1?expand[]=charge", "re 1"] {
        let err = provider.retrieve_refund(id).await.expect_err("bad id");
        assert!(matches!(err, ProviderError::NotFound), "{id}: {err:?}");
        let err = provider.list_refunds(id).await.expect_err("bad id");
        assert!(matches!(err, ProviderError::NotFound), "{id}: {err:?}");
    }
    assert!(received(&server).await.is_empty());
}

// --- Manual capture and disputes (issue 17) ------------------------------------------------

#[tokio::test]
async fn a_manual_intent_is_created_with_capture_method_manual() {
    let server = MockServer::start().await;
    let mut body = intent_body("pi_3Manual", 4200, "requires_payment_method");
    body["capture_method"] = json!("manual");
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let request = NewPaymentIntent {
        capture_method: paybridge::domain::CaptureMethod::Manual,
        ..new_intent()
    };
    provider(&server)
        .create_payment_intent(request)
        .await
        .expect("created");
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let sent = form(&reqs[0]);
    assert_eq!(
        sent.get("capture_method").map(String::as_str),
        Some("manual")
    );
    assert_eq!(
        sent.len(),
        8,
        "the automatic request's seven fields and capture_method"
    );
}

#[tokio::test]
async fn capture_posts_amount_to_capture_with_the_key_and_reads_what_was_received() {
    let server = MockServer::start().await;
    let mut body = intent_body("pi_3Capture", 1000, "succeeded");
    body["capture_method"] = json!("manual");
    body["amount_received"] = json!(600);
    body["amount_capturable"] = json!(0);
    body["latest_charge"] = json!("ch_3Capture");
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents/pi_3Capture/capture"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(1)
        .mount(&server)
        .await;
    let intent = provider(&server)
        .capture_payment_intent("pi_3Capture", 600, "paybridge-capture-pay_7")
        .await
        .expect("captured");
    assert_eq!(intent.status, PaymentStatus::Succeeded);
    assert_eq!((intent.amount_received, intent.amount_capturable), (600, 0));
    assert_eq!(intent.latest_charge.as_deref(), Some("ch_3Capture"));
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v1/payment_intents/pi_3Capture/capture");
    assert_eq!(req.url.query(), None);
    assert_common_headers(req);
    assert_eq!(
        header(req, "idempotency-key"),
        Some("paybridge-capture-pay_7")
    );
    assert_eq!(form(req), map(&[("amount_to_capture", "600")]));
}

#[tokio::test]
async fn a_capture_stripe_refuses_is_rejected_and_a_bad_id_never_reaches_stripe() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents/pi_3Lapsed/capture"))
        .respond_with(ResponseTemplate::new(400).set_body_json(stripe_error(
            "payment_intent_unexpected_state",
            "This PaymentIntent could not be captured because it has a status of canceled.",
            "",
        )))
        .mount(&server)
        .await;
    let refused = provider(&server)
        .capture_payment_intent("pi_3Lapsed", 100, "paybridge-capture-pay_8")
        .await
        .expect_err("refused");
    assert!(
        matches!(&refused, ProviderError::Rejected { status: 400, code: Some(code), .. } if code == "payment_intent_unexpected_state"),
        "{refused:?}"
    );
    let bad = provider(&server)
        .capture_payment_intent("pi_3/../x", 100, "k")
        .await
        .expect_err("not an id");
    assert!(matches!(bad, ProviderError::NotFound));
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn retrieve_charge_is_a_plain_get_that_reads_the_authorizations_deadline() {
    let server = MockServer::start().await;
    let mut charge = fixture("charge");
    charge["id"] = json!("ch_3Auth");
    charge["payment_intent"] = json!("pi_3Auth");
    charge["captured"] = json!(false);
    charge["payment_method_details"]["card"]["capture_before"] = json!(1_765_000_000);
    Mock::given(method("GET"))
        .and(path("/v1/charges/ch_3Auth"))
        .respond_with(ResponseTemplate::new(200).set_body_json(charge))
        .mount(&server)
        .await;
    let read = provider(&server)
        .retrieve_charge("ch_3Auth")
        .await
        .expect("read");
    assert_eq!(
        read,
        paybridge::app::ports::ProviderCharge {
            id: "ch_3Auth".to_owned(),
            payment_intent: Some("pi_3Auth".to_owned()),
            capture_before: Some(1_765_000_000_000),
        }
    );
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method.as_str(), "GET");
    assert_eq!(reqs[0].url.query(), None);
    assert!(reqs[0].body.is_empty());
    assert_common_headers(&reqs[0]);
    assert_eq!(header(&reqs[0], "idempotency-key"), None);
}

/// Stripe's example Dispute of `pi`, with id and status adjusted.
fn dispute_body(id: &str, pi: &str, status: &str) -> Value {
    let mut dp = fixture("dispute");
    dp["id"] = json!(id);
    dp["payment_intent"] = json!(pi);
    dp["status"] = json!(status);
    dp
}

#[tokio::test]
async fn list_disputes_asks_for_one_intents_disputes_page_by_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/disputes"))
        .and(query_param_is_missing("starting_after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![dispute_body("dp_3Second", "pi_3Disputed", "lost")],
            true,
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/disputes"))
        .and(query_param("starting_after", "dp_3Second"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![dispute_body("dp_3First", "pi_3Disputed", "won")],
            false,
        )))
        .mount(&server)
        .await;
    let disputes = provider(&server)
        .list_disputes("pi_3Disputed")
        .await
        .expect("listed");
    let read: Vec<(&str, paybridge::domain::DisputeStatus)> = disputes
        .iter()
        .map(|d| (d.dispute.id.as_str(), d.dispute.status))
        .collect();
    assert_eq!(
        read,
        [
            ("dp_3Second", paybridge::domain::DisputeStatus::Lost),
            ("dp_3First", paybridge::domain::DisputeStatus::Won),
        ]
    );
    assert_eq!(disputes[0].dispute.amount, 1000);
    assert_eq!(disputes[0].dispute.reason, "general");
    assert_eq!(disputes[0].dispute.evidence_due_by, Some(1_723_679_999_000));
    assert!(disputes[0].dispute.is_charge_refundable);
    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(req.method.as_str(), "GET");
        assert_eq!(req.url.path(), "/v1/disputes");
        assert!(req.body.is_empty());
        assert_common_headers(req);
        assert_eq!(header(req, "idempotency-key"), None);
    }
    assert_eq!(
        query(&reqs[0]),
        map(&[("payment_intent", "pi_3Disputed"), ("limit", "100")])
    );
    assert_eq!(
        query(&reqs[1]),
        map(&[
            ("payment_intent", "pi_3Disputed"),
            ("limit", "100"),
            ("starting_after", "dp_3Second"),
        ])
    );
}

#[tokio::test]
async fn a_dispute_of_an_unknown_status_is_unexpected() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/disputes"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list_body(
            vec![dispute_body("dp_3Odd", "pi_3Odd", "reopened")],
            false,
        )))
        .mount(&server)
        .await;
    let error = provider(&server)
        .list_disputes("pi_3Odd")
        .await
        .expect_err("unknown status");
    assert!(matches!(error, ProviderError::Unexpected(_)), "{error:?}");
}
