//! WatchPayment: the current state, then every recorded change, ending after a terminal state.
//! Changes are read from the payment's event log, so a watcher sees each transition even when
//! several land between two wake-ups.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{AppError, Payments};
use crate::domain::Payment;

/// How often a watcher re-reads its payment even without a change notice, in case one was lost
/// (a dropped LISTEN connection, a lagging receiver).
const REREAD_EVERY: Duration = Duration::from_secs(5);

/// Payments buffered for one slow watcher before its own task waits (others never wait for it).
const WATCH_BUFFER: usize = 16;

impl Payments {
    /// Follows one of the tenant's payments. `NotFound` before anything is streamed if it is not
    /// the tenant's. A watcher that connects after the change still gets the final state first.
    pub async fn watch_payment(
        self: &Arc<Self>,
        tenant: &str,
        payment_id: &str,
    ) -> Result<ReceiverStream<Result<Payment, AppError>>, AppError> {
        // Subscribe before reading, so that no change between the read and the subscription is
        // missed.
        let mut changes = self.store.subscribe_changes();
        // Events before the payment: a change landing between the two reads shows in the payment
        // and is sent once more later, never lost.
        let mut seen_event = self
            .store
            .status_events_after(payment_id, 0)
            .await?
            .last()
            .map_or(0, |event| event.payment_event_id);
        let first = self.load(Some(tenant), payment_id).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let payments = Arc::clone(self);
        let tenant = tenant.to_owned();
        tokio::spawn(async move {
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() {
                return;
            }
            // Set when the payment was read ahead of its events: read again without waiting.
            let mut behind = false;
            while !last.status.is_terminal() {
                if !std::mem::take(&mut behind) {
                    tokio::select! {
                        change = changes.recv() => match change {
                            Ok(id) if id != last.id => continue,
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => return,
                        },
                        () = tokio::time::sleep(REREAD_EVERY) => {}
                        () = sender.closed() => return,
                    }
                }
                let read = async {
                    let events = payments
                        .store
                        .status_events_after(&last.id, seen_event)
                        .await?;
                    let current = payments.load(Some(&tenant), &last.id).await?;
                    Ok::<_, AppError>((events, current))
                };
                let (events, current) = match read.await {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                let Some(newest) = events.last() else {
                    continue;
                };
                let as_it_was = |event: &crate::app::ports::StatusEvent| {
                    let mut then = current.clone();
                    then.status = event.to;
                    then.updated_at = event.created_at;
                    then
                };
                // Each transition but the newest as it was; the newest as the payment is now.
                let passed = events.len() - 1;
                for event in &events[..passed] {
                    if sender.send(Ok(as_it_was(event))).await.is_err() {
                        return;
                    }
                }
                seen_event = newest.payment_event_id;
                if current.status == newest.to {
                    last = current;
                } else {
                    // Another change committed between the two reads: the newest transition
                    // read is sent as it was, and what came after it is read at once (the
                    // payment read now is not sent for it: its own transition would be lost).
                    last = as_it_was(newest);
                    behind = true;
                }
                if sender.send(Ok(last.clone())).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }
}
