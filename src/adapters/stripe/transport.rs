//! A pooled, keep-alive HTTP client for async-stripe's request types.
//!
//! async-stripe's stock hyper client sets `pool_max_idle_per_host(0)`, so every request pays a new
//! TCP and TLS handshake. [`PooledStripeClient`] implements the crate's pluggable
//! [`stripe_client_core::StripeClient`] trait on a pooled `hyper_util` client instead, and owns the
//! retry policy: per-attempt timeout, exponential backoff with jitter on connection errors,
//! timeouts, 409/429/5xx (and whatever `Stripe-Should-Retry: true` marks), `Retry-After` honoured,
//! `Stripe-Should-Retry: false` obeyed, and the same `Idempotency-Key` on every attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use stripe_client_core::{CustomizedStripeRequest, StripeClient, StripeClientErr, StripeMethod};
use tracing::Instrument;

/// Largest response body accepted from Stripe (its objects are a few KiB).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Idle pooled connections are dropped after this long (below Stripe's own idle cut-off, so a
/// pooled connection is rarely found closed by the server).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per host: at least as many as requests in flight at a peak, or every
/// request beyond the cap opens a connection and closes it again afterwards (bench/README.md has
/// what a smaller cap cost). Idle ones expire above.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// Upper bound for a server-requested `Retry-After` wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

const STRIPE_VERSION: HeaderName = HeaderName::from_static("stripe-version");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const STRIPE_ACCOUNT: HeaderName = HeaderName::from_static("stripe-account");
/// Longest a request waits for its slot in the request budget before it is refused
/// (UNAVAILABLE to the caller, who retries; a browser gets the retry page).
const MAX_BUDGET_WAIT: Duration = Duration::from_secs(5);

const STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");
/// Stripe's id of the request (`req_…`), which its support and dashboard find it by.
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// Counters for benchmarks and metrics: how many HTTP attempts were sent and how many TCP
/// connections were opened to do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// HTTP attempts sent (each retry counts).
    pub requests_sent: u64,
    /// TCP connections opened (successful connects, TLS included).
    pub connections_opened: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests_sent: AtomicU64,
    connections_opened: AtomicU64,
}

/// A connector wrapper that counts the connections it opens.
#[derive(Clone)]
struct CountingConnector<C> {
    inner: C,
    counters: Arc<Counters>,
}

impl<C> tower::Service<Uri> for CountingConnector<C>
where
    C: tower::Service<Uri> + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let counters = Arc::clone(&self.counters);
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            let connection = connecting.await?;
            counters.connections_opened.fetch_add(1, Ordering::Relaxed);
            Ok(connection)
        })
    }
}

type HyperClient = Client<CountingConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// Retry policy: `max_retries` retries after the first attempt, exponential backoff from
/// `base_delay` capped at `max_delay`, with jitter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
}

impl RetryPolicy {
    /// Wait before retry number `retry` (1-based): "equal jitter", half fixed and half random,
    /// so concurrent callers spread out but never retry immediately.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_nanos =
            rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// Static configuration of [`PooledStripeClient`].
pub(crate) struct HttpSettings {
    /// `https://api.stripe.com` (no trailing slash; `/v1/...` is appended).
    pub(crate) api_base: String,
    /// `Bearer sk_...`, marked sensitive.
    pub(crate) authorization: HeaderValue,
    pub(crate) request_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) budget: super::budget::RequestBudget,
}

/// What went wrong sending a request to Stripe.
///
/// Never contains the secret key, and never the raw response body (a Stripe error body can embed
/// a whole PaymentIntent, client secret included); only the parsed `code`, `type` and `message`.
#[derive(Debug, thiserror::Error)]
pub enum StripeHttpError {
    #[error("could not build the request: {0}")]
    Build(String),
    #[error("connection error: {0}")]
    Connection(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("this replica's share of the Stripe request budget is exhausted")]
    OverBudget,
    #[error("gave up after {attempts} attempts; last error: {last}")]
    Exhausted {
        attempts: u32,
        last: Box<StripeHttpError>,
    },
    #[error("{0}")]
    Deserialize(String),
}

