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
                .field("client_secret", &redacted(&self.client_secret))
                .field("publishable_key", &self.publishable_key)
                .field("return_url", &self.return_url)
                .field("created", &self.created)
                .field("hosted_url", &redacted(&self.hosted_url))
                .field("hosted_url_expires_at", &self.hosted_url_expires_at)
                .finish()
        }
    }

    /// What a Debug shows of a secret: whether there is one.
    fn redacted(value: &str) -> &'static str {
        if value.is_empty() { "" } else { "[redacted]" }
    }

    // The link is a credential to the payment page: never in a log.
    impl std::fmt::Debug for PaymentLink {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PaymentLink")
                .field("url", &redacted(&self.url))
                .field("expires_at", &self.expires_at)
                .finish()
        }
    }

    impl std::fmt::Debug for ResolvePaymentLinkRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ResolvePaymentLinkRequest")
                .field("token", &redacted(&self.token))
                .finish()
        }
    }

    impl std::fmt::Debug for PaymentPage {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PaymentPage")
                .field("payment", &self.payment)
                .field("tenant_display_name", &self.tenant_display_name)
                .field("tenant_logo_url", &self.tenant_logo_url)
                .field("client_secret", &redacted(&self.client_secret))
                .field("publishable_key", &self.publishable_key)
                .field("return_url", &self.return_url)
                .finish()
        }
    }
}
