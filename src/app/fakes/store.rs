//! The store, in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::app::ports::{
    ChangeFeed, CreateLookup, CustomerRecords, EventFeed, EventRecorded, FeedEvent, FeedEventType,
    FeedObject, FeedPosition, IdempotencyKeys, IdempotencyRecord, ListQuery, PaymentRecords,
    PositionState, ReconcileClaims, StatusEvent, StoreError, TransientPayments, WebhookChange,
    WebhookEventLog, WebhookEventRecord,
};
use crate::domain::{EventSource, Payment, PaymentStatus, Refund, StatusChange};

use super::lock;

mod captures;
mod links;
mod pushes;
mod refunds;

pub(crate) use refunds::RefundEvent;

#[derive(Debug, Default)]
struct StoreState {
    payments: BTreeMap<String, Payment>,
    /// (tenant, key) → (fingerprint, payment id)
    keys: HashMap<(String, String), (String, String)>,
    events: Vec<(String, StatusEvent)>,
    stripe_events: HashSet<String>,
    customers: HashMap<(String, String), String>,
    leases: HashMap<String, i64>,
    refunds: BTreeMap<String, Refund>,
    /// (tenant, key) → (fingerprint, refund id)
    refund_keys: HashMap<(String, String), (String, String)>,
    /// The refunds' events, which share their payment's log in the real store but never show
    /// in its status events: (payment id, refund id, source, from, to).
    refund_events: Vec<RefundEvent>,
    refund_leases: HashMap<String, i64>,
    /// The event feed: every event of both logs above, with its object, in order (one writer:
    /// commit group 0).
    feed: Vec<FeedEvent>,
    /// The last event id given out (ids are never reused, also after retention).
    feed_last_id: i64,
    /// The newest position retention deleted.
    feed_horizon: Option<FeedPosition>,
    /// Each tenant's push delivery.
    push_deliveries: HashMap<String, crate::app::ports::PushDelivery>,
    /// Captures by payment id, with their (tenant, key).
    captures: BTreeMap<String, (crate::app::ports::CaptureRecord, String)>,
    /// When each payment's open dispute was last read.
    dispute_checks: HashMap<String, i64>,
    /// Hosted page links: token hash → (payment id, expires at).
    links: HashMap<String, (String, i64)>,
}

impl StoreState {
    fn append_event(
        &mut self,
        payment_id: &str,
        source: EventSource,
        from: Option<PaymentStatus>,
        to: PaymentStatus,
    ) {
        let event = StatusEvent {
            payment_event_id: i64::try_from(self.events.len()).unwrap_or(i64::MAX) + 1,
            source,
            from,
            to,
            created_at: 0,
        };
        self.events.push((payment_id.to_owned(), event));
        if let Some(payment) = self.payments.get(payment_id).cloned() {
            let created_at = payment.updated_at;
            self.push_feed(source, created_at, FeedObject::Payment(Box::new(payment)));
        }
    }

    /// Appends an event to the feed.
    fn push_feed(&mut self, source: EventSource, created_at: i64, object: FeedObject) {
        self.feed_last_id += 1;
        let tenant = match &object {
            FeedObject::Payment(payment) => payment.tenant.clone(),
            FeedObject::Refund(refund) => refund.tenant.clone(),
            FeedObject::Dispute(payment) => payment.tenant.clone(),
        };
        self.feed.push(FeedEvent {
            position: FeedPosition {
                commit_group: 0,
                event_id: self.feed_last_id,
            },
            tenant,
            source,
            created_at,
            object,
        });
    }

    /// Records a refund's event, in its log and in the feed (with the refund as it is now).
    fn push_refund_event(&mut self, event: RefundEvent) {
        if let Some(refund) = self.refunds.get(&event.refund_id).cloned() {
            let created_at = refund.updated_at;
            self.push_feed(
                event.source,
                created_at,
                FeedObject::Refund(Box::new(refund)),
            );
        }
        self.refund_events.push(event);
    }

    fn set_status(&mut self, payment_id: &str, change: &StatusChange, now: i64) -> bool {
        match self.payments.get_mut(payment_id) {
            Some(payment) if payment.status == change.from => {
                payment.status = change.to;
                payment.last_payment_error = change.last_payment_error.clone();
                payment.updated_at = now;
                if change.to == PaymentStatus::Succeeded {
                    payment.amount_received = change.amount_received;
                }
                payment.amount_capturable = change.amount_capturable;
                payment.capture_before = change.capture_before;
                payment.cancellation_reason = change.cancellation_reason;
                true
            }
            _ => false,
        }
    }
}

