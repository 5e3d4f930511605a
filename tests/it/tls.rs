//! TLS on the core's gRPC port (`PAYBRIDGE_GRPC_TLS_*`) and client certificates as a tenant's
//! credential, with certificates made here (rcgen): a plaintext client is refused; a renewed
//! certificate, swapped in as Kubernetes swaps a Secret's files, is served to new connections
//! without a restart; a tenant with a client certificate needs no token; a certificate of another
//! CA, or one no tenant declared, gets nothing.
//!
//! TLS sits in front of every database: these run on SQLite only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use paybridge::pb::v1 as pb;
use paybridge::pb::v1::payment_service_client::PaymentServiceClient;
use paybridge::transport::grpc::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::support::{
    BILLING_TOKEN, Db, Options, TestApp, as_tenant, create_request, eventually, metric_sum,
};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM.
#[derive(Clone)]
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server(&self) -> Issued {
        self.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The core's TLS files, laid out as Kubernetes mounts a Secret: `tls.crt`, `tls.key` and
/// `ca.crt` are links into `..data`, itself a link to a folder of the current version; an update
/// writes a new folder and swaps `..data` in one rename.
struct MountedSecret {
    dir: PathBuf,
    version: u32,
}

impl MountedSecret {
    fn new(dir: &Path, server: &Issued, client_ca: &str) -> MountedSecret {
        let mut mounted = MountedSecret {
            dir: dir.to_owned(),
            version: 0,
        };
        mounted.update(&server.cert_pem, &server.key_pem, client_ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        mounted
    }

    fn update(&mut self, cert: &str, key: &str, client_ca: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let folder = self.dir.join(&version);
        std::fs::create_dir(&folder).expect("version folder");
        std::fs::write(folder.join("tls.crt"), cert).expect("cert");
        std::fs::write(folder.join("tls.key"), key).expect("key");
        std::fs::write(folder.join("ca.crt"), client_ca).expect("ca");
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).expect("new link");
        std::fs::rename(&link, self.dir.join("..data")).expect("swap");
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("tls.crt"),
            key: self.dir.join("tls.key"),
            client_ca: Some(self.dir.join("ca.crt")),
        }
    }
}

fn client_config(
    server_ca: &CertificateDer<'static>,
    identity: Option<&Issued>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(
                vec![issued.der.clone()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key"),
            )
            .expect("client identity"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

use rustls::pki_types::pem::PemObject;

/// A TLS connection's handshake on its own: the certificate the server presented.
async fn served_certificate(
    addr: SocketAddr,
    server_ca: &CertificateDer<'static>,
) -> Result<CertificateDer<'static>, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(server_ca, None)));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
        .ok_or_else(|| "no certificate".to_owned())
}

/// A gRPC client over TLS (checking the server against `server_ca`), presenting `identity`.
async fn tls_client(
    addr: SocketAddr,
    server_ca: &CertificateDer<'static>,
    identity: Option<&Issued>,
) -> PaymentServiceClient<Channel> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(server_ca, identity)));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    PaymentServiceClient::new(channel)
}

