//! The whole configuration: command-line flags, each with a `PAYBRIDGE_*` environment variable.
//! Defaults work on a laptop; a bad setting stops start-up with one line that names it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use url::Url;

use crate::tenants::{Tenants, TokenHash};

/// paybridge: collects money for internal platforms' invoices through Stripe.
#[derive(Debug, Parser)]
#[command(name = "paybridge", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC payment service.
    Serve(Box<ServeArgs>),
    /// Applies the database migrations and exits.
    Migrate(DatabaseArgs),
    /// Runs the HTTP return gateway (browser returns from Stripe, Stripe webhooks).
    Gateway(Box<GatewayArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(
        long,
        env = "PAYBRIDGE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,paybridge=debug`).
    #[arg(long, env = "PAYBRIDGE_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite:FILE` (created on first start) or `postgres://…`.
    #[arg(
        long,
        env = "PAYBRIDGE_DATABASE_URL",
        default_value = "sqlite:paybridge.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Database connections for reads (and, on PostgreSQL, writes): the pool's size on
    /// PostgreSQL (default 16); the read pool's beside the one write connection on SQLite
    /// (default 4).
    #[arg(long, env = "PAYBRIDGE_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
}

impl DatabaseArgs {
    /// The connection count to use: the one given, or the engine's default.
    pub fn max_connections(&self) -> u32 {
        self.database_max_connections
            .unwrap_or_else(|| default_max_connections(&self.database_url))
    }
}

/// `PAYBRIDGE_DATABASE_MAX_CONNECTIONS` when unset: 4 SQLite readers, 16 on PostgreSQL.
pub fn default_max_connections(database_url: &str) -> u32 {
    if database_url.starts_with("sqlite:") {
        4
    } else {
        16
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address the gRPC service listens on.
    #[arg(long, env = "PAYBRIDGE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Also serve gRPC on this Unix socket (created at start, removed at stop): for a gateway in
    /// the same pod (`PAYBRIDGE_CORE_URL=unix:///path`), a hop without TCP.
    #[arg(long, env = "PAYBRIDGE_GRPC_SOCKET")]
    pub grpc_socket: Option<PathBuf>,
    /// Do not apply migrations at start (they are applied by `paybridge migrate`).
    #[arg(long, env = "PAYBRIDGE_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Stripe secret key (`sk_…` or restricted `rk_…`).
    #[arg(long, env = "PAYBRIDGE_STRIPE_SECRET_KEY", value_parser = parse_secret_key, hide_env_values = true)]
    pub stripe_secret_key: SecretString,
    /// Stripe publishable key (`pk_…`), handed to the platforms' pages.
    #[arg(long, env = "PAYBRIDGE_STRIPE_PUBLISHABLE_KEY", value_parser = parse_publishable_key)]
    pub stripe_publishable_key: String,
    /// Stripe API base URL (a local Stripe fake in tests).
    #[arg(
        long,
        env = "PAYBRIDGE_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: Url,
    /// Timeout of one Stripe request attempt.
    #[arg(long, env = "PAYBRIDGE_STRIPE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub stripe_timeout: Duration,
    /// Retries of a failed Stripe request (connection errors, 429, 5xx), with the same key.
    #[arg(long, env = "PAYBRIDGE_STRIPE_MAX_RETRIES", default_value_t = 2)]
    pub stripe_max_retries: u32,
    /// Stripe requests per second this process may send (every attempt counts); Stripe allows
    /// 25/s in test mode and 100/s live.
    #[arg(long, env = "PAYBRIDGE_STRIPE_MAX_RPS", default_value_t = 20)]
    pub stripe_max_rps: u32,
    /// Where Prometheus metrics are served (`GET /metrics`).
    #[arg(long, env = "PAYBRIDGE_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// The return gateway's public URL, handed to pages for `stripe.confirmPayment`.
    #[arg(
        long,
        env = "PAYBRIDGE_RETURN_URL",
        default_value = "http://127.0.0.1:8080/payment/return"
    )]
    pub return_url: Url,
    /// The gateway's public base URL: hosted payment page links are `<this>/pay/<token>`.
    /// Default: the origin of PAYBRIDGE_RETURN_URL.
    #[arg(long, env = "PAYBRIDGE_PUBLIC_URL")]
    pub public_url: Option<Url>,
    /// The tenants file (TOML).
    #[arg(long, env = "PAYBRIDGE_TENANTS_FILE")]
    pub tenants_file: PathBuf,
    /// Stripe webhook signing secret (`whsec_…`). Unset: webhooks are refused.
    #[arg(long, env = "PAYBRIDGE_STRIPE_WEBHOOK_SECRET", value_parser = parse_webhook_secret, hide_env_values = true)]
    pub stripe_webhook_secret: Option<SecretString>,
    /// The previous webhook secret, accepted beside the current one during a rotation.
    #[arg(long, env = "PAYBRIDGE_STRIPE_WEBHOOK_SECRET_PREVIOUS", value_parser = parse_webhook_secret, hide_env_values = true)]
    pub stripe_webhook_secret_previous: Option<SecretString>,
    /// How far a webhook signature's timestamp may be from now.
    #[arg(long, env = "PAYBRIDGE_STRIPE_WEBHOOK_TOLERANCE", value_parser = parse_duration, default_value = "300s")]
    pub stripe_webhook_tolerance: Duration,
    /// How often the reconciler sweeps (0s turns it off).
    #[arg(long, env = "PAYBRIDGE_RECONCILE_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub reconcile_interval: Duration,
    /// How long a payment must have been unchanged before the reconciler reads it at Stripe.
    #[arg(long, env = "PAYBRIDGE_RECONCILE_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub reconcile_after: Duration,
    /// Most payments one sweep reads at Stripe.
    #[arg(long, env = "PAYBRIDGE_RECONCILE_BATCH", default_value_t = 100)]
    pub reconcile_batch: u32,
    /// How long a replica holds the payments one sweep claimed. A replica killed mid-sweep
    /// strands its unread claims this long; then another sweep takes them.
    #[arg(long, env = "PAYBRIDGE_RECONCILE_LEASE", value_parser = parse_duration, default_value = "120s")]
    pub reconcile_lease: Duration,
    /// How long events are kept for ListEvents and WatchEvents; a cursor older than that is
    /// refused (CURSOR_EXPIRED). Units: ms, s, m, h, d.
    #[arg(long, env = "PAYBRIDGE_EVENT_RETENTION", value_parser = parse_duration, default_value = "30d")]
    pub event_retention: Duration,
    /// The longest wait between two attempts of a push (tenants' `webhook_url`); waits start at
    /// about a second and double.
    #[arg(long, env = "PAYBRIDGE_PUSH_MAX_DELAY", value_parser = parse_duration, default_value = "1h")]
    pub push_max_delay: Duration,
    /// How long a push is retried from its first failure before the event is given up.
    #[arg(long, env = "PAYBRIDGE_PUSH_RETRY_FOR", value_parser = parse_duration, default_value = "72h")]
    pub push_retry_for: Duration,
    /// Longest time one push may take (connecting, sending, the answer's status).
    #[arg(long, env = "PAYBRIDGE_PUSH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub push_timeout: Duration,
    /// How long a replica holds a tenant's pushes between two recorded events; a replica killed
    /// mid-push leaves them this long, then another sends the event again. Longer than
    /// PAYBRIDGE_PUSH_TIMEOUT.
    #[arg(long, env = "PAYBRIDGE_PUSH_LEASE", value_parser = parse_duration, default_value = "30s")]
    pub push_lease: Duration,
    /// Hex SHA-256 of the return gateway's bearer token (the gateway holds the token itself as
    /// `PAYBRIDGE_GATEWAY_TOKEN`). Unset: no gateway may call.
    #[arg(long, env = "PAYBRIDGE_GATEWAY_TOKEN_SHA256")]
    pub gateway_token_sha256: Option<String>,
    /// Longest time a gRPC call may take before it is cut off.
    #[arg(long, env = "PAYBRIDGE_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// How long in-flight calls may finish after SIGTERM.
    #[arg(long, env = "PAYBRIDGE_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
}

