//! The [`EventPusher`]: POSTs an event to a tenant's `webhook_url` over HTTP/1.1 (TLS with the
//! web's roots), signed the way Stripe signs its webhooks, so existing verification code works:
//!
//! ```text
//! POST <webhook_url>
//! Content-Type: application/json
//! Paybridge-Event-Id: evt_…
//! Paybridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>
//!
//! <the event in the proto's canonical JSON>
//! ```
//!
//! Redirects are not followed (a 3xx is a failed push). The body of the answer is not read past
//! a few kilobytes. The secret never leaves this module but in the signature.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use secrecy::ExposeSecret;

use crate::app::ports::{EventPusher, FeedEvent, PushOutcome};
use crate::tenants::PushEndpoint;

/// The id of the pushed event: receivers tell a repeat by it.
pub const EVENT_ID_HEADER: &str = "paybridge-event-id";
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "paybridge-signature";

/// Most of an answer's body read (and thrown away) to keep the connection reusable.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Turns a feed event into its id and its JSON body (the transport's conversion, handed in at
/// start-up).
pub type EncodeEvent = Arc<dyn Fn(&FeedEvent) -> (String, Vec<u8>) + Send + Sync>;

/// Pushes events over HTTP(S).
#[derive(Clone)]
pub struct HttpPusher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    encode: EncodeEvent,
}

impl std::fmt::Debug for HttpPusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPusher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpPusher {
    /// `timeout` bounds one push, from connecting to the answer's status.
    pub fn new(timeout: Duration, encode: EncodeEvent) -> Result<HttpPusher, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(HttpPusher {
            client,
            timeout,
            encode,
        })
    }

    /// The request of one push, signed at `now_seconds`.
    pub fn request(
        &self,
        endpoint: &PushEndpoint,
        event: &FeedEvent,
        now_seconds: i64,
    ) -> Result<Request<Full<Bytes>>, String> {
        let (event_id, body) = (self.encode)(event);
        let signature = crate::adapters::stripe::webhook::sign(
            &body,
            endpoint.secret().expose_secret(),
            now_seconds,
        );
        Request::builder()
            .method(Method::POST)
            .uri(endpoint.url().as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("paybridge/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_ID_HEADER, event_id)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))
    }
}

#[async_trait]
impl EventPusher for HttpPusher {
    async fn push(
        &self,
        endpoint: &PushEndpoint,
        event: &FeedEvent,
        now_seconds: i64,
    ) -> PushOutcome {
        let request = match self.request(endpoint, event, now_seconds) {
            Ok(request) => request,
            Err(error) => return PushOutcome::Unreachable(error),
        };
        let exchange = async {
            let answer = self.client.request(request).await?;
            let status = answer.status();
            // Read a little of the body so the connection can serve the next push.
            let _ = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => PushOutcome::TimedOut,
            Ok(Err(error)) => PushOutcome::Unreachable(crate::app::error_chain(&error)),
            Ok(Ok(status)) if status.is_success() => PushOutcome::Delivered,
            Ok(Ok(status)) => PushOutcome::Refused(status.as_u16()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use secrecy::SecretString;

    use super::*;
    use crate::adapters::stripe::webhook::WebhookVerifier;
    use crate::app::ports::{FeedObject, FeedPosition};
    use crate::domain::{EventSource, Refund};

    const SECRET: &str = "psk_0123456789abcdef";

    fn pusher(timeout: Duration) -> HttpPusher {
        HttpPusher::new(
            timeout,
            Arc::new(|event: &FeedEvent| {
                (
                    format!("evt_{}", event.position.event_id),
                    format!("{{\"n\":{}}}", event.position.event_id).into_bytes(),
                )
            }),
        )
        .unwrap()
    }

    fn event() -> FeedEvent {
        FeedEvent {
            position: FeedPosition {
                commit_group: 0,
                event_id: 9,
            },
            tenant: "billing".to_owned(),
            source: EventSource::Refund,
            created_at: 0,
            object: FeedObject::Refund(Box::new(Refund {
                id: "ref_1".to_owned(),
                payment_id: "pay_1".to_owned(),
                tenant: "billing".to_owned(),
                amount: 100,
                currency: "usd".to_owned(),
                status: crate::domain::RefundStatus::Creating,
                reason: None,
                stripe_refund_id: None,
                failure_reason: None,
                source: crate::domain::RefundSource::Api,
                metadata: Default::default(),
                created_at: 0,
                updated_at: 0,
                last_event_created: None,
            })),
        }
    }

    type Seen = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

    /// A receiver on a free local port answering `status` (after `delay`).
    async fn receiver(status: u16, delay: Duration) -> (PushEndpoint, Seen) {
        let seen: Seen = Arc::default();
        let kept = Arc::clone(&seen);
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    kept.lock().unwrap().push((headers, body));
                    tokio::time::sleep(delay).await;
                    http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let endpoint = PushEndpoint::new(
            &format!("http://{addr}/events"),
            SecretString::from(SECRET.to_owned()),
        )
        .unwrap();
        (endpoint, seen)
    }

    #[tokio::test]
    async fn a_push_is_a_signed_json_post_and_a_2xx_delivers_it() {
        let (endpoint, seen) = receiver(204, Duration::ZERO).await;
        let outcome = pusher(Duration::from_secs(5))
            .push(&endpoint, &event(), 1_800_000_000)
            .await;
        assert_eq!(outcome, PushOutcome::Delivered);
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(body.as_ref(), b"{\"n\":9}");
        assert_eq!(headers[EVENT_ID_HEADER], "evt_9");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
        assert!(signature.starts_with("t=1800000000,v1="), "{signature}");
        // Stripe's scheme: the same check as Stripe's own webhooks pass.
        let verifier = WebhookVerifier::new(
            vec![SecretString::from(SECRET.to_owned())],
            Duration::from_secs(300),
        );
        assert_eq!(verifier.verify(body, signature, 1_800_000_000), Ok(()));
        let forged = WebhookVerifier::new(
            vec![SecretString::from("psk_another_secret_0000".to_owned())],
            Duration::from_secs(300),
        );
        assert!(forged.verify(body, signature, 1_800_000_000).is_err());
        assert!(!format!("{headers:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn other_answers_a_slow_receiver_and_a_closed_port_are_failures() {
        let (endpoint, _) = receiver(500, Duration::ZERO).await;
        let pusher = pusher(Duration::from_millis(300));
        assert_eq!(
            pusher.push(&endpoint, &event(), 0).await,
            PushOutcome::Refused(500)
        );
        let (endpoint, _) = receiver(308, Duration::ZERO).await;
        assert_eq!(
            pusher.push(&endpoint, &event(), 0).await,
            PushOutcome::Refused(308),
            "redirects are not followed"
        );
        let (endpoint, _) = receiver(200, Duration::from_secs(30)).await;
        assert_eq!(
            pusher.push(&endpoint, &event(), 0).await,
            PushOutcome::TimedOut
        );
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let endpoint = PushEndpoint::new(
            &format!("http://{closed}/events"),
            SecretString::from(SECRET.to_owned()),
        )
        .unwrap();
        let outcome = pusher.push(&endpoint, &event(), 0).await;
        assert!(
            matches!(outcome, PushOutcome::Unreachable(_)),
            "{outcome:?}"
        );
    }
}
