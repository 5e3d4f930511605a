//! Building and running the `serve` application. `Application::build` binds every listener (port
//! 0 works) and returns; `run_until_stopped` serves until the shutdown future resolves, then
//! drains. Tests use exactly this.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::adapters::push::HttpPusher;
use crate::adapters::store::Store;
use crate::adapters::stripe::webhook::WebhookVerifier;
use crate::adapters::stripe::{StripeBudget, StripeConfig, StripeProvider};
use crate::app::ports::WebhookVerification;
use crate::app::{PaymentSettings, Payments, PushTarget, PushWorker, SystemClock};
use crate::config::ServeConfig;
use crate::lifecycle::{AdminListener, serve_until_stopped};
use crate::pb::v1 as pb;
use crate::reload::Reloader;
use crate::tenants::{LiveTenants, Tenants, TenantsFile, TokenHash};
use crate::transport::grpc::{CoreSocket, CoreTls, PaymentGrpcService, TlsFiles, incoming};

/// The gRPC service name health reports on, beside the overall `""`.
const PAYMENT_SERVICE_NAME: &str = "paybridge.v1.PaymentService";

/// A built, bound, not yet running `serve`.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    socket: Option<CoreSocket>,
    admin: AdminListener,
    grpc_addr: SocketAddr,
    store: Store,
    payments: Arc<Payments>,
    tenants: LiveTenants,
    tls: Option<CoreTls>,
    /// Follow the tenants file and the TLS files while serving.
    tenants_reloader: Option<Reloader<TenantsFile>>,
    tls_reloader: Option<Reloader<TlsFiles>>,
    reload_interval: Duration,
    gateway_token: Option<TokenHash>,
    request_timeout: Duration,
    shutdown_grace: Duration,
    health_interval: Duration,
    reconcile: ReconcileSettings,
    event_retention: Duration,
    pushes: Arc<PushWorker>,
    stripe_budget: StripeBudget,
    /// This process's name in the shared Stripe budget (PostgreSQL).
    replica_id: String,
}

#[derive(Debug, Clone, Copy)]
struct ReconcileSettings {
    interval: Duration,
    after: Duration,
    batch: u32,
    lease: Duration,
}

