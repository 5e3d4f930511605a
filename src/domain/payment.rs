//! A payment as recorded, and how an observation from Stripe changes it.

use std::collections::BTreeMap;

use super::{
    CancellationReason, CaptureMethod, DEFAULT_AUTHORIZATION_VALIDITY_MS, Dispute, PaymentStatus,
};

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
    /// What Stripe collected (minor units) once succeeded (what was captured, for a partial
    /// capture), 0 before.
    pub amount_received: i64,
    /// The sum of the payment's refunds that succeeded.
    pub amount_refunded: i64,
    /// The sum of the payment's refunds that are not final yet (creating, pending,
    /// requires_action): reserved, so that concurrent refunds never exceed what was received.
    pub amount_refund_pending: i64,
    /// When the money is taken.
    pub capture_method: CaptureMethod,
    /// What can still be captured while `RequiresCapture`; 0 otherwise.
    pub amount_capturable: i64,
    /// Unix milliseconds: when the authorization lapses (set once authorized).
    pub capture_before: Option<i64>,
    /// Why it was cancelled, once `Canceled`.
    pub cancellation_reason: Option<CancellationReason>,
    /// The dispute of its charge, if it was ever disputed.
    pub dispute: Option<Dispute>,
    /// Stripe's `created` (unix seconds) of the newest dispute event applied.
    pub dispute_last_event_created: Option<i64>,
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
            .field("capture_method", &self.capture_method)
            .field("amount_capturable", &self.amount_capturable)
            .field("capture_before", &self.capture_before)
            .field("cancellation_reason", &self.cancellation_reason)
            .field("dispute", &self.dispute)
            .finish_non_exhaustive()
    }
}

/// What the provider reports about the payment's intent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub status: PaymentStatus,
    pub last_payment_error: Option<LastPaymentError>,
    /// What the intent received (Stripe's `amount_received`).
    pub amount_received: i64,
    /// What can still be captured (Stripe's `amount_capturable`).
    pub amount_capturable: i64,
    /// Unix milliseconds: the charge's `capture_before`, when Stripe gave it.
    pub capture_before: Option<i64>,
    /// Stripe's `cancellation_reason`, as given.
    pub cancellation_reason: Option<String>,
    /// Unix milliseconds: when this was true at Stripe (an event's `created`, or now). An
    /// authorization first seen then holds 7 days from it unless Stripe says otherwise.
    pub observed_at: i64,
}

impl Observation {
    /// An observation of `status` alone (nothing received, nothing capturable).
    pub fn of_status(status: PaymentStatus, observed_at: i64) -> Observation {
        Observation {
            status,
            last_payment_error: None,
            amount_received: 0,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            observed_at,
        }
    }
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
    /// CapturePayment.
    Capture,
}

impl EventSource {
    pub const ALL: [EventSource; 9] = [
        EventSource::Create,
        EventSource::Return,
        EventSource::Webhook,
        EventSource::Reconcile,
        EventSource::Cancel,
        EventSource::Refresh,
        EventSource::Refund,
        EventSource::External,
        EventSource::Capture,
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
            EventSource::Capture => "capture",
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

/// A change to record: the new status (and error) to write, with the status it replaces, and
/// what the payment received, can capture, and why it was cancelled, as they are after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
    pub last_payment_error: Option<LastPaymentError>,
    /// Written when `to` is `Succeeded` (else the payment keeps 0).
    pub amount_received: i64,
    pub amount_capturable: i64,
    pub capture_before: Option<i64>,
    pub cancellation_reason: Option<CancellationReason>,
}

impl StatusChange {
    /// A change of status alone, with nothing received or capturable (a create's first answer,
    /// a refusal).
    pub fn status_only(
        from: PaymentStatus,
        to: PaymentStatus,
        last_payment_error: Option<LastPaymentError>,
    ) -> StatusChange {
        StatusChange {
            from,
            to,
            last_payment_error,
            amount_received: 0,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
        }
    }
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
        let to = observation.status;
        let amount_capturable = if to == PaymentStatus::RequiresCapture {
            observation.amount_capturable
        } else {
            0
        };
        // An authorization holds until the charge's `capture_before`; without one, 7 days from
        // when it was first seen (kept, not moved, by later reads).
        let capture_before = if to == PaymentStatus::RequiresCapture {
            observation.capture_before.or(self.capture_before).or(Some(
                observation
                    .observed_at
                    .saturating_add(DEFAULT_AUTHORIZATION_VALIDITY_MS),
            ))
        } else {
            self.capture_before
        };
        let amount_received = if to == PaymentStatus::Succeeded {
            observation.amount_received
        } else {
            0
        };
        let cancellation_reason = (to == PaymentStatus::Canceled).then(|| {
            CancellationReason::from_stripe(
                observation.cancellation_reason.as_deref(),
                self.status == PaymentStatus::RequiresCapture,
            )
        });
        if to == self.status
            && observation.last_payment_error == self.last_payment_error
            && amount_capturable == self.amount_capturable
            && capture_before == self.capture_before
        {
            return None;
        }
        Some(StatusChange {
            from: self.status,
            to,
            last_payment_error: observation.last_payment_error.clone(),
            amount_received,
            amount_capturable,
            capture_before,
            cancellation_reason,
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
            capture_method: CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        }
    }

    fn seen(status: PaymentStatus) -> Observation {
        Observation::of_status(status, 0)
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
            last_payment_error: Some(LastPaymentError {
                code: Some("card_declined".into()),
                message: None,
            }),
            ..seen(PaymentStatus::RequiresPaymentMethod)
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
    fn an_authorization_holds_seven_days_unless_stripe_says_and_its_lapse_is_named() {
        let mut p = payment(PaymentStatus::RequiresAction);
        p.capture_method = CaptureMethod::Manual;
        let authorized = Observation {
            amount_capturable: 1000,
            ..seen(PaymentStatus::RequiresCapture)
        };
        let change = p
            .observe(&Observation {
                observed_at: 5,
                ..authorized.clone()
            })
            .expect("authorized");
        assert_eq!(change.amount_capturable, 1000);
        assert_eq!(
            change.capture_before,
            Some(5 + DEFAULT_AUTHORIZATION_VALIDITY_MS)
        );
        p.status = PaymentStatus::RequiresCapture;
        p.amount_capturable = 1000;
        p.capture_before = change.capture_before;
        assert_eq!(
            p.observe(&Observation {
                observed_at: 99,
                ..authorized.clone()
            }),
            None,
            "a later read keeps the deadline"
        );
        let from_charge = p
            .observe(&Observation {
                capture_before: Some(42),
                ..authorized
            })
            .expect("Stripe's own deadline");
        assert_eq!(from_charge.capture_before, Some(42));
        let lapsed = p
            .observe(&Observation {
                cancellation_reason: Some("automatic".into()),
                ..seen(PaymentStatus::Canceled)
            })
            .expect("cancelled");
        assert_eq!(
            lapsed.cancellation_reason,
            Some(CancellationReason::AuthorizationExpired)
        );
        assert_eq!(lapsed.amount_capturable, 0);
        let captured = p
            .observe(&Observation {
                amount_received: 600,
                ..seen(PaymentStatus::Succeeded)
            })
            .expect("captured");
        assert_eq!(
            (captured.amount_received, captured.amount_capturable),
            (600, 0)
        );
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