/// What a payment created succeeded at once received: its amount.
fn record_received(payment: &mut Payment) {
    if payment.status == PaymentStatus::Succeeded {
        payment.amount_received = payment.amount;
    }
}

/// The store, in memory.
#[derive(Debug)]
pub(crate) struct FakeStore {
    state: Mutex<StoreState>,
    changes: broadcast::Sender<String>,
    /// When set, every call answers `Unavailable` (the database is down).
    pub(crate) down: AtomicBool,
}

impl Default for FakeStore {
    fn default() -> Self {
        FakeStore {
            state: Mutex::default(),
            changes: broadcast::channel(64).0,
            down: AtomicBool::new(false),
        }
    }
}

impl FakeStore {
    fn state(&self) -> Result<std::sync::MutexGuard<'_, StoreState>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the fake database is down".into()));
        }
        Ok(lock(&self.state))
    }

    /// Every payment, in id order.
    pub(crate) fn payments(&self) -> Vec<Payment> {
        lock(&self.state).payments.values().cloned().collect()
    }

    /// The payment's event log: (source, from, to), oldest first.
    pub(crate) fn events_of(
        &self,
        payment_id: &str,
    ) -> Vec<(EventSource, Option<PaymentStatus>, PaymentStatus)> {
        lock(&self.state)
            .events
            .iter()
            .filter(|(id, _)| id == payment_id)
            .map(|(_, event)| (event.source, event.from, event.to))
            .collect()
    }

    /// Every refund, in id order.
    pub(crate) fn refunds(&self) -> Vec<Refund> {
        lock(&self.state).refunds.values().cloned().collect()
    }

    /// Every refund change recorded, oldest first.
    pub(crate) fn refund_events(&self) -> Vec<RefundEvent> {
        lock(&self.state).refund_events.clone()
    }

    /// Ends every reconciler lease (of payments and of refunds), as time passing would.
    pub(crate) fn expire_leases(&self) {
        let mut state = lock(&self.state);
        state.leases.clear();
        state.refund_leases.clear();
    }

    /// Stores a payment as it is, as a crash or another replica might have left it.
    pub(crate) fn put(&self, payment: Payment) {
        lock(&self.state)
            .payments
            .insert(payment.id.clone(), payment);
    }
}

#[async_trait]
impl PaymentRecords for FakeStore {
    async fn insert_payment(
        &self,
        payment: &Payment,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let key = (payment.tenant.clone(), idempotency_key.to_owned());
        let invoice_live = state.payments.values().any(|p| {
            p.tenant == payment.tenant
                && p.invoice_id == payment.invoice_id
                && p.status != PaymentStatus::Canceled
        });
        if invoice_live || state.keys.contains_key(&key) {
            return Ok(false);
        }
        state
            .keys
            .insert(key, (request_fingerprint.to_owned(), payment.id.clone()));
        state.payments.insert(payment.id.clone(), payment.clone());
        state.append_event(&payment.id, EventSource::Create, None, payment.status);
        Ok(true)
    }

    async fn get_payment(
        &self,
        tenant: Option<&str>,
        payment_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        Ok(self
            .state()?
            .payments
            .get(payment_id)
            .filter(|p| tenant.is_none_or(|t| p.tenant == t))
            .cloned())
    }

    async fn find_payment_by_intent(
        &self,
        tenant: Option<&str>,
        intent_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        Ok(self
            .state()?
            .payments
            .values()
            .find(|p| {
                p.stripe_payment_intent_id.as_deref() == Some(intent_id)
                    && tenant.is_none_or(|t| p.tenant == t)
            })
            .cloned())
    }

    async fn list_payments(&self, query: ListQuery<'_>) -> Result<Vec<Payment>, StoreError> {
        let mut found: Vec<Payment> =
            self.state()?
                .payments
                .values()
                .filter(|p| p.tenant == query.tenant)
                .filter(|p| query.invoice_id.is_none_or(|i| p.invoice_id == i))
                .filter(|p| query.status.is_none_or(|s| p.status == s))
                .filter(|p| {
                    query.after.as_ref().is_none_or(|c| {
                        (p.created_at, p.id.as_str()) < (c.created_at, c.id.as_str())
                    })
                })
                .cloned()
                .collect();
        found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        found.truncate(query.limit as usize);
        Ok(found)
    }