impl StripeClientErr for StripeHttpError {
    fn deserialize_err(msg: impl fmt::Display) -> Self {
        StripeHttpError::Deserialize(msg.to_string())
    }
}

/// Stripe's error body: `{"error": {"type": ..., "code": ..., "message": ..., ...}}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    type_: Option<String>,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
    param: Option<String>,
}

fn status_error(status: StatusCode, body: &[u8]) -> StripeHttpError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => {
            let message = error
                .message
                .or_else(|| {
                    error
                        .param
                        .as_ref()
                        .map(|p| format!("invalid parameter `{p}`"))
                })
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            StripeHttpError::Status {
                status: status.as_u16(),
                code: error.code.or(error.decline_code).or(error.type_),
                message,
            }
        }
        Err(_) => StripeHttpError::Status {
            status: status.as_u16(),
            code: None,
            message: format!(
                "HTTP {} with a body that is not a Stripe error object ({} bytes)",
                status.as_u16(),
                body.len()
            ),
        },
    }
}

/// One attempt's result, before the retry decision.
enum Attempt {
    Success(Bytes),
    Failed {
        error: StripeHttpError,
        retryable: bool,
        retry_after: Option<Duration>,
    },
}

/// Pooled keep-alive client implementing async-stripe's [`StripeClient`].
#[derive(Clone)]
pub struct PooledStripeClient {
    client: HyperClient,
    settings: Arc<HttpSettings>,
    counters: Arc<Counters>,
    user_agent: HeaderValue,
    stripe_version: HeaderValue,
}