/// The settings `serve` runs with, checked. Tests build this directly.
#[derive(Debug)]
pub struct ServeConfig {
    pub database_url: String,
    pub database_max_connections: u32,
    pub grpc_addr: SocketAddr,
    pub grpc_socket: Option<PathBuf>,
    pub migrate: bool,
    pub stripe_secret_key: SecretString,
    pub stripe_publishable_key: String,
    pub stripe_api_base: Url,
    pub stripe_timeout: Duration,
    pub stripe_max_retries: u32,
    pub stripe_max_rps: u32,
    /// Metrics endpoint; `None` turns it off.
    pub admin_addr: Option<SocketAddr>,
    pub return_url: Url,
    /// The gateway's public base, for hosted page links ([`public_url`]).
    pub public_url: Url,
    pub tenants: Tenants,
    /// SHA-256 of the return gateway's token.
    pub gateway_token_sha256: Option<TokenHash>,
    /// Webhook signing secrets: the current one, then the previous one during a rotation.
    pub stripe_webhook_secrets: Vec<SecretString>,
    pub stripe_webhook_tolerance: Duration,
    /// Zero turns the reconciler off.
    pub reconcile_interval: Duration,
    pub reconcile_after: Duration,
    pub reconcile_batch: u32,
    /// How long a sweep's claims last (a crashed replica's claims expire after it).
    pub reconcile_lease: Duration,
    /// How long events are kept in the feed.
    pub event_retention: Duration,
    /// How pushes are retried and leased.
    pub push: crate::app::PushSettings,
    /// Longest time one push may take.
    pub push_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// How often health re-checks the database.
    pub health_interval: Duration,
}

