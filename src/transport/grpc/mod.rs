//! The gRPC transport: service implementation, proto⇄domain conversion, error mapping, auth.

mod auth;
mod convert;
mod error;
mod service;

pub use service::PaymentGrpcService;