impl fmt::Debug for PooledStripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledStripeClient")
            .field("api_base", &self.settings.api_base)
            .field("request_timeout", &self.settings.request_timeout)
            .field("retry", &self.settings.retry)
            .field("stripe_version", &self.stripe_version)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PooledStripeClient {
    pub(crate) fn new(settings: HttpSettings) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.set_connect_timeout(Some(settings.request_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let counters = Arc::new(Counters::default());
        let connector = CountingConnector {
            inner: https,
            counters: Arc::clone(&counters),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector);
        Ok(Self {
            client,
            settings: Arc::new(settings),
            counters,
            user_agent: HeaderValue::from_static(concat!(
                "paybridge/",
                env!("CARGO_PKG_VERSION"),
                " Stripe/v1 RustBindings/async-stripe-1.0.0-rc.10"
            )),
            stripe_version: HeaderValue::from_static(stripe_client_core::VERSION.as_str()),
        })
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            requests_sent: self.counters.requests_sent.load(Ordering::Relaxed),
            connections_opened: self.counters.connections_opened.load(Ordering::Relaxed),
        }
    }

    #[tracing::instrument(name = "stripe_http", skip_all, fields(method = ?req.method, path = %req.path))]
    async fn send(&self, req: PreparedRequest) -> Result<Bytes, StripeHttpError> {
        let policy = self.settings.retry;
        // Retrying is only safe when a replay cannot act twice: reads, or writes with an
        // idempotency key (Stripe replays the first answer for the same key).
        let may_retry = req.method == Method::GET || req.idempotency_key.is_some();
        let mut retries = 0u32;
        loop {
            if self.settings.budget.take(MAX_BUDGET_WAIT).await.is_err() {
                tracing::warn!("Stripe request budget exhausted; not sending");
                return Err(StripeHttpError::OverBudget);
            }
            self.counters.requests_sent.fetch_add(1, Ordering::Relaxed);
            let span = attempt_span(&req, retries + 1);
            let started = std::time::Instant::now();
            let attempt = self.attempt(&req).instrument(span.clone()).await;
            span.in_scope(|| record_attempt(&req, &attempt, started.elapsed()));
            if let Attempt::Failed {
                error: StripeHttpError::Status { status: 429, .. },
                retry_after,
                ..
            } = &attempt
            {
                self.settings.budget.back_off(
                    retry_after
                        .unwrap_or(policy.backoff(retries + 1))
                        .min(MAX_RETRY_AFTER),
                );
            }
            match attempt {
                Attempt::Success(body) => return Ok(body),
                Attempt::Failed {
                    error,
                    retryable,
                    retry_after,
                } => {
                    if !retryable || !may_retry {
                        tracing::debug!(error = %error, "stripe request failed, not retryable");
                        return Err(error);
                    }
                    if retries >= policy.max_retries {
                        tracing::warn!(error = %error, attempts = retries + 1, "stripe request failed, giving up");
                        return Err(StripeHttpError::Exhausted {
                            attempts: retries + 1,
                            last: Box::new(error),
                        });
                    }
                    retries += 1;
                    let mut delay = policy.backoff(retries);
                    if let Some(after) = retry_after {
                        delay = delay.max(after.min(MAX_RETRY_AFTER));
                    }
                    tracing::info!(error = %error, retry = retries, ?delay, "stripe request failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, req: &PreparedRequest) -> Attempt {
        let request = match self.build_request(req) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed {
                    error: StripeHttpError::Build(e),
                    retryable: false,
                    retry_after: None,
                };
            }
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| StripeHttpError::Connection(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| StripeHttpError::Connection(format!("reading the body: {e}")))?
                .to_bytes();
            Ok::<_, StripeHttpError>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(req.timeout, exchange).await {
            Err(_) => {
                return Attempt::Failed {
                    error: StripeHttpError::Timeout(req.timeout),
                    retryable: true,
                    retry_after: None,
                };
            }
            Ok(Err(error)) => {
                return Attempt::Failed {
                    error,
                    retryable: true,
                    retry_after: None,
                };
            }
            Ok(Ok(answer)) => answer,
        };
        let status = parts.status;
        if let Some(request_id) = parts.headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
            tracing::Span::current().record("stripe.request_id", request_id);
        }
        tracing::debug!(status = status.as_u16(), "stripe answered");
        if status.is_success() {
            return Attempt::Success(body);
        }
        let should_retry = parts
            .headers
            .get(STRIPE_SHOULD_RETRY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<bool>().ok());
        let retryable = match should_retry {
            Some(explicit) => explicit,
            None => matches!(status.as_u16(), 409 | 429 | 500..=599),
        };
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Attempt::Failed {
            error: status_error(status, &body),
            retryable,
            retry_after,
        }
    }

    fn build_request(&self, req: &PreparedRequest) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(&req.uri)
            .header(AUTHORIZATION, self.settings.authorization.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(STRIPE_VERSION, self.stripe_version.clone());
        if let Some(key) = &req.idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY, key.clone());
        }
        if let Some(account) = &req.account {
            builder = builder.header(STRIPE_ACCOUNT, account.clone());
        }
        let body = match &req.body {
            Some(body) => {
                builder = builder.header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                body.clone()
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).map_err(|e| e.to_string())
    }

    fn prepare(&self, req: CustomizedStripeRequest) -> Result<PreparedRequest, StripeHttpError> {
        let (request, config) = req.into_pieces();
        let method = match request.method {
            StripeMethod::Get => Method::GET,
            StripeMethod::Post => Method::POST,
            StripeMethod::Delete => Method::DELETE,
        };
        let mut uri = format!("{}/v1{}", self.settings.api_base, request.path);
        if let Some(query) = request.query.as_deref().filter(|q| !q.is_empty()) {
            uri.push('?');
            uri.push_str(query);
        }
        let uri =
            Uri::try_from(uri).map_err(|e| StripeHttpError::Build(format!("bad URI: {e}")))?;
        let idempotency_key = config
            .request_strategy
            .as_ref()
            .and_then(|s| s.get_key())
            .map(|k| HeaderValue::try_from(k.as_str()))
            .transpose()
            .map_err(|_| {
                StripeHttpError::Build("idempotency key is not a valid header value".to_owned())
            })?;
        let account = config
            .account_id
            .as_ref()
            .map(|a| HeaderValue::try_from(a.as_str()))
            .transpose()
            .map_err(|_| {
                StripeHttpError::Build("account id is not a valid header value".to_owned())
            })?;
        Ok(PreparedRequest {
            method,
            path: request.path,
            uri,
            body: request.body.map(Bytes::from),
            idempotency_key,
            account,
            timeout: config.timeout.unwrap_or(self.settings.request_timeout),
        })
    }
}

/// A request ready to be sent (and re-sent unchanged on retries).
struct PreparedRequest {
    method: Method,
    path: String,
    uri: Uri,
    body: Option<Bytes>,
    idempotency_key: Option<HeaderValue>,
    account: Option<HeaderValue>,
    timeout: Duration,
}

/// `e` and its sources, so "client error (Connect)" says *why* (e.g. "Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl StripeClient for PooledStripeClient {
    type Err = StripeHttpError;

    async fn execute(&self, req: CustomizedStripeRequest) -> Result<Bytes, StripeHttpError> {
        let prepared = self.prepare(req)?;
        self.send(prepared).await
    }
}

