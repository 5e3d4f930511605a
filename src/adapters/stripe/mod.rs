//! The Stripe adapter: [`PaymentProvider`] on async-stripe 1.0.0-rc.10 request types, sent
//! through a pooled keep-alive HTTP client ([`PooledStripeClient`]).
//!
//! What is sent to Stripe (form-encoded, `Stripe-Version` fixed by async-stripe):
//!
//! | call | request | form fields | `Idempotency-Key` |
//! |---|---|---|---|
//! | `create_customer` | `POST /v1/customers` | `email`, `name` (if any), `metadata[k]` | the request's key |
//! | `create_payment_intent` | `POST /v1/payment_intents` | `amount`, `currency`, `capture_method=manual` (if manual), `customer` (if any), `description` (if any), `metadata[k]` | the request's key |
//! | `retrieve_payment_intent` | `GET /v1/payment_intents/{id}` | none | none |
//! | `cancel_payment_intent` | `POST /v1/payment_intents/{id}/cancel` | none (empty body) | the given key |
//! | `capture_payment_intent` | `POST /v1/payment_intents/{id}/capture` | `amount_to_capture` | the given key |
//! | `retrieve_charge` | `GET /v1/charges/{id}` | none | none |
//! | `list_disputes` | `GET /v1/disputes?limit=100&payment_intent=…[&starting_after=…]` | none | none |
//! | `create_refund` | `POST /v1/refunds` | `amount`, `payment_intent`, `reason` (if any), `metadata[k]` | the request's key |
//! | `retrieve_refund` | `GET /v1/refunds/{id}` | none | none |
//! | `list_refunds` | `GET /v1/refunds?limit=100&payment_intent=…[&starting_after=…]` | none | none |
//! | `list_recent_refunds` | `GET /v1/refunds?created[gte]=…&limit=…[&starting_after=…]` | none | none |
//!
//! Lists are read page by page (`starting_after` the last id while `has_more`). Disputes are
//! read with serde, field by field (`mapping::DisputeObject`), not as async-stripe's whole
//! Dispute: paybridge keeps only its status, reason, amount, evidence deadline and
//! refundability.
//!
//! PaymentIntents are created unconfirmed (no `confirm`), without `payment_method_types` or
//! `automatic_payment_methods`: since API version 2023-08-16 Stripe enables automatic payment
//! methods by default, and the platform's page confirms with Stripe.js.

mod budget;
mod mapping;
mod transport;
pub mod webhook;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use stripe_client_core::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CapturePaymentIntent, CreatePaymentIntent, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, CreateRefundReason, ListRefund, RetrieveRefund};
use url::Url;

use self::mapping::{
    CHARGE_REQUIRED, CUSTOMER_REQUIRED, ChargeObject, DISPUTE_REQUIRED, DisputeObject, Kind,
    PAYMENT_INTENT_REQUIRED, REFUND_REQUIRED, explain_list_parse_failure, explain_parse_failure,
    map_http_error, to_provider_charge, to_provider_dispute, to_provider_intent,
    to_provider_refund,
};
pub use self::transport::{ConnectionStats, PooledStripeClient, StripeHttpError};
use self::transport::{HttpSettings, RecordingClient, RetryPolicy};
use crate::app::ports::{
    NewCustomer, NewPaymentIntent, NewRefund, PaymentProvider, ProviderCharge, ProviderDispute,
    ProviderError, ProviderIntent, ProviderRefund,
};
use crate::domain::{CaptureMethod, RefundReason};

/// `GET /v1/disputes` of one PaymentIntent, one page, its answer read as plain JSON (then by
/// serde): async-stripe's Dispute requires far more than paybridge reads.
#[derive(Debug, serde::Serialize)]
struct ListDisputes<'a> {
    limit: u32,
    payment_intent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<&'a str>,
}

impl StripeRequest for ListDisputes<'_> {
    type Output = miniserde::json::Value;

    fn build(&self) -> stripe_client_core::RequestBuilder {
        stripe_client_core::RequestBuilder::new(stripe_client_core::StripeMethod::Get, "/disputes")
            .query(self)
    }
}

