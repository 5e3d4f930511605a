//! Stripe webhooks: the `Stripe-Signature` check and the event's payload.
//!
//! The signature is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">[,v1=…][,v0=…]`. Any `v1`
//! that matches any configured secret (two during a rotation) passes; the comparison is constant
//! time; a timestamp further than the tolerance from now is refused (replays).

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use stripe_shared::{PaymentIntent, Refund};

use super::mapping::{to_provider_intent, to_provider_refund};
use crate::app::ports::{ProviderEvent, WebhookRefused, WebhookVerification};

/// Why a webhook's signature was refused. The gateway answers 400 to all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header is missing")]
    Missing,
    #[error("Stripe-Signature header is malformed")]
    Malformed,
    #[error("Stripe-Signature timestamp is outside the tolerance")]
    Stale,
    #[error("no Stripe-Signature v1 value matches")]
    Mismatch,
}

/// Checks webhook signatures against one or two secrets.
#[derive(Clone)]
pub struct WebhookVerifier {
    secrets: Vec<SecretString>,
    tolerance: Duration,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl WebhookVerifier {
    /// `secrets`: the current one first, then the previous one during a rotation.
    pub fn new(secrets: Vec<SecretString>, tolerance: Duration) -> WebhookVerifier {
        WebhookVerifier { secrets, tolerance }
    }

    /// Verifies `header` for `payload` at `now` (unix seconds).
    pub fn verify(&self, payload: &[u8], header: &str, now: i64) -> Result<(), SignatureError> {
        if header.trim().is_empty() {
            return Err(SignatureError::Missing);
        }
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match key {
                "t" => {
                    if timestamp.is_some() {
                        return Err(SignatureError::Malformed);
                    }
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    );
                }
                "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
                // v0 and schemes Stripe may add later are ignored, as Stripe's libraries do.
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        // Every secret and every v1 is tried, so timing does not tell which one matched.
        let mut matched = false;
        for secret in &self.secrets {
            for signature in &signatures {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
                    .map_err(|_| SignatureError::Mismatch)?;
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(payload);
                matched |= mac.verify_slice(signature).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Signs a payload the way Stripe does; for tests and local tools.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl WebhookVerification for WebhookVerifier {
    fn verify_event(
        &self,
        payload: &[u8],
        signature: &str,
        now_seconds: i64,
    ) -> Result<ProviderEvent, WebhookRefused> {
        self.verify(payload, signature, now_seconds)
            .map_err(|error| WebhookRefused::Signature(error.to_string()))?;
        parse_event(payload).map_err(WebhookRefused::Payload)
    }
}

/// The `payment_intent.*` event types that change a payment.
pub const APPLIED_EVENT_TYPES: [&str; 6] = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
];

/// The event types that carry a Refund.
pub const REFUND_EVENT_TYPES: [&str; 4] = [
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.refund.updated",
];

/// The event that carries a Charge whose refunds changed.
pub const CHARGE_REFUNDED: &str = "charge.refunded";

/// The event types that carry a Dispute.
pub const DISPUTE_EVENT_TYPES: [&str; 5] = [
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
];

/// What an applied event type carries.
#[derive(Clone, Copy)]
enum Carries {
    PaymentIntent,
    Refund,
    Charge,
    Dispute,
}

/// The applied type `event_type` names (a `'static` label) and what its object is.
fn applied(event_type: &str) -> Option<(&'static str, Carries)> {
    let known = |types: &[&'static str], carries| {
        types
            .iter()
            .find(|known| **known == event_type)
            .map(|known| (*known, carries))
    };
    known(&APPLIED_EVENT_TYPES, Carries::PaymentIntent)
        .or_else(|| known(&REFUND_EVENT_TYPES, Carries::Refund))
        .or_else(|| known(&[CHARGE_REFUNDED], Carries::Charge))
        .or_else(|| known(&DISPUTE_EVENT_TYPES, Carries::Dispute))
}

/// Parses a verified event's payload.
pub fn parse_event(payload: &[u8]) -> Result<ProviderEvent, String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: String,
        #[serde(rename = "type")]
        event_type: String,
        created: i64,
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        object: serde_json::Value,
    }
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| format!("not a Stripe event: {e}"))?;
    if !envelope.id.starts_with("evt_") || envelope.id.len() > 255 {
        return Err("event id is not an evt_ id".to_owned());
    }
    let applied = applied(&envelope.event_type);
    let (mut intent, mut refund, mut refunded_intent, mut dispute) = (None, None, None, None);
    match applied.map(|(_, carries)| carries) {
        // The same parsers (and status mappings) as the API client's answers.
        Some(Carries::PaymentIntent) => {
            let object = envelope.data.object.to_string();
            let parsed: PaymentIntent = miniserde::json::from_str(&object)
                .map_err(|_| format!("{} carries no PaymentIntent", envelope.event_type))?;
            intent = Some(to_provider_intent(parsed).map_err(|e| e.to_string())?);
        }
        Some(Carries::Refund) => {
            // A Charge has every field a Refund requires: the object's type tells them apart.
            if envelope.data.object.get("object").and_then(|o| o.as_str()) != Some("refund") {
                return Err(format!(
                    "{} carries no Refund: its object is not a refund",
                    envelope.event_type
                ));
            }
            let object = envelope.data.object.to_string();
            let parsed: Refund = miniserde::json::from_str(&object)
                .map_err(|_| format!("{} carries no Refund", envelope.event_type))?;
            refund = Some(to_provider_refund(parsed).map_err(|e| e.to_string())?);
        }
        Some(Carries::Dispute) => {
            let object: super::mapping::DisputeObject =
                serde_json::from_value(envelope.data.object.clone())
                    .map_err(|e| format!("{} carries no Dispute: {e}", envelope.event_type))?;
            dispute = Some(
                super::mapping::to_provider_dispute(object)
                    .map_err(|e| format!("{}: {e}", envelope.event_type))?,
            );
        }
        Some(Carries::Charge) => {
            refunded_intent = charge_payment_intent(&envelope.data.object)
                .map_err(|why| format!("{} carries no Charge: {why}", envelope.event_type))?;
        }
        None => {}
    }
    Ok(ProviderEvent {
        id: envelope.id,
        event_type: envelope.event_type,
        created: envelope.created,
        intent,
        refund,
        refunded_intent,
        dispute,
        type_label: applied.map_or("other", |(label, _)| label),
    })
}

/// The PaymentIntent of a Charge (`None` for a charge made without one). Only `payment_intent`
/// is read: the rest of a Charge (payment method details, its `refunds` list, which holds ten
/// at most) is not relied on, so a Charge with fields async-stripe does not know, or without
/// ones it requires, still names its intent.
fn charge_payment_intent(object: &serde_json::Value) -> Result<Option<String>, &'static str> {
    if object.get("object").and_then(|o| o.as_str()) != Some("charge") {
        return Err("its object is not a charge");
    }
    match object.get("payment_intent") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(id)) => Ok(Some(id.clone())),
        // Expanded (an API answer asked so; events send the id).
        Some(serde_json::Value::Object(intent)) => match intent.get("id") {
            Some(serde_json::Value::String(id)) => Ok(Some(id.clone())),
            _ => Err("its expanded payment_intent has no id"),
        },
        Some(_) => Err("its payment_intent is neither an id nor an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_current";
    const PREVIOUS: &str = "whsec_test_previous";

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(
            vec![SecretString::from(SECRET), SecretString::from(PREVIOUS)],
            Duration::from_secs(300),
        )
    }

    #[test]
    fn a_signature_with_either_secret_passes() {
        let body = br#"{"id":"evt_1"}"#;
        assert_eq!(
            verifier().verify(body, &sign(body, SECRET, 1000), 1000),
            Ok(())
        );
        assert_eq!(
            verifier().verify(body, &sign(body, PREVIOUS, 1000), 1100),
            Ok(())
        );
    }

    #[test]
    fn any_of_several_v1_values_may_match() {
        let body = b"{}";
        let good = sign(body, SECRET, 1000);
        let v1 = good.split_once(",v1=").expect("v1").1;
        let header = format!("t=1000,v1={},v1={v1},v0=abcd", "00".repeat(32));
        assert_eq!(verifier().verify(body, &header, 1000), Ok(()));
    }

    #[test]
    fn tampering_a_wrong_secret_staleness_and_bad_headers_are_refused() {
        let body = b"{\"amount\":100}";
        let header = sign(body, SECRET, 1000);
        assert_eq!(
            verifier().verify(b"{\"amount\":999}", &header, 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier().verify(body, &sign(body, "whsec_other", 1000), 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier().verify(body, &header, 1301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verifier().verify(body, &header, 699),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verifier().verify(body, "", 1000),
            Err(SignatureError::Missing)
        );
        for bad in [
            "t=1000",
            "v1=00",
            "garbage",
            "t=x,v1=00",
            "t=1000,v1=zz",
            "t=1,t=2,v1=00",
        ] {
            assert_eq!(
                verifier().verify(body, bad, 1000),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn events_of_other_types_carry_no_intent() {
        let event = parse_event(
            br#"{"id":"evt_1","type":"customer.created","created":5,"data":{"object":{"id":"cus_1"}}}"#,
        )
        .expect("parses");
        assert_eq!(event.event_type, "customer.created");
        assert!(event.intent.is_none());
        assert!(parse_event(b"[]").is_err());
        assert!(parse_event(br#"{"id":"x","type":"t","created":1,"data":{"object":{}}}"#).is_err());
    }

    const REFUND: &str = include_str!("../../../tests/fixtures/stripe/refund.json");
    const CHARGE: &str = include_str!("../../../tests/fixtures/stripe/charge.json");
    const DISPUTE: &str = include_str!("../../../tests/fixtures/stripe/dispute.json");

    /// An event of `event_type` around `object`, as Stripe sends it.
    fn payload(event_type: &str, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_1RefundEvent",
            "object": "event",
            "api_version": "2026-09-30.endive",
            "created": 1_764_000_000,
            "data": {"object": object},
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": event_type,
        }))
        .expect("JSON")
    }

    fn fixture(json: &str) -> serde_json::Value {
        serde_json::from_str(json).expect("fixture JSON")
    }

    #[test]
    fn refund_events_carry_stripes_example_refund() {
        for event_type in REFUND_EVENT_TYPES {
            let event = parse_event(&payload(event_type, fixture(REFUND))).expect("parses");
            assert_eq!(event.event_type, event_type);
            assert_eq!(event.type_label, event_type);
            assert_eq!(event.created, 1_764_000_000);
            assert!(event.intent.is_none());
            assert!(event.refunded_intent.is_none());
            let refund = event.refund.expect("a refund");
            assert_eq!(
                refund,
                crate::app::ports::ProviderRefund {
                    id: "re_1Pgc72B7WZ01zgkWqPvrRrPE".to_owned(),
                    payment_intent: None,
                    amount: 100,
                    currency: "usd".to_owned(),
                    status: crate::domain::RefundStatus::Succeeded,
                    reason: None,
                    failure_reason: None,
                    metadata: Default::default(),
                    created: 1_234_567_890,
                    releases_uncaptured: false,
                }
            );
        }
    }

    #[test]
    fn dispute_events_carry_stripes_example_dispute() {
        let mut dispute = fixture(DISPUTE);
        dispute["payment_intent"] = "pi_3Disputed".into();
        for event_type in DISPUTE_EVENT_TYPES {
            let event = parse_event(&payload(event_type, dispute.clone())).expect("parses");
            assert_eq!(event.type_label, event_type);
            assert_eq!(
                event.dispute.expect("a dispute"),
                crate::app::ports::ProviderDispute {
                    payment_intent: Some("pi_3Disputed".to_owned()),
                    charge: Some("ch_1PgafuB7WZ01zgkWXYmPNZs8".to_owned()),
                    currency: "usd".to_owned(),
                    dispute: crate::domain::Dispute {
                        id: "dp_1Pgc71B7WZ01zgkWMevJiAUx".to_owned(),
                        status: crate::domain::DisputeStatus::WarningNeedsResponse,
                        reason: "general".to_owned(),
                        amount: 1000,
                        evidence_due_by: Some(1_723_679_999_000),
                        is_charge_refundable: true,
                    },
                }
            );
        }
        let mut unknown = fixture(DISPUTE);
        unknown["status"] = "reopened".into();
        assert!(parse_event(&payload("charge.dispute.updated", unknown)).is_err());
    }

    #[test]
    fn a_failed_refund_event_names_its_intent_reason_and_failure() {
        let mut refund = fixture(REFUND);
        refund["payment_intent"] = "pi_3Refunded".into();
        refund["status"] = "failed".into();
        refund["reason"] = "requested_by_customer".into();
        refund["failure_reason"] = "expired_or_canceled_card".into();
        refund["failure_balance_transaction"] = "txn_1Failure".into();
        refund["metadata"] = serde_json::json!({"paybridge_refund_id": "ref_x", "tenant": "t"});
        let event = parse_event(&payload("refund.failed", refund)).expect("parses");
        let refund = event.refund.expect("a refund");
        assert_eq!(refund.payment_intent.as_deref(), Some("pi_3Refunded"));
        assert_eq!(refund.status, crate::domain::RefundStatus::Failed);
        assert_eq!(
            refund.reason,
            Some(crate::domain::RefundReason::RequestedByCustomer)
        );
        assert_eq!(
            refund.failure_reason.as_deref(),
            Some("expired_or_canceled_card")
        );
        assert_eq!(refund.metadata["paybridge_refund_id"], "ref_x");
    }

    #[test]
    fn a_refund_awaiting_the_customer_parses_with_its_next_action() {
        let mut refund = fixture(REFUND);
        refund["status"] = "requires_action".into();
        refund["payment_intent"] = "pi_3Konbini".into();
        refund["instructions_email"] = "customer@example.com".into();
        refund["destination_details"] = serde_json::json!({
            "type": "card",
            "card": {"reference": null, "reference_status": "pending",
                     "reference_type": "acquirer_reference_number", "type": "refund"},
        });
        refund["next_action"] = serde_json::json!({
            "type": "display_details",
            "display_details": {
                "email_sent": {"email_sent_at": 1_764_000_000,
                               "email_sent_to": "customer@example.com"},
                "expires_at": 1_764_604_800,
            },
        });
        let event = parse_event(&payload("refund.created", refund)).expect("parses");
        let refund = event.refund.expect("a refund");
        assert_eq!(refund.status, crate::domain::RefundStatus::RequiresAction);
        assert_eq!(refund.payment_intent.as_deref(), Some("pi_3Konbini"));
    }

    #[test]
    fn every_refund_status_and_reason_maps_and_unknown_ones_do_not() {
        use crate::domain::{RefundReason, RefundStatus};
        for status in [
            RefundStatus::Pending,
            RefundStatus::RequiresAction,
            RefundStatus::Succeeded,
            RefundStatus::Failed,
            RefundStatus::Canceled,
        ] {
            let mut refund = fixture(REFUND);
            refund["status"] = status.as_str().into();
            let event = parse_event(&payload("refund.updated", refund)).expect("parses");
            assert_eq!(event.refund.expect("a refund").status, status);
        }
        for bad in [
            serde_json::json!("creating"),
            serde_json::json!("teleported"),
        ] {
            let mut refund = fixture(REFUND);
            refund["status"] = bad.clone();
            let err = parse_event(&payload("refund.updated", refund)).expect_err("refused");
            assert!(err.contains("unknown Refund status"), "{bad}: {err}");
        }
        for (stripe, ours) in [
            (
                "requested_by_customer",
                Some(RefundReason::RequestedByCustomer),
            ),
            ("duplicate", Some(RefundReason::Duplicate)),
            ("fraudulent", Some(RefundReason::Fraudulent)),
            ("expired_uncaptured_charge", None),
            ("a_reason_stripe_adds_later", None),
        ] {
            let mut refund = fixture(REFUND);
            refund["reason"] = stripe.into();
            let event = parse_event(&payload("refund.created", refund)).expect("parses");
            assert_eq!(event.refund.expect("a refund").reason, ours, "{stripe}");
        }
    }

    #[test]
    fn charge_refunded_names_the_charges_intent_only() {
        let mut charge = fixture(CHARGE);
        charge["payment_intent"] = "pi_3Charged".into();
        charge["amount_refunded"] = 100.into();
        charge["refunded"] = true.into();
        let event = parse_event(&payload("charge.refunded", charge)).expect("parses");
        assert_eq!(event.type_label, "charge.refunded");
        assert_eq!(event.refunded_intent.as_deref(), Some("pi_3Charged"));
        assert!(event.refund.is_none() && event.intent.is_none());

        // Stripe's example as it is: a charge made without a PaymentIntent.
        let event = parse_event(&payload("charge.refunded", fixture(CHARGE))).expect("parses");
        assert_eq!(event.refunded_intent, None);

        // Whatever else the Charge holds is not read.
        let charge = serde_json::json!({
            "id": "ch_1", "object": "charge", "payment_intent": "pi_3Sparse", "refunds": null,
        });
        let event = parse_event(&payload("charge.refunded", charge)).expect("parses");
        assert_eq!(event.refunded_intent.as_deref(), Some("pi_3Sparse"));
    }

    #[test]
    fn a_refund_event_without_a_refund_is_refused() {
        // A Charge has every field a Refund requires.
        let mut charge = fixture(CHARGE);
        charge["payment_intent"] = "pi_3Charged".into();
        let err = parse_event(&payload("refund.updated", charge)).expect_err("refused");
        assert!(err.contains("carries no Refund"), "{err}");
        let mut refund = fixture(REFUND);
        refund.as_object_mut().expect("object").remove("amount");
        let err = parse_event(&payload("charge.refund.updated", refund)).expect_err("refused");
        assert!(err.contains("carries no Refund"), "{err}");
        let err = parse_event(&payload("charge.refunded", fixture(REFUND))).expect_err("refused");
        assert!(err.contains("carries no Charge"), "{err}");
    }

    #[test]
    fn refund_types_unknown_to_paybridge_are_other() {
        let event =
            parse_event(&payload("charge.refund.created", fixture(REFUND))).expect("parses");
        assert_eq!(event.type_label, "other");
        assert!(event.refund.is_none());
    }
}
