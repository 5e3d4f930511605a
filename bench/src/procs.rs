//! The parts the bench starts: `paybridge serve` and `paybridge gateway` as child processes of the
//! release binary, a throwaway PostgreSQL (`scripts/throwaway-postgres`), and localstripe. Every
//! part stops when its guard drops, so a failed run leaves nothing behind.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The bench tenant's bearer token (its SHA-256 goes into the tenants file).
pub(crate) const TENANT_TOKEN: &str = "bench-tenant-token";
/// The gateway's token towards the core.
pub(crate) const GATEWAY_TOKEN: &str = "bench-gateway-token";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_paybridge_bench";
pub(crate) const PUBLISHABLE_KEY: &str = "pk_test_paybridge_bench";

pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Where `cargo build --release` in `repo` leaves the paybridge binary: under `CARGO_TARGET_DIR`
/// when set, else the repository's `target/`.
pub(crate) fn release_binary(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo.join("target"), PathBuf::from)
        .join("release/paybridge")
}

/// Runs `cargo build --release --bin paybridge` in `repo`, so that the binary measured is the
/// current source's, and returns the path cargo built it at.
pub(crate) fn build_release(repo: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building: cargo build --release --bin paybridge");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--bin", "paybridge"])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(repo.join("Cargo.toml"))
        .current_dir(repo)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build --release --bin paybridge")?;
    if !output.status.success() {
        bail!(
            "cargo build --release --bin paybridge failed ({})",
            output.status
        );
    }
    // One JSON message a line; the binary's `compiler-artifact` names its executable.
    let built = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from));
    Ok(built.unwrap_or_else(|| release_binary(repo)))
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A child process, sent SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
    pub(crate) log: PathBuf,
}

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// Where the bench's parts are and how they are configured.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    pub(crate) paybridge: PathBuf,
    pub(crate) repo: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) tenants_file: PathBuf,
    /// A command (and its arguments) that `serve` runs under, for profiling.
    pub(crate) serve_wrapper: Vec<String>,
    /// Extra environment for `serve` (`--serve-env`), applied last.
    pub(crate) serve_env: Vec<(String, String)>,
    /// Extra environment for `gateway` (`--gateway-env`), applied last.
    pub(crate) gateway_env: Vec<(String, String)>,
    /// The gateway reaches the core through its Unix socket (the chart's layout), not TCP.
    pub(crate) core_socket: bool,
}

impl Parts {
    pub(crate) fn new(paybridge: PathBuf, repo: PathBuf, work: PathBuf) -> anyhow::Result<Parts> {
        let tenants_file = work.join("tenants.toml");
        std::fs::write(
            &tenants_file,
            format!(
                "[[tenants]]\nid = \"bench\"\ntoken_sha256 = \"{}\"\n\
                 allowed_redirect_origins = [\"https://shop.example.com\"]\n\
                 success_url = \"https://shop.example.com/paid\"\n\
                 failure_url = \"https://shop.example.com/payment-failed\"\n",
                sha256_hex(TENANT_TOKEN)
            ),
        )?;
        Ok(Parts {
            paybridge,
            repo,
            work,
            tenants_file,
            serve_wrapper: Vec::new(),
            serve_env: Vec::new(),
            gateway_env: Vec::new(),
            core_socket: true,
        })
    }

    fn spawn(
        &self,
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<ChildGuard> {
        let log = self.work.join(format!(
            "{name}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut command = match self.serve_wrapper.split_first() {
            Some((program, wrapper_args)) if name == "serve" => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(&self.paybridge);
                command
            }
            _ => Command::new(&self.paybridge),
        };
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PAYBRIDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        let extra = match name {
            "serve" => &self.serve_env,
            "gateway" => &self.gateway_env,
            _ => &Vec::new(),
        };
        command.envs(extra.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.paybridge.display()))?;
        Ok(ChildGuard { child, log })
    }