/// Stripe's API base.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// Default per-attempt timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Stripe's largest page of a list.
const LIST_PAGE_LIMIT: u32 = 100;
/// Pages read for one list at most: a guard against a server that always says `has_more` (a
/// payment's refunds are each at least one minor unit, so real lists end far earlier).
const MAX_LIST_PAGES: usize = 100;
/// Default Stripe request budget: safe under test mode's 25 requests/s.
pub const DEFAULT_MAX_REQUESTS_PER_SECOND: u32 = 20;
/// First backoff step (doubled per retry, with jitter).
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(500);
/// Largest backoff step.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// How to reach Stripe. `Debug` never shows the secret key.
#[derive(Clone)]
pub struct StripeConfig {
    /// `sk_live_…` / `sk_test_…` (or a restricted `rk_…` key).
    pub secret_key: SecretString,
    /// Default `https://api.stripe.com`; `http://` is allowed for local fakes (tests, localstripe).
    pub api_base: Url,
    /// Per attempt (connect + request + response body); retries get a fresh budget.
    pub request_timeout: Duration,
    /// Retries after the first attempt on connection errors, timeouts, 409, 429 and 5xx.
    pub max_retries: u32,
    /// The account's Stripe request budget (every attempt counts); Stripe allows 25/s in test
    /// mode and 100/s live, shared by everything the account does. Replicas on one PostgreSQL
    /// share it (see [`StripeBudget`]).
    pub max_requests_per_second: u32,
}

impl StripeConfig {
    /// The defaults: Stripe's API base, 10 s per attempt, 2 retries, 20 requests/s.
    pub fn new(secret_key: SecretString) -> Self {
        Self {
            secret_key,
            api_base: Url::parse(DEFAULT_API_BASE).expect("valid default URL"),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            max_requests_per_second: DEFAULT_MAX_REQUESTS_PER_SECOND,
        }
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("secret_key", &"[redacted]")
            .field("api_base", &self.api_base.as_str())
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Why a [`StripeConfig`] cannot be used. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum StripeConfigError {
    #[error("Stripe secret key must start with `sk_` or `rk_` and contain only visible ASCII")]
    InvalidSecretKey,
    #[error("Stripe API base `{0}` must be an http(s) URL with a host and no query or fragment")]
    InvalidApiBase(String),
    #[error("Stripe request timeout must be greater than zero")]
    InvalidTimeout,
    #[error("could not set up the Stripe HTTP client: {0}")]
    Client(String),
}

/// [`PaymentProvider`] backed by Stripe. Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct StripeProvider {
    client: PooledStripeClient,
    budget: StripeBudget,
}

/// The provider's request budget, as the replicas sharing one Stripe account see it: the
/// account's budget (`PAYBRIDGE_STRIPE_MAX_RPS`) and this process's share of it. Alone (SQLite),
/// the share is the whole budget.
#[derive(Debug, Clone)]
pub struct StripeBudget {
    budget: budget::RequestBudget,
    account_per_second: u32,
}

impl StripeBudget {
    /// The account's budget, requests per second.
    pub fn account_per_second(&self) -> u32 {
        self.account_per_second
    }

    /// This process's rate now, requests per second.
    pub fn share_per_second(&self) -> f64 {
        self.budget.rate()
    }

    /// Sends at `fraction` (0 to 1) of the account's budget from now on, requests already
    /// waiting included.
    pub fn set_share(&self, fraction: f64) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.budget
            .set_rate(f64::from(self.account_per_second) * fraction);
    }
}

impl fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeProvider")
            .field("client", &self.client)
            .finish()
    }
}

impl StripeProvider {
    /// Validates the configuration and builds the pooled client (no network access yet).
    pub fn new(config: StripeConfig) -> Result<Self, StripeConfigError> {
        Self::with_retry_backoff(config, DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY)
    }

    /// Like [`StripeProvider::new`] with other backoff steps (tests use milliseconds).
    pub fn with_retry_backoff(
        config: StripeConfig,
        base_delay: Duration,
        max_delay: Duration,
    ) -> Result<Self, StripeConfigError> {
        let key = config.secret_key.expose_secret();
        let key_ok = (key.starts_with("sk_") || key.starts_with("rk_"))
            && key.len() > 3
            && key.bytes().all(|b| b.is_ascii_graphic());
        if !key_ok {
            return Err(StripeConfigError::InvalidSecretKey);
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| StripeConfigError::InvalidSecretKey)?;
        authorization.set_sensitive(true);

        let base = &config.api_base;
        if !matches!(base.scheme(), "http" | "https")
            || base.host_str().is_none()
            || base.query().is_some()
            || base.fragment().is_some()
            || !base.username().is_empty()
            || base.password().is_some()
        {
            let mut shown = base.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            return Err(StripeConfigError::InvalidApiBase(shown.to_string()));
        }
        if config.request_timeout.is_zero() {
            return Err(StripeConfigError::InvalidTimeout);
        }
        let budget = budget::RequestBudget::new(config.max_requests_per_second);
        let client = PooledStripeClient::new(HttpSettings {
            api_base: base.as_str().trim_end_matches('/').to_owned(),
            authorization,
            request_timeout: config.request_timeout,
            budget: budget.clone(),
            retry: RetryPolicy {
                max_retries: config.max_retries,
                base_delay,
                max_delay: max_delay.max(base_delay),
            },
        })
        .map_err(StripeConfigError::Client)?;
        Ok(Self {
            client,
            budget: StripeBudget {
                budget,
                account_per_second: config.max_requests_per_second.max(1),
            },
        })
    }

