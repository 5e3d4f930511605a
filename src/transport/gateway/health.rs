//! `/healthz`: the process is up. `/readyz`: the core answers SERVING and we are not draining.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;

use super::GatewayState;

pub(super) async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

pub(super) async fn readyz(State(state): State<Arc<GatewayState>>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if state.core.is_serving().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "core not serving\n")
    }
}
