//! Prometheus metrics and the admin endpoint that serves them (`GET /metrics` on
//! `PAYBRIDGE_ADMIN_ADDR` for `serve`, `PAYBRIDGE_GATEWAY_ADMIN_ADDR` for the gateway).
//!
//! Labels take only bounded values: method names from a fixed list, status codes, operation
//! templates with ids replaced, event types from a fixed list. Never an id, a key or a secret.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeLabels {
    /// e.g. `POST /v1/payment_intents/{id}/cancel`
    pub operation: String,
    /// `ok`, an HTTP status (`404`, `429`, `500`…), `timeout` or `connection`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event_type: &'static str,
    pub result: &'static str,
}

/// A status change of a payment, or of a refund: its statuses (`none` for a first event) and its
/// source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
    pub source: &'static str,
}

/// What caused a change (an `EventSource` name).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconciledLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub route: &'static str,
    pub status: u16,
}

/// A tenant's id: bounded by the tenants file.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `delivered`, `refused` (a non-2xx answer), `timeout` or `unreachable`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// A file `serve` reloads (`tenants`, `tls`) and what became of a changed one.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub file: &'static str,
    /// `applied` or `rejected`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: &'static str,
}

/// An exemplar's labels: the trace of one observation (OpenMetrics exemplars; only while spans
/// are exported, see `telemetry::exemplar_trace_id`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    pub trace_id: String,
}

/// A latency histogram whose buckets carry the trace of their latest observation.
pub type LatencyHistogram = HistogramWithExemplars<TraceLabels>;

/// Records `seconds` in `histogram`, with the current span's trace id as its exemplar when spans
/// are exported.
pub fn observe_latency(histogram: &LatencyHistogram, seconds: f64) {
    let exemplar = crate::telemetry::exemplar_trace_id().map(|trace_id| TraceLabels { trace_id });
    histogram.observe(seconds, exemplar, None);
}

/// A metric family whose `# HELP` and `# TYPE` are written even before its first series, so
/// that every family the dashboard and the alerts name is in `/metrics` from the start (an empty
/// family is valid OpenMetrics).
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: Family<MethodLabels, LatencyHistogram>,
    pub stripe_requests: Family<StripeLabels, Counter>,
    pub stripe_duration: Family<MethodLabels, LatencyHistogram>,
    pub webhook_events: Family<WebhookLabels, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub refund_transitions: Family<TransitionLabels, Counter>,
    pub reconciler_sweeps: Family<SweepLabels, Counter>,
    pub reconciled_payments: Family<ReconciledLabels, Counter>,
    pub refund_requests: Family<OutcomeLabels, Counter>,
    pub reconciled_refunds: Family<ReconciledLabels, Counter>,
    pub gateway_requests: Family<GatewayLabels, Counter>,
    pub gateway_duration: Family<RouteLabels, LatencyHistogram>,
    pub pushes: Family<PushLabels, Counter>,
    pub push_given_up: Family<TenantLabels, Counter>,
    pub push_oldest_undelivered_age: Family<TenantLabels, Gauge>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_file_rejected: Family<FileLabels, Gauge>,
    /// Payments in a status they should soon leave (`creating`, `processing`), by status.
    pub transient_payments: Family<StatusLabels, Gauge>,
    /// Seconds since the oldest of those last changed, by status (0 when there is none).
    pub transient_oldest_age: Family<StatusLabels, Gauge>,
    /// 1 while the core reports SERVING (database up and migrated), else 0.
    pub ready: Gauge,
    pub capture_requests: Family<OutcomeLabels, Counter>,
    pub dispute_changes: Family<SourceLabels, Counter>,
    pub authorizations_expiring: Gauge,
}

