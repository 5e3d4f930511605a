//! The HTTP return gateway: the one public-facing part of paybridge. It parses what a browser or
//! Stripe sent, forwards it to the core over gRPC, and renders the answer — no domain rules here.
//!
//! `GatewayApp::build` binds the listener (port 0 works); `run_until_stopped` serves until the
//! shutdown future resolves, then drains. Tests use exactly this.

mod access_log;
mod assets;
mod core;
mod health;
mod pages;
mod pay_page;
mod rate_limit;
mod return_route;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::routing::{MethodFilter, get, on, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::{ServiceBuilder, ServiceExt};

use crate::config::GatewayConfig;
use crate::lifecycle::{AdminListener, serve_until_stopped};

pub use self::core::{BearerToken, CoreClient};
pub use self::pay_page::NOT_FOUND_FLOOR;
pub use self::return_route::{Refusal as ReturnRefusal, parse_return_query};

/// What every handler shares.
#[derive(Debug)]
struct GatewayState {
    core: CoreClient,
    /// Set from the moment shutdown starts, so `/readyz` stops sending traffic here.
    draining: AtomicBool,
    /// How long a webhook's body may take to arrive.
    read_timeout: Duration,
    /// What the hosted payment page loads from elsewhere.
    page: pay_page::PageSettings,
}

/// A built, bound, not yet running gateway.
#[derive(Debug)]
pub struct GatewayApp {
    listener: TcpListener,
    admin: AdminListener,
    addr: SocketAddr,
    state: Arc<GatewayState>,
    router: Router,
    read_timeout: Duration,
    shutdown_grace: Duration,
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
            read_timeout: config.read_timeout,
            page: pay_page::PageSettings::new(&config.stripe_js_url),
        });
        let router = router(&config, state.clone());
        let admin = AdminListener::bind("PAYBRIDGE_GATEWAY_ADMIN_ADDR", config.admin_addr).await?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("PAYBRIDGE_GATEWAY_ADDR: binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        Ok(GatewayApp {
            listener,
            admin,
            addr,
            state,
            router,
            read_timeout: config.read_timeout,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The address metrics are served on, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
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
        tracing::info!(gateway_addr = %self.addr, "paybridge gateway serving");
        let served = serve_until_stopped(
            self.admin,
            |stopped| async move {
                serve(self.listener, self.router, self.read_timeout, stopped).await;
                Ok(())
            },
            shutdown,
            async {
                self.state.draining.store(true, Ordering::SeqCst);
            },
            self.shutdown_grace,
        )
        .await;
        tracing::info!("stopped");
        served
    }
}

/// Accepts HTTP/1 connections until `stopped`, then lets open ones finish their request and
/// close. Served with hyper directly rather than `axum::serve`, which sets no timer and so has no
/// header read timeout: a client dribbling its headers (or an idle keep-alive connection) would
/// hold a connection and its task forever.
async fn serve(
    listener: TcpListener,
    router: Router,
    read_timeout: Duration,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    tokio::pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        // What `into_make_service_with_connect_info` would add: the rate limit keys on it.
        let service =
            router
                .clone()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                if error.is_timeout() {
                    tracing::info!(client = %peer.ip(), "client too slow sending headers: connection closed");
                } else {
                    tracing::debug!(client = %peer.ip(), %error, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
                    limiter.clone(),
                    rate_limit::limit_per_ip,
                ))
                // Turns load shedding's refusal into a 503 page.
                .layer(HandleErrorLayer::new(pages::overloaded))
                // Refuse at once instead of queueing when the limit below is reached.
                .layer(LoadShedLayer::new())
                // Bounds verifications in flight (each may wait on Stripe through the core).
                .layer(ConcurrencyLimitLayer::new(config.max_concurrency)),
        );
    // The hosted payment page: the same guards as the return, and the same bucket per client (a
    // customer opens the page, then returns); HEAD too is refused, as on the return.
    let pay_route = on(MethodFilter::GET, pay_page::pay_page)
        .head(pages::method_not_allowed_get)
        .fallback(pages::method_not_allowed_get)
        .layer(
            ServiceBuilder::new()
                // Token guessing from one address is slowed down like return floods.
                .layer(axum::middleware::from_fn_with_state(
                    limiter,
                    rate_limit::limit_per_ip,
                ))
                .layer(HandleErrorLayer::new(pages::overloaded))
                .layer(LoadShedLayer::new())
                // Page look-ups in flight (each is a call to the core).
                .layer(ConcurrencyLimitLayer::new(config.max_concurrency)),
        );
    let webhook_route = post(webhook::stripe_webhook).fallback(pages::method_not_allowed_post);
    Router::new()
        .route("/payment/return", return_route)
        .route("/stripe/webhook", webhook_route)
        // `{*rest}`: a token with a `/` in it is a bad token too, with the same 404.
        .route("/pay/{*rest}", pay_route)
        .route(
            "/assets/{version}/{file}",
            get(assets::asset).fallback(pages::method_not_allowed_get),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(pages::not_found)
        .with_state(state)
        // Access log without query strings, and the headers every answer carries.
        .layer(axum::middleware::from_fn(access_log::access_log))
}
