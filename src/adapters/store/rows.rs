//! Row ⇄ domain conversion for the payment table.

use crate::domain::Payment;

use super::{StoreError, last_payment_error, parse_metadata, parse_status};

/// One `payment` row as the database returns it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PaymentRow {
    payment_id: String,
    tenant: String,
    invoice_id: String,
    amount: i64,
    currency: String,
    status: String,
    stripe_payment_intent_id: Option<String>,
    stripe_customer_id: Option<String>,
    client_secret: Option<String>,
    description: Option<String>,
    metadata: String,
    success_url: String,
    failure_url: String,
    last_payment_error_code: Option<String>,
    last_payment_error_message: Option<String>,
    created_at: i64,
    updated_at: i64,
    last_event_created: Option<i64>,
}

/// A row of `Store::find_for_create`: a payment, with the fingerprint of the request whose
/// idempotency key named it (null on the invoice's row).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LookupRow {
    pub(super) request_fingerprint: Option<String>,
    #[sqlx(flatten)]
    pub(super) payment: PaymentRow,
}

impl PaymentRow {
    pub(super) fn payment_id(&self) -> &str {
        &self.payment_id
    }

    /// The payment's columns of a SQLite row, in `payment_columns!` order from `first`.
    pub(super) fn from_sqlite_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(PaymentRow {
            payment_id: row.get(first)?,
            tenant: row.get(first + 1)?,
            invoice_id: row.get(first + 2)?,
            amount: row.get(first + 3)?,
            currency: row.get(first + 4)?,
            status: row.get(first + 5)?,
            stripe_payment_intent_id: row.get(first + 6)?,
            stripe_customer_id: row.get(first + 7)?,
            client_secret: row.get(first + 8)?,
            description: row.get(first + 9)?,
            metadata: row.get(first + 10)?,
            success_url: row.get(first + 11)?,
            failure_url: row.get(first + 12)?,
            last_payment_error_code: row.get(first + 13)?,
            last_payment_error_message: row.get(first + 14)?,
            created_at: row.get(first + 15)?,
            updated_at: row.get(first + 16)?,
            last_event_created: row.get(first + 17)?,
        })
    }
}

impl TryFrom<PaymentRow> for Payment {
    type Error = StoreError;

    fn try_from(row: PaymentRow) -> Result<Payment, StoreError> {
        Ok(Payment {
            status: parse_status(&row.status)?,
            metadata: parse_metadata(&row.metadata)?,
            last_payment_error: last_payment_error(
                row.last_payment_error_code,
                row.last_payment_error_message,
            ),
            id: row.payment_id,
            tenant: row.tenant,
            invoice_id: row.invoice_id,
            amount: row.amount,
            currency: row.currency,
            stripe_payment_intent_id: row.stripe_payment_intent_id,
            stripe_customer_id: row.stripe_customer_id,
            client_secret: row.client_secret,
            description: row.description,
            success_url: row.success_url,
            failure_url: row.failure_url,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_event_created: row.last_event_created,
        })
    }
}