/// A core serving TLS with `server`'s certificate, client certificates checked against
/// `client_ca`, and a tenant `platform` that authenticates with a client certificate only.
async fn tls_app(
    dir: &Path,
    server: &Issued,
    client_ca: &Ca,
    platform: &str,
) -> (TestApp, MountedSecret) {
    let mounted = MountedSecret::new(dir, server, &client_ca.pem());
    let options = Options {
        grpc_tls: Some(mounted.files()),
        extra_tenants_toml: format!(
            "\n[[tenants]]\nid = \"platform\"\n{platform}\n\
             allowed_redirect_origins = [\"https://platform.example.com\"]\n\
             success_url = \"https://platform.example.com/paid\"\n\
             failure_url = \"https://platform.example.com/failed\"\n"
        ),
        ..Options::default()
    };
    (TestApp::spawn_with(Db::Sqlite, options).await, mounted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_and_a_tls_client_with_a_token_is_served() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (app, _mounted) = tls_app(
        dir.path(),
        &server_ca.server(),
        &client_ca,
        "client_cert_san = \"platform.clients.test\"",
    )
    .await;

    // TestApp's own client speaks plaintext HTTP/2 to the TLS port.
    let status = app
        .list(pb::ListPaymentsRequest::default())
        .await
        .expect_err("plaintext is refused");
    // Refused at the connection, before any call is served: a transport error (its code depends
    // on what the client made of the TLS alert: UNAVAILABLE, UNKNOWN or INTERNAL).
    assert!(
        std::error::Error::source(&status).is_some_and(|e| e.is::<tonic::transport::Error>()),
        "{status:?}"
    );
    assert_eq!(app.rpc_count("ListPayments").await, 0, "no call reached it");

    // A client that connects and says nothing holds up nobody: handshakes run side by side (one
    // after another, the next would wait out the silent one's 10 s handshake timeout).
    let _silent = TcpStream::connect(app.grpc_addr).await.expect("connects");
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), None).await;
    let created = tokio::time::timeout(
        Duration::from_secs(5),
        client.create_invoice_payment(as_tenant(BILLING_TOKEN, create_request("k1", "inv-1"))),
    )
    .await
    .expect("not held up by the silent client")
    .expect("a token tenant over TLS")
    .into_inner();
    assert!(created.payment.is_some());
    let status = client
        .list_payments(tonic::Request::new(pb::ListPaymentsRequest::default()))
        .await
        .expect_err("no credential at all");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let first = server_ca.server();
    let (app, mut mounted) = tls_app(
        dir.path(),
        &first,
        &client_ca,
        "client_cert_san = \"platform.clients.test\"",
    )
    .await;
    assert_eq!(
        served_certificate(app.grpc_addr, &server_ca.der())
            .await
            .expect("handshake"),
        first.der
    );
    // A connection opened before the renewal keeps working after it.
    let mut before = tls_client(app.grpc_addr, &server_ca.der(), None).await;
    before
        .list_payments(as_tenant(BILLING_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("served");

    let renewed = server_ca.server();
    assert_ne!(renewed.der, first.der);
    mounted.update(&renewed.cert_pem, &renewed.key_pem, &client_ca.pem());
    eventually(Duration::from_secs(10), || async {
        match served_certificate(app.grpc_addr, &server_ca.der()).await {
            Ok(served) if served == renewed.der => Ok(()),
            other => Err(other.map(|_| "the old certificate")),
        }
    })
    .await
    .expect("new connections get the renewed certificate");
    before
        .list_payments(as_tenant(BILLING_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("the connection from before still served");

    // A renewal cut short (a certificate file without its end) is refused: the renewed
    // certificate stays in use, and the refusal is counted.
    let truncated = &renewed.cert_pem[..renewed.cert_pem.len() / 2];
    mounted.update(truncated, &renewed.key_pem, &client_ca.pem());
    eventually(Duration::from_secs(10), || async {
        let rejected = metric_sum(
            &app.admin_addr,
            "paybridge_config_reloads_total",
            "result=\"rejected\"",
        )
        .await;
        if rejected >= 1 { Ok(()) } else { Err(rejected) }
    })
    .await
    .expect("the bad renewal is counted");
    assert_eq!(
        metric_sum(
            &app.admin_addr,
            "paybridge_config_file_rejected",
            "file=\"tls\""
        )
        .await,
        1
    );
    assert_eq!(
        served_certificate(app.grpc_addr, &server_ca.der())
            .await
            .expect("still serving"),
        renewed.der
    );
    let mut after = tls_client(app.grpc_addr, &server_ca.der(), None).await;
    after
        .list_payments(as_tenant(BILLING_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("served with the renewed certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_client_certificate_needs_no_token() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (app, _mounted) = tls_app(
        dir.path(),
        &server_ca.server(),
        &client_ca,
        "client_cert_san = \"platform.clients.test\"",
    )
    .await;
    let platform = client_ca.client(&["platform.clients.test"]);
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&platform)).await;
    let created = client
        .create_invoice_payment(tonic::Request::new(create_request("k1", "inv-1")))
        .await
        .expect("authenticated by its certificate")
        .into_inner();
    let id = created.payment.expect("payment").id;
    let listed = client
        .list_payments(tonic::Request::new(pb::ListPaymentsRequest::default()))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        listed.payments.iter().map(|p| &p.id).collect::<Vec<_>>(),
        [&id]
    );
    // It is platform's payment: billing, over the same connection with its token (the token is
    // what counts when there is one), does not see it.
    let mut as_billing = client.clone();
    let status = as_billing
        .get_payment(as_tenant(
            BILLING_TOKEN,
            pb::GetPaymentRequest {
                id: id.clone(),
                refresh: false,
            },
        ))
        .await
        .expect_err("another tenant's");
    assert_eq!(status.code(), Code::NotFound);
    let billing = as_billing
        .list_payments(as_tenant(BILLING_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("billing")
        .into_inner();
    assert!(billing.payments.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_named_by_its_certificates_fingerprint_needs_no_token() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let platform = client_ca.client(&["any.clients.test"]);
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&platform.der))
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).expect("hex"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let (app, _mounted) = tls_app(
        dir.path(),
        &server_ca.server(),
        &client_ca,
        &format!("client_cert_sha256 = \"{fingerprint}\""),
    )
    .await;
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&platform)).await;
    client
        .create_invoice_payment(tonic::Request::new(create_request("k1", "inv-1")))
        .await
        .expect("authenticated by its fingerprint");
    // Another certificate of the same CA, with the same names, is not that one.
    let twin = client_ca.client(&["any.clients.test"]);
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&twin)).await;
    let status = client
        .list_payments(tonic::Request::new(pb::ListPaymentsRequest::default()))
        .await
        .expect_err("not the declared certificate");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_certificate_gets_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (app, _mounted) = tls_app(
        dir.path(),
        &server_ca.server(),
        &client_ca,
        "client_cert_san = \"platform.clients.test\"",
    )
    .await;

    // The tenant's name, but from another CA: the handshake refuses it, no call is served.
    let other_ca = Ca::new("someone else's CA");
    let forged = other_ca.client(&["platform.clients.test"]);
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&forged)).await;
    let status = client
        .create_invoice_payment(tonic::Request::new(create_request("k1", "inv-1")))
        .await
        .expect_err("another CA's certificate");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(app.rpc_count("CreateInvoicePayment").await, 0);

    // The right CA, but a name no tenant declared.
    let stranger = client_ca.client(&["stranger.clients.test"]);
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&stranger)).await;
    let status = client
        .create_invoice_payment(tonic::Request::new(create_request("k2", "inv-2")))
        .await
        .expect_err("no tenant's certificate");
    assert_eq!(status.code(), Code::Unauthenticated);

    // A server certificate of the right CA is not a client certificate.
    let server_use = client_ca.issue(
        &["platform.clients.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let mut client = tls_client(app.grpc_addr, &server_ca.der(), Some(&server_use)).await;
    client
        .create_invoice_payment(tonic::Request::new(create_request("k3", "inv-3")))
        .await
        .expect_err("not for client use");

    assert_eq!(
        app.stripe.requests().await["total"],
        0,
        "nothing was created"
    );
}
