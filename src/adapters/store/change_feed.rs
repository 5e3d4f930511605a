//! The change feed: the payment event log (`payment_event`, appended by
//! [`WriteTx`](super::WriteTx)) and the announcement of each committed change to this process's
//! watchers.
//!
//! On SQLite (one replica) the store announces a change itself once its transaction committed.
//! On PostgreSQL a trigger on `payment_event` sends `NOTIFY` on [`CHANGE_CHANNEL`] inside the
//! changing transaction, which the server delivers at commit to every replica's listener, and
//! each forwards it here. Notices sent while a listener reconnects are lost, which is why
//! watchers also re-read on a timer.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Backend, Store, parse_status};
use crate::app::ports::{ChangeFeed, StatusEvent, StoreError};

/// The PostgreSQL channel payment changes are announced on (named in the migration that
/// creates the trigger).
const CHANGE_CHANNEL: &str = "paybridge_payment_changed";

/// Ids kept for a slow receiver before it lags.
const CHANGES_BUFFERED: usize = 1024;

/// The sender of change announcements; on PostgreSQL, with a task that forwards the server's.
pub(super) async fn start(
    backend: Backend,
    url: &str,
) -> Result<broadcast::Sender<String>, StoreError> {
    let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
    if backend == Backend::Postgres {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        tokio::spawn(forward_notifications(listener, changes.clone()));
    }
    Ok(changes)
}

/// Forwards PostgreSQL notifications to this process's watchers. `PgListener` reconnects by
/// itself.
async fn forward_notifications(
    mut listener: sqlx::postgres::PgListener,
    changes: broadcast::Sender<String>,
) {
    loop {
        match listener.recv().await {
            Ok(notification) => {
                let _ = changes.send(notification.payload().to_owned());
            }
            Err(error) => {
                tracing::warn!(%error, "listening for payment changes");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Store {
    /// After a commit: on SQLite, tell this process's watchers (PostgreSQL's trigger told the
    /// server's listeners).
    pub(super) fn announce_committed(&self, payment_id: String) {
        if self.backend == Backend::Sqlite {
            let _ = self.changes.send(payment_id);
        }
    }
}

#[async_trait]
impl ChangeFeed for Store {
    fn subscribe_changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    #[tracing::instrument(name = "store.status_events_after", skip_all)]
    async fn status_events_after(
        &self,
        payment_id: &str,
        after: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let rows: Vec<(i64, String, Option<String>, String, i64)> = sqlx::query_as(
            "select payment_event_id, source, from_status, to_status, created_at \
             from payment_event \
             where payment_id = $1 and payment_event_id > $2 and refund_id is null \
               and dispute_id is null \
             order by payment_event_id",
        )
        .bind(payment_id)
        .bind(after)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(payment_event_id, source, from, to, created_at)| {
                Ok(StatusEvent {
                    payment_event_id,
                    source: source
                        .parse()
                        .map_err(|()| StoreError::Corrupt(format!("event source {source:?}")))?,
                    from: from.as_deref().map(parse_status).transpose()?,
                    to: parse_status(&to)?,
                    created_at,
                })
            })
            .collect()
    }
}
