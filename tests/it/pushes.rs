//! Pushes: each event of a tenant's feed POSTed to its `webhook_url` as the proto's JSON,
//! signed with Stripe's scheme, in feed order, retried with back-off until a 2xx; a failing
//! endpoint holds back only its own tenant. The receiver is a local HTTP server in the test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paybridge::adapters::stripe::webhook::WebhookVerifier;
use paybridge::pb::v1 as pb;
use secrecy::SecretString;

use crate::support::{
    BILLING_TOKEN, Db, ORDERS_TOKEN, Options, PUSH_SECRET, TestApp, as_tenant, count_rows,
    create_request, eventually,
};

/// One push as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    signature: String,
    body: bytes::Bytes,
}

impl Received {
    /// The body's `id`, after checking the signature with the tenants' secret as Stripe's
    /// libraries would (5 minutes' tolerance).
    fn verified_json(&self) -> serde_json::Value {
        let verifier = WebhookVerifier::new(
            vec![SecretString::from(PUSH_SECRET.to_owned())],
            Duration::from_secs(300),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        verifier
            .verify(
                &self.body,
                &self.signature,
                i64::try_from(now).expect("now"),
            )
            .unwrap_or_else(|e| panic!("signature of {}: {e}", self.event_id));
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON");
        assert_eq!(
            json["id"],
            self.event_id.as_str(),
            "header and body name one event"
        );
        json
    }
}

/// A push receiver on a local port: answers each push with the next status of its script, then
/// 200 (or `down`'s status while set).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// The event ids answered with a 2xx, in order.
    accepted: Arc<Mutex<Vec<String>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    down: Arc<Mutex<Option<u16>>>,
    /// When set, the next push is recorded and never answered.
    hang_next: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let event_id = header("paybridge-event-id");
                    state.received.lock().unwrap().push(Received {
                        event_id: event_id.clone(),
                        signature: header("paybridge-signature"),
                        body,
                    });
                    if state
                        .hang_next
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        std::future::pending::<()>().await;
                    }
                    let down = *state.down.lock().unwrap();
                    let status = down
                        .or_else(|| state.script.lock().unwrap().pop_front())
                        .unwrap_or(200);
                    if (200..300).contains(&status) {
                        state.accepted.lock().unwrap().push(event_id);
                    }
                    http::StatusCode::from_u16(status).expect("status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, format!("http://{addr}/events"))
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.event_id).collect()
    }
}

/// Every event of the tenant, in feed order (ListEvents, all pages).
async fn feed_ids(app: &TestApp, token: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_events(as_tenant(
                token,
                pb::ListEventsRequest {
                    after_cursor: cursor.clone(),
                    page_size: 100,
                    types: Vec::new(),
                },
            ))
            .await
            .expect("ListEvents")
            .into_inner();
        if page.events.is_empty() {
            return ids;
        }
        ids.extend(page.events.into_iter().map(|e| e.id));
        cursor = page.next_cursor;
    }
}

/// `ids` with each run of one id kept once: the order in which events were first sent.
fn first_sends(ids: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for id in ids {
        if order.last() != Some(id) {
            assert!(
                !order.contains(id),
                "{id} sent again after a later event: {ids:?}"
            );
            order.push(id.clone());
        }
    }
    order
}

/// Creates a payment of the tenant, pays it when `pay`, and reads it back from Stripe: a few
/// events in the tenant's feed.
async fn payment_with_events(app: &TestApp, token: &str, invoice: &str, pay: bool) {
    let answer = app
        .client
        .clone()
        .create_invoice_payment(as_tenant(
            token,
            create_request(&format!("key-{invoice}"), invoice),
        ))
        .await
        .expect("created")
        .into_inner();
    let payment = answer.payment.expect("payment");
    if pay {
        app.stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        app.client
            .clone()
            .get_payment(as_tenant(
                token,
                pb::GetPaymentRequest {
                    id: payment.id.clone(),
                    refresh: true,
                },
            ))
            .await
            .expect("refreshed");
    }
}

/// Waits until the receiver has accepted every event of the tenant's feed (the feed holding
/// every event the tenant's log has: on PostgreSQL an event joins the feed shortly after its
/// commit), and returns the feed.
async fn all_pushed(app: &TestApp, token: &str, receiver: &Receiver) -> Vec<String> {
    let tenant = if token == BILLING_TOKEN {
        "billing"
    } else {
        "orders"
    };
    let logged = count_rows(
        &app.database_url,
        &format!("select count(*) from payment_event where tenant = '{tenant}'"),
    )
    .await;
    eventually(Duration::from_secs(30), || async {
        let feed = feed_ids(app, token).await;
        let sent = first_sends(&receiver.ids());
        let accepted = receiver.accepted.lock().unwrap().clone();
        if feed.len() as i64 == logged && sent == feed && accepted == feed {
            Ok(feed)
        } else {
            Err((logged, feed, sent, accepted))
        }
    })
    .await
    .expect("every event pushed, in feed order")
}

