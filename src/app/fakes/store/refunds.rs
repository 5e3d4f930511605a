//! The in-memory store's refunds: what a refund reserves of its payment, and how its changes move
//! the payment's amounts, as the real store does.

use async_trait::async_trait;

use super::{FakeStore, StoreState};
use crate::app::ports::{RefundListQuery, RefundRecords, RefundUpdate, StoreError};
use crate::domain::{EventSource, PaymentStatus, Refund, RefundBucket, RefundStatus};

/// One refund change as the event log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundEvent {
    pub(crate) payment_id: String,
    pub(crate) refund_id: String,
    pub(crate) source: EventSource,
    pub(crate) from: Option<RefundStatus>,
    pub(crate) to: RefundStatus,
}

impl StoreState {
    /// Adds `(refunded, pending)` to a payment's refund amounts.
    pub(super) fn move_refund_amounts(
        &mut self,
        payment_id: &str,
        (refunded, pending): (i64, i64),
        now: i64,
    ) {
        if let Some(payment) = self.payments.get_mut(payment_id) {
            payment.amount_refunded += refunded;
            payment.amount_refund_pending += pending;
            payment.updated_at = now;
        }
    }

    /// Applies a refund change if the refund is still in `change.from` (attaching the Stripe id
    /// if it has none), with its payment's amounts and its event; the refund's payment when it
    /// changed.
    pub(super) fn change_refund(
        &mut self,
        update: RefundUpdate<'_>,
        source: EventSource,
        event_created: Option<i64>,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let change = update.change;
        let attaching = update.stripe_refund_id.filter(|stripe_id| {
            self.refunds
                .get(update.refund_id)
                .is_some_and(|refund| refund.stripe_refund_id.is_none())
                && self.refund_by_stripe_id(stripe_id).is_some()
        });
        let Some(refund) = self
            .refunds
            .get_mut(update.refund_id)
            .filter(|refund| refund.status == change.from)
        else {
            return Ok(None);
        };
        if attaching.is_some() {
            // Another refund holds that Stripe id: the unique index refuses it.
            return Err(StoreError::Conflict);
        }
        refund.status = change.to;
        refund.failure_reason = change.failure_reason.clone();
        if refund.stripe_refund_id.is_none() {
            refund.stripe_refund_id = update.stripe_refund_id.map(str::to_owned);
        }
        refund.updated_at = now;
        refund.last_event_created = event_created.or(refund.last_event_created);
        let (payment_id, amount) = (refund.payment_id.clone(), refund.amount);
        self.move_refund_amounts(&payment_id, change.amount_deltas(amount), now);
        self.push_refund_event(RefundEvent {
            payment_id: payment_id.clone(),
            refund_id: update.refund_id.to_owned(),
            source,
            from: Some(change.from),
            to: change.to,
        });
        Ok(Some(payment_id))
    }

    /// Records a refund made at Stripe directly with its payment's amounts and first event;
    /// false when its Stripe id is recorded already.
    pub(super) fn insert_external_refund(
        &mut self,
        refund: &Refund,
        source: EventSource,
        now: i64,
    ) -> bool {
        if let Some(stripe_id) = &refund.stripe_refund_id
            && self.refund_by_stripe_id(stripe_id).is_some()
        {
            return false;
        }
        let amounts = match refund.status.bucket() {
            RefundBucket::Pending => (0, refund.amount),
            RefundBucket::Refunded => (refund.amount, 0),
            RefundBucket::Released => (0, 0),
        };
        self.refunds.insert(refund.id.clone(), refund.clone());
        self.move_refund_amounts(&refund.payment_id, amounts, now);
        self.push_refund_event(RefundEvent {
            payment_id: refund.payment_id.clone(),
            refund_id: refund.id.clone(),
            source,
            from: None,
            to: refund.status,
        });
        true
    }

    pub(super) fn refund_by_stripe_id(&self, stripe_refund_id: &str) -> Option<&Refund> {
        self.refunds
            .values()
            .find(|refund| refund.stripe_refund_id.as_deref() == Some(stripe_refund_id))
    }
}

