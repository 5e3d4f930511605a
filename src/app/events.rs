//! ListEvents and WatchEvents: a tenant's feed of every committed change of its payments and
//! refunds, in one order that never changes, resumed from an opaque cursor.
//!
//! The feed is the store's event log ([`EventFeed`]); a watcher reads it in pages after its
//! position, then waits for a change announcement ([`ChangeFeed::subscribe_changes`]: every
//! replica's on PostgreSQL) or a timer, and reads again. A slow watcher only falls behind in the
//! table: it holds at most a page and a small buffer, never blocks a writer or another reader, and
//! an announcement it lost (`Lagged`, a listener reconnecting) only delays it until the timer.
//!
//! [`ChangeFeed::subscribe_changes`]: super::ports::ChangeFeed::subscribe_changes

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ports::{FeedEvent, FeedEventType, FeedPosition, PositionState, StoreError};
use super::{AppError, Payments, now_millis};
use crate::domain::{FieldViolation, ValidationError};

/// Page size of ListEvents when the caller gives none.
pub const DEFAULT_EVENT_PAGE_SIZE: u32 = 100;
/// Largest page ListEvents returns.
pub const MAX_EVENT_PAGE_SIZE: u32 = 1000;

/// How many events a watcher reads from the table at a time.
const WATCH_PAGE: u32 = 100;
/// Events buffered for one slow watcher before its own task waits (others never wait for it).
const WATCH_BUFFER: usize = 16;
/// How often a watcher re-reads without an announcement, in case one was lost.
const REREAD_EVERY: Duration = Duration::from_secs(3);
/// After an announcement, how soon a watcher reads again: on PostgreSQL an event that committed
/// is read only once every older transaction has ended, which may be a moment after its
/// announcement. The wait doubles up to [`REREAD_EVERY`].
const REREAD_SOON: Duration = Duration::from_millis(100);

/// The cursor's format version.
const CURSOR_VERSION: &str = "e1";

/// The field a bad cursor is reported on.
const CURSOR_FIELD: &str = "after_cursor";

/// The opaque cursor of a tenant's feed position: base64 of the version, the tenant, the commit
/// group and the event id.
pub fn event_cursor(tenant: &str, position: FeedPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{CURSOR_VERSION}:{}:{}:{tenant}",
        position.commit_group, position.event_id
    ))
}

/// paybridge's own id of an event, `evt_…`: derived from its place in the log, so it is the same
/// on every read and every replica.
pub fn event_id(event: &FeedEvent) -> String {
    format!("evt_{:016x}", event.position.event_id)
}

/// The type of an event.
pub fn event_type(event: &FeedEvent) -> FeedEventType {
    match event.object {
        super::ports::FeedObject::Payment(_) => FeedEventType::PaymentUpdated,
        super::ports::FeedObject::Refund(_) => FeedEventType::RefundUpdated,
        super::ports::FeedObject::Dispute(_) => FeedEventType::DisputeUpdated,
    }
}

/// Reads a cursor of [`event_cursor`]: its tenant and position, or `None` when it is not one.
fn decode_cursor(cursor: &str) -> Option<(String, FeedPosition)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let rest = text.strip_prefix(CURSOR_VERSION)?.strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let commit_group: i64 = parts.next()?.parse().ok()?;
    let event_id: i64 = parts.next()?.parse().ok()?;
    let tenant = parts.next()?;
    (commit_group >= 0 && event_id > 0).then(|| {
        (
            tenant.to_owned(),
            FeedPosition {
                commit_group,
                event_id,
            },
        )
    })
}

/// A parsed ListEvents request.
#[derive(Debug, Clone)]
pub struct ListEventsQuery {
    /// The caller's `after_cursor`, as given (empty: from the oldest event kept).
    pub after_cursor: String,
    /// 1..=MAX_EVENT_PAGE_SIZE.
    pub page_size: u32,
    /// Empty: every type.
    pub types: Vec<FeedEventType>,
}

/// One page of events, and where to resume.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<FeedEvent>,
    /// The last event's cursor, or the request's cursor when the page is empty.
    pub next_cursor: String,
}

