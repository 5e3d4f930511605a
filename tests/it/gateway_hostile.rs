//! Hostile returns: whatever the query says, nothing changes, no success redirect is given and
//! no redirect leaves the tenant's URLs. Malformed queries never reach the core.

use std::time::Duration;

use crate::support::gateway::{
    GatewayOptions, GatewayTest, assert_no_redirect, assert_redirect, param, status_of,
};
use crate::support::localstripe::{CARD_SUCCEEDS, SECRET_KEY};
use crate::support::{Db, Options, eventually};
use paybridge::pb::v1 as pb;
use serde_json::Value;

const FAILURE_URL: &str = "https://billing.example.com/payment-failed?";

fn intent_of(created: &pb::CreateInvoicePaymentResponse) -> String {
    created
        .payment
        .as_ref()
        .expect("payment")
        .stripe_payment_intent_id
        .clone()
}

/// A call to the fake with the secret key, as a server would make it.
async fn stripe_post(test: &GatewayTest, path: &str, form: &[(&str, &str)]) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}", test.app.stripe.base_url))
        .bearer_auth(SECRET_KEY)
        .form(form)
        .send()
        .await
        .expect("localstripe")
        .json()
        .await
        .expect("json")
}

async fn a_wrong_client_secret_is_rejected_without_a_stripe_call(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-H1").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    let intent = intent_of(&created);
    let reads = test.intent_reads(&created).await;

    let query =
        GatewayTest::return_query(&intent, &format!("{intent}_secret_guessed"), "succeeded");
    let response = test.get(&format!("/payment/return?{query}")).await;
    assert_no_redirect(&response, 400);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("could not verify")
    );
    assert_eq!(test.intent_reads(&created).await, reads, "Stripe was asked");
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::RequiresPaymentMethod
    );
    test.finish().await;
}

async fn redirect_status_succeeded_for_an_unpaid_intent_goes_to_the_failure_url(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-H2").await;
    let location = assert_redirect(&test.return_for(&created, "succeeded").await);
    assert!(location.starts_with(FAILURE_URL), "{location}");
    assert_eq!(param(&location, "status").as_deref(), Some("failed"));
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::RequiresPaymentMethod
    );
    test.finish().await;
}

async fn an_intent_that_is_not_ours_is_rejected(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let foreign = stripe_post(
        &test,
        "/v1/payment_intents",
        &[("amount", "4200"), ("currency", "usd")],
    )
    .await;
    let intent = foreign["id"].as_str().expect("id");
    let secret = foreign["client_secret"].as_str().expect("secret");
    test.remember_secret(secret);
    let query = GatewayTest::return_query(intent, secret, "succeeded");
    let response = test.get(&format!("/payment/return?{query}")).await;
    assert_no_redirect(&response, 400);
    test.finish().await;
}

async fn an_intent_that_differs_at_stripe_is_rejected(db: Db) {
    let test = GatewayTest::spawn(db).await;
    // The fake keeps an updated amount as a string, so the amount case changes the row instead:
    // either way the row and Stripe disagree.
    let changes: [(&str, &str); 3] = [
        ("amount", "4300"),
        ("currency", "eur"),
        ("metadata[paybridge_payment_id]", "pay_someoneelse"),
    ];
    for (n, (field, value)) in changes.into_iter().enumerate() {
        let created = test.create(&format!("INV-H4-{n}")).await;
        test.pay(&created, CARD_SUCCEEDS).await;
        let intent = intent_of(&created);
        if field == "amount" {
            set_row_amount(&test, &created.payment.as_ref().expect("payment").id, 4300).await;
        } else {
            let changed = stripe_post(
                &test,
                &format!("/v1/payment_intents/{intent}"),
                &[(field, value)],
            )
            .await;
            assert!(changed["error"].is_null(), "{changed}");
        }

        let response = test.return_for(&created, "succeeded").await;
        assert_no_redirect(&response, 400);
        assert_ne!(
            status_of(&test, &created).await,
            pb::PaymentStatus::Succeeded,
            "{field} differs at Stripe"
        );
    }
    test.finish().await;
}

async fn set_row_amount(test: &GatewayTest, payment_id: &str, amount: i64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&test.app.database_url)
        .await
        .expect("database");
    let updated = sqlx::query("update payment set amount = $1 where payment_id = $2")
        .bind(amount)
        .bind(payment_id)
        .execute(&pool)
        .await
        .expect("update");
    assert_eq!(updated.rows_affected(), 1);
    pool.close().await;
}