    /// Starts `paybridge serve`; returns it once grpc.health says SERVING, with the time from
    /// spawn to SERVING.
    pub(crate) async fn serve(
        &self,
        database_url: &str,
        stripe_api_base: &str,
        gateway_addr: SocketAddr,
    ) -> anyhow::Result<(ChildGuard, SocketAddr, Duration)> {
        let grpc_addr = free_addr()?;
        let env = [
            ("PAYBRIDGE_DATABASE_URL", database_url.to_owned()),
            ("PAYBRIDGE_GRPC_ADDR", grpc_addr.to_string()),
            ("PAYBRIDGE_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            (
                "PAYBRIDGE_STRIPE_SECRET_KEY",
                "sk_test_paybridge_bench".to_owned(),
            ),
            (
                "PAYBRIDGE_STRIPE_PUBLISHABLE_KEY",
                PUBLISHABLE_KEY.to_owned(),
            ),
            ("PAYBRIDGE_STRIPE_API_BASE", stripe_api_base.to_owned()),
            // The budget protects the real Stripe's rate limit; the stand-in has none.
            ("PAYBRIDGE_STRIPE_MAX_RPS", "1000000".to_owned()),
            ("PAYBRIDGE_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            (
                "PAYBRIDGE_RETURN_URL",
                format!("http://{gateway_addr}/payment/return"),
            ),
            (
                "PAYBRIDGE_TENANTS_FILE",
                self.tenants_file.display().to_string(),
            ),
            ("PAYBRIDGE_GATEWAY_TOKEN_SHA256", sha256_hex(GATEWAY_TOKEN)),
        ];
        let socket = self
            .core_socket
            .then(|| ("PAYBRIDGE_GRPC_SOCKET", self.socket_path(grpc_addr)));
        let env: Vec<(&str, String)> = env.into_iter().chain(socket).collect();
        let started = Instant::now();
        let mut child = self.spawn("serve", &["serve"], &env)?;
        let endpoint = Endpoint::from_shared(format!("http://{grpc_addr}"))?
            .connect_timeout(Duration::from_millis(200));
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok(channel) = endpoint.connect().await {
                let mut health = HealthClient::new(channel);
                loop {
                    match health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                    {
                        Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                            return Ok((child, grpc_addr, started.elapsed()));
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if let Some(status) = child.exited() {
                bail!(
                    "paybridge serve exited ({status}) before SERVING:\n{}",
                    child.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "paybridge serve not SERVING after 60 s:\n{}",
                    child.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The Unix socket of the core listening on `grpc_addr` (one per core, in the work dir).
    fn socket_path(&self, grpc_addr: SocketAddr) -> String {
        self.work
            .join(format!("core-{}.sock", grpc_addr.port()))
            .display()
            .to_string()
    }

    /// How the gateway reaches the core listening on `grpc_addr`.
    fn core_url(&self, grpc_addr: SocketAddr) -> String {
        if self.core_socket {
            format!("unix://{}", self.socket_path(grpc_addr))
        } else {
            format!("http://{grpc_addr}")
        }
    }

    /// Starts `paybridge gateway` in front of the core; returns it once `/readyz` answers 200.
    pub(crate) async fn gateway(
        &self,
        addr: SocketAddr,
        core: SocketAddr,
    ) -> anyhow::Result<ChildGuard> {
        let env = [
            ("PAYBRIDGE_GATEWAY_ADDR", addr.to_string()),
            ("PAYBRIDGE_CORE_URL", self.core_url(core)),
            ("PAYBRIDGE_GATEWAY_TOKEN", GATEWAY_TOKEN.to_owned()),
            // The gateway's admin port, under its own name (issue 14) and the one older
            // binaries read: each binary takes the one it knows.
            ("PAYBRIDGE_GATEWAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("PAYBRIDGE_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            // The bench's connections all come from 127.0.0.1: the per-IP limit would cap them.
            ("PAYBRIDGE_GATEWAY_RATE_LIMIT", "10000000".to_owned()),
            ("PAYBRIDGE_GATEWAY_RATE_BURST", "10000000".to_owned()),
        ];
        let mut child = self.spawn("gateway", &["gateway"], &env)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if crate::load::http_get_status(addr, "/readyz").await == Some(200) {
                return Ok(child);
            }
            if let Some(status) = child.exited() {
                bail!(
                    "paybridge gateway exited ({status}) before ready:\n{}",
                    child.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "paybridge gateway not ready after 30 s:\n{}",
                    child.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A throwaway PostgreSQL cluster, stopped and deleted on drop.
#[derive(Debug)]
pub(crate) struct Postgres {
    script: PathBuf,
    dir: PathBuf,
    pub(crate) url: String,
}

impl Postgres {
    pub(crate) fn start(repo: &Path, dir: PathBuf) -> anyhow::Result<Postgres> {
        let script = repo.join("scripts/throwaway-postgres");
        let output = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/throwaway-postgres start")?;
        if !output.status.success() {
            bail!(
                "scripts/throwaway-postgres start failed ({})",
                output.status
            );
        }
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !url.starts_with("postgres://") {
            bail!("scripts/throwaway-postgres printed no URL");
        }
        Ok(Postgres { script, dir, url })
    }

    /// The server's main process (its sessions are its children), from `postmaster.pid` in the
    /// cluster directory the script chose (`cluster-path` when it had to move it).
    pub(crate) fn postmaster_pid(&self) -> Option<u32> {
        let cluster = std::fs::read_to_string(self.dir.join("cluster-path"))
            .map(|path| PathBuf::from(path.trim()))
            .unwrap_or_else(|_| self.dir.join("cluster"));
        let file = std::fs::read_to_string(cluster.join("data/postmaster.pid")).ok()?;
        file.lines().next()?.trim().parse().ok()
    }

    /// A fresh database in the cluster, for one serve instance.
    pub(crate) fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let status = Command::new("psql")
            .args([&self.url, "-q", "-c", &format!("create database {name}")])
            .stdout(Stdio::null())
            .status()
            .context("running psql")?;
        if !status.success() {
            bail!("psql could not create database {name}");
        }
        Ok(format!(
            "{}/{name}",
            self.url
                .rsplit_once('/')
                .map_or(self.url.as_str(), |(base, _)| base)
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// localstripe behind the project's compat layer, for `--stripe localstripe`.
#[derive(Debug)]
pub(crate) struct LocalStripe {
    child: Child,
    pub(crate) base_url: String,
}

impl LocalStripe {
    pub(crate) fn start(repo: &Path) -> anyhow::Result<LocalStripe> {
        use std::io::BufRead;
        let setup = Command::new(repo.join("tests/it/support/localstripe/setup.sh"))
            .stderr(Stdio::inherit())
            .output()
            .context("running tests/it/support/localstripe/setup.sh")?;
        if !setup.status.success() {
            bail!("tests/it/support/localstripe/setup.sh failed");
        }
        let python = String::from_utf8_lossy(&setup.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut child = Command::new(python)
            .arg(repo.join("tests/it/support/localstripe/compat.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-with-parent",
                "--log-level",
                "WARNING",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting localstripe")?;
        let stdout = child.stdout.take().context("localstripe stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines
            .next()
            .context("localstripe exited before listening")??;
        let addr = line
            .strip_prefix("LISTENING ")
            .with_context(|| format!("unexpected line from localstripe: {line}"))?
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LocalStripe {
            child,
            base_url: format!("http://{addr}"),
        })
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