impl ServeArgs {
    /// Loads the tenants file and checks what clap cannot; the error names the setting.
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let tenants = Tenants::load(&self.tenants_file).map_err(|error| {
            format!(
                "PAYBRIDGE_TENANTS_FILE ({}): {error}",
                self.tenants_file.display()
            )
        })?;
        if self.stripe_max_rps == 0 {
            return Err("PAYBRIDGE_STRIPE_MAX_RPS: must be at least 1".to_owned());
        }
        if !matches!(self.return_url.scheme(), "https" | "http") {
            return Err("PAYBRIDGE_RETURN_URL: must be an http(s) URL".to_owned());
        }
        let public_url = public_url(self.public_url.as_ref(), &self.return_url)
            .map_err(|error| format!("PAYBRIDGE_PUBLIC_URL: {error}"))?;
        let gateway_token_sha256 = match &self.gateway_token_sha256 {
            None => None,
            Some(hex) => {
                let hash = TokenHash::parse_hex(hex)
                    .map_err(|error| format!("PAYBRIDGE_GATEWAY_TOKEN_SHA256: {error}"))?;
                if tenants.uses_token_hash(&hash) {
                    return Err("PAYBRIDGE_GATEWAY_TOKEN_SHA256: the gateway's token must differ from every tenant's".to_owned());
                }
                Some(hash)
            }
        };
        if self.push_max_delay.is_zero() || self.push_timeout.is_zero() {
            return Err(
                "PAYBRIDGE_PUSH_MAX_DELAY and PAYBRIDGE_PUSH_TIMEOUT: must be greater than zero"
                    .to_owned(),
            );
        }
        if self.push_lease <= self.push_timeout {
            return Err(
                "PAYBRIDGE_PUSH_LEASE: must be longer than PAYBRIDGE_PUSH_TIMEOUT (a push must \
                 end before another replica may send it again)"
                    .to_owned(),
            );
        }
        crate::adapters::store::Backend::from_url(&self.database.database_url)
            .map_err(|error| format!("PAYBRIDGE_DATABASE_URL: {error}"))?;
        let database_max_connections = self.database.max_connections();
        Ok(ServeConfig {
            database_url: self.database.database_url,
            database_max_connections,
            grpc_addr: self.grpc_addr,
            grpc_socket: self.grpc_socket,
            migrate: !self.no_migrate,
            stripe_secret_key: self.stripe_secret_key,
            stripe_publishable_key: self.stripe_publishable_key,
            stripe_api_base: self.stripe_api_base,
            stripe_timeout: self.stripe_timeout,
            stripe_max_retries: self.stripe_max_retries,
            stripe_max_rps: self.stripe_max_rps,
            admin_addr: Some(self.admin_addr),
            return_url: self.return_url,
            public_url,
            tenants,
            gateway_token_sha256,
            stripe_webhook_secrets: self
                .stripe_webhook_secret
                .into_iter()
                .chain(self.stripe_webhook_secret_previous)
                .collect(),
            stripe_webhook_tolerance: self.stripe_webhook_tolerance,
            reconcile_interval: self.reconcile_interval,
            reconcile_after: self.reconcile_after,
            reconcile_batch: self.reconcile_batch,
            reconcile_lease: self.reconcile_lease,
            event_retention: self.event_retention,
            push: crate::app::PushSettings {
                max_delay: self.push_max_delay,
                retry_for: self.push_retry_for,
                lease: self.push_lease,
                ..Default::default()
            },
            push_timeout: self.push_timeout,
            request_timeout: self.request_timeout,
            shutdown_grace: self.shutdown_grace,
            health_interval: Duration::from_secs(5),
        })
    }
}

