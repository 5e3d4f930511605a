//! Manual capture: when the money is taken, how long an authorization holds, and why a payment
//! was cancelled.

/// When the money is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaptureMethod {
    /// As soon as the customer pays.
    #[default]
    Automatic,
    /// The customer's payment authorizes the money; `CapturePayment` takes it.
    Manual,
}

impl CaptureMethod {
    /// The name stored and sent to Stripe (`capture_method`).
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }
}

impl std::str::FromStr for CaptureMethod {
    type Err = ();

    /// Parses the stored name, or Stripe's (`automatic_async` is automatic too).
    fn from_str(s: &str) -> Result<CaptureMethod, ()> {
        match s {
            "automatic" | "automatic_async" => Ok(CaptureMethod::Automatic),
            "manual" => Ok(CaptureMethod::Manual),
            _ => Err(()),
        }
    }
}

/// How long an authorization holds when Stripe's charge gives no `capture_before`: Stripe's
/// usual 7 days for online card payments.
pub const DEFAULT_AUTHORIZATION_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

/// Why a payment was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancellationReason {
    /// CancelPayment, or a cancel at Stripe someone asked for.
    Requested,
    /// The authorization of a manual payment lapsed before its capture.
    AuthorizationExpired,
    /// Any other reason Stripe gave.
    Other,
}

impl CancellationReason {
    pub const ALL: [CancellationReason; 3] = [
        CancellationReason::Requested,
        CancellationReason::AuthorizationExpired,
        CancellationReason::Other,
    ];

    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CancellationReason::Requested => "requested",
            CancellationReason::AuthorizationExpired => "authorization_expired",
            CancellationReason::Other => "other",
        }
    }

    /// The cause of a cancel Stripe reports with its `cancellation_reason`, for a payment that
    /// was `awaiting_capture` (authorized) before. Stripe cancels a lapsed authorization itself
    /// (`automatic`, or `expired`); nobody asked for that.
    pub fn from_stripe(reason: Option<&str>, awaiting_capture: bool) -> CancellationReason {
        match reason {
            Some("automatic" | "expired") if awaiting_capture => {
                CancellationReason::AuthorizationExpired
            }
            None | Some("requested_by_customer" | "duplicate" | "fraudulent" | "abandoned") => {
                CancellationReason::Requested
            }
            Some(_) => CancellationReason::Other,
        }
    }
}

impl std::str::FromStr for CancellationReason {
    type Err = ();

    fn from_str(s: &str) -> Result<CancellationReason, ()> {
        CancellationReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapsed_authorization_is_told_from_a_requested_cancel() {
        assert_eq!(
            CancellationReason::from_stripe(Some("automatic"), true),
            CancellationReason::AuthorizationExpired
        );
        assert_eq!(
            CancellationReason::from_stripe(Some("automatic"), false),
            CancellationReason::Other
        );
        assert_eq!(
            CancellationReason::from_stripe(None, true),
            CancellationReason::Requested
        );
        assert_eq!(
            CancellationReason::from_stripe(Some("void_invoice"), false),
            CancellationReason::Other
        );
    }
}
