//! A token bucket per client IP, as an axum middleware (a tower layer) on the return route. The
//! client is the TCP peer, or behind a trusted proxy the address it forwards (`client_ip`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::client_ip::ClientIp;
use super::pages;

/// Above this many tracked addresses, full (idle) buckets are dropped: memory stays bounded
/// however many addresses a flood comes from.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Allows `burst` requests at once per client IP, refilled at `per_second`.
#[derive(Debug)]
pub(super) struct PerIpLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PerIpLimiter {
    pub(super) fn new(per_second: u32, burst: u32) -> PerIpLimiter {
        PerIpLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refilled = now.duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The request's client address (see `client_ip`); the peer's if it was not worked out.
pub(super) fn client_of(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ClientIp>()
        .map(|ClientIp(ip)| *ip)
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        })
}

pub(super) async fn limit_per_ip(
    State(limiter): State<Arc<PerIpLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    // The client: the peer, or behind a trusted proxy the address it forwards.
    let ip = client_of(&request);
    if let Some(ip) = ip
        && !limiter.allow(ip, Instant::now())
    {
        tracing::info!(client = %ip, "rate limited");
        return pages::too_many_requests();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_allowed_then_refilled_at_the_rate() {
        let limiter = PerIpLimiter::new(2, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow(ip, t0)));
        assert!(!limiter.allow(ip, t0));
        assert!(
            limiter.allow(other, t0),
            "another address has its own bucket"
        );
        assert!(limiter.allow(ip, t0 + Duration::from_millis(500)));
        assert!(!limiter.allow(ip, t0 + Duration::from_millis(500)));
    }
}
