//! Coalesced PaymentIntent retrievals: concurrent reads of one intent share one Stripe call, and
//! an answer stays good for a short while, so a burst of returns (a customer reloading, 64 tabs)
//! costs Stripe one request. Stripe's rate limit is shared by everything paybridge does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
// Tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;

use super::ports::{PaymentProvider, ProviderError, ProviderIntent};

type Answer = Result<ProviderIntent, ProviderError>;

/// How long a retrieved intent answers later readers without a new Stripe call, unless
/// [`IntentReads::new`] is given another window.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Entry {
    /// A call is on its way; its answer arrives on the channel.
    InFlight(watch::Receiver<Option<Answer>>),
    /// A call answered at this instant (boxed: an intent is far larger than a receiver).
    Done(Instant, Box<Answer>),
}

/// How often answers older than their window are dropped. Dropping them is a walk over every
/// entry (about one window of reads), too costly to do on each read under a burst of returns
/// (figures in bench/README.md); a stale answer is never used meanwhile (each use checks its age).
const PRUNE_EVERY: Duration = Duration::from_millis(100);

/// At most this many answers are kept (about 1 KiB each), so memory does not grow with the rate
/// of reads of distinct intents (figures in bench/README.md). A burst of reads of one intent
/// still finds its answer unless the map is full of others.
const MAX_KEPT: usize = 4096;

#[derive(Debug)]
pub(crate) struct IntentReads {
    entries: Mutex<Entries>,
    /// How long an answer is reused.
    fresh_for: Duration,
}

impl Default for IntentReads {
    fn default() -> Self {
        IntentReads::new(FRESH_FOR)
    }
}

#[derive(Debug, Default)]
struct Entries {
    by_intent: HashMap<String, Entry>,
    pruned_at: Option<Instant>,
}

enum Role {
    Leader(watch::Sender<Option<Answer>>),
    Follower(watch::Receiver<Option<Answer>>),
}

impl IntentReads {
    /// Answers are reused for `fresh_for` after their Stripe call.
    pub(crate) fn new(fresh_for: Duration) -> IntentReads {
        IntentReads {
            entries: Mutex::default(),
            fresh_for,
        }
    }

    /// Reads the intent, joining a call already on its way or reusing a fresh answer.
    pub(crate) async fn retrieve(&self, provider: &dyn PaymentProvider, intent_id: &str) -> Answer {
        let role = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if entries
                .pruned_at
                .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY)
            {
                entries.by_intent.retain(|_, entry| match entry {
                    Entry::InFlight(_) => true,
                    Entry::Done(at, _) => now.duration_since(*at) < self.fresh_for,
                });
                entries.pruned_at = Some(now);
            }
            match entries.by_intent.get(intent_id) {
                Some(Entry::Done(at, answer)) if now.duration_since(*at) < self.fresh_for => {
                    return Answer::clone(answer);
                }
                Some(Entry::InFlight(receiver)) => Role::Follower(receiver.clone()),
                // None, or an answer gone stale since the last pruning: read anew.
                _ => {
                    let (sender, receiver) = watch::channel(None);
                    entries
                        .by_intent
                        .insert(intent_id.to_owned(), Entry::InFlight(receiver));
                    Role::Leader(sender)
                }
            }
        };
        match role {
            Role::Leader(sender) => {
                let answer = provider.retrieve_payment_intent(intent_id).await;
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                if entries.by_intent.len() <= MAX_KEPT {
                    entries.by_intent.insert(
                        intent_id.to_owned(),
                        Entry::Done(Instant::now(), Box::new(answer.clone())),
                    );
                } else {
                    // Full: answered, not kept (the calls on their way stay coalesced).
                    entries.by_intent.remove(intent_id);
                }
                drop(entries);
                let _ = sender.send(Some(answer.clone()));
                answer
            }
            Role::Follower(mut receiver) => {
                let waited = receiver
                    .wait_for(Option::is_some)
                    .await
                    .map(|answer| answer.clone());
                match waited {
                    Ok(Some(answer)) => answer,
                    // The leader was cancelled before it answered: read for ourselves.
                    Ok(None) | Err(_) => {
                        self.forget_abandoned(intent_id);
                        provider.retrieve_payment_intent(intent_id).await
                    }
                }
            }
        }
    }
}