/// The gateway's public base (`PAYBRIDGE_PUBLIC_URL`): the one given, or the origin of the return
/// URL. An http(s) URL without user, query or fragment; a path is kept (a gateway under a
/// prefix), without its trailing `/`.
pub fn public_url(given: Option<&Url>, return_url: &Url) -> Result<Url, String> {
    let Some(given) = given else {
        return Url::parse(&return_url.origin().ascii_serialization())
            .map_err(|_| "PAYBRIDGE_RETURN_URL has no origin to default to".to_owned());
    };
    if !matches!(given.scheme(), "https" | "http") || given.host().is_none() {
        return Err("must be an http(s) URL".to_owned());
    }
    if !given.username().is_empty() || given.password().is_some() {
        return Err("must not carry a user name or password".to_owned());
    }
    if given.query().is_some() || given.fragment().is_some() {
        return Err("must not have a query or a fragment".to_owned());
    }
    Ok(given.clone())
}

/// A public base as links start: without the trailing `/`.
pub fn public_base(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address the HTTP gateway listens on.
    #[arg(long, env = "PAYBRIDGE_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,
    /// The core's gRPC URL (`paybridge serve`, usually in the same pod): `http://host:port`, or
    /// `unix:///path` for the core's `PAYBRIDGE_GRPC_SOCKET`.
    #[arg(
        long,
        env = "PAYBRIDGE_CORE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub core_url: Url,
    /// The gateway's bearer token towards the core (the core holds its SHA-256).
    #[arg(long, env = "PAYBRIDGE_GATEWAY_TOKEN", value_parser = parse_gateway_token, hide_env_values = true)]
    pub gateway_token: SecretString,
    /// Return requests per second one client IP may make (sustained).
    #[arg(long, env = "PAYBRIDGE_GATEWAY_RATE_LIMIT", default_value_t = 2)]
    pub rate_limit: u32,
    /// Return requests one client IP may make in a burst.
    #[arg(long, env = "PAYBRIDGE_GATEWAY_RATE_BURST", default_value_t = 20)]
    pub rate_burst: u32,
    /// Return requests handled at once; more are answered 503 at once.
    #[arg(long, env = "PAYBRIDGE_GATEWAY_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    /// Longest time one call to the core may take.
    #[arg(long, env = "PAYBRIDGE_GATEWAY_CORE_TIMEOUT", value_parser = parse_duration, default_value = "15s")]
    pub core_timeout: Duration,
    /// Longest a client may take to send a request's headers, or a webhook's whole body; a
    /// connection idle that long between requests is closed too (slow-client protection).
    #[arg(long, env = "PAYBRIDGE_GATEWAY_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub read_timeout: Duration,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "PAYBRIDGE_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
    /// Stripe.js, which the hosted payment page loads (its origin goes into the page's
    /// Content-Security-Policy). https; http only to a loopback address (a stand-in in tests).
    #[arg(
        long,
        env = "PAYBRIDGE_STRIPE_JS_URL",
        default_value = "https://js.stripe.com/v3/"
    )]
    pub stripe_js_url: Url,
    /// Where the gateway's Prometheus metrics are served (`GET /metrics`). Its own variable, not
    /// `serve`'s `PAYBRIDGE_ADMIN_ADDR`, so that one environment can hold both processes'.
    #[arg(
        long,
        env = "PAYBRIDGE_GATEWAY_ADMIN_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    pub gateway_admin_addr: SocketAddr,
}

