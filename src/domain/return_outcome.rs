//! What a customer's return from Stripe means, and where the browser goes next.

use super::{Payment, PaymentStatus};

/// What a verified return means for the customer's browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnOutcome {
    /// The money arrived.
    Succeeded,
    /// Not known yet (processing): the platform shows "we'll confirm shortly", so the browser
    /// goes to the success page.
    Processing,
    /// Authorized (a manual payment awaiting capture): the browser goes to the success page.
    Authorized,
    /// Not paid: declined, authentication failed, or the customer came back without paying.
    Failed,
    /// The payment was cancelled.
    Canceled,
    /// The return could not be verified: no redirect, nothing recorded.
    Rejected,
}

impl ReturnOutcome {
    /// The outcome of a payment's status after verification.
    pub fn of(status: PaymentStatus) -> ReturnOutcome {
        match status {
            PaymentStatus::Succeeded => ReturnOutcome::Succeeded,
            PaymentStatus::Processing => ReturnOutcome::Processing,
            PaymentStatus::RequiresCapture => ReturnOutcome::Authorized,
            PaymentStatus::Canceled => ReturnOutcome::Canceled,
            // Back from Stripe and still waiting for the customer: the attempt did not complete.
            PaymentStatus::Creating
            | PaymentStatus::RequiresPaymentMethod
            | PaymentStatus::RequiresConfirmation
            | PaymentStatus::RequiresAction => ReturnOutcome::Failed,
        }
    }

    /// The `status` query parameter the platform's page receives.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnOutcome::Succeeded => "succeeded",
            ReturnOutcome::Processing => "processing",
            ReturnOutcome::Authorized => "authorized",
            ReturnOutcome::Failed => "failed",
            ReturnOutcome::Canceled => "canceled",
            ReturnOutcome::Rejected => "rejected",
        }
    }
}

impl Payment {
    /// Where the browser goes after a return with this outcome: the payment's success URL (for
    /// success and processing) or failure URL, with `payment_id`, `invoice_id` and `status` set
    /// (replacing any parameters of those names). Built only from what was stored at create.
    /// `None` for a rejected return, and for a stored URL that no longer parses.
    pub fn return_redirect(&self, outcome: ReturnOutcome) -> Option<String> {
        let base = match outcome {
            ReturnOutcome::Succeeded | ReturnOutcome::Processing | ReturnOutcome::Authorized => {
                &self.success_url
            }
            ReturnOutcome::Failed | ReturnOutcome::Canceled => &self.failure_url,
            ReturnOutcome::Rejected => return None,
        };
        let mut url = url::Url::parse(base).ok()?;
        let set = [
            ("payment_id", self.id.as_str()),
            ("invoice_id", self.invoice_id.as_str()),
            ("status", outcome.as_str()),
        ];
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !set.iter().any(|(ours, _)| name == ours))
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .extend_pairs(set);
        Some(url.into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn payment() -> Payment {
        Payment {
            id: "pay_1".into(),
            tenant: "billing".into(),
            invoice_id: "inv 1&2".into(),
            amount: 1000,
            currency: "usd".into(),
            status: PaymentStatus::Succeeded,
            stripe_payment_intent_id: Some("pi_1".into()),
            stripe_customer_id: None,
            client_secret: Some("pi_1_secret_x".into()),
            description: None,
            metadata: BTreeMap::new(),
            success_url: "https://billing.example.com/paid?from=checkout&status=forged".into(),
            failure_url: "billingapp://payment/failed".into(),
            last_payment_error: None,
            created_at: 0,
            updated_at: 0,
            last_event_created: None,
            amount_received: 0,
            amount_refunded: 0,
            amount_refund_pending: 0,
            capture_method: crate::domain::CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        }
    }

    #[test]
    fn success_and_processing_go_to_the_success_url() {
        assert_eq!(
            payment()
                .return_redirect(ReturnOutcome::Succeeded)
                .as_deref(),
            Some(
                "https://billing.example.com/paid?from=checkout&payment_id=pay_1&invoice_id=inv+1%262&status=succeeded"
            )
        );
        assert!(
            payment()
                .return_redirect(ReturnOutcome::Processing)
                .is_some_and(|u| u.ends_with("status=processing"))
        );
    }

    #[test]
    fn failure_and_cancel_go_to_the_failure_url_even_for_app_schemes() {
        assert_eq!(
            payment().return_redirect(ReturnOutcome::Failed).as_deref(),
            Some("billingapp://payment/failed?payment_id=pay_1&invoice_id=inv+1%262&status=failed")
        );
        assert!(
            payment()
                .return_redirect(ReturnOutcome::Canceled)
                .is_some_and(|u| u.ends_with("status=canceled"))
        );
    }

    #[test]
    fn a_rejected_return_goes_nowhere() {
        assert_eq!(payment().return_redirect(ReturnOutcome::Rejected), None);
    }

    #[test]
    fn outcomes_follow_the_status() {
        use PaymentStatus::*;
        let expected = [
            (Creating, ReturnOutcome::Failed),
            (RequiresPaymentMethod, ReturnOutcome::Failed),
            (RequiresConfirmation, ReturnOutcome::Failed),
            (RequiresAction, ReturnOutcome::Failed),
            (Processing, ReturnOutcome::Processing),
            (RequiresCapture, ReturnOutcome::Authorized),
            (Succeeded, ReturnOutcome::Succeeded),
            (Canceled, ReturnOutcome::Canceled),
        ];
        for (status, outcome) in expected {
            assert_eq!(ReturnOutcome::of(status), outcome, "{status}");
        }
    }
}
