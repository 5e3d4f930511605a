//! A payment as recorded, and how an observation from Stripe changes it.

use std::collections::BTreeMap;

use super::PaymentStatus;

/// Why the last payment attempt failed, as the provider reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastPaymentError {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// One payment: the collection of one invoice's money through one PaymentIntent.
#[derive(Clone, PartialEq, Eq)]
pub struct Payment {
    /// `pay_…`
    pub id: String,
    pub tenant: String,
    pub invoice_id: String,
    /// Minor units of `currency`.
    pub amount: i64,
    /// Lowercase ISO 4217.
    pub currency: String,
    pub status: PaymentStatus,
    /// `pi_…`; `None` while `Creating`.
    pub stripe_payment_intent_id: Option<String>,
    pub stripe_customer_id: Option<String>,
    /// The intent's client secret: handed to the tenant, compared on return, never logged.
    pub client_secret: Option<String>,
    pub description: Option<String>,
    /// The caller's metadata (without the keys paybridge adds).
    pub metadata: BTreeMap<String, String>,
    /// Where the browser goes after success or processing; fixed at create.
    pub success_url: String,
    /// Where the browser goes after failure or cancellation; fixed at create.
    pub failure_url: String,
    pub last_payment_error: Option<LastPaymentError>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Stripe's `created` (unix seconds) of the newest webhook event applied; older events that
    /// arrive late are not applied.
    pub last_event_created: Option<i64>,
    /// What Stripe collected (minor units): the amount once succeeded, 0 before.
    pub amount_received: i64,
    /// The sum of the payment's refunds that succeeded.
    pub amount_refunded: i64,
    /// The sum of the payment's refunds that are not final yet (creating, pending,
    /// requires_action): reserved, so that concurrent refunds never exceed what was received.
    pub amount_refund_pending: i64,
}

impl std::fmt::Debug for Payment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("invoice_id", &self.invoice_id)
            .field("amount", &self.amount)
            .field("currency", &self.currency)
            .field("status", &self.status)
            .field("stripe_payment_intent_id", &self.stripe_payment_intent_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("last_payment_error", &self.last_payment_error)
            .field("amount_received", &self.amount_received)
            .field("amount_refunded", &self.amount_refunded)
            .field("amount_refund_pending", &self.amount_refund_pending)
            .finish_non_exhaustive()
    }
}

/// What the provider reports about the payment's intent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub status: PaymentStatus,
    pub last_payment_error: Option<LastPaymentError>,
}

/// What caused a status change; recorded with it in the payment's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Create,
    Return,
    Webhook,
    Reconcile,
    Cancel,
    Refresh,
    /// RefundPayment: a refund made through paybridge.
    Refund,
    /// A refund made at Stripe directly, recorded when paybridge first learned of it.
    External,
}

impl EventSource {
    pub const ALL: [EventSource; 8] = [
        EventSource::Create,
        EventSource::Return,
        EventSource::Webhook,
        EventSource::Reconcile,
        EventSource::Cancel,
        EventSource::Refresh,
        EventSource::Refund,
        EventSource::External,
    ];

    /// The name stored and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Create => "create",
            EventSource::Return => "return",
            EventSource::Webhook => "webhook",
            EventSource::Reconcile => "reconcile",
            EventSource::Cancel => "cancel",
            EventSource::Refresh => "refresh",
            EventSource::Refund => "refund",
            EventSource::External => "external",
        }
    }
}

impl std::str::FromStr for EventSource {
    type Err = ();

    /// Parses the stored name.
    fn from_str(s: &str) -> Result<EventSource, ()> {
        EventSource::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or(())
    }
}

/// A change to record: the new status (and error) to write, with the status it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
    pub last_payment_error: Option<LastPaymentError>,
}

/// What a webhook event does to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventVerdict {
    /// Record this change.
    Apply(StatusChange),
    /// The event says nothing new.
    NoChange,
    /// The event is older than one already applied (delivered out of order): ignore it.
    Stale,
}

