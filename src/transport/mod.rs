//! Transport: the gRPC service and the HTTP return gateway.

pub mod gateway;
pub mod grpc;