/// Queries the gateway refuses by their shape. Checked with the core stopped: an answer other
/// than 400 (a 503) would mean the gateway called it.
fn malformed_queries(intent: &str, secret: &str) -> Vec<String> {
    let good = GatewayTest::return_query(intent, secret, "succeeded");
    let mut queries = vec![
        String::new(),
        "?".to_owned(),
        "payment_intent=&payment_intent_client_secret=&redirect_status=".to_owned(),
        format!("payment_intent={intent}"),
        format!("payment_intent_client_secret={secret}"),
        format!("{good}&payment_intent={intent}"),
        format!("{good}&redirect_status=failed"),
        format!("{good}&"),
        format!("&{good}"),
        format!("{good}&payment_intent"),
        good.replace('&', ";"),
        good.replace("payment_intent=", "Payment_Intent="),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}{}",
            "x".repeat(2000)
        ),
        format!("payment_intent=../../{intent}&payment_intent_client_secret={secret}"),
        format!("payment_intent={intent}%2F..%2Fadmin&payment_intent_client_secret={secret}"),
        format!("payment_intent=%2Fetc%2Fpasswd&payment_intent_client_secret={secret}"),
        format!("payment_intent={intent}%00&payment_intent_client_secret={secret}"),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}%0d%0aSet-Cookie:%20a=b"
        ),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}&redirect_status=succeeded%09"
        ),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}&redirect_status=SUCCEEDED"
        ),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}&redirect_status={}",
            "a".repeat(40)
        ),
        format!("payment_intent=pi_%C3%A9&payment_intent_client_secret={secret}"),
        format!("payment_intent={intent}&payment_intent_client_secret=pi_other_secret_abc"),
        format!(
            "payment_intent={intent}&payment_intent_client_secret={}",
            secret.replace('_', "%5F")
        ),
        format!("payment_intent=ch_123&payment_intent_client_secret=ch_123_secret_abc"),
    ];
    for parameter in ["next", "redirect", "return_to", "url"] {
        queries.push(format!("{good}&{parameter}=https://evil.example/"));
        queries.push(format!("{parameter}=https%3A%2F%2Fevil.example%2F&{good}"));
    }
    queries
}

async fn malformed_queries_and_extra_parameters_are_refused_before_the_core(db: Db) {
    let mut test = GatewayTest::spawn(db).await;
    let created = test.create("INV-H5").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    let intent = intent_of(&created);
    let queries = malformed_queries(&intent, &created.client_secret);

    test.app.stop_core().await;
    for query in &queries {
        let response = test.get(&format!("/payment/return?{query}")).await;
        assert_no_redirect(&response, 400);
        let page = response.text().await.expect("page");
        assert!(!page.contains("evil"), "{query}: the page echoes the query");
    }
    // The query was never the problem: once the core is back, the real return works.
    test.app.start_core().await;
    let location = test.return_once_verified(&created, "succeeded").await;
    assert!(
        location.starts_with("https://billing.example.com/paid?"),
        "{location}"
    );
    test.finish().await;
}

async fn other_methods_are_refused_without_effect(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-H6").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    let reads = test.intent_reads(&created).await;
    let query =
        GatewayTest::return_query(&intent_of(&created), &created.client_secret, "succeeded");
    let url = test.url(&format!("/payment/return?{query}"));
    for method in ["POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = test
            .http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("answer");
        assert_no_redirect(&response, 405);
        assert_eq!(response.headers()["allow"], "GET", "{method}");
    }
    assert_eq!(test.intent_reads(&created).await, reads);
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::RequiresPaymentMethod
    );
    test.finish().await;
}

async fn one_client_is_rate_limited_on_the_return_route(db: Db) {
    let test = GatewayTest::spawn_with(
        db,
        Options::default(),
        GatewayOptions {
            rate_limit: 1,
            rate_burst: 3,
            ..GatewayOptions::default()
        },
    )
    .await;
    let created = test.create("INV-H7").await;
    for _ in 0..3 {
        assert_redirect(&test.return_for(&created, "failed").await);
    }
    let limited = test.return_for(&created, "failed").await;
    assert_no_redirect(&limited, 429);
    assert!(limited.headers().get("retry-after").is_some());
    // Other routes are not limited.
    assert_eq!(test.get("/healthz").await.status().as_u16(), 200);
    test.finish().await;
}

async fn returns_above_the_concurrency_limit_are_shed(db: Db) {
    let test = GatewayTest::spawn_with(
        db,
        Options::default(),
        GatewayOptions {
            max_concurrency: 1,
            ..GatewayOptions::default()
        },
    )
    .await;
    let created = test.create("INV-H8").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    // Stripe answers slowly, so the first verification holds the only slot.
    test.app
        .stripe
        .inject_fault(serde_json::json!({
            "method": "GET", "path_prefix": "/v1/payment_intents/", "status": null,
            "delay_ms": 1500, "times": 1
        }))
        .await;
    let slow = test.return_for(&created, "succeeded");
    let shed = async {
        // Once the first verification's read has reached Stripe, it holds the only slot.
        eventually(Duration::from_secs(10), || async {
            match test.app.stripe.fault_hits().await {
                0 => Err("the slow read has not reached Stripe"),
                _ => Ok(()),
            }
        })
        .await
        .expect("the slow read reaches Stripe");
        test.return_for(&created, "succeeded").await
    };
    let (slow, shed) = tokio::join!(slow, shed);
    assert_no_redirect(&shed, 503);
    let location = assert_redirect(&slow);
    assert_eq!(param(&location, "status").as_deref(), Some("succeeded"));
    test.finish().await;
}

on_both_databases!(
    a_wrong_client_secret_is_rejected_without_a_stripe_call,
    redirect_status_succeeded_for_an_unpaid_intent_goes_to_the_failure_url,
    an_intent_that_is_not_ours_is_rejected,
    an_intent_that_differs_at_stripe_is_rejected,
    malformed_queries_and_extra_parameters_are_refused_before_the_core,
    other_methods_are_refused_without_effect,
    one_client_is_rate_limited_on_the_return_route,
    returns_above_the_concurrency_limit_are_shed,
);
