//! The body of a push: an event in the proto's canonical JSON mapping (lowerCamelCase field
//! names, enum value names, RFC 3339 timestamps, 64-bit integers as strings, fields at their
//! default left out), the JSON a gRPC gateway or `protojson` would give for the same `Event`.
//! Read through the descriptor set build.rs writes, so it follows the proto as it changes.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::event_convert::event_to_proto;
use crate::app::ports::FeedEvent;
use crate::pb::v1 as pb;

static EVENT: LazyLock<MessageDescriptor> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("build.rs wrote a valid descriptor set")
        .get_message_by_name("paybridge.v1.Event")
        .expect("the proto declares paybridge.v1.Event")
});

/// The event's canonical JSON.
pub fn proto_json(event: &pb::Event) -> Vec<u8> {
    let mut message = DynamicMessage::new(EVENT.clone());
    message
        .transcode_from(event)
        .expect("an Event transcodes to its own descriptor");
    serde_json::to_vec(&message).expect("a message always serializes")
}

/// A feed event's id (`evt_…`, for `Paybridge-Event-Id`) and its push body.
pub fn push_body(event: &FeedEvent) -> (String, Vec<u8>) {
    let event = event_to_proto(event.clone());
    let body = proto_json(&event);
    (event.id, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ports::{FeedObject, FeedPosition};
    use crate::domain::{EventSource, Payment, PaymentStatus};

    fn event() -> FeedEvent {
        let payment = Payment {
            id: "pay_1".to_owned(),
            tenant: "billing".to_owned(),
            invoice_id: "inv-1".to_owned(),
            amount: 4200,
            currency: "usd".to_owned(),
            status: PaymentStatus::Succeeded,
            stripe_payment_intent_id: Some("pi_1".to_owned()),
            stripe_customer_id: None,
            client_secret: Some("pi_1_secret_never_pushed".to_owned()),
            description: None,
            metadata: [("order".to_owned(), "o-1".to_owned())].into(),
            success_url: "https://billing.example.com/paid".to_owned(),
            failure_url: "https://billing.example.com/failed".to_owned(),
            last_payment_error: None,
            created_at: 1_800_000_000_000,
            updated_at: 1_800_000_000_500,
            last_event_created: None,
            amount_received: 4200,
            amount_refunded: 0,
            amount_refund_pending: 0,
            capture_method: crate::domain::CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        };
        FeedEvent {
            position: FeedPosition {
                commit_group: 7,
                event_id: 42,
            },
            tenant: "billing".to_owned(),
            source: EventSource::Webhook,
            created_at: 1_800_000_000_500,
            object: FeedObject::Payment(Box::new(payment)),
        }
    }

    #[test]
    fn a_pushed_event_is_the_protos_canonical_json() {
        let (id, body) = push_body(&event());
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["id"], id.as_str());
        assert!(id.starts_with("evt_"), "{id}");
        assert_eq!(json["type"], "EVENT_TYPE_PAYMENT_UPDATED");
        assert_eq!(json["source"], "EVENT_SOURCE_WEBHOOK");
        assert_eq!(json["createdAt"], "2027-01-15T08:00:00.500Z");
        let payment = &json["payment"];
        assert_eq!(payment["id"], "pay_1");
        assert_eq!(payment["invoiceId"], "inv-1");
        assert_eq!(payment["amount"], "4200", "int64 as a string");
        assert_eq!(payment["status"], "PAYMENT_STATUS_SUCCEEDED");
        assert_eq!(payment["metadata"]["order"], "o-1");
        assert!(json.get("refund").is_none());
        assert!(json["cursor"].as_str().is_some_and(|c| !c.is_empty()));
        let text = String::from_utf8(body).unwrap();
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn the_json_reads_back_as_the_same_event() {
        let event = event_to_proto(event());
        let body = proto_json(&event);
        let mut deserializer = serde_json::Deserializer::from_slice(&body);
        let message = DynamicMessage::deserialize(EVENT.clone(), &mut deserializer).unwrap();
        assert_eq!(message.transcode_to::<pb::Event>().unwrap(), event);
    }
}
