//! The payment's status and the rules for moving between statuses.

use std::fmt;

/// Local status of a payment: Stripe's PaymentIntent statuses plus `Creating`, the state of a row
/// written before Stripe has confirmed the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Row committed, PaymentIntent not yet confirmed by Stripe.
    Creating,
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    /// Terminal: the money arrived.
    Succeeded,
    /// Terminal: the PaymentIntent was cancelled.
    Canceled,
}

impl PaymentStatus {
    /// Every status, in a stable order.
    pub const ALL: [PaymentStatus; 8] = [
        PaymentStatus::Creating,
        PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::RequiresConfirmation,
        PaymentStatus::RequiresAction,
        PaymentStatus::Processing,
        PaymentStatus::RequiresCapture,
        PaymentStatus::Succeeded,
        PaymentStatus::Canceled,
    ];

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, PaymentStatus::Succeeded | PaymentStatus::Canceled)
    }

    /// The name stored in the database and shown in logs (Stripe's spelling, plus `creating`).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Creating => "creating",
            PaymentStatus::RequiresPaymentMethod => "requires_payment_method",
            PaymentStatus::RequiresConfirmation => "requires_confirmation",
            PaymentStatus::RequiresAction => "requires_action",
            PaymentStatus::Processing => "processing",
            PaymentStatus::RequiresCapture => "requires_capture",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Canceled => "canceled",
        }
    }
}

impl std::str::FromStr for PaymentStatus {
    type Err = ();

    /// Parses the stored name.
    fn from_str(s: &str) -> Result<PaymentStatus, ()> {
        PaymentStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
