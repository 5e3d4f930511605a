//! One Stripe request budget per process: a token bucket every request attempt takes from.
//! Stripe's rate limit (25 requests/s in test mode, 100/s live) is shared by creates, returns,
//! webhooks' follow-ups and the reconciler; waiting here is cheaper than a 429.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    /// After a 429, nobody sends before this.
    paused_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct RequestBudget {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl RequestBudget {
    /// `per_second` requests on average, with bursts of up to one second's worth.
    pub(crate) fn new(per_second: u32) -> RequestBudget {
        let per_second = f64::from(per_second.max(1));
        RequestBudget {
            per_second,
            burst: per_second,
            bucket: Mutex::new(Bucket {
                tokens: per_second,
                refilled_at: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Waits until a request may be sent, and takes its token.
    pub(crate) async fn take(&self) {
        loop {
            let wait = {
                let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match bucket.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        bucket.paused_until = None;
                        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
                        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
                        bucket.refilled_at = now;
                        if bucket.tokens >= 1.0 {
                            bucket.tokens -= 1.0;
                            return;
                        }
                        Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Stripe said 429: hold every request of the process for `pause` and start from an empty
    /// bucket.
    pub(crate) fn back_off(&self, pause: Duration) {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + pause;
        bucket.paused_until = Some(bucket.paused_until.map_or(until, |u| u.max(until)));
        bucket.tokens = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_the_rate() {
        let budget = RequestBudget::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            budget.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            budget.take().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1010),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone() {
        let budget = RequestBudget::new(100);
        let start = Instant::now();
        budget.back_off(Duration::from_secs(2));
        budget.take().await;
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}
