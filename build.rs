//! Compiles the proto with the protoc shipped by `protoc-bin-vendored` (nothing to install) and
//! writes the descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("paybridge_descriptor.bin"))
        // Hold the client secret or a hosted page link: pb.rs implements redacting Debugs.
        .skip_debug([
            "paybridge.v1.CreateInvoicePaymentResponse",
            "paybridge.v1.PaymentLink",
            "paybridge.v1.ResolvePaymentLinkRequest",
            "paybridge.v1.PaymentPage",
        ])
        .compile_with_config(
            config,
            &[std::path::PathBuf::from(
                "proto/paybridge/v1/payments.proto",
            )],
            &[std::path::PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