fn options_pushing_to(url: &str) -> Options {
    let mut options = Options {
        billing_webhook_url: Some(url.to_owned()),
        ..Options::default()
    };
    options.push.max_delay = Duration::from_secs(2);
    options
}

on_both_databases!(
    a_push_answered_500_500_then_200_is_received_three_times_signed_then_no_more,
    a_receiver_down_for_a_while_gets_the_backlog_in_order_once_back,
    a_failing_endpoint_holds_back_only_its_own_tenant,
    kill_9_of_the_pushing_replica_mid_push_sends_the_event_again_after_its_lease,
    replicas_claiming_one_tenants_pushes_at_once_never_both_get_them,
    a_webhook_url_added_to_the_tenants_file_while_serving_starts_pushes_and_removing_it_stops_them,
);

/// The tenants file followed while serving: orders gets a `webhook_url` (its backlog is pushed),
/// then loses it (nothing more is sent).
async fn a_webhook_url_added_to_the_tenants_file_while_serving_starts_pushes_and_removing_it_stops_them(
    db: Db,
) {
    let (receiver, url) = Receiver::start().await;
    let app = TestApp::spawn(db).await;
    payment_with_events(&app, ORDERS_TOKEN, "inv-before", false).await;
    assert!(receiver.ids().is_empty());

    let without = std::fs::read_to_string(app.tenants_file()).expect("tenants file");
    let secret = app.tenants_file().with_file_name("push.secret");
    let with = without.replace(
        "failure_url = \"https://orders.example.com/sorry\"\n",
        &format!(
            "failure_url = \"https://orders.example.com/sorry\"\nwebhook_url = {url:?}\n\
             webhook_secret_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    assert_ne!(with, without);
    std::fs::write(app.tenants_file(), &with).expect("tenants file");
    let feed = all_pushed(&app, ORDERS_TOKEN, &receiver).await;
    assert!(!feed.is_empty());
    for received in receiver.received() {
        received.verified_json();
    }

    std::fs::write(app.tenants_file(), &without).expect("tenants file");
    // Once the file without the URL is applied, the pushes follow it: a new event of orders stays
    // unsent.
    eventually(Duration::from_secs(10), || async {
        let applied = crate::support::metric_sum(
            &app.admin_addr,
            "paybridge_config_reloads_total",
            "result=\"applied\"",
        )
        .await;
        if applied == 2 { Ok(()) } else { Err(applied) }
    })
    .await
    .expect("the file without the URL applied");
    let sent = receiver.ids().len();
    payment_with_events(&app, ORDERS_TOKEN, "inv-after", true).await;
    // The new events are in the feed; a push loop (woken at once by the change, polling every
    // 200 ms in tests) would have sent them well within 2 s.
    let logged = count_rows(
        &app.database_url,
        "select count(*) from payment_event where tenant = 'orders'",
    )
    .await;
    assert!(logged as usize > feed.len());
    let feed_after = feed_ids(&app, ORDERS_TOKEN).await;
    assert!(feed_after.len() > feed.len());
    assert!(
        eventually(Duration::from_secs(2), || async {
            if receiver.ids().len() > sent {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .is_err(),
        "no push after the URL was removed: {:?}",
        receiver.ids()
    );
}

async fn a_push_answered_500_500_then_200_is_received_three_times_signed_then_no_more(db: Db) {
    let (receiver, url) = Receiver::start().await;
    receiver.script.lock().unwrap().extend([500, 500]);
    let app = TestApp::spawn_with(db, options_pushing_to(&url)).await;
    let started = std::time::Instant::now();
    payment_with_events(&app, BILLING_TOKEN, "inv-push-1", false).await;

    let feed = all_pushed(&app, BILLING_TOKEN, &receiver).await;
    let received = receiver.received();
    let first = &feed[0];
    assert_eq!(
        received[..3]
            .iter()
            .map(|r| &r.event_id)
            .collect::<Vec<_>>(),
        [first, first, first],
        "the first event three times"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "two back-offs of about 1 s and 2 s: {:?}",
        started.elapsed()
    );
    for push in &received {
        let json = push.verified_json();
        assert_eq!(json["type"], "EVENT_TYPE_PAYMENT_UPDATED");
        assert!(
            json["payment"]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("pay_"))
        );
    }
    // Then no more: each later event once, and nothing after the last.
    assert_eq!(received.len(), feed.len() + 2, "{:?}", receiver.ids());
    let settled = received.len();
    let delivered = eventually(Duration::from_secs(10), || async {
        let position: i64 = crate::support::count_rows(
            &app.database_url,
            "select count(*) from push_delivery where event_id is not null and lease_until is null",
        )
        .await;
        if position == 1 { Ok(()) } else { Err(position) }
    })
    .await;
    assert_eq!(delivered, Ok(()), "billing's delivery caught up and let go");
    assert_eq!(receiver.received().len(), settled);
    app.stop().await.expect("stopped");
}

async fn a_receiver_down_for_a_while_gets_the_backlog_in_order_once_back(db: Db) {
    let (receiver, url) = Receiver::start().await;
    *receiver.down.lock().unwrap() = Some(503);
    let mut options = options_pushing_to(&url);
    options.push.max_delay = Duration::from_millis(500);
    let app = TestApp::spawn_with(db, options).await;
    payment_with_events(&app, BILLING_TOKEN, "inv-down-1", true).await;
    payment_with_events(&app, BILLING_TOKEN, "inv-down-2", false).await;
    payment_with_events(&app, BILLING_TOKEN, "inv-down-3", true).await;
    // Down: the first event only, again and again.
    let tried = eventually(Duration::from_secs(10), || async {
        let ids = receiver.ids();
        if ids.len() >= 3 { Ok(ids) } else { Err(ids) }
    })
    .await
    .expect("retried while down");
    assert!(tried.iter().all(|id| *id == tried[0]), "{tried:?}");

    *receiver.down.lock().unwrap() = None;
    let feed = all_pushed(&app, BILLING_TOKEN, &receiver).await;
    assert!(feed.len() >= 6, "{feed:?}");
    assert_eq!(tried[0], feed[0]);
    for push in receiver.received() {
        push.verified_json();
    }
    app.stop().await.expect("stopped");
}

async fn a_failing_endpoint_holds_back_only_its_own_tenant(db: Db) {
    let (billing, billing_url) = Receiver::start().await;
    let (orders, orders_url) = Receiver::start().await;
    *orders.down.lock().unwrap() = Some(500);
    let mut options = options_pushing_to(&billing_url);
    options.orders_webhook_url = Some(orders_url);
    let app = TestApp::spawn_with(db, options).await;
    payment_with_events(&app, ORDERS_TOKEN, "inv-orders-1", false).await;
    payment_with_events(&app, BILLING_TOKEN, "inv-billing-1", false).await;
    payment_with_events(&app, BILLING_TOKEN, "inv-billing-2", false).await;

    let feed = all_pushed(&app, BILLING_TOKEN, &billing).await;
    let orders_feed = feed_ids(&app, ORDERS_TOKEN).await;
    assert!(
        orders.ids().iter().all(|id| *id == orders_feed[0]),
        "orders stuck on its first"
    );
    assert!(
        feed.iter().all(|id| !orders_feed.contains(id)),
        "each tenant its own events"
    );
    app.stop().await.expect("stopped");
}

/// The pushing replica is killed (SIGKILL) while its receiver holds the push unanswered. On
/// PostgreSQL a second replica, running all along, takes the tenant over once the dead one's
/// lease ran out; on SQLite (one replica) the restarted process does. Either way the event is
/// sent again, with the same id, and then the rest, in order.
async fn kill_9_of_the_pushing_replica_mid_push_sends_the_event_again_after_its_lease(db: Db) {
    use crate::support::child::ServeProcess;
    use crate::support::{LocalStripe, tenants_toml_for};

    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("push-crash.db").display()),
        Db::Postgres => crate::support::postgres::fresh_database().await,
    };
    let (receiver, url) = Receiver::start().await;
    receiver
        .hang_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let tenants = tenants_toml_for(
        &Options {
            billing_webhook_url: Some(url),
            ..Options::default()
        },
        dir.path(),
    );
    let replica = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).expect("dir");
        ServeProcess::new(&home, database_url.clone(), stripe.base_url.clone())
            .tenants(&tenants)
            .env("PAYBRIDGE_PUSH_TIMEOUT", "5s")
            .env("PAYBRIDGE_PUSH_LEASE", "6s")
            .env("PAYBRIDGE_PUSH_MAX_DELAY", "1s")
    };
    let first = replica("a");
    let pushing = first.start().await;
    first
        .client()
        .create_invoice_payment(as_tenant(
            BILLING_TOKEN,
            create_request("k-1", "inv-crash-1"),
        ))
        .await
        .expect("created");
    let held = eventually(Duration::from_secs(20), || async {
        match receiver.ids().as_slice() {
            [one] => Ok(one.clone()),
            other => Err(other.to_vec()),
        }
    })
    .await
    .expect("the first push is in flight");

    let second = replica("b");
    let other = match db {
        // Another replica, running before the kill: it must leave the held delivery alone.
        Db::Postgres => Some(second.start().await),
        Db::Sqlite => None,
    };
    let killed_at = std::time::Instant::now();
    pushing.kill9().await;
    let other = match other {
        Some(running) => running,
        None => second.start().await,
    };
    // More events meanwhile. On PostgreSQL the Stripe budget is shared: a replica that joined
    // just before the kill may hold no share until the killed one's lease lapses, and answers
    // UNAVAILABLE meanwhile; a client retries with the same key, as this one does.
    eventually(Duration::from_secs(30), || async {
        second
            .client()
            .create_invoice_payment(as_tenant(
                BILLING_TOKEN,
                create_request("k-2", "inv-crash-2"),
            ))
            .await
            .map_err(|status| {
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "created: {status:?}"
                );
                status
            })
    })
    .await
    .expect("created");

    let feed = eventually(Duration::from_secs(60), || async {
        let count = crate::support::count_rows(
            &database_url,
            "select count(*) from payment_event where tenant = 'billing'",
        )
        .await;
        let sent = first_sends(&receiver.ids());
        if count > 0 && sent.len() == usize::try_from(count).unwrap_or(0) {
            Ok(sent)
        } else {
            Err((count, receiver.ids()))
        }
    })
    .await
    .expect("every event pushed after the kill");
    let ids = receiver.ids();
    assert_eq!(feed[0], held);
    assert_eq!(ids[0], held);
    assert_eq!(ids[1], held, "the event in flight, sent again: {ids:?}");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(3),
        "not before the dead replica's lease (6 s from its claim) ran out: {:?}",
        killed_at.elapsed()
    );
    for push in receiver.received() {
        push.verified_json();
    }
    other.terminate(Duration::from_secs(30)).await;
}

