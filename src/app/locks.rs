//! One async lock per payment id, so that a process never sends two Stripe requests for the same
//! payment at once (Stripe answers 409 to concurrent requests with one idempotency key, and one
//! call is cheaper than two).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub(crate) struct PaymentLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl PaymentLocks {
    /// Waits for the lock of `payment_id`; released when the guard drops.
    pub(crate) async fn lock(&self, payment_id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if locks.len() > 1024 {
                // Forget locks nobody holds or waits for.
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            Arc::clone(locks.entry(payment_id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }
}
