//! Pushes (issue 16): each event of a tenant's feed POSTed to its `webhook_url`, in feed order,
//! at least once.
//!
//! Every replica runs one loop per tenant with a push endpoint. A turn looks (reading only) at
//! the tenant's delivery and its next event; when one is due and no replica holds the delivery,
//! it claims it (a lease, as the reconciler's) and sends events one after the other, renewing the
//! lease with each one recorded, until it is caught up, an event fails, or the lease was lost. A
//! 2xx answer moves the delivery past the event; anything else schedules the same event again
//! after about a second, doubling each time up to `max_delay` (with ±20 % jitter, so endpoints
//! coming back are not hit by every tenant at once), for `retry_for` from its first failure; then
//! the event is given up (counted, logged) and the next one goes. A failing tenant only ever
//! holds back its own later events: each tenant has its own loop and its own lease.
//!
//! A replica that dies mid-push leaves its lease to run out; another replica (or itself after a
//! restart) then sends the same event again. Receivers tell repeats by `Paybridge-Event-Id`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::AppError;
use super::ports::{
    EventFeed, EventPusher, FeedEvent, PaymentStore, PushDelivery, PushOutcome, PushProgress,
};
use crate::metrics::{METRICS, PushLabels, TenantLabels};
use crate::tenants::PushEndpoint;

/// The wall clock the worker reads, in unix ms: leases and schedules are shared with other
/// replicas through the database. Tests set it by hand.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_millis(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        super::now_millis()
    }
}

/// A clock set by hand, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(millis: i64) -> ManualClock {
        ManualClock(AtomicI64::new(millis))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(millis(by), Ordering::SeqCst);
    }

    pub fn set(&self, millis: i64) {
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How pushes are retried and shared between replicas.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// The first retry's wait (about a second); each later one doubles.
    pub first_delay: Duration,
    /// The longest wait between two attempts (`PAYBRIDGE_PUSH_MAX_DELAY`).
    pub max_delay: Duration,
    /// How long an event is retried from its first failure before it is given up
    /// (`PAYBRIDGE_PUSH_RETRY_FOR`).
    pub retry_for: Duration,
    /// How long a replica holds a tenant's delivery without recording progress
    /// (`PAYBRIDGE_PUSH_LEASE`); longer than one push may take.
    pub lease: Duration,
    /// How often an idle tenant's feed is looked at when no change announcement woke it.
    pub poll_interval: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3600),
            retry_for: Duration::from_secs(72 * 3600),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Events read from the feed at once while sending.
const BATCH: u32 = 16;

/// The wait before attempt `failures + 1` of an event that failed `failures` (≥ 1) times:
/// `first_delay × 2^(failures−1)`, times `0.8 + 0.4 × jitter` (`jitter` in [0, 1)), at most
/// `max_delay`.
pub fn retry_delay(settings: &PushSettings, failures: u32, jitter: f64) -> Duration {
    let doubling = 2f64.powi(i32::try_from(failures.saturating_sub(1).min(62)).unwrap_or(62));
    let base = settings.first_delay.as_secs_f64() * doubling;
    let jittered = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    if jittered >= settings.max_delay.as_secs_f64() {
        settings.max_delay
    } else {
        Duration::from_secs_f64(jittered)
    }
}

/// What one turn of a tenant's loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Nothing to send.
    CaughtUp,
    /// The next event waits for its retry time (unix ms).
    NotDue(i64),
    /// Another replica holds the delivery.
    Held,
    /// Sent `delivered` events (and gave up `given_up`); then either caught up
    /// (`retry_at: None`) or an event failed and is retried at `retry_at` (unix ms).
    Sent {
        delivered: u32,
        given_up: u32,
        retry_at: Option<i64>,
    },
    /// The lease ran out while sending: another replica took over.
    LeaseLost,
}

/// A tenant whose events are pushed.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub tenant: String,
    pub endpoint: PushEndpoint,
}

