//! A tenant's client certificate (mTLS on the gRPC port, `PAYBRIDGE_GRPC_TLS_CLIENT_CA`): named
//! by its SHA-256 (`client_cert_sha256`) or by a subject alternative name it carries
//! (`client_cert_san`). The TLS handshake has already checked the certificate against the client
//! CA (chain, dates, client use); this only says whose it is.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's DER bytes: what `openssl x509 -noout -fingerprint -sha256`
/// prints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CertHash([u8; 32]);

impl CertHash {
    pub fn of_der(der: &[u8]) -> CertHash {
        CertHash(Sha256::digest(der).into())
    }

    /// 64 hex digits, either case, optionally in colon-separated pairs (openssl's form).
    pub fn parse_hex(raw: &str) -> Result<CertHash, String> {
        let digits: String = if raw.contains(':') {
            let pairs: Vec<&str> = raw.split(':').collect();
            if pairs.len() != 32 || pairs.iter().any(|pair| pair.len() != 2) {
                return Err(
                    "must be 64 hex digits (a SHA-256), or 32 pairs separated by colons".into(),
                );
            }
            pairs.concat()
        } else {
            raw.to_owned()
        };
        if digits.len() != 64 {
            return Err(format!(
                "must be 64 hex digits (a SHA-256), got {} characters",
                digits.chars().count()
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digits, &mut bytes)
            .map_err(|_| "must be 64 hex digits (a SHA-256): found a non-hex character")?;
        Ok(CertHash(bytes))
    }
}

impl fmt::Debug for CertHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertHash({})", hex::encode(self.0))
    }
}

/// A DNS name or an IP address a tenant's client certificate must carry as a subject
/// alternative name. No wildcard here; a wildcard name in a certificate does match (issue client
/// certificates without them).
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectName(ServerName<'static>);

impl SubjectName {
    pub fn parse(raw: &str) -> Result<SubjectName, String> {
        if raw.contains('*') {
            return Err("must be one DNS name or IP address, without a wildcard".into());
        }
        ServerName::try_from(raw.to_owned())
            .map(SubjectName)
            .map_err(|_| "must be a DNS name or an IP address".into())
    }

    /// Whether the certificate carries this name.
    pub fn is_in(&self, certificate: &CertificateDer<'_>) -> bool {
        webpki::EndEntityCert::try_from(certificate)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&self.0).is_ok())
    }

    pub fn as_str(&self) -> String {
        self.0.to_str().into_owned()
    }
}

impl fmt::Debug for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectName({})", self.0.to_str())
    }
}

/// How a tenant's client certificate is recognised.
#[derive(Debug, Clone, Default)]
pub struct ClientCertMatch {
    pub(super) sha256: Option<CertHash>,
    pub(super) san: Option<SubjectName>,
}

impl ClientCertMatch {
    pub fn is_none(&self) -> bool {
        self.sha256.is_none() && self.san.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_hashes_are_hex_or_openssl_pairs() {
        let hex = "AB".repeat(32);
        let pairs = vec!["ab"; 32].join(":");
        assert_eq!(
            CertHash::parse_hex(&hex).unwrap(),
            CertHash::parse_hex(&pairs).unwrap()
        );
        assert!(CertHash::parse_hex(&hex[..62]).is_err());
        assert!(CertHash::parse_hex(&"zz".repeat(32)).is_err());
        assert!(CertHash::parse_hex(&vec!["abc"; 32].join(":")).is_err());
        assert_eq!(CertHash::of_der(b"x"), CertHash::of_der(b"x"));
    }

    /// A certificate (self-signed: the handshake's checks are not the point here) naming `names`.
    fn certificate(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone()
    }

    fn tenants(extra: &[(&str, &str)]) -> crate::tenants::Tenants {
        let text: String = extra
            .iter()
            .map(|(id, credential)| {
                format!(
                    "[[tenants]]\nid = \"{id}\"\n{credential}\n\
                     allowed_redirect_origins = [\"https://{id}.example.com\"]\n\
                     success_url = \"https://{id}.example.com/ok\"\n\
                     failure_url = \"https://{id}.example.com/ko\"\n"
                )
            })
            .collect();
        crate::tenants::Tenants::parse_toml(&text).unwrap()
    }

    #[test]
    fn a_certificate_is_the_tenant_of_its_fingerprint_else_of_its_one_name() {
        let both = certificate(&["a.clients.test", "b.clients.test"]);
        let only_a = certificate(&["a.clients.test"]);
        let fingerprint = hex::encode(Sha256::digest(both.as_ref()));
        let set = tenants(&[
            ("a", "client_cert_san = \"a.clients.test\""),
            ("b", "client_cert_san = \"b.clients.test\""),
            ("c", &format!("client_cert_sha256 = \"{fingerprint}\"")),
        ]);
        let id = |cert: &CertificateDer<'_>| {
            set.authenticate_client_cert(cert)
                .map(|t| t.id().as_str().to_owned())
        };
        assert_eq!(id(&only_a).as_deref(), Some("a"));
        assert_eq!(id(&both).as_deref(), Some("c"), "the fingerprint first");
        let set = tenants(&[
            ("a", "client_cert_san = \"a.clients.test\""),
            ("b", "client_cert_san = \"b.clients.test\""),
        ]);
        assert!(
            set.authenticate_client_cert(&both).is_none(),
            "two tenants' names: nobody's"
        );
        assert!(
            set.authenticate_client_cert(&certificate(&["a.clients.test.evil"]))
                .is_none()
        );
        assert!(
            set.authenticate_client_cert(&certificate(&["x.a.clients.test"]))
                .is_none()
        );
    }

    #[test]
    fn subject_names_are_dns_names_or_ips_without_wildcards() {
        assert!(SubjectName::parse("billing.clients.internal").is_ok());
        assert!(SubjectName::parse("10.0.0.7").is_ok());
        assert!(SubjectName::parse("*.clients.internal").is_err());
        assert!(SubjectName::parse("not a name").is_err());
        assert!(SubjectName::parse("").is_err());
    }
}
