//! A refund: money of a succeeded payment given back, in full or in part, through one Stripe
//! Refund; and how an observation from Stripe changes it.

use std::collections::BTreeMap;
use std::fmt;

/// A refund's status: Stripe's Refund statuses plus `Creating`, the state of a row written
/// before Stripe has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    /// Row committed, its amount reserved; Stripe has not answered yet.
    Creating,
    /// Stripe accepted it; the money is on its way back.
    Pending,
    /// The customer must act before the money can go back (some payment methods).
    RequiresAction,
    /// The money went back. Not final: a refund can still fail later (an expired card, say).
    Succeeded,
    /// Final: the money did not go back; the amount is refundable again.
    Failed,
    /// Final: the refund was cancelled; the amount is refundable again.
    Canceled,
}

/// Where a refund's amount counts in its payment's amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundBucket {
    /// `amount_refund_pending`: not final yet, and reserved against what remains refundable.
    Pending,
    /// `amount_refunded`.
    Refunded,
    /// Counted nowhere: failed or cancelled.
    Released,
}

impl RefundStatus {
    /// Every status, in a stable order.
    pub const ALL: [RefundStatus; 6] = [
        RefundStatus::Creating,
        RefundStatus::Pending,
        RefundStatus::RequiresAction,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        RefundStatus::Canceled,
    ];

    /// The name stored in the database, used as a metric label and shown in logs (Stripe's
    /// spelling, plus `creating`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Creating => "creating",
            RefundStatus::Pending => "pending",
            RefundStatus::RequiresAction => "requires_action",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Canceled => "canceled",
        }
    }

    /// Final statuses never change again.
    pub fn is_final(self) -> bool {
        matches!(self, RefundStatus::Failed | RefundStatus::Canceled)
    }

    /// Where the refund's amount counts in its payment's amounts.
    pub fn bucket(self) -> RefundBucket {
        match self {
            RefundStatus::Creating | RefundStatus::Pending | RefundStatus::RequiresAction => {
                RefundBucket::Pending
            }
            RefundStatus::Succeeded => RefundBucket::Refunded,
            RefundStatus::Failed | RefundStatus::Canceled => RefundBucket::Released,
        }
    }

    /// How far along a refund is: a refund never moves to a status of lower progress.
    fn progress(self) -> u8 {
        match self {
            RefundStatus::Creating => 0,
            RefundStatus::Pending | RefundStatus::RequiresAction => 1,
            RefundStatus::Succeeded => 2,
            RefundStatus::Failed | RefundStatus::Canceled => 3,
        }
    }
}

impl std::str::FromStr for RefundStatus {
    type Err = ();

    /// Parses the stored name (also Stripe's `status`).
    fn from_str(s: &str) -> Result<RefundStatus, ()> {
        RefundStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the money goes back, as Stripe records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundReason {
    RequestedByCustomer,
    Duplicate,
    Fraudulent,
}

impl RefundReason {
    pub const ALL: [RefundReason; 3] = [
        RefundReason::RequestedByCustomer,
        RefundReason::Duplicate,
        RefundReason::Fraudulent,
    ];

    /// Stripe's spelling, also stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::RequestedByCustomer => "requested_by_customer",
            RefundReason::Duplicate => "duplicate",
            RefundReason::Fraudulent => "fraudulent",
        }
    }
}

impl std::str::FromStr for RefundReason {
    type Err = ();

    fn from_str(s: &str) -> Result<RefundReason, ()> {
        RefundReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or(())
    }
}

/// Who made the refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundSource {
    /// Through paybridge's RefundPayment.
    Api,
    /// At Stripe directly (the Dashboard, another tool), found by webhook, refresh or reconciler.
    External,
}

impl RefundSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundSource::Api => "api",
            RefundSource::External => "external",
        }
    }
}

impl std::str::FromStr for RefundSource {
    type Err = ();

