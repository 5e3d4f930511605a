//! Adapters behind the ports: the store and the Stripe client.

pub mod store;
pub mod stripe;