/// The store's claim, many at once (as many replicas would): one wins; a write under a lease
/// that was lost is refused; a lapsed lease can be claimed again; a delivery not due is not.
async fn replicas_claiming_one_tenants_pushes_at_once_never_both_get_them(db: Db) {
    use paybridge::adapters::store::Store;
    use paybridge::app::ports::{FeedPosition, PushDeliveries, PushProgress};

    let dir = tempfile::tempdir().expect("dir");
    let url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("claims.db").display()),
        Db::Postgres => crate::support::postgres::fresh_database().await,
    };
    let store = Arc::new(Store::connect(&url, 8).await.expect("store"));
    store.migrate().await.expect("migrate");
    let now = 1_800_000_000_000;

    let claims = futures::future::join_all((0..8).map(|i| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim_push_delivery("billing", now, now + 30_000 + i)
                .await
                .expect("claim")
        }
    }))
    .await;
    let won: Vec<_> = claims.into_iter().flatten().collect();
    assert_eq!(won.len(), 1, "{won:?}");
    let held = won[0].lease_until.expect("leased");
    assert_eq!(
        won[0].position, None,
        "a new delivery starts at the feed's start"
    );

    let progress = PushProgress {
        position: Some(FeedPosition {
            commit_group: 7,
            event_id: 3,
        }),
        attempts: 0,
        next_attempt_at: now,
        first_failure_at: None,
        lease_until: Some(now + 60_000),
    };
    assert!(
        !store
            .record_push("billing", held + 1, &progress, now)
            .await
            .expect("record")
    );
    assert!(
        store
            .record_push("billing", held, &progress, now)
            .await
            .expect("record")
    );
    assert_eq!(
        store
            .claim_push_delivery("billing", now + 59_000, now + 90_000)
            .await
            .expect("claim"),
        None,
        "still held"
    );
    // The holder died: its lease lapses and another takes over, where it stood.
    let again = store
        .claim_push_delivery("billing", now + 60_001, now + 90_000)
        .await
        .expect("claim")
        .expect("claimed after the lease");
    assert_eq!(again.position, progress.position);
    assert!(
        !store
            .record_push("billing", now + 60_000, &progress, now)
            .await
            .expect("record")
    );

    // A failure schedules the next attempt: not claimable before it.
    let failed = PushProgress {
        position: progress.position,
        attempts: 2,
        next_attempt_at: now + 120_000,
        first_failure_at: Some(now + 60_001),
        lease_until: None,
    };
    assert!(
        store
            .record_push("billing", now + 90_000, &failed, now)
            .await
            .expect("record")
    );
    assert_eq!(
        store
            .claim_push_delivery("billing", now + 119_999, now + 150_000)
            .await
            .expect("claim"),
        None
    );
    let due = store
        .claim_push_delivery("billing", now + 120_000, now + 150_000)
        .await
        .expect("claim")
        .expect("due");
    assert_eq!(
        (due.attempts, due.first_failure_at),
        (2, Some(now + 60_001))
    );
    assert_eq!(store.push_delivery("orders").await.expect("read"), None);
    store.close().await;
}
