//! TLS on the core's gRPC port (`PAYBRIDGE_GRPC_TLS_CERT`, `PAYBRIDGE_GRPC_TLS_KEY`), with optional
//! client certificates (`PAYBRIDGE_GRPC_TLS_CLIENT_CA`) that tenants may use instead of a bearer
//! token. The Unix socket (the gateway in the same pod) stays plain.
//!
//! The files are followed by a [`Reloader`](crate::reload::Reloader): when cert-manager renews
//! the certificate (or the CA changes), a new rustls `ServerConfig` is built and every connection
//! accepted from then on uses it; connections already open keep theirs. A whole config rather
//! than a certificate resolver, so that the client CA is picked up the same way. A renewal that
//! does not check out (a key that does not match, a half-written file) keeps the previous config.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;

use crate::reload::{FileReads, Reloadable};

/// The PEM files of the gRPC port's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates client certificates are checked against; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

fn read_pem_certs(
    reads: &mut FileReads,
    path: &std::path::Path,
    setting: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = reads
        .read(path)
        .map_err(|e| format!("{setting} ({}): cannot be read: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} ({}): not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} ({}): holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads the files and builds the server's TLS config (HTTP/2 only, as gRPC needs). Errors
    /// name the setting and the file, never the key's content.
    pub fn server_config(&self, reads: &mut FileReads) -> Result<rustls::ServerConfig, String> {
        let chain = read_pem_certs(reads, &self.cert, "PAYBRIDGE_GRPC_TLS_CERT")?;
        let key_bytes = reads.read(&self.key).map_err(|e| {
            format!(
                "PAYBRIDGE_GRPC_TLS_KEY ({}): cannot be read: {e}",
                self.key.display()
            )
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| {
            format!(
                "PAYBRIDGE_GRPC_TLS_KEY ({}): holds no PEM private key",
                self.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = match &self.client_ca {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in read_pem_certs(reads, path, "PAYBRIDGE_GRPC_TLS_CLIENT_CA")? {
                    roots.add(ca).map_err(|e| {
                        format!(
                            "PAYBRIDGE_GRPC_TLS_CLIENT_CA ({}): not a CA certificate: {e}",
                            path.display()
                        )
                    })?;
                }
                // A client certificate is optional (tenants with a bearer token present none),
                // but one that is presented must chain to the CA.
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| {
                        format!("PAYBRIDGE_GRPC_TLS_CLIENT_CA ({}): {e}", path.display())
                    })?
            }
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "PAYBRIDGE_GRPC_TLS_CERT and PAYBRIDGE_GRPC_TLS_KEY ({}, {}): {e}",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl Reloadable for TlsFiles {
    type Value = rustls::ServerConfig;
    const FILE: &'static str = "tls";

    fn load(&self, reads: &mut FileReads) -> Result<rustls::ServerConfig, String> {
        self.server_config(reads)
    }
}

/// The TLS config new connections get: the latest that checked out.
#[derive(Debug, Clone)]
pub struct CoreTls(watch::Receiver<Arc<rustls::ServerConfig>>);

impl CoreTls {
    pub fn following(receiver: watch::Receiver<Arc<rustls::ServerConfig>>) -> CoreTls {
        CoreTls(receiver)
    }

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.0.borrow()))
    }
}
