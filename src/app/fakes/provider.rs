//! The payment provider and its webhooks, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::app::ports::{
    NewCustomer, NewPaymentIntent, NewRefund, PaymentProvider, ProviderDispute, ProviderError,
    ProviderEvent, ProviderIntent, ProviderRefund, WebhookRefused, WebhookVerification,
};
use crate::domain::{PAYMENT_ID_METADATA_KEY, PaymentStatus, RefundReason, RefundStatus};

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
    /// Every refund, oldest first; `re_<n>` is `refunds[n - 1]`.
    refunds: Vec<ProviderRefund>,
    /// Idempotency key → the first create's parameters and answer (the refund as it was then),
    /// which a repeated key replays as Stripe does: the first answer, not the refund's state
    /// now. A refusal is not remembered (as the local Stripe does): the same key may try again.
    refunds_by_key: HashMap<String, (RefundParameters, ProviderRefund)>,
    /// What happens to the next `create_refund`, when set.
    next_refund_create: Option<NextRefundCreate>,
    /// The status new refunds start in (`None`: `Succeeded`, as card refunds usually do).
    new_refund_status: Option<RefundStatus>,
    /// Every dispute, oldest first.
    disputes: Vec<ProviderDispute>,
}

/// The parameters of a refund create that Stripe compares when a key is used again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefundParameters {
    payment_intent: String,
    amount: i64,
    reason: Option<RefundReason>,
    metadata: BTreeMap<String, String>,
}

/// A one-off fate of the next refund create.
#[derive(Debug)]
enum NextRefundCreate {
    /// The request never reached the provider: nothing is made, nothing remembered.
    Fail(ProviderError),
    /// The provider made the refund (and remembers it by key), but its answer was lost.
    LoseAnswer(ProviderError),
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

    /// Changes the intent at the provider (the customer paid, say). An intent that succeeded
    /// without saying what it received received its amount, as Stripe's automatic capture does.
    pub(crate) fn update_intent(&self, intent_id: &str, change: impl FnOnce(&mut ProviderIntent)) {
        let mut state = lock(&self.state);
        let intent = state.intents.get_mut(intent_id).expect("a known intent");
        change(intent);
        if intent.status == PaymentStatus::Succeeded && intent.amount_received == 0 {
            intent.amount_received = intent.amount;
        }
    }

    /// Opens or changes a dispute at the provider (replacing one of the same id).
    pub(crate) fn put_dispute(&self, dispute: ProviderDispute) {
        let mut state = lock(&self.state);
        state
            .disputes
            .retain(|d| d.dispute.id != dispute.dispute.id);
        state.disputes.push(dispute);
    }

    /// Makes the next `create_refund` fail with `error` before it reaches the provider (once).
    pub(crate) fn fail_next_refund_create(&self, error: ProviderError) {
        lock(&self.state).next_refund_create = Some(NextRefundCreate::Fail(error));
    }

    /// Makes the next `create_refund` make its refund but answer `error` (once): a timeout or a
    /// lost answer after the provider acted. The same key then replays the refund.
    pub(crate) fn lose_next_refund_answer(&self, error: ProviderError) {
        lock(&self.state).next_refund_create = Some(NextRefundCreate::LoseAnswer(error));
    }

    /// The status refunds start in from now on (by default `Succeeded`).
    pub(crate) fn start_refunds_in(&self, status: RefundStatus) {
        lock(&self.state).new_refund_status = Some(status);
    }

    /// The refund as the provider holds it now.
    pub(crate) fn refund(&self, refund_id: &str) -> ProviderRefund {
        let state = lock(&self.state);
        state
            .refunds
            .iter()
            .find(|refund| refund.id == refund_id)
            .expect("a known refund")
            .clone()
    }

    /// Every refund the provider holds, oldest first.
    pub(crate) fn refunds(&self) -> Vec<ProviderRefund> {
        lock(&self.state).refunds.clone()
    }

