//! The gRPC channel to the core, with the gateway's credential on every call.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use url::Url;

use crate::pb::v1 as pb;
use crate::pb::v1::payment_service_client::PaymentServiceClient;

/// The gRPC service whose health `/readyz` reports.
const PAYMENT_SERVICE_NAME: &str = "paybridge.v1.PaymentService";

/// Adds `authorization: Bearer <token>` to every call, marked sensitive so no layer prints it.
#[derive(Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// `None` when the token cannot be a header value.
    pub fn new(token: &str) -> Option<BearerToken> {
        let mut header: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).ok()?;
        header.set_sensitive(true);
        Some(BearerToken(header))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The core, as the gateway calls it. Cheap to clone; the channel is shared.
#[derive(Debug, Clone)]
pub struct CoreClient {
    payments: PaymentServiceClient<InterceptedService<Channel, BearerToken>>,
    health: HealthClient<Channel>,
}

impl CoreClient {
    /// A lazy channel: nothing connects until the first call, and a lost connection (the core
    /// restarting) is re-established on the next call.
    pub fn new(
        core_url: &Url,
        token: &SecretString,
        timeout: Duration,
    ) -> anyhow::Result<CoreClient> {
        let endpoint = Endpoint::from_shared(core_url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .tcp_nodelay(true)
            // Notice a core that vanished without closing the connection.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        let bearer = BearerToken::new(token.expose_secret()).ok_or_else(|| {
            anyhow::anyhow!("PAYBRIDGE_GATEWAY_TOKEN is not a valid header value")
        })?;
        Ok(CoreClient {
            payments: PaymentServiceClient::with_interceptor(channel.clone(), bearer),
            health: HealthClient::new(channel),
        })
    }

    pub(super) async fn verify_return(
        &self,
        request: pb::VerifyReturnRequest,
    ) -> Result<pb::VerifyReturnResponse, tonic::Status> {
        self.payments
            .clone()
            .verify_return(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(super) async fn handle_stripe_event(
        &self,
        request: pb::HandleStripeEventRequest,
    ) -> Result<pb::HandleStripeEventResponse, tonic::Status> {
        self.payments
            .clone()
            .handle_stripe_event(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(super) async fn resolve_payment_link(
        &self,
        request: pb::ResolvePaymentLinkRequest,
    ) -> Result<pb::PaymentPage, tonic::Status> {
        self.payments
            .clone()
            .resolve_payment_link(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Whether the core reports its payment service SERVING (database up and migrated).
    pub(super) async fn is_serving(&self) -> bool {
        let mut health = self.health.clone();
        let check = health.check(tonic_health::pb::HealthCheckRequest {
            service: PAYMENT_SERVICE_NAME.to_owned(),
        });
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
            Ok(Err(status)) => {
                tracing::debug!(code = ?status.code(), "core health check failed");
                false
            }
            Err(_) => false,
        }
    }
}
