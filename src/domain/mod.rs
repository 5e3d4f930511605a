//! Pure domain: no tonic, sqlx or Stripe imports.

mod status;

pub use status::PaymentStatus;
