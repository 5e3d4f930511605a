//! `GET /payment/return`: the browser, sent back by Stripe. The query is checked strictly here
//! (with the rules of `domain::ReturnQuery`, which the core applies too), before any gRPC call;
//! the core verifies it and says where the browser goes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{GatewayState, pages};
use crate::domain::{ReturnQuery, ReturnQueryField};
use crate::pb::v1 as pb;

/// Stripe's query (`pi_…` id, its `pi_…_secret_…`, a status word) is about 100 bytes.
const MAX_QUERY_LEN: usize = 1024;
/// A redirect URL longer than this is not one the core builds.
const MAX_REDIRECT_LEN: usize = 4096;

/// Why a query was refused before the core saw it; logged (never the values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    TooLong,
    Malformed,
    Unknown,
    Repeated,
    BadIntent,
    BadSecret,
    BadStatus,
}

/// The return route's query check, on its own (for property tests and fuzzing).
pub fn parse_return_query(raw: &str) -> Result<ReturnQuery, Refusal> {
    parse_query(Some(raw))
}

/// Exactly the parameters Stripe sends, each at most once, with the values [`ReturnQuery`]
/// allows. Those characters need no percent-decoding, so any `%`, `+` or other byte is refused
/// as is.
fn parse_query(raw: Option<&str>) -> Result<ReturnQuery, Refusal> {
    let raw = raw.filter(|q| !q.is_empty()).ok_or(Refusal::Missing)?;
    if raw.len() > MAX_QUERY_LEN {
        return Err(Refusal::TooLong);
    }
    let (mut intent, mut secret, mut status) = (None, None, None);
    for pair in raw.split('&') {
        let (key, value) = pair.split_once('=').ok_or(Refusal::Malformed)?;
        let slot = match key {
            "payment_intent" => &mut intent,
            "payment_intent_client_secret" => &mut secret,
            "redirect_status" => &mut status,
            _ => return Err(Refusal::Unknown),
        };
        if slot.replace(value).is_some() {
            return Err(Refusal::Repeated);
        }
    }
    ReturnQuery::parse(
        intent.unwrap_or_default(),
        secret.unwrap_or_default(),
        status.unwrap_or_default(),
    )
    .map_err(|refused| match refused.first() {
        Some(ReturnQueryField::PaymentIntent) | None => Refusal::BadIntent,
        Some(ReturnQueryField::ClientSecret) => Refusal::BadSecret,
        Some(ReturnQueryField::RedirectStatus) => Refusal::BadStatus,
    })
}

pub(super) async fn payment_return(State(state): State<Arc<GatewayState>>, uri: Uri) -> Response {
    let query = match parse_query(uri.query()) {
        Ok(query) => query,
        Err(refusal) => {
            tracing::info!(?refusal, "return refused before the core");
            return pages::bad_request();
        }
    };
    let payment_intent = query.payment_intent();
    let answer = state
        .core
        .verify_return(pb::VerifyReturnRequest {
            payment_intent: payment_intent.to_owned(),
            payment_intent_client_secret: query.client_secret().to_owned(),
            redirect_status: query.redirect_status().to_owned(),
        })
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(status) => return core_failed(payment_intent, &status),
    };
    let outcome = pb::ReturnOutcome::try_from(answer.outcome).unwrap_or_default();
    match outcome {
        pb::ReturnOutcome::Succeeded
        | pb::ReturnOutcome::Processing
        | pb::ReturnOutcome::Authorized
        | pb::ReturnOutcome::Failed
        | pb::ReturnOutcome::Canceled => {}
        pb::ReturnOutcome::Rejected | pb::ReturnOutcome::Unspecified => {
            tracing::warn!(%payment_intent, ?outcome, "return not verified");
            return pages::not_verified();
        }
    }
    match redirect_target(&answer.redirect_url) {
        Some(location) => {
            tracing::info!(%payment_intent, ?outcome, "return verified: redirecting");
            (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
        }
        None => {
            tracing::error!(%payment_intent, ?outcome, "the core answered an unusable redirect URL");
            pages::not_verified()
        }
    }
}

