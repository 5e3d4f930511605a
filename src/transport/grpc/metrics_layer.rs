//! A tower layer around every gRPC call: its server span (a caller's W3C `traceparent` is its
//! parent) and its count by method and status code, with its latency (and, while spans are
//! exported, the trace as the latency's exemplar).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{
    METRICS, MethodLabels, RpcLabels, grpc_code_label, observe_latency, rpc_method_label,
    rpc_span_name,
};

/// Counts and traces every call the server answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

/// The call's server span. Health checks (every probe, every gateway readiness check) get none.
fn server_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let Some(name) = rpc_span_name(path) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "grpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.method = rpc_method_label(path),
        rpc.grpc.status_code = tracing::field::Empty,
        tenant = tracing::field::Empty,
        payment_id = tracing::field::Empty,
        refund_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    // Before the span starts: afterwards its parent is fixed.
    let _ = span.set_parent(crate::telemetry::extract_context(headers));
    span
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = rpc_method_label(request.uri().path());
        let span = server_span(request.uri().path(), request.headers());
        let started = Instant::now();
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = answer.await;
                // Errors come back "trailers-only", with grpc-status in the headers; a successful
                // answer carries it in the trailers, after the body: no header means OK here.
                let code = match &response {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .map_or("OK", grpc_code_label),
                    Err(_) => "UNKNOWN",
                };
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                // The codes OpenTelemetry counts as a server's error.
                if matches!(
                    code,
                    "UNKNOWN"
                        | "DEADLINE_EXCEEDED"
                        | "UNIMPLEMENTED"
                        | "INTERNAL"
                        | "UNAVAILABLE"
                        | "DATA_LOSS"
                ) {
                    span.record("otel.status_code", "ERROR");
                }
                METRICS
                    .rpc_requests
                    .get_or_create(&RpcLabels { method, code })
                    .inc();
                observe_latency(
                    &METRICS.rpc_duration.get_or_create(&MethodLabels { method }),
                    started.elapsed().as_secs_f64(),
                );
                response
            }
            .instrument(span),
        )
    }
}
