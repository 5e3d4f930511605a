//! CancelPayment and ListPayments.

use crate::support::{Db, TestApp, create_request};
use paybridge::pb::v1 as pb;
use tonic::Code;

async fn cancel_cancels_the_intent_and_frees_the_invoice(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    let cancelled = app.cancel(&payment.id).await.expect("cancelled");
    assert_eq!(cancelled.status(), pb::PaymentStatus::Canceled);
    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["status"], "canceled");

    // Cancelling again answers the same, without another cancel at Stripe.
    let again = app.cancel(&payment.id).await.expect("idempotent");
    assert_eq!(again.status(), pb::PaymentStatus::Canceled);
    assert_eq!(
        app.stripe
            .count("POST /v1/payment_intents/{id}/cancel")
            .await,
        1
    );

    // The invoice may now be paid by a new payment.
    let next = app
        .create(create_request("k2", "inv-1"))
        .await
        .expect("new payment");
    assert!(next.created);
    assert_ne!(next.payment.expect("payment").id, payment.id);
}

async fn a_succeeded_payment_cannot_be_cancelled(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment, _) = app.create_paid("k1", "inv-1").await;
    // Not yet refreshed: paybridge still believes it is open, Stripe refuses the cancel, and the
    // payment is recorded as what Stripe says it is.
    let status = app.cancel(&payment.id).await.expect_err("paid");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let settled = app.get(&payment.id, false).await.expect("get");
    assert_eq!(settled.status(), pb::PaymentStatus::Succeeded);
    // And once known as succeeded, the cancel is refused without asking Stripe.
    let before = app.stripe.requests().await["total"].as_u64();
    let status = app.cancel(&payment.id).await.expect_err("paid");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(app.stripe.requests().await["total"].as_u64(), before);
}

async fn get_with_refresh_records_what_stripe_says(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment, _) = app.create_paid("k1", "inv-1").await;
    let stale = app.get(&payment.id, false).await.expect("get");
    assert_eq!(stale.status(), pb::PaymentStatus::RequiresPaymentMethod);
    let fresh = app.get(&payment.id, true).await.expect("refresh");
    assert_eq!(fresh.status(), pb::PaymentStatus::Succeeded);
    let seconds = |p: &pb::Payment| p.updated_at.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(seconds(&fresh) >= seconds(&stale));
    // A terminal payment is not re-read from Stripe.
    let retrieves = app.stripe.count("GET /v1/payment_intents/{id}").await;
    app.get(&payment.id, true).await.expect("refresh");
    assert_eq!(
        app.stripe.count("GET /v1/payment_intents/{id}").await,
        retrieves
    );
}

async fn list_pages_newest_first_without_gaps_or_repeats(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let answer = app
            .create(create_request(&format!("k{i}"), &format!("inv-{i}")))
            .await
            .expect("created");
        created.push(answer.payment.expect("payment").id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .list(pb::ListPaymentsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page");
        pages += 1;
        assert!(page.payments.len() <= 3);
        seen.extend(page.payments.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
}

async fn list_filters_by_invoice_and_status(db: Db) {
    let app = TestApp::spawn(db).await;
    let first = app
        .create(create_request("k1", "inv-a"))
        .await
        .expect("created");
    let first_id = first.payment.expect("payment").id;
    app.cancel(&first_id).await.expect("cancelled");
    let second = app
        .create(create_request("k2", "inv-a"))
        .await
        .expect("created");
    let second_id = second.payment.expect("payment").id;
    app.create(create_request("k3", "inv-b"))
        .await
        .expect("created");

    let by_invoice = app
        .list(pb::ListPaymentsRequest {
            invoice_id: "inv-a".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = by_invoice.payments.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, [second_id.clone(), first_id.clone()]);

    let cancelled = app
        .list(pb::ListPaymentsRequest {
            status: pb::PaymentStatus::Canceled.into(),
            ..Default::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = cancelled.payments.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, [first_id]);

    let open_on_a = app
        .list(pb::ListPaymentsRequest {
            invoice_id: "inv-a".into(),
            status: pb::PaymentStatus::RequiresPaymentMethod.into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(open_on_a.payments.len(), 1);
    assert_eq!(open_on_a.payments[0].id, second_id);
}

on_both_databases!(
    cancel_cancels_the_intent_and_frees_the_invoice,
    a_succeeded_payment_cannot_be_cancelled,
    get_with_refresh_records_what_stripe_says,
    list_pages_newest_first_without_gaps_or_repeats,
    list_filters_by_invoice_and_status,
);
