//! Adapters behind the ports: the store and the Stripe client.
