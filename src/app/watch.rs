//! WatchPayment: the current state, then every change, ending after a terminal state.

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
        let first = self.load(Some(tenant), payment_id).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let payments = Arc::clone(self);
        let tenant = tenant.to_owned();
        tokio::spawn(async move {
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !last.status.is_terminal() {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(id) if id != last.id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    () = tokio::time::sleep(REREAD_EVERY) => {}
                    () = sender.closed() => return,
                }
                let fresh = match payments.load(Some(&tenant), &last.id).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                if fresh.status != last.status
                    || fresh.updated_at != last.updated_at
                    || fresh.last_payment_error != last.last_payment_error
                {
                    last = fresh;
                    if sender.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }
}
