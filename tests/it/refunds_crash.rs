//! `kill -9` of `paybridge serve` (the built binary) after a refund's row is committed and Stripe
//! has made the refund, before Stripe's answer is recorded: after the restart the reconciler
//! finishes it with the same key, and Stripe holds one refund for the one paybridge refund.

use std::time::Duration;

use crate::support;
use crate::support::child::ServeProcess;
use crate::support::{
    BILLING_TOKEN, Db, LocalStripe, as_tenant, count_rows, create_request, eventually,
};
use paybridge::pb::v1 as pb;
use serde_json::json;

async fn kill_9_between_the_refund_row_and_stripes_answer_leaves_one_stripe_refund(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("refund-crash.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    let serve = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
        .env("PAYBRIDGE_RECONCILE_INTERVAL", "1s")
        .env("PAYBRIDGE_RECONCILE_AFTER", "1s")
        .env("PAYBRIDGE_RECONCILE_LEASE", "3s");
    let running = serve.start().await;
    let client = serve.client();

    let answer = client
        .clone()
        .create_invoice_payment(as_tenant(BILLING_TOKEN, create_request("k", "inv-crash")))
        .await
        .expect("created")
        .into_inner();
    let payment = answer.payment.expect("payment");
    let intent_id = payment.stripe_payment_intent_id.clone();
    stripe
        .pay_succeeding(&intent_id, &answer.client_secret)
        .await;
    let settled = client
        .clone()
        .get_payment(as_tenant(
            BILLING_TOKEN,
            pb::GetPaymentRequest {
                id: payment.id.clone(),
                refresh: true,
            },
        ))
        .await
        .expect("refreshed")
        .into_inner();
    assert_eq!(settled.status(), pb::PaymentStatus::Succeeded);

    // Stripe makes the refund, then its answer takes a minute: the process dies before it.
    stripe
        .inject_fault(
            json!({"method": "POST", "path_prefix": "/v1/refunds", "when": "after",
                             "status": null, "delay_ms": 60000}),
        )
        .await;
    let request = pb::RefundPaymentRequest {
        idempotency_key: "r-crash".to_owned(),
        payment_id: payment.id.clone(),
        amount: 1000,
        reason: 0,
        metadata: Default::default(),
    };
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        let request = request.clone();
        async move {
            client
                .refund_payment(as_tenant(BILLING_TOKEN, request))
                .await
        }
    });
    eventually(Duration::from_secs(20), || async {
        let made = stripe.refunds_of(&intent_id).await.len();
        let creating = count_rows(
            &database_url,
            "select count(*) from refund where status = 'creating'",
        )
        .await;
        if (made, creating) == (1, 1) {
            Ok(())
        } else {
            Err((made, creating))
        }
    })
    .await
    .expect("the row is committed and Stripe made the refund");
    running.kill9().await;
    assert!(
        in_flight.await.expect("joined").is_err(),
        "the call died with the process"
    );
    stripe.clear_faults().await;

    // After the restart the reconciler finishes the refund with its own key.
    let running = serve.start().await;
    let finished = eventually(Duration::from_secs(30), || async {
        match count_rows(
            &database_url,
            "select count(*) from refund where status = 'succeeded'",
        )
        .await
        {
            1 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(finished, Ok(()), "finished by the reconciler");
    assert_eq!(
        stripe.refunds_of(&intent_id).await.len(),
        1,
        "one Stripe refund"
    );

    // The caller's retry with its key gets that refund.
    let retried = client
        .clone()
        .refund_payment(as_tenant(BILLING_TOKEN, request))
        .await
        .expect("replayed")
        .into_inner();
    assert!(!retried.created);
    let refund = retried.refund.expect("refund");
    assert_eq!(
        (refund.status(), refund.amount),
        (pb::RefundStatus::Succeeded, 1000)
    );
    assert_eq!(stripe.refunds_of(&intent_id).await.len(), 1);
    assert_eq!(
        count_rows(
            &database_url,
            "select count(*) from payment where amount_refunded = 1000 and amount_refund_pending = 0",
        )
        .await,
        1
    );
    running.kill9().await;
}

on_both_databases!(kill_9_between_the_refund_row_and_stripes_answer_leaves_one_stripe_refund);
