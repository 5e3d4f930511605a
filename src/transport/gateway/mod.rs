//! The HTTP return gateway: the one public-facing part of paybridge. It parses what a browser or
//! Stripe sent, forwards it to the core over gRPC, and renders the answer — no domain rules here.
//!
//! `GatewayApp::build` binds the listener (port 0 works); `run_until_stopped` serves until the
//! shutdown future resolves, then drains. Tests use exactly this.

mod access_log;
mod core;
mod health;
mod pages;
mod rate_limit;
mod return_route;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::routing::{MethodFilter, get, on, post};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

use crate::config::GatewayConfig;

pub use self::core::CoreClient;

/// What every handler shares.
#[derive(Debug)]
struct GatewayState {
    core: CoreClient,
    /// Set from the moment shutdown starts, so `/readyz` stops sending traffic here.
    draining: AtomicBool,
}

/// A built, bound, not yet running gateway.
#[derive(Debug)]
pub struct GatewayApp {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    addr: SocketAddr,
    state: Arc<GatewayState>,
    router: Router,
    shutdown_grace: std::time::Duration,
}

impl GatewayApp {
    /// Prepares the (lazy) channel to the core and binds the HTTP listener. The core need not be
    /// up yet: the channel connects on first use and reconnects after the core restarts.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<GatewayApp> {
        let core = CoreClient::new(&config.core_url, &config.gateway_token, config.core_timeout)
            .context("PAYBRIDGE_CORE_URL")?;
        let state = Arc::new(GatewayState {
            core,
            draining: AtomicBool::new(false),
        });
        let router = router(&config, state.clone());
        let admin_listener = match config.admin_addr {
            Some(addr) => Some(
                crate::metrics::bind_admin(addr)
                    .await
                    .with_context(|| format!("PAYBRIDGE_ADMIN_ADDR: binding {addr}"))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("PAYBRIDGE_GATEWAY_ADDR: binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        Ok(GatewayApp {
            listener,
            admin_listener,
            addr,
            state,
            router,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The address metrics are served on, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address the gateway is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves; then reports not ready, stops accepting, and lets
    /// in-flight requests finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin_listener.map(|listener| {
            tokio::spawn(crate::metrics::serve_admin(listener, async {
                let _ = admin_stopped.await;
            }))
        });
        let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let server = tokio::spawn(server.into_future());
        tracing::info!(gateway_addr = %self.addr, "paybridge gateway serving");

        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        self.state.draining.store(true, Ordering::SeqCst);
        let _ = stop_accepting.send(());
        match tokio::time::timeout(self.shutdown_grace, server).await {
            Ok(joined) => joined.context("gateway task")?.context("gateway server")?,
            Err(_) => tracing::warn!(
                grace = ?self.shutdown_grace,
                "requests still running after the grace period; exiting anyway"
            ),
        }
        let _ = stop_admin.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn router(config: &GatewayConfig, state: Arc<GatewayState>) -> Router {
    let limiter = Arc::new(rate_limit::PerIpLimiter::new(
        config.rate_limit,
        config.rate_burst,
    ));
    let return_route = on(MethodFilter::GET, return_route::payment_return)
        // `get` would also answer HEAD by running the verification; a link checker must not.
        .head(pages::method_not_allowed_get)
        .fallback(pages::method_not_allowed_get)
        .layer(
            ServiceBuilder::new()
                // Per-client-IP token bucket, first: a flood from one address costs nothing more.
                .layer(axum::middleware::from_fn_with_state(
                    limiter,
                    rate_limit::limit_per_ip,
                ))
                // Turns load shedding's refusal into a 503 page.
                .layer(HandleErrorLayer::new(pages::overloaded))
                // Refuse at once instead of queueing when the limit below is reached.
                .layer(LoadShedLayer::new())
                // Bounds verifications in flight (each may wait on Stripe through the core).
                .layer(ConcurrencyLimitLayer::new(config.max_concurrency)),
        );
    let webhook_route = post(webhook::stripe_webhook).fallback(pages::method_not_allowed_post);
    Router::new()
        .route("/payment/return", return_route)
        .route("/stripe/webhook", webhook_route)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(pages::not_found)
        .with_state(state)
        // Access log without query strings, and the headers every answer carries.
        .layer(axum::middleware::from_fn(access_log::access_log))
}