    /// The request budget every request of this provider (and its clones) spends.
    pub fn budget(&self) -> &StripeBudget {
        &self.budget
    }

    /// Requests sent and connections opened so far.
    pub fn stats(&self) -> ConnectionStats {
        self.client.stats()
    }

    /// The underlying client, for other async-stripe requests.
    pub fn client(&self) -> &PooledStripeClient {
        &self.client
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, ProviderError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| ProviderError::Unexpected(format!("unusable idempotency key: {e}")))
}

/// Stripe object ids are `[A-Za-z0-9_]`; anything else cannot exist there (and must not be
/// spliced into a URL path).
fn valid_object_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl StripeProvider {
    /// Sends a request; on a parse failure, names what was wrong with the body (a `kind` object
    /// needs the `required` fields).
    async fn send_object<R>(
        &self,
        request: &R,
        strategy: RequestStrategy,
        kind: &str,
        required: &[(&str, Kind)],
    ) -> Result<R::Output, ProviderError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let recorder = RecordingClient::new(&self.client);
        match request
            .customize()
            .request_strategy(strategy)
            .send(&recorder)
            .await
        {
            Ok(object) => Ok(object),
            Err(StripeHttpError::Deserialize(_)) => Err(explain_parse_failure(
                kind,
                recorder.take_body().as_deref(),
                required,
            )),
            Err(e) => Err(map_http_error(e)),
        }
    }

    /// Sends a PaymentIntent request.
    async fn send_intent<R>(
        &self,
        request: &R,
        strategy: RequestStrategy,
    ) -> Result<ProviderIntent, ProviderError>
    where
        R: StripeRequest<Output = stripe_shared::PaymentIntent>,
    {
        let pi = self
            .send_object(request, strategy, "PaymentIntent", PAYMENT_INTENT_REQUIRED)
            .await?;
        let intent = to_provider_intent(pi)?;
        tracing::Span::current().record("payment_intent", intent.id.as_str());
        tracing::Span::current().record("status", intent.status.as_str());
        Ok(intent)
    }

    /// Sends a Refund request.
    async fn send_refund<R>(
        &self,
        request: &R,
        strategy: RequestStrategy,
    ) -> Result<ProviderRefund, ProviderError>
    where
        R: StripeRequest<Output = stripe_shared::Refund>,
    {
        let refund = self
            .send_object(request, strategy, "Refund", REFUND_REQUIRED)
            .await?;
        let refund = to_provider_refund(refund)?;
        tracing::Span::current().record("refund", refund.id.as_str());
        tracing::Span::current().record("status", refund.status.as_str());
        Ok(refund)
    }

    /// Reads refunds page by page, newest first, until Stripe has no more or `limit` are read.
    /// `list` is the request without its page (`limit`, `starting_after`).
    async fn list_refund_pages(
        &self,
        list: ListRefund,
        limit: usize,
    ) -> Result<Vec<ProviderRefund>, ProviderError> {
        let mut refunds = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let wanted = (limit - refunds.len()).min(LIST_PAGE_LIMIT as usize);
            let mut page = list.clone().limit(wanted as i64);
            if let Some(after) = &after {
                page = page.starting_after(after.as_str());
            }
            let recorder = RecordingClient::new(&self.client);
            let answer = match page.customize().send(&recorder).await {
                Ok(answer) => answer,
                Err(StripeHttpError::Deserialize(_)) => {
                    return Err(explain_list_parse_failure(
                        "list of Refunds",
                        recorder.take_body().as_deref(),
                        REFUND_REQUIRED,
                    ));
                }
                Err(e) => return Err(map_http_error(e)),
            };
            let last = answer.data.last().map(|r| r.id.as_str().to_owned());
            for refund in answer.data {
                refunds.push(to_provider_refund(refund)?);
            }
            match last {
                Some(last) if answer.has_more && refunds.len() < limit => after = Some(last),
                None if answer.has_more => {
                    return Err(ProviderError::Unexpected(
                        "Stripe sent an empty page of Refunds that has more".to_owned(),
                    ));
                }
                _ => {
                    refunds.truncate(limit);
                    tracing::Span::current().record("refunds", refunds.len());
                    return Ok(refunds);
                }
            }
        }
        Err(ProviderError::Unexpected(format!(
            "Stripe's list of Refunds did not end within {MAX_LIST_PAGES} pages"
        )))
    }
}

