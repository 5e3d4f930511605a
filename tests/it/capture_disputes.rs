//! Manual capture and disputes against the Stripe fake: authorize 1,000 and capture 600, replay,
//! the refusals, a void, a lapsed authorization found by the reconciler, the browser's return of
//! an authorized payment, refunds up to what was captured; a dispute opened, updated and lost
//! through signed events, the refund guard, and a dispute the reconciler finds after its
//! webhooks were lost.

use std::time::Duration;

use crate::support::events::now;
use crate::support::{BILLING_TOKEN, Db, Options, TestApp, as_tenant, create_request, eventually};
use paybridge::pb::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

const CAPTURES: &str = "POST /v1/payment_intents/{id}/capture";

fn reconciling() -> Options {
    Options {
        reconcile_interval: Duration::from_millis(300),
        reconcile_after: Duration::ZERO,
        ..Default::default()
    }
}

fn precondition_type(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .and_then(|failure| failure.violations.into_iter().next())
        .map(|violation| violation.r#type)
        .unwrap_or_default()
}

impl TestApp {
    async fn capture(
        &self,
        key: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .capture_payment(as_tenant(
                BILLING_TOKEN,
                pb::CapturePaymentRequest {
                    idempotency_key: key.to_owned(),
                    payment_id: payment_id.to_owned(),
                    amount,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn refund_of(
        &self,
        key: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<pb::RefundPaymentResponse, tonic::Status> {
        self.client
            .clone()
            .refund_payment(as_tenant(
                BILLING_TOKEN,
                pb::RefundPaymentRequest {
                    idempotency_key: key.to_owned(),
                    payment_id: payment_id.to_owned(),
                    amount,
                    reason: pb::RefundReason::Unspecified.into(),
                    metadata: Default::default(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Delivers an event the fake made, signed now.
    async fn deliver_json(&self, event: &Value) -> pb::HandleStripeEventResponse {
        let body = serde_json::to_vec(event).expect("json");
        self.deliver_signed(&body, now()).await.expect("accepted")
    }

    /// The fake's newest event of `event_type` about the object `object_id`.
    async fn event_about(&self, event_type: &str, object_id: &str) -> Value {
        eventually(Duration::from_secs(10), || async {
            self.stripe
                .events_of_type(event_type)
                .await
                .into_iter()
                .find(|event| event["data"]["object"]["id"] == object_id)
                .ok_or(())
        })
        .await
        .unwrap_or_else(|()| panic!("no {event_type} event for {object_id}"))
    }

    /// A manual payment of `amount` the customer authorized, told to paybridge by Stripe's
    /// `amount_capturable_updated` event. Returns the create answer and the payment.
    async fn authorized(
        &self,
        key: &str,
        amount: i64,
    ) -> (pb::CreateInvoicePaymentResponse, pb::Payment) {
        let mut request = create_request(key, &format!("inv-{key}"));
        request.amount = amount;
        request.capture_method = pb::CaptureMethod::Manual.into();
        let answer = self.create(request).await.expect("created");
        let payment = answer.payment.clone().expect("payment");
        assert_eq!(payment.capture_method(), pb::CaptureMethod::Manual);
        let intent = self
            .stripe
            .pay(
                &payment.stripe_payment_intent_id,
                &answer.client_secret,
                crate::support::localstripe::CARD_SUCCEEDS,
            )
            .await;
        assert_eq!(intent["status"], "requires_capture", "{intent}");
        let event = self
            .event_about(
                "payment_intent.amount_capturable_updated",
                &payment.stripe_payment_intent_id,
            )
            .await;
        assert_eq!(
            self.deliver_json(&event).await.result(),
            pb::StripeEventResult::Applied
        );
        let payment = self.get(&payment.id, false).await.expect("read");
        (answer, payment)
    }

    /// An automatic payment of 1,000, paid and settled.
    async fn paid(&self, key: &str) -> pb::Payment {
        let mut request = create_request(key, &format!("inv-{key}"));
        request.amount = 1000;
        let answer = self.create(request).await.expect("created");
        let payment = answer.payment.expect("payment");
        self.stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        let payment = self.get(&payment.id, true).await.expect("refreshed");
        assert_eq!(payment.status(), pb::PaymentStatus::Succeeded);
        payment
    }
}

async fn an_authorization_of_1000_captured_for_600_receives_600_and_refunds_stop_there(db: Db) {
    let app = TestApp::spawn(db).await;
    let (answer, payment) = app.authorized("k-1", 1000).await;
    assert_eq!(payment.status(), pb::PaymentStatus::RequiresCapture);
    assert_eq!(payment.amount_capturable, 1000);
    // The charge's own deadline (the fake's authorizations hold 6 days), not the 7-day guess.
    let charge_id = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await["latest_charge"]
        .as_str()
        .expect("a charge")
        .to_owned();
    let charge = app.stripe.charge(&charge_id).await;
    let deadline = charge["payment_method_details"]["card"]["capture_before"]
        .as_i64()
        .expect("the charge's capture_before");
    assert!((deadline - (now() + 6 * 24 * 3600)).abs() < 60, "{charge}");
    assert_eq!(
        payment.capture_before,
        Some(prost_types::Timestamp {
            seconds: deadline,
            nanos: 0
        })
    );

    // The browser's return of an authorized payment lands on the success page, authorized.
    let verified = app
        .client
        .clone()
        .verify_return(as_tenant(
            BILLING_TOKEN,
            pb::VerifyReturnRequest {
                payment_intent: payment.stripe_payment_intent_id.clone(),
                payment_intent_client_secret: answer.client_secret.clone(),
                redirect_status: "succeeded".to_owned(),
            },
        ))
        .await
        .expect("verified")
        .into_inner();
    assert_eq!(verified.outcome(), pb::ReturnOutcome::Authorized);
    assert!(
        verified.redirect_url.contains("status=authorized"),
        "{}",
        verified.redirect_url
    );

    let captured = app
        .capture("c-1", &payment.id, 600)
        .await
        .expect("captured");
    assert_eq!(captured.status(), pb::PaymentStatus::Succeeded);
    assert_eq!(captured.amount_received, 600);
    assert_eq!(captured.amount_capturable, 0);
    let captures: Vec<Value> = app.stripe.requests().await["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["route"] == CAPTURES)
        .cloned()
        .collect();
    assert_eq!(captures.len(), 1, "{captures:?}");
    assert_eq!(
        captures[0]["idempotency_key"],
        format!("paybridge-capture-{}", payment.id)
    );
    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["amount_received"], 600, "{intent}");

    // The same key replays the payment without a Stripe call; another capture is refused.
    let replayed = app
        .capture("c-1", &payment.id, 600)
        .await
        .expect("replayed");
    assert_eq!(replayed.amount_received, 600);
    assert_eq!(app.stripe.count(CAPTURES).await, 1);
    let reused = app
        .capture("c-1", &payment.id, 500)
        .await
        .expect_err("another request under the key");
    assert_eq!(precondition_type(&reused), "IDEMPOTENCY_KEY_REUSED");
    let twice = app
        .capture("c-2", &payment.id, 0)
        .await
        .expect_err("captured already");
    assert_eq!(precondition_type(&twice), "NOT_CAPTURABLE");
    assert_eq!(app.stripe.count(CAPTURES).await, 1);

    // Refunds stop at what was captured.
    let too_much = app
        .refund_of("r-1", &payment.id, 601)
        .await
        .expect_err("above what was received");
    assert_eq!(precondition_type(&too_much), "REFUND_EXCEEDS_REMAINING");
    let all = app
        .refund_of("r-2", &payment.id, 0)
        .await
        .expect("refunded");
    assert_eq!(all.refund.expect("refund").amount, 600);
    let after = app.get(&payment.id, true).await.expect("refreshed");
    assert_eq!((after.amount_received, after.amount_refunded), (600, 600));
}

async fn a_capture_above_capturable_or_of_an_automatic_payment_is_refused_without_stripe(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment) = app.authorized("k-1", 1000).await;
    let above = app
        .capture("c-1", &payment.id, 1001)
        .await
        .expect_err("above capturable");
    assert_eq!(above.code(), Code::InvalidArgument, "{above:?}");
    let automatic = app.paid("k-2").await;
    let refused = app
        .capture("c-2", &automatic.id, 0)
        .await
        .expect_err("automatic");
    assert_eq!(precondition_type(&refused), "NOT_CAPTURABLE");
    assert_eq!(app.stripe.count(CAPTURES).await, 0);
    // The key of a refused request was not spent.
    let captured = app.capture("c-1", &payment.id, 0).await.expect("captured");
    assert_eq!(captured.amount_received, 1000);
}

async fn an_authorization_is_voided_by_cancel(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment) = app.authorized("k-1", 1000).await;
    let canceled = app.cancel(&payment.id).await.expect("voided");
    assert_eq!(canceled.status(), pb::PaymentStatus::Canceled);
    assert_eq!(
        canceled.cancellation_reason(),
        pb::CancellationReason::Requested
    );
    assert_eq!(canceled.amount_capturable, 0);
    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["status"], "canceled");
    let refused = app
        .capture("c-1", &payment.id, 0)
        .await
        .expect_err("voided");
    assert_eq!(precondition_type(&refused), "NOT_CAPTURABLE");
}

async fn a_lapsed_authorization_is_found_by_the_reconciler_without_a_webhook(db: Db) {
    let app = TestApp::spawn_with(db, reconciling()).await;
    let (_, payment) = app.authorized("k-1", 1000).await;
    app.stripe
        .expire_authorization(&payment.stripe_payment_intent_id)
        .await;
    let lapsed = eventually(Duration::from_secs(15), || async {
        let payment = app.get(&payment.id, false).await.expect("read");
        match payment.status() {
            pb::PaymentStatus::Canceled => Ok(payment),
            other => Err(other),
        }
    })
    .await
    .expect("cancelled by the reconciler");
    assert_eq!(
        lapsed.cancellation_reason(),
        pb::CancellationReason::AuthorizationExpired
    );
}

/// The dispute the fake opened, changed or closed, as its event carried it.
async fn dispute_event(app: &TestApp, kind: &str, dispute_id: &str) -> Value {
    app.event_about(&format!("charge.dispute.{kind}"), dispute_id)
        .await
}

async fn a_dispute_opened_updated_and_lost_follows_its_signed_events_and_guards_refunds(db: Db) {
    let app = TestApp::spawn(db).await;
    let payment = app.paid("k-1").await;
    let due_by = now() + 3 * 86400;
    let opened = app
        .stripe
        .dispute(json!({
            "payment_intent": payment.stripe_payment_intent_id,
            "status": "needs_response",
            "reason": "fraudulent",
            "amount": 1000,
            "evidence_due_by": due_by,
            "is_charge_refundable": false,
        }))
        .await;
    let dispute_id = opened["id"].as_str().expect("id").to_owned();
    let created = dispute_event(&app, "created", &dispute_id).await;
    assert_eq!(
        app.deliver_json(&created).await.result(),
        pb::StripeEventResult::Applied
    );
    let read = app.get(&payment.id, false).await.expect("read");
    assert_eq!(read.status(), pb::PaymentStatus::Succeeded);
    assert_eq!(
        read.dispute,
        Some(pb::Dispute {
            id: dispute_id.clone(),
            status: pb::DisputeStatus::NeedsResponse.into(),
            reason: "fraudulent".to_owned(),
            amount: 1000,
            evidence_due_by: Some(prost_types::Timestamp {
                seconds: due_by,
                nanos: 0
            }),
            is_charge_refundable: false,
        })
    );
    assert_eq!(
        app.deliver_json(&created).await.result(),
        pb::StripeEventResult::Duplicate,
        "a replay"
    );

    // Open and not refundable: no refund, and no Stripe call.
    let guarded = app
        .refund_of("r-1", &payment.id, 100)
        .await
        .expect_err("disputed");
    assert_eq!(precondition_type(&guarded), "PAYMENT_DISPUTED");
    assert_eq!(app.stripe.count("POST /v1/refunds").await, 0);

    app.stripe
        .dispute(json!({"dispute": dispute_id, "status": "under_review"}))
        .await;
    let updated = dispute_event(&app, "updated", &dispute_id).await;
    app.stripe
        .dispute(json!({"dispute": dispute_id, "status": "lost"}))
        .await;
    let closed = dispute_event(&app, "closed", &dispute_id).await;
    // The close arrives first; the update, older, after it changes nothing.
    assert_eq!(
        app.deliver_json(&closed).await.result(),
        pb::StripeEventResult::Applied
    );
    assert_eq!(
        app.deliver_json(&updated).await.result(),
        pb::StripeEventResult::Ignored
    );
    let lost = app.get(&payment.id, false).await.expect("read");
    let dispute = lost.dispute.clone().expect("dispute");
    assert_eq!(dispute.status(), pb::DisputeStatus::Lost);
    assert_eq!(lost.status(), pb::PaymentStatus::Succeeded);
    let after_loss = app
        .refund_of("r-2", &payment.id, 100)
        .await
        .expect_err("lost");
    assert_eq!(precondition_type(&after_loss), "PAYMENT_DISPUTED");

    // A dispute of an intent that is not ours is acknowledged.
    let mut foreign = created.clone();
    foreign["id"] = json!(format!("evt_foreign_{}", now()));
    foreign["data"]["object"]["payment_intent"] = json!("pi_not_ours");
    assert_eq!(
        app.deliver_json(&foreign).await.result(),
        pb::StripeEventResult::Ignored
    );

    // The feed shows each change of the dispute (on PostgreSQL an event joins the feed shortly
    // after its commit, once no older transaction is open).
    let wanted = [pb::DisputeStatus::NeedsResponse, pb::DisputeStatus::Lost];
    let statuses = eventually(Duration::from_secs(10), || async {
        let events = app
            .client
            .clone()
            .list_events(as_tenant(
                BILLING_TOKEN,
                pb::ListEventsRequest {
                    after_cursor: String::new(),
                    page_size: 100,
                    types: vec![pb::EventType::DisputeUpdated.into()],
                },
            ))
            .await
            .expect("events")
            .into_inner()
            .events;
        let statuses: Vec<pb::DisputeStatus> = events
            .iter()
            .map(|event| match &event.object {
                Some(pb::event::Object::Payment(payment)) => {
                    payment.dispute.as_ref().expect("dispute").status()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        if statuses.len() < wanted.len() {
            Err(statuses)
        } else {
            Ok(statuses)
        }
    })
    .await
    .unwrap_or_else(|seen| seen);
    assert_eq!(statuses, wanted);
}

async fn a_lost_dispute_whose_webhooks_were_lost_is_found_by_the_reconciler(db: Db) {
    let app = TestApp::spawn_with(db, reconciling()).await;
    let payment = app.paid("k-1").await;
    let opened = app
        .stripe
        .dispute(json!({
            "payment_intent": payment.stripe_payment_intent_id,
            "status": "warning_needs_response",
            "is_charge_refundable": true,
        }))
        .await;
    let dispute_id = opened["id"].as_str().expect("id").to_owned();
    // An event whose dispute names only its charge: matched through the charge's intent.
    let mut created = dispute_event(&app, "created", &dispute_id).await;
    created["data"]["object"]["payment_intent"] = Value::Null;
    assert_eq!(
        app.deliver_json(&created).await.result(),
        pb::StripeEventResult::Applied
    );
    // Refundable while an inquiry says so.
    app.refund_of("r-1", &payment.id, 100)
        .await
        .expect("refundable during an inquiry");
    // Escalated and lost at Stripe; neither webhook arrives.
    app.stripe
        .dispute(json!({"dispute": dispute_id, "status": "lost", "is_charge_refundable": false}))
        .await;
    let lost = eventually(Duration::from_secs(15), || async {
        let payment = app.get(&payment.id, false).await.expect("read");
        match payment.dispute.as_ref().map(pb::Dispute::status) {
            Some(pb::DisputeStatus::Lost) => Ok(payment),
            other => Err(other),
        }
    })
    .await
    .expect("found by the reconciler");
    assert!(!lost.dispute.expect("dispute").is_charge_refundable);
}

on_both_databases!(
    an_authorization_of_1000_captured_for_600_receives_600_and_refunds_stop_there,
    a_capture_above_capturable_or_of_an_automatic_payment_is_refused_without_stripe,
    an_authorization_is_voided_by_cancel,
    a_lapsed_authorization_is_found_by_the_reconciler_without_a_webhook,
    a_dispute_opened_updated_and_lost_follows_its_signed_events_and_guards_refunds,
    a_lost_dispute_whose_webhooks_were_lost_is_found_by_the_reconciler,
);
