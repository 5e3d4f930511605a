//! ListEvents and WatchEvents: every committed change of a tenant's payments and refunds, in one
//! order, exactly once, resumable from a cursor; other tenants' events never shown; expired and
//! forged cursors refused. The gap test: many writers on two replicas of one PostgreSQL, readers
//! tailing the feed all along, and at the end what they read is the event log exactly.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use paybridge::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::localstripe::{CARD_DECLINED, CARD_SUCCEEDS};
use crate::support::{
    BILLING_TOKEN, Db, ORDERS_TOKEN, Options, TestApp, as_tenant, create_request, eventually,
    violated_fields,
};

/// One event as the log in the database holds it: (event id, payment id, refund id, source,
/// to_status), in feed order.
type LogRow = (i64, String, Option<String>, String, String);

/// The tenant's event log, read from the database directly, in feed order.
async fn event_log(database_url: &str, tenant: &str) -> Vec<LogRow> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url)
        .await
        .expect("database");
    let rows: Vec<LogRow> = sqlx::query_as(
        "select payment_event_id, payment_id, refund_id, source, to_status from payment_event \
         where tenant = $1 order by commit_group, payment_event_id",
    )
    .bind(tenant)
    .fetch_all(&mut conn)
    .await
    .expect("event log");
    conn.close().await.ok();
    rows
}

