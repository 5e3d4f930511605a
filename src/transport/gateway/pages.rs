//! The few answers the gateway renders itself: small static pages that never echo anything the
//! request carried (there is nothing in a hostile query worth showing back).

use axum::BoxError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A small HTML page; only static text goes in.
pub(super) fn page(status: StatusCode, title: &'static str, message: &'static str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto; padding: 0 1em\">\
         <h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The query was not what Stripe sends.
pub(super) fn bad_request() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Invalid payment link",
        "This link is not a valid return from the payment page. \
         Please go back to the shop and check the status of your payment there.",
    )
}

/// The core could not verify this return (wrong secret, unknown or mismatched payment). The
/// browser is not sent anywhere: there is no URL we could trust for it.
pub(super) fn not_verified() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Payment could not be verified",
        "We could not verify this payment. No payment was confirmed by this page. \
         Please go back to the shop and check the status of your payment there.",
    )
}

/// The core is unreachable or busy: nothing was recorded, retrying is safe.
pub(super) fn retry_later() -> Response {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "We could not check your payment just now. Nothing was lost: \
         please reload this page in a few seconds.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// The core could not verify the return just now (Stripe or the core unreachable or slow). The
/// payment may well have gone through, so this is neither a success nor a failure: the browser is
/// told the payment is being confirmed and reloads the same return by itself (the verification is
/// idempotent; nothing was recorded). A 503 rather than a redirect with `status=processing`: the
/// gateway holds no tenant URLs, and when the core is down there is no URL to send the browser to.
pub(super) fn confirming() -> Response {
    let body = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <title>We're confirming your payment</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto; padding: 0 1em\">\
         <h1>We're confirming your payment</h1><p>This takes a moment longer than usual. \
         Please keep this page open: it checks again by itself in a few seconds. \
         Do not pay again — you will not be charged twice.</p></body></html>\n";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::RETRY_AFTER, HeaderValue::from_static("5")),
        ],
        body,
    )
        .into_response()
}

/// Too many requests from one client address.
pub(super) fn too_many_requests() -> Response {
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Please slow down",
        "Too many requests from your address. Please reload this page in a few seconds.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// Load shedding refused the request (the concurrency limit is reached).
pub(super) async fn overloaded(error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        tracing::warn!("return or payment page route at its concurrency limit: shedding");
    } else {
        tracing::error!(error = %error, "return or payment page route middleware failed");
    }
    retry_later()
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "This address does not accept that kind of request.",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

pub(super) async fn method_not_allowed_get() -> Response {
    method_not_allowed("GET")
}

pub(super) async fn method_not_allowed_post() -> Response {
    method_not_allowed("POST")
}

pub(super) async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
    )
}