#[async_trait]
impl RefundRecords for FakeStore {
    async fn insert_refund(
        &self,
        refund: &Refund,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let key = (refund.tenant.clone(), idempotency_key.to_owned());
        let fits = state.payments.get(&refund.payment_id).is_some_and(|p| {
            p.tenant == refund.tenant
                && p.status == PaymentStatus::Succeeded
                && p.amount_received - p.amount_refunded - p.amount_refund_pending >= refund.amount
        });
        if state.refund_keys.contains_key(&key) {
            return Err(StoreError::Conflict);
        }
        if !fits {
            return Ok(false);
        }
        state
            .refund_keys
            .insert(key, (request_fingerprint.to_owned(), refund.id.clone()));
        state.refunds.insert(refund.id.clone(), refund.clone());
        state.move_refund_amounts(&refund.payment_id, (0, refund.amount), refund.created_at);
        state.push_refund_event(RefundEvent {
            payment_id: refund.payment_id.clone(),
            refund_id: refund.id.clone(),
            source: EventSource::Refund,
            from: None,
            to: refund.status,
        });
        let _ = self.changes.send(refund.payment_id.clone());
        Ok(true)
    }

    async fn insert_external_refund(
        &self,
        refund: &Refund,
        source: EventSource,
        now: i64,
    ) -> Result<bool, StoreError> {
        let inserted = self.state()?.insert_external_refund(refund, source, now);
        if inserted {
            let _ = self.changes.send(refund.payment_id.clone());
        }
        Ok(inserted)
    }

    async fn get_refund(
        &self,
        tenant: Option<&str>,
        refund_id: &str,
    ) -> Result<Option<Refund>, StoreError> {
        Ok(self
            .state()?
            .refunds
            .get(refund_id)
            .filter(|r| tenant.is_none_or(|t| r.tenant == t))
            .cloned())
    }

    async fn find_refund_by_key(
        &self,
        tenant: &str,
        idempotency_key: &str,
    ) -> Result<Option<(String, Refund)>, StoreError> {
        let state = self.state()?;
        Ok(state
            .refund_keys
            .get(&(tenant.to_owned(), idempotency_key.to_owned()))
            .map(|(fingerprint, refund_id)| {
                (fingerprint.clone(), state.refunds[refund_id].clone())
            }))
    }

    async fn find_refund_by_stripe_id(
        &self,
        stripe_refund_id: &str,
    ) -> Result<Option<Refund>, StoreError> {
        Ok(self.state()?.refund_by_stripe_id(stripe_refund_id).cloned())
    }

    async fn list_refunds(&self, query: RefundListQuery<'_>) -> Result<Vec<Refund>, StoreError> {
        let mut found: Vec<Refund> =
            self.state()?
                .refunds
                .values()
                .filter(|r| r.tenant == query.tenant)
                .filter(|r| query.payment_id.is_none_or(|p| r.payment_id == p))
                .filter(|r| {
                    query.after.as_ref().is_none_or(|c| {
                        (r.created_at, r.id.as_str()) < (c.created_at, c.id.as_str())
                    })
                })
                .cloned()
                .collect();
        found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        found.truncate(query.limit as usize);
        Ok(found)
    }

