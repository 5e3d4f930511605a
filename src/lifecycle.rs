//! What `serve` and `gateway` share around their own server: the admin endpoint (Prometheus
//! metrics at `GET /metrics`), bound when the application is built and served beside it, and the
//! way they stop — on the shutdown signal, report not ready, stop accepting, let in-flight work
//! finish within the grace period, then stop the admin endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The admin endpoint's listener, bound at build so that a taken port stops start-up.
#[derive(Debug)]
pub struct AdminListener(Option<TcpListener>);

impl AdminListener {
    /// Binds `addr` now (port 0 works); `None` turns the endpoint off. An error names `setting`,
    /// the variable that gave the address.
    pub async fn bind(setting: &str, addr: Option<SocketAddr>) -> anyhow::Result<AdminListener> {
        let Some(addr) = addr else {
            return Ok(AdminListener(None));
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{setting}: binding {addr}"))?;
        Ok(AdminListener(Some(listener)))
    }

    /// The bound address, if the endpoint is on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Runs `server` (handed the signal to stop accepting) beside the admin endpoint until `shutdown`
/// resolves; then runs `stopping` (report not ready), tells the server to stop accepting, waits
/// at most `grace` for it to finish its in-flight work, and stops the admin endpoint.
pub async fn serve_until_stopped<S>(
    admin: AdminListener,
    server: impl FnOnce(oneshot::Receiver<()>) -> S,
    shutdown: impl Future<Output = ()>,
    stopping: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()>
where
    S: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let admin = admin.0.map(|listener| {
        tokio::spawn(crate::metrics::serve_admin(listener, async {
            let _ = admin_stopped.await;
        }))
    });
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server(stopped));

    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    stopping.await;
    let _ = stop_accepting.send(());
    let drained = match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("server task").and_then(|served| served),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "requests still running after the grace period; exiting anyway"
            );
            Ok(())
        }
    };
    let _ = stop_admin.send(());
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    drained
}
