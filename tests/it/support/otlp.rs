//! A stub OpenTelemetry collector on 127.0.0.1: it takes OTLP/HTTP with protobuf
//! (`POST /v1/traces`), decodes every export with opentelemetry-proto, and keeps the spans. Any
//! other request is counted too, so a test can tell that nothing at all was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ExportedSpan>>,
    requests: AtomicUsize,
}

/// The running stub; stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// On a free port.
    pub async fn start() -> Collector {
        Collector::start_on("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("binding the stub collector")
    }

    /// On `addr`; `Err` when it is taken.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received::default());
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .fallback(other)
            .with_state(Arc::clone(&received));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Collector {
            addr,
            received,
            task,
        })
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` that points here.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ExportedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Requests of any kind received so far.
    pub fn requests(&self) -> usize {
        self.received.requests.load(Ordering::SeqCst)
    }
}

async fn export(
    axum::extract::State(received): axum::extract::State<Arc<Received>>,
    body: Bytes,
) -> (
    http::StatusCode,
    [(http::HeaderName, &'static str); 1],
    Vec<u8>,
) {
    received.requests.fetch_add(1, Ordering::SeqCst);
    let content_type = [(http::header::CONTENT_TYPE, "application/x-protobuf")];
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (http::StatusCode::BAD_REQUEST, content_type, Vec::new());
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| text_of(&resource.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv)?)))
                        .collect(),
                });
            }
        }
    }
    received
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(spans);
    // An empty ExportTraceServiceResponse: everything accepted.
    (http::StatusCode::OK, content_type, Vec::new())
}

async fn other(
    axum::extract::State(received): axum::extract::State<Arc<Received>>,
) -> http::StatusCode {
    received.requests.fetch_add(1, Ordering::SeqCst);
    http::StatusCode::NOT_FOUND
}

fn text_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(text)
}

/// An attribute's value as text (strings as they are, numbers and booleans printed).
fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(text) => Some(text.clone()),
        AnyValue::IntValue(n) => Some(n.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(x) => Some(x.to_string()),
        _ => None,
    }
}
