//! proto ⇄ app conversion of the event feed.

use super::convert::{payment_to_proto, timestamp};
use super::refund_convert::refund_to_proto;
use crate::app::ports::{FeedEvent, FeedEventType, FeedObject};
use crate::app::{DEFAULT_EVENT_PAGE_SIZE, ListEventsQuery, MAX_EVENT_PAGE_SIZE};
use crate::app::{event_cursor, event_id, event_type};
use crate::domain::{EventSource, FieldViolation, ValidationError};
use crate::pb::v1 as pb;

/// Parses ListEvents, reporting every bad field at once (the cursor itself is checked by the
/// use case, which knows the tenant's events).
pub(super) fn list_events_query(
    request: pb::ListEventsRequest,
) -> Result<ListEventsQuery, ValidationError> {
    match (page_size(request.page_size), event_types(&request.types)) {
        (Ok(page_size), Ok(types)) => Ok(ListEventsQuery {
            after_cursor: request.after_cursor,
            page_size,
            types,
        }),
        (page_size, types) => Err(ValidationError::collect([page_size.err(), types.err()])),
    }
}

fn page_size(raw: i32) -> Result<u32, FieldViolation> {
    match raw {
        0 => Ok(DEFAULT_EVENT_PAGE_SIZE),
        1.. if raw as u32 <= MAX_EVENT_PAGE_SIZE => Ok(raw as u32),
        _ => Err(FieldViolation::new(
            "page_size",
            format!(
                "must be between 1 and {MAX_EVENT_PAGE_SIZE} (0 means {DEFAULT_EVENT_PAGE_SIZE})"
            ),
        )),
    }
}

/// The types asked for; empty means every type.
pub(super) fn event_types(raw: &[i32]) -> Result<Vec<FeedEventType>, FieldViolation> {
    raw.iter()
        .map(|raw| match pb::EventType::try_from(*raw) {
            Ok(pb::EventType::PaymentUpdated) => Ok(FeedEventType::PaymentUpdated),
            Ok(pb::EventType::RefundUpdated) => Ok(FeedEventType::RefundUpdated),
            Ok(pb::EventType::DisputeUpdated) => Ok(FeedEventType::DisputeUpdated),
            Ok(pb::EventType::Unspecified) | Err(_) => {
                Err(FieldViolation::new("types", "unknown event type"))
            }
        })
        .collect()
}

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
        EventSource::Capture => pb::EventSource::Capture,
    }
}

/// An event as the API shows it.
pub fn event_to_proto(event: FeedEvent) -> pb::Event {
    let kind = match event_type(&event) {
        FeedEventType::PaymentUpdated => pb::EventType::PaymentUpdated,
        FeedEventType::RefundUpdated => pb::EventType::RefundUpdated,
        FeedEventType::DisputeUpdated => pb::EventType::DisputeUpdated,
    };
    pb::Event {
        id: event_id(&event),
        cursor: event_cursor(&event.tenant, event.position),
        r#type: kind.into(),
        source: source_to_proto(event.source).into(),
        created_at: Some(timestamp(event.created_at)),
        object: Some(match event.object {
            FeedObject::Payment(payment) => pb::event::Object::Payment(payment_to_proto(*payment)),
            FeedObject::Refund(refund) => pb::event::Object::Refund(refund_to_proto(*refund)),
            FeedObject::Dispute(payment) => pb::event::Object::Payment(payment_to_proto(*payment)),
        }),
    }
}
