//! The browser's return through `paybridge gateway`, end to end on localstripe: each card's path,
//! repeated and concurrent returns, and a core restart.

use crate::support::gateway::{
    GatewayOptions, GatewayTest, assert_no_redirect, assert_redirect, param, status_of, through_3ds,
};
use crate::support::localstripe::{CARD_DECLINED, CARD_NEEDS_AUTHENTICATION, CARD_SUCCEEDS};
use crate::support::{Db, Options, create_request};
use paybridge::pb::v1 as pb;

const SUCCESS_URL: &str = "https://billing.example.com/paid?";
const FAILURE_URL: &str = "https://billing.example.com/payment-failed?";

async fn a_paid_card_returns_to_the_success_url_and_the_invoice_is_then_paid(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-1").await;
    let payment = created.payment.clone().expect("payment");
    let confirmed = test.pay(&created, CARD_SUCCEEDS).await;
    assert_eq!(confirmed["status"], "succeeded", "{confirmed}");

    let response = test.return_for(&created, "succeeded").await;
    let location = assert_redirect(&response);
    assert!(location.starts_with(SUCCESS_URL), "{location}");
    assert_eq!(param(&location, "payment_id"), Some(payment.id.clone()));
    assert_eq!(param(&location, "invoice_id").as_deref(), Some("INV-1"));
    assert_eq!(param(&location, "status").as_deref(), Some("succeeded"));
    assert!(!location.contains(&created.client_secret));
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );

    // The same return again: the same answer, no second transition.
    let again = assert_redirect(&test.return_for(&created, "succeeded").await);
    assert_eq!(again, location);

    // The gateway counts its answers by route and status, with no secret or id in a label.
    let metrics = test
        .http
        .get(format!("http://{}/metrics", test.admin_addr))
        .send()
        .await
        .expect("gateway metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .contains(r#"paybridge_gateway_requests_total{route="/payment/return",status="303"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&created.client_secret) && !metrics.contains(&payment.id));

    let refused = test
        .app
        .create(create_request("another-key", "INV-1"))
        .await
        .expect_err("already paid");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    test.finish().await;
}

async fn a_return_over_the_cores_unix_socket_redirects_to_the_success_url(db: Db) {
    // The sidecar layout: the gateway reaches the core through a socket on a shared volume.
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("core.sock");
    let options = Options {
        grpc_socket: Some(socket.clone()),
        ..Options::default()
    };
    let test = GatewayTest::spawn_with(db, options, GatewayOptions::default()).await;
    assert!(socket.exists(), "the core made its socket");
    let created = test.create("INV-UDS").await;
    let confirmed = test.pay(&created, CARD_SUCCEEDS).await;
    assert_eq!(confirmed["status"], "succeeded", "{confirmed}");

    let location = assert_redirect(&test.return_for(&created, "succeeded").await);
    assert!(location.starts_with(SUCCESS_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("succeeded"));
    test.finish().await;
}

async fn a_declined_card_returns_to_the_failure_url(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-2").await;
    let confirmed = test.pay(&created, CARD_DECLINED).await;
    assert_eq!(confirmed["error"]["code"], "card_declined", "{confirmed}");

    let location = assert_redirect(&test.return_for(&created, "failed").await);
    assert!(location.starts_with(FAILURE_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("failed"));
    assert_ne!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );
    test.finish().await;
}

async fn failed_authentication_returns_to_the_failure_url(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-3").await;
    let confirmed = test.pay(&created, CARD_NEEDS_AUTHENTICATION).await;
    assert_eq!(confirmed["status"], "requires_action", "{confirmed}");
    let return_url = through_3ds(&test, &confirmed, false).await;

    let response = test.http.get(&return_url).send().await.expect("gateway");
    let location = assert_redirect(&response);
    assert!(location.starts_with(FAILURE_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("failed"));
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::RequiresPaymentMethod
    );
    test.finish().await;
}

async fn passed_authentication_returns_to_the_success_url(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-4").await;
    let confirmed = test.pay(&created, CARD_NEEDS_AUTHENTICATION).await;
    assert_eq!(confirmed["status"], "requires_action", "{confirmed}");
    let return_url = through_3ds(&test, &confirmed, true).await;

    let response = test.http.get(&return_url).send().await.expect("gateway");
    let location = assert_redirect(&response);
    assert!(location.starts_with(SUCCESS_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("succeeded"));
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );
    test.finish().await;
}

async fn a_cancelled_payment_returns_to_the_failure_url(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-5").await;
    let payment = created.payment.clone().expect("payment");
    test.app.cancel(&payment.id).await.expect("cancelled");
    let reads = test.intent_reads(&created).await;

    let location = assert_redirect(&test.return_for(&created, "failed").await);
    assert!(location.starts_with(FAILURE_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("canceled"));
    assert_eq!(param(&location, "payment_id"), Some(payment.id));
    // Terminal already: Stripe is not asked again.
    assert_eq!(test.intent_reads(&created).await, reads);
    test.finish().await;
}

async fn sixty_four_concurrent_returns_read_the_intent_at_most_once(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-6").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    let before = test.intent_reads(&created).await;

    let returns = (0..64).map(|_| test.return_for(&created, "succeeded"));
    let responses = futures::future::join_all(returns).await;
    let locations: Vec<String> = responses.iter().map(assert_redirect).collect();
    assert!(locations.iter().all(|l| l == &locations[0]));
    assert_eq!(param(&locations[0], "status").as_deref(), Some("succeeded"));
    let reads = test.intent_reads(&created).await - before;
    assert!(reads <= 1, "{reads} reads of the intent for 64 returns");
    test.finish().await;
}

async fn a_stopped_core_answers_503_and_the_same_return_succeeds_once_it_is_back(db: Db) {
    let mut test = GatewayTest::spawn(db).await;
    let created = test.create("INV-7").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    test.wait_until_ready().await;

    test.app.stop_core().await;
    let response = test.return_for(&created, "succeeded").await;
    assert_no_redirect(&response, 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("confirming your payment")
    );
    assert_eq!(test.get("/readyz").await.status().as_u16(), 503);
    assert_eq!(test.get("/healthz").await.status().as_u16(), 200);

    test.app.start_core().await;
    let location = test.return_once_verified(&created, "succeeded").await;
    assert!(location.starts_with(SUCCESS_URL), "{location}");
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );
    test.finish().await;
}

on_both_databases!(
    a_return_over_the_cores_unix_socket_redirects_to_the_success_url,
    a_paid_card_returns_to_the_success_url_and_the_invoice_is_then_paid,
    a_declined_card_returns_to_the_failure_url,
    failed_authentication_returns_to_the_failure_url,
    passed_authentication_returns_to_the_success_url,
    a_cancelled_payment_returns_to_the_failure_url,
    sixty_four_concurrent_returns_read_the_intent_at_most_once,
    a_stopped_core_answers_503_and_the_same_return_succeeds_once_it_is_back,
);
