//! The store's refunds, through its port, on SQLite and PostgreSQL: what a refund reserves of its
//! payment, under concurrency; how its changes move the payment's amounts and land in the event
//! log; its keys, Stripe ids, listing and the reconciler's claims.

use std::sync::Arc;

use paybridge::adapters::store::Store;
use paybridge::app::ports::{
    ChangeFeed, EventRecorded, ListCursor, PaymentRecords, RefundListQuery, RefundRecords,
    RefundUpdate, StoreError, WebhookChange, WebhookEventLog, WebhookEventRecord,
};
use paybridge::domain::{
    EventSource, Payment, PaymentStatus, Refund, RefundChange, RefundId, RefundSource,
    RefundStatus, StatusChange,
};

use crate::support::{self, Db};

/// A migrated store on a fresh database, with a pool of several connections, and the directory
/// that holds the SQLite file.
async fn store_on(db: Db) -> (Arc<Store>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("refunds.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    let store = Store::connect(&url, 8).await.expect("store");
    store.migrate().await.expect("migrate");
    (Arc::new(store), url, dir)
}

fn now() -> i64 {
    support::events::now() * 1000
}

fn change(from: PaymentStatus, to: PaymentStatus) -> StatusChange {
    StatusChange::status_only(from, to, None)
}

/// A change to `Succeeded` that received `amount` (Stripe's `amount_received`).
fn paid(from: PaymentStatus, amount: i64) -> StatusChange {
    StatusChange {
        amount_received: amount,
        ..change(from, PaymentStatus::Succeeded)
    }
}

/// A payment of `amount` for `invoice`, made `Succeeded` through the store (its intent attached
/// as Stripe answered, then paid).
async fn succeeded_payment(store: &Store, invoice: &str, amount: i64) -> Payment {
    let mut payment = support::creating_payment(invoice);
    payment.amount = amount;
    assert!(
        store
            .insert_payment(&payment, &format!("key-{invoice}"), "fp")
            .await
            .expect("insert payment")
    );
    let intent = format!("pi_{invoice}");
    let attached = store
        .attach_intent(
            &payment.id,
            &intent,
            Some("secret"),
            &change(PaymentStatus::Creating, PaymentStatus::Processing),
            now(),
        )
        .await
        .expect("attach");
    assert_eq!(attached.amount_received, 0, "nothing received yet");
    let (paid, changed) = store
        .apply_change(
            &payment.id,
            &paid(PaymentStatus::Processing, amount),
            EventSource::Return,
            now(),
        )
        .await
        .expect("paid");
    assert!(changed);
    assert_eq!(paid.amount_received, amount, "received once succeeded");
    paid
}

/// A refund through paybridge, as RefundPayment writes it first.
fn new_refund(payment: &Payment, amount: i64) -> Refund {
    Refund {
        id: RefundId::generate().as_str().to_owned(),
        payment_id: payment.id.clone(),
        tenant: payment.tenant.clone(),
        amount,
        currency: payment.currency.clone(),
        status: RefundStatus::Creating,
        reason: None,
        stripe_refund_id: None,
        failure_reason: None,
        source: RefundSource::Api,
        metadata: [("ticket".to_owned(), "t-1".to_owned())].into(),
        created_at: now(),
        updated_at: now(),
        last_event_created: None,
    }
}

/// A refund made at Stripe directly, in `status`.
fn external_refund(
    payment: &Payment,
    amount: i64,
    stripe_id: &str,
    status: RefundStatus,
) -> Refund {
    Refund {
        stripe_refund_id: Some(stripe_id.to_owned()),
        source: RefundSource::External,
        status,
        metadata: Default::default(),
        ..new_refund(payment, amount)
    }
}

/// The payment's (amount_refunded, amount_refund_pending) as stored.
async fn amounts(store: &Store, payment: &Payment) -> (i64, i64) {
    let stored = store
        .get_payment(None, &payment.id)
        .await
        .expect("read")
        .expect("the payment");
    (stored.amount_refunded, stored.amount_refund_pending)
}

async fn apply(
    store: &Store,
    refund: &Refund,
    from: RefundStatus,
    to: RefundStatus,
    stripe_id: Option<&str>,
) -> (Refund, bool) {
    let change = RefundChange {
        from,
        to,
        failure_reason: (to == RefundStatus::Failed).then(|| "expired_or_canceled_card".to_owned()),
    };
    store
        .apply_refund_change(
            RefundUpdate {
                refund_id: &refund.id,
                change: &change,
                stripe_refund_id: stripe_id,
            },
            EventSource::Refund,
            now(),
        )
        .await
        .expect("apply")
}

/// Each way a payment reaches `succeeded` records what it received: the attach of an intent
/// that succeeded at once, a change, a webhook event.
async fn a_payment_receives_its_amount_on_every_way_to_succeeded(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let at_once = support::creating_payment("inv-at-once");
    assert!(
        store
            .insert_payment(&at_once, "k-1", "fp")
            .await
            .expect("insert")
    );
    let attached = store
        .attach_intent(
            &at_once.id,
            "pi_at_once",
            None,
            &change(PaymentStatus::Creating, PaymentStatus::Succeeded),
            now(),
        )
        .await
        .expect("attach");
    assert_eq!(attached.amount_received, 4200);

    let by_webhook = support::creating_payment("inv-webhook");
    assert!(
        store
            .insert_payment(&by_webhook, "k-2", "fp")
            .await
            .expect("insert")
    );
    store
        .attach_intent(
            &by_webhook.id,
            "pi_webhook",
            None,
            &change(PaymentStatus::Creating, PaymentStatus::Processing),
            now(),
        )
        .await
        .expect("attach");
    let recorded = store
        .record_webhook_event(
            &WebhookEventRecord {
                stripe_event_id: "evt_paid",
                event_type: "payment_intent.succeeded",
                event_created: support::events::now(),
                payment_id: Some(&by_webhook.id),
                result: "applied",
            },
            Some(WebhookChange::Payment(&paid(
                PaymentStatus::Processing,
                4200,
            ))),
            now(),
        )
        .await
        .expect("webhook");
    assert_eq!(recorded, EventRecorded::Recorded);
    let paid = store
        .get_payment(None, &by_webhook.id)
        .await
        .expect("read")
        .expect("payment");
    assert_eq!(paid.amount_received, 4200);

    let by_change = succeeded_payment(&store, "inv-change", 1000).await;
    assert_eq!(by_change.amount_received, 1000);
}

async fn a_refund_reserves_its_amount_and_one_above_what_remains_is_refused(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;

    let first = new_refund(&payment, 600);
    assert!(
        store
            .insert_refund(&first, "r-1", "fp-1")
            .await
            .expect("insert")
    );
    assert_eq!(amounts(&store, &payment).await, (0, 600));
    let stored = store
        .get_refund(Some("billing"), &first.id)
        .await
        .expect("read")
        .expect("the refund");
    assert_eq!(stored, first, "written and read back unchanged");

    let too_much = new_refund(&payment, 401);
    assert!(
        !store
            .insert_refund(&too_much, "r-2", "fp-2")
            .await
            .expect("insert")
    );
    assert_eq!(
        amounts(&store, &payment).await,
        (0, 600),
        "nothing reserved"
    );
    assert_eq!(
        store.get_refund(None, &too_much.id).await.expect("read"),
        None
    );
    assert_eq!(
        store
            .find_refund_by_key("billing", "r-2")
            .await
            .expect("read"),
        None
    );

    let the_rest = new_refund(&payment, 400);
    assert!(
        store
            .insert_refund(&the_rest, "r-3", "fp-3")
            .await
            .expect("insert")
    );
    assert_eq!(amounts(&store, &payment).await, (0, 1000));
    let one_more = new_refund(&payment, 1);
    assert!(
        !store
            .insert_refund(&one_more, "r-4", "fp-4")
            .await
            .expect("insert")
    );

    // Only a succeeded payment, of the refund's tenant.
    let open = support::creating_payment("inv-open");
    assert!(
        store
            .insert_payment(&open, "k-open", "fp")
            .await
            .expect("insert")
    );
    assert!(
        !store
            .insert_refund(&new_refund(&open, 1), "r-5", "fp-5")
            .await
            .expect("insert")
    );
    let other = succeeded_payment(&store, "inv-other", 1000).await;
    let mut other_tenants = new_refund(&other, 100);
    other_tenants.tenant = "orders".to_owned();
    assert!(
        !store
            .insert_refund(&other_tenants, "r-6", "fp-6")
            .await
            .expect("insert")
    );
    assert_eq!(amounts(&store, &other).await, (0, 0));
    assert_eq!(
        store
            .get_refund(Some("orders"), &first.id)
            .await
            .expect("read"),
        None
    );
}

/// 8 refunds of 300 at once on a payment of 1,000 (on PostgreSQL over several connections):
/// exactly 3 are written, and the payment holds 900 for them. Three rounds, to give the race
/// more than one chance.
async fn concurrent_refunds_never_reserve_more_than_was_received(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    for round in 0..3 {
        let payment = succeeded_payment(&store, &format!("inv-{round}"), 1000).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut refunds = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (store, barrier, refund) =
                (store.clone(), barrier.clone(), new_refund(&payment, 300));
            refunds.spawn(async move {
                barrier.wait().await;
                store
                    .insert_refund(&refund, &format!("r-{round}-{i}"), "fp")
                    .await
                    .expect("insert")
            });
        }
        let inserted = refunds
            .join_all()
            .await
            .into_iter()
            .filter(|inserted| *inserted)
            .count();
        assert_eq!(inserted, 3, "round {round}");
        assert_eq!(amounts(&store, &payment).await, (0, 900), "round {round}");
        let listed = store
            .list_refunds(RefundListQuery {
                tenant: "billing",
                payment_id: Some(&payment.id),
                after: None,
                limit: 100,
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 3, "round {round}");
    }
}

async fn refund_changes_move_the_payments_amounts(db: Db) {
    let metrics = &paybridge::metrics::METRICS;
    let counted = |from: &'static str, to: &'static str| {
        metrics
            .refund_transitions
            .get_or_create(&paybridge::metrics::TransitionLabels {
                from,
                to,
                source: "refund",
            })
            .get()
    };
    let counted_before = counted("succeeded", "failed");
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;
    let refund = new_refund(&payment, 300);
    assert!(
        store
            .insert_refund(&refund, "r-1", "fp")
            .await
            .expect("insert")
    );

    let (pending, changed) = apply(
        &store,
        &refund,
        RefundStatus::Creating,
        RefundStatus::Pending,
        Some("re_1"),
    )
    .await;
    assert!(changed);
    assert_eq!(pending.status, RefundStatus::Pending);
    assert_eq!(
        pending.stripe_refund_id.as_deref(),
        Some("re_1"),
        "attached"
    );
    assert_eq!(amounts(&store, &payment).await, (0, 300));

    // A change from a status the refund has left changes nothing.
    let (unchanged, changed) = apply(
        &store,
        &refund,
        RefundStatus::Creating,
        RefundStatus::Succeeded,
        Some("re_other"),
    )
    .await;
    assert!(!changed);
    assert_eq!(unchanged, pending);
    assert_eq!(amounts(&store, &payment).await, (0, 300));

    let (succeeded, changed) = apply(
        &store,
        &refund,
        RefundStatus::Pending,
        RefundStatus::Succeeded,
        Some("re_other"),
    )
    .await;
    assert!(changed);
    assert_eq!(
        succeeded.stripe_refund_id.as_deref(),
        Some("re_1"),
        "an attached Stripe id stays"
    );
    assert_eq!(amounts(&store, &payment).await, (300, 0));
    assert_eq!(
        store
            .find_refund_by_stripe_id("re_1")
            .await
            .expect("read")
            .map(|r| r.id),
        Some(refund.id.clone())
    );

    let (failed, changed) = apply(
        &store,
        &refund,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        None,
    )
    .await;
    assert!(changed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("expired_or_canceled_card")
    );
    assert_eq!(
        amounts(&store, &payment).await,
        (0, 0),
        "the amount is given back"
    );
    assert!(
        store
            .insert_refund(&new_refund(&payment, 1000), "r-2", "fp")
            .await
            .expect("insert"),
        "all of it is refundable again"
    );
    assert_eq!(counted("succeeded", "failed"), counted_before + 1);
}

async fn an_external_refund_is_recorded_once_and_counts_without_the_check(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;
    assert!(
        store
            .insert_refund(&new_refund(&payment, 900), "r-1", "fp")
            .await
            .expect("insert")
    );

    let external = external_refund(&payment, 200, "re_dashboard", RefundStatus::Succeeded);
    assert!(
        store
            .insert_external_refund(&external, EventSource::Reconcile, now())
            .await
            .expect("external")
    );
    assert_eq!(
        amounts(&store, &payment).await,
        (200, 900),
        "Stripe made it: counted"
    );
    let again = external_refund(&payment, 200, "re_dashboard", RefundStatus::Succeeded);
    assert!(
        !store
            .insert_external_refund(&again, EventSource::Refresh, now())
            .await
            .expect("external again")
    );
    assert_eq!(amounts(&store, &payment).await, (200, 900), "counted once");
    assert_eq!(store.get_refund(None, &again.id).await.expect("read"), None);
    assert_eq!(
        store
            .find_refund_by_stripe_id("re_dashboard")
            .await
            .expect("read"),
        Some(external)
    );

    let pending = external_refund(&payment, 50, "re_pending", RefundStatus::Pending);
    assert!(
        store
            .insert_external_refund(&pending, EventSource::Refresh, now())
            .await
            .expect("external")
    );
    assert_eq!(amounts(&store, &payment).await, (200, 950));
}

/// A refund's changes are events of its payment's log that name it, with their source; the
/// payment's status events (what WatchPayment streams) leave them out.
async fn refund_events_are_logged_with_their_payment_but_are_not_its_status_events(db: Db) {
    let (store, url, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;
    let status_events = store
        .status_events_after(&payment.id, 0)
        .await
        .expect("events");
    let refund = new_refund(&payment, 300);
    assert!(
        store
            .insert_refund(&refund, "r-1", "fp")
            .await
            .expect("insert")
    );
    apply(
        &store,
        &refund,
        RefundStatus::Creating,
        RefundStatus::Succeeded,
        Some("re_1"),
    )
    .await;
    let external = external_refund(&payment, 100, "re_ext", RefundStatus::Succeeded);
    assert!(
        store
            .insert_external_refund(&external, EventSource::Reconcile, now())
            .await
            .expect("external")
    );
    assert_eq!(
        store
            .status_events_after(&payment.id, 0)
            .await
            .expect("events"),
        status_events,
        "no refund event among the payment's status events"
    );
    assert_eq!(
        status_events.len(),
        3,
        "create, attach, paid: {status_events:?}"
    );

    let log = sqlx::AnyPool::connect(&url).await.expect("pool");
    let events: Vec<(String, Option<String>, String, Option<String>)> = sqlx::query_as(
        "select source, from_status, to_status, refund_id from payment_event \
         where payment_id = $1 and refund_id is not null order by payment_event_id",
    )
    .bind(&payment.id)
    .fetch_all(&log)
    .await
    .expect("log");
    let text = |s: &str| s.to_owned();
    assert_eq!(
        events,
        [
            (
                text("refund"),
                None,
                text("creating"),
                Some(refund.id.clone())
            ),
            (
                text("refund"),
                Some(text("creating")),
                text("succeeded"),
                Some(refund.id.clone())
            ),
            (
                text("reconcile"),
                None,
                text("succeeded"),
                Some(external.id.clone())
            ),
        ]
    );
    log.close().await;
}

async fn a_key_names_one_refund_per_tenant(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;
    let first = new_refund(&payment, 1000);
    assert!(
        store
            .insert_refund(&first, "r-1", "fp-1")
            .await
            .expect("insert")
    );
    assert_eq!(
        store
            .find_refund_by_key("billing", "r-1")
            .await
            .expect("read"),
        Some(("fp-1".to_owned(), first.clone()))
    );
    assert_eq!(
        store
            .find_refund_by_key("orders", "r-1")
            .await
            .expect("read"),
        None
    );

    // The same key on another refund that would fit: the key's unique index refuses it.
    let other = succeeded_payment(&store, "inv-2", 1000).await;
    let reused = new_refund(&other, 100);
    assert!(matches!(
        store.insert_refund(&reused, "r-1", "fp-2").await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        amounts(&store, &other).await,
        (0, 0),
        "its reservation rolled back"
    );
    assert_eq!(
        store.get_refund(None, &reused.id).await.expect("read"),
        None
    );
    // One that would not fit (a retry of the first, say): the key is taken, not the amount.
    let retried = new_refund(&payment, 1000);
    assert!(matches!(
        store.insert_refund(&retried, "r-1", "fp-1").await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(amounts(&store, &payment).await, (0, 1000));
}

async fn refunds_are_listed_newest_first_page_by_page(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 10_000).await;
    let other = succeeded_payment(&store, "inv-2", 10_000).await;
    let base = now();
    let mut written = Vec::new();
    // Two pairs share a created_at: the id orders them.
    for (i, created_at) in [base, base + 1, base + 1, base + 2, base + 2, base + 3]
        .into_iter()
        .enumerate()
    {
        let of = if i == 2 { &other } else { &payment };
        let refund = Refund {
            created_at,
            updated_at: created_at,
            ..new_refund(of, 100)
        };
        assert!(
            store
                .insert_refund(&refund, &format!("r-{i}"), "fp")
                .await
                .expect("insert")
        );
        written.push(refund);
    }
    let mut newest_first = written.clone();
    newest_first.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_refunds(RefundListQuery {
                tenant: "billing",
                payment_id: None,
                after: after.clone(),
                limit: 4,
            })
            .await
            .expect("list");
        let Some(last) = page.last() else { break };
        after = Some(ListCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        pages.push(page.len());
        newest_first
            .drain(..page.len())
            .zip(&page)
            .for_each(|(expected, listed)| assert_eq!(&expected, listed));
    }
    assert_eq!(pages, [4, 2]);
    assert!(newest_first.is_empty());

    let of_payment = store
        .list_refunds(RefundListQuery {
            tenant: "billing",
            payment_id: Some(&payment.id),
            after: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert_eq!(of_payment.len(), 5);
    assert!(of_payment.iter().all(|r| r.payment_id == payment.id));
    let others = store
        .list_refunds(RefundListQuery {
            tenant: "orders",
            payment_id: None,
            after: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert!(others.is_empty());
}

async fn webhook_refund_changes_are_recorded_once_with_the_event(db: Db) {
    let (store, _, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 1000).await;
    let refund = new_refund(&payment, 300);
    assert!(
        store
            .insert_refund(&refund, "r-1", "fp")
            .await
            .expect("insert")
    );
    let created = support::events::now();
    let record = |id: &'static str| WebhookEventRecord {
        stripe_event_id: id,
        event_type: "refund.updated",
        event_created: created,
        payment_id: Some(&payment.id),
        result: "applied",
    };
    // The webhook echo arrives before the create's answer: it attaches the Stripe id.
    let succeeded = RefundChange {
        from: RefundStatus::Creating,
        to: RefundStatus::Succeeded,
        failure_reason: None,
    };
    let update = RefundUpdate {
        refund_id: &refund.id,
        change: &succeeded,
        stripe_refund_id: Some("re_1"),
    };
    for (event, expected) in [
        ("evt_1", EventRecorded::Recorded),
        ("evt_1", EventRecorded::Duplicate),
        ("evt_2", EventRecorded::Conflict),
    ] {
        let recorded = store
            .record_webhook_event(&record(event), Some(WebhookChange::Refund(update)), now())
            .await
            .expect("record");
        assert_eq!(recorded, expected, "{event}");
    }
    let stored = store
        .get_refund(None, &refund.id)
        .await
        .expect("read")
        .expect("refund");
    assert_eq!(stored.status, RefundStatus::Succeeded);
    assert_eq!(stored.stripe_refund_id.as_deref(), Some("re_1"));
    assert_eq!(stored.last_event_created, Some(created));
    assert_eq!(amounts(&store, &payment).await, (300, 0));

    let external = external_refund(&payment, 200, "re_ext", RefundStatus::Pending);
    let recorded = store
        .record_webhook_event(
            &record("evt_3"),
            Some(WebhookChange::ExternalRefund(&external)),
            now(),
        )
        .await
        .expect("record");
    assert_eq!(recorded, EventRecorded::Recorded);
    let found = store
        .find_refund_by_stripe_id("re_ext")
        .await
        .expect("read")
        .expect("the external refund");
    assert_eq!(found.last_event_created, Some(created));
    assert_eq!(found.source, RefundSource::External);
    assert_eq!(amounts(&store, &payment).await, (300, 200));
    let echo = external_refund(&payment, 200, "re_ext", RefundStatus::Pending);
    let recorded = store
        .record_webhook_event(
            &record("evt_4"),
            Some(WebhookChange::ExternalRefund(&echo)),
            now(),
        )
        .await
        .expect("record");
    assert_eq!(
        recorded,
        EventRecorded::Conflict,
        "its Stripe id is recorded"
    );
    assert_eq!(amounts(&store, &payment).await, (300, 200));
    // A conflict records nothing, not even the event: its redelivery is applied.
    let recorded = store
        .record_webhook_event(&record("evt_4"), None, now())
        .await
        .expect("record");
    assert_eq!(recorded, EventRecorded::Recorded);
}

/// Open refunds (creating, pending, requires_action) are claimed by one replica at a time and
/// left alone while leased or deferred.
async fn open_refunds_are_claimed_by_one_replica_at_a_time(db: Db) {
    let (store, url, _dir) = store_on(db).await;
    let payment = succeeded_payment(&store, "inv-1", 10_000).await;
    let mut open = Vec::new();
    for i in 0..10 {
        let refund = new_refund(&payment, 100);
        assert!(
            store
                .insert_refund(&refund, &format!("r-{i}"), "fp")
                .await
                .expect("insert")
        );
        open.push(refund);
    }
    // One of them finished: never claimed.
    apply(
        &store,
        &open[0],
        RefundStatus::Creating,
        RefundStatus::Succeeded,
        Some("re_0"),
    )
    .await;
    let finished = open.remove(0);
    let other_replica = Store::connect(&url, 4).await.expect("another replica");
    let at = now() + 10_000;
    let (left, right) = tokio::join!(
        store.claim_refunds_for_reconcile(at, at, at + 60_000, 6),
        other_replica.claim_refunds_for_reconcile(at, at, at + 60_000, 6),
    );
    let left: Vec<String> = left.expect("claim").into_iter().map(|r| r.id).collect();
    let right: Vec<String> = right.expect("claim").into_iter().map(|r| r.id).collect();
    assert_eq!(left.len() + right.len(), 9, "{left:?} {right:?}");
    assert!(
        left.iter().all(|id| !right.contains(id)),
        "{left:?} {right:?}"
    );
    assert!(!left.contains(&finished.id) && !right.contains(&finished.id));
    let again = store
        .claim_refunds_for_reconcile(at, at, at + 60_000, 10)
        .await
        .expect("claim");
    assert!(again.is_empty(), "leased");

    // Past the lease, all but the deferred one come back.
    store
        .defer_refund_reconcile(&open[0].id, at + 600_000)
        .await
        .expect("defer");
    let later = at + 120_000;
    let reclaimed = store
        .claim_refunds_for_reconcile(later, later, later + 60_000, 10)
        .await
        .expect("claim");
    assert_eq!(reclaimed.len(), 8);
    assert!(reclaimed.iter().all(|r| r.id != open[0].id));
    other_replica.close().await;
}

on_both_databases!(
    a_payment_receives_its_amount_on_every_way_to_succeeded,
    a_refund_reserves_its_amount_and_one_above_what_remains_is_refused,
    concurrent_refunds_never_reserve_more_than_was_received,
    refund_changes_move_the_payments_amounts,
    an_external_refund_is_recorded_once_and_counts_without_the_check,
    refund_events_are_logged_with_their_payment_but_are_not_its_status_events,
    a_key_names_one_refund_per_tenant,
    refunds_are_listed_newest_first_page_by_page,
    webhook_refund_changes_are_recorded_once_with_the_event,
    open_refunds_are_claimed_by_one_replica_at_a_time,
);
