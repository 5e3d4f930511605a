//! The reconciler settles payments nobody told paybridge about, and finishes `Creating` rows.

use std::time::Duration;

use crate::support;
use crate::support::{Db, Options, TestApp, create_request, eventually};
use paybridge::adapters::store::Store;
use paybridge::app::ports::ReconcileClaims;
use paybridge::pb::v1 as pb;
use serde_json::json;

fn reconciling() -> Options {
    Options {
        reconcile_interval: Duration::from_millis(300),
        reconcile_after: Duration::ZERO,
        ..Default::default()
    }
}

/// Waits (at most 15 s) until the stored payment `id` is in `want`.
async fn wait_for_status(app: &TestApp, id: &str, want: pb::PaymentStatus) {
    eventually(Duration::from_secs(15), || async {
        match app.get(id, false).await.expect("get").status() {
            status if status == want => Ok(()),
            other => Err(other),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("{id} is still {last:?} after 15 s, not {want:?}"));
}

async fn a_paid_payment_without_return_or_webhook_is_settled_by_the_reconciler(db: Db) {
    let app = TestApp::spawn_with(db, reconciling()).await;
    let (_, payment, _) = app.create_paid("k1", "inv-1").await;
    wait_for_status(&app, &payment.id, pb::PaymentStatus::Succeeded).await;
    // Counted where an operator looks.
    let changed = support::metric_sum(
        &app.admin_addr,
        "paybridge_reconciler_payments_total",
        "outcome=\"changed\"",
    )
    .await;
    assert!(changed >= 1, "reconciler_payments changed: {changed}");
    let sweeps = support::metric_sum(
        &app.admin_addr,
        "paybridge_reconciler_sweeps_total",
        "result=\"ok\"",
    )
    .await;
    assert!(sweeps >= 1, "reconciler_sweeps ok: {sweeps}");
}

async fn a_payment_left_creating_by_a_lost_answer_is_finished_with_the_same_intent_and_settled_once_paid(
    db: Db,
) {
    let app = TestApp::spawn_with(
        db,
        Options {
            stripe_max_retries: 0,
            ..reconciling()
        },
    )
    .await;
    app.stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "times": 1, "status": 500, "when": "after"}))
        .await;
    app.create(create_request("k1", "inv-1"))
        .await
        .expect_err("answer lost");
    let listed = app
        .list(pb::ListPaymentsRequest::default())
        .await
        .expect("list");
    let id = listed.payments[0].id.clone();
    wait_for_status(&app, &id, pb::PaymentStatus::RequiresPaymentMethod).await;
    let intents = app.stripe.payment_intents().await;
    assert_eq!(intents.len(), 1);
    let payment = app.get(&id, false).await.expect("get");
    assert_eq!(intents[0]["id"], payment.stripe_payment_intent_id.as_str());
    // Paid without a webhook or a return: the reconciler that finished it looks again on its
    // schedule, not only when the claim's lease (120 s) runs out.
    let client_secret = intents[0]["client_secret"].as_str().expect("client secret");
    app.stripe
        .pay_succeeding(&payment.stripe_payment_intent_id, client_secret)
        .await;
    wait_for_status(&app, &id, pb::PaymentStatus::Succeeded).await;
}

async fn replicas_claim_disjoint_payments(db: Db) {
    let app = TestApp::spawn(db).await;
    for i in 0..20 {
        app.create(create_request(&format!("k{i}"), &format!("inv-{i}")))
            .await
            .expect("created");
    }
    let a = Store::connect(&app.database_url, 4).await.expect("store a");
    let b = Store::connect(&app.database_url, 4).await.expect("store b");
    let now = support::events::now() * 1000;
    let (left, right) = tokio::join!(
        a.claim_for_reconcile(now, now + 1000, now + 60_000, 15),
        b.claim_for_reconcile(now, now + 1000, now + 60_000, 15),
    );
    let left: Vec<String> = left.expect("claim a").into_iter().map(|p| p.id).collect();
    let right: Vec<String> = right.expect("claim b").into_iter().map(|p| p.id).collect();
    assert_eq!(left.len() + right.len(), 20, "{left:?} {right:?}");
    assert!(
        left.iter().all(|id| !right.contains(id)),
        "claimed twice: {left:?} {right:?}"
    );
    // Leased: nothing is left to claim.
    let again = a
        .claim_for_reconcile(now, now + 1000, now + 60_000, 15)
        .await
        .expect("claim");
    assert!(again.is_empty());
}

async fn two_replicas_share_the_reconcilers_work_without_reading_a_payment_twice(db: Db) {
    // The first replica only takes payments; two others reconcile, two payments a sweep each.
    let app = TestApp::spawn(db).await;
    let mut intents = Vec::new();
    for i in 0..12 {
        let (_, payment, _) = app.create_paid(&format!("k{i}"), &format!("inv-{i}")).await;
        intents.push((payment.id, payment.stripe_payment_intent_id));
    }
    // Slow reads widen the window in which both replicas sweep at once.
    app.stripe
        .inject_fault(json!({"method": "GET", "path_prefix": "/v1/payment_intents/", "times": 12, "status": null, "delay_ms": 150}))
        .await;
    let options = || Options {
        reconcile_interval: Duration::from_millis(100),
        reconcile_after: Duration::ZERO,
        reconcile_batch: 2,
        ..Default::default()
    };
    let (first, second) = tokio::join!(app.spawn_replica(options()), app.spawn_replica(options()));
    for (id, _) in &intents {
        wait_for_status(&app, id, pb::PaymentStatus::Succeeded).await;
    }
    drop((first, second));
    let log = app.stripe.requests().await;
    for (_, intent) in &intents {
        let path = format!("/v1/payment_intents/{intent}");
        let reads = log["requests"]
            .as_array()
            .expect("request log")
            .iter()
            .filter(|r| r["method"] == "GET" && r["path"] == path.as_str())
            .count();
        assert_eq!(reads, 1, "{intent} was read {reads} times");
    }
}

on_both_databases!(
    two_replicas_share_the_reconcilers_work_without_reading_a_payment_twice,
    a_paid_payment_without_return_or_webhook_is_settled_by_the_reconciler,
    a_payment_left_creating_by_a_lost_answer_is_finished_with_the_same_intent_and_settled_once_paid,
    replicas_claim_disjoint_payments,
);