/// Progress of a status, for ordering events with the same timestamp: a later event never moves a
/// payment to a status of lower progress than one it has at the same second.
fn progress(status: PaymentStatus) -> u8 {
    match status {
        PaymentStatus::Creating => 0,
        PaymentStatus::RequiresPaymentMethod
        | PaymentStatus::RequiresConfirmation
        | PaymentStatus::RequiresAction => 1,
        PaymentStatus::Processing => 2,
        PaymentStatus::RequiresCapture => 3,
        PaymentStatus::Succeeded | PaymentStatus::Canceled => 4,
    }
}

/// Why an intent at the provider cannot be this payment's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentMismatch {
    #[error("intent id differs from the recorded one")]
    Id,
    #[error("amount differs: recorded {recorded}, provider says {provider}")]
    Amount { recorded: i64, provider: i64 },
    #[error("currency differs: recorded {recorded}, provider says {provider}")]
    Currency { recorded: String, provider: String },
    #[error("metadata paybridge_payment_id does not name this payment")]
    Metadata,
}

/// The metadata key that ties a PaymentIntent to its payment.
pub const PAYMENT_ID_METADATA_KEY: &str = "paybridge_payment_id";

impl Payment {
    /// What the payment received and what of it its refunds hold.
    pub fn refund_amounts(&self) -> crate::domain::RefundAmounts {
        crate::domain::RefundAmounts {
            received: self.amount_received,
            refunded: self.amount_refunded,
            pending: self.amount_refund_pending,
        }
    }

    /// The change an observation makes, if any. Terminal statuses never change; an observation
    /// of the same status and error changes nothing; the provider never reports `Creating`.
    pub fn observe(&self, observation: &Observation) -> Option<StatusChange> {
        if self.status.is_terminal() || observation.status == PaymentStatus::Creating {
            return None;
        }
        if observation.status == self.status
            && observation.last_payment_error == self.last_payment_error
        {
            return None;
        }
        Some(StatusChange {
            from: self.status,
            to: observation.status,
            last_payment_error: observation.last_payment_error.clone(),
        })
    }

    /// The change a webhook event created at `event_created` (unix seconds) makes. Events arrive
    /// late, twice and out of order: terminal statuses never change, an event older than the
    /// newest applied one is stale, and of two events of the same second the one of less progress
    /// (a late `processing` after `succeeded`, say) is stale too.
    pub fn observe_event(&self, observation: &Observation, event_created: i64) -> EventVerdict {
        if self.status.is_terminal() {
            return EventVerdict::NoChange;
        }
        if let Some(last) = self.last_event_created
            && (event_created < last
                || (event_created == last && progress(observation.status) < progress(self.status)))
        {
            return EventVerdict::Stale;
        }
        match self.observe(observation) {
            Some(change) => EventVerdict::Apply(change),
            None => EventVerdict::NoChange,
        }
    }

    /// Checks that an intent read from the provider is this payment's: same id (once known),
    /// amount, currency, and `paybridge_payment_id` in its metadata.
    pub fn check_intent(
        &self,
        intent_id: &str,
        amount: i64,
        currency: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), IntentMismatch> {
        if let Some(recorded) = &self.stripe_payment_intent_id
            && recorded != intent_id
        {
            return Err(IntentMismatch::Id);
        }
        if amount != self.amount {
            return Err(IntentMismatch::Amount {
                recorded: self.amount,
                provider: amount,
            });
        }
        if !currency.eq_ignore_ascii_case(&self.currency) {
            return Err(IntentMismatch::Currency {
                recorded: self.currency.clone(),
                provider: currency.to_owned(),
            });
        }
        if metadata.get(PAYMENT_ID_METADATA_KEY) != Some(&self.id) {
            return Err(IntentMismatch::Metadata);
        }
        Ok(())
    }