/// A per-call view of the client that keeps the successful response body, so that when
/// async-stripe's miniserde parse fails ("error deserializing request data") the adapter can
/// re-read the body and say what was wrong with it.
pub(crate) struct RecordingClient<'a> {
    inner: &'a PooledStripeClient,
    body: std::sync::Mutex<Option<Bytes>>,
}

impl<'a> RecordingClient<'a> {
    pub(crate) fn new(inner: &'a PooledStripeClient) -> Self {
        Self {
            inner,
            body: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn take_body(&self) -> Option<Bytes> {
        self.body.lock().ok().and_then(|mut b| b.take())
    }
}

impl StripeClient for RecordingClient<'_> {
    type Err = StripeHttpError;

    async fn execute(&self, req: CustomizedStripeRequest) -> Result<Bytes, StripeHttpError> {
        let body = self.inner.execute(req).await?;
        if let Ok(mut slot) = self.body.lock() {
            *slot = Some(body.clone());
        }
        Ok(body)
    }
}

/// One attempt's client span: the operation (ids templated), and once answered Stripe's request
/// id, the outcome and the HTTP status. Never the key, the body or the idempotency key.
fn attempt_span(req: &PreparedRequest, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "stripe request",
        otel.name = crate::metrics::stripe_operation(req.method.as_str(), &req.path),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method,
        server.address = req.uri.host().unwrap_or_default(),
        attempt,
        stripe.request_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    )
}

/// Counts an attempt in the metrics by operation (ids templated) and outcome, and writes the
/// outcome on its span (the current one).
fn record_attempt(req: &PreparedRequest, attempt: &Attempt, took: Duration) {
    use crate::metrics::{METRICS, MethodLabels, StripeLabels, stripe_operation};
    let outcome = match attempt {
        Attempt::Success(_) => "ok".to_owned(),
        Attempt::Failed { error, .. } => match error {
            StripeHttpError::Status { status, .. } => status.to_string(),
            StripeHttpError::Timeout(_) => "timeout".to_owned(),
            StripeHttpError::Connection(_) => "connection".to_owned(),
            _ => "error".to_owned(),
        },
    };
    let span = tracing::Span::current();
    span.record("outcome", outcome.as_str());
    if let Attempt::Failed {
        error: StripeHttpError::Status { status, .. },
        ..
    } = attempt
    {
        span.record("http.response.status_code", *status);
    } else if matches!(attempt, Attempt::Success(_)) {
        span.record("http.response.status_code", 200);
    }
    if !matches!(attempt, Attempt::Success(_)) {
        span.record("otel.status_code", "ERROR");
    }
    METRICS
        .stripe_requests
        .get_or_create(&StripeLabels {
            operation: stripe_operation(req.method.as_str(), &req.path),
            outcome,
        })
        .inc();
    let method = if req.method == Method::GET {
        "GET"
    } else {
        "POST"
    };
    crate::metrics::observe_latency(
        &METRICS
            .stripe_duration
            .get_or_create(&MethodLabels { method }),
        took.as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn stripe_error_bodies_are_read_without_keeping_the_body() {
        let body = br#"{"error":{"type":"card_error","code":"card_declined","message":"Declined.",
            "payment_intent":{"client_secret":"pi_1_secret_x"}}}"#;
        match status_error(StatusCode::PAYMENT_REQUIRED, body) {
            StripeHttpError::Status {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 402);
                assert_eq!(code.as_deref(), Some("card_declined"));
                assert_eq!(message, "Declined.");
            }
            other => panic!("{other:?}"),
        }
        let text = status_error(StatusCode::BAD_GATEWAY, b"<html>pi_1_secret_x</html>").to_string();
        assert!(!text.contains("secret"), "{text}");
    }
}