impl IntentReads {
    /// Drops the entry of a call whose leader went away without answering.
    fn forget_abandoned(&self, intent_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(entries.by_intent.get(intent_id), Some(Entry::InFlight(r)) if r.has_changed().is_err())
        {
            entries.by_intent.remove(intent_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::app::ports::{NewCustomer, NewPaymentIntent, NewRefund, ProviderRefund};
    use crate::domain::PaymentStatus;

    /// Counts the reads; nothing else is called.
    #[derive(Debug, Default)]
    struct CountingProvider {
        reads: AtomicUsize,
    }

    #[async_trait]
    impl PaymentProvider for CountingProvider {
        async fn create_customer(&self, _: NewCustomer) -> Result<String, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn create_payment_intent(&self, _: NewPaymentIntent) -> Answer {
            unreachable!("not used by IntentReads")
        }
        async fn retrieve_payment_intent(&self, id: &str) -> Answer {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(ProviderIntent {
                id: id.to_owned(),
                status: PaymentStatus::RequiresPaymentMethod,
                amount: 4200,
                currency: "usd".to_owned(),
                client_secret: None,
                metadata: BTreeMap::new(),
                last_payment_error: None,
                amount_received: 0,
                amount_capturable: 0,
                capture_before: None,
                cancellation_reason: None,
                latest_charge: None,
            })
        }
        async fn cancel_payment_intent(&self, _: &str, _: &str) -> Answer {
            unreachable!("not used by IntentReads")
        }
        async fn create_refund(&self, _: NewRefund) -> Result<ProviderRefund, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn retrieve_refund(&self, _: &str) -> Result<ProviderRefund, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn list_refunds(&self, _: &str) -> Result<Vec<ProviderRefund>, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn list_recent_refunds(
            &self,
            _: i64,
            _: u32,
        ) -> Result<Vec<ProviderRefund>, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn capture_payment_intent(&self, _: &str, _: i64, _: &str) -> Answer {
            unreachable!("not used by IntentReads")
        }
        async fn retrieve_charge(
            &self,
            _: &str,
        ) -> Result<crate::app::ports::ProviderCharge, ProviderError> {
            unreachable!("not used by IntentReads")
        }
        async fn list_disputes(
            &self,
            _: &str,
        ) -> Result<Vec<crate::app::ports::ProviderDispute>, ProviderError> {
            unreachable!("not used by IntentReads")
        }
    }

    // On tokio's paused clock, so every answer stays fresh however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_while_fresh_and_at_most_max_kept_are_kept() {
        let provider = CountingProvider::default();
        let reads = IntentReads::default();
        let ids: Vec<String> = (0..2000).map(|i| format!("pi_{i}")).collect();
        for id in &ids {
            assert_eq!(reads.retrieve(&provider, id).await.expect("read").id, *id);
        }
        for id in &ids {
            reads.retrieve(&provider, id).await.expect("read again");
        }
        assert_eq!(
            provider.reads.load(Ordering::SeqCst),
            2000,
            "fresh answers reused"
        );
        // Past `MAX_KEPT` answers, later ones are not kept; the earlier ones still are.
        let more: Vec<String> = (0..MAX_KEPT).map(|i| format!("pi_more_{i}")).collect();
        for id in &more {
            reads.retrieve(&provider, id).await.expect("read");
        }
        assert!(reads.entries.lock().expect("lock").by_intent.len() <= MAX_KEPT + 1);
        reads.retrieve(&provider, "pi_0").await.expect("kept");
        let last = more.last().expect("one");
        reads.retrieve(&provider, last).await.expect("not kept");
        let read_so_far = 2000 + MAX_KEPT + 1;
        assert_eq!(provider.reads.load(Ordering::SeqCst), read_so_far);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_for_its_window_and_read_anew_once_stale_even_before_pruning() {
        let window = Duration::from_secs(30);
        let provider = CountingProvider::default();
        let reads = IntentReads::new(window);
        reads.retrieve(&provider, "pi_fresh").await.expect("read");
        tokio::time::advance(window - Duration::from_millis(50)).await;
        reads
            .retrieve(&provider, "pi_other")
            .await
            .expect("read, and prune");
        reads.retrieve(&provider, "pi_fresh").await.expect("reused");
        assert_eq!(provider.reads.load(Ordering::SeqCst), 2, "reused within");
        // Stale, but the last pruning was less than `PRUNE_EVERY` ago: still kept.
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(
            reads
                .entries
                .lock()
                .expect("lock")
                .by_intent
                .contains_key("pi_fresh")
        );
        reads
            .retrieve(&provider, "pi_fresh")
            .await
            .expect("read anew");
        assert_eq!(
            provider.reads.load(Ordering::SeqCst),
            3,
            "a stale answer is read anew"
        );
    }
}
