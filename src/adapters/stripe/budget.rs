//! One Stripe request budget per process, shared by every request attempt: creates, returns,
//! refreshes and the reconciler. Stripe's rate limit (25 requests/s in test mode, 100/s live) is
//! per account; waiting here is cheaper than a 429.
//!
//! A generic cell rate algorithm: each request reserves the next free slot, so waiters are served
//! in arrival order and no one-second window carries more than `rate + burst` requests. A request
//! whose slot lies further away than it may wait is refused at once (the caller answers
//! UNAVAILABLE and the browser or client retries) instead of piling up.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Refused: the next free slot is further away than the caller may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

#[derive(Debug)]
pub(crate) struct RequestBudget {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of the sustained rate a burst may run.
    tolerance: Duration,
    /// The theoretical arrival time of the next request.
    next: Mutex<Instant>,
}

impl RequestBudget {
    /// `per_second` requests on average, with bursts of a tenth of that (at least one).
    pub(crate) fn new(per_second: u32) -> RequestBudget {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        let burst = (per_second / 10).max(1);
        RequestBudget {
            interval,
            tolerance: interval * (burst - 1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot and takes it; refuses without taking one if the slot is
    /// more than `max_wait` away.
    pub(crate) async fn take(&self, max_wait: Duration) -> Result<(), OverBudget> {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let tat = (*next).max(now);
            let slot = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
            let wait = slot - now;
            if wait > max_wait {
                return Err(OverBudget);
            }
            *next = tat + self.interval;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Stripe said 429: no request of the process goes out for `pause`.
    pub(crate) fn back_off(&self, pause: Duration) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let resume = Instant::now() + pause + self.tolerance;
        *next = (*next).max(resume);
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
        // The refusal took nothing: the next slot is still 100 ms after the first.
        let start = Instant::now();
        budget
            .take(Duration::from_millis(150))
            .await
            .expect("second");
        assert!(start.elapsed() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone() {
        let budget = RequestBudget::new(100);
        let start = Instant::now();
        budget.back_off(Duration::from_secs(2));
        budget.take(LONG).await.expect("slot");
        assert!(start.elapsed() >= Duration::from_secs(2));
    }
}