/// The core's redirect URL as a `Location`, if it is an absolute URL fit for a header.
fn redirect_target(raw: &str) -> Option<HeaderValue> {
    if raw.is_empty() || raw.len() > MAX_REDIRECT_LEN {
        return None;
    }
    let url = url::Url::parse(raw).ok()?;
    if url.cannot_be_a_base() && url.scheme() == "javascript" {
        return None;
    }
    HeaderValue::from_str(raw).ok()
}

/// An error from the core: a refusal of the query is a 400 page, anything else means "not now".
fn core_failed(payment_intent: &str, status: &tonic::Status) -> Response {
    use tonic::Code;
    match status.code() {
        Code::NotFound => {
            tracing::warn!(%payment_intent, "return for an unknown payment");
            pages::not_verified()
        }
        Code::InvalidArgument => {
            tracing::info!(%payment_intent, "the core refused the return's fields");
            pages::bad_request()
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            tracing::error!(code = ?status.code(), "the core refused the gateway's credential: check PAYBRIDGE_GATEWAY_TOKEN");
            pages::confirming()
        }
        code => {
            // Stripe or the core unreachable or slow: the payment may have gone through, so the
            // browser hears neither success nor failure, and comes back by itself.
            tracing::warn!(%payment_intent, ?code, message = status.message(), "core could not verify a return now");
            pages::confirming()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "payment_intent=pi_123&payment_intent_client_secret=pi_123_secret_abc&redirect_status=succeeded";

    #[test]
    fn stripes_query_parses() {
        let query = parse_query(Some(GOOD)).unwrap();
        assert_eq!(query.payment_intent(), "pi_123");
        assert_eq!(query.client_secret(), "pi_123_secret_abc");
        assert_eq!(query.redirect_status(), "succeeded");
        assert!(!format!("{query:?}").contains("secret_abc"));
    }

    #[test]
    fn anything_else_is_refused() {
        let refused = |q: &str| parse_query(Some(q)).err();
        assert_eq!(parse_query(None).err(), Some(Refusal::Missing));
        assert_eq!(refused(""), Some(Refusal::Missing));
        assert_eq!(
            refused(&format!("{GOOD}&next=https://evil.example")),
            Some(Refusal::Unknown)
        );
        assert_eq!(
            refused(&format!("{GOOD}&payment_intent=pi_123")),
            Some(Refusal::Repeated)
        );
        assert_eq!(refused(&format!("{GOOD}&")), Some(Refusal::Malformed));
        assert_eq!(
            refused("payment_intent=pi_124&payment_intent_client_secret=pi_123_secret_abc"),
            Some(Refusal::BadSecret)
        );
        assert_eq!(
            refused("payment_intent=pi_%31&payment_intent_client_secret=pi_1_secret_abc"),
            Some(Refusal::BadIntent)
        );
        assert_eq!(
            refused("payment_intent=pi_1&payment_intent_client_secret=pi_1_secret_a%00"),
            Some(Refusal::BadSecret)
        );
        assert_eq!(
            refused(
                "payment_intent=pi_1&payment_intent_client_secret=pi_1_secret_a&redirect_status=x%0a"
            ),
            Some(Refusal::BadStatus)
        );
        assert_eq!(refused(&"a".repeat(2000)), Some(Refusal::TooLong));
    }

    #[test]
    fn only_absolute_header_safe_urls_become_locations() {
        assert!(redirect_target("https://billing.example.com/paid?payment_id=pay_1").is_some());
        assert!(redirect_target("billingapp://paid?status=succeeded").is_some());
        assert!(redirect_target("").is_none());
        assert!(redirect_target("/relative").is_none());
        assert!(redirect_target("https://x.example/\r\nSet-Cookie: a=b").is_none());
    }
}