    async fn apply_refund_change(
        &self,
        update: RefundUpdate<'_>,
        source: EventSource,
        now: i64,
    ) -> Result<(Refund, bool), StoreError> {
        let mut state = self.state()?;
        let changed = state.change_refund(update, source, None, now)?;
        if let Some(payment_id) = &changed {
            let _ = self.changes.send(payment_id.clone());
        }
        let refund = state
            .refunds
            .get(update.refund_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("refund {} not found", update.refund_id)))?;
        Ok((refund, changed.is_some()))
    }

    async fn claim_refunds_for_reconcile(
        &self,
        now: i64,
        changed_before: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Refund>, StoreError> {
        let mut state = self.state()?;
        let mut open: Vec<Refund> = state
            .refunds
            .values()
            .filter(|r| r.status.bucket() == RefundBucket::Pending && r.updated_at < changed_before)
            .filter(|r| {
                state
                    .refund_leases
                    .get(&r.id)
                    .is_none_or(|until| *until < now)
            })
            .cloned()
            .collect();
        open.sort_by_key(|r| r.updated_at);
        open.truncate(limit as usize);
        for refund in &open {
            state.refund_leases.insert(refund.id.clone(), lease_until);
        }
        Ok(open)
    }

    async fn defer_refund_reconcile(&self, refund_id: &str, until: i64) -> Result<(), StoreError> {
        self.state()?
            .refund_leases
            .insert(refund_id.to_owned(), until);
        Ok(())
    }

    async fn renew_refund_reconcile_claims(
        &self,
        refund_ids: &[String],
        held: i64,
        lease_until: i64,
    ) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let mut renewed = 0;
        for id in refund_ids {
            if let Some(until) = state.refund_leases.get_mut(id)
                && *until == held
            {
                *until = lease_until;
                renewed += 1;
            }
        }
        Ok(renewed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::app::ports::ChangeFeed;
    use crate::domain::Payment;
    use crate::domain::{RefundChange, RefundSource};

    fn succeeded_payment(store: &FakeStore, amount: i64) -> String {
        let payment = Payment {
            id: "pay_refunded".to_owned(),
            tenant: "billing".to_owned(),
            invoice_id: "inv-1".to_owned(),
            amount,
            currency: "usd".to_owned(),
            status: PaymentStatus::Succeeded,
            stripe_payment_intent_id: Some("pi_1".to_owned()),
            stripe_customer_id: None,
            client_secret: None,
            description: None,
            metadata: BTreeMap::new(),
            success_url: "https://billing.example.com/paid".to_owned(),
            failure_url: "https://billing.example.com/failed".to_owned(),
            last_payment_error: None,
            created_at: 1,
            updated_at: 1,
            last_event_created: None,
            amount_received: amount,
            amount_refunded: 0,
            amount_refund_pending: 0,
            capture_method: crate::domain::CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        };
        store.put(payment);
        "pay_refunded".to_owned()
    }

    fn refund(id: &str, payment_id: &str, amount: i64) -> Refund {
        Refund {
            id: id.to_owned(),
            payment_id: payment_id.to_owned(),
            tenant: "billing".to_owned(),
            amount,
            currency: "usd".to_owned(),
            status: RefundStatus::Creating,
            reason: None,
            stripe_refund_id: None,
            failure_reason: None,
            source: RefundSource::Api,
            metadata: BTreeMap::new(),
            created_at: 2,
            updated_at: 2,
            last_event_created: None,
        }
    }

    fn amounts(store: &FakeStore) -> (i64, i64) {
        let payment = &store.payments()[0];
        (payment.amount_refunded, payment.amount_refund_pending)
    }

    #[tokio::test]
    async fn refunds_reserve_what_remains_and_give_it_back_when_they_fail() {
        let store = FakeStore::default();
        let payment_id = succeeded_payment(&store, 1000);
        for (i, fits) in [(1, true), (2, true), (3, true), (4, false)] {
            let id = format!("ref_{i}");
            assert_eq!(
                store
                    .insert_refund(&refund(&id, &payment_id, 300), &format!("k{i}"), "fp")
                    .await
                    .expect("insert"),
                fits,
                "{id}"
            );
        }
        assert_eq!(amounts(&store), (0, 900));
        assert!(matches!(
            store
                .insert_refund(&refund("ref_5", &payment_id, 1), "k1", "fp")
                .await,
            Err(StoreError::Conflict)
        ));
        let mut refund_1 = "re_1";
        for (from, to) in [
            (RefundStatus::Creating, RefundStatus::Succeeded),
            (RefundStatus::Succeeded, RefundStatus::Failed),
        ] {
            let change = RefundChange {
                from,
                to,
                failure_reason: None,
            };
            let update = RefundUpdate {
                refund_id: "ref_1",
                change: &change,
                stripe_refund_id: Some(refund_1),
            };
            let (changed, moved) = store
                .apply_refund_change(update, EventSource::Refund, 3)
                .await
                .expect("apply");
            assert!(moved);
            assert_eq!(changed.stripe_refund_id.as_deref(), Some("re_1"));
            refund_1 = "re_other";
        }
        assert_eq!(
            amounts(&store),
            (0, 600),
            "the failed refund's amount is back"
        );
        let events = store.refund_events();
        assert_eq!(events.len(), 5);
        assert!(
            store
                .status_events_after(&payment_id, 0)
                .await
                .expect("events")
                .is_empty(),
            "refund events are not the payment's status events"
        );

        let mut external = refund("ref_ext", &payment_id, 500);
        external.status = RefundStatus::Succeeded;
        external.stripe_refund_id = Some("re_ext".to_owned());
        external.source = RefundSource::External;
        assert!(
            store
                .insert_external_refund(&external, EventSource::Reconcile, 4)
                .await
                .expect("external")
        );
        external.id = "ref_ext_again".to_owned();
        assert!(
            !store
                .insert_external_refund(&external, EventSource::Reconcile, 4)
                .await
                .expect("external again")
        );
        assert_eq!(
            amounts(&store),
            (500, 600),
            "Stripe made it: no refundable check"
        );
        let ids: Vec<String> = store.refunds().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["ref_1", "ref_2", "ref_3", "ref_ext"]);
    }
}