async fn list_events(
    app: &TestApp,
    token: &str,
    after_cursor: &str,
    page_size: i32,
) -> Result<pb::ListEventsResponse, tonic::Status> {
    app.client
        .clone()
        .list_events(as_tenant(
            token,
            pb::ListEventsRequest {
                after_cursor: after_cursor.to_owned(),
                page_size,
                types: Vec::new(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Every event of the billing tenant after `after`, read in pages of `page_size`.
async fn all_events(app: &TestApp, after: &str, page_size: i32) -> Vec<pb::Event> {
    let mut cursor = after.to_owned();
    let mut events = Vec::new();
    loop {
        let page = list_events(app, BILLING_TOKEN, &cursor, page_size)
            .await
            .expect("listed");
        assert!(page.events.len() <= page_size as usize);
        let done = page.events.is_empty();
        events.extend(page.events);
        cursor = page.next_cursor;
        if done {
            return events;
        }
    }
}

/// Every event of the billing tenant once there are `count`: on PostgreSQL an event is read
/// once every transaction older than its own has ended (any database's of the cluster), a moment
/// after its write was answered.
async fn settled_events(app: &TestApp, page_size: i32, count: usize) -> Vec<pb::Event> {
    eventually(Duration::from_secs(10), || async {
        let events = all_events(app, "", page_size).await;
        if events.len() == count {
            Ok(events)
        } else {
            Err(events)
        }
    })
    .await
    .unwrap_or_else(|events| panic!("{count} events expected, read {events:?}"))
}

async fn watch_events(
    app: &TestApp,
    token: &str,
    after_cursor: &str,
) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    app.client
        .clone()
        .watch_events(as_tenant(
            token,
            pb::WatchEventsRequest {
                after_cursor: after_cursor.to_owned(),
                types: Vec::new(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn next_event(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("an event within 15 s")
        .expect("stream")
        .expect("the stream goes on")
}

/// The id of the object an event carries, its status's name as the log stores it, and its
/// source's.
fn summary(event: &pb::Event) -> (String, String, String) {
    let source = event.source().as_str_name();
    let source = source
        .strip_prefix("EVENT_SOURCE_")
        .unwrap_or(source)
        .to_lowercase();
    match event.object.as_ref().expect("an object") {
        pb::event::Object::Payment(payment) => {
            assert_eq!(event.r#type(), pb::EventType::PaymentUpdated);
            let status = payment.status().as_str_name();
            let status = status.strip_prefix("PAYMENT_STATUS_").unwrap_or(status);
            (payment.id.clone(), status.to_lowercase(), source)
        }
        pb::event::Object::Refund(refund) => {
            assert_eq!(event.r#type(), pb::EventType::RefundUpdated);
            let status = refund.status().as_str_name();
            let status = status.strip_prefix("REFUND_STATUS_").unwrap_or(status);
            (refund.id.clone(), status.to_lowercase(), source)
        }
    }
}

/// What the log says an event is, in the shape of [`summary`].
fn log_summary(row: &LogRow) -> (String, String, String) {
    let (_, payment_id, refund_id, source, to_status) = row;
    (
        refund_id.clone().unwrap_or_else(|| payment_id.clone()),
        to_status.clone(),
        source.clone(),
    )
}

impl TestApp {
    async fn refund_all(&self, payment_id: &str, key: &str) -> pb::Refund {
        self.client
            .clone()
            .refund_payment(as_tenant(
                BILLING_TOKEN,
                pb::RefundPaymentRequest {
                    idempotency_key: key.to_owned(),
                    payment_id: payment_id.to_owned(),
                    amount: 0,
                    reason: pb::RefundReason::RequestedByCustomer.into(),
                    metadata: Default::default(),
                },
            ))
            .await
            .expect("refunded")
            .into_inner()
            .refund
            .expect("refund")
    }

    /// Pays a created payment at the fake with `card` and has paybridge read it (refreshes, until
    /// it shows what the fake answered: reads of one intent are shared for a moment).
    async fn pay_and_refresh(
        &self,
        answer: &pb::CreateInvoicePaymentResponse,
        card: &str,
    ) -> pb::Payment {
        let payment = answer.payment.as_ref().expect("payment");
        let intent = self
            .stripe
            .pay(
                &payment.stripe_payment_intent_id,
                &answer.client_secret,
                card,
            )
            .await;
        let paid = intent["status"] == "succeeded";
        eventually(Duration::from_secs(5), || async {
            let payment = self.get(&payment.id, true).await.expect("refreshed");
            let settled = if paid {
                payment.status() == pb::PaymentStatus::Succeeded
            } else {
                payment.last_payment_error.is_some()
            };
            if settled { Ok(payment) } else { Err(payment) }
        })
        .await
        .expect("paybridge reads what the fake answered")
    }
}

async fn the_feed_tells_every_change_in_order_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let create = |key: &'static str| {
        let app = &app;
        async move {
            app.create(create_request(key, &format!("inv-{key}")))
                .await
                .expect("created")
        }
    };
    let (first, second, third) = (create("e1").await, create("e2").await, create("e3").await);
    let declined = app.pay_and_refresh(&first, CARD_DECLINED).await;
    assert_eq!(
        declined
            .last_payment_error
            .as_ref()
            .map(|e| e.code.as_str()),
        Some("card_declined")
    );
    let paid_first = app.pay_and_refresh(&first, CARD_SUCCEEDS).await;
    assert_eq!(paid_first.status(), pb::PaymentStatus::Succeeded);
    let paid_second = app.pay_and_refresh(&second, CARD_SUCCEEDS).await;
    assert_eq!(paid_second.status(), pb::PaymentStatus::Succeeded);
    let third = third.payment.expect("payment");
    app.cancel(&third.id).await.expect("cancelled");
    let refund = app.refund_all(&paid_second.id, "r-e2").await;
    assert_eq!(refund.status(), pb::RefundStatus::Succeeded);

    // Paged through, 2 at a time: the log, in its order, with every event's object and source.
    let log = event_log(&app.database_url, "billing").await;
    let events = settled_events(&app, 2, log.len()).await;
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        log.iter().map(log_summary).collect::<Vec<_>>(),
        "the feed is the log"
    );
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are distinct");
    assert!(events.iter().all(|e| e.id.starts_with("evt_")));
    // The same read again: the same ids and cursors (an order that never changes).
    assert_eq!(all_events(&app, "", 1000).await, events);

    // What happened, as the feed tells it.
    let of = |id: &str| -> Vec<(String, String)> {
        events
            .iter()
            .map(summary)
            .filter(|(object, _, _)| object == id)
            .map(|(_, status, source)| (status, source))
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    let first_id = &paid_first.id;
    assert_eq!(
        of(first_id),
        pairs(&[
            ("creating", "create"),
            ("requires_payment_method", "create"),
            ("requires_payment_method", "refresh"),
            ("succeeded", "refresh"),
        ])
    );
    assert_eq!(
        of(&third.id),
        pairs(&[
            ("creating", "create"),
            ("requires_payment_method", "create"),
            ("canceled", "cancel"),
        ])
    );
    assert_eq!(
        of(&refund.id),
        pairs(&[("creating", "refund"), ("succeeded", "refund")])
    );
    // The objects as they stood right after each change.
    let payment_at = |id: &str, index: usize| -> pb::Payment {
        events
            .iter()
            .filter_map(|e| match &e.object {
                Some(pb::event::Object::Payment(p)) if p.id == id => Some(p.clone()),
                _ => None,
            })
            .nth(index)
            .expect("that event")
    };
    let declined_then = payment_at(first_id, 2);
    assert_eq!(
        declined_then
            .last_payment_error
            .as_ref()
            .map(|e| e.code.as_str()),
        Some("card_declined")
    );
    assert_eq!(payment_at(first_id, 3), paid_first);
    assert_eq!(
        payment_at(first_id, 0).status(),
        pb::PaymentStatus::Creating
    );
    assert!(payment_at(first_id, 0).stripe_payment_intent_id.is_empty());
    let refund_events: Vec<pb::Refund> = events
        .iter()
        .filter_map(|e| match &e.object {
            Some(pb::event::Object::Refund(r)) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refund_events.last(), Some(&refund));
    // The payment's amounts moved with its refund: the events after the refund's show them.
    let second_now = app.get(&paid_second.id, false).await.expect("get");
    assert_eq!(second_now.amount_refunded, 4200);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(&e.object, Some(pb::event::Object::Payment(p)) if p.id == paid_second.id))
            .count(),
        3,
        "the refund's changes are refund events, not payment events"
    );

    // Resumed from any cursor: exactly the rest.
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            all_events(&app, &event.cursor, 3).await,
            events[index + 1..],
            "after event {index}"
        );
    }
    // Filtered by type.
    let refunds_only = app
        .client
        .clone()
        .list_events(as_tenant(
            BILLING_TOKEN,
            pb::ListEventsRequest {
                after_cursor: String::new(),
                page_size: 0,
                types: vec![pb::EventType::RefundUpdated.into()],
            },
        ))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        refunds_only.events,
        events
            .iter()
            .filter(|e| e.r#type() == pb::EventType::RefundUpdated)
            .cloned()
            .collect::<Vec<_>>()
    );

    // Another tenant sees none of it, and may not use billing's cursors.
    let orders = list_events(&app, ORDERS_TOKEN, "", 100)
        .await
        .expect("listed");
    assert!(orders.events.is_empty(), "{orders:?}");
    let refused = list_events(&app, ORDERS_TOKEN, &events[0].cursor, 100)
        .await
        .expect_err("another tenant's cursor");
    assert_eq!(violated_fields(&refused), ["after_cursor"]);
    let refused = watch_events(&app, ORDERS_TOKEN, &events[0].cursor)
        .await
        .expect_err("another tenant's cursor");
    assert_eq!(violated_fields(&refused), ["after_cursor"]);
    let too_big = list_events(&app, BILLING_TOKEN, "", 1001)
        .await
        .expect_err("too big a page");
    assert_eq!(violated_fields(&too_big), ["page_size"]);
}

/// A cursor naming orders' tenant but billing's event, one that is not base64, and one naming
/// an event that never was: each refused as INVALID_ARGUMENT.
async fn forged_cursors_are_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    app.create(create_request("f1", "inv-f1"))
        .await
        .expect("created");
    let events = settled_events(&app, 100, 2).await;
    let genuine = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(&events[1].cursor)
            .expect("base64 cursor"),
    )
    .expect("text");
    let parts: Vec<&str> = genuine.split(':').collect();
    assert_eq!(parts.len(), 4, "{genuine}");
    let forge = |group: &str, id: &str, tenant: &str| {
        URL_SAFE_NO_PAD.encode(format!("{}:{group}:{id}:{tenant}", parts[0]))
    };
    for forged in [
        forge(parts[1], parts[2], "orders"),
        forge(parts[1], "999999", "billing"),
        "%%%".to_owned(),
        URL_SAFE_NO_PAD.encode("e1:0:1"),
    ] {
        let refused = list_events(&app, BILLING_TOKEN, &forged, 10)
            .await
            .expect_err("forged");
        assert_eq!(violated_fields(&refused), ["after_cursor"], "{forged}");
    }
    // orders' own view of billing's event, under its own name: not one of its events.
    let refused = list_events(&app, ORDERS_TOKEN, &forge(parts[1], parts[2], "orders"), 10)
        .await
        .expect_err("not orders' event");
    assert_eq!(violated_fields(&refused), ["after_cursor"]);
}

/// The janitor deletes what retention no longer keeps: a cursor from before is
/// FAILED_PRECONDITION CURSOR_EXPIRED, never a silent gap; the feed goes on after it.
async fn an_expired_cursor_is_refused(db: Db) {
    let mut app = TestApp::spawn(db).await;
    app.create(create_request("x1", "inv-x1"))
        .await
        .expect("created");
    let before = settled_events(&app, 100, 2).await;
    // Restarted with a retention of a millisecond: its janitor runs at start.
    app.stop_core().await;
    app.set_options(Options {
        event_retention: Duration::from_millis(1),
        ..app.options()
    });
    app.start_core().await;
    let refused = eventually(Duration::from_secs(10), || async {
        match list_events(&app, BILLING_TOKEN, &before[0].cursor, 10).await {
            Err(status) if status.code() == Code::FailedPrecondition => Ok(status),
            other => Err(other),
        }
    })
    .await
    .expect("the cursor expires");
    let failure = refused
        .get_details_precondition_failure()
        .expect("precondition failure");
    assert_eq!(failure.violations[0].r#type, "CURSOR_EXPIRED");
    let refused = watch_events(&app, BILLING_TOKEN, &before[1].cursor)
        .await
        .expect_err("expired");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(all_events(&app, "", 100).await.is_empty(), "all deleted");
    assert_eq!(event_log(&app.database_url, "billing").await, []);
}

/// A WatchEvents stream sends what is stored, then each change as it commits (made on another
/// replica on PostgreSQL); dropped after some and resumed from its last cursor, it gets exactly
/// the rest.
async fn a_watch_resumed_from_its_last_cursor_gets_exactly_the_rest(db: Db) {
    let app = TestApp::spawn(db).await;
    let other = match db {
        Db::Postgres => Some(app.spawn_replica(Options::default()).await),
        Db::Sqlite => None,
    };
    let changer = other.as_ref().unwrap_or(&app);
    let first = app
        .create(create_request("w1", "inv-w1"))
        .await
        .expect("created");
    let mut stream = watch_events(&app, BILLING_TOKEN, "").await.expect("watch");
    let mut seen = vec![next_event(&mut stream).await, next_event(&mut stream).await];
    // Made on the other replica while the stream waits.
    let second = changer
        .create(create_request("w2", "inv-w2"))
        .await
        .expect("created");
    seen.push(next_event(&mut stream).await);
    seen.push(next_event(&mut stream).await);
    assert_eq!(
        seen.iter().map(|e| summary(e).0).collect::<Vec<_>>(),
        [&first, &first, &second, &second].map(|a| a.payment.as_ref().expect("payment").id.clone())
    );
    drop(stream);
    // While nobody watches.
    changer
        .cancel(&first.payment.as_ref().expect("payment").id)
        .await
        .expect("cancelled");
    changer
        .create(create_request("w3", "inv-w3"))
        .await
        .expect("created");
    let mut resumed = watch_events(&app, BILLING_TOKEN, &seen[3].cursor)
        .await
        .expect("watch");
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(next_event(&mut resumed).await);
    }
    let all = all_events(&app, "", 100).await;
    assert_eq!(all.len(), 7);
    assert_eq!(seen, all[..4]);
    assert_eq!(rest, all[4..]);
    // And nothing more until something changes.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), resumed.message())
            .await
            .is_err(),
        "nothing more"
    );
}

/// What one reader read, shared with the test.
type Read = Arc<Mutex<Vec<pb::Event>>>;

/// Many writers on two replicas (creates, cancels, payments and refunds) while one reader tails
/// the feed with ListEvents in a tight loop and another follows WatchEvents on the other replica;
/// at the end both read exactly the log: every event once, in the log's order.
async fn many_writers_on_two_replicas_leave_no_gap(db: Db) {
    const WRITERS_PER_REPLICA: usize = 4;
    const ROUNDS: usize = 6;
    let app = Arc::new(TestApp::spawn(db).await);
    let other = Arc::new(match db {
        Db::Postgres => Some(app.spawn_replica(Options::default()).await),
        Db::Sqlite => None,
    });
    // How many events the readers are to read: set once the writers are done.
    let target = Arc::new(AtomicUsize::new(usize::MAX));

    let listed: Read = Arc::default();
    let lister = {
        let (app, listed, target) = (Arc::clone(&app), Arc::clone(&listed), Arc::clone(&target));
        tokio::spawn(async move {
            let mut cursor = String::new();
            let mut deadline = None;
            loop {
                let page = list_events(&app, BILLING_TOKEN, &cursor, 7)
                    .await
                    .expect("listed");
                cursor = page.next_cursor;
                let mut listed = listed.lock().expect("lock");
                listed.extend(page.events);
                let target = target.load(Ordering::SeqCst);
                if target != usize::MAX {
                    // Done when it has as many as the log, or never will.
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_secs(15)
                    });
                    if listed.len() >= target || tokio::time::Instant::now() > deadline {
                        return;
                    }
                }
            }
        })
    };
    let watched: Read = Arc::default();
    let watcher = {
        let reader: &TestApp = other.as_ref().as_ref().unwrap_or(app.as_ref());
        let mut stream = watch_events(reader, BILLING_TOKEN, "")
            .await
            .expect("watch");
        let watched = Arc::clone(&watched);
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                watched.lock().expect("lock").push(event);
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS_PER_REPLICA * 2 {
        let (app, other) = (Arc::clone(&app), Arc::clone(&other));
        writers.push(tokio::spawn(async move {
            let replica: &TestApp = match (writer % 2, other.as_ref()) {
                (1, Some(other)) => other,
                _ => app.as_ref(),
            };
            for round in 0..ROUNDS {
                let key = format!("g{writer}-{round}");
                let answer = replica
                    .create(create_request(&key, &format!("inv-{key}")))
                    .await
                    .expect("created");
                let id = answer.payment.as_ref().expect("payment").id.clone();
                if (writer + round) % 2 == 0 {
                    replica.cancel(&id).await.expect("cancelled");
                } else {
                    let paid = replica.pay_and_refresh(&answer, CARD_SUCCEEDS).await;
                    assert_eq!(paid.status(), pb::PaymentStatus::Succeeded);
                    replica.refund_all(&id, &format!("r-{key}")).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let log = event_log(&app.database_url, "billing").await;
    // Each round wrote 3 events (cancelled) or 5 (paid and refunded).
    assert_eq!(log.len(), WRITERS_PER_REPLICA * 2 * ROUNDS * 4);
    target.store(log.len(), Ordering::SeqCst);
    lister.await.expect("lister");
    // The watcher has caught up when it has as many as the log, or never will.
    let _ = eventually(Duration::from_secs(15), || async {
        let count = watched.lock().expect("lock").len();
        if count >= log.len() {
            Ok(())
        } else {
            Err(count)
        }
    })
    .await;
    watcher.abort();

    let expected: Vec<(String, String, String)> = log.iter().map(log_summary).collect();
    for (name, read) in [("ListEvents", &listed), ("WatchEvents", &watched)] {
        let read = read.lock().expect("lock").clone();
        let ids: Vec<&str> = read.iter().map(|e| e.id.as_str()).collect();
        let distinct: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "{name}: an event read twice");
        let log_ids: HashSet<String> = log
            .iter()
            .map(|row| format!("evt_{:016x}", row.0))
            .collect();
        let missing: Vec<&String> = log_ids
            .iter()
            .filter(|id| !distinct.contains(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{name}: {} of {} events never read (a gap): {missing:?}",
            missing.len(),
            log.len()
        );
        assert_eq!(
            distinct.len(),
            log.len(),
            "{name}: read events not in the log"
        );
        assert_eq!(
            read.iter().map(summary).collect::<Vec<_>>(),
            expected,
            "{name}: in the log's order"
        );
    }
}

/// A database migrated before the feed, holding a payment and its events: after the feed's
/// migration those events are in the feed, with their tenant and objects (the status of their
/// time), in their order and before every later event.
async fn events_written_before_the_feed_are_in_it(db: Db) {
    use paybridge::adapters::store::Store;
    use paybridge::app::ports::{EventFeed, FeedObject, PaymentRecords};
    use paybridge::domain::{EventSource, PaymentStatus, StatusChange};
    use sqlx::Executor;

    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, url) = match db {
        Db::Sqlite => (
            "sqlite",
            format!("sqlite:{}?mode=rwc", dir.path().join("old.db").display()),
        ),
        Db::Postgres => ("postgres", crate::support::postgres::fresh_database().await),
    };
    // The migrations before the feed's.
    let before = dir.path().join("migrations");
    std::fs::create_dir(&before).expect("dir");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(engine);
    for entry in std::fs::read_dir(&source).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "20261202000003" {
            std::fs::copy(&path, before.join(&name)).expect("copied");
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("database");
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("migrations")
        .run(&pool)
        .await
        .expect("migrated to before the feed");
    let payment = crate::support::creating_payment("inv-old");
    pool.execute(
        sqlx::query(
            "insert into payment (payment_id, tenant, invoice_id, amount, currency, status, \
             metadata, success_url, failure_url, created_at, updated_at) \
             values ($1, 'billing', 'inv-old', 4200, 'usd', 'requires_payment_method', '{}', \
             'https://shop.example.com/paid', 'https://shop.example.com/failed', $2, $2)",
        )
        .bind(&payment.id)
        .bind(payment.created_at),
    )
    .await
    .expect("old payment");
    pool.execute(
        sqlx::query(
            "insert into payment_event (payment_id, source, from_status, to_status, created_at) \
             values ($1, 'create', null, 'creating', $2), \
                    ($1, 'create', 'creating', 'requires_payment_method', $2)",
        )
        .bind(&payment.id)
        .bind(payment.created_at),
    )
    .await
    .expect("old events");
    pool.close().await;

    let store = Store::connect(&url, 2).await.expect("store");
    store.migrate().await.expect("the feed's migration");
    let change = StatusChange::status_only(
        PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::Canceled,
        None,
    );
    store
        .apply_change(
            &payment.id,
            &change,
            EventSource::Cancel,
            payment.created_at + 1,
        )
        .await
        .expect("cancelled");
    let events = eventually(Duration::from_secs(10), || async {
        let events = store
            .events_after("billing", None, &[], 10)
            .await
            .expect("feed");
        if events.len() == 3 {
            Ok(events)
        } else {
            Err(events)
        }
    })
    .await
    .expect("three events");
    let statuses: Vec<PaymentStatus> = events
        .iter()
        .map(|event| match &event.object {
            FeedObject::Payment(payment) => payment.status,
            FeedObject::Refund(_) | FeedObject::Dispute(_) => panic!("a payment's event"),
        })
        .collect();
    assert_eq!(
        statuses,
        [
            PaymentStatus::Creating,
            PaymentStatus::RequiresPaymentMethod,
            PaymentStatus::Canceled
        ]
    );
    assert!(events.iter().all(|event| event.tenant == "billing"));
    assert_eq!(events[0].position.commit_group, 0);
    assert!(events[1].position < events[2].position);
}

on_both_databases!(
    the_feed_tells_every_change_in_order_once,
    forged_cursors_are_refused,
    an_expired_cursor_is_refused,
    a_watch_resumed_from_its_last_cursor_gets_exactly_the_rest,
    many_writers_on_two_replicas_leave_no_gap,
    events_written_before_the_feed_are_in_it,
);
