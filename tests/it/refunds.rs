//! RefundPayment, GetRefund and ListRefunds against the Stripe fake: full and partial refunds,
//! never more than received (also under concurrency), replay by key, Stripe failing mid-refund,
//! refund webhooks (the echo of our own refund, a failure after success, refunds made at Stripe
//! directly) and the refusals.

use std::time::Duration;

use crate::support::events::now;
use crate::support::{
    BILLING_TOKEN, Db, ORDERS_TOKEN, Options, TestApp, as_tenant, create_request, eventually,
    violated_fields,
};
use paybridge::adapters::stripe::webhook::sign;
use paybridge::pb::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

const REFUND_CREATES: &str = "POST /v1/refunds";

fn refund_request(key: &str, payment_id: &str, amount: i64) -> pb::RefundPaymentRequest {
    pb::RefundPaymentRequest {
        idempotency_key: key.to_owned(),
        payment_id: payment_id.to_owned(),
        amount,
        reason: pb::RefundReason::RequestedByCustomer.into(),
        metadata: [("ticket".to_owned(), "T-9".to_owned())].into(),
    }
}

impl TestApp {
    async fn refund(
        &self,
        request: pb::RefundPaymentRequest,
    ) -> Result<pb::RefundPaymentResponse, tonic::Status> {
        self.client
            .clone()
            .refund_payment(as_tenant(BILLING_TOKEN, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get_refund(&self, id: &str, refresh: bool) -> Result<pb::Refund, tonic::Status> {
        self.client
            .clone()
            .get_refund(as_tenant(
                BILLING_TOKEN,
                pb::GetRefundRequest {
                    id: id.to_owned(),
                    refresh,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn refunds_of(&self, payment_id: &str) -> Vec<pb::Refund> {
        self.client
            .clone()
            .list_refunds(as_tenant(
                BILLING_TOKEN,
                pb::ListRefundsRequest {
                    payment_id: payment_id.to_owned(),
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("listed")
            .into_inner()
            .refunds
    }

    /// A payment of `amount` paid at the fake and settled in paybridge (by a refresh).
    async fn succeeded_payment(&self, key: &str, amount: i64) -> pb::Payment {
        let mut request = create_request(key, &format!("inv-{key}"));
        request.amount = amount;
        let answer = self.create(request).await.expect("created");
        let payment = answer.payment.expect("payment");
        self.stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        // Read at Stripe (a reconciler running in the test may have read the intent just
        // before it was paid: reads of one intent are shared for a second).
        let payment = eventually(Duration::from_secs(5), || async {
            let payment = self.get(&payment.id, true).await.expect("refreshed");
            if payment.status() == pb::PaymentStatus::Succeeded {
                Ok(payment)
            } else {
                Err(payment.status())
            }
        })
        .await
        .expect("settled by a refresh");
        assert_eq!(payment.amount_received, amount);
        payment
    }

    /// Delivers an event the fake made, as Stripe would (signed now).
    async fn deliver_event(&self, event: &Value) -> pb::HandleStripeEventResponse {
        let body = serde_json::to_vec(event).expect("json");
        self.deliver_signed(&body, now()).await.expect("accepted")
    }

    /// The newest event of `event_type` about the Stripe refund `stripe_refund_id`.
    async fn refund_event(&self, event_type: &str, stripe_refund_id: &str) -> Value {
        eventually(Duration::from_secs(10), || async {
            self.stripe
                .events_of_type(event_type)
                .await
                .into_iter()
                .find(|event| event["data"]["object"]["id"] == stripe_refund_id)
                .ok_or(())
        })
        .await
        .unwrap_or_else(|()| panic!("no {event_type} event for {stripe_refund_id}"))
    }
}

fn precondition_type(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .and_then(|failure| failure.violations.first().map(|v| v.r#type.clone()))
        .unwrap_or_default()
}

fn amounts(payment: &pb::Payment) -> (i64, i64, i64) {
    (
        payment.amount_received,
        payment.amount_refunded,
        payment.amount_refund_pending,
    )
}

async fn a_full_refund_gives_everything_back_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("full", 4200).await;
    let answer = app
        .refund(refund_request("r-full", &payment.id, 0))
        .await
        .expect("refunded");
    assert!(answer.created);
    let refund = answer.refund.expect("refund");
    assert!(refund.id.starts_with("ref_"), "{}", refund.id);
    assert_eq!(
        (refund.amount, refund.status(), refund.source()),
        (4200, pb::RefundStatus::Succeeded, pb::RefundSource::Api)
    );
    assert_eq!(refund.reason(), pb::RefundReason::RequestedByCustomer);
    assert_eq!(
        refund.metadata.get("ticket").map(String::as_str),
        Some("T-9")
    );
    let at_stripe = app
        .stripe
        .refunds_of(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(at_stripe.len(), 1);
    assert_eq!(at_stripe[0]["id"], refund.stripe_refund_id.as_str());
    assert_eq!(
        at_stripe[0]["metadata"]["paybridge_refund_id"],
        refund.id.as_str()
    );
    assert_eq!(at_stripe[0]["reason"], "requested_by_customer");
    let payment = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&payment), (4200, 4200, 0));

    // Nothing remains: another refund is refused without a Stripe call.
    let creates = app.stripe.count(REFUND_CREATES).await;
    let refused = app
        .refund(refund_request("r-again", &payment.id, 0))
        .await
        .expect_err("nothing left");
    assert_eq!(precondition_type(&refused), "REFUND_EXCEEDS_REMAINING");
    assert_eq!(app.stripe.count(REFUND_CREATES).await, creates);
}

async fn two_partial_refunds_then_the_rest(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("parts", 4200).await;
    // Two refunds of the same amount with different keys are two refunds.
    for key in ["r-1", "r-2"] {
        let answer = app
            .refund(refund_request(key, &payment.id, 1000))
            .await
            .expect("refunded");
        assert!(answer.created);
    }
    let after_two = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&after_two), (4200, 2000, 0));
    let rest = app
        .refund(refund_request("r-rest", &payment.id, 0))
        .await
        .expect("refunded")
        .refund
        .expect("refund");
    assert_eq!(rest.amount, 2200);
    let payment = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&payment), (4200, 4200, 0));
    assert_eq!(app.refunds_of(&payment.id).await.len(), 3);
    assert_eq!(
        app.stripe
            .refunds_of(&payment.stripe_payment_intent_id)
            .await
            .len(),
        3
    );
}

async fn a_refund_above_what_remains_is_refused_without_a_stripe_call(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("above", 4200).await;
    app.refund(refund_request("r-1", &payment.id, 4000))
        .await
        .expect("refunded");
    let creates = app.stripe.count(REFUND_CREATES).await;
    let refused = app
        .refund(refund_request("r-2", &payment.id, 201))
        .await
        .expect_err("above what remains");
    assert_eq!(precondition_type(&refused), "REFUND_EXCEEDS_REMAINING");
    assert_eq!(app.stripe.count(REFUND_CREATES).await, creates);
    // What remains is still refundable.
    app.refund(refund_request("r-3", &payment.id, 200))
        .await
        .expect("the rest fits");
}

async fn concurrent_refunds_never_exceed_what_was_received(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("race", 1000).await;
    let answers = futures::future::join_all((0..8).map(|n| {
        let app = &app;
        let payment_id = payment.id.clone();
        async move {
            app.refund(refund_request(&format!("race-{n}"), &payment_id, 300))
                .await
        }
    }))
    .await;
    let made = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(made, 3, "{answers:?}");
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(precondition_type(refused), "REFUND_EXCEEDS_REMAINING");
    }
    assert_eq!(
        app.stripe
            .refunds_of(&payment.stripe_payment_intent_id)
            .await
            .len(),
        3
    );
    assert_eq!(app.stripe.count(REFUND_CREATES).await, 3);
    let payment = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&payment), (1000, 900, 0));
}

async fn the_same_key_replays_and_another_request_under_it_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("replay", 4200).await;
    let first = app
        .refund(refund_request("r-k", &payment.id, 1000))
        .await
        .expect("refunded");
    let creates = app.stripe.count(REFUND_CREATES).await;
    let again = app
        .refund(refund_request("r-k", &payment.id, 1000))
        .await
        .expect("replayed");
    assert!(!again.created);
    assert_eq!(again.refund, first.refund);
    assert_eq!(
        app.stripe.count(REFUND_CREATES).await,
        creates,
        "no Stripe call"
    );
    let reused = app
        .refund(refund_request("r-k", &payment.id, 500))
        .await
        .expect_err("another amount under the same key");
    assert_eq!(precondition_type(&reused), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.refunds_of(&payment.id).await.len(), 1);
}

async fn stripe_failing_mid_refund_is_finished_by_the_reconciler(db: Db) {
    let options = Options {
        reconcile_interval: Duration::from_millis(200),
        reconcile_after: Duration::ZERO,
        stripe_max_retries: 1,
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options).await;
    let payment = app.succeeded_payment("flaky", 4200).await;
    // Every attempt of this call fails before Stripe does anything.
    app.stripe
        .inject_fault(
            json!({"method": "POST", "path_prefix": "/v1/refunds", "times": 2, "status": 503}),
        )
        .await;
    let status = app
        .refund(refund_request("r-flaky", &payment.id, 1500))
        .await
        .expect_err("Stripe unavailable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The refund stays recorded (its amount reserved) until the reconciler finishes it with the
    // same key.
    let refund = eventually(Duration::from_secs(15), || async {
        match app.refunds_of(&payment.id).await.as_slice() {
            [refund] if refund.status() == pb::RefundStatus::Succeeded => Ok(refund.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("finished by the reconciler");
    assert_eq!(refund.amount, 1500);
    let at_stripe = app
        .stripe
        .refunds_of(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(
        at_stripe.len(),
        1,
        "one Stripe refund for one paybridge refund"
    );
    // The caller's retry with its key gets that refund, not a second one.
    let retried = app
        .refund(refund_request("r-flaky", &payment.id, 1500))
        .await
        .expect("replayed");
    assert!(!retried.created);
    assert_eq!(retried.refund.expect("refund").id, refund.id);
    let payment = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&payment), (4200, 1500, 0));
}

async fn a_refund_that_fails_after_success_makes_its_amount_refundable_again(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("fails", 4200).await;
    let refund = app
        .refund(refund_request("r-f", &payment.id, 0))
        .await
        .expect("refunded")
        .refund
        .expect("refund");
    assert_eq!(refund.status(), pb::RefundStatus::Succeeded);
    app.stripe
        .set_refund_status(
            &refund.stripe_refund_id,
            "failed",
            "expired_or_canceled_card",
        )
        .await;
    let failed_event = app
        .refund_event("refund.failed", &refund.stripe_refund_id)
        .await;
    let answer = app.deliver_event(&failed_event).await;
    assert_eq!(answer.result(), pb::StripeEventResult::Applied);
    let refund = app.get_refund(&refund.id, false).await.expect("refund");
    assert_eq!(refund.status(), pb::RefundStatus::Failed);
    assert_eq!(refund.failure_reason, "expired_or_canceled_card");
    let after = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&after), (4200, 0, 0));
    // The older `refund.created` (succeeded) arriving late moves nothing back.
    let created_event = app
        .refund_event("refund.created", &refund.stripe_refund_id)
        .await;
    let mut late = created_event.clone();
    late["created"] = json!(failed_event["created"].as_i64().expect("created") - 1);
    let late = app.deliver_event(&late).await;
    assert_eq!(late.result(), pb::StripeEventResult::Ignored);
    assert_eq!(
        app.get_refund(&refund.id, false)
            .await
            .expect("refund")
            .status(),
        pb::RefundStatus::Failed
    );
    // Refundable again.
    let again = app
        .refund(refund_request("r-f2", &payment.id, 0))
        .await
        .expect("refunded again");
    assert_eq!(again.refund.expect("refund").amount, 4200);
}

async fn the_webhook_echo_before_the_api_answer_is_the_same_refund(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("echo", 4200).await;
    // Stripe makes the refund, then its answer is slow: the webhook comes first.
    app.stripe
        .inject_fault(
            json!({"method": "POST", "path_prefix": "/v1/refunds", "when": "after",
                             "status": null, "delay_ms": 3000}),
        )
        .await;
    let call = {
        let app = &app;
        let payment_id = payment.id.clone();
        async move { app.refund(refund_request("r-echo", &payment_id, 700)).await }
    };
    let deliver_echo = async {
        let created = eventually(Duration::from_secs(10), || async {
            app.stripe
                .events_of_type("refund.created")
                .await
                .into_iter()
                .next()
                .ok_or(())
        })
        .await
        .expect("refund.created at the fake");
        let answer = app.deliver_event(&created).await;
        // The refund is still `creating` in paybridge: recorded by the echo.
        assert_eq!(answer.result(), pb::StripeEventResult::Applied);
        let refunds = app.refunds_of(&payment.id).await;
        assert_eq!(refunds.len(), 1);
        assert_eq!(refunds[0].status(), pb::RefundStatus::Succeeded);
        refunds[0].clone()
    };
    let (answer, echoed) = tokio::join!(call, deliver_echo);
    let refund = answer.expect("refunded").refund.expect("refund");
    assert_eq!(refund.id, echoed.id);
    assert_eq!(refund.stripe_refund_id, echoed.stripe_refund_id);
    assert_eq!(app.refunds_of(&payment.id).await.len(), 1);
    // charge.refunded for it changes nothing more.
    let charge_refunded = app.stripe.events_of_type("charge.refunded").await;
    let answer = app.deliver_event(&charge_refunded[0]).await;
    assert_eq!(answer.result(), pb::StripeEventResult::Ignored);
    let payment = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&payment), (4200, 700, 0));
}

async fn refunds_made_at_stripe_directly_are_found_and_counted(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("ext", 4200).await;
    let intent_id = payment.stripe_payment_intent_id.clone();

    // 1. By webhook.
    let by_webhook = app.stripe.refund_directly(&intent_id, 1000).await;
    let event = app
        .refund_event("refund.created", by_webhook["id"].as_str().expect("id"))
        .await;
    assert_eq!(
        app.deliver_event(&event).await.result(),
        pb::StripeEventResult::Applied
    );
    // 2. By GetPayment with refresh.
    app.stripe.refund_directly(&intent_id, 500).await;
    let refreshed = app.get(&payment.id, true).await.expect("refreshed");
    assert_eq!(amounts(&refreshed), (4200, 1500, 0));
    // 3. By the reconciler's scan of recent refunds (a replica that runs it), with no webhook
    //    and no refresh.
    app.stripe.refund_directly(&intent_id, 200).await;
    let reconciling = app
        .spawn_replica(Options {
            reconcile_interval: Duration::from_millis(200),
            ..Options::default()
        })
        .await;
    let found = eventually(Duration::from_secs(15), || async {
        let payment = app.get(&payment.id, false).await.expect("payment");
        if payment.amount_refunded == 1700 {
            Ok(payment)
        } else {
            Err(amounts(&payment))
        }
    })
    .await
    .expect("found by the reconciler");
    assert_eq!(amounts(&found), (4200, 1700, 0));
    drop(reconciling);

    let refunds = app.refunds_of(&payment.id).await;
    assert_eq!(refunds.len(), 3);
    assert!(
        refunds
            .iter()
            .all(|r| r.source() == pb::RefundSource::External)
    );
    // A refund through paybridge now sees what remains after them.
    let refused = app
        .refund(refund_request("r-over", &payment.id, 2501))
        .await
        .expect_err("above what remains");
    assert_eq!(precondition_type(&refused), "REFUND_EXCEEDS_REMAINING");
}

async fn a_pending_refund_counts_as_pending_until_it_succeeds(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("pending", 4200).await;
    app.stripe.start_refunds_as("pending").await;
    let refund = app
        .refund(refund_request("r-p", &payment.id, 1200))
        .await
        .expect("refunded")
        .refund
        .expect("refund");
    assert_eq!(refund.status(), pb::RefundStatus::Pending);
    let pending = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&pending), (4200, 0, 1200));
    app.stripe
        .set_refund_status(&refund.stripe_refund_id, "succeeded", "")
        .await;
    // GetRefund with refresh reads it at Stripe.
    let refreshed = app.get_refund(&refund.id, true).await.expect("refreshed");
    assert_eq!(refreshed.status(), pb::RefundStatus::Succeeded);
    let done = app.get(&payment.id, false).await.expect("payment");
    assert_eq!(amounts(&done), (4200, 1200, 0));
}

