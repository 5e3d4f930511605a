//! Generated protobuf and gRPC code, fenced off from the lints the rest of the crate follows.

#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
#[rustfmt::skip]
pub mod v1 {
    tonic::include_proto!("paybridge.v1");

    /// The descriptor set that server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("paybridge_descriptor");

    // Written by hand (build.rs skips the derive): the client secret must never reach a log.
    impl std::fmt::Debug for CreateInvoicePaymentResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CreateInvoicePaymentResponse")
                .field("payment", &self.payment)
                .field("client_secret", &"[redacted]")
                .field("publishable_key", &self.publishable_key)
                .field("return_url", &self.return_url)
                .field("created", &self.created)
                .finish()
        }
    }
}
