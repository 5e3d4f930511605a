//! The gRPC transport: service implementation, proto⇄domain conversion, error mapping, auth.

mod auth;
mod convert;
mod error;
mod event_convert;
mod event_json;
mod incoming;
mod metrics_layer;
mod refund_convert;
mod service;
mod tls;

pub use event_convert::event_to_proto;
pub use event_json::{proto_json, push_body};
pub use incoming::{CoreConnectInfo, CoreConnection, CoreSocket, incoming};
pub use metrics_layer::RpcMetricsLayer;
pub use service::PaymentGrpcService;
pub use tls::{CoreTls, TlsFiles};