impl Application {
    /// Connects the database (migrating unless told not to), builds the Stripe client, and binds
    /// the gRPC listener.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Application> {
        let store = Store::connect(&config.database_url, config.database_max_connections)
            .await
            .context("PAYBRIDGE_DATABASE_URL: connecting to the database")?;
        if config.migrate {
            store.migrate().await.context("applying migrations")?;
        }
        let provider = StripeProvider::new(StripeConfig {
            secret_key: config.stripe_secret_key,
            api_base: config.stripe_api_base,
            request_timeout: config.stripe_timeout,
            max_retries: config.stripe_max_retries,
            max_requests_per_second: config.stripe_max_rps,
        })
        .context("PAYBRIDGE_STRIPE_*: building the Stripe client")?;
        // On PostgreSQL the budget is the account's, shared by the replicas: take a share of
        // it before serving.
        let stripe_budget = provider.budget().clone();
        let replica_id = replica_id();
        if let Some(share) = store
            .renew_budget_share(&replica_id, BUDGET_SHARE_LEASE)
            .await
            .context("taking a share of the Stripe request budget")?
        {
            stripe_budget.set_share(share.fraction);
            tracing::info!(
                replicas = share.replicas,
                share_per_second = stripe_budget.share_per_second(),
                account_per_second = stripe_budget.account_per_second(),
                "Stripe request budget shared"
            );
        }
        // The tenants file is read again here (it may have changed since the settings were
        // checked) and followed from now on.
        let (tenants, tenants_reloader) = match config.tenants_file {
            Some(path) => {
                let (reloader, receiver) = Reloader::start(TenantsFile {
                    path,
                    gateway_token: config.gateway_token_sha256,
                })
                .map_err(anyhow::Error::msg)
                .context("PAYBRIDGE_TENANTS_FILE")?;
                (LiveTenants::following(receiver), Some(reloader))
            }
            None => (LiveTenants::fixed(config.tenants), None),
        };
        let (tls, tls_reloader) = match config.grpc_tls {
            Some(files) => {
                let (reloader, receiver) = Reloader::start(files)
                    .map_err(anyhow::Error::msg)
                    .context("PAYBRIDGE_GRPC_TLS_*")?;
                (Some(CoreTls::following(receiver)), Some(reloader))
            }
            None => (None, None),
        };
        // Each tenant with a webhook_url gets its events pushed (`run_pushes`).
        let pusher = HttpPusher::new(
            config.push_timeout,
            Arc::new(crate::transport::grpc::push_body),
        )
        .map_err(anyhow::Error::msg)
        .context("PAYBRIDGE_PUSH_*: building the push client")?;
        let pushes = Arc::new(PushWorker::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(pusher),
            Arc::new(SystemClock),
            config.push,
        ));
        let payments = Arc::new(Payments::new(
            Arc::new(store.clone()),
            Arc::new(provider),
            PaymentSettings {
                publishable_key: config.stripe_publishable_key,
                return_url: config.return_url.to_string(),
                public_url: crate::config::public_base(&config.public_url),
                webhook_verifier: (!config.stripe_webhook_secrets.is_empty()).then(|| {
                    Arc::new(WebhookVerifier::new(
                        config.stripe_webhook_secrets,
                        config.stripe_webhook_tolerance,
                    )) as Arc<dyn WebhookVerification>
                }),
            },
        ));
        let admin = AdminListener::bind("PAYBRIDGE_ADMIN_ADDR", config.admin_addr).await?;
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("PAYBRIDGE_GRPC_ADDR: binding {}", config.grpc_addr))?;
        let grpc_addr = listener.local_addr()?;
        let socket = config
            .grpc_socket
            .as_deref()
            .map(CoreSocket::bind)
            .transpose()
            .context("PAYBRIDGE_GRPC_SOCKET")?;
        Ok(Application {
            listener,
            socket,
            admin,
            grpc_addr,
            store,
            payments,
            tenants,
            tls,
            tenants_reloader,
            tls_reloader,
            reload_interval: config.reload_interval,
            gateway_token: config.gateway_token_sha256,
            request_timeout: config.request_timeout,
            shutdown_grace: config.shutdown_grace,
            health_interval: config.health_interval,
            reconcile: ReconcileSettings {
                interval: config.reconcile_interval,
                after: config.reconcile_after,
                batch: config.reconcile_batch,
                lease: config.reconcile_lease,
            },
            event_retention: config.event_retention,
            pushes,
            stripe_budget,
            replica_id,
        })
    }

    /// The address metrics are served on, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
    }

    /// The address the gRPC service is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Serves until `shutdown` resolves; then reports NOT_SERVING, stops accepting, and lets
    /// in-flight calls finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_health(&health_reporter, ServingStatus::NotServing).await;
        let health_task = tokio::spawn(watch_database(
            self.store.clone(),
            health_reporter.clone(),
            self.health_interval,
        ));
        let reflection_v1 = reflection()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        let reconciler = (!self.reconcile.interval.is_zero())
            .then(|| tokio::spawn(run_reconciler(Arc::clone(&self.payments), self.reconcile)));
        let pushes = tokio::spawn(run_pushes(self.pushes, self.tenants.clone()));
        let reloaders = [
            self.tenants_reloader
                .map(|reloader| tokio::spawn(reloader.run(self.reload_interval))),
            self.tls_reloader
                .map(|reloader| tokio::spawn(reloader.run(self.reload_interval))),
        ];
        let budget_shares = tokio::spawn(share_stripe_budget(
            self.store.clone(),
            self.stripe_budget.clone(),
            self.replica_id.clone(),
        ));
        let janitor = tokio::spawn(run_event_janitor(
            Arc::clone(&self.payments),
            self.event_retention,
        ));
        let payment_service = pb::payment_service_server::PaymentServiceServer::new(
            PaymentGrpcService::new(self.payments, self.tenants, self.gateway_token),
        );

        let socket_path = self.socket.as_ref().map(|socket| socket.path().to_owned());
        let server = Server::builder()
            // Cut off calls that hang (a stuck database or Stripe) instead of piling them up;
            // a client's shorter grpc-timeout still wins.
            .timeout(self.request_timeout)
            // Detect dead peers on idle connections.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Calls by method and code, with latency.
            .layer(crate::transport::grpc::RpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(payment_service);
        let tls = self.tls.is_some();
        let incoming = incoming(self.listener, self.socket, self.tls);
        tracing::info!(grpc_addr = %self.grpc_addr, grpc_socket = ?socket_path, tls, "paybridge serving");
        let served = serve_until_stopped(
            self.admin,
            |stopped| async move {
                let stopped = async {
                    let _ = stopped.await;
                };
                let served = server.serve_with_incoming_shutdown(incoming, stopped).await;
                served.context("gRPC server")
            },
            shutdown,
            async {
                health_task.abort();
                janitor.abort();
                budget_shares.abort();
                // A push in flight keeps its lease until it runs out; then it is sent again.
                pushes.abort();
                for reloader in reloaders.into_iter().flatten() {
                    reloader.abort();
                }
                if let Some(reconciler) = reconciler {
                    reconciler.abort();
                }
                set_health(&health_reporter, ServingStatus::NotServing).await;
            },
            self.shutdown_grace,
        )
        .await;
        // The other replicas take this one's share at their next renewal.
        if let Err(error) = self.store.release_budget_share(&self.replica_id).await {
            tracing::warn!(%error, "giving back the Stripe budget share failed; it lapses");
        }
        self.store.close().await;
        tracing::info!("stopped");
        served
    }
}

