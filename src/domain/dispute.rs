//! A dispute of a payment's charge, and how Stripe's events change it: they arrive late, twice
//! and out of order, and a closed dispute never opens again.

use std::fmt;

/// A dispute's status, as Stripe reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisputeStatus {
    WarningNeedsResponse,
    WarningUnderReview,
    WarningClosed,
    NeedsResponse,
    UnderReview,
    Won,
    Lost,
    Prevented,
}

impl DisputeStatus {
    pub const ALL: [DisputeStatus; 8] = [
        DisputeStatus::WarningNeedsResponse,
        DisputeStatus::WarningUnderReview,
        DisputeStatus::WarningClosed,
        DisputeStatus::NeedsResponse,
        DisputeStatus::UnderReview,
        DisputeStatus::Won,
        DisputeStatus::Lost,
        DisputeStatus::Prevented,
    ];

    /// Stripe's spelling, stored and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::WarningNeedsResponse => "warning_needs_response",
            DisputeStatus::WarningUnderReview => "warning_under_review",
            DisputeStatus::WarningClosed => "warning_closed",
            DisputeStatus::NeedsResponse => "needs_response",
            DisputeStatus::UnderReview => "under_review",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
            DisputeStatus::Prevented => "prevented",
        }
    }

    /// Closed: never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DisputeStatus::WarningClosed
                | DisputeStatus::Won
                | DisputeStatus::Lost
                | DisputeStatus::Prevented
        )
    }

    /// For ordering events of the same second: a response needed, then under review, then
    /// closed.
    fn progress(self) -> u8 {
        match self {
            DisputeStatus::WarningNeedsResponse | DisputeStatus::NeedsResponse => 0,
            DisputeStatus::WarningUnderReview | DisputeStatus::UnderReview => 1,
            DisputeStatus::WarningClosed
            | DisputeStatus::Won
            | DisputeStatus::Lost
            | DisputeStatus::Prevented => 2,
        }
    }
}

impl std::str::FromStr for DisputeStatus {
    type Err = ();

    fn from_str(s: &str) -> Result<DisputeStatus, ()> {
        DisputeStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for DisputeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dispute of a payment's charge, as last observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    /// Stripe's `dp_…`.
    pub id: String,
    pub status: DisputeStatus,
    /// Stripe's reason, e.g. `fraudulent`.
    pub reason: String,
    /// Minor units of the payment's currency.
    pub amount: i64,
    /// Unix milliseconds; `None` when the bank allows no response.
    pub evidence_due_by: Option<i64>,
    /// Whether the charge can still be refunded.
    pub is_charge_refundable: bool,
}

impl Dispute {
    /// A refund must not be made while the dispute is open and Stripe says the charge cannot be
    /// refunded, nor after the dispute was lost (the money is gone already).
    pub fn blocks_refunds(&self) -> bool {
        self.status == DisputeStatus::Lost
            || (!self.status.is_final() && !self.is_charge_refundable)
    }
}

/// What an observation of a dispute does to the one recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisputeVerdict {
    /// Record it.
    Apply,
    /// It says nothing new.
    NoChange,
    /// Older than what is recorded (a late event, or anything after the dispute closed that
    /// would reopen it): ignore it.
    Stale,
}

/// What `observed` (seen in an event created at `event_created`, unix seconds, or read at
/// Stripe when `None`) does to `recorded`, whose newest applied event was `last_event_created`.
pub fn observe_dispute(
    recorded: Option<&Dispute>,
    last_event_created: Option<i64>,
    observed: &Dispute,
    event_created: Option<i64>,
) -> DisputeVerdict {
    let Some(recorded) = recorded else {
        return DisputeVerdict::Apply;
    };
    if recorded == observed {
        return DisputeVerdict::NoChange;
    }
    if recorded.id == observed.id {
        // A closed dispute stays closed, whatever arrives after.
        if recorded.status.is_final() && !observed.status.is_final() {
            return DisputeVerdict::Stale;
        }
        if recorded.status.is_final() && recorded.status != observed.status {
            return DisputeVerdict::Stale;
        }
    }
    if let (Some(last), Some(created)) = (last_event_created, event_created)
        && (created < last
            || (created == last
                && recorded.id == observed.id
                && observed.status.progress() < recorded.status.progress()))
    {
        return DisputeVerdict::Stale;
    }
    DisputeVerdict::Apply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispute(status: DisputeStatus) -> Dispute {
        Dispute {
            id: "dp_1".into(),
            status,
            reason: "fraudulent".into(),
            amount: 600,
            evidence_due_by: Some(1_000),
            is_charge_refundable: false,
        }
    }

    #[test]
    fn a_dispute_moves_forward_and_a_closed_one_never_reopens() {
        let open = dispute(DisputeStatus::NeedsResponse);
        let review = dispute(DisputeStatus::UnderReview);
        let lost = dispute(DisputeStatus::Lost);
        assert_eq!(
            observe_dispute(None, None, &open, Some(10)),
            DisputeVerdict::Apply
        );
        assert_eq!(
            observe_dispute(Some(&open), Some(10), &review, Some(11)),
            DisputeVerdict::Apply
        );
        assert_eq!(
            observe_dispute(Some(&review), Some(11), &open, Some(10)),
            DisputeVerdict::Stale,
            "older"
        );
        assert_eq!(
            observe_dispute(Some(&review), Some(11), &open, Some(11)),
            DisputeVerdict::Stale,
            "same second, less progress"
        );
        assert_eq!(
            observe_dispute(Some(&lost), Some(12), &review, Some(13)),
            DisputeVerdict::Stale,
            "after closed"
        );
        assert_eq!(
            observe_dispute(Some(&lost), Some(12), &lost, Some(13)),
            DisputeVerdict::NoChange
        );
        assert_eq!(
            observe_dispute(Some(&lost), Some(12), &review, None),
            DisputeVerdict::Stale,
            "a read at Stripe cannot reopen it either"
        );
    }

    #[test]
    fn refunds_are_blocked_while_unrefundable_and_after_a_loss() {
        assert!(dispute(DisputeStatus::NeedsResponse).blocks_refunds());
        let mut refundable = dispute(DisputeStatus::WarningNeedsResponse);
        refundable.is_charge_refundable = true;
        assert!(!refundable.blocks_refunds());
        assert!(dispute(DisputeStatus::Lost).blocks_refunds());
        assert!(!dispute(DisputeStatus::Won).blocks_refunds());
    }
}
