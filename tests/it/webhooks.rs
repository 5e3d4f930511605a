//! HandleStripeEvent: signature checks, once-only recording, monotonic application, and events
//! that are not ours or do not match.

use crate::support;
use crate::support::events::{event, now};
use crate::support::localstripe::CARD_DECLINED;
use crate::support::{Db, Options, TestApp, create_request};
use paybridge::adapters::stripe::webhook::sign;
use paybridge::pb::v1 as pb;
use serde_json::json;
use tonic::Code;

/// A payment paid at the fake (4242), not yet known to paybridge, and its intent as Stripe
/// holds it.
async fn paid_payment(app: &TestApp) -> (pb::Payment, serde_json::Value) {
    let (_, payment, intent) = app.create_paid("k1", "inv-1").await;
    (payment, intent)
}

async fn a_signed_succeeded_event_settles_the_payment_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let (payment, intent) = paid_payment(&app).await;
    let body = event("evt_paid_1", "payment_intent.succeeded", now(), intent);
    let answer = app.deliver_signed(&body, now()).await.expect("accepted");
    assert_eq!(answer.event_id, "evt_paid_1");
    assert_eq!(answer.result(), pb::StripeEventResult::Applied);
    assert_eq!(
        app.get(&payment.id, false).await.expect("get").status(),
        pb::PaymentStatus::Succeeded
    );

    // The same event again: acknowledged, not applied.
    let again = app.deliver_signed(&body, now()).await.expect("accepted");
    assert_eq!(again.result(), pb::StripeEventResult::Duplicate);

    // Settled by the webhook: GetPayment with refresh does not ask Stripe.
    let reads = app.stripe.count("GET /v1/payment_intents/{id}").await;
    app.get(&payment.id, true).await.expect("get");
    assert_eq!(
        app.stripe.count("GET /v1/payment_intents/{id}").await,
        reads
    );
}

async fn events_out_of_order_end_in_the_right_state(db: Db) {
    let app = TestApp::spawn(db).await;
    let (payment, succeeded) = paid_payment(&app).await;
    let t = now();
    let mut processing = succeeded.clone();
    processing["status"] = json!("processing");
    // Delivered in the wrong order: succeeded (t), then a late processing (t - 5).
    app.deliver_signed(&event("evt_s", "payment_intent.succeeded", t, succeeded), t)
        .await
        .expect("accepted");
    let late = app
        .deliver_signed(
            &event(
                "evt_p",
                "payment_intent.processing",
                t - 5,
                processing.clone(),
            ),
            t,
        )
        .await
        .expect("accepted");
    assert_eq!(late.result(), pb::StripeEventResult::Ignored);
    assert_eq!(
        app.get(&payment.id, false).await.expect("get").status(),
        pb::PaymentStatus::Succeeded
    );

    // Open payment: processing at t, then a requires_action from t - 10 arrives late: stale.
    let answer = app
        .create(create_request("k2", "inv-2"))
        .await
        .expect("created");
    let open = answer.payment.expect("payment");
    let mut intent = app
        .stripe
        .payment_intent(&open.stripe_payment_intent_id)
        .await;
    intent["status"] = json!("processing");
    app.deliver_signed(
        &event("evt_p2", "payment_intent.processing", t, intent.clone()),
        t,
    )
    .await
    .expect("accepted");
    intent["status"] = json!("requires_action");
    app.deliver_signed(
        &event("evt_a2", "payment_intent.requires_action", t - 10, intent),
        t,
    )
    .await
    .expect("accepted");
    assert_eq!(
        app.get(&open.id, false).await.expect("get").status(),
        pb::PaymentStatus::Processing
    );
}

async fn a_failed_attempt_is_recorded_with_its_error(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    app.stripe
        .pay(
            &payment.stripe_payment_intent_id,
            &answer.client_secret,
            CARD_DECLINED,
        )
        .await;
    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["status"], "requires_payment_method");
    let body = event("evt_f", "payment_intent.payment_failed", now(), intent);
    let result = app.deliver_signed(&body, now()).await.expect("accepted");
    assert_eq!(result.result(), pb::StripeEventResult::Applied);
    let failed = app.get(&payment.id, false).await.expect("get");
    assert_eq!(failed.status(), pb::PaymentStatus::RequiresPaymentMethod);
    assert!(failed.last_payment_error.is_some(), "{failed:?}");
}

