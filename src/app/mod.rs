//! Use cases and the ports they need. Each use case is a method of [`Payments`]; the transport
//! layer authenticates the caller, parses the request into the command types here, and calls them.

mod cancel;
mod capture;
mod coalesce;
mod create;
mod dispute;
mod error;
mod events;
#[cfg(test)]
mod fakes;
mod fingerprint;
mod locks;
mod payment_link;
pub mod ports;
mod push;
mod query;
mod reconcile;
mod reconcile_refunds;
mod refund;
mod sync;
mod verify_return;
mod watch;
mod webhook;

use std::sync::Arc;

use crate::domain::Payment;
use coalesce::IntentReads;
use locks::PaymentLocks;
use ports::{PaymentProvider, PaymentStore, WebhookVerification};

pub use capture::CaptureCommand;
pub use create::{CreatePaymentCommand, CreatedPayment};
pub use dispute::DisputeSweepReport;
pub use error::AppError;
pub use error::error_chain;
pub use events::{
    DEFAULT_EVENT_PAGE_SIZE, EventPage, ListEventsQuery, MAX_EVENT_PAGE_SIZE, event_cursor,
    event_id, event_type,
};
pub use payment_link::{HostedPage, IssuedLink};
pub use push::{
    Clock, ManualClock, PushSettings, PushTarget, PushWorker, SystemClock, Turn, retry_delay,
};
pub use query::{DEFAULT_PAGE_SIZE, ListPage, ListPaymentsQuery, MAX_PAGE_SIZE};
pub use reconcile::SweepReport;
pub use reconcile_refunds::RefundSweepReport;
pub use refund::{ListRefundsQuery, RefundAnswer, RefundCommand, RefundPage};
pub use verify_return::{ReturnCaller, VerifiedReturn};
pub use webhook::{EventOutcome, IgnoredBecause};

/// Settings the use cases hand to callers.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// The Stripe publishable key the platform's page initialises Stripe.js with.
    pub publishable_key: String,
    /// The gateway's public return URL, for `stripe.confirmPayment`'s `return_url`.
    pub return_url: String,
    /// The gateway's public base (`PAYBRIDGE_PUBLIC_URL`, no trailing `/`): hosted page links
    /// are `<public_url>/pay/<token>`.
    pub public_url: String,
    /// Checks webhook signatures; `None` when no webhook secret is configured.
    pub webhook_verifier: Option<Arc<dyn WebhookVerification>>,
}

/// The payment use cases.
#[derive(Debug)]
pub struct Payments {
    store: Arc<dyn PaymentStore>,
    provider: Arc<dyn PaymentProvider>,
    settings: PaymentSettings,
    locks: PaymentLocks,
    intent_reads: IntentReads,
    refund_scan: reconcile_refunds::RefundScan,
}

impl Payments {
    pub fn new(
        store: Arc<dyn PaymentStore>,
        provider: Arc<dyn PaymentProvider>,
        settings: PaymentSettings,
    ) -> Self {
        Payments {
            store,
            provider,
            settings,
            locks: PaymentLocks::default(),
            intent_reads: IntentReads::default(),
            refund_scan: Default::default(),
        }
    }

    /// One payment of `tenant` (any tenant's when `None`, for the gateway).
    async fn load(&self, tenant: Option<&str>, payment_id: &str) -> Result<Payment, AppError> {
        self.store
            .get_payment(tenant, payment_id)
            .await?
            .ok_or(AppError::NotFound)
    }
}

/// Now, in unix milliseconds.
fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
