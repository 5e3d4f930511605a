//! Adapters behind the ports: the store and the Stripe client.

pub mod stripe;
