//! Stripe faults, through the fault-injecting proxy (refused, reset mid-response, stalls beyond
//! the timeout) and the compat layer's HTTP faults (500s before and after the work, 429 bursts
//! with `Retry-After`, `Stripe-Should-Retry: false`, closed connections, slow answers). A create
//! either succeeds or fails with UNAVAILABLE/DEADLINE_EXCEEDED; retrying with the same key always
//! ends on one PaymentIntent. A return during an outage is "being confirmed", never a verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fault_proxy::{FaultProxy, NetFault};
use crate::support::gateway::{
    GatewayOptions, GatewayTest, assert_no_redirect, assert_redirect, status_of,
};
use crate::support::localstripe::CARD_SUCCEEDS;
use crate::support::{BILLING_TOKEN, Db, LocalStripe, Options, TestApp, as_tenant, create_request};
use paybridge::pb::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

const CREATE_INTENT: &str = "POST /v1/payment_intents";

fn faulty_stripe() -> Options {
    Options {
        stripe_proxy: true,
        stripe_timeout: Duration::from_secs(1),
        stripe_max_retries: 1,
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
enum Fault {
    Net(NetFault),
    Http(Value),
}

fn fault_matrix() -> Vec<(&'static str, Fault)> {
    let creates = |extra: Value| {
        let mut fault = json!({"method": "POST", "path_prefix": "/v1/payment_intents"});
        for (k, v) in extra.as_object().expect("object") {
            fault[k] = v.clone();
        }
        Fault::Http(fault)
    };
    vec![
        ("connection refused", Fault::Net(NetFault::Refuse)),
        (
            "reset mid-response",
            Fault::Net(NetFault::ResetMidResponse { after_bytes: 40 }),
        ),
        ("stall before Stripe", Fault::Net(NetFault::StallBefore)),
        ("stall after Stripe acted", Fault::Net(NetFault::StallAfter)),
        (
            "500 before",
            creates(json!({"status": 500, "times": 2, "when": "before"})),
        ),
        (
            "500 after (lost answer)",
            creates(json!({"status": 500, "times": 2, "when": "after"})),
        ),
        (
            "429 burst with Retry-After",
            creates(json!({"status": 429, "times": 6, "headers": {"Retry-After": "1"}})),
        ),
        (
            "503 Stripe-Should-Retry false, after",
            creates(
                json!({"status": 503, "times": 1, "when": "after", "headers": {"Stripe-Should-Retry": "false"}}),
            ),
        ),
        (
            "connection closed without answer",
            creates(json!({"status": 0, "times": 2})),
        ),
        (
            "answer slower than the timeout",
            creates(json!({"status": null, "delay_ms": 1500, "when": "after", "times": 2})),
        ),
        (
            "one 500 then success (retried inside the call)",
            creates(json!({"status": 500, "times": 1, "when": "after"})),
        ),
    ]
}

async fn inject(proxy: &FaultProxy, stripe: &LocalStripe, fault: &Fault) {
    match fault {
        Fault::Net(net) => proxy.set(*net).await,
        Fault::Http(http) => stripe.inject_fault(http.clone()).await,
    }
}

async fn heal(proxy: &FaultProxy, stripe: &LocalStripe) {
    proxy.set(NetFault::Pass).await;
    stripe.clear_faults().await;
}

async fn create_with_deadline(
    app: &TestApp,
    key: &str,
    invoice: &str,
) -> Result<pb::CreateInvoicePaymentResponse, tonic::Status> {
    let mut request = as_tenant(BILLING_TOKEN, create_request(key, invoice));
    request.set_timeout(Duration::from_secs(10));
    app.client
        .clone()
        .create_invoice_payment(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Every intent at the fake, by `metadata.paybridge_payment_id`.
async fn intents_by_payment(stripe: &LocalStripe) -> BTreeMap<String, Vec<String>> {
    let mut by_payment: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for intent in stripe.payment_intents().await {
        let payment = intent["metadata"]["paybridge_payment_id"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned();
        by_payment
            .entry(payment)
            .or_default()
            .push(intent["id"].as_str().expect("id").to_owned());
    }
    by_payment
}

fn acceptable_failure(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

async fn stripe_faults_end_in_one_intent_per_key(db: Db) {
    let app = TestApp::spawn_with(db, faulty_stripe()).await;
    let proxy = Arc::clone(app.proxy.as_ref().expect("proxy"));
    let mut calls = 0u64;
    let mut failed_first = 0u64;
    let mut answers: BTreeMap<String, pb::CreateInvoicePaymentResponse> = BTreeMap::new();

    // Each fault alone: the first call meets it, then retries with the same key after healing.
    let matrix = fault_matrix();
    for (index, (name, fault)) in matrix.iter().enumerate() {
        let (key, invoice) = (format!("fault-key-{index}"), format!("INV-F{index}"));
        inject(&proxy, &app.stripe, fault).await;
        let first = create_with_deadline(&app, &key, &invoice).await;
        calls += 1;
        match &first {
            Ok(_) => {}
            Err(status) => {
                assert!(acceptable_failure(status), "{name}: {status:?}");
                failed_first += 1;
            }
        }
        heal(&proxy, &app.stripe).await;
        let mut answer = first.ok();
        for _ in 0..20 {
            if answer.is_some() {
                break;
            }
            calls += 1;
            match create_with_deadline(&app, &key, &invoice).await {
                Ok(ok) => answer = Some(ok),
                Err(status) => {
                    assert!(acceptable_failure(&status), "{name}, retry: {status:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let answer = answer.unwrap_or_else(|| panic!("{name}: no success after healing"));
        answers.insert(key, answer);
    }

    // Faults flapping every 150 ms while four clients retry four keys each until they succeed.
    let flapping = {
        let proxy = Arc::clone(&proxy);
        let stripe = Arc::clone(&app.stripe);
        let matrix = fault_matrix();
        tokio::spawn(async move {
            let mut injected = 0u64;
            for round in 0..40 {
                let (_, fault) = &matrix[round % matrix.len()];
                inject(&proxy, &stripe, fault).await;
                injected += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
                heal(&proxy, &stripe).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            injected
        })
    };
    let mut clients = Vec::new();
    for client in 0..4 {
        let app_client = app.client.clone();
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut calls = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0..4 {
                let (key, invoice) = (format!("flap-{client}-{n}"), format!("INV-C{client}-{n}"));
                loop {
                    assert!(Instant::now() < deadline, "{key}: no success within 60 s");
                    let mut request = as_tenant(BILLING_TOKEN, create_request(&key, &invoice));
                    request.set_timeout(Duration::from_secs(10));
                    calls += 1;
                    match app_client.clone().create_invoice_payment(request).await {
                        Ok(answer) => {
                            results.push((key.clone(), answer.into_inner()));
                            break;
                        }
                        Err(status) => {
                            assert!(acceptable_failure(&status), "{key}: {status:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            (results, calls)
        }));
    }
    for client in clients {
        let (results, client_calls) = client.await.expect("client");
        calls += client_calls;
        answers.extend(results);
    }
    let flaps = flapping.await.expect("flapping");
    heal(&proxy, &app.stripe).await;

    // One intent per key, and it is the one the payment records.
    let by_payment = intents_by_payment(&app.stripe).await;
    let mut duplicates = 0;
    for (payment, intents) in &by_payment {
        if intents.len() != 1 {
            duplicates += intents.len() - 1;
            eprintln!("payment {payment} has intents {intents:?}");
        }
    }
    let paid_ids: BTreeSet<&str> = answers
        .values()
        .map(|a| a.payment.as_ref().expect("payment").id.as_str())
        .collect();
    assert_eq!(paid_ids.len(), answers.len(), "each key its own payment");
    for answer in answers.values() {
        let payment = answer.payment.as_ref().expect("payment");
        assert_eq!(
            by_payment.get(&payment.id),
            Some(&vec![payment.stripe_payment_intent_id.clone()]),
            "payment {}",
            payment.id
        );
        let stored = app.get(&payment.id, false).await.expect("stored");
        assert_eq!(stored.status(), pb::PaymentStatus::RequiresPaymentMethod);
    }
    let create_requests = app.stripe.count(CREATE_INTENT).await;
    let net_faults = proxy.stats().faults();
    eprintln!(
        "stripe faults: {} faults injected ({} kinds alone, {flaps} flapping rounds; {net_faults} at the network), \
         {calls} create calls, {failed_first} first calls failed as UNAVAILABLE/DEADLINE_EXCEEDED, \
         {create_requests} intent creates at Stripe, {} keys, {} intents, {duplicates} duplicate intents",
        matrix.len() as u64 + flaps,
        matrix.len(),
        answers.len(),
        by_payment.values().map(Vec::len).sum::<usize>(),
    );
    assert_eq!(duplicates, 0, "a key made a second PaymentIntent");
    assert_eq!(by_payment.len(), answers.len());
}

async fn a_return_during_a_stripe_outage_is_being_confirmed_and_records_nothing(db: Db) {
    let test = GatewayTest::spawn_with(db, faulty_stripe(), GatewayOptions::default()).await;
    let proxy = Arc::clone(test.app.proxy.as_ref().expect("proxy"));
    let created = test.create("INV-OUTAGE").await;
    // The customer pays (Stripe.js talks to Stripe directly), then Stripe becomes unreachable for
    // paybridge just as the browser comes back.
    test.pay(&created, CARD_SUCCEEDS).await;
    let outages = [
        Fault::Net(NetFault::Refuse),
        Fault::Net(NetFault::StallBefore),
        Fault::Net(NetFault::ResetMidResponse { after_bytes: 20 }),
        Fault::Http(json!({"method": "GET", "status": 500, "times": 10})),
        Fault::Http(
            json!({"method": "GET", "status": 429, "times": 10, "headers": {"Retry-After": "1"}}),
        ),
    ];
    // The core reuses an intent read (or its failure) for a second, so each step waits that out.
    let fresh_for = Duration::from_millis(1100);
    for outage in &outages {
        inject(&proxy, &test.app.stripe, outage).await;
        tokio::time::sleep(fresh_for).await;
        let response = test.return_for(&created, "succeeded").await;
        assert_no_redirect(&response, 503);
        assert!(
            response.headers().get("retry-after").is_some(),
            "{outage:?}"
        );
        let page = response.text().await.expect("page");
        assert!(
            page.contains("confirming your payment"),
            "{outage:?}: {page}"
        );
        assert!(!page.contains("secret"), "{page}");
        heal(&proxy, &test.app.stripe).await;
        assert_eq!(
            status_of(&test, &created).await,
            pb::PaymentStatus::RequiresPaymentMethod,
            "{outage:?}: nothing recorded during the outage"
        );
    }
    // Stripe is back: the same return (the page reloads itself) now lands on the success page.
    tokio::time::sleep(fresh_for).await;
    let response = test.return_for(&created, "succeeded").await;
    let location = assert_redirect(&response);
    assert!(
        location.starts_with("https://billing.example.com/paid"),
        "{location}"
    );
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );
    eprintln!(
        "return during outage: {} outages, each answered 503 'confirming', then one success",
        outages.len()
    );
    test.finish().await;
}

on_both_databases!(
    stripe_faults_end_in_one_intent_per_key,
    a_return_during_a_stripe_outage_is_being_confirmed_and_records_nothing,
);
