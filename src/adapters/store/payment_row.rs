//! The `payment` row: the one list of its columns (the struct sqlx reads rows into, the insert's
//! column list, the values bound to it, each column's PostgreSQL type) and its conversions to and
//! from [`Payment`] and an event's JSON `object`.

use std::collections::BTreeMap;

use super::{Backend, SqlValue, json_of_row, parse_status};
use crate::app::ports::StoreError;
use crate::domain::{
    CancellationReason, CaptureMethod, Dispute, DisputeStatus, LastPaymentError, Payment,
};

/// Declares the `payment` row once: the struct sqlx reads rows into, the column list of the
/// insert, and the values bound to it, in one order. A new column is a line here, its two
/// migrations, and its place in the conversions below.
macro_rules! payment_row {
    ($($(#[$meta:meta])* $column:ident: $type:ty,)*) => {
        /// One `payment` row as the database holds it (or as an event's `object` recorded it:
        /// the client secret left out).
        #[derive(Debug, sqlx::FromRow, serde::Deserialize)]
        pub(super) struct PaymentRow {
            $($(#[$meta])* $column: $type,)*
        }

        impl PaymentRow {
            pub(super) const COLUMNS: &'static [&'static str] = &[$(stringify!($column)),*];
            /// Each column's PostgreSQL type, in [`PaymentRow::COLUMNS`] order.
            pub(super) const POSTGRES_TYPES: &'static [&'static str] = &[$(<$type as PostgresType>::NAME),*];

            /// The row's values in [`PaymentRow::COLUMNS`] order.
            pub(super) fn values(self) -> Vec<SqlValue> {
                vec![$(SqlValue::from(self.$column)),*]
            }

            /// Reads a row by its columns' names.
            pub(super) fn from_rusqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<PaymentRow> {
                Ok(PaymentRow { $($column: row.get(stringify!($column))?,)* })
            }
        }
    };
}

/// The PostgreSQL type of a row field's Rust type (for the grouped writes' `json_to_recordset`).
trait PostgresType {
    const NAME: &'static str;
}

impl PostgresType for String {
    const NAME: &'static str = "text";
}

impl PostgresType for i64 {
    const NAME: &'static str = "bigint";
}

impl<T: PostgresType> PostgresType for Option<T> {
    const NAME: &'static str = T::NAME;
}

payment_row! {
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
    amount_received: i64,
    amount_refunded: i64,
    amount_refund_pending: i64,
    // Issue 17; `serde(default)`: events recorded before it carry no such column.
    #[serde(default)]
    capture_method: Option<String>,
    #[serde(default)]
    amount_capturable: i64,
    capture_before: Option<i64>,
    cancellation_reason: Option<String>,
    dispute_id: Option<String>,
    dispute_status: Option<String>,
    dispute_reason: Option<String>,
    dispute_amount: Option<i64>,
    dispute_evidence_due_by: Option<i64>,
    dispute_is_charge_refundable: Option<i64>,
    dispute_last_event_created: Option<i64>,
}

impl PaymentRow {
    /// True when this is the row of the payment whose id is `id`.
    pub(super) fn is_payment(&self, id: &SqlValue) -> bool {
        matches!(id, SqlValue::Text(Some(id)) if *id == self.payment_id)
    }
}

/// The SQL expression of the JSON of the payment row `alias` (an event's `object`): every
/// column but the client secret, which the feed never carries.
pub(super) fn payment_json(backend: Backend, alias: &str) -> String {
    let columns: Vec<&str> = PaymentRow::COLUMNS
        .iter()
        .copied()
        .filter(|column| *column != "client_secret")
        .collect();
    json_of_row(backend, alias, &columns)
}

/// A payment as an event's `object` recorded it.
pub(super) fn payment_from_json(object: &str) -> Result<Payment, StoreError> {
    let row: PaymentRow = serde_json::from_str(object)
        .map_err(|e| StoreError::Corrupt(format!("event object (payment): {e}")))?;
    Payment::try_from(row)
}

impl TryFrom<&Payment> for PaymentRow {
    type Error = StoreError;

    fn try_from(payment: &Payment) -> Result<PaymentRow, StoreError> {
        let error = payment.last_payment_error.clone().unwrap_or_default();
        let dispute = payment.dispute.as_ref();
        Ok(PaymentRow {
            payment_id: payment.id.clone(),
            tenant: payment.tenant.clone(),
            invoice_id: payment.invoice_id.clone(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            status: payment.status.as_str().to_owned(),
            stripe_payment_intent_id: payment.stripe_payment_intent_id.clone(),
            stripe_customer_id: payment.stripe_customer_id.clone(),
            client_secret: payment.client_secret.clone(),
            description: payment.description.clone(),
            metadata: serde_json::to_string(&payment.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
            success_url: payment.success_url.clone(),
            failure_url: payment.failure_url.clone(),
            last_payment_error_code: error.code,
            last_payment_error_message: error.message,
            created_at: payment.created_at,
            updated_at: payment.updated_at,
            last_event_created: payment.last_event_created,
            amount_received: payment.amount_received,
            amount_refunded: payment.amount_refunded,
            amount_refund_pending: payment.amount_refund_pending,
            capture_method: Some(payment.capture_method.as_str().to_owned()),
            amount_capturable: payment.amount_capturable,
            capture_before: payment.capture_before,
            cancellation_reason: payment
                .cancellation_reason
                .map(|reason| reason.as_str().to_owned()),
            dispute_id: dispute.map(|d| d.id.clone()),
            dispute_status: dispute.map(|d| d.status.as_str().to_owned()),
            dispute_reason: dispute.map(|d| d.reason.clone()),
            dispute_amount: dispute.map(|d| d.amount),
            dispute_evidence_due_by: dispute.and_then(|d| d.evidence_due_by),
            dispute_is_charge_refundable: dispute.map(|d| i64::from(d.is_charge_refundable)),
            dispute_last_event_created: payment.dispute_last_event_created,
        })
    }
}

impl TryFrom<PaymentRow> for Payment {
    type Error = StoreError;

    fn try_from(row: PaymentRow) -> Result<Payment, StoreError> {
        let metadata: BTreeMap<String, String> = serde_json::from_str(&row.metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?;
        let last_payment_error = (row.last_payment_error_code.is_some()
            || row.last_payment_error_message.is_some())
        .then_some(LastPaymentError {
            code: row.last_payment_error_code,
            message: row.last_payment_error_message,
        });
        let capture_method = match row.capture_method.as_deref() {
            None => CaptureMethod::Automatic,
            Some(text) => text
                .parse()
                .map_err(|()| StoreError::Corrupt(format!("capture_method {text:?}")))?,
        };
        let cancellation_reason = row
            .cancellation_reason
            .as_deref()
            .map(|text| {
                text.parse::<CancellationReason>()
                    .map_err(|()| StoreError::Corrupt(format!("cancellation_reason {text:?}")))
            })
            .transpose()?;
        let dispute = match (row.dispute_id, row.dispute_status.as_deref()) {
            (Some(id), Some(status)) => Some(Dispute {
                id,
                status: status
                    .parse::<DisputeStatus>()
                    .map_err(|()| StoreError::Corrupt(format!("dispute_status {status:?}")))?,
                reason: row.dispute_reason.unwrap_or_default(),
                amount: row.dispute_amount.unwrap_or_default(),
                evidence_due_by: row.dispute_evidence_due_by,
                is_charge_refundable: row.dispute_is_charge_refundable == Some(1),
            }),
            _ => None,
        };
        Ok(Payment {
            capture_method,
            amount_capturable: row.amount_capturable,
            capture_before: row.capture_before,
            cancellation_reason,
            dispute,
            dispute_last_event_created: row.dispute_last_event_created,
            status: parse_status(&row.status)?,
            metadata,
            last_payment_error,
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
            amount_received: row.amount_received,
            amount_refunded: row.amount_refunded,
            amount_refund_pending: row.amount_refund_pending,
        })
    }
}
