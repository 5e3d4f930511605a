//! The gRPC transport: service implementation, proto⇄domain conversion, error mapping, auth.

mod auth;
mod convert;
mod error;
mod incoming;
mod metrics_layer;
mod refund_convert;
mod service;

pub use incoming::{CoreConnection, CoreSocket, incoming};
pub use metrics_layer::RpcMetricsLayer;
pub use service::PaymentGrpcService;
