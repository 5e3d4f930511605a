//! One log line per request — method, path, status, time, client — and the headers every answer
//! carries (unless its handler set its own: the payment page's policy, the assets' caching). The
//! query string is never logged: on `/payment/return` it holds the client secret; nor is a
//! payment page's token (`/pay/…`).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// Longest path written to the log; the rest is cut (paths are attacker-chosen).
const MAX_LOGGED_PATH: usize = 128;

/// Headers on every answer: nothing is cached (an answer may follow a secret-bearing URL), no
/// `Referer` leaves with the next navigation, and the pages run no script and sit in no frame.
const SECURITY_HEADERS: &[(HeaderName, &str)] = &[
    (header::CACHE_CONTROL, "no-store"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
];

pub(super) async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = logged_path(request.uri().path()).to_owned();
    let has_query = request.uri().query().is_some();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default();
    let mut response = next.run(request).await;
    for (name, value) in SECURITY_HEADERS {
        response
            .headers_mut()
            .entry(name.clone())
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    let route = route_label(&path);
    crate::metrics::METRICS
        .gateway_requests
        .get_or_create(&crate::metrics::GatewayLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    crate::metrics::METRICS
        .gateway_duration
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        target: "paybridge::gateway::access",
        %method,
        path = ?path,
        has_query,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        %client,
        "request"
    );
    response
}

/// A bounded label for the route: paths are attacker-chosen.
fn route_label(path: &str) -> &'static str {
    match path {
        "/payment/return" => "/payment/return",
        "/stripe/webhook" => "/stripe/webhook",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        _ if path.starts_with("/pay/") => "/pay/{token}",
        _ if path.starts_with("/assets/") => "/assets",
        _ => "other",
    }
}

fn logged_path(path: &str) -> &str {
    // The token is a credential to the page.
    if path.starts_with("/pay/") {
        return "/pay/…";
    }
    match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((cut, _)) => &path[..cut],
        None => path,
    }
}
