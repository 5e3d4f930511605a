//! `paybridge serve` as a child process (the built binary), for the tests that kill it: `kill -9`
//! at random moments, SIGTERM under load. The gRPC port is fixed across restarts so clients
//! reconnect by themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use paybridge::pb::v1::payment_service_client::PaymentServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::{GATEWAY_TOKEN, PUBLISHABLE_KEY, RETURN_URL, sha256_hex, tenants_toml};

/// A free loopback port (bound and released; the child binds it next).
///
/// The port is bound later by the child, so it is chosen at random below Linux's ephemeral range
/// (32768–60999): a port the kernel handed out for `:0` can be handed out again, or taken as the
/// local port of an outgoing connection (to PostgreSQL, localstripe…) of a test running beside
/// this one, before the child binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// How to run the child.
#[derive(Debug, Clone)]
pub struct ServeProcess {
    pub database_url: String,
    pub stripe_api_base: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub extra_env: Vec<(String, String)>,
    tenants_file: PathBuf,
}

/// A running child.
pub struct Running {
    pub child: Child,
    pub log: tokio::task::JoinHandle<Vec<String>>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServeProcess {
    pub fn new(dir: &Path, database_url: String, stripe_api_base: String) -> ServeProcess {
        let tenants_file = dir.join("tenants.toml");
        std::fs::write(&tenants_file, tenants_toml()).expect("tenants file");
        ServeProcess {
            database_url,
            stripe_api_base,
            grpc_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            admin_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            extra_env: Vec::new(),
            tenants_file,
        }
    }

    /// Runs with this tenants file instead.
    pub fn tenants(self, text: &str) -> ServeProcess {
        std::fs::write(&self.tenants_file, text).expect("tenants file");
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> ServeProcess {
        self.extra_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts the binary and waits until it logs that it serves (at most 30 s).
    pub async fn start(&self) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paybridge"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PAYBRIDGE_DATABASE_URL", &self.database_url)
            .env("PAYBRIDGE_GRPC_ADDR", self.grpc_addr.to_string())
            .env("PAYBRIDGE_ADMIN_ADDR", self.admin_addr.to_string())
            .env("PAYBRIDGE_STRIPE_SECRET_KEY", "sk_test_paybridge")
            .env("PAYBRIDGE_STRIPE_PUBLISHABLE_KEY", PUBLISHABLE_KEY)
            .env("PAYBRIDGE_STRIPE_API_BASE", &self.stripe_api_base)
            .env("PAYBRIDGE_STRIPE_MAX_RPS", "1000")
            .env("PAYBRIDGE_RETURN_URL", RETURN_URL)
            .env("PAYBRIDGE_TENANTS_FILE", &self.tenants_file)
            .env("PAYBRIDGE_GATEWAY_TOKEN_SHA256", sha256_hex(GATEWAY_TOKEN))
            .env("PAYBRIDGE_LOG", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        spawn_logged(command, "serve", "paybridge serving").await
    }

    /// A lazy channel to the fixed address: it reconnects by itself after a restart.
    pub fn client(&self) -> PaymentServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        PaymentServiceClient::new(channel)
    }
}

/// Starts `command` (stderr piped), keeps its log lines, and waits (at most 30 s) until one of
/// them contains `serving`.
async fn spawn_logged(mut command: Command, name: &'static str, serving: &'static str) -> Running {
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting paybridge {name}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let (serving_tx, serving_rx) = tokio::sync::oneshot::channel::<()>();
    let echo = std::env::var_os("TEST_LOG").is_some();
    let lines_so_far = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let so_far = std::sync::Arc::clone(&lines_so_far);
    let log = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut serving_tx = Some(serving_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[{name}] {line}");
            }
            if line.contains(serving)
                && let Some(tx) = serving_tx.take()
            {
                let _ = tx.send(());
            }
            so_far.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
        so_far.lock().unwrap_or_else(|e| e.into_inner()).clone()
    });
    let started = tokio::time::timeout(Duration::from_secs(30), serving_rx)
        .await
        .unwrap_or_else(|_| panic!("paybridge {name} did not start within 30 s"));
    if started.is_err() {
        let lines = log.await.unwrap_or_default();
        panic!(
            "paybridge {name} exited before serving; its log:\n{}",
            lines.join("\n")
        );
    }
    Running {
        child,
        log,
        lines: lines_so_far,
    }
}

/// `paybridge gateway` as a child process in front of a core at `core_url`.
#[derive(Debug, Clone)]
pub struct GatewayProcess {
    pub core_url: String,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub extra_env: Vec<(String, String)>,
}

impl GatewayProcess {
    pub fn new(core_url: String) -> GatewayProcess {
        GatewayProcess {
            core_url,
            addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            admin_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            extra_env: Vec::new(),
        }
    }

    pub fn env(mut self, name: &str, value: &str) -> GatewayProcess {
        self.extra_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts the binary and waits until it logs that it serves (at most 30 s).
    pub async fn start(&self) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paybridge"));
        command
            .arg("gateway")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PAYBRIDGE_CORE_URL", &self.core_url)
            .env("PAYBRIDGE_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env("PAYBRIDGE_GATEWAY_ADDR", self.addr.to_string())
            .env("PAYBRIDGE_GATEWAY_ADMIN_ADDR", self.admin_addr.to_string())
            .env("PAYBRIDGE_GATEWAY_RATE_LIMIT", "1000")
            .env("PAYBRIDGE_GATEWAY_RATE_BURST", "1000")
            .env("PAYBRIDGE_LOG", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        spawn_logged(command, "gateway", "paybridge gateway serving").await
    }
}

impl Running {
    /// The log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `kill -9`.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("SIGKILL");
        let _ = self.log.await;
    }

    /// SIGTERM, then waits (at most `limit`) for the exit; returns the status, how long it took and
    /// the log lines.
    pub async fn terminate(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Duration, Vec<String>) {
        let pid = self.child.id().expect("running").to_string();
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("paybridge serve did not exit within {limit:?}"))
            .expect("wait");
        let took = started.elapsed();
        let log = self.log.await.unwrap_or_default();
        (status, took, log)
    }
}