/// Sends every tenant's events to its endpoint.
#[derive(Debug)]
pub struct PushWorker {
    store: Arc<dyn PaymentStore>,
    feed: Arc<dyn EventFeed>,
    pusher: Arc<dyn EventPusher>,
    clock: Arc<dyn Clock>,
    settings: PushSettings,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl PushWorker {
    pub fn new(
        store: Arc<dyn PaymentStore>,
        feed: Arc<dyn EventFeed>,
        pusher: Arc<dyn EventPusher>,
        clock: Arc<dyn Clock>,
        settings: PushSettings,
    ) -> PushWorker {
        PushWorker {
            store,
            feed,
            pusher,
            clock,
            settings,
        }
    }

    /// Runs one loop per target until aborted. An aborted push keeps its lease until it runs out;
    /// then the event is sent again (by this replica after a restart, or another).
    pub async fn run(self: Arc<Self>, targets: Vec<PushTarget>) {
        let mut loops = tokio::task::JoinSet::new();
        for target in targets {
            loops.spawn(Arc::clone(&self).run_target(target));
        }
        while loops.join_next().await.is_some() {}
    }

    async fn run_target(self: Arc<Self>, target: PushTarget) {
        let mut changes = self.store.subscribe_changes();
        loop {
            // Announcements that came during the turn are all answered by the next one.
            while changes.try_recv().is_ok() {}
            let wait = match self.turn(&target).await {
                Ok(Turn::NotDue(at)) => {
                    let until = at.saturating_sub(self.clock.now_millis()).max(1);
                    Duration::from_millis(u64::try_from(until).unwrap_or(u64::MAX))
                        .min(self.settings.poll_interval)
                }
                Ok(Turn::Sent {
                    retry_at: None,
                    delivered,
                    given_up,
                }) => {
                    tracing::debug!(tenant = %target.tenant, delivered, given_up, "pushed");
                    Duration::ZERO
                }
                Ok(_) => self.settings.poll_interval,
                Err(error) => {
                    tracing::warn!(tenant = %target.tenant, error = %super::error_chain(&error), "push turn failed");
                    self.settings.poll_interval
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Any payment's change may be this tenant's event; a lagged or closed receiver
                // just falls back to the timer.
                _ = changes.recv() => {}
            }
        }
    }

    /// One turn for a tenant: sends its due events if no replica holds its delivery.
    #[tracing::instrument(skip_all, fields(tenant = %target.tenant))]
    pub async fn turn(&self, target: &PushTarget) -> Result<Turn, AppError> {
        let tenant = target.tenant.as_str();
        let now = self.clock.now_millis();
        // Looking costs two reads; only work to do costs a write (the claim).
        let recorded = self.store.push_delivery(tenant).await?;
        let position = recorded.as_ref().and_then(|d| d.position);
        let next = self.feed.events_after(tenant, position, &[], 1).await?;
        self.report_age(tenant, next.first(), now);
        if next.is_empty() {
            return Ok(Turn::CaughtUp);
        }
        if let Some(recorded) = &recorded {
            if recorded.next_attempt_at > now {
                return Ok(Turn::NotDue(recorded.next_attempt_at));
            }
            if recorded.lease_until.is_some_and(|held| held >= now) {
                return Ok(Turn::Held);
            }
        }
        let lease_until = now.saturating_add(millis(self.settings.lease));
        let Some(claimed) = self
            .store
            .claim_push_delivery(tenant, now, lease_until)
            .await?
        else {
            return Ok(Turn::Held);
        };
        self.send(target, claimed, lease_until).await
    }

    /// Sends the claimed delivery's events in order while the lease holds.
    async fn send(
        &self,
        target: &PushTarget,
        mut delivery: PushDelivery,
        mut held: i64,
    ) -> Result<Turn, AppError> {
        let tenant = target.tenant.as_str();
        let (mut delivered, mut given_up) = (0, 0);
        loop {
            let events = self
                .feed
                .events_after(tenant, delivery.position, &[], BATCH)
                .await?;
            if events.is_empty() {
                let now = self.clock.now_millis();
                self.report_age(tenant, None, now);
                let released = PushProgress {
                    position: delivery.position,
                    attempts: 0,
                    next_attempt_at: now,
                    first_failure_at: None,
                    lease_until: None,
                };
                // A lost lease here loses nothing: every event was recorded.
                self.store.record_push(tenant, held, &released, now).await?;
                return Ok(Turn::Sent {
                    delivered,
                    given_up,
                    retry_at: None,
                });
            }
            for event in events {
                let sent_at = self.clock.now_millis();
                let outcome = self
                    .pusher
                    .push(&target.endpoint, &event, sent_at.div_euclid(1000))
                    .await;
                METRICS
                    .pushes
                    .get_or_create(&PushLabels {
                        result: outcome.label(),
                    })
                    .inc();
                let now = self.clock.now_millis();
                let lease_until = now.saturating_add(millis(self.settings.lease));
                let progress = if outcome == PushOutcome::Delivered {
                    delivered += 1;
                    PushProgress {
                        position: Some(event.position),
                        attempts: 0,
                        next_attempt_at: now,
                        first_failure_at: None,
                        lease_until: Some(lease_until),
                    }
                } else {
                    let attempts = delivery.attempts.saturating_add(1);
                    let first_failure = delivery.first_failure_at.unwrap_or(sent_at);
                    let deadline = first_failure.saturating_add(millis(self.settings.retry_for));
                    if now >= deadline {
                        given_up += 1;
                        METRICS
                            .push_given_up
                            .get_or_create(&TenantLabels {
                                tenant: tenant.to_owned(),
                            })
                            .inc();
                        tracing::warn!(
                            event = ?event.position, attempts, ?outcome,
                            "push given up after PAYBRIDGE_PUSH_RETRY_FOR"
                        );
                        PushProgress {
                            position: Some(event.position),
                            attempts: 0,
                            next_attempt_at: now,
                            first_failure_at: None,
                            lease_until: Some(lease_until),
                        }
                    } else {
                        let wait = retry_delay(&self.settings, attempts, rand::random::<f64>());
                        let retry_at = now.saturating_add(millis(wait)).min(deadline);
                        tracing::info!(
                            event = ?event.position, attempts, ?outcome, retry_in = ?wait,
                            "push failed; retried later"
                        );
                        let failed = PushProgress {
                            position: delivery.position,
                            attempts,
                            next_attempt_at: retry_at,
                            first_failure_at: Some(first_failure),
                            lease_until: None,
                        };
                        if !self.store.record_push(tenant, held, &failed, now).await? {
                            return Ok(Turn::LeaseLost);
                        }
                        return Ok(Turn::Sent {
                            delivered,
                            given_up,
                            retry_at: Some(retry_at),
                        });
                    }
                };
                if !self.store.record_push(tenant, held, &progress, now).await? {
                    tracing::warn!(event = ?event.position, "push lease lost; another replica goes on");
                    return Ok(Turn::LeaseLost);
                }
                held = lease_until;
                delivery.position = progress.position;
                delivery.attempts = 0;
                delivery.first_failure_at = None;
            }
        }
    }

    fn report_age(&self, tenant: &str, oldest: Option<&FeedEvent>, now: i64) {
        let age = oldest.map_or(0, |event| {
            now.saturating_sub(event.created_at).max(0) / 1000
        });
        METRICS
            .push_oldest_undelivered_age
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .set(age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::fakes::{FakeFeed, FakePusher, FakeStore};
    use crate::app::ports::{FeedPosition, PushDeliveries};
    use secrecy::SecretString;

    const T0: i64 = 1_800_000_000_000;

    fn target(tenant: &str) -> PushTarget {
        PushTarget {
            tenant: tenant.to_owned(),
            endpoint: PushEndpoint::new(
                &format!("https://{tenant}.example.com/events"),
                SecretString::from("psk_0123456789abcdef".to_owned()),
            )
            .expect("an endpoint"),
        }
    }

    fn url(tenant: &str) -> String {
        format!("https://{tenant}.example.com/events")
    }

    struct Setup {
        store: Arc<FakeStore>,
        feed: Arc<FakeFeed>,
        pusher: Arc<FakePusher>,
        clock: Arc<ManualClock>,
        worker: PushWorker,
    }

    fn setup(settings: PushSettings) -> Setup {
        let store = Arc::new(FakeStore::default());
        let feed = Arc::new(FakeFeed::default());
        let pusher = Arc::new(FakePusher::default());
        let clock = Arc::new(ManualClock::at(T0));
        let worker = PushWorker::new(
            store.clone(),
            feed.clone(),
            pusher.clone(),
            clock.clone(),
            settings,
        );
        Setup {
            store,
            feed,
            pusher,
            clock,
            worker,
        }
    }

    fn retry_at(turn: Turn) -> i64 {
        match turn {
            Turn::Sent {
                retry_at: Some(at), ..
            } => at,
            other => panic!("expected a failed push, got {other:?}"),
        }
    }

    #[test]
    fn retry_delays_start_at_about_a_second_double_and_stop_at_the_cap() {
        let settings = PushSettings {
            max_delay: Duration::from_secs(60),
            ..PushSettings::default()
        };
        let secs = |failures, jitter| retry_delay(&settings, failures, jitter).as_secs_f64();
        assert!((secs(1, 0.5) - 1.0).abs() < 1e-9);
        assert!((secs(1, 0.0) - 0.8).abs() < 1e-9);
        assert!((secs(1, 0.999_999) - 1.2).abs() < 1e-5);
        assert!((secs(2, 0.5) - 2.0).abs() < 1e-9);
        assert!((secs(6, 0.5) - 32.0).abs() < 1e-9);
        assert_eq!(secs(7, 0.5), 60.0, "64 s capped");
        assert_eq!(secs(7, 0.9), 60.0, "a jittered wait is capped too");
        assert!((secs(6, 0.999_999) - 38.4).abs() < 1e-4, "not capped below");
        assert_eq!(secs(u32::MAX, 0.5), 60.0, "no overflow");
    }

    #[tokio::test]
    async fn a_push_answered_500_500_then_200_is_sent_three_times_then_never_again() {
        let s = setup(PushSettings::default());
        let billing = target("billing");
        let event = s.feed.append("billing", "inv-1", T0);
        s.pusher.script(
            &url("billing"),
            [PushOutcome::Refused(500), PushOutcome::Refused(500)],
        );

        let first_retry = retry_at(s.worker.turn(&billing).await.unwrap());
        assert!(
            (T0 + 800..=T0 + 1200).contains(&first_retry),
            "about a second: {}",
            first_retry - T0
        );
        // Not before its time, from this replica or another.
        s.clock.set(first_retry - 1);
        assert_eq!(
            s.worker.turn(&billing).await.unwrap(),
            Turn::NotDue(first_retry)
        );
        assert_eq!(s.pusher.received().len(), 1);

        s.clock.set(first_retry);
        let second_retry = retry_at(s.worker.turn(&billing).await.unwrap());
        assert!(
            (first_retry + 1600..=first_retry + 2400).contains(&second_retry),
            "doubled: {}",
            second_retry - first_retry
        );
        s.clock.set(second_retry);
        assert_eq!(
            s.worker.turn(&billing).await.unwrap(),
            Turn::Sent {
                delivered: 1,
                given_up: 0,
                retry_at: None
            }
        );
        s.clock.advance(Duration::from_secs(3600));
        assert_eq!(s.worker.turn(&billing).await.unwrap(), Turn::CaughtUp);

        let received = s.pusher.received();
        assert_eq!(
            received.iter().map(|p| p.position).collect::<Vec<_>>(),
            [event, event, event]
        );
        assert_eq!(
            received.iter().map(|p| p.now_seconds).collect::<Vec<_>>(),
            [T0 / 1000, first_retry / 1000, second_retry / 1000],
            "each attempt signed at its own time"
        );
        let delivery = s.store.push_delivery("billing").await.unwrap().unwrap();
        assert_eq!(delivery.position, Some(event));
        assert_eq!((delivery.attempts, delivery.first_failure_at), (0, None));
        assert_eq!(delivery.lease_until, None, "let go once caught up");
    }

    #[tokio::test]
    async fn events_go_in_feed_order_and_a_failing_one_holds_back_the_later_ones() {
        let s = setup(PushSettings::default());
        let billing = target("billing");
        for invoice in ["inv-1", "inv-2", "inv-3"] {
            s.feed.append("billing", invoice, T0);
        }
        s.pusher.script(
            &url("billing"),
            [
                PushOutcome::Delivered,
                PushOutcome::TimedOut,
                PushOutcome::Unreachable("connection refused".to_owned()),
            ],
        );
        let retry = retry_at(s.worker.turn(&billing).await.unwrap());
        assert_eq!(s.pusher.positions_at(&url("billing")), [1, 2]);
        s.clock.set(retry);
        let retry = retry_at(s.worker.turn(&billing).await.unwrap());
        s.clock.set(retry);
        assert_eq!(
            s.worker.turn(&billing).await.unwrap(),
            Turn::Sent {
                delivered: 2,
                given_up: 0,
                retry_at: None
            }
        );
        assert_eq!(s.pusher.positions_at(&url("billing")), [1, 2, 2, 2, 3]);

        // A later event goes at once.
        s.feed.append("billing", "inv-4", T0);
        s.worker.turn(&billing).await.unwrap();
        assert_eq!(s.pusher.positions_at(&url("billing")), [1, 2, 2, 2, 3, 4]);
    }

    #[tokio::test]
    async fn an_event_failing_for_retry_for_is_given_up_and_the_next_one_goes() {
        let settings = PushSettings {
            max_delay: Duration::from_secs(4),
            retry_for: Duration::from_secs(30),
            ..PushSettings::default()
        };
        let s = setup(settings);
        let billing = target("billing");
        s.feed.append("billing", "inv-1", T0);
        s.feed.append("billing", "inv-2", T0);
        s.pusher
            .set_down(&url("billing"), Some(PushOutcome::Refused(503)));

        let mut attempts_at = vec![T0];
        let mut turn = s.worker.turn(&billing).await.unwrap();
        while let Turn::Sent {
            retry_at: Some(at), ..
        } = turn
        {
            let now = s.clock.now_millis();
            assert!(at - now <= 4000, "each wait capped at max_delay");
            assert!(at <= T0 + 30_000, "never retried past retry_for");
            s.clock.set(at);
            attempts_at.push(at);
            // The endpoint comes back only for the second event.
            if at == T0 + 30_000 {
                s.pusher.set_down(&url("billing"), None);
                s.pusher
                    .script(&url("billing"), [PushOutcome::Refused(503)]);
            }
            turn = s.worker.turn(&billing).await.unwrap();
            assert!(attempts_at.len() < 100, "runs away");
        }
        assert_eq!(
            turn,
            Turn::Sent {
                delivered: 1,
                given_up: 1,
                retry_at: None
            }
        );
        assert_eq!(
            *attempts_at.last().unwrap(),
            T0 + 30_000,
            "the last try at retry_for"
        );
        let positions = s.pusher.positions_at(&url("billing"));
        assert_eq!(
            positions.iter().filter(|p| **p == 1).count(),
            attempts_at.len()
        );
        assert_eq!(positions.last(), Some(&2), "then the next event");
        let given_up = METRICS
            .push_given_up
            .get_or_create(&TenantLabels {
                tenant: "billing".to_owned(),
            })
            .get();
        assert!(given_up >= 1);
    }

    #[tokio::test]
    async fn a_failing_tenant_never_holds_back_another() {
        let s = setup(PushSettings::default());
        s.feed.append("billing", "inv-1", T0);
        s.feed.append("orders", "inv-1", T0);
        s.feed.append("orders", "inv-2", T0);
        s.pusher
            .set_down(&url("billing"), Some(PushOutcome::TimedOut));
        let worker = Arc::new(s.worker);
        let run = tokio::spawn(Arc::clone(&worker).run(vec![target("billing"), target("orders")]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while s.pusher.positions_at(&url("orders")) != [2, 3] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "orders got {:?}",
                s.pusher.positions_at(&url("orders"))
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        run.abort();
        assert_eq!(s.pusher.positions_at(&url("billing"))[0], 1);
        let billing = s.store.push_delivery("billing").await.unwrap().unwrap();
        assert_eq!(
            billing.position, None,
            "billing's event is still undelivered"
        );
        assert!(billing.attempts >= 1);
    }

    #[tokio::test]
    async fn a_delivery_held_by_another_replica_is_left_alone_until_its_lease_ends() {
        let s = setup(PushSettings::default());
        let billing = target("billing");
        s.feed.append("billing", "inv-1", T0);
        // Another replica claimed it and died mid-push.
        let other = s
            .store
            .claim_push_delivery("billing", T0, T0 + 30_000)
            .await
            .unwrap()
            .expect("claimed");
        assert_eq!(s.worker.turn(&billing).await.unwrap(), Turn::Held);
        assert!(s.pusher.received().is_empty());

        s.clock.set(T0 + 30_001);
        assert_eq!(
            s.worker.turn(&billing).await.unwrap(),
            Turn::Sent {
                delivered: 1,
                given_up: 0,
                retry_at: None
            }
        );
        // The dead replica's late write is refused: its lease is gone.
        let stale = PushProgress {
            position: None,
            attempts: 3,
            next_attempt_at: T0,
            first_failure_at: Some(T0),
            lease_until: None,
        };
        assert!(
            !s.store
                .record_push("billing", other.lease_until.unwrap(), &stale, T0)
                .await
                .unwrap()
        );
        assert_eq!(
            s.store
                .push_delivery("billing")
                .await
                .unwrap()
                .unwrap()
                .position,
            Some(FeedPosition {
                commit_group: 0,
                event_id: 1
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_waits_out_each_back_off_on_its_own() {
        #[derive(Debug)]
        struct TokioClock(tokio::time::Instant);
        impl Clock for TokioClock {
            fn now_millis(&self) -> i64 {
                T0 + millis(self.0.elapsed())
            }
        }
        let store = Arc::new(FakeStore::default());
        let feed = Arc::new(FakeFeed::default());
        let pusher = Arc::new(FakePusher::default());
        feed.append("billing", "inv-1", T0);
        pusher.script(
            &url("billing"),
            [PushOutcome::Refused(500), PushOutcome::Refused(500)],
        );
        let worker = Arc::new(PushWorker::new(
            store.clone(),
            feed.clone(),
            pusher.clone(),
            Arc::new(TokioClock(tokio::time::Instant::now())),
            PushSettings::default(),
        ));
        let run = tokio::spawn(Arc::clone(&worker).run(vec![target("billing")]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while store
            .push_delivery("billing")
            .await
            .unwrap()
            .and_then(|d| d.position)
            .is_none()
        {
            assert!(tokio::time::Instant::now() < deadline, "never delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Well past the last delivery: nothing more is sent.
        tokio::time::sleep(Duration::from_secs(30)).await;
        run.abort();
        let at: Vec<i64> = pusher
            .received()
            .iter()
            .map(|p| p.now_seconds - T0 / 1000)
            .collect();
        assert_eq!(at.len(), 3, "{at:?}");
        assert_eq!(at[0], 0);
        assert!((0..=1).contains(&at[1]), "about a second later: {at:?}");
        assert!(
            (2..=4).contains(&at[2]),
            "about two seconds after that: {at:?}"
        );
    }
}