    /// Changes the refund at the provider (it succeeded, or failed days later, say).
    pub(crate) fn update_refund(&self, refund_id: &str, change: impl FnOnce(&mut ProviderRefund)) {
        let mut state = lock(&self.state);
        let refund = state
            .refunds
            .iter_mut()
            .find(|refund| refund.id == refund_id)
            .expect("a known refund");
        change(refund);
    }

    /// Moves the refund to `status` at the provider, with Stripe's `failure_reason` (if any).
    pub(crate) fn set_refund_status(
        &self,
        refund_id: &str,
        status: RefundStatus,
        failure_reason: Option<&str>,
    ) -> ProviderRefund {
        let mut updated = None;
        self.update_refund(refund_id, |refund| {
            refund.status = status;
            refund.failure_reason = failure_reason.map(str::to_owned);
            updated = Some(refund.clone());
        });
        updated.expect("updated")
    }

    /// A refund made at the provider directly (its Dashboard, another tool): no call of ours,
    /// no idempotency key, no metadata; refused like any other when it does not fit.
    pub(crate) fn refund_directly(
        &self,
        payment_intent: &str,
        amount: i64,
    ) -> Result<ProviderRefund, ProviderError> {
        let mut state = lock(&self.state);
        state.make_refund(&RefundParameters {
            payment_intent: payment_intent.to_owned(),
            amount,
            reason: None,
            metadata: BTreeMap::new(),
        })
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
            amount_received: 0,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            latest_charge: None,
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

    async fn create_refund(&self, refund: NewRefund) -> Result<ProviderRefund, ProviderError> {
        let mut state = self.call(format!("create_refund {}", refund.idempotency_key))?;
        let parameters = RefundParameters {
            payment_intent: refund.payment_intent,
            amount: refund.amount,
            reason: refund.reason,
            metadata: refund.metadata,
        };
        let lost_answer = match state.next_refund_create.take() {
            Some(NextRefundCreate::Fail(error)) => return Err(error),
            Some(NextRefundCreate::LoseAnswer(error)) => Some(error),
            None => None,
        };
        let answer = match state.refunds_by_key.get(&refund.idempotency_key) {
            Some((first, _)) if *first != parameters => {
                return Err(rejected(
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with.",
                ));
            }
            Some((_, first)) => Ok(first.clone()),
            None => state.make_refund(&parameters).inspect(|made| {
                state
                    .refunds_by_key
                    .insert(refund.idempotency_key, (parameters, made.clone()));
            }),
        };
        match lost_answer {
            Some(error) => Err(error),
            None => answer,
        }
    }

    async fn retrieve_refund(&self, id: &str) -> Result<ProviderRefund, ProviderError> {
        let state = self.call(format!("retrieve_refund {id}"))?;
        state.refund(id).cloned().ok_or(ProviderError::NotFound)
    }

    async fn list_refunds(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderRefund>, ProviderError> {
        let state = self.call(format!("list_refunds {payment_intent}"))?;
        if !state.intents.contains_key(payment_intent) {
            return Err(ProviderError::NotFound);
        }
        Ok(state
            .refunds
            .iter()
            .rev()
            .filter(|refund| refund.payment_intent.as_deref() == Some(payment_intent))
            .cloned()
            .collect())
    }

    async fn list_recent_refunds(
        &self,
        created_since: i64,
        limit: u32,
    ) -> Result<Vec<ProviderRefund>, ProviderError> {
        let state = self.call(format!("list_recent_refunds {created_since} {limit}"))?;
        Ok(state
            .refunds
            .iter()
            .rev()
            .filter(|refund| refund.created >= created_since)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn capture_payment_intent(
        &self,
        id: &str,
        amount_to_capture: i64,
        idempotency_key: &str,
    ) -> Result<ProviderIntent, ProviderError> {
        let mut state = self.call(format!(
            "capture_payment_intent {idempotency_key} {amount_to_capture}"
        ))?;
        let intent = state.intents.get_mut(id).ok_or(ProviderError::NotFound)?;
        match intent.status {
            // The same capture again: Stripe answers it again.
            PaymentStatus::Succeeded if intent.amount_received == amount_to_capture => {}
            PaymentStatus::RequiresCapture if amount_to_capture <= intent.amount_capturable => {
                intent.status = PaymentStatus::Succeeded;
                intent.amount_received = amount_to_capture;
                intent.amount_capturable = 0;
            }
            _ => {
                return Err(rejected(
                    "payment_intent_unexpected_state",
                    "This PaymentIntent could not be captured.",
                ));
            }
        }
        Ok(intent.clone())
    }

    async fn retrieve_charge(
        &self,
        id: &str,
    ) -> Result<crate::app::ports::ProviderCharge, ProviderError> {
        // The fake's intents have no charges.
        drop(self.call(format!("retrieve_charge {id}"))?);
        Err(ProviderError::NotFound)
    }

    async fn list_disputes(
        &self,
        payment_intent: &str,
    ) -> Result<Vec<ProviderDispute>, ProviderError> {
        let state = self.call(format!("list_disputes {payment_intent}"))?;
        Ok(state
            .disputes
            .iter()
            .rev()
            .filter(|d| d.payment_intent.as_deref() == Some(payment_intent))
            .cloned()
            .collect())
    }
}

impl ProviderState {
    fn refund(&self, id: &str) -> Option<&ProviderRefund> {
        self.refunds.iter().find(|refund| refund.id == id)
    }

    /// Makes a refund if it fits what the intent has left: its amount minus its refunds that
    /// did not fail and were not cancelled. Refused as Stripe refuses.
    fn make_refund(&mut self, asked: &RefundParameters) -> Result<ProviderRefund, ProviderError> {
        let Some(intent) = self.intents.get(&asked.payment_intent) else {
            return Err(rejected(
                "resource_missing",
                &format!("No such payment_intent: '{}'", asked.payment_intent),
            ));
        };
        if intent.status != PaymentStatus::Succeeded {
            return Err(ProviderError::Rejected {
                status: 400,
                code: None,
                message: format!(
                    "This PaymentIntent ({}) does not have a successful charge to refund.",
                    intent.id
                ),
            });
        }
        if asked.amount <= 0 {
            return Err(rejected(
                "parameter_invalid_integer",
                "This value must be greater than or equal to 1.",
            ));
        }
        let held: i64 = self
            .refunds
            .iter()
            .filter(|refund| refund.payment_intent.as_deref() == Some(intent.id.as_str()))
            .filter(|refund| {
                !matches!(refund.status, RefundStatus::Failed | RefundStatus::Canceled)
            })
            .map(|refund| refund.amount)
            .sum();
        let remaining = intent.amount - held;
        if remaining <= 0 {
            return Err(rejected(
                "charge_already_refunded",
                &format!("Charge for {} has already been refunded.", intent.id),
            ));
        }
        if asked.amount > remaining {
            return Err(rejected(
                "amount_too_large",
                &format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({remaining})",
                    asked.amount
                ),
            ));
        }
        let refund = ProviderRefund {
            id: format!("re_{}", self.refunds.len() + 1),
            payment_intent: Some(intent.id.clone()),
            amount: asked.amount,
            currency: intent.currency.clone(),
            status: self.new_refund_status.unwrap_or(RefundStatus::Succeeded),
            reason: asked.reason,
            failure_reason: None,
            metadata: asked.metadata.clone(),
            created: now_seconds(),
            releases_uncaptured: false,
        };
        self.refunds.push(refund.clone());
        Ok(refund)
    }
}

/// A 400 the way the adapter reports Stripe's: its code and message.
fn rejected(code: &str, message: &str) -> ProviderError {
    ProviderError::Rejected {
        status: 400,
        code: Some(code.to_owned()),
        message: message.to_owned(),
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider holding one paid intent of `amount`; its id.
    async fn paid(amount: i64) -> (FakeProvider, String) {
        let provider = FakeProvider::default();
        let intent = provider
            .create_payment_intent(NewPaymentIntent {
                capture_method: crate::domain::CaptureMethod::Automatic,
                amount,
                currency: "eur".to_owned(),
                customer: None,
                description: None,
                metadata: BTreeMap::new(),
                idempotency_key: "create".to_owned(),
            })
            .await
            .expect("intent");
        provider.update_intent(&intent.id, |intent| {
            intent.status = PaymentStatus::Succeeded;
        });
        (provider, intent.id)
    }

    fn new_refund(intent: &str, amount: i64, key: &str) -> NewRefund {
        NewRefund {
            payment_intent: intent.to_owned(),
            amount,
            reason: Some(RefundReason::Duplicate),
            metadata: [("paybridge_refund_id".to_owned(), key.to_owned())].into(),
            idempotency_key: key.to_owned(),
        }
    }

    fn code(error: &ProviderError) -> Option<&str> {
        match error {
            ProviderError::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_key_replays_its_first_answer_and_refuses_other_parameters() {
        let (provider, pi) = paid(1000).await;
        let first = provider
            .create_refund(new_refund(&pi, 300, "k1"))
            .await
            .expect("refund");
        assert_eq!(first.status, RefundStatus::Succeeded);
        assert_eq!(first.currency, "eur");
        assert_eq!(first.reason, Some(RefundReason::Duplicate));
        provider.set_refund_status(&first.id, RefundStatus::Failed, Some("declined"));
        let again = provider
            .create_refund(new_refund(&pi, 300, "k1"))
            .await
            .expect("replayed");
        assert_eq!(again, first, "the first answer, not the refund now");
        assert_eq!(provider.refunds().len(), 1);

        let err = provider
            .create_refund(new_refund(&pi, 301, "k1"))
            .await
            .expect_err("other parameters");
        assert_eq!(code(&err), Some("idempotency_error"));
        // Another key with the same amount is another refund.
        let second = provider
            .create_refund(new_refund(&pi, 300, "k2"))
            .await
            .expect("refund");
        assert_ne!(second.id, first.id);
        assert_eq!(provider.refunds().len(), 2);
    }

    #[tokio::test]
    async fn refunds_never_exceed_the_intent_unless_one_failed() {
        let (provider, pi) = paid(1000).await;
        for key in ["a", "b", "c"] {
            provider
                .create_refund(new_refund(&pi, 300, key))
                .await
                .expect("fits");
        }
        let err = provider
            .create_refund(new_refund(&pi, 300, "d"))
            .await
            .expect_err("too much");
        assert_eq!(code(&err), Some("amount_too_large"));
        // A failed refund's amount is refundable again, and a refusal is not remembered by key.
        provider.set_refund_status("re_1", RefundStatus::Failed, Some("declined"));
        provider
            .create_refund(new_refund(&pi, 300, "d"))
            .await
            .expect("fits now");
        let err = provider
            .create_refund(new_refund(&pi, 101, "e"))
            .await
            .expect_err("100 left");
        assert_eq!(code(&err), Some("amount_too_large"));
        provider
            .create_refund(new_refund(&pi, 100, "e"))
            .await
            .expect("all that is left");
        let err = provider
            .create_refund(new_refund(&pi, 1, "f"))
            .await
            .expect_err("nothing left");
        assert_eq!(code(&err), Some("charge_already_refunded"));
        let err = provider
            .create_refund(new_refund("pi_unknown", 1, "g"))
            .await
            .expect_err("no intent");
        assert_eq!(code(&err), Some("resource_missing"));
        let err = provider
            .refund_directly(&pi, 1)
            .expect_err("a direct refund is refused alike");
        assert_eq!(code(&err), Some("charge_already_refunded"));
    }

    #[tokio::test]
    async fn a_failed_create_makes_nothing_and_a_lost_answer_is_found_again_by_key() {
        let (provider, pi) = paid(1000).await;
        provider.fail_next_refund_create(ProviderError::Unavailable("down".to_owned()));
        let err = provider
            .create_refund(new_refund(&pi, 300, "k"))
            .await
            .expect_err("down");
        assert!(matches!(err, ProviderError::Unavailable(_)));
        assert!(provider.refunds().is_empty());

        provider.lose_next_refund_answer(ProviderError::Unavailable("timeout".to_owned()));
        let err = provider
            .create_refund(new_refund(&pi, 300, "k"))
            .await
            .expect_err("lost");
        assert!(matches!(err, ProviderError::Unavailable(_)));
        assert_eq!(provider.refunds().len(), 1, "made all the same");
        let found = provider
            .create_refund(new_refund(&pi, 300, "k"))
            .await
            .expect("replayed");
        assert_eq!(found, provider.refund("re_1"));
        assert_eq!(provider.refunds().len(), 1);

        provider.fail_with(Some(ProviderError::Unavailable("all down".to_owned())));
        assert!(provider.retrieve_refund("re_1").await.is_err());
        assert!(provider.list_refunds(&pi).await.is_err());
        provider.fail_with(None);
        assert_eq!(
            provider.calls(),
            [
                "create_payment_intent create",
                "create_refund k",
                "create_refund k",
                "create_refund k",
                "retrieve_refund re_1",
                &format!("list_refunds {pi}"),
            ]
        );
    }

    #[tokio::test]
    async fn lists_are_newest_first_and_include_direct_refunds() {
        let (provider, pi) = paid(1000).await;
        let other = provider
            .create_payment_intent(NewPaymentIntent {
                capture_method: crate::domain::CaptureMethod::Automatic,
                amount: 500,
                currency: "eur".to_owned(),
                customer: None,
                description: None,
                metadata: BTreeMap::new(),
                idempotency_key: "other".to_owned(),
            })
            .await
            .expect("intent")
            .id;
        let err = provider
            .create_refund(new_refund(&other, 100, "unpaid"))
            .await
            .expect_err("nothing was paid");
        assert!(
            matches!(&err, ProviderError::Rejected { message, .. } if message.contains("successful charge")),
            "{err:?}"
        );
        provider.update_intent(&other, |intent| intent.status = PaymentStatus::Succeeded);
        provider.start_refunds_in(RefundStatus::Pending);
        let ours = provider
            .create_refund(new_refund(&pi, 100, "k"))
            .await
            .expect("refund");
        assert_eq!(ours.status, RefundStatus::Pending);
        let elsewhere = provider
            .create_refund(new_refund(&other, 100, "x"))
            .await
            .expect("refund");
        let direct = provider.refund_directly(&pi, 200).expect("direct");
        assert!(direct.metadata.is_empty());

        let listed = provider.list_refunds(&pi).await.expect("listed");
        assert_eq!(listed, [direct.clone(), ours.clone()]);
        assert!(matches!(
            provider.list_refunds("pi_unknown").await,
            Err(ProviderError::NotFound)
        ));

        let recent = provider
            .list_recent_refunds(ours.created, 2)
            .await
            .expect("listed");
        assert_eq!(recent, [direct.clone(), elsewhere]);
        provider.update_refund(&direct.id, |refund| refund.created = 1);
        let recent = provider.list_recent_refunds(2, 10).await.expect("listed");
        assert_eq!(recent.len(), 2, "{recent:?}");
        assert!(recent.iter().all(|refund| refund.id != direct.id));

        assert_eq!(
            provider.retrieve_refund(&ours.id).await.expect("read"),
            ours
        );
        assert!(matches!(
            provider.retrieve_refund("re_404").await,
            Err(ProviderError::NotFound)
        ));
    }
}
