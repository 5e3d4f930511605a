//! `POST /stripe/webhook`: Stripe's event delivery, forwarded byte for byte with its signature.
//! The core verifies and records it; Stripe retries anything but a 2xx.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::GatewayState;
use crate::pb::v1 as pb;

/// Stripe's events are a few KiB; anything this large is not one.
pub(super) const MAX_WEBHOOK_BODY: usize = 256 * 1024;
/// `t=…,v1=…` with a few signatures during secret rotation.
const MAX_SIGNATURE_LEN: usize = 4096;

fn answer(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The core's answer as a word for the log, as the core logs its own outcomes.
fn result_name(result: pb::StripeEventResult) -> &'static str {
    match result {
        pb::StripeEventResult::Unspecified => "unspecified",
        pb::StripeEventResult::Applied => "applied",
        pb::StripeEventResult::Duplicate => "duplicate",
        pb::StripeEventResult::Ignored => "ignored",
    }
}

pub(super) async fn stripe_webhook(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Refuse a declared oversize body before reading any of it.
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        match length.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
            Some(length) if length > MAX_WEBHOOK_BODY as u64 => {
                tracing::warn!(length, "webhook refused: body too large");
                return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
            }
            Some(_) => {}
            None => return answer(StatusCode::BAD_REQUEST, "bad content-length\n"),
        }
    }
    let signature = match headers.get("stripe-signature").map(|v| v.to_str()) {
        Some(Ok(signature)) if !signature.is_empty() && signature.len() <= MAX_SIGNATURE_LEN => {
            signature.to_owned()
        }
        _ => {
            tracing::warn!("webhook refused: missing or malformed Stripe-Signature");
            return answer(
                StatusCode::BAD_REQUEST,
                "missing or malformed Stripe-Signature\n",
            );
        }
    };
    // A chunked body is capped while it streams in, and must arrive within the read timeout
    // (a client dribbling a body would otherwise hold the request open forever).
    let read = tokio::time::timeout(
        state.read_timeout,
        axum::body::to_bytes(body, MAX_WEBHOOK_BODY),
    );
    let payload = match read.await {
        Ok(Ok(payload)) => payload,
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "webhook refused: body too large or unreadable");
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable\n",
            );
        }
        Err(_) => {
            tracing::warn!(timeout = ?state.read_timeout, "webhook refused: body too slow");
            return answer(StatusCode::REQUEST_TIMEOUT, "body too slow\n");
        }
    };
    let result = state
        .core
        .handle_stripe_event(pb::HandleStripeEventRequest {
            payload: payload.to_vec(),
            stripe_signature: signature,
        })
        .await;
    match result {
        Ok(handled) => {
            let result =
                pb::StripeEventResult::try_from(handled.result).map_or("unknown", result_name);
            tracing::info!(event_id = %handled.event_id, result, "webhook recorded");
            answer(StatusCode::OK, "ok\n")
        }
        Err(status) => {
            use tonic::Code;
            match status.code() {
                Code::InvalidArgument => {
                    tracing::warn!(message = status.message(), "webhook refused by the core");
                    answer(StatusCode::BAD_REQUEST, "invalid signature or payload\n")
                }
                Code::Unavailable
                | Code::Unimplemented
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unknown => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "webhook not recorded: core unavailable");
                    answer(StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
                }
                code => {
                    tracing::error!(?code, message = status.message(), "webhook not recorded");
                    answer(StatusCode::INTERNAL_SERVER_ERROR, "not recorded\n")
                }
            }
        }
    }
}
