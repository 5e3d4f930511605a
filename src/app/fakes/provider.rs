//! The payment provider and its webhooks, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::app::ports::{
    NewCustomer, NewPaymentIntent, PaymentProvider, ProviderError, ProviderEvent, ProviderIntent,
    WebhookRefused, WebhookVerification,
};
use crate::domain::{PAYMENT_ID_METADATA_KEY, PaymentStatus};

use super::lock;

#[derive(Debug, Default)]
struct ProviderState {
    /// By intent id.
    intents: BTreeMap<String, ProviderIntent>,
    /// Idempotency key → intent id: a repeated key answers the first intent.
    created_by_key: HashMap<String, String>,
    calls: Vec<String>,
    /// The next calls' answers, when set: a refusal or an outage.
    failing: Option<ProviderError>,
}

/// The payment provider, in memory: it remembers intents by idempotency key as Stripe does.
#[derive(Debug, Default)]
pub(crate) struct FakeProvider {
    state: Mutex<ProviderState>,
}

impl FakeProvider {
    /// Every call so far, e.g. `create_payment_intent paybridge-create-pay_…`.
    pub(crate) fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// Makes the next calls fail with `error` (`None`: answer again).
    pub(crate) fn fail_with(&self, error: Option<ProviderError>) {
        lock(&self.state).failing = error;
    }

    /// The intent as the provider holds it now.
    pub(crate) fn intent(&self, intent_id: &str) -> ProviderIntent {
        lock(&self.state).intents[intent_id].clone()
    }

    /// Changes the intent at the provider (the customer paid, say).
    pub(crate) fn update_intent(&self, intent_id: &str, change: impl FnOnce(&mut ProviderIntent)) {
        let mut state = lock(&self.state);
        let intent = state.intents.get_mut(intent_id).expect("a known intent");
        change(intent);
    }

    fn call(
        &self,
        what: String,
    ) -> Result<std::sync::MutexGuard<'_, ProviderState>, ProviderError> {
        let mut state = lock(&self.state);
        state.calls.push(what);
        match state.failing.clone() {
            Some(error) => Err(error),
            None => Ok(state),
        }
    }
}

#[async_trait]
impl PaymentProvider for FakeProvider {
    async fn create_customer(&self, customer: NewCustomer) -> Result<String, ProviderError> {
        drop(self.call(format!("create_customer {}", customer.idempotency_key))?);
        Ok(format!("cus_{}", customer.idempotency_key.len()))
    }

    async fn create_payment_intent(
        &self,
        intent: NewPaymentIntent,
    ) -> Result<ProviderIntent, ProviderError> {
        let mut state = self.call(format!("create_payment_intent {}", intent.idempotency_key))?;
        if let Some(id) = state.created_by_key.get(&intent.idempotency_key) {
            return Ok(state.intents[id].clone());
        }
        let id = format!("pi_{}", state.intents.len() + 1);
        let created = ProviderIntent {
            id: id.clone(),
            status: PaymentStatus::RequiresPaymentMethod,
            amount: intent.amount,
            currency: intent.currency,
            client_secret: Some(format!("{id}_secret_fake")),
            metadata: intent.metadata,
            last_payment_error: None,
        };
        state
            .created_by_key
            .insert(intent.idempotency_key, id.clone());
        state.intents.insert(id, created.clone());
        Ok(created)
    }

    async fn retrieve_payment_intent(&self, id: &str) -> Result<ProviderIntent, ProviderError> {
        let state = self.call(format!("retrieve_payment_intent {id}"))?;
        state
            .intents
            .get(id)
            .cloned()
            .ok_or(ProviderError::NotFound)
    }

    async fn cancel_payment_intent(
        &self,
        id: &str,
        _idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError> {
        let mut state = self.call(format!("cancel_payment_intent {id}"))?;
        let intent = state.intents.get_mut(id).ok_or(ProviderError::NotFound)?;
        intent.status = PaymentStatus::Canceled;
        Ok(intent.clone())
    }

    async fn create_refund(
        &self,
        _refund: crate::app::ports::NewRefund,
    ) -> Result<crate::app::ports::ProviderRefund, ProviderError> {
        todo!("refunds: provider")
    }
    async fn retrieve_refund(
        &self,
        _id: &str,
    ) -> Result<crate::app::ports::ProviderRefund, ProviderError> {
        todo!("refunds: provider")
    }
    async fn list_refunds(
        &self,
        _payment_intent: &str,
    ) -> Result<Vec<crate::app::ports::ProviderRefund>, ProviderError> {
        todo!("refunds: provider")
    }
    async fn list_recent_refunds(
        &self,
        _created_since: i64,
        _limit: u32,
    ) -> Result<Vec<crate::app::ports::ProviderRefund>, ProviderError> {
        todo!("refunds: provider")
    }
}

/// Webhook deliveries, in memory: a payload is the key of an event handed to
/// [`FakeWebhooks::deliver`], and only the signature `valid` passes.
#[derive(Debug, Default)]
pub(crate) struct FakeWebhooks {
    events: Mutex<HashMap<Vec<u8>, ProviderEvent>>,
}

impl FakeWebhooks {
    /// The payload that carries `event` (its id).
    pub(crate) fn deliver(&self, event: ProviderEvent) -> Vec<u8> {
        let payload = event.id.clone().into_bytes();
        lock(&self.events).insert(payload.clone(), event);
        payload
    }
}

impl WebhookVerification for FakeWebhooks {
    fn verify_event(
        &self,
        payload: &[u8],
        signature: &str,
        _now_seconds: i64,
    ) -> Result<ProviderEvent, WebhookRefused> {
        if signature != "valid" {
            return Err(WebhookRefused::Signature("no v1 value matches".to_owned()));
        }
        lock(&self.events)
            .get(payload)
            .cloned()
            .ok_or_else(|| WebhookRefused::Payload("not an event".to_owned()))
    }
}

/// The payment id an intent's metadata names.
pub(crate) fn payment_id_of(intent: &ProviderIntent) -> &str {
    &intent.metadata[PAYMENT_ID_METADATA_KEY]
}
