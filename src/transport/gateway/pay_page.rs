//! `GET /pay/{token}`: the hosted payment page (issue 18). The token is resolved by the core
//! (`ResolvePaymentLink`, the gateway's credential); the page shows the tenant, the amount and
//! the description, and mounts Stripe's Payment Element, whose `confirmPayment` sends the browser
//! to the gateway's `/payment/return`, so verification and the redirect are the return's.
//!
//! The page runs no inline script or style: its JavaScript and CSS are static files under a
//! versioned path ([`assets`](super::assets)); what the script needs (publishable key, client
//! secret, return URL) is in data attributes of the form. The client secret is only ever in this
//! body: never in a URL, a log line, or a `Referer` (`Referrer-Policy: no-referrer`).
//!
//! Every bad token — unknown, expired, tampered or malformed — gets the same 404 page, no sooner
//! than [`NOT_FOUND_FLOOR`] after the request arrived, so neither the answer nor its timing tells
//! them apart. The token is never logged (the access log writes `/pay/…`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use url::Url;

use super::{GatewayState, assets, pages};
use crate::domain::{Money, PaymentLinkToken};
use crate::pb::v1 as pb;

/// The earliest a bad token is answered: longer than a look-up takes, so that a token that
/// reaches the core (unknown, expired, tampered) and one refused here (malformed) take as long.
pub const NOT_FOUND_FLOOR: Duration = Duration::from_millis(200);

/// Where the page's third-party parts come from, for its Content-Security-Policy.
#[derive(Debug, Clone)]
pub(super) struct PageSettings {
    /// Stripe.js (`PAYBRIDGE_STRIPE_JS_URL`).
    stripe_js_url: String,
    /// The sources of the policy's `script-src` (beside `'self'`), `frame-src` and
    /// `connect-src`: Stripe's, or the stand-in's origin.
    script_src: String,
    frame_src: String,
    connect_src: String,
}

impl PageSettings {
    /// Stripe's own origins when Stripe.js is Stripe's (its documented CSP); otherwise the
    /// stand-in's origin takes Stripe's place everywhere.
    pub(super) fn new(stripe_js_url: &Url) -> PageSettings {
        let origin = stripe_js_url.origin().ascii_serialization();
        let (script, frame, connect) = if stripe_js_url.host_str() == Some("js.stripe.com") {
            (
                "https://js.stripe.com https://*.js.stripe.com".to_owned(),
                "https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com".to_owned(),
                "https://api.stripe.com".to_owned(),
            )
        } else {
            (origin.clone(), origin.clone(), origin)
        };
        PageSettings {
            stripe_js_url: stripe_js_url.to_string(),
            script_src: script,
            frame_src: frame,
            connect_src: connect,
        }
    }

    /// The page's policy; `logo_origin` is the tenant's logo's, if it has one.
    fn content_security_policy(&self, logo_origin: Option<&str>) -> String {
        let img = match logo_origin {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        format!(
            "default-src 'none'; script-src 'self' {}; style-src 'self'; img-src {img}; \
             frame-src {}; connect-src {}; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'",
            self.script_src, self.frame_src, self.connect_src
        )
    }
}

pub(super) async fn pay_page(State(state): State<Arc<GatewayState>>, uri: Uri) -> Response {
    let started = Instant::now();
    // The raw path, never percent-decoded: a token needs no decoding, anything else is not one.
    let raw = uri.path().strip_prefix("/pay/").unwrap_or_default();
    let Some(token) = PaymentLinkToken::parse(raw) else {
        tracing::info!("payment page: not a token");
        return link_not_found(started).await;
    };
    let link = token.log_id();
    let answer = state
        .core
        .resolve_payment_link(pb::ResolvePaymentLinkRequest {
            token: token.as_str().to_owned(),
        })
        .await;
    match answer {
        Ok(page) => {
            tracing::info!(%link, "payment page shown");
            render(&state.page, &page)
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            tracing::info!(%link, "payment page: unknown or expired link");
            link_not_found(started).await
        }
        Err(status) => {
            match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    tracing::error!(code = ?status.code(), "the core refused the gateway's credential: check PAYBRIDGE_GATEWAY_TOKEN");
                }
                code => {
                    tracing::warn!(%link, ?code, message = status.message(), "payment page: the core could not answer");
                }
            }
            pages::retry_later()
        }
    }
}

/// The one answer to every bad token.
async fn link_not_found(started: Instant) -> Response {
    tokio::time::sleep_until(started + NOT_FOUND_FLOOR).await;
    pages::page(
        StatusCode::NOT_FOUND,
        "Payment link not valid",
        "This payment link is not valid or has expired. \
         Please ask whoever sent it to you for a new link.",
    )
}