    fn from_str(s: &str) -> Result<RefundSource, ()> {
        [RefundSource::Api, RefundSource::External]
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or(())
    }
}

/// The metadata key that ties a Stripe Refund to its paybridge refund.
pub const REFUND_ID_METADATA_KEY: &str = "paybridge_refund_id";

/// One refund of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// `ref_…`
    pub id: String,
    /// The refunded payment, `pay_…`.
    pub payment_id: String,
    pub tenant: String,
    /// Minor units of `currency`, > 0.
    pub amount: i64,
    /// The payment's currency, lowercase ISO 4217.
    pub currency: String,
    pub status: RefundStatus,
    pub reason: Option<RefundReason>,
    /// `re_…`; `None` while `Creating`.
    pub stripe_refund_id: Option<String>,
    /// Stripe's `failure_reason` once `Failed` (e.g. `expired_or_canceled_card`).
    pub failure_reason: Option<String>,
    pub source: RefundSource,
    /// The caller's metadata (without the keys paybridge adds); empty for external refunds.
    pub metadata: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Stripe's `created` (unix seconds) of the newest webhook event applied.
    pub last_event_created: Option<i64>,
}

/// What Stripe reports about a refund now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundObservation {
    pub status: RefundStatus,
    pub failure_reason: Option<String>,
}

/// A refund change to record: the new status (and failure reason) with the status it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundChange {
    pub from: RefundStatus,
    pub to: RefundStatus,
    pub failure_reason: Option<String>,
}

impl RefundChange {
    /// What the change adds to its payment's `amount_refunded` and `amount_refund_pending`, for a
    /// refund of `amount`.
    pub fn amount_deltas(&self, amount: i64) -> (i64, i64) {
        let weight = |bucket: RefundBucket, which: RefundBucket| i64::from(bucket == which);
        let refunded = weight(self.to.bucket(), RefundBucket::Refunded)
            - weight(self.from.bucket(), RefundBucket::Refunded);
        let pending = weight(self.to.bucket(), RefundBucket::Pending)
            - weight(self.from.bucket(), RefundBucket::Pending);
        (refunded * amount, pending * amount)
    }
}

/// What an observation does to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundVerdict {
    /// Record this change.
    Apply(RefundChange),
    /// Nothing new.
    NoChange,
    /// Older than what was applied (a late webhook): ignore it.
    Stale,
}

impl Refund {
    /// The change an observation makes. Refunds only move forward (creating → pending or
    /// requires_action → succeeded → failed; failed and canceled are final), except between
    /// pending and requires_action; an event (`event_created`, unix seconds) older than the
    /// newest applied one is stale. A read of the refund at Stripe (`event_created` `None`) is
    /// its current state and is never stale, but still never moves it backwards.
    pub fn observe(
        &self,
        observation: &RefundObservation,
        event_created: Option<i64>,
    ) -> RefundVerdict {
        if let (Some(created), Some(last)) = (event_created, self.last_event_created)
            && created < last
        {
            return RefundVerdict::Stale;
        }
        if self.status.is_final() || observation.status == RefundStatus::Creating {
            return RefundVerdict::NoChange;
        }
        if observation.status == self.status {
            // A failure reason that arrives after the status is still news.
            if observation.failure_reason.is_some()
                && observation.failure_reason != self.failure_reason
            {
                return RefundVerdict::Apply(self.change_to(observation));
            }
            return RefundVerdict::NoChange;
        }
        if observation.status.progress() < self.status.progress() {
            return match event_created {
                Some(_) => RefundVerdict::Stale,
                None => RefundVerdict::NoChange,
            };
        }
        RefundVerdict::Apply(self.change_to(observation))
    }

    fn change_to(&self, observation: &RefundObservation) -> RefundChange {
        RefundChange {
            from: self.status,
            to: observation.status,
            failure_reason: observation
                .failure_reason
                .clone()
                .or_else(|| self.failure_reason.clone()),
        }
    }
}

