//! The integration tests, one binary: each module is an area of paybridge, driven from outside
//! (gRPC, HTTP, the built binaries) against real parts that `support` starts. Black-box tests run
//! on SQLite and on PostgreSQL (`on_both_databases!`), so their names read
//! `<area>::sqlite::<test>` and `<area>::postgres::<test>`.

#[macro_use]
mod support;

mod auth;
mod cancel_and_list;
mod capture_disputes;
mod chart_metrics;
mod create_payment;
mod events;
mod gateway_browser;
mod gateway_hostile;
mod gateway_proxies;
mod gateway_return;
mod gateway_webhook;
mod hosted_page;
mod hosted_page_browser;
mod operations;
mod properties;
mod pushes;
mod reconciler;
mod reconciler_failover;
mod refund_store;
mod refunds;
mod refunds_crash;
mod resilience_crash;
mod resilience_database;
mod resilience_gateway;
mod resilience_shutdown;
mod resilience_stripe;
mod stripe_adapter_contract;
mod stripe_budget;
mod stripe_budget_shared;
mod tenants_reload;
mod tls;
mod traces;
mod transient_payments;
mod validation;
mod watch;
mod webhooks;
