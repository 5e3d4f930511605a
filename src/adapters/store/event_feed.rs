//! The event feed ([`EventFeed`]): the event log `payment_event`, read per tenant in the order
//! (`commit_group`, `payment_event_id`), each event with the object it recorded.
//!
//! On PostgreSQL identity values are taken in one order and committed in another: a reader that
//! saw event 11 could miss 10, committed a moment later. So each event records its writing
//! transaction's id (`commit_group`), and a reader reads only events whose transaction is older
//! than every transaction still running (`pg_snapshot_xmin` of its statement's snapshot): those
//! have all ended, and any transaction that writes an event later has a larger id, so its events
//! come after everything read. On SQLite one writer commits ids in order and `commit_group` is 0.
//!
//! Retention deletes the log from its start, in feed order, and remembers the newest position it
//! deleted (`event_feed_horizon`): a cursor at or before it has expired.

use async_trait::async_trait;

use super::{Backend, Store, payment_row, refunds};
use crate::app::ports::{
    EventFeed, FeedEvent, FeedEventType, FeedObject, FeedPosition, PositionState, StoreError,
};

/// Only events no transaction still running can precede (PostgreSQL); nothing on SQLite.
fn settled(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => {
            "and commit_group < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        }
    }
}

/// One feed row as read.
#[derive(Debug, sqlx::FromRow)]
struct FeedRow {
    payment_event_id: i64,
    commit_group: i64,
    tenant: String,
    source: String,
    created_at: i64,
    refund_id: Option<String>,
    dispute_id: Option<String>,
    object: String,
}

impl TryFrom<FeedRow> for FeedEvent {
    type Error = StoreError;

    fn try_from(row: FeedRow) -> Result<FeedEvent, StoreError> {
        let object = match (row.refund_id, row.dispute_id) {
            (Some(_), _) => FeedObject::Refund(Box::new(refunds::refund_from_json(&row.object)?)),
            (None, Some(_)) => {
                FeedObject::Dispute(Box::new(payment_row::payment_from_json(&row.object)?))
            }
            (None, None) => {
                FeedObject::Payment(Box::new(payment_row::payment_from_json(&row.object)?))
            }
        };
        Ok(FeedEvent {
            position: FeedPosition {
                commit_group: row.commit_group,
                event_id: row.payment_event_id,
            },
            source: row
                .source
                .parse()
                .map_err(|()| StoreError::Corrupt(format!("event source {:?}", row.source)))?,
            tenant: row.tenant,
            created_at: row.created_at,
            object,
        })
    }
}

#[async_trait]
impl EventFeed for Store {
    #[tracing::instrument(name = "store.events_after", skip_all)]
    async fn events_after(
        &self,
        tenant: &str,
        after: Option<FeedPosition>,
        types: &[FeedEventType],
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
            [Backend::Sqlite, Backend::Postgres].map(|backend| {
                format!(
                    "select payment_event_id, commit_group, tenant, source, created_at, refund_id, \
                         dispute_id, object \
                     from payment_event \
                     where tenant = $1 \
                       and (commit_group > $2 or (commit_group = $2 and payment_event_id > $3)) \
                       and (($4 = 1 and refund_id is null and dispute_id is null) \
                            or ($5 = 1 and refund_id is not null) \
                            or ($7 = 1 and dispute_id is not null)) \
                       {} \
                     order by commit_group, payment_event_id \
                     limit $6",
                    settled(backend)
                )
            })
        });
        let wanted = |kind| i64::from(types.is_empty() || types.contains(&kind));
        // Before every event: groups and ids are never negative.
        let after = after.unwrap_or(FeedPosition {
            commit_group: -1,
            event_id: -1,
        });
        let rows: Vec<FeedRow> =
            sqlx::query_as(&SQL[usize::from(self.backend == Backend::Postgres)])
                .bind(tenant)
                .bind(after.commit_group)
                .bind(after.event_id)
                .bind(wanted(FeedEventType::PaymentUpdated))
                .bind(wanted(FeedEventType::RefundUpdated))
                .bind(i64::from(limit))
                .bind(wanted(FeedEventType::DisputeUpdated))
                .fetch_all(&self.read)
                .await?;
        rows.into_iter().map(FeedEvent::try_from).collect()
    }

    #[tracing::instrument(name = "store.position_state", skip_all)]
    async fn position_state(
        &self,
        tenant: &str,
        position: FeedPosition,
    ) -> Result<PositionState, StoreError> {
        let (retained, expired): (i64, i64) = sqlx::query_as(
            "select \
                 (select count(*) from payment_event \
                  where tenant = $1 and commit_group = $2 and payment_event_id = $3), \
                 (select count(*) from event_feed_horizon \
                  where commit_group > $2 or (commit_group = $2 and payment_event_id >= $3))",
        )
        .bind(tenant)
        .bind(position.commit_group)
        .bind(position.event_id)
        .fetch_one(&self.read)
        .await?;
        Ok(if retained > 0 {
            PositionState::Retained
        } else if expired > 0 {
            PositionState::Expired
        } else {
            PositionState::Unknown
        })
    }

    #[tracing::instrument(name = "store.delete_events_before", skip_all)]
    async fn delete_events_before(&self, created_before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        // Only settled events count (see the module's comment), and the bound is read once: a
        // PostgreSQL transaction in READ COMMITTED reads each statement in a new snapshot, and
        // events below one snapshot's xmin stay exactly those in every later one. On SQLite the
        // one writer, held here, is the only one who could add any.
        let settled_below: i64 = match self.backend {
            Backend::Sqlite => i64::MAX,
            Backend::Postgres => {
                let (xmin,): (i64,) =
                    sqlx::query_as("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                        .fetch_one(tx.conn())
                        .await?;
                xmin
            }
        };
        // The log is deleted from its start up to its first event to keep (created at or after
        // `created_before`), so that what is kept is never a feed with holes.
        let first_kept: Option<(i64, i64)> = sqlx::query_as(
            "select commit_group, payment_event_id from payment_event \
             where created_at >= $1 and commit_group < $2 \
             order by commit_group, payment_event_id limit 1",
        )
        .bind(created_before)
        .bind(settled_below)
        .fetch_optional(tx.conn())
        .await?;
        let (kept_group, kept_id) = first_kept.unzip();
        let last_deleted: Option<(i64, i64)> = sqlx::query_as(
            "select commit_group, payment_event_id from payment_event \
             where commit_group < $3 \
               and ($1 is null or commit_group < $1 \
                    or (commit_group = $1 and payment_event_id < $2)) \
             order by commit_group desc, payment_event_id desc limit 1",
        )
        .bind(kept_group)
        .bind(kept_id)
        .bind(settled_below)
        .fetch_optional(tx.conn())
        .await?;
        let Some((group, id)) = last_deleted else {
            return Ok(0);
        };
        let deleted = sqlx::query(
            "delete from payment_event \
             where commit_group < $1 or (commit_group = $1 and payment_event_id <= $2)",
        )
        .bind(group)
        .bind(id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        sqlx::query(
            "update event_feed_horizon set commit_group = $1, payment_event_id = $2 \
             where commit_group < $1 or (commit_group = $1 and payment_event_id < $2)",
        )
        .bind(group)
        .bind(id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
