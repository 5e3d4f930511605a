//! Stripe webhooks: the `Stripe-Signature` check and the event's payload.
//!
//! The signature is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.payload">[,v1=…][,v0=…]`. Any `v1`
//! that matches any configured secret (two during a rotation) passes; the comparison is constant
//! time; a timestamp further than the tolerance from now is refused (replays).

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use stripe_shared::PaymentIntent;

use super::mapping::to_provider_intent;
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
    let applied_type = APPLIED_EVENT_TYPES
        .iter()
        .find(|known| **known == envelope.event_type)
        .copied();
    let intent = if applied_type.is_some() {
        // The same parser (and status mapping) as the API client's answers.
        let object = envelope.data.object.to_string();
        let intent: PaymentIntent = miniserde::json::from_str(&object)
            .map_err(|_| format!("{} carries no PaymentIntent", envelope.event_type))?;
        Some(to_provider_intent(intent).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(ProviderEvent {
        id: envelope.id,
        event_type: envelope.event_type,
        created: envelope.created,
        intent,
        refund: None,
        refunded_intent: None,
        type_label: applied_type.unwrap_or("other"),
    })
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
}
