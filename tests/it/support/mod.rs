//! Test support: `TestApp::spawn` owns the real parts of one test — a database (a SQLite file or
//! a fresh database in a throwaway PostgreSQL cluster), a localstripe process behind the
//! project's compat layer, and `paybridge serve` on port 0 — and tears them down on drop.
//! Logs stay silent unless `TEST_LOG` is set.

#![allow(unreachable_pub)]

pub mod browser;
pub mod child;
pub mod events;
pub mod fault_proxy;
pub mod gateway;
pub mod localstripe;
pub mod otlp;
pub mod postgres;
pub mod wait;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use paybridge::config::ServeConfig;
use paybridge::pb::v1 as pb;
use paybridge::pb::v1::payment_service_client::PaymentServiceClient;
use paybridge::startup::Application;
use paybridge::tenants::{Tenants, TokenHash};
use secrecy::SecretString;
use tonic::transport::Channel;

pub use localstripe::LocalStripe;
pub use wait::eventually;

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const BILLING_TOKEN: &str = "billing-test-token";
pub const ORDERS_TOKEN: &str = "orders-test-token";
pub const GATEWAY_TOKEN: &str = "gateway-test-token";
pub const PUBLISHABLE_KEY: &str = "pk_test_paybridge";
pub const RETURN_URL: &str = "https://pay.example.com/payment/return";
/// The public base hosted page links start with, unless a test puts its gateway there.
pub const PUBLIC_URL: &str = "https://pay.example.com";

pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn tenants_toml() -> String {
    tenants_toml_with(None)
}

/// The tenants file, with `extra_origin` (e.g. `http://127.0.0.1:<port>`) also allowed for billing.
pub fn tenants_toml_with(extra_origin: Option<&str>) -> String {
    let extra = extra_origin
        .map(|origin| format!(", \"{origin}\""))
        .unwrap_or_default();
    format!(
        r#"
[[tenants]]
id = "billing"
token_sha256 = "{}"
allowed_redirect_origins = ["https://billing.example.com", "billingapp:"{extra}]
success_url = "https://billing.example.com/paid"
failure_url = "https://billing.example.com/payment-failed"
display_name = "Billing Example & Co"

[[tenants]]
id = "orders"
token_sha256 = "{}"
allowed_redirect_origins = ["https://orders.example.com"]
success_url = "https://orders.example.com/thanks"
failure_url = "https://orders.example.com/sorry"
"#,
        sha256_hex(BILLING_TOKEN),
        sha256_hex(ORDERS_TOKEN)
    )
}

/// The tenants file of `options`: [`tenants_toml_with`], plus the push endpoints it names, whose
/// secret file is written in `dir`.
fn tenants_of(options: &Options, dir: &std::path::Path) -> Tenants {
    Tenants::parse_toml(&tenants_toml_for(options, dir)).expect("tenants")
}

