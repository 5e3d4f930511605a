//! Adapters behind the ports: the store, the Stripe client, and the pushes to tenants.

pub mod push;
pub mod store;
pub mod stripe;
