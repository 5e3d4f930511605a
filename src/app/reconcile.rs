//! The reconciler: payments whose browser never came back and whose webhook was lost still end
//! right. Each sweep claims open payments that have not changed for a while (and `Creating` rows a
//! crash left behind), reads them at Stripe (finishing the creating ones with the same key), and
//! records what changed.

use std::future::Future;
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

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// When to look again at something still open, last changed at `updated_at`: after as long as it
/// has been unchanged (at least `after`), at most [`MAX_RECHECK_AFTER`] from `now`.
pub(super) fn recheck_at(now: i64, updated_at: i64, after: Duration) -> i64 {
    let unchanged_for = now.saturating_sub(updated_at).max(millis(after));
    now.saturating_add(unchanged_for.min(millis(MAX_RECHECK_AFTER)))
}

/// Whose claims a sweep holds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Claimed {
    Payments,
    Refunds,
}

impl Payments {
    /// Runs `work`, a sweep's reading of the rows `ids` it claimed until `held`, and while it
    /// runs renews their lease every third of `lease`: a sweep that takes longer than its lease
    /// keeps what it claimed, and a replica killed mid-sweep lets it go within `lease`. A row
    /// done (deferred) is no longer leased until `held`, so it is left alone.
    pub(super) async fn renewing_claims<T>(
        &self,
        claimed: Claimed,
        ids: &[String],
        mut held: i64,
        lease: Duration,
        work: impl Future<Output = T>,
    ) -> T {
        let every = (lease / 3).max(Duration::from_millis(50));
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(every) => {
                    let until = now_millis().saturating_add(millis(lease));
                    let renewed = match claimed {
                        Claimed::Payments => {
                            self.store.renew_reconcile_claims(ids, held, until).await
                        }
                        Claimed::Refunds => {
                            self.store.renew_refund_reconcile_claims(ids, held, until).await
                        }
                    };
                    match renewed {
                        Ok(_) => held = until,
                        Err(error) => {
                            tracing::warn!(%error, ?claimed, "renewing the reconciler's claims failed");
                        }
                    }
                }
            }
        }
    }

    /// One sweep over at most `batch` payments unchanged for longer than `after`. Claimed
    /// payments are leased for `lease`, renewed while the sweep works: another replica takes
    /// them only once this one is gone (killed mid-sweep) and the lease ran out. A payment
    /// Stripe could not answer for is looked at again `after` from now.
    #[tracing::instrument(skip(self))]
    pub async fn reconcile_once(
        &self,
        after: Duration,
        batch: u32,
        lease: Duration,
    ) -> Result<SweepReport, AppError> {
        let swept = self.sweep(after, batch, lease).await;
        count_sweep(&swept);
        swept
    }

    async fn sweep(
        &self,
        after: Duration,
        batch: u32,
        lease: Duration,
    ) -> Result<SweepReport, AppError> {
        let now = now_millis();
        let held = now.saturating_add(millis(lease));
        let claimed = self
            .store
            .claim_for_reconcile(now, now.saturating_sub(millis(after)), held, batch)
            .await?;
        self.report_transient(now).await;
        let ids: Vec<String> = claimed.iter().map(|payment| payment.id.clone()).collect();
        self.renewing_claims(
            Claimed::Payments,
            &ids,
            held,
            lease,
            self.reconcile_claimed(claimed, now, after),
        )
        .await
    }

    /// Reads each claimed payment at Stripe and records what changed.
    async fn reconcile_claimed(
        &self,
        claimed: Vec<crate::domain::Payment>,
        now: i64,
        after: Duration,
    ) -> Result<SweepReport, AppError> {
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
                    // A capture a crash or a lost answer left: finished with its own key.
                    let synced = match self.finish_recorded_capture(synced).await {
                        Ok(synced) => synced,
                        Err(error) => {
                            report.failed += 1;
                            tracing::warn!(payment_id = %id, %error, "finishing the capture failed; retried next sweep");
                            continue;
                        }
                    };
                    if (synced.status, synced.updated_at) != before {
                        report.changed += 1;
                        tracing::info!(payment_id = %id, status = %synced.status, "reconciled");
                    }
                    // Still open: looked at again on the usual schedule, not only when the claim's
                    // lease runs out (a payment changed just now is checked again `after` from now).
                    if !synced.status.is_terminal() {
                        let until = recheck_at(now, synced.updated_at, after);
                        self.store.defer_reconcile(&id, until).await?;
                    }
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(payment_id = %id, %error, "reconciling failed; retried later");
                    let until = now_millis().saturating_add(millis(after));
                    if let Err(error) = self.store.defer_reconcile(&id, until).await {
                        tracing::warn!(payment_id = %id, %error, "deferring failed; retried once the lease runs out");
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Counts a sweep by result (`ok`, `failed`: the claim itself failed) and its payments by
/// outcome (`checked`, `changed`, `failed`).
fn count_sweep(swept: &Result<SweepReport, AppError>) {
    use crate::metrics::{METRICS, ReconciledLabels, SweepLabels};
    let result = if swept.is_ok() { "ok" } else { "failed" };
    METRICS
        .reconciler_sweeps
        .get_or_create(&SweepLabels { result })
        .inc();
    if let Ok(report) = swept {
        for (outcome, how_many) in [
            ("checked", report.checked),
            ("changed", report.changed),
            ("failed", report.failed),
        ] {
            if how_many > 0 {
                METRICS
                    .reconciled_payments
                    .get_or_create(&ReconciledLabels { outcome })
                    .inc_by(how_many as u64);
            }
        }
    }
}

impl Payments {
    /// Sets the gauges of payments in a transient status (every replica's sweep measures the
    /// same table; the alerts take the max). A failed read leaves them as they were.
    async fn report_transient(&self, now: i64) {
        use crate::app::ports::TRANSIENT_STATUSES;
        use crate::metrics::{METRICS, StatusLabels};
        let transient = match self.store.transient_payments().await {
            Ok(transient) => transient,
            Err(error) => {
                tracing::warn!(%error, "counting payments in transient statuses failed");
                return;
            }
        };
        for status in TRANSIENT_STATUSES {
            let found = transient.iter().find(|t| t.status == status);
            let labels = StatusLabels {
                status: status.as_str(),
            };
            METRICS
                .transient_payments
                .get_or_create(&labels)
                .set(found.map_or(0, |t| i64::try_from(t.count).unwrap_or(i64::MAX)));
            METRICS
                .transient_oldest_age
                .get_or_create(&labels)
                .set(found.map_or(0, |t| now.saturating_sub(t.oldest_updated_at).max(0) / 1000));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;
    use crate::app::ports::ProviderError;
    use crate::domain::PaymentStatus;

    const AFTER: Duration = Duration::from_secs(60);
    const LEASE: Duration = Duration::from_secs(120);

    /// Makes every payment look unchanged for an hour.
    fn age_everything(harness: &Harness) {
        for mut payment in harness.store.payments() {
            payment.updated_at -= 3_600_000;
            harness.store.put(payment);
        }
    }

    #[tokio::test]
    async fn a_paid_payment_is_settled_and_a_creating_one_finished_with_its_own_key() {
        let harness = Harness::new();
        let paid = harness.create("k-1", "inv-1").await.payment;
        harness
            .provider
            .fail_with(Some(ProviderError::Unavailable("lost".to_owned())));
        let _ = harness
            .submit(crate::app::fakes::command("k-2", "inv-2", 4200))
            .await
            .expect_err("the answer is lost");
        harness.provider.fail_with(None);
        let intent_id = paid.stripe_payment_intent_id.clone().expect("intent");
        harness.provider.update_intent(&intent_id, |intent| {
            intent.status = PaymentStatus::Succeeded
        });
        age_everything(&harness);

        let report = harness
            .payments
            .reconcile_once(AFTER, 100, LEASE)
            .await
            .expect("swept");
        assert_eq!(
            report,
            SweepReport {
                checked: 2,
                changed: 2,
                failed: 0
            }
        );
        let payments = harness.store.payments();
        let settled = payments.iter().find(|p| p.id == paid.id).expect("paid");
        assert_eq!(settled.status, PaymentStatus::Succeeded);
        let finished = payments.iter().find(|p| p.id != paid.id).expect("finished");
        assert_eq!(finished.status, PaymentStatus::RequiresPaymentMethod);
        let creates_of_finished = harness
            .provider
            .calls()
            .iter()
            .filter(|call| {
                **call == format!("create_payment_intent paybridge-create-{}", finished.id)
            })
            .count();
        assert_eq!(
            creates_of_finished, 2,
            "the lost create, then the same key again"
        );

        // Claimed and deferred: the next sweep finds nothing to read.
        let again = harness
            .payments
            .reconcile_once(AFTER, 100, LEASE)
            .await
            .expect("swept");
        assert_eq!(again, SweepReport::default());
    }

    #[tokio::test]
    async fn a_payment_stripe_cannot_answer_for_is_counted_failed_and_claimed_again_after_its_lease()
     {
        let harness = Harness::new();
        harness.create("k-1", "inv-1").await;
        age_everything(&harness);
        harness
            .provider
            .fail_with(Some(ProviderError::Unavailable("down".to_owned())));
        let report = harness
            .payments
            .reconcile_once(AFTER, 100, LEASE)
            .await
            .expect("swept");
        assert_eq!((report.checked, report.failed), (1, 1));
        harness.provider.fail_with(None);
        let leased = harness
            .payments
            .reconcile_once(AFTER, 100, LEASE)
            .await
            .expect("swept");
        assert_eq!(
            leased,
            SweepReport::default(),
            "held by the first sweep's lease"
        );
        harness.store.expire_leases();
        let again = harness
            .payments
            .reconcile_once(AFTER, 100, LEASE)
            .await
            .expect("swept");
        assert_eq!(again.checked, 1, "claimed again once its lease lapsed");
    }
}