/// The push targets of a set of tenants: each tenant with a `webhook_url`.
fn push_targets(tenants: &Tenants) -> Vec<PushTarget> {
    tenants
        .iter()
        .filter_map(|tenant| {
            tenant.push().map(|endpoint| PushTarget {
                tenant: tenant.id().as_str().to_owned(),
                endpoint: endpoint.clone(),
            })
        })
        .collect()
}

fn same_targets(a: &[PushTarget], b: &[PushTarget]) -> bool {
    use secrecy::ExposeSecret;
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.tenant == b.tenant
                && a.endpoint.url() == b.endpoint.url()
                && a.endpoint.secret().expose_secret() == b.endpoint.secret().expose_secret()
        })
}

/// Pushes the events of the tenants that have a `webhook_url`, until aborted at shutdown. When
/// the tenants file changes the push targets (a URL or secret added, changed or removed), the
/// loops stop and start again with the new ones: a push cut short keeps its lease until it runs
/// out and is then sent again (same `Paybridge-Event-Id`).
async fn run_pushes(worker: Arc<PushWorker>, mut tenants: LiveTenants) {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut targets = push_targets(&tenants.current());
    loop {
        let running = (!targets.is_empty()).then(|| {
            tracing::info!(tenants = targets.len(), "pushing events");
            AbortOnDrop(tokio::spawn(Arc::clone(&worker).run(targets.clone())))
        });
        let next = loop {
            let Some(changed) = tenants.changed().await else {
                // The set can no longer change: push to the current targets until shutdown.
                std::future::pending::<()>().await;
                unreachable!("pending never resolves");
            };
            let next = push_targets(&changed);
            if !same_targets(&next, &targets) {
                break next;
            }
        };
        drop(running);
        targets = next;
    }
}