/// Escapes text for HTML text and double-quoted attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// What the page says instead of the form, once the payment cannot be paid here.
fn state_text(status: pb::PaymentStatus, merchant: &str) -> (&'static str, String) {
    use pb::PaymentStatus as S;
    match status {
        S::Succeeded => (
            "state state-paid",
            "This payment is complete. Thank you!".to_owned(),
        ),
        S::Processing => (
            "state",
            format!(
                "Your payment is being processed. {merchant} will confirm it once it is through."
            ),
        ),
        S::RequiresCapture => (
            "state state-paid",
            "Your payment is authorised. Thank you!".to_owned(),
        ),
        S::Canceled => (
            "state",
            format!(
                "This payment was cancelled. Please contact {merchant} if you still need to pay."
            ),
        ),
        S::Creating
        | S::Unspecified
        | S::RequiresPaymentMethod
        | S::RequiresConfirmation
        | S::RequiresAction => (
            "state",
            "This payment cannot be made right now. Please reload this page in a moment."
                .to_owned(),
        ),
    }
}

fn render(settings: &PageSettings, page: &pb::PaymentPage) -> Response {
    let Some(payment) = page.payment.as_ref() else {
        tracing::error!("the core answered a payment page without its payment");
        return pages::retry_later();
    };
    let merchant = escape(&page.tenant_display_name);
    let amount = Money::parse(payment.amount, &payment.currency)
        .map(Money::for_display)
        .unwrap_or_else(|_| format!("{} {}", payment.amount, payment.currency.to_uppercase()));
    let amount = escape(&amount);
    let logo = Url::parse(&page.tenant_logo_url)
        .ok()
        .filter(|url| matches!(url.scheme(), "https" | "http"));
    let logo_origin = logo.as_ref().map(|url| url.origin().ascii_serialization());
    let logo_html = logo
        .as_ref()
        .map(|url| format!("<img src=\"{}\" alt=\"\">", escape(url.as_str())))
        .unwrap_or_default();
    let description = if payment.description.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"description\">{}</p>",
            escape(&payment.description)
        )
    };
    let status = pb::PaymentStatus::try_from(payment.status).unwrap_or_default();
    let payable = !page.client_secret.is_empty();
    let (scripts, body) = if payable {
        let last_error = payment
            .last_payment_error
            .as_ref()
            .map(|error| error.message.as_str())
            .filter(|message| !message.is_empty());
        let message = match last_error {
            Some(text) => format!(
                "<p id=\"payment-message\" class=\"message\" role=\"alert\">{}</p>",
                escape(text)
            ),
            None => {
                "<p id=\"payment-message\" class=\"message\" role=\"alert\" hidden></p>".to_owned()
            }
        };
        (
            format!(
                "<script src=\"{}\" defer></script>\n<script src=\"{}\" defer></script>\n",
                escape(&settings.stripe_js_url),
                assets::path("pay.js")
            ),
            format!(
                "<form id=\"payment-form\" novalidate data-publishable-key=\"{}\" \
                 data-client-secret=\"{}\" data-return-url=\"{}\">\n\
                 <div id=\"payment-element\"></div>\n{message}\n\
                 <button id=\"pay-button\" class=\"pay-button\" type=\"submit\" disabled>Pay {amount}</button>\n\
                 </form>\n",
                escape(&page.publishable_key),
                escape(&page.client_secret),
                escape(&page.return_url),
            ),
        )
    } else {
        let (class, text) = state_text(status, &page.tenant_display_name);
        (
            String::new(),
            format!(
                "<p id=\"payment-state\" class=\"{class}\" role=\"status\">{}</p>\n",
                escape(&text)
            ),
        )
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>Pay {merchant}</title>\n\
         <link rel=\"stylesheet\" href=\"{css}\">\n{scripts}</head>\n<body>\n\
         <main class=\"pay\" aria-labelledby=\"amount\">\n\
         <header class=\"merchant\">{logo_html}<p class=\"merchant-name\">{merchant}</p></header>\n\
         <h1 id=\"amount\" class=\"amount\">{amount}</h1>\n{description}\n{body}</main>\n\
         <p class=\"footer\">Payments are processed securely by Stripe.</p>\n</body>\n</html>\n",
        css = assets::path("pay.css"),
    );
    let policy = settings.content_security_policy(logo_origin.as_deref());
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response();
    match HeaderValue::from_str(&policy) {
        Ok(value) => {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, value);
        }
        Err(_) => {
            tracing::error!("the payment page's Content-Security-Policy is not a header value");
            return pages::retry_later();
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_stripe_only_and_no_unsafe_source() {
        let stripe = PageSettings::new(&"https://js.stripe.com/v3/".parse().unwrap());
        let policy = stripe.content_security_policy(Some("https://billing.example.com"));
        for part in [
            "default-src 'none'",
            "script-src 'self' https://js.stripe.com",
            "style-src 'self'",
            "img-src 'self' https://billing.example.com",
            "frame-src https://js.stripe.com",
            "connect-src https://api.stripe.com",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(policy.contains(part), "{part} missing from {policy}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");

        let stand_in = PageSettings::new(&"http://127.0.0.1:4100/js/v3/".parse().unwrap());
        let policy = stand_in.content_security_policy(None);
        assert!(policy.contains("script-src 'self' http://127.0.0.1:4100;"));
        assert!(policy.contains("connect-src http://127.0.0.1:4100;"));
        assert!(policy.contains("img-src 'self';"));
        assert!(!policy.contains("stripe.com"), "{policy}");
    }

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
