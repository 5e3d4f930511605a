//! Pure domain: no tonic, sqlx or Stripe imports.

mod payment;
mod status;

pub use payment::{
    IntentMismatch, LastPaymentError, Observation, PAYMENT_ID_METADATA_KEY, Payment, StatusChange,
};
pub use status::PaymentStatus;
