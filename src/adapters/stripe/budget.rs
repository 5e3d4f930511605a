//! The Stripe request budget, shared by every request attempt of the process: creates, returns,
//! refreshes and the reconciler. Stripe's rate limit (25 requests/s in test mode, 100/s live) is
//! per account; waiting here is cheaper than a 429.
//!
//! A token bucket whose tokens are the permits of a fair (first come, first served) semaphore:
//! a refill task adds tokens at the current rate, at most `burst` stand ready, and waiters are
//! served in arrival order, so no one-second window carries more than `rate + burst` requests.
//! The rate can change while requests wait (`set_rate`: replicas on PostgreSQL share the
//! account's budget, and each replica's share changes as replicas come and go); the change
//! applies to every waiter from the next refill on. A request that would wait longer than it may
//! is refused at once (the caller answers UNAVAILABLE and the browser or client retries) instead
//! of piling up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// How often the refill task adds tokens while the bucket is not full.
const REFILL_EVERY: Duration = Duration::from_millis(5);

/// Refused: the request would wait longer than the caller may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

#[derive(Debug)]
struct Refill {
    /// Requests per second now (0: none until the rate is raised).
    per_second: f64,
    /// Tokens that may stand ready.
    burst: usize,
    /// Fraction of a token earned and not yet added.
    earned: f64,
    /// When tokens were last earned.
    last: Instant,
    /// No tokens are earned before this (Stripe answered 429).
    paused_until: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    refill: Mutex<Refill>,
    tokens: Semaphore,
    /// Requests waiting for a token.
    waiting: AtomicUsize,
    /// Wakes the refill task when a request comes to a full, idle bucket.
    wake: Notify,
    refilling: AtomicBool,
}

/// Cheap to clone: clones share the bucket.
#[derive(Debug, Clone)]
pub(crate) struct RequestBudget {
    inner: Arc<Inner>,
}

/// A tenth of the rate, at least one (none at rate 0).
fn burst_of(per_second: f64) -> usize {
    if per_second <= 0.0 {
        0
    } else {
        ((per_second / 10.0).floor() as usize).max(1)
    }
}

impl RequestBudget {
    /// `per_second` requests on average, with bursts of a tenth of that (at least one).
    pub(crate) fn new(per_second: u32) -> RequestBudget {
        let per_second = f64::from(per_second.max(1));
        let burst = burst_of(per_second);
        RequestBudget {
            inner: Arc::new(Inner {
                refill: Mutex::new(Refill {
                    per_second,
                    burst,
                    earned: 0.0,
                    last: Instant::now(),
                    paused_until: None,
                }),
                tokens: Semaphore::new(burst),
                waiting: AtomicUsize::new(0),
                wake: Notify::new(),
                refilling: AtomicBool::new(false),
            }),
        }
    }

    /// The rate now (requests per second).
    pub(crate) fn rate(&self) -> f64 {
        self.inner.lock().per_second
    }

    /// From now on `per_second` requests on average (bursts of a tenth); 0 stops sending until
    /// the rate is raised again. Tokens standing ready beyond the new burst are dropped.
    pub(crate) fn set_rate(&self, per_second: f64) {
        let per_second = if per_second.is_finite() {
            per_second.max(0.0)
        } else {
            0.0
        };
        let mut refill = self.inner.lock();
        refill.per_second = per_second;
        refill.burst = burst_of(per_second);
        let standing = self.inner.tokens.available_permits();
        if standing > refill.burst {
            self.inner.drop_tokens(standing - refill.burst);
        }
        drop(refill);
        self.inner.wake.notify_one();
    }

    /// Waits for a token and takes it; refuses at once, taking nothing, if the wait would be
    /// longer than `max_wait`, and after `max_wait` if the rate fell meanwhile.
    pub(crate) async fn take(&self, max_wait: Duration) -> Result<(), OverBudget> {
        self.start_refilling();
        if let Ok(token) = self.inner.tokens.try_acquire() {
            token.forget();
            return Ok(());
        }
        if let Some(wait) = self.expected_wait()
            && wait > max_wait
        {
            return Err(OverBudget);
        }
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let taken =
            tokio::time::timeout(max_wait + REFILL_EVERY, self.inner.tokens.acquire()).await;
        self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
        match taken {
            Ok(Ok(token)) => {
                token.forget();
                Ok(())
            }
            // Timed out (the semaphore is never closed).
            _ => Err(OverBudget),
        }
    }

    /// How long a request arriving now would wait behind those already waiting; `None` at rate
    /// 0 (unknown: it waits for a rate, as long as it may).
    fn expected_wait(&self) -> Option<Duration> {
        let refill = self.inner.lock();
        if refill.per_second <= 0.0 {
            return None;
        }
        let ahead = self.inner.waiting.load(Ordering::SeqCst) as f64 + 1.0 - refill.earned;
        let now = Instant::now();
        let paused = refill
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        Some(paused + Duration::from_secs_f64(ahead.max(0.0) / refill.per_second))
    }