fn latency_histogram() -> LatencyHistogram {
    // 1 ms … ~16 s
    HistogramWithExemplars::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paybridge");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            Listed(rpc_requests.clone()),
        );
        let rpc_duration = Family::<MethodLabels, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency by method",
            Listed(rpc_duration.clone()),
        );
        let stripe_requests = Family::<StripeLabels, Counter>::default();
        registry.register(
            "stripe_requests",
            "Stripe API requests (each attempt) by operation and outcome",
            Listed(stripe_requests.clone()),
        );
        let stripe_duration = Family::<MethodLabels, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        registry.register(
            "stripe_request_duration_seconds",
            "Stripe API request latency by HTTP method",
            Listed(stripe_duration.clone()),
        );
        let webhook_events = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Stripe webhook events by type and result",
            Listed(webhook_events.clone()),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "payment_transitions",
            "Payment status changes by from, to and source",
            Listed(transitions.clone()),
        );
        let refund_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "refund_transitions",
            "Refund status changes by from, to and source",
            Listed(refund_transitions.clone()),
        );
        let reconciler_sweeps = Family::<SweepLabels, Counter>::default();
        registry.register(
            "reconciler_sweeps",
            "Reconciler sweeps by result",
            Listed(reconciler_sweeps.clone()),
        );
        let reconciled_payments = Family::<ReconciledLabels, Counter>::default();
        registry.register(
            "reconciler_payments",
            "Payments the reconciler checked, changed or failed to check",
            Listed(reconciled_payments.clone()),
        );
        let refund_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "refund_requests",
            "RefundPayment calls by outcome (created, replayed, not_refundable, disputed, \
             exceeds_remaining, \
             key_reused, stripe_refused, stripe_unavailable, not_found, error)",
            Listed(refund_requests.clone()),
        );
        let reconciled_refunds = Family::<ReconciledLabels, Counter>::default();
        registry.register(
            "reconciler_refunds",
            "Refunds the reconciler checked, changed, found made at Stripe directly, or failed to \
             check",
            Listed(reconciled_refunds.clone()),
        );
        let gateway_requests = Family::<GatewayLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Gateway HTTP requests by route and status",
            Listed(gateway_requests.clone()),
        );
        let gateway_duration = Family::<RouteLabels, LatencyHistogram>::new_with_constructor(
            latency_histogram as fn() -> LatencyHistogram,
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Gateway HTTP request latency by route",
            Listed(gateway_duration.clone()),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "pushes",
            "Event pushes to tenants' webhook_url (each attempt) by result: delivered, refused \
             (a non-2xx answer), timeout, unreachable",
            Listed(pushes.clone()),
        );
        let push_given_up = Family::<TenantLabels, Counter>::default();
        registry.register(
            "push_events_given_up",
            "Events whose push kept failing for PAYBRIDGE_PUSH_RETRY_FOR, given up, by tenant",
            Listed(push_given_up.clone()),
        );
        let push_oldest_undelivered_age = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "push_oldest_undelivered_age_seconds",
            "Age of the oldest event not yet pushed to the tenant (0 when caught up)",
            Listed(push_oldest_undelivered_age.clone()),
        );
        let transient_payments = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "payments_transient",
            "Payments in a status they should soon leave (creating, processing), by status; \
             counted by the reconciler's sweeps",
            Listed(transient_payments.clone()),
        );
        let transient_oldest_age = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "payments_transient_oldest_age_seconds",
            "Seconds since the oldest payment in the status last changed (0 when there is none); \
             measured by the reconciler's sweeps",
            Listed(transient_oldest_age.clone()),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the core reports SERVING (its database answers and is migrated), else 0",
            Listed(ready.clone()),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Changed files serve read again (tenants, tls) by result: applied, or rejected (the \
             previous one stays in use)",
            config_reloads.clone(),
        );
        let config_file_rejected = Family::<FileLabels, Gauge>::default();
        registry.register(
            "config_file_rejected",
            "1 while the file on disk (tenants, tls) is refused and the previous one is in use",
            config_file_rejected.clone(),
        );
        let capture_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "capture_requests",
            "CapturePayment calls by outcome (captured, replayed, not_capturable, \
             exceeds_capturable, key_reused, stripe_refused, stripe_unavailable, not_found, error)",
            Listed(capture_requests.clone()),
        );
        let dispute_changes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "dispute_changes",
            "Changes of payments' disputes recorded, by source (webhook, reconcile)",
            Listed(dispute_changes.clone()),
        );
        let authorizations_expiring = Gauge::default();
        registry.register(
            "authorizations_expiring",
            "Payments awaiting capture whose authorization lapses within 24 hours (capture or \
             cancel them); refreshed by the reconciler",
            Listed(authorizations_expiring.clone()),
        );
        Metrics {
            registry,
            config_reloads,
            config_file_rejected,
            ready,
            transient_payments,
            transient_oldest_age,
            capture_requests,
            dispute_changes,
            authorizations_expiring,
            pushes,
            push_given_up,
            push_oldest_undelivered_age,
            gateway_requests,
            gateway_duration,
            rpc_requests,
            rpc_duration,
            stripe_requests,
            stripe_duration,
            webhook_events,
            transitions,
            refund_transitions,
            reconciler_sweeps,
            reconciled_payments,
            refund_requests,
            reconciled_refunds,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The span name of a gRPC call (`paybridge.v1.PaymentService/GetPayment`): one of ours, or
/// `unknown` (paths come from clients); `None` for health checks, which get no span.
pub fn rpc_span_name(path: &str) -> Option<&'static str> {
    if path.starts_with("/grpc.health.") {
        return None;
    }
    Some(
        KNOWN_RPCS
            .iter()
            .find(|known| **known == path)
            .map_or("unknown", |known| &known[1..]),
    )
}