/// The settings `gateway` runs with, checked. Tests build this directly.
#[derive(Debug)]
pub struct GatewayConfig {
    pub addr: SocketAddr,
    pub core_url: Url,
    pub gateway_token: SecretString,
    /// Sustained return requests per second per client IP.
    pub rate_limit: u32,
    /// Burst of return requests per client IP.
    pub rate_burst: u32,
    pub max_concurrency: usize,
    pub core_timeout: Duration,
    /// Headers (and a webhook body) must arrive within this; also the idle keep-alive limit.
    pub read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Metrics endpoint; `None` turns it off.
    pub admin_addr: Option<SocketAddr>,
    /// Stripe.js for the hosted payment page.
    pub stripe_js_url: Url,
}

impl GatewayArgs {
    /// Checks what clap cannot; the error names the setting.
    pub fn into_config(self) -> Result<GatewayConfig, String> {
        // The core sits beside the gateway in the pod: plain HTTP/2 over loopback, the pod
        // network, or a Unix socket on a volume both containers mount.
        let core_url_ok = match self.core_url.scheme() {
            "http" => self.core_url.host().is_some(),
            "unix" => {
                self.core_url.host_str().is_none_or(str::is_empty)
                    && self.core_url.path().len() > 1
                    && self.core_url.query().is_none()
            }
            _ => false,
        };
        if !core_url_ok {
            return Err(
                "PAYBRIDGE_CORE_URL: must be http://host:port of the core, or unix:///path of its socket"
                    .to_owned(),
            );
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return Err(
                "PAYBRIDGE_GATEWAY_RATE_LIMIT and PAYBRIDGE_GATEWAY_RATE_BURST: must be at least 1"
                    .to_owned(),
            );
        }
        if self.max_concurrency == 0 {
            return Err("PAYBRIDGE_GATEWAY_MAX_CONCURRENCY: must be at least 1".to_owned());
        }
        if self.read_timeout.is_zero() {
            return Err("PAYBRIDGE_GATEWAY_READ_TIMEOUT: must be greater than zero".to_owned());
        }
        check_stripe_js_url(&self.stripe_js_url)
            .map_err(|error| format!("PAYBRIDGE_STRIPE_JS_URL: {error}"))?;
        Ok(GatewayConfig {
            addr: self.gateway_addr,
            core_url: self.core_url,
            gateway_token: self.gateway_token,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            max_concurrency: self.max_concurrency,
            core_timeout: self.core_timeout,
            read_timeout: self.read_timeout,
            shutdown_grace: self.shutdown_grace,
            admin_addr: Some(self.gateway_admin_addr),
            stripe_js_url: self.stripe_js_url,
        })
    }
}

/// Stripe.js's URL: https, or http to a loopback address (a stand-in); no user, no fragment.
pub fn check_stripe_js_url(url: &Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("must name a host".to_owned()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be https (http only to a loopback address)".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err("must not carry a user name, password or fragment".to_owned());
    }
    Ok(())
}

fn parse_gateway_token(raw: &str) -> Result<SecretString, String> {
    // Sent as an HTTP header value; the value is never echoed back.
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must be non-empty printable ASCII without spaces (value not shown)".to_owned())
    } else {
        Ok(SecretString::from(raw.to_owned()))
    }
}

fn parse_secret_key(raw: &str) -> Result<SecretString, String> {
    // The value is never echoed back: clap prints this message next to the flag's name.
    if raw.starts_with("sk_") || raw.starts_with("rk_") {
        Ok(SecretString::from(raw.to_owned()))
    } else {
        Err("must start with sk_ or rk_ (value not shown)".to_owned())
    }
}

fn parse_webhook_secret(raw: &str) -> Result<SecretString, String> {
    if raw.starts_with("whsec_") && raw.len() > 6 {
        Ok(SecretString::from(raw.to_owned()))
    } else {
        Err("must start with whsec_ (value not shown)".to_owned())
    }
}

