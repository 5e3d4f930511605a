//! The reconciler's refund sweep: refunds a crash or a lost answer left `Creating` are finished
//! with their own key, refunds not final at Stripe are read again, and refunds made at Stripe
//! directly (the Dashboard, another tool) whose webhook was lost are found in Stripe's list of
//! recent refunds.

use std::sync::Mutex;
use std::time::Duration;

use super::reconcile::{Claimed, millis, recheck_at};
use super::{AppError, Payments, now_millis};
use crate::domain::{EventSource, RefundStatus};

/// How far back the first scan for refunds made at Stripe directly looks (later scans start
/// where the previous one started, less [`SCAN_OVERLAP`]).
const FIRST_SCAN_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// Stripe's `created` is in whole seconds and the clocks of two machines differ: scans overlap.
const SCAN_OVERLAP: Duration = Duration::from_secs(300);
/// Most recent refunds read per sweep (one Stripe request).
const SCAN_LIMIT: u32 = 100;

/// What one refund sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefundSweepReport {
    /// Refunds claimed and looked at.
    pub checked: usize,
    /// Refunds whose status changed.
    pub changed: usize,
    /// Refunds made at Stripe directly, recorded now.
    pub external: usize,
    /// Refunds (or the scan) that could not be checked; retried next time.
    pub failed: usize,
}

/// Scans of Stripe's recent refunds start at most this often on one replica, however often it
/// sweeps (a sweep every few seconds keeps claims moving; a scan costs a Stripe request).
const SCAN_EVERY: Duration = Duration::from_secs(30);

/// Where the next scan of Stripe's recent refunds starts (unix seconds), and when the last one
/// ran (unix ms).
#[derive(Debug, Default)]
pub(crate) struct RefundScan {
    next_since: Mutex<Option<i64>>,
    last_at: Mutex<Option<i64>>,
}

fn count(outcome: &'static str, how_many: usize) {
    if how_many > 0 {
        crate::metrics::METRICS
            .reconciled_refunds
            .get_or_create(&crate::metrics::ReconciledLabels { outcome })
            .inc_by(how_many as u64);
    }
}

impl Payments {
    /// One sweep over at most `batch` refunds not final and unchanged for longer than `after`,
    /// then one scan of Stripe's recent refunds.
    #[tracing::instrument(skip(self))]
    pub async fn reconcile_refunds_once(
        &self,
        after: Duration,
        batch: u32,
        lease: Duration,
    ) -> Result<RefundSweepReport, AppError> {
        let now = now_millis();
        let held = now.saturating_add(millis(lease));
        let claimed = self
            .store
            .claim_refunds_for_reconcile(now, now.saturating_sub(millis(after)), held, batch)
            .await?;
        let ids: Vec<String> = claimed.iter().map(|refund| refund.id.clone()).collect();
        let mut report = self
            .renewing_claims(
                Claimed::Refunds,
                &ids,
                held,
                lease,
                self.reconcile_claimed_refunds(claimed, now, after),
            )
            .await?;
        match self.scan_recent_refunds(now).await {
            Ok(found) => report.external += found,
            Err(error) => {
                report.failed += 1;
                tracing::warn!(%error, "scanning Stripe's recent refunds failed; retried next sweep");
            }
        }
        count("checked", report.checked);
        count("changed", report.changed);
        count("external", report.external);
        count("failed", report.failed);
        Ok(report)
    }

    /// Reads each claimed refund at Stripe (finishing `Creating` ones) and records what changed.
    async fn reconcile_claimed_refunds(
        &self,
        claimed: Vec<crate::domain::Refund>,
        now: i64,
        after: Duration,
    ) -> Result<RefundSweepReport, AppError> {
        let mut report = RefundSweepReport::default();
        for refund in claimed {
            report.checked += 1;
            let before = (refund.status, refund.updated_at);
            let id = refund.id.clone();
            match self.sync_refund(refund, EventSource::Reconcile).await {
                Ok(synced) => {
                    if (synced.status, synced.updated_at) != before {
                        report.changed += 1;
                        tracing::info!(refund_id = %id, status = %synced.status, "refund reconciled");
                    }
                    if matches!(
                        synced.status,
                        RefundStatus::Creating
                            | RefundStatus::Pending
                            | RefundStatus::RequiresAction
                    ) {
                        let until = recheck_at(now, synced.updated_at, after);
                        self.store.defer_refund_reconcile(&id, until).await?;
                    }
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(refund_id = %id, %error, "reconciling the refund failed; retried later");
                    let until = now_millis().saturating_add(millis(after));
                    if let Err(error) = self.store.defer_refund_reconcile(&id, until).await {
                        tracing::warn!(refund_id = %id, %error, "deferring failed; retried once the lease runs out");
                    }
                }
            }
        }
        Ok(report)
    }

    /// Reads Stripe's refunds created since the last scan and records those of paybridge's
    /// payments it did not know. Returns how many external refunds it recorded.
    async fn scan_recent_refunds(&self, now: i64) -> Result<usize, AppError> {
        {
            let mut last_at = self
                .refund_scan
                .last_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last_at.is_some_and(|at| now.saturating_sub(at) < millis(SCAN_EVERY)) {
                return Ok(0);
            }
            *last_at = Some(now);
        }
        let now_seconds = now / 1000;
        let since = {
            let next = self
                .refund_scan
                .next_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            next.unwrap_or(now_seconds - FIRST_SCAN_LOOKBACK.as_secs() as i64)
        };
        let recent = self.provider.list_recent_refunds(since, SCAN_LIMIT).await?;
        let mut external = 0;
        for observed in &recent {
            if self.find_known_refund(observed).await?.is_some() {
                continue;
            }
            let Some(intent_id) = observed.payment_intent.as_deref() else {
                continue;
            };
            let Some(payment) = self.store.find_payment_by_intent(None, intent_id).await? else {
                continue;
            };
            self.record_observed_refund(&payment, observed, EventSource::Reconcile)
                .await?;
            external += 1;
        }
        *self
            .refund_scan
            .next_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(now_seconds - SCAN_OVERLAP.as_secs() as i64);
        Ok(external)
    }
}
