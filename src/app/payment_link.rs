//! Hosted payment page links (issue 18): the link CreateInvoicePayment hands out with
//! `hosted_page`, CreatePaymentLink, and the look-up of a link's page for the gateway.
//!
//! A link's token is made here, handed out once in the link's URL, and stored only as its
//! SHA-256; a look-up hashes what the browser sent and finds a link that has not expired. The
//! answer is the same (`NotFound`) for a token that is unknown, expired or not a token at all.

use super::{AppError, Payments, now_millis};
use crate::domain::{LinkTtl, Payment, PaymentLinkToken, PaymentStatus};

/// A link handed out: its URL (a credential to the page) and when it stops working.
#[derive(Clone)]
pub struct IssuedLink {
    pub url: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLink")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the hosted page of a link shows.
#[derive(Clone)]
pub struct HostedPage {
    pub payment: Payment,
    /// Only while the payment can be paid: the page then mounts the Payment Element.
    pub client_secret: Option<String>,
    pub publishable_key: String,
    pub return_url: String,
}

impl std::fmt::Debug for HostedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedPage")
            .field("payment", &self.payment)
            .field("payable", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the customer can still pay: the page shows the form. A payment processing, awaiting
/// capture, paid or cancelled shows its state instead.
fn is_payable(status: PaymentStatus) -> bool {
    match status {
        PaymentStatus::RequiresPaymentMethod
        | PaymentStatus::RequiresConfirmation
        | PaymentStatus::RequiresAction => true,
        PaymentStatus::Creating
        | PaymentStatus::Processing
        | PaymentStatus::RequiresCapture
        | PaymentStatus::Succeeded
        | PaymentStatus::Canceled => false,
    }
}

impl Payments {
    /// A new link for an open payment of `tenant` (another tenant's is `NotFound`).
    #[tracing::instrument(skip_all, fields(tenant = %tenant, payment_id = %payment_id))]
    pub async fn create_payment_link(
        &self,
        tenant: &str,
        payment_id: &str,
        ttl: LinkTtl,
    ) -> Result<IssuedLink, AppError> {
        let payment = self.load(Some(tenant), payment_id).await?;
        if payment.status.is_terminal() {
            return Err(AppError::PaymentNotOpen {
                status: payment.status,
            });
        }
        // The page needs the intent's client secret.
        let payment = self.finish_creating(payment).await?;
        self.issue_link(&payment, ttl).await
    }

    /// Makes and records a new link to `payment`'s page.
    pub(crate) async fn issue_link(
        &self,
        payment: &Payment,
        ttl: LinkTtl,
    ) -> Result<IssuedLink, AppError> {
        let token = PaymentLinkToken::generate();
        let now = now_millis();
        let expires_at = now.saturating_add(ttl.as_millis());
        self.store
            .insert_payment_link(
                &token.hash_hex(),
                &payment.id,
                &payment.tenant,
                now,
                expires_at,
            )
            .await?;
        tracing::info!(payment_id = %payment.id, link = %token.log_id(), expires_at, "payment link issued");
        Ok(IssuedLink {
            url: format!("{}/pay/{}", self.settings.public_url, token.as_str()),
            expires_at,
        })
    }

    /// The page of the link whose token the browser sent; `NotFound` for an unknown, expired or
    /// malformed token alike.
    pub async fn resolve_payment_link(&self, token: &str) -> Result<HostedPage, AppError> {
        let Some(token) = PaymentLinkToken::parse(token) else {
            return Err(AppError::NotFound);
        };
        let payment_id = self
            .store
            .find_payment_link(&token.hash_hex(), now_millis())
            .await?
            .ok_or(AppError::NotFound)?;
        let payment = self.load(None, &payment_id).await?;
        let payment = self.finish_creating(payment).await?;
        tracing::debug!(payment_id = %payment.id, link = %token.log_id(), status = %payment.status, "payment link opened");
        let client_secret = if is_payable(payment.status) {
            payment.client_secret.clone()
        } else {
            None
        };
        Ok(HostedPage {
            payment,
            client_secret,
            publishable_key: self.settings.publishable_key.clone(),
            return_url: self.settings.return_url.clone(),
        })
    }

    /// Deletes the links that expired before now (the janitor).
    pub async fn delete_expired_payment_links(&self) -> Result<u64, AppError> {
        Ok(self
            .store
            .delete_expired_payment_links(now_millis())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::Harness;
    use crate::app::ports::PaymentLinks;

    fn token_of(link: &IssuedLink) -> &str {
        link.url
            .strip_prefix("https://pay.example.com/pay/")
            .expect("the link is under the public base")
    }

    #[tokio::test]
    async fn a_link_opens_its_payments_page_with_the_client_secret() {
        let harness = Harness::new();
        let created = harness.create("k1", "INV-1").await;
        let link = harness
            .payments
            .create_payment_link("billing", &created.payment.id, LinkTtl::DEFAULT)
            .await
            .expect("link");
        let page = harness
            .payments
            .resolve_payment_link(token_of(&link))
            .await
            .expect("page");
        assert_eq!(page.payment.id, created.payment.id);
        assert_eq!(page.client_secret.as_deref(), Some(&*created.client_secret));
        assert_eq!(page.publishable_key, "pk_test_fake");
        assert!(!format!("{page:?}{link:?}").contains(&created.client_secret));
        assert!(!format!("{link:?}").contains(token_of(&link)));
    }

    #[tokio::test]
    async fn unknown_tampered_and_malformed_tokens_are_not_found() {
        let harness = Harness::new();
        let created = harness.create("k1", "INV-1").await;
        let link = harness
            .payments
            .create_payment_link("billing", &created.payment.id, LinkTtl::DEFAULT)
            .await
            .expect("link");
        let token = token_of(&link);
        let flipped = if token.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{flipped}{}", &token[1..]);
        let unknown = PaymentLinkToken::generate().as_str().to_owned();
        for bad in [tampered.as_str(), unknown.as_str(), "nope", ""] {
            assert!(matches!(
                harness.payments.resolve_payment_link(bad).await,
                Err(AppError::NotFound)
            ));
        }
    }

    #[tokio::test]
    async fn another_tenants_payment_gets_no_link() {
        let harness = Harness::new();
        let created = harness.create("k1", "INV-1").await;
        let refused = harness
            .payments
            .create_payment_link("orders", &created.payment.id, LinkTtl::DEFAULT)
            .await;
        assert!(matches!(refused, Err(AppError::NotFound)), "{refused:?}");
    }

    #[tokio::test]
    async fn a_cancelled_payment_gets_no_new_link_and_its_old_link_shows_no_form() {
        let harness = Harness::new();
        let created = harness.create("k1", "INV-1").await;
        let link = harness
            .payments
            .create_payment_link("billing", &created.payment.id, LinkTtl::DEFAULT)
            .await
            .expect("link");
        harness
            .payments
            .cancel_payment("billing", &created.payment.id)
            .await
            .expect("cancelled");
        let refused = harness
            .payments
            .create_payment_link("billing", &created.payment.id, LinkTtl::DEFAULT)
            .await;
        assert!(
            matches!(
                refused,
                Err(AppError::PaymentNotOpen {
                    status: PaymentStatus::Canceled
                })
            ),
            "{refused:?}"
        );
        let page = harness
            .payments
            .resolve_payment_link(token_of(&link))
            .await
            .expect("page");
        assert_eq!(page.payment.status, PaymentStatus::Canceled);
        assert!(page.client_secret.is_none());
    }

    #[tokio::test]
    async fn expired_links_are_not_found_and_the_janitor_deletes_them() {
        let harness = Harness::new();
        let created = harness.create("k1", "INV-1").await;
        let token = PaymentLinkToken::generate();
        let now = now_millis();
        harness
            .store
            .insert_payment_link(
                &token.hash_hex(),
                &created.payment.id,
                "billing",
                now - 10,
                now - 1,
            )
            .await
            .expect("inserted");
        assert!(matches!(
            harness.payments.resolve_payment_link(token.as_str()).await,
            Err(AppError::NotFound)
        ));
        assert_eq!(
            harness
                .payments
                .delete_expired_payment_links()
                .await
                .expect("deleted"),
            1
        );
    }
}