/// `GET /v1/charges/{id}`, its answer read as plain JSON (then by serde): paybridge reads only a
/// charge's intent and its authorization's deadline.
#[derive(Debug)]
struct RetrieveChargeJson<'a>(&'a str);

impl StripeRequest for RetrieveChargeJson<'_> {
    type Output = miniserde::json::Value;

    fn build(&self) -> stripe_client_core::RequestBuilder {
        stripe_client_core::RequestBuilder::new(
            stripe_client_core::StripeMethod::Get,
            format!("/charges/{}", self.0),
        )
    }
}

impl StripeProvider {
    /// Reads a list of disputes page by page (all of them, at most [`MAX_LIST_PAGES`] pages).
    async fn list_dispute_pages(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderDispute>, ProviderError> {
        #[derive(serde::Deserialize)]
        struct Page {
            data: Vec<serde_json::Value>,
            has_more: bool,
        }
        let mut disputes = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = ListDisputes {
                limit: LIST_PAGE_LIMIT,
                payment_intent,
                starting_after: after.as_deref(),
            };
            let value = page
                .customize()
                .send(&self.client)
                .await
                .map_err(map_http_error)?;
            let text = miniserde::json::to_string(&value);
            let page: Page = serde_json::from_str(&text).map_err(|_| {
                explain_list_parse_failure(
                    "list of Disputes",
                    Some(text.as_bytes()),
                    DISPUTE_REQUIRED,
                )
            })?;
            let mut last = None;
            for item in page.data {
                let object: DisputeObject = serde_json::from_value(item.clone()).map_err(|_| {
                    explain_parse_failure(
                        "Dispute",
                        Some(item.to_string().as_bytes()),
                        DISPUTE_REQUIRED,
                    )
                })?;
                let dispute = to_provider_dispute(object)?;
                last = Some(dispute.dispute.id.clone());
                disputes.push(dispute);
            }
            match last {
                Some(last) if page.has_more => after = Some(last),
                None if page.has_more => {
                    return Err(ProviderError::Unexpected(
                        "Stripe sent an empty page of Disputes that has more".to_owned(),
                    ));
                }
                _ => return Ok(disputes),
            }
        }
        Err(ProviderError::Unexpected(format!(
            "Stripe's list of Disputes did not end within {MAX_LIST_PAGES} pages"
        )))
    }
}

