//! Logs and traces. Logs: text for people, JSON for collectors (while traces are exported, each
//! line inside a span carries its `trace_id` and `span_id`). Traces: `tracing`'s spans become
//! OpenTelemetry spans (tracing-opentelemetry), a W3C `traceparent` from a caller is honoured and
//! passed on (gateway → core), and they are exported over OTLP — only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Without it no
//! OpenTelemetry layer is installed: nothing is built, exported or buffered.
//!
//! The standard variables are honoured: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`, the default), `_HEADERS`, `_TIMEOUT`, `_COMPRESSION` (by the exporter),
//! `OTEL_BSP_*` (the batch), `OTEL_TRACES_SAMPLER` and `_ARG`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_EXPORTER=none` and `OTEL_SDK_DISABLED=true`.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, TelemetryArgs};

/// Which process reports: its default `service.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `serve` and `migrate`: `paybridge`.
    Core,
    /// `gateway`: `paybridge-gateway`.
    Gateway,
}

impl Service {
    fn default_name(self) -> &'static str {
        match self {
            Service::Core => "paybridge",
            Service::Gateway => "paybridge-gateway",
        }
    }
}

/// Set once spans are exported: only then do the latency histograms carry exemplars (a trace id
/// nobody can look up would be a dead link).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// What `init` installed; `shutdown` flushes the spans still in the batch.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still batched (within `OTEL_BSP_EXPORT_TIMEOUT`) and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The flush blocks; the gRPC exporter's channel runs on this runtime, which may have
            // one thread only.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber: logs to stderr, and spans to OpenTelemetry unless
/// `OTEL_SDK_DISABLED=true`. Must run inside the Tokio runtime (the gRPC exporter's channel is
/// spawned on it).
pub fn init(args: &TelemetryArgs, service: Service) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&args.log).map_err(|e| format!("PAYBRIDGE_LOG: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .boxed(),
    }
    .with_filter(filter);
    let endpoint = non_empty_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| non_empty_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|_| !env_flag("OTEL_SDK_DISABLED"))
        .filter(|_| non_empty_env("OTEL_TRACES_EXPORTER").is_none_or(|e| e != "none"));
    // Without an endpoint there is no OpenTelemetry layer at all: building spans nobody exports
    // would double the CPU of the cheapest calls (bench/README.md, "Tracing").
    let (provider, traces) = if let Some(endpoint) = endpoint {
        let provider = tracer_provider(service, &endpoint)?;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("paybridge"))
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(traced));
        (Some(provider), Some(layer))
    } else {
        (None, None)
    };
    Registry::default()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    Ok(Telemetry { provider })
}

/// The spans that may start a trace: a call, a request, a reconciler sweep. Every other span of
/// paybridge is traced only inside one of these, so that background polling (a push worker's
/// look at its tenant, a watcher's timer) makes no trace of its own.
const ROOT_SPANS: [&str; 4] = ["grpc", "http", "reconcile_once", "reconcile_refunds_once"];

/// What goes to OpenTelemetry: paybridge's own spans at INFO and above and its warnings and errors
/// (the libraries' — sqlx, hyper, h2 — would only add noise and cost), new traces only from
/// [`ROOT_SPANS`].
fn traced<S>(
    metadata: &tracing::Metadata<'_>,
    context: &tracing_subscriber::layer::Context<'_, S>,
) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !metadata.target().starts_with("paybridge") {
        return false;
    }
    if !metadata.is_span() {
        // Warnings and errors become span events; the rest is in the logs, by trace id.
        return *metadata.level() <= tracing::Level::WARN;
    }
    *metadata.level() <= tracing::Level::INFO
        && (ROOT_SPANS.contains(&metadata.name()) || context.lookup_current().is_some())
}

/// The provider, with a batch exporter to `endpoint`.
fn tracer_provider(service: Service, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let mut resource = Resource::builder();
    let named = non_empty_env("OTEL_SERVICE_NAME").is_some()
        || non_empty_env("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|attributes| attributes.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.default_name());
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    let exporter = span_exporter(endpoint)?;
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::TokioCurrentThread,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(batch)
        .build())
}

/// The OTLP exporter for `OTEL_EXPORTER_OTLP_PROTOCOL`; endpoint, headers, timeout and
/// compression are read from the environment by the exporter itself.
fn span_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let protocol = non_empty_env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| non_empty_env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let built = match protocol.as_str() {
        "grpc" => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if endpoint.starts_with("https://") {
                exporter = exporter
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
            }
            exporter.build()
        }
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(https_client()?)
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not supported (grpc or http/protobuf)"
            ));
        }
    };
    built.map_err(|e| format!("OTEL_EXPORTER_OTLP_*: building the span exporter: {e}"))
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The OTLP/HTTP client: hyper, HTTPS with the webpki roots (as the Stripe client).
fn https_client() -> Result<opentelemetry_http::hyper::HyperClient<HttpsConnector>, String> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_*: TLS set-up failed: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let timeout = non_empty_env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| non_empty_env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        );
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_flag(name: &str) -> bool {
    non_empty_env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The trace id of the current span, as 32 hex digits, when spans are exported and this one is
/// sampled: the exemplar of a latency observation.
pub fn exemplar_trace_id() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| span_context.trace_id().to_string())
}

/// The W3C trace context of `headers` (a caller's `traceparent`), or an empty context.
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A JSON line format that adds `trace_id` and `span_id` of the span the event happened in.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
            })
        });
        let ids = ids.and_then(|context| {
            let span = context.span();
            let span_context = span.span_context();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            })
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object (and a newline): the ids go in before its closing brace.
        match line.rfind('}') {
            Some(end) => {
                writer.write_str(&line[..end])?;
                write!(writer, r#","trace_id":"{trace_id}","span_id":"{span_id}""#)?;
                writer.write_str(&line[end..])
            }
            None => writer.write_str(&line),
        }
    }
}
