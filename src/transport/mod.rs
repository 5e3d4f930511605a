//! Transport: the gRPC service (and, later, the HTTP return gateway).

pub mod grpc;
