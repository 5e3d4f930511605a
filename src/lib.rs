//! # paybridge
//!
//! A gRPC payment service for internal platforms: collects money for their invoices through
//! Stripe. `README.md` tells how to run and call it; `docs/architecture.md` how it is built: the
//! parts, the payment's life, the layers and who may import whom, and the store.
//!
//! # Layout
//! - [`config`]: flags and `PAYBRIDGE_*` variables, checked at start.
//! - [`telemetry`]: logs (text or JSON, with trace ids) and OpenTelemetry traces (OTLP export).
//! - [`metrics`]: Prometheus metrics and the admin endpoint.
//! - [`startup`]: builds the application (binds listeners) and runs it until a signal.
//! - [`lifecycle`]: what `serve` and the gateway share: the admin endpoint and the drain at stop.
//! - [`pb`]: generated protobuf and gRPC code, fenced off.
//! - [`domain`]: pure rules — payment status machine, money, ids, validated request values.
//! - [`tenants`]: the tenants file and bearer-token authentication.
//! - [`app`]: use cases (create, get, list, cancel, verify return, webhook, reconcile, watch) and
//!   the ports they need ([`app::ports`]); it never imports [`adapters`].
//! - [`adapters`]: the ports' implementations: the store (SQLite or PostgreSQL through sqlx) and
//!   the Stripe client.
//! - [`transport`]: the gRPC service (conversion, auth, error mapping) and the HTTP return
//!   gateway (parse, forward to the core, render).

pub mod adapters;
pub mod app;
pub mod config;
pub mod domain;
pub mod lifecycle;
pub mod metrics;
pub mod pb;
pub mod reload;
pub mod startup;
pub mod telemetry;
pub mod tenants;
pub mod transport;
