//! A TCP proxy between paybridge and the Stripe fake that breaks the connection in the ways the
//! network does: refused connections, a reset in the middle of a response, a stall beyond the
//! client's timeout (before or after the request reached Stripe). HTTP-level faults (500s, 429s
//! with `Retry-After`, `Stripe-Should-Retry`) come from the compat layer's `/_test/faults`.
//!
//! Loopback only; every stall is bounded (`MAX_STALL`) so a test can never hang on the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::eventually;

/// Longest a stalled connection is held before the proxy drops it.
const MAX_STALL: Duration = Duration::from_secs(60);

/// What the proxy does with the next connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Forward both ways.
    Pass,
    /// Nothing listens: connecting is refused (open connections are closed too).
    Refuse,
    /// Forward the request, then only the first `after_bytes` of the answer, then a TCP reset.
    ResetMidResponse { after_bytes: usize },
    /// Accept and read, never forward: the request never reaches Stripe.
    StallBefore,
    /// Forward the request (Stripe acts on it), never forward the answer: a lost answer.
    StallAfter,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub refused_periods: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
}

impl ProxyStats {
    /// Faults injected at the network level so far (each reset or stalled connection counts one,
    /// each refusing period one).
    pub fn faults(&self) -> u64 {
        self.refused_periods.load(Ordering::SeqCst)
            + self.resets.load(Ordering::SeqCst)
            + self.stalls.load(Ordering::SeqCst)
    }
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<NetFault>,
    stats: ProxyStats,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:port`).
    pub async fn start(upstream_url: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://ip:port");
        assert!(upstream.ip().is_loopback(), "loopback targets only");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(NetFault::Pass),
            stats: ProxyStats::default(),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// `http://127.0.0.1:<port>`, for `PAYBRIDGE_STRIPE_API_BASE`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }

    /// Switches to `fault`; open connections are closed, so pooled ones meet it too.
    pub async fn set(&self, fault: NetFault) {
        *self.shared.fault.lock().expect("fault") = fault;
        for connection in self.shared.connections.lock().expect("conns").drain(..) {
            connection.abort();
        }
        let acceptor = self.acceptor.lock().expect("acceptor").take();
        if let Some(acceptor) = acceptor {
            acceptor.abort();
            let _ = acceptor.await;
        }
        if fault == NetFault::Refuse {
            self.shared
                .stats
                .refused_periods
                .fetch_add(1, Ordering::SeqCst);
            return;
        }
        // Listen again on the same port (SO_REUSEADDR is set by tokio on Unix).
        let listener = eventually(Duration::from_secs(1), || async {
            TcpListener::bind(self.addr).await
        })
        .await
        .expect("re-binding the proxy's port");
        *self.acceptor.lock().expect("acceptor") = Some(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.shared),
        )));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.lock().expect("acceptor").take() {
            acceptor.abort();
        }
        for connection in self.shared.connections.lock().expect("conns").drain(..) {
            connection.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.stats.connections.fetch_add(1, Ordering::SeqCst);
        let fault = *shared.fault.lock().expect("fault");
        let task = tokio::spawn(handle(client, fault, Arc::clone(&shared)));
        let mut connections = shared.connections.lock().expect("conns");
        connections.retain(|c| !c.is_finished());
        connections.push(task);
    }
}

async fn handle(mut client: TcpStream, fault: NetFault, shared: Arc<Shared>) {
    match fault {
        NetFault::Refuse => {}
        NetFault::Pass => {
            let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        NetFault::StallBefore => {
            shared.stats.stalls.fetch_add(1, Ordering::SeqCst);
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(MAX_STALL, async {
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        NetFault::StallAfter => {
            let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            shared.stats.stalls.fetch_add(1, Ordering::SeqCst);
            let (mut from_upstream, mut to_upstream) = upstream.into_split();
            let (mut from_client, _to_client) = client.split();
            let _ = tokio::time::timeout(MAX_STALL, async {
                let forward = tokio::io::copy(&mut from_client, &mut to_upstream);
                // The answer is read and thrown away: Stripe acted, the client never hears.
                let mut sink = tokio::io::sink();
                let swallow = tokio::io::copy(&mut from_upstream, &mut sink);
                let _ = tokio::join!(forward, swallow);
            })
            .await;
        }
        NetFault::ResetMidResponse { after_bytes } => {
            let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            let (mut from_upstream, mut to_upstream) = upstream.into_split();
            let (mut from_client, mut to_client) = client.split();
            let forward = tokio::io::copy(&mut from_client, &mut to_upstream);
            let partial = async {
                let mut sent = 0usize;
                let mut buf = vec![0u8; 8192];
                while sent < after_bytes {
                    let Ok(n) = from_upstream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let take = n.min(after_bytes - sent);
                    if to_client.write_all(&buf[..take]).await.is_err() {
                        return;
                    }
                    sent += take;
                }
            };
            let _ = tokio::time::timeout(MAX_STALL, async {
                tokio::select! {
                    _ = forward => {}
                    _ = partial => {}
                }
            })
            .await;
            shared.stats.resets.fetch_add(1, Ordering::SeqCst);
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = client.set_zero_linger();
        }
    }
}
