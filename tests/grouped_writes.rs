//! PostgreSQL: a create's two writes from concurrent calls share statements (`grouped.rs`), and
//! each call still gets exactly its own answer, written atomically with its key and its event.
//!
//! The tests queue calls behind one that a table lock holds up: one statement of each kind runs
//! at a time, so everything queued meanwhile goes as one group when the lock is released. Rows written in one transaction
//! share their `xmin`, which shows what went together.

mod support;

use std::time::Duration;

use paybridge::adapters::store::{Announce, Store};
use paybridge::domain::{Payment, PaymentStatus, StatusChange};
use sqlx::{Connection, PgConnection, Row};
use tokio::task::JoinHandle;

/// Time for spawned calls to reach the queue (or the database) before the next step.
const SETTLE: Duration = Duration::from_millis(300);

async fn store_and_admin() -> (Store, PgConnection) {
    let url = support::postgres::fresh_database().await;
    let store = Store::connect(&url, 4).await.expect("store");
    store.migrate().await.expect("migrate");
    let admin = PgConnection::connect(&url).await.expect("admin connection");
    (store, admin)
}

/// Holds every write to `payment` until the returned connection commits.
async fn lock_payments(admin: &mut PgConnection) {
    sqlx::query("begin")
        .execute(&mut *admin)
        .await
        .expect("begin");
    sqlx::query("lock table payment in share row exclusive mode")
        .execute(&mut *admin)
        .await
        .expect("lock");
}

async fn unlock_payments(admin: &mut PgConnection) {
    sqlx::query("commit")
        .execute(&mut *admin)
        .await
        .expect("commit");
}

/// Locks `payment` and starts one insert, which takes the insert's only running statement and
/// waits at the lock: inserts started after it queue for the next statement.
async fn hold_up_an_insert(store: &Store, admin: &mut PgConnection) -> JoinHandle<bool> {
    lock_payments(admin).await;
    let first_call = insert(store, &support::creating_payment("inv-first"), "k-first");
    tokio::time::sleep(SETTLE).await;
    first_call
}

fn insert(store: &Store, payment: &Payment, key: &str) -> JoinHandle<bool> {
    let (store, payment, key) = (store.clone(), payment.clone(), key.to_owned());
    tokio::spawn(async move {
        store
            .insert_payment(&payment, &key, "fp")
            .await
            .expect("insert")
    })
}

fn attach(store: &Store, payment_id: &str, intent: &str) -> JoinHandle<Payment> {
    let (store, payment_id, intent) = (store.clone(), payment_id.to_owned(), intent.to_owned());
    tokio::spawn(async move {
        let change = StatusChange {
            from: PaymentStatus::Creating,
            to: PaymentStatus::RequiresPaymentMethod,
            last_payment_error: None,
        };
        let secret = format!("{intent}_secret");
        store
            .attach_intent(
                &payment_id,
                &intent,
                Some(&secret),
                &change,
                support::events::now() * 1000,
                Announce::No,
            )
            .await
            .expect("attach")
    })
}

