//! Coalesced PaymentIntent retrievals: concurrent reads of one intent share one Stripe call, and
//! an answer stays good for a short while, so a burst of returns (a customer reloading, 64 tabs)
//! costs Stripe one request. Stripe's rate limit is shared by everything paybridge does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ports::{PaymentProvider, ProviderError, ProviderIntent};

type Answer = Result<ProviderIntent, ProviderError>;

/// How long a retrieved intent answers later readers without a new Stripe call.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Entry {
    /// A call is on its way; its answer arrives on the channel.
    InFlight(watch::Receiver<Option<Answer>>),
    /// A call answered at this instant.
    Done(Instant, Answer),
}

#[derive(Debug, Default)]
pub(crate) struct IntentReads {
    entries: Mutex<HashMap<String, Entry>>,
}

enum Role {
    Leader(watch::Sender<Option<Answer>>),
    Follower(watch::Receiver<Option<Answer>>),
}

impl IntentReads {
    /// Reads the intent, joining a call already on its way or reusing a fresh answer.
    pub(crate) async fn retrieve(&self, provider: &dyn PaymentProvider, intent_id: &str) -> Answer {
        let role = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            entries.retain(|_, entry| match entry {
                Entry::InFlight(_) => true,
                Entry::Done(at, _) => now.duration_since(*at) < FRESH_FOR,
            });
            match entries.get(intent_id) {
                Some(Entry::Done(_, answer)) => return answer.clone(),
                Some(Entry::InFlight(receiver)) => Role::Follower(receiver.clone()),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    entries.insert(intent_id.to_owned(), Entry::InFlight(receiver));
                    Role::Leader(sender)
                }
            }
        };
        match role {
            Role::Leader(sender) => {
                let answer = provider.retrieve_payment_intent(intent_id).await;
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries.insert(
                    intent_id.to_owned(),
                    Entry::Done(Instant::now(), answer.clone()),
                );
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
        if matches!(entries.get(intent_id), Some(Entry::InFlight(r)) if r.has_changed().is_err()) {
            entries.remove(intent_id);
        }
    }
}