fn create_refund_reason(reason: RefundReason) -> CreateRefundReason {
    match reason {
        RefundReason::RequestedByCustomer => CreateRefundReason::RequestedByCustomer,
        RefundReason::Duplicate => CreateRefundReason::Duplicate,
        RefundReason::Fraudulent => CreateRefundReason::Fraudulent,
    }
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    #[tracing::instrument(skip_all, fields(idempotency_key = %customer.idempotency_key, customer_id))]
    async fn create_customer(&self, customer: NewCustomer) -> Result<String, ProviderError> {
        let mut request = CreateCustomer::new().email(customer.email);
        if let Some(name) = customer.name {
            request = request.name(name);
        }
        if !customer.metadata.is_empty() {
            request = request.metadata(customer.metadata.into_iter().collect::<HashMap<_, _>>());
        }
        let created = self
            .send_object(
                &request,
                idempotent(&customer.idempotency_key)?,
                "Customer",
                CUSTOMER_REQUIRED,
            )
            .await?;
        let id = created.id.as_str().to_owned();
        tracing::Span::current().record("customer_id", id.as_str());
        Ok(id)
    }

    #[tracing::instrument(
        skip_all,
        fields(
            amount = intent.amount,
            currency = %intent.currency,
            idempotency_key = %intent.idempotency_key,
            payment_intent,
            status,
        )
    )]
    async fn create_payment_intent(
        &self,
        intent: NewPaymentIntent,
    ) -> Result<ProviderIntent, ProviderError> {
        let strategy = idempotent(&intent.idempotency_key)?;
        let currency = stripe_types::Currency::from_str(&intent.currency)
            .unwrap_or_else(|never| match never {});
        let mut request = CreatePaymentIntent::new(intent.amount, currency);
        if let Some(customer) = intent.customer {
            request = request.customer(customer);
        }
        if let Some(description) = intent.description {
            request = request.description(description);
        }
        if intent.capture_method == CaptureMethod::Manual {
            request = request.capture_method(stripe_shared::PaymentIntentCaptureMethod::Manual);
        }
        if !intent.metadata.is_empty() {
            request = request.metadata(intent.metadata.into_iter().collect::<HashMap<_, _>>());
        }
        self.send_intent(&request, strategy).await
    }

    #[tracing::instrument(skip_all, fields(payment_intent = %id, status))]
    async fn retrieve_payment_intent(&self, id: &str) -> Result<ProviderIntent, ProviderError> {
        if !valid_object_id(id) {
            return Err(ProviderError::NotFound);
        }
        self.send_intent(&RetrievePaymentIntent::new(id), RequestStrategy::Once)
            .await
    }

    #[tracing::instrument(skip_all, fields(payment_intent = %id, status))]
    async fn cancel_payment_intent(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError> {
        if !valid_object_id(id) {
            return Err(ProviderError::NotFound);
        }
        let strategy = idempotent(idempotency_key)?;
        self.send_intent(&CancelPaymentIntent::new(id), strategy)
            .await
    }

    #[tracing::instrument(
        skip_all,
        fields(
            payment_intent = %refund.payment_intent,
            amount = refund.amount,
            idempotency_key = %refund.idempotency_key,
            refund,
            status,
        )
    )]
    async fn create_refund(&self, refund: NewRefund) -> Result<ProviderRefund, ProviderError> {
        let strategy = idempotent(&refund.idempotency_key)?;
        let mut request = CreateRefund::new()
            .payment_intent(refund.payment_intent)
            .amount(refund.amount);
        if let Some(reason) = refund.reason {
            request = request.reason(create_refund_reason(reason));
        }
        if !refund.metadata.is_empty() {
            request = request.metadata(refund.metadata.into_iter().collect::<HashMap<_, _>>());
        }
        self.send_refund(&request, strategy).await
    }

    #[tracing::instrument(skip_all, fields(refund = %id, status))]
    async fn retrieve_refund(&self, id: &str) -> Result<ProviderRefund, ProviderError> {
        if !valid_object_id(id) {
            return Err(ProviderError::NotFound);
        }
        self.send_refund(&RetrieveRefund::new(id), RequestStrategy::Once)
            .await
    }

    #[tracing::instrument(skip_all, fields(payment_intent = %payment_intent, refunds))]
    async fn list_refunds(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderRefund>, ProviderError> {
        if !valid_object_id(payment_intent) {
            return Err(ProviderError::NotFound);
        }
        self.list_refund_pages(ListRefund::new().payment_intent(payment_intent), usize::MAX)
            .await
    }

    #[tracing::instrument(skip_all, fields(payment_intent = %id, amount_to_capture, status))]
    async fn capture_payment_intent(
        &self,
        id: &str,
        amount_to_capture: i64,
        idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError> {
        if !valid_object_id(id) {
            return Err(ProviderError::NotFound);
        }
        let strategy = idempotent(idempotency_key)?;
        let request = CapturePaymentIntent::new(id).amount_to_capture(amount_to_capture);
        self.send_intent(&request, strategy).await
    }

    #[tracing::instrument(skip_all, fields(charge = %id))]
    async fn retrieve_charge(&self, id: &str) -> Result<ProviderCharge, ProviderError> {
        if !valid_object_id(id) {
            return Err(ProviderError::NotFound);
        }
        let value = RetrieveChargeJson(id)
            .customize()
            .send(&self.client)
            .await
            .map_err(map_http_error)?;
        let text = miniserde::json::to_string(&value);
        let object: ChargeObject = serde_json::from_str(&text)
            .map_err(|_| explain_parse_failure("Charge", Some(text.as_bytes()), CHARGE_REQUIRED))?;
        to_provider_charge(object)
    }

    #[tracing::instrument(skip_all, fields(payment_intent = %payment_intent))]
    async fn list_disputes(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderDispute>, ProviderError> {
        if !valid_object_id(payment_intent) {
            return Err(ProviderError::NotFound);
        }
        self.list_dispute_pages(payment_intent).await
    }

    #[tracing::instrument(skip_all, fields(created_since = created_since, limit = limit, refunds))]
    async fn list_recent_refunds(
        &self,
        created_since: i64,
        limit: u32,
    ) -> Result<Vec<ProviderRefund>, ProviderError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let list = ListRefund::new().created(stripe_types::RangeQueryTs::gte(created_since));
        self.list_refund_pages(list, limit as usize).await
    }
}