/// The transaction id that wrote the current version of each of the rows `sql` selects.
async fn xmins(admin: &mut PgConnection, sql: &str, payment_id: &str) -> Vec<String> {
    sqlx::query(sql)
        .bind(payment_id)
        .fetch_all(&mut *admin)
        .await
        .expect(sql)
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

async fn payment_xmin(admin: &mut PgConnection, payment_id: &str) -> String {
    xmins(
        admin,
        "select xmin::text from payment where payment_id = $1",
        payment_id,
    )
    .await
    .remove(0)
}

async fn count(admin: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(&mut *admin)
        .await
        .expect(sql)
        .get::<i64, _>(0)
}

#[tokio::test]
async fn postgres_concurrent_creates_share_a_statement_and_each_gets_its_own_answer() {
    let (store, mut admin) = store_and_admin().await;
    let taken = support::creating_payment("inv-taken");
    assert!(store.insert_payment(&taken, "k-taken", "fp").await.unwrap());

    // One create holds the only insert slot at the lock; thirty more, a replayed key and a
    // second payment for a live invoice queue behind it.
    lock_payments(&mut admin).await;
    let first = support::creating_payment("inv-first");
    let first_call = insert(&store, &first, "k-first");
    tokio::time::sleep(SETTLE).await;
    let fresh: Vec<Payment> = (0..30)
        .map(|n| support::creating_payment(&format!("inv-{n}")))
        .collect();
    let fresh_calls: Vec<_> = fresh
        .iter()
        .enumerate()
        .map(|(n, payment)| insert(&store, payment, &format!("k-{n}")))
        .collect();
    let replayed_key = insert(&store, &support::creating_payment("inv-other"), "k-taken");
    let live_invoice = insert(&store, &support::creating_payment("inv-taken"), "k-another");
    tokio::time::sleep(SETTLE).await;
    unlock_payments(&mut admin).await;

    assert!(first_call.await.unwrap());
    for call in fresh_calls {
        assert!(
            call.await.unwrap(),
            "a new key for a free invoice is written"
        );
    }
    assert!(!replayed_key.await.unwrap(), "a taken key writes nothing");
    assert!(
        !live_invoice.await.unwrap(),
        "a live invoice takes no second payment"
    );
    assert_eq!(count(&mut admin, "select count(*) from payment").await, 32);
    assert_eq!(
        count(
            &mut admin,
            "select count(*) from payment where invoice_id = 'inv-other'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &mut admin,
            "select count(*) from idempotency_key where idempotency_key = 'k-another'"
        )
        .await,
        0
    );

    // The thirty went in one transaction; each payment's key and event went with it.
    let grouped = payment_xmin(&mut admin, &fresh[0].id).await;
    assert_ne!(grouped, payment_xmin(&mut admin, &first.id).await);
    for payment in &fresh {
        assert_eq!(payment_xmin(&mut admin, &payment.id).await, grouped);
        let key = xmins(
            &mut admin,
            "select xmin::text from idempotency_key where payment_id = $1",
            &payment.id,
        )
        .await;
        let events = xmins(
            &mut admin,
            "select xmin::text from payment_event where payment_id = $1",
            &payment.id,
        )
        .await;
        assert_eq!(
            key,
            vec![grouped.clone()],
            "one key, written with its payment"
        );
        assert_eq!(
            events,
            vec![grouped.clone()],
            "one event, written with its payment"
        );
    }

    // The attaches the same way, with a second attach for one payment queued beside the first.
    lock_payments(&mut admin).await;
    let first_attach = attach(&store, &first.id, "pi_first");
    tokio::time::sleep(SETTLE).await;
    let attach_calls: Vec<_> = fresh
        .iter()
        .enumerate()
        .map(|(n, payment)| attach(&store, &payment.id, &format!("pi_{n}")))
        .collect();
    let second_attach = attach(&store, &fresh[0].id, "pi_second");
    tokio::time::sleep(SETTLE).await;
    unlock_payments(&mut admin).await;

    assert_eq!(
        first_attach
            .await
            .unwrap()
            .stripe_payment_intent_id
            .as_deref(),
        Some("pi_first")
    );
    let mut answers = Vec::new();
    for (n, call) in attach_calls.into_iter().enumerate() {
        let attached = call.await.unwrap();
        assert_eq!(
            attached.id, fresh[n].id,
            "each call is answered its own payment"
        );
        assert_eq!(attached.status, PaymentStatus::RequiresPaymentMethod);
        answers.push(attached);
    }
    let second = second_attach.await.unwrap();
    // The first attach queued went with the group; the second came after and changed nothing.
    assert_eq!(answers[0].stripe_payment_intent_id.as_deref(), Some("pi_0"));
    assert_eq!(second.stripe_payment_intent_id.as_deref(), Some("pi_0"));
    for (n, attached) in answers.iter().enumerate().skip(1) {
        let intent = format!("pi_{n}");
        assert_eq!(
            attached.stripe_payment_intent_id.as_deref(),
            Some(intent.as_str())
        );
        let secret = format!("pi_{n}_secret");
        assert_eq!(attached.client_secret.as_deref(), Some(secret.as_str()));
    }
    let attached_together = payment_xmin(&mut admin, &fresh[1].id).await;
    for payment in &fresh[1..] {
        assert_eq!(
            payment_xmin(&mut admin, &payment.id).await,
            attached_together
        );
    }
    assert_eq!(
        count(
            &mut admin,
            "select count(*) from payment_event where from_status = 'creating'"
        )
        .await,
        31,
        "one event per attach that changed a payment"
    );
}

#[tokio::test]
async fn postgres_a_group_the_database_refuses_runs_again_call_by_call() {
    let (store, mut admin) = store_and_admin().await;
    let first_call = hold_up_an_insert(&store, &mut admin).await;
    // Two calls with one new key: together they break the key's unique index.
    let same_key_a = insert(&store, &support::creating_payment("inv-a"), "k-same");
    let same_key_b = insert(&store, &support::creating_payment("inv-b"), "k-same");
    let others: Vec<Payment> = (0..3)
        .map(|n| support::creating_payment(&format!("inv-{n}")))
        .collect();
    let other_calls: Vec<_> = others
        .iter()
        .enumerate()
        .map(|(n, payment)| insert(&store, payment, &format!("k-{n}")))
        .collect();
    tokio::time::sleep(SETTLE).await;
    unlock_payments(&mut admin).await;

    assert!(first_call.await.unwrap());
    assert!(
        same_key_a.await.unwrap(),
        "the first call with the key is written"
    );
    assert!(!same_key_b.await.unwrap(), "the second finds the key taken");
    for call in other_calls {
        assert!(call.await.unwrap());
    }
    // Each ran alone, in a transaction of its own.
    let mut seen = std::collections::HashSet::new();
    for payment in &others {
        assert!(seen.insert(payment_xmin(&mut admin, &payment.id).await));
    }
    assert_eq!(count(&mut admin, "select count(*) from payment").await, 5);
    assert_eq!(
        count(&mut admin, "select count(*) from payment_event").await,
        5,
        "no event without its payment"
    );
}

#[tokio::test]
async fn postgres_text_goes_through_a_group_unchanged() {
    let (store, mut admin) = store_and_admin().await;
    let first_call = hold_up_an_insert(&store, &mut admin).await;
    let texts = [
        "quotes \" and 'single' and back\\slash",
        "lines\nand\ttabs and \u{1} control",
        "unicode: żółć ✓ 😀 and \u{2028} separator",
    ];
    let payments: Vec<Payment> = texts
        .iter()
        .enumerate()
        .map(|(n, text)| {
            let mut payment = support::creating_payment(&format!("inv-{text}"));
            payment.description = Some((*text).to_owned());
            payment
                .metadata
                .insert(format!("key {text}"), (*text).to_owned());
            payment.amount = i64::MAX - n as i64;
            payment
        })
        .collect();
    let calls: Vec<_> = payments
        .iter()
        .map(|payment| insert(&store, payment, &format!("key-{}", payment.invoice_id)))
        .collect();
    tokio::time::sleep(SETTLE).await;
    unlock_payments(&mut admin).await;

    assert!(first_call.await.unwrap());
    for call in calls {
        assert!(call.await.unwrap());
    }
    let together = payment_xmin(&mut admin, &payments[0].id).await;
    for payment in &payments {
        assert_eq!(payment_xmin(&mut admin, &payment.id).await, together);
        let stored = store
            .get_payment(None, &payment.id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.invoice_id, payment.invoice_id);
        assert_eq!(stored.description, payment.description);
        assert_eq!(stored.metadata, payment.metadata);
        assert_eq!(stored.amount, payment.amount);
    }
}