    /// Open payments block a new payment for the same invoice; so do succeeded ones.
    pub fn is_open(&self) -> bool {
        !self.status.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            id: "pay_1".into(),
            tenant: "billing".into(),
            invoice_id: "inv_1".into(),
            amount: 1000,
            currency: "usd".into(),
            status,
            stripe_payment_intent_id: Some("pi_1".into()),
            stripe_customer_id: None,
            client_secret: Some("pi_1_secret_x".into()),
            description: None,
            metadata: BTreeMap::new(),
            success_url: "https://billing.example.com/paid".into(),
            failure_url: "https://billing.example.com/failed".into(),
            last_payment_error: None,
            created_at: 0,
            updated_at: 0,
            last_event_created: None,
            amount_received: 0,
            amount_refunded: 0,
            amount_refund_pending: 0,
        }
    }

    fn seen(status: PaymentStatus) -> Observation {
        Observation {
            status,
            last_payment_error: None,
        }
    }

    #[test]
    fn terminal_statuses_never_change() {
        for terminal in [PaymentStatus::Succeeded, PaymentStatus::Canceled] {
            for next in PaymentStatus::ALL {
                assert_eq!(
                    payment(terminal).observe(&seen(next)),
                    None,
                    "{terminal} -> {next}"
                );
            }
        }
    }

    #[test]
    fn open_statuses_follow_the_provider() {
        let change = payment(PaymentStatus::RequiresPaymentMethod)
            .observe(&seen(PaymentStatus::Succeeded))
            .expect("a change");
        assert_eq!(change.from, PaymentStatus::RequiresPaymentMethod);
        assert_eq!(change.to, PaymentStatus::Succeeded);
    }

    #[test]
    fn the_same_observation_changes_nothing() {
        assert_eq!(
            payment(PaymentStatus::Processing).observe(&seen(PaymentStatus::Processing)),
            None
        );
    }

    #[test]
    fn a_new_failure_in_the_same_status_is_a_change() {
        let failed = Observation {
            status: PaymentStatus::RequiresPaymentMethod,
            last_payment_error: Some(LastPaymentError {
                code: Some("card_declined".into()),
                message: None,
            }),
        };
        assert!(
            payment(PaymentStatus::RequiresPaymentMethod)
                .observe(&failed)
                .is_some()
        );
    }

    #[test]
    fn the_provider_never_moves_a_payment_back_to_creating() {
        assert_eq!(
            payment(PaymentStatus::RequiresPaymentMethod).observe(&seen(PaymentStatus::Creating)),
            None
        );
    }

    #[test]
    fn a_late_event_never_moves_a_payment_backwards() {
        let mut p = payment(PaymentStatus::Processing);
        p.last_event_created = Some(100);
        assert_eq!(
            p.observe_event(&seen(PaymentStatus::RequiresAction), 99),
            EventVerdict::Stale
        );
        // Same second, less progress: stale.
        assert_eq!(
            p.observe_event(&seen(PaymentStatus::RequiresAction), 100),
            EventVerdict::Stale
        );
        // Newer: applied, even backwards in progress (a processing payment can fail).
        assert!(matches!(
            p.observe_event(&seen(PaymentStatus::RequiresPaymentMethod), 101),
            EventVerdict::Apply(_)
        ));
        assert!(matches!(
            p.observe_event(&seen(PaymentStatus::Succeeded), 100),
            EventVerdict::Apply(_)
        ));
    }

    #[test]
    fn events_never_change_a_terminal_payment() {
        let p = payment(PaymentStatus::Succeeded);
        assert_eq!(
            p.observe_event(&seen(PaymentStatus::Processing), i64::MAX),
            EventVerdict::NoChange
        );
    }

    #[test]
    fn intents_with_other_amount_currency_or_metadata_are_refused() {
        let p = payment(PaymentStatus::RequiresPaymentMethod);
        let mut metadata = BTreeMap::new();
        metadata.insert(PAYMENT_ID_METADATA_KEY.to_owned(), "pay_1".to_owned());
        assert_eq!(p.check_intent("pi_1", 1000, "usd", &metadata), Ok(()));
        assert_eq!(
            p.check_intent("pi_2", 1000, "usd", &metadata),
            Err(IntentMismatch::Id)
        );
        assert!(matches!(
            p.check_intent("pi_1", 999, "usd", &metadata),
            Err(IntentMismatch::Amount { .. })
        ));
        assert!(matches!(
            p.check_intent("pi_1", 1000, "eur", &metadata),
            Err(IntentMismatch::Currency { .. })
        ));
        assert_eq!(
            p.check_intent("pi_1", 1000, "usd", &BTreeMap::new()),
            Err(IntentMismatch::Metadata)
        );
    }
}