async fn refusals_of_payments_that_are_not_refundable_and_of_others(db: Db) {
    let app = TestApp::spawn(db).await;
    // Open, not paid.
    let open = app
        .create(create_request("open", "inv-open"))
        .await
        .expect("created")
        .payment
        .expect("payment");
    let refused = app
        .refund(refund_request("r-open", &open.id, 100))
        .await
        .expect_err("not paid");
    assert_eq!(precondition_type(&refused), "NOT_REFUNDABLE");

    // Another tenant's payment and refund are not found.
    let paid = app.succeeded_payment("mine", 4200).await;
    let refund = app
        .refund(refund_request("r-mine", &paid.id, 100))
        .await
        .expect("refunded")
        .refund
        .expect("refund");
    let mut client = app.client.clone();
    let not_found = client
        .refund_payment(as_tenant(
            ORDERS_TOKEN,
            refund_request("r-x", &paid.id, 100),
        ))
        .await
        .expect_err("another tenant's payment");
    assert_eq!(not_found.code(), Code::NotFound);
    let not_found = client
        .get_refund(as_tenant(
            ORDERS_TOKEN,
            pb::GetRefundRequest {
                id: refund.id.clone(),
                refresh: false,
            },
        ))
        .await
        .expect_err("another tenant's refund");
    assert_eq!(not_found.code(), Code::NotFound);
    let listed = client
        .list_refunds(as_tenant(
            ORDERS_TOKEN,
            pb::ListRefundsRequest {
                payment_id: paid.id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .expect_err("another tenant's payment");
    assert_eq!(listed.code(), Code::NotFound);

    // Bad input: every bad field at once, nothing written.
    let bad = app
        .refund(pb::RefundPaymentRequest {
            idempotency_key: String::new(),
            payment_id: "pay_nope".to_owned(),
            amount: -5,
            reason: 99,
            metadata: [("paybridge_x".to_owned(), "y".to_owned())].into(),
        })
        .await
        .expect_err("invalid");
    let mut fields = violated_fields(&bad);
    fields.sort();
    assert_eq!(
        fields,
        [
            "amount",
            "idempotency_key",
            "metadata[paybridge_x]",
            "payment_id",
            "reason"
        ]
    );
    assert_eq!(app.refunds_of(&paid.id).await.len(), 1);
}

async fn refunds_list_newest_first_in_pages(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("pages", 4200).await;
    let mut made = Vec::new();
    for n in 0..5 {
        let refund = app
            .refund(refund_request(&format!("p-{n}"), &payment.id, 100))
            .await
            .expect("refunded")
            .refund
            .expect("refund");
        made.push(refund.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_refunds(as_tenant(
                BILLING_TOKEN,
                pb::ListRefundsRequest {
                    payment_id: String::new(),
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.refunds.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    made.reverse();
    assert_eq!(seen, made);
}

/// The signature is checked for refund events too: a forged one changes nothing.
async fn a_forged_refund_event_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.succeeded_payment("forged", 4200).await;
    let forged = json!({
        "id": "evt_forged", "object": "event", "api_version": "2026-09-30.endive",
        "created": now(), "type": "refund.created", "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "re_forged", "object": "refund", "amount": 4200,
                            "currency": "usd", "status": "succeeded", "metadata": {},
                            "payment_intent": payment.stripe_payment_intent_id,
                            "charge": null, "created": now(), "reason": null}}
    });
    let body = serde_json::to_vec(&forged).expect("json");
    let refused = app
        .deliver(&body, &sign(&body, "whsec_not_ours", now()))
        .await
        .expect_err("forged");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(app.refunds_of(&payment.id).await.is_empty());
}

on_both_databases!(
    a_full_refund_gives_everything_back_once,
    two_partial_refunds_then_the_rest,
    a_refund_above_what_remains_is_refused_without_a_stripe_call,
    concurrent_refunds_never_exceed_what_was_received,
    the_same_key_replays_and_another_request_under_it_is_refused,
    stripe_failing_mid_refund_is_finished_by_the_reconciler,
    a_refund_that_fails_after_success_makes_its_amount_refundable_again,
    the_webhook_echo_before_the_api_answer_is_the_same_refund,
    refunds_made_at_stripe_directly_are_found_and_counted,
    a_pending_refund_counts_as_pending_until_it_succeeds,
    refusals_of_payments_that_are_not_refundable_and_of_others,
    refunds_list_newest_first_in_pages,
    a_forged_refund_event_is_refused,
);
