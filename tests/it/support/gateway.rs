//! Gateway test support: `GatewayTest::spawn` starts a `TestApp` (core, database, Stripe fake) and
//! `paybridge gateway` on port 0 in front of it, captures every log line of both at debug level,
//! and `finish` checks that no client secret handed out during the test was ever logged.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::time::Duration;

use paybridge::config::GatewayConfig;
use paybridge::pb::v1 as pb;
use paybridge::transport::gateway::GatewayApp;
use secrecy::SecretString;
use serde_json::Value;

use super::{Db, GATEWAY_TOKEN, Options, PUBLISHABLE_KEY, TestApp, create_request, eventually};

/// Everything logged in this process (the core's and the gateway's lines alike): one test's
/// under nextest, which runs each test in a process of its own.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (debug level, every target) before anything logs; the
/// plain `TEST_LOG` subscriber of `TestApp` then finds one installed and stays out.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init()
            .expect("the capturing subscriber is the first one");
    });
}

/// The captured logs so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// What a test may change in the gateway's configuration.
#[derive(Clone)]
pub struct GatewayOptions {
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub max_concurrency: usize,
    /// Headers and webhook bodies must arrive within this.
    pub read_timeout: Duration,
    /// The core's PAYBRIDGE_RETURN_URL and PAYBRIDGE_PUBLIC_URL point at this gateway (hosted
    /// payment pages: their links and their `return_url` must reach it). The gateway starts
    /// first, then the core, which it reaches over a Unix socket.
    pub core_points_here: bool,
    /// PAYBRIDGE_STRIPE_JS_URL; by default the stand-in Stripe.js of this test's Stripe fake.
    pub stripe_js_url: Option<String>,
}

impl Default for GatewayOptions {
    /// Limits high enough that only the tests about limits meet them.
    fn default() -> Self {
        GatewayOptions {
            rate_limit: 1_000,
            rate_burst: 1_000,
            max_concurrency: 1_000,
            read_timeout: Duration::from_secs(10),
            core_points_here: false,
            stripe_js_url: None,
        }
    }
}

/// A core with its parts and a gateway in front of it.
pub struct GatewayTest {
    pub app: TestApp,
    pub addr: SocketAddr,
    /// Where the gateway serves `/metrics`.
    pub admin_addr: SocketAddr,
    /// Follows no redirects: tests look at the gateway's own answers.
    pub http: reqwest::Client,
    /// Every client secret the test saw; none may appear in the logs.
    secrets: Mutex<Vec<String>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Holds the core's socket when `core_points_here` put it there.
    _socket_dir: tempfile::TempDir,
}

impl GatewayTest {
    pub async fn spawn(db: Db) -> GatewayTest {
        GatewayTest::spawn_with(db, Options::default(), GatewayOptions::default()).await
    }