    async fn attach_intent(
        &self,
        payment_id: &str,
        intent_id: &str,
        client_secret: Option<&str>,
        change: &StatusChange,
        now: i64,
    ) -> Result<Payment, StoreError> {
        let mut state = self.state()?;
        let payment = state
            .payments
            .get_mut(payment_id)
            .ok_or_else(|| StoreError::Corrupt(format!("payment {payment_id} vanished")))?;
        if payment.status != PaymentStatus::Creating {
            return Ok(payment.clone());
        }
        payment.stripe_payment_intent_id = Some(intent_id.to_owned());
        payment.client_secret = client_secret.map(str::to_owned);
        payment.status = change.to;
        payment.last_payment_error = change.last_payment_error.clone();
        payment.updated_at = now;
        record_received(payment);
        let attached = payment.clone();
        state.append_event(
            payment_id,
            EventSource::Create,
            Some(PaymentStatus::Creating),
            change.to,
        );
        let _ = self.changes.send(payment_id.to_owned());
        Ok(attached)
    }

    async fn apply_change(
        &self,
        payment_id: &str,
        change: &StatusChange,
        source: EventSource,
        now: i64,
    ) -> Result<(Payment, bool), StoreError> {
        let mut state = self.state()?;
        let changed = state.set_status(payment_id, change, now);
        if changed {
            state.append_event(payment_id, source, Some(change.from), change.to);
            let _ = self.changes.send(payment_id.to_owned());
        }
        let payment = state
            .payments
            .get(payment_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("payment {payment_id} vanished")))?;
        Ok((payment, changed))
    }
}

#[async_trait]
impl IdempotencyKeys for FakeStore {
    async fn find_for_create(
        &self,
        tenant: &str,
        idempotency_key: &str,
        invoice_id: &str,
    ) -> Result<CreateLookup, StoreError> {
        let state = self.state()?;
        let key = state
            .keys
            .get(&(tenant.to_owned(), idempotency_key.to_owned()))
            .map(|(fingerprint, payment_id)| {
                (
                    IdempotencyRecord {
                        request_fingerprint: fingerprint.clone(),
                        payment_id: payment_id.clone(),
                    },
                    state.payments[payment_id].clone(),
                )
            });
        let live = state
            .payments
            .values()
            .find(|p| {
                p.tenant == tenant
                    && p.invoice_id == invoice_id
                    && p.status != PaymentStatus::Canceled
            })
            .cloned();
        Ok(CreateLookup { key, live })
    }

    async fn insert_idempotency_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
        request_fingerprint: &str,
        payment_id: &str,
        _now: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let key = (tenant.to_owned(), idempotency_key.to_owned());
        if state.keys.contains_key(&key) {
            return Err(StoreError::Conflict);
        }
        state
            .keys
            .insert(key, (request_fingerprint.to_owned(), payment_id.to_owned()));
        Ok(())
    }
}

#[async_trait]
impl WebhookEventLog for FakeStore {
    async fn record_webhook_event(
        &self,
        event: &WebhookEventRecord<'_>,
        change: Option<WebhookChange<'_>>,
        now: i64,
    ) -> Result<EventRecorded, StoreError> {
        let mut state = self.state()?;
        if state.stripe_events.contains(event.stripe_event_id) {
            return Ok(EventRecorded::Duplicate);
        }
        let changed_payment = match (change, event.payment_id) {
            (Some(WebhookChange::Payment(change)), Some(payment_id)) => {
                if !state.set_status(payment_id, change, now) {
                    return Ok(EventRecorded::Conflict);
                }
                if let Some(payment) = state.payments.get_mut(payment_id) {
                    payment.last_event_created = Some(event.event_created);
                }
                state.append_event(
                    payment_id,
                    EventSource::Webhook,
                    Some(change.from),
                    change.to,
                );
                Some(payment_id.to_owned())
            }
            (Some(WebhookChange::Refund(update)), _) => {
                match state.change_refund(
                    update,
                    EventSource::Webhook,
                    Some(event.event_created),
                    now,
                )? {
                    Some(payment_id) => Some(payment_id),
                    None => return Ok(EventRecorded::Conflict),
                }
            }
            (Some(WebhookChange::ExternalRefund(refund)), _) => {
                let refund = Refund {
                    last_event_created: Some(event.event_created),
                    ..refund.clone()
                };
                if !state.insert_external_refund(&refund, EventSource::External, now) {
                    return Ok(EventRecorded::Conflict);
                }
                Some(refund.payment_id)
            }
            (Some(WebhookChange::Dispute(update)), _) => {
                if !state.set_dispute(update, EventSource::Webhook, Some(event.event_created), now)
                {
                    return Ok(EventRecorded::Conflict);
                }
                Some(update.payment_id.to_owned())
            }
            (Some(WebhookChange::Payment(_)), None) | (None, _) => None,
        };
        if let Some(payment_id) = changed_payment {
            let _ = self.changes.send(payment_id);
        }
        state.stripe_events.insert(event.stripe_event_id.to_owned());
        Ok(EventRecorded::Recorded)
    }
}

