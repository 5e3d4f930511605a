//! A tower layer that counts gRPC calls by method and status code, with their latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::metrics::{METRICS, MethodLabels, RpcLabels, grpc_code_label, rpc_method_label};

/// Counts every call the server answers.
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
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
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
            METRICS
                .rpc_requests
                .get_or_create(&RpcLabels { method, code })
                .inc();
            METRICS
                .rpc_duration
                .get_or_create(&MethodLabels { method })
                .observe(started.elapsed().as_secs_f64());
            response
        })
    }
}