    pub async fn spawn_with(db: Db, mut options: Options, gateway: GatewayOptions) -> GatewayTest {
        capture_logs();
        let socket_dir = tempfile::tempdir().expect("socket dir");
        if gateway.core_points_here && options.grpc_socket.is_none() {
            options.grpc_socket = Some(socket_dir.path().join("core.sock"));
        }
        let stripe = std::sync::Arc::new(super::LocalStripe::start().await);
        let core_url = match (&options.grpc_socket, gateway.core_points_here) {
            (Some(path), _) => Some(format!("unix://{}", path.display())),
            (None, false) => None,
            (None, true) => unreachable!("a socket was chosen above"),
        };
        let mut app = None;
        if !gateway.core_points_here {
            app = Some(TestApp::spawn_with_stripe(db, options.clone(), stripe.clone()).await);
        }
        let core_url = core_url
            .unwrap_or_else(|| format!("http://{}", app.as_ref().expect("core started").grpc_addr));
        let config = GatewayConfig {
            addr: "127.0.0.1:0".parse().expect("addr"),
            core_url: core_url.parse().expect("core url"),
            gateway_token: SecretString::from(GATEWAY_TOKEN.to_owned()),
            rate_limit: gateway.rate_limit,
            rate_burst: gateway.rate_burst,
            max_concurrency: gateway.max_concurrency,
            core_timeout: Duration::from_secs(15),
            read_timeout: gateway.read_timeout,
            shutdown_grace: Duration::from_secs(5),
            admin_addr: Some("127.0.0.1:0".parse().expect("addr")),
            stripe_js_url: gateway
                .stripe_js_url
                .clone()
                .unwrap_or_else(|| stripe.stripe_js_url())
                .parse()
                .expect("stripe js url"),
        };
        let points_here = gateway.core_points_here;
        let gateway = GatewayApp::build(config).await.expect("gateway builds");
        let addr = gateway.local_addr();
        let app = match app {
            Some(app) => app,
            None => {
                debug_assert!(points_here);
                options.return_url = Some(format!("http://{addr}/payment/return"));
                options.public_url = Some(format!("http://{addr}"));
                TestApp::spawn_with_stripe(db, options, stripe).await
            }
        };
        let admin_addr = gateway.admin_addr().expect("gateway admin endpoint");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gateway.run_until_stopped(async {
            let _ = stopped.await;
        }));
        GatewayTest {
            app,
            addr,
            admin_addr,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            secrets: Mutex::new(Vec::new()),
            shutdown: Some(shutdown),
            server: Some(server),
            _socket_dir: socket_dir,
        }
    }

    /// `http://127.0.0.1:<port><path>` of the gateway.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The gateway's return URL, as the page hands it to `stripe.confirmPayment`.
    pub fn return_url(&self) -> String {
        self.url("/payment/return")
    }

    /// Remembers a client secret (or a hosted page token) that must never be logged.
    pub fn remember_secret(&self, secret: &str) {
        self.secrets
            .lock()
            .expect("secrets")
            .push(secret.to_owned());
    }

    /// Creates a payment for `invoice_id` as billing and remembers its client secret.
    pub async fn create(&self, invoice_id: &str) -> pb::CreateInvoicePaymentResponse {
        self.create_with(create_request(&format!("key-{invoice_id}"), invoice_id))
            .await
    }

    pub async fn create_with(
        &self,
        request: pb::CreateInvoicePaymentRequest,
    ) -> pb::CreateInvoicePaymentResponse {
        let created = self.app.create(request).await.expect("created");
        self.remember_secret(&created.client_secret);
        created
    }

    /// The query Stripe appends to `return_url`.
    pub fn return_query(intent: &str, secret: &str, redirect_status: &str) -> String {
        format!(
            "payment_intent={intent}&payment_intent_client_secret={secret}&redirect_status={redirect_status}"
        )
    }

    /// The browser's return to the gateway for a created payment.
    pub async fn return_for(
        &self,
        created: &pb::CreateInvoicePaymentResponse,
        redirect_status: &str,
    ) -> reqwest::Response {
        let intent = &created
            .payment
            .as_ref()
            .expect("payment")
            .stripe_payment_intent_id;
        self.get(&format!(
            "/payment/return?{}",
            Self::return_query(intent, &created.client_secret, redirect_status)
        ))
        .await
    }

    /// The `Location` the return for `created` is sent to once the core verifies it, within
    /// 10 s; until then (the core or Stripe unreachable) every answer must be 503, "being
    /// confirmed".
    pub async fn return_once_verified(
        &self,
        created: &pb::CreateInvoicePaymentResponse,
        redirect_status: &str,
    ) -> String {
        eventually(Duration::from_secs(10), || async {
            let response = self.return_for(created, redirect_status).await;
            if response.status().as_u16() == 303 {
                return Ok(assert_redirect(&response));
            }
            assert_no_redirect(&response, 503);
            Err(response.status())
        })
        .await
        .expect("the return is verified within 10 s")
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("gateway answers")
    }

    /// Waits (at most 10 s) until `/readyz` answers 200: the core reports SERVING only after its
    /// first database check, which a busy machine can delay past a test's first request
    /// (`TestApp::spawn` does not wait for it).
    pub async fn wait_until_ready(&self) {
        eventually(Duration::from_secs(10), || async {
            let response = self.get("/readyz").await;
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == 200 {
                Ok(())
            } else {
                Err((status, body))
            }
        })
        .await
        .expect("the gateway's /readyz answers 200 within 10 s");
    }

    /// Pays as Stripe.js does in the page, with `return_url` pointing at this gateway (so a card
    /// that needs 3-D Secure gets a `redirect_to_url` next action). Returns the confirmed intent.
    pub async fn pay(&self, created: &pb::CreateInvoicePaymentResponse, card: &str) -> Value {
        let http = reqwest::Client::new();
        let base = &self.app.stripe.base_url;
        let method: Value = http
            .post(format!("{base}/v1/payment_methods"))
            .form(&[
                ("type", "card"),
                ("card[number]", card),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2034"),
                ("card[cvc]", "123"),
                ("key", PUBLISHABLE_KEY),
            ])
            .send()
            .await
            .expect("payment method")
            .json()
            .await
            .expect("json");
        let intent = &created
            .payment
            .as_ref()
            .expect("payment")
            .stripe_payment_intent_id;
        http.post(format!("{base}/v1/payment_intents/{intent}/confirm"))
            .form(&[
                ("payment_method", method["id"].as_str().expect("pm id")),
                ("client_secret", &created.client_secret),
                ("return_url", &self.return_url()),
                ("key", PUBLISHABLE_KEY),
            ])
            .send()
            .await
            .expect("confirm")
            .json()
            .await
            .expect("json")
    }

    /// How many times the fake was asked for this payment's intent.
    pub async fn intent_reads(&self, created: &pb::CreateInvoicePaymentResponse) -> u64 {
        let intent = &created
            .payment
            .as_ref()
            .expect("payment")
            .stripe_payment_intent_id;
        let requests = self.app.stripe.requests().await;
        requests["requests"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|r| {
                        r["method"] == "GET"
                            && r["path"].as_str() == Some(&format!("/v1/payment_intents/{intent}"))
                    })
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// Stops the gateway and the core, then checks that no remembered client secret was logged.
    pub async fn finish(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server
            .take()
            .expect("running")
            .await
            .expect("joined")
            .expect("gateway stopped cleanly");
        self.app.stop_core().await;
        let logs = captured_logs();
        // Both the gateway's and the core's lines are in the capture.
        assert!(
            logs.contains("paybridge::gateway::access"),
            "no gateway access log captured"
        );
        assert!(logs.contains("paybridge serving"), "no core log captured");
        for secret in self.secrets.lock().expect("secrets").iter() {
            assert!(!secret.is_empty());
            assert!(
                !logs.contains(secret.as_str()),
                "a client secret was logged:\n{}",
                logs.lines()
                    .filter(|line| line.contains(secret.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            // Also the part after `_secret_`, should anything have cut the id off (hosted page
            // tokens have no such part).
            if let Some(tail) = secret.split("_secret_").nth(1) {
                assert!(!logs.contains(tail), "a client secret's tail was logged");
            }
        }
    }
}

impl Drop for GatewayTest {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The query parameters of a `Location`.
pub fn query_of(location: &str) -> Vec<(String, String)> {
    url::Url::parse(location)
        .expect("absolute location")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The value of one query parameter of a `Location`.
pub fn param(location: &str, name: &str) -> Option<String> {
    query_of(location)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A verified return: `303 See Other` to a `Location`, with the headers that keep the secret in.
pub fn assert_redirect(response: &reqwest::Response) -> String {
    assert_eq!(
        response.status(),
        reqwest::StatusCode::SEE_OTHER,
        "{response:?}"
    );
    assert_private(response);
    response.headers()["location"]
        .to_str()
        .expect("ascii location")
        .to_owned()
}

/// An answer that sends the browser nowhere.
pub fn assert_no_redirect(response: &reqwest::Response, status: u16) {
    assert_eq!(response.status().as_u16(), status, "{response:?}");
    assert!(response.headers().get("location").is_none(), "{response:?}");
    assert_private(response);
}

/// `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.
pub fn assert_private(response: &reqwest::Response) {
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
}

/// The status of the payment as the core holds it, without asking Stripe.
pub async fn status_of(
    test: &GatewayTest,
    created: &pb::CreateInvoicePaymentResponse,
) -> pb::PaymentStatus {
    let id = &created.payment.as_ref().expect("payment").id;
    let payment = test.app.get(id, false).await.expect("payment");
    pb::PaymentStatus::try_from(payment.status).expect("known status")
}

/// Follows the stand-in 3-D Secure page's redirect (settling it with `success`) and returns where
/// it sends the browser: the gateway's return URL with Stripe's query.
pub async fn through_3ds(test: &GatewayTest, confirmed: &Value, success: bool) -> String {
    let url = confirmed["next_action"]["redirect_to_url"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no redirect_to_url: {confirmed}"));
    let response = test
        .http
        .get(format!("{url}&success={success}"))
        .send()
        .await
        .expect("3ds page");
    assert_eq!(response.status().as_u16(), 303, "{response:?}");
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.starts_with(&test.return_url()), "{location}");
    location
}
