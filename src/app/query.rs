//! GetPayment and ListPayments.

use super::ports::{ListCursor, ListQuery};
use super::{AppError, Payments};
use crate::domain::{EventSource, Payment, PaymentStatus};

/// Largest page ListPayments returns.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// A parsed ListPayments request.
#[derive(Debug, Clone)]
pub struct ListPaymentsQuery {
    pub invoice_id: Option<String>,
    pub status: Option<PaymentStatus>,
    /// 1..=MAX_PAGE_SIZE.
    pub page_size: u32,
    /// Where the previous page ended.
    pub after: Option<ListCursor>,
}

/// One page, and where the next one starts (if there may be one).
#[derive(Debug, Clone)]
pub struct ListPage {
    pub payments: Vec<Payment>,
    pub next: Option<ListCursor>,
}

impl Payments {
    /// One of the tenant's payments; with `refresh`, re-read from Stripe first.
    #[tracing::instrument(skip(self), fields(payment_id = %payment_id))]
    pub async fn get_payment(
        &self,
        tenant: &str,
        payment_id: &str,
        refresh: bool,
    ) -> Result<Payment, AppError> {
        let payment = self.load(Some(tenant), payment_id).await?;
        if refresh {
            let payment = self
                .sync_with_provider(payment, EventSource::Refresh)
                .await?;
            // A succeeded payment's refunds, made here or at Stripe directly.
            return self.sync_refunds(payment, EventSource::Refresh).await;
        }
        Ok(payment)
    }

    /// The tenant's payments, newest first.
    pub async fn list_payments(
        &self,
        tenant: &str,
        query: ListPaymentsQuery,
    ) -> Result<ListPage, AppError> {
        // One row more than asked tells whether another page exists.
        let mut payments = self
            .store
            .list_payments(ListQuery {
                tenant,
                invoice_id: query.invoice_id.as_deref(),
                status: query.status,
                after: query.after,
                limit: query.page_size + 1,
            })
            .await?;
        let more = payments.len() > query.page_size as usize;
        payments.truncate(query.page_size as usize);
        let next = more
            .then(|| payments.last())
            .flatten()
            .map(|last| ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
        Ok(ListPage { payments, next })
    }
}