    /// Stripe said 429: no request of the process goes out for `pause`, and the burst starts
    /// empty after it.
    pub(crate) fn back_off(&self, pause: Duration) {
        let mut refill = self.inner.lock();
        let resume = Instant::now() + pause;
        refill.paused_until = Some(
            refill
                .paused_until
                .map_or(resume, |until| until.max(resume)),
        );
        refill.earned = 0.0;
        let standing = self.inner.tokens.available_permits();
        self.inner.drop_tokens(standing);
    }

    /// Starts the refill task once, on the first request (a runtime is running then). It ends
    /// when the budget is dropped.
    fn start_refilling(&self) {
        if self.inner.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(refill_until_dropped(inner));
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Refill> {
        self.refill.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes up to `count` standing tokens away.
    fn drop_tokens(&self, count: usize) {
        if count == 0 {
            return;
        }
        if let Ok(tokens) = self.tokens.try_acquire_many(count as u32) {
            tokens.forget();
        }
    }

    /// Earns tokens for the time since the last refill; true when the bucket is full and nobody
    /// waits (the task may sleep until woken).
    fn refill(&self, now: Instant) -> bool {
        let mut refill = self.lock();
        let elapsed = now.saturating_duration_since(refill.last);
        refill.last = now;
        if let Some(until) = refill.paused_until {
            if now < until {
                return false;
            }
            refill.paused_until = None;
            refill.earned = 0.0;
            let since = now.saturating_duration_since(until);
            refill.earned += since.as_secs_f64() * refill.per_second;
        } else {
            refill.earned += elapsed.as_secs_f64() * refill.per_second;
        }
        let whole = refill.earned.floor();
        refill.earned -= whole;
        let standing = self.tokens.available_permits();
        let room = refill.burst.saturating_sub(standing);
        let add = (whole as usize).min(room);
        if add > 0 {
            self.tokens.add_permits(add);
        }
        let full = self.tokens.available_permits() >= refill.burst;
        if full {
            // A full bucket earns nothing more.
            refill.earned = 0.0;
        }
        full && self.waiting.load(Ordering::SeqCst) == 0
    }
}

async fn refill_until_dropped(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(REFILL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.refill(Instant::now()) {
            // Full and idle: sleep until a request (or a new rate) comes, waking now and then
            // to see whether the budget still exists.
            let _ = tokio::time::timeout(Duration::from_secs(1), strong.wake.notified()).await;
            strong.lock().last = Instant::now();
            ticks.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate_after_a_small_burst() {
        let budget = RequestBudget::new(100); // burst 10
        let start = Instant::now();
        for _ in 0..10 {
            budget.take(LONG).await.expect("slot");
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..100 {
            budget.take(LONG).await.expect("slot");
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1010),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_too_far_away_is_refused_without_taking_it() {
        let budget = RequestBudget::new(10); // one every 100 ms, burst 1
        budget.take(LONG).await.expect("first");
        assert_eq!(
            budget.take(Duration::from_millis(50)).await,
            Err(OverBudget)
        );
        // The refusal took nothing: the next token comes 100 ms after the first.
        let start = Instant::now();
        budget
            .take(Duration::from_millis(150))
            .await
            .expect("second");
        assert!(start.elapsed() <= Duration::from_millis(105));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone() {
        let budget = RequestBudget::new(100);
        let start = Instant::now();
        budget.back_off(Duration::from_secs(2));
        budget.take(LONG).await.expect("slot");
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_requests_already_waiting() {
        let budget = RequestBudget::new(10);
        budget.take(LONG).await.expect("the burst");
        // Twenty wait at 10/s (two seconds of them); then the rate is raised to 100/s.
        let start = Instant::now();
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move { budget.take(LONG).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        budget.set_rate(100.0);
        for handle in waiting {
            handle.await.expect("task").expect("slot");
        }
        let elapsed = start.elapsed();
        // 3 in the first 300 ms, 17 at 100/s after that.
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed <= Duration::from_millis(500),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_rate_zero_nothing_goes_until_the_rate_is_raised() {
        let budget = RequestBudget::new(10);
        budget.set_rate(0.0);
        assert_eq!(
            budget.take(Duration::from_millis(500)).await,
            Err(OverBudget),
            "no token at rate 0"
        );
        let raised = budget.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            raised.set_rate(10.0);
        });
        let start = Instant::now();
        budget.take(Duration::from_secs(1)).await.expect("slot");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(310),
            "{elapsed:?}"
        );
    }
}