#[async_trait]
impl ReconcileClaims for FakeStore {
    async fn claim_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut state = self.state()?;
        let mut open: Vec<Payment> = state
            .payments
            .values()
            .filter(|p| !p.status.is_terminal() && p.updated_at < changed_before)
            .filter(|p| state.leases.get(&p.id).is_none_or(|until| *until < now))
            .cloned()
            .collect();
        open.sort_by_key(|p| p.updated_at);
        open.truncate(limit as usize);
        for payment in &open {
            state.leases.insert(payment.id.clone(), lease_until);
        }
        Ok(open)
    }

    async fn defer_reconcile(&self, payment_id: &str, until: i64) -> Result<(), StoreError> {
        self.state()?.leases.insert(payment_id.to_owned(), until);
        Ok(())
    }

    async fn renew_reconcile_claims(
        &self,
        payment_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let mut renewed = 0;
        for id in payment_ids {
            if let Some(until) = state.leases.get_mut(id)
                && *until == held
            {
                *until = lease_until;
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    async fn transient_payments(&self) -> Result<Vec<TransientPayments>, StoreError> {
        let state = self.state()?;
        Ok(crate::app::ports::TRANSIENT_STATUSES
            .iter()
            .filter_map(|status| {
                let of_status = state.payments.values().filter(|p| p.status == *status);
                let count = of_status.clone().count() as u64;
                let oldest_updated_at = of_status.map(|p| p.updated_at).min()?;
                Some(TransientPayments {
                    status: *status,
                    count,
                    oldest_updated_at,
                })
            })
            .collect())
    }
}

#[async_trait]
impl CustomerRecords for FakeStore {
    async fn find_customer(&self, tenant: &str, email: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .state()?
            .customers
            .get(&(tenant.to_owned(), email.to_owned()))
            .cloned())
    }

    async fn remember_customer(
        &self,
        tenant: &str,
        email: &str,
        stripe_customer_id: &str,
        _now: i64,
    ) -> Result<String, StoreError> {
        Ok(self
            .state()?
            .customers
            .entry((tenant.to_owned(), email.to_owned()))
            .or_insert_with(|| stripe_customer_id.to_owned())
            .clone())
    }
}

#[async_trait]
impl ChangeFeed for FakeStore {
    fn subscribe_changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    async fn status_events_after(
        &self,
        payment_id: &str,
        after: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        Ok(self
            .state()?
            .events
            .iter()
            .filter(|(id, event)| id == payment_id && event.payment_event_id > after)
            .map(|(_, event)| event.clone())
            .collect())
    }
}

#[async_trait]
impl EventFeed for FakeStore {
    async fn events_after(
        &self,
        tenant: &str,
        after: Option<FeedPosition>,
        types: &[FeedEventType],
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let wanted = |event: &FeedEvent| {
            let kind = match event.object {
                FeedObject::Payment(_) => FeedEventType::PaymentUpdated,
                FeedObject::Refund(_) => FeedEventType::RefundUpdated,
                FeedObject::Dispute(_) => FeedEventType::DisputeUpdated,
            };
            types.is_empty() || types.contains(&kind)
        };
        Ok(self
            .state()?
            .feed
            .iter()
            .filter(|event| event.tenant == tenant)
            .filter(|event| after.is_none_or(|after| event.position > after))
            .filter(|event| wanted(event))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn position_state(
        &self,
        tenant: &str,
        position: FeedPosition,
    ) -> Result<PositionState, StoreError> {
        let state = self.state()?;
        Ok(
            if state
                .feed
                .iter()
                .any(|event| event.tenant == tenant && event.position == position)
            {
                PositionState::Retained
            } else if state
                .feed_horizon
                .is_some_and(|horizon| position <= horizon)
            {
                PositionState::Expired
            } else {
                PositionState::Unknown
            },
        )
    }

    async fn delete_events_before(&self, created_before: i64) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let deleted = state
            .feed
            .iter()
            .take_while(|event| event.created_at < created_before)
            .count();
        if let Some(last) = deleted.checked_sub(1).map(|last| state.feed[last].position) {
            state.feed_horizon = Some(last);
        }
        state.feed.drain(..deleted);
        Ok(deleted as u64)
    }
}
