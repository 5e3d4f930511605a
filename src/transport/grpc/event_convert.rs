//! proto conversion of the event feed.
//!
//! PROVISIONAL (branch feed-push): the feed's own conversion (branch feed-core, same file, same
//! `event_to_proto`) replaces this file on merge; only what the pushes need is here, with the
//! same event id and cursor formats.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::convert::{payment_to_proto, timestamp};
use super::refund_convert::refund_to_proto;
use crate::app::ports::{FeedEvent, FeedObject};
use crate::domain::EventSource;
use crate::pb::v1 as pb;

fn source_to_proto(source: EventSource) -> pb::EventSource {
    match source {
        EventSource::Create => pb::EventSource::Create,
        EventSource::Return => pb::EventSource::Return,
        EventSource::Webhook => pb::EventSource::Webhook,
        EventSource::Reconcile => pb::EventSource::Reconcile,
        EventSource::Cancel => pb::EventSource::Cancel,
        EventSource::Refresh => pb::EventSource::Refresh,
        EventSource::Refund => pb::EventSource::Refund,
        EventSource::External => pb::EventSource::External,
    }
}

/// An event as the API shows it.
pub fn event_to_proto(event: FeedEvent) -> pb::Event {
    let (kind, object) = match event.object {
        FeedObject::Payment(payment) => (
            pb::EventType::PaymentUpdated,
            pb::event::Object::Payment(payment_to_proto(*payment)),
        ),
        FeedObject::Refund(refund) => (
            pb::EventType::RefundUpdated,
            pb::event::Object::Refund(refund_to_proto(*refund)),
        ),
    };
    pb::Event {
        id: format!("evt_{:016x}", event.position.event_id),
        cursor: URL_SAFE_NO_PAD.encode(format!(
            "e1:{}:{}:{}",
            event.position.commit_group, event.position.event_id, event.tenant
        )),
        r#type: kind.into(),
        source: source_to_proto(event.source).into(),
        created_at: Some(timestamp(event.created_at)),
        object: Some(object),
    }
}