/// The text of [`tenants_of`]'s file.
pub fn tenants_toml_for(options: &Options, dir: &std::path::Path) -> String {
    let mut text = tenants_toml_with(options.extra_redirect_origin.as_deref());
    if let Some(logo) = &options.billing_logo_url {
        text = text.replace(
            "display_name = \"Billing Example & Co\"\n",
            &format!("display_name = \"Billing Example & Co\"\nlogo_url = {logo:?}\n"),
        );
    }
    let secret_file = dir.join("push.secret");
    std::fs::write(&secret_file, PUSH_SECRET).expect("push secret file");
    for (after, url) in [
        (
            "failure_url = \"https://billing.example.com/payment-failed\"\n",
            &options.billing_webhook_url,
        ),
        (
            "failure_url = \"https://orders.example.com/sorry\"\n",
            &options.orders_webhook_url,
        ),
    ] {
        if let Some(url) = url {
            text = text.replace(
                after,
                &format!(
                    "{after}webhook_url = {url:?}\nwebhook_secret_file = {:?}\n",
                    secret_file.display().to_string()
                ),
            );
        }
    }
    text.push_str(&options.extra_tenants_toml);
    text
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,paybridge=debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// One running paybridge with its parts.
pub struct TestApp {
    pub client: PaymentServiceClient<Channel>,
    pub channel: Channel,
    /// Shared with replicas (`spawn_replica`).
    pub stripe: std::sync::Arc<LocalStripe>,
    /// Between the core and the Stripe fake, when `Options::stripe_proxy` asked for it.
    pub proxy: Option<std::sync::Arc<fault_proxy::FaultProxy>>,
    /// What the core uses as Stripe's API base (the proxy's URL when there is one).
    stripe_api_base: String,
    pub database_url: String,
    pub db: Db,
    /// Where the core listens; kept across `stop_core`/`start_core`.
    pub grpc_addr: SocketAddr,
    options: Options,
    /// Where the core serves `/metrics`.
    pub admin_addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// What a test may change in the configuration before the app starts.
#[derive(Clone)]
pub struct Options {
    pub stripe_timeout: Duration,
    pub stripe_max_retries: u32,
    pub health_interval: Duration,
    /// Webhook signing secrets the core accepts (current first).
    pub webhook_secrets: Vec<String>,
    /// Zero (the default in tests) turns the reconciler off.
    pub reconcile_interval: Duration,
    pub reconcile_after: Duration,
    pub reconcile_batch: u32,
    /// The core's Stripe request budget (requests/s).
    pub stripe_max_rps: u32,
    /// One more origin billing may redirect to (a local page in browser tests).
    pub extra_redirect_origin: Option<String>,
    /// Put a fault-injecting TCP proxy between the core and the Stripe fake.
    pub stripe_proxy: bool,
    /// The core also serves on this Unix socket, and a gateway in front of it connects there.
    pub grpc_socket: Option<std::path::PathBuf>,
    /// How long events are kept (the janitor deletes older ones at start and every minute).
    pub event_retention: Duration,
    /// billing's and orders' `webhook_url` (signed with [`PUSH_SECRET`]); none by default.
    pub billing_webhook_url: Option<String>,
    pub orders_webhook_url: Option<String>,
    pub push: paybridge::app::PushSettings,
    pub push_timeout: Duration,
    /// TLS on the core's gRPC port; then `TestApp::client` is not usable (it speaks plaintext):
    /// the test connects its own TLS client.
    pub grpc_tls: Option<paybridge::transport::grpc::TlsFiles>,
    /// How often the core checks its tenants file (`TestApp::tenants_file`) and TLS files.
    pub reload_interval: Duration,
    /// More `[[tenants]]` tables for the tenants file.
    pub extra_tenants_toml: String,
    /// The core's PAYBRIDGE_RETURN_URL and PAYBRIDGE_PUBLIC_URL ([`RETURN_URL`] and
    /// [`PUBLIC_URL`] when unset); `GatewayOptions::core_points_here` sets both to its gateway.
    pub return_url: Option<String>,
    pub public_url: Option<String>,
    /// billing's `logo_url` (on one of its allowed origins); none by default.
    pub billing_logo_url: Option<String>,
}

/// The signing secret of the tenants' pushes in tests.
pub const PUSH_SECRET: &str = "psk_paybridge_test_push_secret";

pub const WEBHOOK_SECRET: &str = "whsec_paybridge_test";

impl Default for Options {
    fn default() -> Self {
        Options {
            webhook_secrets: vec![WEBHOOK_SECRET.to_owned()],
            reconcile_interval: Duration::ZERO,
            reconcile_after: Duration::from_secs(60),
            reconcile_batch: 100,
            stripe_max_rps: 1000,
            stripe_timeout: Duration::from_secs(10),
            stripe_max_retries: 2,
            health_interval: Duration::from_millis(200),
            extra_redirect_origin: None,
            stripe_proxy: false,
            grpc_socket: None,
            event_retention: Duration::from_secs(30 * 86_400),
            billing_webhook_url: None,
            orders_webhook_url: None,
            push: paybridge::app::PushSettings {
                poll_interval: Duration::from_millis(200),
                ..Default::default()
            },
            push_timeout: Duration::from_secs(5),
            grpc_tls: None,
            reload_interval: Duration::from_millis(100),
            extra_tenants_toml: String::new(),
            return_url: None,
            public_url: None,
            billing_logo_url: None,
        }
    }
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        TestApp::spawn_with(db, Options::default()).await
    }

    pub async fn spawn_with(db: Db, options: Options) -> TestApp {
        let stripe = std::sync::Arc::new(LocalStripe::start().await);
        TestApp::spawn_with_stripe(db, options, stripe).await
    }

    /// Like `spawn_with`, on a Stripe fake the caller started.
    pub async fn spawn_with_stripe(
        db: Db,
        options: Options,
        stripe: std::sync::Arc<LocalStripe>,
    ) -> TestApp {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = match db {
            Db::Sqlite => format!("sqlite:{}", dir.path().join("paybridge.db").display()),
            Db::Postgres => postgres::fresh_database().await,
        };
        TestApp::start(db, options, dir, stripe, database_url).await
    }

    /// Like `spawn_with`, on a database the test made itself (its own PostgreSQL cluster, say).
    pub async fn spawn_on(db: Db, options: Options, database_url: String) -> TestApp {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let stripe = std::sync::Arc::new(LocalStripe::start().await);
        TestApp::start(db, options, dir, stripe, database_url).await
    }

    /// Another replica of paybridge on the same database and Stripe fake.
    pub async fn spawn_replica(&self, options: Options) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        TestApp::start(
            self.db,
            options,
            dir,
            std::sync::Arc::clone(&self.stripe),
            self.database_url.clone(),
        )
        .await
    }

    async fn start(
        db: Db,
        options: Options,
        dir: tempfile::TempDir,
        stripe: std::sync::Arc<LocalStripe>,
        database_url: String,
    ) -> TestApp {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let proxy = if options.stripe_proxy {
            Some(std::sync::Arc::new(
                fault_proxy::FaultProxy::start(&stripe.base_url).await,
            ))
        } else {
            None
        };
        let stripe_api_base = proxy
            .as_ref()
            .map_or_else(|| stripe.base_url.clone(), |p| p.url());
        let (addr, admin_addr, shutdown, server) =
            start_server(&database_url, &stripe_api_base, addr, &options, dir.path()).await;
        let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
        let channel = if options.grpc_tls.is_some() {
            endpoint.connect_lazy()
        } else {
            endpoint.connect().await.expect("connects")
        };
        TestApp {
            client: PaymentServiceClient::new(channel.clone()),
            channel,
            stripe,
            proxy,
            stripe_api_base,
            database_url,
            db,
            grpc_addr: addr,
            options,
            admin_addr,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }

    /// The tenants file the core follows (rewrite it to change the tenants).
    pub fn tenants_file(&self) -> std::path::PathBuf {
        self._dir.path().join("tenants.toml")
    }

    /// Stops the server gracefully and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.take().expect("running").await.expect("joined")
    }

    /// Stops the core gracefully (the database and Stripe fake stay), as a restart would.
    pub async fn stop_core(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("joined").expect("core stopped cleanly");
        }
    }

    /// Changes the options the core starts with next (`start_core`).
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// The options the core runs with.
    pub fn options(&self) -> Options {
        self.options.clone()
    }

    /// Starts the core again on the same address and database.
    pub async fn start_core(&mut self) {
        assert!(self.server.is_none(), "the core is running");
        let (_, admin_addr, shutdown, server) = start_server(
            &self.database_url,
            &self.stripe_api_base,
            self.grpc_addr,
            &self.options,
            self._dir.path(),
        )
        .await;
        self.admin_addr = admin_addr;
        self.shutdown = Some(shutdown);
        self.server = Some(server);
    }

    /// Creates a payment as the billing tenant.
    pub async fn create(
        &self,
        request: pb::CreateInvoicePaymentRequest,
    ) -> Result<pb::CreateInvoicePaymentResponse, tonic::Status> {
        self.client
            .clone()
            .create_invoice_payment(as_tenant(BILLING_TOKEN, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Creates a payment as the billing tenant for `invoice_id` and pays it at the fake with the
    /// test card 4242 as Stripe.js would; paybridge is not told. Returns the create answer, its
    /// payment and the intent as Stripe holds it afterwards.
    pub async fn create_paid(
        &self,
        key: &str,
        invoice_id: &str,
    ) -> (
        pb::CreateInvoicePaymentResponse,
        pb::Payment,
        serde_json::Value,
    ) {
        let answer = self
            .create(create_request(key, invoice_id))
            .await
            .expect("created");
        let payment = answer.payment.clone().expect("payment");
        let intent = self
            .stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        (answer, payment, intent)
    }

    pub async fn get(&self, id: &str, refresh: bool) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .get_payment(as_tenant(
                BILLING_TOKEN,
                pb::GetPaymentRequest {
                    id: id.to_owned(),
                    refresh,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn cancel(&self, id: &str) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .cancel_payment(as_tenant(
                BILLING_TOKEN,
                pb::CancelPaymentRequest { id: id.to_owned() },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// This core's counter of finished calls to one gRPC method (`"VerifyReturn"`), any code,
    /// read from its `/metrics`.
    pub async fn rpc_count(&self, method: &str) -> u64 {
        metric_sum(
            &self.admin_addr,
            "paybridge_grpc_requests_total",
            &format!("method=\"{method}\""),
        )
        .await
    }

    pub async fn list(
        &self,
        request: pb::ListPaymentsRequest,
    ) -> Result<pb::ListPaymentsResponse, tonic::Status> {
        self.client
            .clone()
            .list_payments(as_tenant(BILLING_TOKEN, request))
            .await
            .map(tonic::Response::into_inner)
    }
}

type ServerHandle = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Builds and starts `paybridge serve` on `addr`; returns the bound address.
async fn start_server(
    database_url: &str,
    stripe_base_url: &str,
    addr: SocketAddr,
    options: &Options,
    dir: &std::path::Path,
) -> (
    SocketAddr,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    ServerHandle,
) {
    let config = ServeConfig {
        database_url: database_url.to_owned(),
        database_max_connections: paybridge::config::default_max_connections(database_url),
        grpc_addr: addr,
        grpc_socket: options.grpc_socket.clone(),
        migrate: true,
        stripe_secret_key: SecretString::from("sk_test_paybridge".to_owned()),
        stripe_publishable_key: PUBLISHABLE_KEY.to_owned(),
        stripe_api_base: stripe_base_url.parse().expect("stripe url"),
        stripe_timeout: options.stripe_timeout,
        stripe_max_retries: options.stripe_max_retries,
        stripe_max_rps: options.stripe_max_rps,
        admin_addr: Some("127.0.0.1:0".parse().expect("addr")),
        return_url: options
            .return_url
            .as_deref()
            .unwrap_or(RETURN_URL)
            .parse()
            .expect("return url"),
        public_url: options
            .public_url
            .as_deref()
            .unwrap_or(PUBLIC_URL)
            .parse()
            .expect("public url"),
        tenants: tenants_of(options, dir),
        tenants_file: Some({
            let path = dir.join("tenants.toml");
            std::fs::write(&path, tenants_toml_for(options, dir)).expect("tenants file");
            path
        }),
        grpc_tls: options.grpc_tls.clone(),
        reload_interval: options.reload_interval,
        gateway_token_sha256: Some(TokenHash::of_token(GATEWAY_TOKEN)),
        stripe_webhook_secrets: options
            .webhook_secrets
            .iter()
            .map(|s| SecretString::from(s.clone()))
            .collect(),
        stripe_webhook_tolerance: Duration::from_secs(300),
        reconcile_interval: options.reconcile_interval,
        reconcile_after: options.reconcile_after,
        reconcile_batch: options.reconcile_batch,
        reconcile_lease: Duration::from_secs(120),
        event_retention: options.event_retention,
        push: options.push,
        push_timeout: options.push_timeout,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        health_interval: options.health_interval,
    };
    let app = Application::build(config).await.expect("app builds");
    let addr = app.grpc_addr();
    let admin_addr = app.admin_addr().expect("admin endpoint");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (addr, admin_addr, shutdown, server)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The sum of the samples of `metric` whose labels contain `label`, from `/metrics` at `admin`.
pub async fn metric_sum(admin: &SocketAddr, metric: &str, label: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with(metric) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The seed of a test's random choices: `PAYBRIDGE_TEST_SEED` when set (to replay a failure),
/// else a fresh one. Printed either way, so a failing run shows how to replay it.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("PAYBRIDGE_TEST_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            panic!("PAYBRIDGE_TEST_SEED is not a number from 0 to 2^64-1: {text:?}")
        }),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: seed {seed} (replay with PAYBRIDGE_TEST_SEED={seed})");
    seed
}

/// The single count `sql` gives on the database at `database_url` (a fresh connection: the
/// tests read what the server committed, from outside).
pub async fn count_rows(database_url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url)
        .await
        .expect("database");
    let (count,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    conn.close().await.ok();
    count
}

/// A request carrying a tenant's bearer token.
pub fn as_tenant<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// A valid create request for `invoice_id`, with `key` as idempotency key.
pub fn create_request(key: &str, invoice_id: &str) -> pb::CreateInvoicePaymentRequest {
    pb::CreateInvoicePaymentRequest {
        idempotency_key: key.to_owned(),
        invoice_id: invoice_id.to_owned(),
        amount: 4200,
        currency: "usd".to_owned(),
        customer: None,
        description: "Invoice for tests".to_owned(),
        metadata: [("order".to_owned(), "o-17".to_owned())].into(),
        success_url: String::new(),
        failure_url: String::new(),
        ..Default::default()
    }
}

/// The `google.rpc.BadRequest` field names of an INVALID_ARGUMENT status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Runs each named `async fn(Db)` as a test on SQLite and on PostgreSQL.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Postgres).await
                }
            )*
        }
    };
}

/// A new payment in `Creating` for the billing tenant, as a create writes it first.
pub fn creating_payment(invoice_id: &str) -> paybridge::domain::Payment {
    use paybridge::domain::{Payment, PaymentId, PaymentStatus};
    let now = events::now() * 1000;
    Payment {
        id: PaymentId::generate().as_str().to_owned(),
        tenant: "billing".to_owned(),
        invoice_id: invoice_id.to_owned(),
        amount: 4200,
        currency: "usd".to_owned(),
        status: PaymentStatus::Creating,
        stripe_payment_intent_id: None,
        stripe_customer_id: None,
        client_secret: None,
        description: None,
        metadata: Default::default(),
        success_url: "https://shop.example.com/paid".to_owned(),
        failure_url: "https://shop.example.com/failed".to_owned(),
        last_payment_error: None,
        created_at: now,
        updated_at: now,
        last_event_created: None,
        amount_received: 0,
        amount_refunded: 0,
        amount_refund_pending: 0,
        capture_method: paybridge::domain::CaptureMethod::Automatic,
        amount_capturable: 0,
        capture_before: None,
        cancellation_reason: None,
        dispute: None,
        dispute_last_event_created: None,
    }
}