/// A payment's refund amounts, and what remains refundable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefundAmounts {
    /// What Stripe collected.
    pub received: i64,
    /// Refunds that succeeded.
    pub refunded: i64,
    /// Refunds not final yet (creating, pending, requires_action).
    pub pending: i64,
}

impl RefundAmounts {
    /// `received − refunded − pending`, never below zero.
    pub fn refundable(&self) -> i64 {
        (self.received - self.refunded - self.pending).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(status: RefundStatus, last_event_created: Option<i64>) -> Refund {
        Refund {
            id: "ref_x".to_owned(),
            payment_id: "pay_x".to_owned(),
            tenant: "acme".to_owned(),
            amount: 300,
            currency: "usd".to_owned(),
            status,
            reason: None,
            stripe_refund_id: Some("re_x".to_owned()),
            failure_reason: None,
            source: RefundSource::Api,
            metadata: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
            last_event_created,
        }
    }

    fn seen(status: RefundStatus) -> RefundObservation {
        RefundObservation {
            status,
            failure_reason: None,
        }
    }

    #[test]
    fn refunds_move_forward_and_a_success_can_still_fail() {
        let pending = refund(RefundStatus::Pending, None);
        assert!(matches!(
            pending.observe(&seen(RefundStatus::Succeeded), Some(10)),
            RefundVerdict::Apply(RefundChange {
                to: RefundStatus::Succeeded,
                ..
            })
        ));
        let succeeded = refund(RefundStatus::Succeeded, Some(10));
        let failed = RefundObservation {
            status: RefundStatus::Failed,
            failure_reason: Some("expired_or_canceled_card".to_owned()),
        };
        assert_eq!(
            succeeded.observe(&failed, Some(20)),
            RefundVerdict::Apply(RefundChange {
                from: RefundStatus::Succeeded,
                to: RefundStatus::Failed,
                failure_reason: Some("expired_or_canceled_card".to_owned()),
            })
        );
        assert_eq!(
            succeeded.observe(&seen(RefundStatus::Pending), Some(10)),
            RefundVerdict::Stale
        );
        assert_eq!(
            succeeded.observe(&seen(RefundStatus::Pending), None),
            RefundVerdict::NoChange
        );
    }

    #[test]
    fn final_refunds_never_change_and_older_events_are_stale() {
        let failed = refund(RefundStatus::Failed, Some(20));
        assert_eq!(
            failed.observe(&seen(RefundStatus::Succeeded), None),
            RefundVerdict::NoChange
        );
        assert_eq!(
            failed.observe(&seen(RefundStatus::Succeeded), Some(19)),
            RefundVerdict::Stale
        );
        let creating = refund(RefundStatus::Creating, None);
        assert_eq!(
            creating.observe(&seen(RefundStatus::Creating), None),
            RefundVerdict::NoChange
        );
    }

    #[test]
    fn amount_deltas_move_money_between_the_payments_buckets() {
        let change = |from, to| RefundChange {
            from,
            to,
            failure_reason: None,
        };
        use RefundStatus::*;
        assert_eq!(change(Creating, Pending).amount_deltas(300), (0, 0));
        assert_eq!(change(Creating, Succeeded).amount_deltas(300), (300, -300));
        assert_eq!(change(Pending, Failed).amount_deltas(300), (0, -300));
        assert_eq!(change(Succeeded, Failed).amount_deltas(300), (-300, 0));
        assert_eq!(change(Creating, Canceled).amount_deltas(300), (0, -300));
    }

    #[test]
    fn refundable_is_what_neither_succeeded_nor_pending_refunds_hold() {
        let amounts = RefundAmounts {
            received: 1000,
            refunded: 300,
            pending: 300,
        };
        assert_eq!(amounts.refundable(), 400);
        let over = RefundAmounts {
            received: 100,
            refunded: 300,
            pending: 0,
        };
        assert_eq!(over.refundable(), 0);
    }
}