/// Server reflection, in the two versions clients speak: `grpc.reflection.v1` and the older
/// `v1alpha` (Python's grpcio-reflection, older grpcurl and grpcui). Each version's builder adds
/// its own service; the caller adds the other one's, so that both list every service served.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Sweeps every interval until aborted at shutdown (a payment mid-sweep keeps its lease and is
/// picked up again after it runs out).
async fn run_reconciler(payments: Arc<Payments>, settings: ReconcileSettings) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match payments
            .reconcile_once(settings.after, settings.batch, settings.lease)
            .await
        {
            Ok(report) if report.checked > 0 => tracing::info!(?report, "reconciler sweep"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reconciler sweep failed"),
        }
        match payments
            .reconcile_refunds_once(settings.after, settings.batch, settings.lease)
            .await
        {
            Ok(report) if report != Default::default() => {
                tracing::info!(?report, "reconciler refund sweep");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reconciler refund sweep failed"),
        }
        match payments
            .reconcile_disputes_once(settings.after, settings.batch)
            .await
        {
            Ok(report) if report != Default::default() => {
                tracing::info!(?report, "reconciler dispute sweep");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reconciler dispute sweep failed"),
        }
    }
}

/// How long a replica's share of the Stripe budget counts without a renewal: a replica killed
/// gives its share back this long after its last renewal at most.
const BUDGET_SHARE_LEASE: Duration = Duration::from_secs(5);
/// How often a replica renews its share (and takes up what replicas gone left).
const BUDGET_SHARE_RENEW_EVERY: Duration = Duration::from_millis(1500);
/// How often while its share is below an equal part (it joined; the others give up theirs at
/// their next renewal).
const BUDGET_SHARE_CATCH_UP_EVERY: Duration = Duration::from_millis(250);

/// A name for this process in the shared budget: unique per start.
fn replica_id() -> String {
    use rand::Rng;
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let suffix: u64 = rand::rng().random();
    format!("{host}-{}-{suffix:016x}", std::process::id())
}

/// Renews this replica's share of the Stripe budget until aborted at shutdown (PostgreSQL; on
/// SQLite it ends at once). A replica that cannot renew stops sending once its lease has run out:
/// the others have taken its share by then.
async fn share_stripe_budget(store: Store, budget: StripeBudget, replica: String) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        let pause = match store.renew_budget_share(&replica, BUDGET_SHARE_LEASE).await {
            Ok(None) => return,
            Ok(Some(share)) => {
                renewed = tokio::time::Instant::now();
                let before = budget.share_per_second();
                budget.set_share(share.fraction);
                let now = budget.share_per_second();
                if (now - before).abs() > f64::EPSILON {
                    tracing::info!(
                        replicas = share.replicas,
                        share_per_second = now,
                        account_per_second = budget.account_per_second(),
                        "Stripe request budget share changed"
                    );
                }
                if share.settled {
                    BUDGET_SHARE_RENEW_EVERY
                } else {
                    BUDGET_SHARE_CATCH_UP_EVERY
                }
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the Stripe budget share failed");
                if renewed.elapsed() >= BUDGET_SHARE_LEASE {
                    budget.set_share(0.0);
                }
                BUDGET_SHARE_CATCH_UP_EVERY
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// How often the event janitor deletes what retention no longer keeps.
const EVENT_JANITOR_EVERY: Duration = Duration::from_secs(60);

/// Deletes expired events (and expired payment links) at start and then every
/// [`EVENT_JANITOR_EVERY`], until aborted at shutdown. Every replica runs it; a delete is one
/// transaction from the log's start, so two at once only repeat each other.
async fn run_event_janitor(payments: Arc<Payments>, retention: Duration) {
    let mut ticks = tokio::time::interval(EVENT_JANITOR_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match payments.delete_expired_events(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired events deleted"),
            Err(error) => tracing::warn!(%error, "deleting expired events failed"),
        }
        match payments.delete_expired_payment_links().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired payment links deleted"),
            Err(error) => tracing::warn!(%error, "deleting expired payment links failed"),
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    crate::metrics::METRICS
        .ready
        .set(i64::from(status == ServingStatus::Serving));
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(PAYMENT_SERVICE_NAME, status)
        .await;
}

/// Longest one database health check may take before it counts as NOT_SERVING.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// SERVING only while the database answers and is migrated.
async fn watch_database(store: Store, reporter: HealthReporter, interval: Duration) {
    let mut last = None;
    loop {
        // Bounded: with the database gone, the pool keeps trying to connect until its acquire
        // timeout (5 s), and health must say NOT_SERVING before that.
        let status = match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, store.is_ready()).await {
            Ok(Ok(true)) => ServingStatus::Serving,
            Ok(Ok(false)) => ServingStatus::NotServing,
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::app::error_chain(&error), "database health check failed");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!(timeout = ?HEALTH_CHECK_TIMEOUT, "database health check timed out");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            tracing::info!(?status, "health");
            set_health(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Listens for SIGTERM and SIGINT from now on (so a signal that arrives while the application is
/// still starting is not lost to the default action) and returns a future that resolves on the
/// first of them.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