impl Payments {
    /// The position a tenant's cursor names: `None` for an empty cursor. A cursor that is not
    /// one of ours, names another tenant, or names no event of this tenant is `Invalid` (field
    /// `after_cursor`); one older than retention is `CursorExpired`.
    async fn resolve_cursor(
        &self,
        tenant: &str,
        cursor: &str,
    ) -> Result<Option<FeedPosition>, AppError> {
        if cursor.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            AppError::Invalid(ValidationError::from(FieldViolation::new(
                CURSOR_FIELD,
                "not a cursor of this tenant's events",
            )))
        };
        let (owner, position) = decode_cursor(cursor).ok_or_else(invalid)?;
        if owner != tenant {
            return Err(invalid());
        }
        match self.store.position_state(tenant, position).await? {
            PositionState::Retained => Ok(Some(position)),
            PositionState::Expired => Err(AppError::CursorExpired),
            PositionState::Unknown => Err(invalid()),
        }
    }

    /// A page of the tenant's events after its cursor, oldest first.
    pub async fn list_events(
        &self,
        tenant: &str,
        query: ListEventsQuery,
    ) -> Result<EventPage, AppError> {
        let after = self.resolve_cursor(tenant, &query.after_cursor).await?;
        let events = self
            .store
            .events_after(tenant, after, &query.types, query.page_size)
            .await?;
        let next_cursor = events.last().map_or(query.after_cursor, |last| {
            event_cursor(tenant, last.position)
        });
        Ok(EventPage {
            events,
            next_cursor,
        })
    }

    /// Follows the tenant's events after its cursor: what is stored, then each new event as it
    /// commits. Never ends on its own (only when the caller goes away, or on a store error that
    /// is not the database being unavailable). A bad cursor is refused before anything is
    /// streamed.
    pub async fn watch_events(
        self: &Arc<Self>,
        tenant: &str,
        after_cursor: &str,
        types: Vec<FeedEventType>,
    ) -> Result<ReceiverStream<Result<FeedEvent, AppError>>, AppError> {
        // Subscribe before the first read, so that no announcement after it is missed.
        let mut changes = self.store.subscribe_changes();
        let mut position = self.resolve_cursor(tenant, after_cursor).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let payments = Arc::clone(self);
        let tenant = tenant.to_owned();
        tokio::spawn(async move {
            let mut wait = REREAD_EVERY;
            loop {
                // Everything stored after the position, a page at a time.
                loop {
                    let page = match payments
                        .store
                        .events_after(&tenant, position, &types, WATCH_PAGE)
                        .await
                    {
                        Ok(page) => page,
                        Err(StoreError::Unavailable(error)) => {
                            tracing::warn!(error = %crate::app::error_chain(&*error), "event watcher: database unavailable");
                            break;
                        }
                        Err(error) => {
                            let _ = sender.send(Err(AppError::from(error))).await;
                            return;
                        }
                    };
                    let full = page.len() == WATCH_PAGE as usize;
                    for event in page {
                        position = Some(event.position);
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            // One read for every announcement waiting now.
                            while !matches!(changes.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
                            wait = REREAD_SOON;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    () = tokio::time::sleep(wait) => wait = (wait * 2).min(REREAD_EVERY),
                    () = sender.closed() => return,
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }

    /// Deletes the events older than `retention` (the log's start, in feed order); returns how
    /// many.
    pub async fn delete_expired_events(&self, retention: Duration) -> Result<u64, AppError> {
        let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .delete_events_before(now_millis().saturating_sub(retention))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;
    use crate::app::ports::{EventFeed, FeedObject};
    use crate::domain::PaymentStatus;

    fn query(after_cursor: &str, page_size: u32) -> ListEventsQuery {
        ListEventsQuery {
            after_cursor: after_cursor.to_owned(),
            page_size,
            types: Vec::new(),
        }
    }

    fn statuses(events: &[FeedEvent]) -> Vec<PaymentStatus> {
        events
            .iter()
            .map(|event| match &event.object {
                FeedObject::Payment(payment) => payment.status,
                FeedObject::Refund(_) | FeedObject::Dispute(_) => panic!("no refunds here"),
            })
            .collect()
    }

    #[tokio::test]
    async fn pages_resume_after_their_cursor_and_foreign_or_expired_cursors_are_refused() {
        let harness = Harness::new();
        harness.create("k1", "inv-1").await;
        harness.create("k2", "inv-2").await;
        let payments = &harness.payments;
        let first = payments
            .list_events("billing", query("", 3))
            .await
            .expect("listed");
        assert_eq!(
            statuses(&first.events),
            [
                PaymentStatus::Creating,
                PaymentStatus::RequiresPaymentMethod,
                PaymentStatus::Creating
            ]
        );
        let rest = payments
            .list_events("billing", query(&first.next_cursor, 3))
            .await
            .expect("listed");
        assert_eq!(rest.events.len(), 1);
        let end = payments
            .list_events("billing", query(&rest.next_cursor, 3))
            .await
            .expect("listed");
        assert!(end.events.is_empty());
        assert_eq!(
            end.next_cursor, rest.next_cursor,
            "an empty page keeps the cursor"
        );

        let other = payments
            .list_events("orders", query("", 10))
            .await
            .expect("listed");
        assert!(other.events.is_empty());
        for refused in [
            payments
                .list_events("orders", query(&first.next_cursor, 10))
                .await,
            payments
                .list_events(
                    "orders",
                    query(&event_cursor("orders", first.events[2].position), 10),
                )
                .await,
            payments
                .list_events(
                    "billing",
                    query(
                        &event_cursor(
                            "billing",
                            FeedPosition {
                                commit_group: 0,
                                event_id: 99,
                            },
                        ),
                        10,
                    ),
                )
                .await,
        ] {
            assert!(
                matches!(&refused, Err(AppError::Invalid(invalid)) if invalid.violations[0].field == CURSOR_FIELD),
                "{refused:?}"
            );
        }

        // Everything is deleted: the cursors expire.
        let deleted = harness
            .store
            .delete_events_before(i64::MAX)
            .await
            .expect("deleted");
        assert_eq!(deleted, 4);
        let expired = payments
            .list_events("billing", query(&first.next_cursor, 3))
            .await;
        assert!(
            matches!(expired, Err(AppError::CursorExpired)),
            "{expired:?}"
        );
    }

    #[tokio::test]
    async fn a_watcher_gets_what_is_stored_then_each_new_event() {
        let harness = Harness::new();
        harness.create("k1", "inv-1").await;
        let mut events = harness
            .payments
            .watch_events("billing", "", Vec::new())
            .await
            .expect("watching");
        let mut next = async || {
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio_stream::StreamExt::next(&mut events),
            )
            .await
            .expect("an event")
            .expect("the stream goes on")
            .expect("no error")
        };
        let stored = [next().await, next().await];
        harness.create("k2", "inv-2").await;
        let new = [next().await, next().await];
        assert!(stored[1].position < new[0].position && new[0].position < new[1].position);
        assert_eq!(
            statuses(&new),
            [
                PaymentStatus::Creating,
                PaymentStatus::RequiresPaymentMethod
            ]
        );
    }

    #[test]
    fn a_cursor_reads_back_and_a_forged_one_does_not() {
        let position = FeedPosition {
            commit_group: 7_000_123,
            event_id: 42,
        };
        let cursor = event_cursor("billing", position);
        assert_eq!(
            decode_cursor(&cursor),
            Some(("billing".to_owned(), position))
        );
        for forged in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("e1:1:2"),
            &URL_SAFE_NO_PAD.encode("e0:1:2:billing"),
            &URL_SAFE_NO_PAD.encode("e1:x:2:billing"),
            &URL_SAFE_NO_PAD.encode("e1:-1:2:billing"),
            &URL_SAFE_NO_PAD.encode("e1:1:0:billing"),
        ] {
            assert_eq!(decode_cursor(forged), None, "{forged}");
        }
    }
}
