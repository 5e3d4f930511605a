//! Disputes: a payment's `dispute` follows Stripe's `charge.dispute.*` events (applied in the
//! webhook's transaction, see `webhook.rs`), and the reconciler re-reads the open disputes of
//! succeeded payments, so that a lost webhook never hides a lost dispute. The payment's status
//! never changes for a dispute. Also here: the gauge of authorizations about to lapse.

use std::time::Duration;

use super::ports::{DisputeUpdate, ProviderDispute};
use super::reconcile::millis;
use super::{AppError, Payments, now_millis};
use crate::domain::{DisputeVerdict, EventSource, Payment, observe_dispute};

/// The gauge counts authorizations lapsing within this long.
const EXPIRING_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// What one dispute sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisputeSweepReport {
    /// Payments with an open dispute read at Stripe.
    pub checked: usize,
    /// Disputes that changed.
    pub changed: usize,
    /// Payments that could not be checked; retried next time.
    pub failed: usize,
}

impl Payments {
    /// Re-reads the open disputes of at most `batch` succeeded payments not read for `after`,
    /// and refreshes the authorizations-expiring gauge.
    #[tracing::instrument(skip(self))]
    pub async fn reconcile_disputes_once(
        &self,
        after: Duration,
        batch: u32,
    ) -> Result<DisputeSweepReport, AppError> {
        let now = now_millis();
        let expiring = self
            .store
            .count_authorizations_expiring(now.saturating_add(millis(EXPIRING_WITHIN)))
            .await?;
        crate::metrics::METRICS
            .authorizations_expiring
            .set(i64::try_from(expiring).unwrap_or(i64::MAX));
        let claimed = self
            .store
            .claim_open_disputes(now, now.saturating_sub(millis(after)), batch)
            .await?;
        let mut report = DisputeSweepReport::default();
        for payment in claimed {
            report.checked += 1;
            let id = payment.id.clone();
            match self.sync_dispute(payment, EventSource::Reconcile).await {
                Ok(true) => report.changed += 1,
                Ok(false) => {}
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(payment_id = %id, %error, "reading the dispute failed; retried next sweep");
                }
            }
        }
        Ok(report)
    }

    /// Reads the disputes of the payment's intent at Stripe and records what changed of the one
    /// recorded (or the newest, when none is). True when the dispute changed.
    pub(crate) async fn sync_dispute(
        &self,
        payment: Payment,
        source: EventSource,
    ) -> Result<bool, AppError> {
        let Some(intent_id) = payment.stripe_payment_intent_id.clone() else {
            return Ok(false);
        };
        let observed = self.provider.list_disputes(&intent_id).await?;
        let recorded_id = payment.dispute.as_ref().map(|d| d.id.as_str());
        let Some(observed) = observed
            .iter()
            .find(|d| Some(d.dispute.id.as_str()) == recorded_id)
            .or(observed.first())
        else {
            return Ok(false);
        };
        // Listed by the payment's intent: a dispute that does not name one is of its charge.
        let named = observed
            .payment_intent
            .as_deref()
            .or(Some(intent_id.as_str()));
        if !dispute_matches(&payment, named, observed) {
            tracing::error!(payment_id = %payment.id, dispute_id = %observed.dispute.id, "the dispute at Stripe does not match the payment; nothing recorded");
            return Ok(false);
        }
        if observe_dispute(
            payment.dispute.as_ref(),
            payment.dispute_last_event_created,
            &observed.dispute,
            None,
        ) != DisputeVerdict::Apply
        {
            return Ok(false);
        }
        let changed = self
            .store
            .apply_dispute(
                DisputeUpdate {
                    payment_id: &payment.id,
                    expected: payment.dispute.as_ref(),
                    dispute: &observed.dispute,
                },
                source,
                now_millis(),
            )
            .await?;
        if changed {
            tracing::info!(payment_id = %payment.id, dispute_id = %observed.dispute.id, status = %observed.dispute.status, "dispute changed");
        }
        Ok(changed)
    }
}

/// A dispute (of `intent_id`'s charge) is the payment's when that is its intent and the
/// currency is its currency.
pub(crate) fn dispute_matches(
    payment: &Payment,
    intent_id: Option<&str>,
    observed: &ProviderDispute,
) -> bool {
    intent_id.is_some()
        && intent_id == payment.stripe_payment_intent_id.as_deref()
        && observed.currency.eq_ignore_ascii_case(&payment.currency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;
    use crate::domain::{Dispute, DisputeStatus, PaymentStatus};

    fn dispute(status: DisputeStatus) -> Dispute {
        Dispute {
            id: "dp_1".to_owned(),
            status,
            reason: "fraudulent".to_owned(),
            amount: 4200,
            evidence_due_by: None,
            is_charge_refundable: false,
        }
    }

    #[tokio::test]
    async fn the_sweep_finds_an_open_dispute_lost_at_stripe_and_leaves_a_closed_one() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let mut payment = harness
            .refreshed_after(&created, |intent| intent.status = PaymentStatus::Succeeded)
            .await;
        let intent_id = payment.stripe_payment_intent_id.clone().expect("intent");
        payment.dispute = Some(dispute(DisputeStatus::NeedsResponse));
        harness.store.put(payment.clone());
        harness.provider.put_dispute(ProviderDispute {
            payment_intent: Some(intent_id),
            charge: None,
            currency: "usd".to_owned(),
            dispute: dispute(DisputeStatus::Lost),
        });

        let report = harness
            .payments
            .reconcile_disputes_once(Duration::ZERO, 10)
            .await
            .expect("swept");
        assert_eq!(
            report,
            DisputeSweepReport {
                checked: 1,
                changed: 1,
                failed: 0
            }
        );
        let stored = harness.store.payments().pop().expect("payment");
        assert_eq!(stored.dispute, Some(dispute(DisputeStatus::Lost)));
        assert_eq!(stored.status, PaymentStatus::Succeeded);
        let again = harness
            .payments
            .reconcile_disputes_once(Duration::ZERO, 10)
            .await
            .expect("swept");
        assert_eq!(
            again,
            DisputeSweepReport::default(),
            "closed: not read again"
        );
    }
}