async fn bad_signatures_and_payloads_are_refused_and_change_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let (payment, intent) = paid_payment(&app).await;
    let body = event("evt_x", "payment_intent.succeeded", now(), intent);
    let t = now();
    let good = sign(&body, support::WEBHOOK_SECRET, t);
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("tampered body", tampered, good.clone()),
        (
            "wrong secret",
            body.clone(),
            sign(&body, "whsec_someone_else", t),
        ),
        (
            "stale timestamp",
            body.clone(),
            sign(&body, support::WEBHOOK_SECRET, t - 301),
        ),
        ("missing header", body.clone(), String::new()),
        ("malformed header", body.clone(), "t=abc,v1=xyz".to_owned()),
        (
            "not JSON",
            b"not json".to_vec(),
            sign(b"not json", support::WEBHOOK_SECRET, t),
        ),
    ];
    for (what, payload, header) in cases {
        let status = app.deliver(&payload, &header).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    assert_eq!(
        app.get(&payment.id, false).await.expect("get").status(),
        pb::PaymentStatus::RequiresPaymentMethod
    );
    // The correctly signed one still applies: none of the refusals recorded its id.
    let applied = app.deliver(&body, &good).await.expect("accepted");
    assert_eq!(applied.result(), pb::StripeEventResult::Applied);
}

async fn a_signed_event_whose_amount_differs_is_not_recorded_as_success(db: Db) {
    let app = TestApp::spawn(db).await;
    let (payment, mut intent) = paid_payment(&app).await;
    intent["amount"] = json!(1);
    let body = event("evt_m", "payment_intent.succeeded", now(), intent.clone());
    let answer = app
        .deliver_signed(&body, now())
        .await
        .expect("acknowledged");
    assert_eq!(answer.result(), pb::StripeEventResult::Ignored);
    intent["amount"] = json!(4200);
    intent["metadata"]["paybridge_payment_id"] = json!("pay_someoneelse0000000000000");
    let body = event("evt_m2", "payment_intent.succeeded", now(), intent);
    let answer = app
        .deliver_signed(&body, now())
        .await
        .expect("acknowledged");
    assert_eq!(answer.result(), pb::StripeEventResult::Ignored);
    assert_eq!(
        app.get(&payment.id, false).await.expect("get").status(),
        pb::PaymentStatus::RequiresPaymentMethod
    );
}

async fn events_for_intents_that_are_not_ours_are_acknowledged(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, mut intent) = paid_payment(&app).await;
    intent["id"] = json!("pi_notours123");
    let body = event("evt_n", "payment_intent.succeeded", now(), intent);
    let answer = app
        .deliver_signed(&body, now())
        .await
        .expect("acknowledged");
    assert_eq!(answer.result(), pb::StripeEventResult::Ignored);
    let other = event(
        "evt_c",
        "customer.created",
        now(),
        json!({"id": "cus_1", "object": "customer"}),
    );
    let answer = app
        .deliver_signed(&other, now())
        .await
        .expect("acknowledged");
    assert_eq!(answer.result(), pb::StripeEventResult::Ignored);
}

async fn old_and_new_secret_are_both_accepted_during_rotation(db: Db) {
    let app = TestApp::spawn_with(
        db,
        Options {
            webhook_secrets: vec!["whsec_new".to_owned(), "whsec_old".to_owned()],
            ..Default::default()
        },
    )
    .await;
    let (_, intent) = paid_payment(&app).await;
    let t = now();
    let first = event("evt_r1", "payment_intent.succeeded", t, intent.clone());
    let second = event("evt_r2", "payment_intent.succeeded", t, intent);
    app.deliver(&first, &sign(&first, "whsec_old", t))
        .await
        .expect("old secret");
    app.deliver(&second, &sign(&second, "whsec_new", t))
        .await
        .expect("new secret");
    let status = app
        .deliver(&second, &sign(&second, support::WEBHOOK_SECRET, t))
        .await
        .expect_err("a secret that is not configured");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn only_the_gateway_may_hand_in_events(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = event("evt_t", "customer.created", now(), json!({"id": "cus_1"}));
    let status = app
        .client
        .clone()
        .handle_stripe_event(support::as_tenant(
            support::BILLING_TOKEN,
            pb::HandleStripeEventRequest {
                payload: body.clone(),
                stripe_signature: sign(&body, support::WEBHOOK_SECRET, now()),
            },
        ))
        .await
        .expect_err("tenant");
    assert_eq!(status.code(), Code::PermissionDenied);
}

on_both_databases!(
    a_signed_succeeded_event_settles_the_payment_once,
    events_out_of_order_end_in_the_right_state,
    a_failed_attempt_is_recorded_with_its_error,
    bad_signatures_and_payloads_are_refused_and_change_nothing,
    a_signed_event_whose_amount_differs_is_not_recorded_as_success,
    events_for_intents_that_are_not_ours_are_acknowledged,
    old_and_new_secret_are_both_accepted_during_rotation,
    only_the_gateway_may_hand_in_events,
);
