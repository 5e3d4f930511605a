//! The reconciler: payments whose browser never came back and whose webhook was lost still end
//! right. Each sweep claims open payments that have not changed for a while (and `Creating` rows a
//! crash left behind), reads them at Stripe (finishing the creating ones with the same key), and
//! records what changed.

use std::time::Duration;

use super::{AppError, Payments, now_millis};
use crate::domain::EventSource;

/// An unchanged payment is looked at again after as long as it has already been unchanged
/// (1 min, 2 min, 4 min…), capped here: abandoned payments cost Stripe ever fewer calls.
const MAX_RECHECK_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Payments claimed and looked at.
    pub checked: usize,
    /// Payments whose status changed.
    pub changed: usize,
    /// Payments that could not be checked (Stripe or the database failed); retried next time.
    pub failed: usize,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Payments {
    /// One sweep over at most `batch` payments unchanged for longer than `after`. Claimed
    /// payments are held for `lease` before another replica may take them (a replica that dies
    /// mid-sweep loses its claims this way).
    #[tracing::instrument(skip(self))]
    pub async fn reconcile_once(
        &self,
        after: Duration,
        batch: u32,
        lease: Duration,
    ) -> Result<SweepReport, AppError> {
        let now = now_millis();
        let claimed = self
            .store
            .claim_for_reconcile(
                now,
                now.saturating_sub(millis(after)),
                now.saturating_add(millis(lease)),
                batch,
            )
            .await?;
        let mut report = SweepReport::default();
        for payment in claimed {
            report.checked += 1;
            let before = (payment.status, payment.updated_at);
            let id = payment.id.clone();
            match self
                .sync_with_provider(payment, EventSource::Reconcile)
                .await
            {
                Ok(synced) => {
                    if (synced.status, synced.updated_at) != before {
                        report.changed += 1;
                        tracing::info!(payment_id = %id, status = %synced.status, "reconciled");
                    }
                    // Still open: looked at again on the usual schedule, not only when the claim's
                    // lease runs out (a payment changed just now is checked again `after` from now).
                    if !synced.status.is_terminal() {
                        let unchanged_for =
                            now.saturating_sub(synced.updated_at).max(millis(after));
                        let recheck_at =
                            now.saturating_add(unchanged_for.min(millis(MAX_RECHECK_AFTER)));
                        self.store.defer_reconcile(&id, recheck_at).await?;
                    }
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(payment_id = %id, %error, "reconciling failed; retried next sweep");
                }
            }
        }
        Ok(report)
    }
}
