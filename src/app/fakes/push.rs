//! An in-memory event feed to fill by hand, and a push endpoint that answers from a script.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::app::ports::{
    EventFeed, EventPusher, FeedEvent, FeedEventType, FeedObject, FeedPosition, PositionState,
    PushOutcome, StoreError,
};
use crate::domain::{EventSource, Payment, PaymentStatus};
use crate::tenants::PushEndpoint;

/// Every tenant's events in one order, as [`FakeFeed::append`] added them.
#[derive(Debug, Default)]
pub(crate) struct FakeFeed {
    events: Mutex<Vec<FeedEvent>>,
}

impl FakeFeed {
    /// Adds an event of `tenant` (a payment of `invoice` now in `status`), created at `at` (unix
    /// ms); returns its position.
    pub(crate) fn append(&self, tenant: &str, invoice: &str, at: i64) -> FeedPosition {
        let mut events = lock(&self.events);
        let position = FeedPosition {
            commit_group: 0,
            event_id: i64::try_from(events.len()).unwrap_or(i64::MAX) + 1,
        };
        let payment = Payment {
            id: format!("pay_{}", position.event_id),
            tenant: tenant.to_owned(),
            invoice_id: invoice.to_owned(),
            amount: 4200,
            currency: "usd".to_owned(),
            status: PaymentStatus::RequiresPaymentMethod,
            stripe_payment_intent_id: None,
            stripe_customer_id: None,
            client_secret: None,
            description: None,
            metadata: Default::default(),
            success_url: "https://billing.example.com/paid".to_owned(),
            failure_url: "https://billing.example.com/failed".to_owned(),
            last_payment_error: None,
            created_at: at,
            updated_at: at,
            last_event_created: None,
            amount_received: 0,
            amount_refunded: 0,
            amount_refund_pending: 0,
            capture_method: crate::domain::CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        };
        events.push(FeedEvent {
            position,
            tenant: tenant.to_owned(),
            source: EventSource::Create,
            created_at: at,
            object: FeedObject::Payment(Box::new(payment)),
        });
        position
    }
}

#[async_trait]
impl EventFeed for FakeFeed {
    async fn events_after(
        &self,
        tenant: &str,
        after: Option<FeedPosition>,
        types: &[FeedEventType],
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        assert!(types.is_empty(), "pushes send every type");
        Ok(lock(&self.events)
            .iter()
            .filter(|e| e.tenant == tenant && after.is_none_or(|after| e.position > after))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn position_state(
        &self,
        tenant: &str,
        position: FeedPosition,
    ) -> Result<PositionState, StoreError> {
        let found = lock(&self.events)
            .iter()
            .any(|e| e.tenant == tenant && e.position == position);
        Ok(if found {
            PositionState::Retained
        } else {
            PositionState::Unknown
        })
    }

    async fn delete_events_before(&self, created_before: i64) -> Result<u64, StoreError> {
        let mut events = lock(&self.events);
        let before = events.len();
        events.retain(|e| e.created_at >= created_before);
        Ok(u64::try_from(before - events.len()).unwrap_or(u64::MAX))
    }
}

/// One push the fake endpoint received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceivedPush {
    pub(crate) url: String,
    pub(crate) tenant: String,
    pub(crate) position: FeedPosition,
    pub(crate) now_seconds: i64,
}

/// Push endpoints that answer, per URL, from a script of outcomes, then `Delivered`.
#[derive(Debug, Default)]
pub(crate) struct FakePusher {
    scripts: Mutex<HashMap<String, VecDeque<PushOutcome>>>,
    /// URLs that answer `outcome` to everything until told otherwise.
    down: Mutex<HashMap<String, PushOutcome>>,
    received: Mutex<Vec<ReceivedPush>>,
}

impl FakePusher {
    /// The next answers of `url`, in order.
    pub(crate) fn script(&self, url: &str, outcomes: impl IntoIterator<Item = PushOutcome>) {
        lock(&self.scripts)
            .entry(url.to_owned())
            .or_default()
            .extend(outcomes);
    }

    /// `url` answers `outcome` to everything (`None`: back to its script).
    pub(crate) fn set_down(&self, url: &str, outcome: Option<PushOutcome>) {
        let mut down = lock(&self.down);
        match outcome {
            Some(outcome) => down.insert(url.to_owned(), outcome),
            None => down.remove(url),
        };
    }

    /// Every push received, oldest first.
    pub(crate) fn received(&self) -> Vec<ReceivedPush> {
        lock(&self.received).clone()
    }

    /// The event positions `url` received, oldest first.
    pub(crate) fn positions_at(&self, url: &str) -> Vec<i64> {
        self.received()
            .into_iter()
            .filter(|p| p.url == url)
            .map(|p| p.position.event_id)
            .collect()
    }
}

#[async_trait]
impl EventPusher for FakePusher {
    async fn push(
        &self,
        endpoint: &PushEndpoint,
        event: &FeedEvent,
        now_seconds: i64,
    ) -> PushOutcome {
        let url = endpoint.url().to_string();
        lock(&self.received).push(ReceivedPush {
            url: url.clone(),
            tenant: event.tenant.clone(),
            position: event.position,
            now_seconds,
        });
        if let Some(outcome) = lock(&self.down).get(&url) {
            return outcome.clone();
        }
        lock(&self.scripts)
            .get_mut(&url)
            .and_then(VecDeque::pop_front)
            .unwrap_or(PushOutcome::Delivered)
    }
}
