//! WatchPayment streams the current state, then each change, and ends after a terminal state —
//! across replicas on PostgreSQL.

use std::time::Duration;

use crate::support;
use crate::support::events::{event, now};
use crate::support::localstripe::CARD_SUCCEEDS;
use crate::support::{BILLING_TOKEN, Db, Options, TestApp, as_tenant, create_request};
use paybridge::pb::v1 as pb;
use tonic::Code;

async fn watch(app: &TestApp, id: &str) -> tonic::Streaming<pb::Payment> {
    app.client
        .clone()
        .watch_payment(as_tenant(
            BILLING_TOKEN,
            pb::WatchPaymentRequest { id: id.to_owned() },
        ))
        .await
        .expect("watch")
        .into_inner()
}

async fn next(stream: &mut tonic::Streaming<pb::Payment>) -> Option<pb::Payment> {
    tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("a message or the end within 15 s")
        .expect("stream")
}

async fn a_watcher_sees_the_change_made_on_another_replica_and_the_end(db: Db) {
    let app = TestApp::spawn(db).await;
    // On SQLite there is one process: the "replica" is the same app.
    let other = match db {
        Db::Postgres => Some(app.spawn_replica(Options::default()).await),
        Db::Sqlite => None,
    };
    let changer = other.as_ref().unwrap_or(&app);

    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    let mut stream = watch(&app, &payment.id).await;
    let first = next(&mut stream).await.expect("current state");
    assert_eq!(first.status(), pb::PaymentStatus::RequiresPaymentMethod);

    let intent = app
        .stripe
        .pay(
            &payment.stripe_payment_intent_id,
            &answer.client_secret,
            CARD_SUCCEEDS,
        )
        .await;
    let body = event("evt_w1", "payment_intent.succeeded", now(), intent);
    changer.deliver_signed(&body, now()).await.expect("applied");

    let changed = next(&mut stream).await.expect("the change");
    assert_eq!(changed.status(), pb::PaymentStatus::Succeeded);
    assert!(
        next(&mut stream).await.is_none(),
        "ends after a terminal state"
    );
}

async fn a_watcher_that_comes_late_gets_the_final_state(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    app.cancel(&payment.id).await.expect("cancelled");
    let mut stream = watch(&app, &payment.id).await;
    assert_eq!(
        next(&mut stream).await.expect("state").status(),
        pb::PaymentStatus::Canceled
    );
    assert!(next(&mut stream).await.is_none());
}

async fn watching_another_tenants_payment_is_not_found(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let id = answer.payment.expect("payment").id;
    let status = app
        .client
        .clone()
        .watch_payment(as_tenant(
            support::ORDERS_TOKEN,
            pb::WatchPaymentRequest { id },
        ))
        .await
        .expect_err("hidden");
    assert_eq!(status.code(), Code::NotFound);
}

async fn a_slow_watcher_does_not_hold_up_others(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    // One watcher that never reads, many changes, and a second watcher that must still see the end.
    let _stalled = watch(&app, &payment.id).await;
    let mut reader = watch(&app, &payment.id).await;
    next(&mut reader).await.expect("current");
    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    let t = now();
    for i in 0..40 {
        let mut flapping = intent.clone();
        flapping["status"] = if i % 2 == 0 {
            "processing".into()
        } else {
            "requires_action".into()
        };
        let body = event(
            &format!("evt_flap_{i}"),
            "payment_intent.processing",
            t + i,
            flapping,
        );
        app.deliver_signed(&body, t).await.expect("applied");
    }
    app.cancel(&payment.id).await.expect("cancelled");
    let mut last = None;
    while let Some(payment) = next(&mut reader).await {
        last = Some(payment.status());
    }
    assert_eq!(last, Some(pb::PaymentStatus::Canceled));
}

async fn a_watcher_receives_every_transition_through_to_succeeded(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    let intent = &payment.stripe_payment_intent_id;
    let mut stream = watch(&app, &payment.id).await;
    assert_eq!(
        next(&mut stream).await.expect("current").status(),
        pb::PaymentStatus::RequiresPaymentMethod
    );
    // Two transitions back to back, faster than a watcher wakes: both are streamed, in order.
    let confirmed = app
        .stripe
        .pay(
            intent,
            &answer.client_secret,
            support::localstripe::CARD_NEEDS_AUTHENTICATION,
        )
        .await;
    assert_eq!(confirmed["status"], "requires_action", "{confirmed}");
    app.get(&payment.id, true)
        .await
        .expect("requires_action recorded");
    app.stripe
        .authenticate(intent, &answer.client_secret, true)
        .await;
    // Stripe's event tells the core at once (a refresh would reuse the read just made).
    let succeeded = app.stripe.payment_intent(intent).await;
    assert_eq!(succeeded["status"], "succeeded", "{succeeded}");
    let body = event("evt_w3ds", "payment_intent.succeeded", now(), succeeded);
    app.deliver_signed(&body, now())
        .await
        .expect("succeeded recorded");

    let mut seen = Vec::new();
    while let Some(update) = next(&mut stream).await {
        seen.push(update.status());
    }
    assert_eq!(
        seen,
        [
            pb::PaymentStatus::RequiresAction,
            pb::PaymentStatus::Succeeded
        ]
    );
}

on_both_databases!(
    a_watcher_receives_every_transition_through_to_succeeded,
    a_watcher_sees_the_change_made_on_another_replica_and_the_end,
    a_watcher_that_comes_late_gets_the_final_state,
    watching_another_tenants_payment_is_not_found,
    a_slow_watcher_does_not_hold_up_others,
);

/// On PostgreSQL every committed change is announced to every replica: a store connected as
/// another replica hears the attach and the cancel of a payment written through this one, in
/// commit order (the payment's first write is not announced: nobody has its id yet).
#[tokio::test]
async fn postgres_every_committed_change_is_announced_to_other_replicas() {
    use paybridge::adapters::store::Store;
    use paybridge::app::ports::{ChangeFeed, PaymentRecords};
    use paybridge::domain::{EventSource, PaymentStatus, StatusChange};

    let url = support::postgres::fresh_database().await;
    let writer = Store::connect(&url, 2).await.expect("store");
    writer.migrate().await.expect("migrate");
    let other_replica = Store::connect(&url, 2).await.expect("listening store");
    let mut changes = other_replica.subscribe_changes();

    // Written first, never changed: heard of only if first writes were announced.
    let quiet = support::creating_payment("inv-quiet");
    let payment = support::creating_payment("inv-announced");
    for (written, key) in [(&quiet, "k-quiet"), (&payment, "k-announced")] {
        assert!(
            writer
                .insert_payment(written, key, "fp")
                .await
                .expect("insert")
        );
    }
    let change = StatusChange::status_only(
        PaymentStatus::Creating,
        PaymentStatus::RequiresPaymentMethod,
        None,
    );
    let now = support::events::now() * 1000;
    let attached = writer
        .attach_intent(&payment.id, "pi_announced", Some("secret"), &change, now)
        .await
        .expect("attach");
    assert_eq!(attached.status, PaymentStatus::RequiresPaymentMethod);
    let cancel = StatusChange::status_only(
        PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::Canceled,
        None,
    );
    let (_, changed) = writer
        .apply_change(&payment.id, &cancel, EventSource::Cancel, now)
        .await
        .expect("cancel");
    assert!(changed);
    for what in ["the attach", "the cancel"] {
        let heard = tokio::time::timeout(Duration::from_secs(15), changes.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} announced within 15 s"))
            .expect("the change channel");
        assert_eq!(heard, payment.id, "{what}");
    }
}
