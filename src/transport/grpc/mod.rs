//! The gRPC transport: service implementation, proto⇄domain conversion, error mapping, auth.

mod auth;
mod convert;
mod error;
mod metrics_layer;
mod service;

pub use metrics_layer::RpcMetricsLayer;
pub use service::PaymentGrpcService;