/// The label for a gRPC path: one of ours, or `unknown` (paths come from clients).
pub fn rpc_method_label(path: &str) -> &'static str {
    KNOWN_RPCS
        .iter()
        .find(|known| **known == path)
        .and_then(|known| known.rsplit('/').next())
        .unwrap_or("unknown")
}

const KNOWN_RPCS: [&str; 19] = [
    "/paybridge.v1.PaymentService/CreateInvoicePayment",
    "/paybridge.v1.PaymentService/GetPayment",
    "/paybridge.v1.PaymentService/ListPayments",
    "/paybridge.v1.PaymentService/CancelPayment",
    "/paybridge.v1.PaymentService/CapturePayment",
    "/paybridge.v1.PaymentService/VerifyReturn",
    "/paybridge.v1.PaymentService/HandleStripeEvent",
    "/paybridge.v1.PaymentService/WatchPayment",
    "/paybridge.v1.PaymentService/RefundPayment",
    "/paybridge.v1.PaymentService/GetRefund",
    "/paybridge.v1.PaymentService/ListRefunds",
    "/paybridge.v1.PaymentService/ListEvents",
    "/paybridge.v1.PaymentService/WatchEvents",
    "/paybridge.v1.PaymentService/CreatePaymentLink",
    "/paybridge.v1.PaymentService/ResolvePaymentLink",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// The label for a gRPC status code number.
pub fn grpc_code_label(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "other",
    }
}

/// A Stripe API path with its id replaced: `/payment_intents/pi_123/cancel` →
/// `POST /v1/payment_intents/{id}/cancel` (Stripe paths are `/{resource}/{id}/{action}`).
pub fn stripe_operation(method: &str, path: &str) -> String {
    let path = path.trim_start_matches('/');
    let path = path.strip_prefix("v1/").unwrap_or(path);
    let mut parts: Vec<&str> = path.split('/').collect();
    if let Some(id) = parts.get_mut(1) {
        *id = "{id}";
    }
    format!("{method} /v1/{}", parts.join("/"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                METRICS.render(),
            )
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Seconds as f64 for histograms.
pub fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_operations_carry_no_ids() {
        assert_eq!(
            stripe_operation("POST", "/payment_intents"),
            "POST /v1/payment_intents"
        );
        assert_eq!(
            stripe_operation("GET", "/v1/payment_intents/pi_abcDEF"),
            "GET /v1/payment_intents/{id}"
        );
        assert_eq!(
            stripe_operation("POST", "/payment_intents/pi_1/cancel"),
            "POST /v1/payment_intents/{id}/cancel"
        );
    }

    #[test]
    fn unknown_grpc_paths_are_one_label() {
        assert_eq!(
            rpc_method_label("/paybridge.v1.PaymentService/GetPayment"),
            "GetPayment"
        );
        assert_eq!(rpc_method_label("/x/../../etc/passwd"), "unknown");
        assert_eq!(grpc_code_label("5"), "NOT_FOUND");
        assert_eq!(grpc_code_label("999"), "other");
    }
}