fn parse_publishable_key(raw: &str) -> Result<String, String> {
    if raw.starts_with("pk_") {
        Ok(raw.to_owned())
    } else {
        Err("must start with pk_".to_owned())
    }
}

/// Parses durations like `500ms`, `30s`, `5m`, `1h`, `30d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: ms, s, m, h or d"))?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 30s"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(format!("{raw:?}: unit must be ms, s, m, h or d")),
    }
    .ok_or_else(|| format!("{raw:?} is too long"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_defaults_to_the_return_urls_origin() {
        let return_url: Url = "https://pay.example.com:8443/payment/return"
            .parse()
            .unwrap();
        let default = public_url(None, &return_url).unwrap();
        assert_eq!(public_base(&default), "https://pay.example.com:8443");
        let given: Url = "https://example.com/payments/".parse().unwrap();
        assert_eq!(
            public_base(&public_url(Some(&given), &return_url).unwrap()),
            "https://example.com/payments"
        );
        for bad in [
            "ftp://x.example/",
            "https://u:p@x.example/",
            "https://x.example/?a=1",
            "https://x.example/#f",
        ] {
            let bad: Url = bad.parse().unwrap();
            assert!(public_url(Some(&bad), &return_url).is_err(), "{bad}");
        }
    }

    #[test]
    fn stripe_js_is_https_or_http_to_a_loopback_stand_in() {
        for good in [
            "https://js.stripe.com/v3/",
            "http://127.0.0.1:4000/v3/",
            "http://localhost/v3/",
        ] {
            assert!(
                check_stripe_js_url(&good.parse().unwrap()).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "http://js.stripe.com/v3/",
            "https://u@js.stripe.com/v3/",
            "https://js.stripe.com/v3/#x",
            "data:text/javascript,alert(1)",
        ] {
            assert!(check_stripe_js_url(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    fn gateway_with_core_url(core_url: &str) -> Result<GatewayConfig, String> {
        let cli = Cli::try_parse_from([
            "paybridge",
            "gateway",
            "--core-url",
            core_url,
            "--gateway-token",
            "a-long-enough-gateway-token-for-tests",
        ])
        .map_err(|error| error.to_string())?;
        match cli.command {
            Command::Gateway(args) => args.into_config(),
            _ => unreachable!("parsed the gateway subcommand"),
        }
    }

    #[test]
    fn the_gateway_refuses_a_stripe_js_url_naming_the_setting() {
        let parse = |url: &str| {
            let cli = Cli::try_parse_from([
                "paybridge",
                "gateway",
                "--gateway-token",
                "a-long-enough-gateway-token-for-tests",
                "--stripe-js-url",
                url,
            ])
            .map_err(|error| error.to_string())?;
            match cli.command {
                Command::Gateway(args) => args.into_config(),
                _ => unreachable!("parsed the gateway subcommand"),
            }
        };
        let default = gateway_with_core_url("http://127.0.0.1:50051").unwrap();
        assert_eq!(default.stripe_js_url.as_str(), "https://js.stripe.com/v3/");
        let error = parse("http://js.example.com/v3/").unwrap_err();
        assert!(error.contains("PAYBRIDGE_STRIPE_JS_URL"), "{error}");
        assert!(parse("http://127.0.0.1:9/v3/").is_ok());
    }

    #[test]
    fn the_core_url_is_http_host_port_or_a_unix_socket_path() {
        for good in [
            "http://127.0.0.1:50051",
            "http://core:50051",
            "unix:///run/paybridge/core.sock",
            "unix:/run/paybridge/core.sock",
        ] {
            let config = gateway_with_core_url(good);
            assert!(config.is_ok(), "{good}: {:?}", config.err());
        }
        for bad in [
            "https://core:50051",
            "unix://core/run/core.sock",
            "unix:///",
            "unix:///run/core.sock?x=1",
            "ftp://core",
        ] {
            let error = gateway_with_core_url(bad).expect_err(bad);
            assert!(error.contains("PAYBRIDGE_CORE_URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_bad_secret_key_is_refused_without_echoing_it() {
        let error = parse_secret_key("pk_live_oops").unwrap_err();
        assert!(!error.contains("pk_live_oops"));
    }
}
