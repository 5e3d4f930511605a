//! VerifyReturn: the browser's return from Stripe, verified against the row and Stripe, never
//! trusted.

use super::{AppError, Payments};
use crate::domain::{EventSource, Payment, ReturnOutcome};

/// Who asks: the return gateway may verify any payment, a tenant only its own.
#[derive(Debug, Clone, Copy)]
pub enum ReturnCaller<'a> {
    Gateway,
    Tenant(&'a str),
}

/// The query Stripe appended to `return_url`, as received.
#[derive(Clone)]
pub struct ReturnQuery {
    pub payment_intent: String,
    pub client_secret: String,
    /// Stripe's hint; logged for diagnosis, never trusted.
    pub redirect_status: String,
}

impl std::fmt::Debug for ReturnQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnQuery")
            .field("payment_intent", &self.payment_intent)
            .field("redirect_status", &self.redirect_status)
            .finish_non_exhaustive()
    }
}

/// The verified answer.
#[derive(Debug, Clone)]
pub struct VerifiedReturn {
    /// `None` when rejected.
    pub payment: Option<Payment>,
    pub outcome: ReturnOutcome,
    /// `None` when rejected.
    pub redirect_url: Option<String>,
}

impl VerifiedReturn {
    fn rejected() -> VerifiedReturn {
        VerifiedReturn {
            payment: None,
            outcome: ReturnOutcome::Rejected,
            redirect_url: None,
        }
    }
}

impl Payments {
    /// Verifies a return: the payment of the intent (`NotFound` if none is the caller's), the
    /// client secret compared in constant time (a mismatch is rejected without a Stripe call),
    /// the intent read from Stripe unless the row is already terminal (coalesced with concurrent
    /// reads), checked against the row, and the change recorded.
    #[tracing::instrument(skip_all, fields(payment_intent = %query.payment_intent, hint = %query.redirect_status))]
    pub async fn verify_return(
        &self,
        caller: ReturnCaller<'_>,
        query: &ReturnQuery,
    ) -> Result<VerifiedReturn, AppError> {
        let tenant = match caller {
            ReturnCaller::Gateway => None,
            ReturnCaller::Tenant(tenant) => Some(tenant),
        };
        let payment = self
            .store
            .find_payment_by_intent(tenant, &query.payment_intent)
            .await?
            .ok_or(AppError::NotFound)?;
        let secret_matches = payment.client_secret.as_deref().is_some_and(|secret| {
            constant_time_eq::constant_time_eq(secret.as_bytes(), query.client_secret.as_bytes())
        });
        if !secret_matches {
            tracing::warn!(payment_id = %payment.id, "return rejected: client secret does not match");
            return Ok(VerifiedReturn::rejected());
        }
        let payment = match self.sync_with_provider(payment, EventSource::Return).await {
            Ok(payment) => payment,
            Err(AppError::IntentMismatch(_)) => return Ok(VerifiedReturn::rejected()),
            Err(other) => return Err(other),
        };
        let outcome = ReturnOutcome::of(payment.status);
        let redirect_url = payment.return_redirect(outcome).ok_or_else(|| {
            AppError::Internal(format!(
                "payment {} has an unusable redirect URL",
                payment.id
            ))
        })?;
        tracing::info!(payment_id = %payment.id, outcome = outcome.as_str(), "return verified");
        Ok(VerifiedReturn {
            payment: Some(payment),
            outcome,
            redirect_url: Some(redirect_url),
        })
    }
}
