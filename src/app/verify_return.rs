//! VerifyReturn: the browser's return from Stripe, verified against the row and Stripe, never
//! trusted.

use super::{AppError, Payments};
use crate::domain::{EventSource, Payment, ReturnOutcome, ReturnQuery};

/// Who asks: the return gateway may verify any payment, a tenant only its own.
#[derive(Debug, Clone, Copy)]
pub enum ReturnCaller<'a> {
    Gateway,
    Tenant(&'a str),
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
    #[tracing::instrument(skip_all, fields(payment_intent = %query.payment_intent(), hint = %query.redirect_status()))]
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
            .find_payment_by_intent(tenant, query.payment_intent())
            .await?
            .ok_or(AppError::NotFound)?;
        let secret_matches = payment.client_secret.as_deref().is_some_and(|secret| {
            constant_time_eq::constant_time_eq(secret.as_bytes(), query.client_secret().as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::CreatedPayment;
    use crate::app::fakes::{Harness, tenant_named};
    use crate::domain::PaymentStatus;

    fn query(created: &CreatedPayment, client_secret: &str) -> ReturnQuery {
        let intent = created
            .payment
            .stripe_payment_intent_id
            .as_deref()
            .expect("intent");
        ReturnQuery::parse(intent, client_secret, "succeeded").expect("a return query")
    }

    fn retrieves(harness: &Harness) -> usize {
        harness
            .provider
            .calls()
            .iter()
            .filter(|call| call.starts_with("retrieve_payment_intent"))
            .count()
    }

    #[tokio::test]
    async fn a_paid_return_is_read_at_stripe_recorded_and_sent_to_the_success_url() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let query = query(&created, &created.client_secret);
        harness
            .provider
            .update_intent(query.payment_intent(), |intent| {
                intent.status = PaymentStatus::Succeeded;
            });
        let verified = harness
            .payments
            .verify_return(ReturnCaller::Gateway, &query)
            .await
            .expect("verified");
        assert_eq!(verified.outcome, ReturnOutcome::Succeeded);
        let redirect = verified.redirect_url.expect("a redirect");
        assert!(
            redirect.starts_with("https://billing.example.com/paid?"),
            "{redirect}"
        );
        assert!(!redirect.contains(&created.client_secret), "{redirect}");
        let events = harness.store.events_of(&created.payment.id);
        assert_eq!(
            events.last(),
            Some(&(
                EventSource::Return,
                Some(PaymentStatus::RequiresPaymentMethod),
                PaymentStatus::Succeeded
            ))
        );
    }

    #[tokio::test]
    async fn a_wrong_client_secret_is_rejected_without_a_stripe_call() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let verified = harness
            .payments
            .verify_return(
                ReturnCaller::Gateway,
                &query(&created, "pi_1_secret_forged"),
            )
            .await
            .expect("answered");
        assert_eq!(verified.outcome, ReturnOutcome::Rejected);
        assert!(verified.redirect_url.is_none());
        assert_eq!(retrieves(&harness), 0);
    }

    #[tokio::test]
    async fn another_tenants_payment_or_an_unknown_intent_is_not_found() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let query = query(&created, &created.client_secret);
        let other = tenant_named("orders");
        let error = harness
            .payments
            .verify_return(ReturnCaller::Tenant(other.id().as_str()), &query)
            .await
            .expect_err("not the tenant's");
        assert!(matches!(error, AppError::NotFound), "{error:?}");
        let unknown = ReturnQuery::parse("pi_unknown", "pi_unknown_secret_x", "succeeded")
            .expect("a return query");
        let error = harness
            .payments
            .verify_return(ReturnCaller::Gateway, &unknown)
            .await
            .expect_err("unknown intent");
        assert!(matches!(error, AppError::NotFound), "{error:?}");
    }

    #[tokio::test]
    async fn an_intent_that_is_not_the_payments_is_rejected_and_nothing_recorded() {
        let harness = Harness::new();
        let created = harness.create("k-1", "inv-1").await;
        let query = query(&created, &created.client_secret);
        harness
            .provider
            .update_intent(query.payment_intent(), |intent| {
                intent.status = PaymentStatus::Succeeded;
                intent.amount = 1;
            });
        let verified = harness
            .payments
            .verify_return(ReturnCaller::Gateway, &query)
            .await
            .expect("answered");
        assert_eq!(verified.outcome, ReturnOutcome::Rejected);
        let [payment] = harness.store.payments().try_into().expect("one payment");
        assert_eq!(payment.status, PaymentStatus::RequiresPaymentMethod);
    }
}
