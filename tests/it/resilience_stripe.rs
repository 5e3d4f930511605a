//! Stripe faults, through the fault-injecting proxy (refused, reset mid-response, stalls beyond
//! the timeout) and the compat layer's HTTP faults (500s before and after the work, 429 bursts
//! with `Retry-After`, `Stripe-Should-Retry: false`, closed connections, slow answers). A create
//! either succeeds or fails with UNAVAILABLE/DEADLINE_EXCEEDED; retrying with the same key always
//! ends on one PaymentIntent. A return during an outage is "being confirmed", never a verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::support::fault_proxy::{FaultProxy, NetFault};
use crate::support::gateway::{GatewayOptions, GatewayTest, assert_no_redirect, status_of};
use crate::support::localstripe::CARD_SUCCEEDS;
use crate::support::{
    BILLING_TOKEN, Db, LocalStripe, Options, TestApp, as_tenant, create_request, eventually,
};
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
    let calls = AtomicU64::new(0);
    let mut failed_first = 0u64;
    let mut answers: BTreeMap<String, pb::CreateInvoicePaymentResponse> = BTreeMap::new();

    // Each fault alone: the first call meets it, then retries with the same key after healing.
    let matrix = fault_matrix();
    for (index, (name, fault)) in matrix.iter().enumerate() {
        let (key, invoice) = (format!("fault-key-{index}"), format!("INV-F{index}"));
        inject(&proxy, &app.stripe, fault).await;
        let first = create_with_deadline(&app, &key, &invoice).await;
        calls.fetch_add(1, Ordering::SeqCst);
        match &first {
            Ok(_) => {}
            Err(status) => {
                assert!(acceptable_failure(status), "{name}: {status:?}");
                failed_first += 1;
            }
        }
        heal(&proxy, &app.stripe).await;
        let answer = match first {
            Ok(answer) => answer,
            Err(_) => eventually(Duration::from_secs(30), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                let retried = create_with_deadline(&app, &key, &invoice).await;
                if let Err(status) = &retried {
                    assert!(acceptable_failure(status), "{name}, retry: {status:?}");
                }
                retried
            })
            .await
            .unwrap_or_else(|status| panic!("{name}: no success after healing: {status:?}")),
        };
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
                // The flapping's rhythm: 150 ms faulty, 50 ms healthy.
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
            let calls = AtomicU64::new(0);
            for n in 0..4 {
                let (key, invoice) = (format!("flap-{client}-{n}"), format!("INV-C{client}-{n}"));
                let answer = eventually(Duration::from_secs(60), || async {
                    let mut request = as_tenant(BILLING_TOKEN, create_request(&key, &invoice));
                    request.set_timeout(Duration::from_secs(10));
                    calls.fetch_add(1, Ordering::SeqCst);
                    let answer = app_client.clone().create_invoice_payment(request).await;
                    if let Err(status) = &answer {
                        assert!(acceptable_failure(status), "{key}: {status:?}");
                    }
                    answer
                })
                .await
                .unwrap_or_else(|status| panic!("{key}: no success within 60 s: {status:?}"));
                results.push((key, answer.into_inner()));
            }
            (results, calls.into_inner())
        }));
    }
    for client in clients {
        let (results, client_calls) = client.await.expect("client");
        calls.fetch_add(client_calls, Ordering::SeqCst);
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
    let calls = calls.into_inner();
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
    let outages = [
        Fault::Net(NetFault::Refuse),
        Fault::Net(NetFault::StallBefore),
        Fault::Net(NetFault::ResetMidResponse { after_bytes: 20 }),
        Fault::Http(json!({"method": "GET", "status": 500, "times": 10})),
        Fault::Http(
            json!({"method": "GET", "status": 429, "times": 10, "headers": {"Retry-After": "1"}}),
        ),
    ];
    // A payment for each outage, since the core reuses an intent read (or its failure) for a
    // while. Each customer pays (Stripe.js talks to Stripe directly), then Stripe becomes
    // unreachable for paybridge just as the browser comes back.
    let mut payments = Vec::new();
    for n in 0..outages.len() {
        let created = test.create(&format!("INV-OUTAGE-{n}")).await;
        test.pay(&created, CARD_SUCCEEDS).await;
        payments.push(created);
    }
    for (outage, created) in outages.iter().zip(&payments) {
        inject(&proxy, &test.app.stripe, outage).await;
        let response = test.return_for(created, "succeeded").await;
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
            status_of(&test, created).await,
            pb::PaymentStatus::RequiresPaymentMethod,
            "{outage:?}: nothing recorded during the outage"
        );
    }
    // Stripe is back: the same returns (the page reloads itself) land on the success page, once
    // the core reads the intent anew.
    for created in &payments {
        let location = test.return_once_verified(created, "succeeded").await;
        assert!(
            location.starts_with("https://billing.example.com/paid"),
            "{location}"
        );
        assert_eq!(
            status_of(&test, created).await,
            pb::PaymentStatus::Succeeded
        );
    }
    eprintln!(
        "return during outage: {} outages, each answered 503 'confirming', then success",
        outages.len()
    );
    test.finish().await;
}

on_both_databases!(
    stripe_faults_end_in_one_intent_per_key,
    a_return_during_a_stripe_outage_is_being_confirmed_and_records_nothing,
);
