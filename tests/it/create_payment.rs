//! CreateInvoicePayment against localstripe: idempotency, the double-charge guard, concurrency,
//! customers, and Stripe failures.

use crate::support;
use crate::support::{Db, TestApp, create_request};
use paybridge::pb::v1 as pb;
use serde_json::json;
use tonic::Code;

const CREATE_INTENT: &str = "POST /v1/payment_intents";

async fn create_returns_a_client_secret_and_the_intent_exists_at_stripe_with_metadata(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("created");
    let payment = answer.payment.expect("payment");
    assert!(answer.created);
    assert!(payment.id.starts_with("pay_"), "{}", payment.id);
    assert_eq!(payment.tenant, "billing");
    assert_eq!(payment.invoice_id, "inv-1");
    assert_eq!(payment.amount, 4200);
    assert_eq!(payment.currency, "usd");
    assert_eq!(payment.status(), pb::PaymentStatus::RequiresPaymentMethod);
    assert_eq!(answer.publishable_key, support::PUBLISHABLE_KEY);
    assert_eq!(answer.return_url, support::RETURN_URL);

    let intent = app
        .stripe
        .payment_intent(&payment.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["client_secret"], answer.client_secret.as_str());
    assert_eq!(intent["amount"], 4200);
    assert_eq!(intent["currency"], "usd");
    assert_eq!(intent["description"], "Invoice for tests");
    assert_eq!(
        intent["metadata"]["paybridge_payment_id"],
        payment.id.as_str()
    );
    assert_eq!(intent["metadata"]["invoice_id"], "inv-1");
    assert_eq!(intent["metadata"]["tenant"], "billing");
    assert_eq!(intent["metadata"]["order"], "o-17");
}

async fn a_replay_with_the_same_key_returns_the_first_answer_without_calling_stripe(db: Db) {
    let app = TestApp::spawn(db).await;
    let first = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("created");
    let second = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("replayed");
    assert!(!second.created);
    assert_eq!(second.payment, first.payment);
    assert_eq!(second.client_secret, first.client_secret);
    assert_eq!(app.stripe.count(CREATE_INTENT).await, 1);
}

async fn the_same_key_with_a_different_request_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    app.create(create_request("key-1", "inv-1"))
        .await
        .expect("created");
    let mut changed = create_request("key-1", "inv-1");
    changed.amount = 4300;
    let status = app.create(changed).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("idempotency key"), "{status:?}");
    assert_eq!(app.stripe.count(CREATE_INTENT).await, 1);
}

async fn twenty_concurrent_creates_with_one_key_make_one_intent(db: Db) {
    let app = TestApp::spawn(db).await;
    let calls = (0..20).map(|_| app.create(create_request("same-key", "inv-1")));
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::BTreeSet<String> = answers
        .into_iter()
        .map(|answer| {
            answer
                .expect("every call answers")
                .payment
                .expect("payment")
                .id
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.stripe.payment_intents().await.len(), 1);
}

async fn twenty_keys_for_one_invoice_make_one_intent(db: Db) {
    let app = TestApp::spawn(db).await;
    let calls = (0..20).map(|i| app.create(create_request(&format!("key-{i}"), "inv-1")));
    let answers = futures::future::join_all(calls).await;
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        let answer = answer.expect("every call answers");
        created += usize::from(answer.created);
        ids.insert(answer.payment.expect("payment").id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(created, 1);
    assert_eq!(app.stripe.payment_intents().await.len(), 1);
}

async fn a_paid_invoice_refuses_a_new_payment(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment, _) = app.create_paid("key-1", "inv-1").await;
    let settled = app.get(&payment.id, true).await.expect("refreshed");
    assert_eq!(settled.status(), pb::PaymentStatus::Succeeded);

    let status = app
        .create(create_request("key-2", "inv-1"))
        .await
        .expect_err("already paid");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already paid"), "{status:?}");
    assert_eq!(app.stripe.count(CREATE_INTENT).await, 1);
}

async fn an_open_payment_for_another_amount_blocks_the_invoice(db: Db) {
    let app = TestApp::spawn(db).await;
    app.create(create_request("key-1", "inv-1"))
        .await
        .expect("created");
    let mut other_amount = create_request("key-2", "inv-1");
    other_amount.amount = 5000;
    let status = app.create(other_amount).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("open payment"), "{status:?}");
}

async fn a_customer_email_makes_one_stripe_customer_reused_across_payments(db: Db) {
    let app = TestApp::spawn(db).await;
    let with_email = |key: &str, invoice: &str| {
        let mut request = create_request(key, invoice);
        request.customer = Some(pb::Customer {
            who: Some(pb::customer::Who::Email("Ada@Example.com".to_owned())),
            name: "Ada Lovelace".to_owned(),
        });
        request
    };
    let first = app
        .create(with_email("key-1", "inv-1"))
        .await
        .expect("created");
    let second = app
        .create(with_email("key-2", "inv-2"))
        .await
        .expect("created");
    let first = first.payment.expect("payment");
    let second = second.payment.expect("payment");
    assert!(first.stripe_customer_id.starts_with("cus_"), "{first:?}");
    assert_eq!(first.stripe_customer_id, second.stripe_customer_id);
    assert_eq!(app.stripe.count("POST /v1/customers").await, 1);
    let intent = app
        .stripe
        .payment_intent(&second.stripe_payment_intent_id)
        .await;
    assert_eq!(intent["customer"], first.stripe_customer_id.as_str());
}

async fn an_unknown_stripe_customer_is_refused_and_frees_the_invoice(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut request = create_request("key-1", "inv-1");
    request.customer = Some(pb::Customer {
        who: Some(pb::customer::Who::StripeCustomerId(
            "cus_doesnotexist".to_owned(),
        )),
        name: String::new(),
    });
    let status = app.create(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // The refused payment does not block a corrected request for the same invoice.
    let answer = app
        .create(create_request("key-2", "inv-1"))
        .await
        .expect("created");
    assert!(answer.created);
}

async fn stripe_unavailable_answers_unavailable_and_a_retry_makes_one_intent(db: Db) {
    let app = TestApp::spawn_with(
        db,
        support::Options {
            stripe_max_retries: 0,
            ..Default::default()
        },
    )
    .await;
    app.stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "times": 1, "status": 503, "when": "before"}))
        .await;
    let status = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect_err("Stripe down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let answer = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("retried");
    assert_eq!(
        answer.payment.expect("payment").status(),
        pb::PaymentStatus::RequiresPaymentMethod
    );
    assert_eq!(app.stripe.payment_intents().await.len(), 1);
}

async fn a_lost_stripe_answer_is_recovered_with_the_same_intent(db: Db) {
    let app = TestApp::spawn_with(
        db,
        support::Options {
            stripe_max_retries: 0,
            ..Default::default()
        },
    )
    .await;
    // Stripe creates the intent, but the answer never arrives.
    app.stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "times": 1, "status": 500, "when": "after"}))
        .await;
    let status = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect_err("answer lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(app.stripe.payment_intents().await.len(), 1);

    let answer = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("retried");
    let intents = app.stripe.payment_intents().await;
    assert_eq!(intents.len(), 1);
    assert_eq!(
        intents[0]["id"],
        answer
            .payment
            .expect("payment")
            .stripe_payment_intent_id
            .as_str()
    );
}

async fn stripe_retries_inside_one_call_reuse_the_idempotency_key(db: Db) {
    let app = TestApp::spawn(db).await;
    // Two lost answers, then success: the adapter's retries must land on the same intent.
    app.stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "times": 2, "status": 500, "when": "after"}))
        .await;
    let answer = app
        .create(create_request("key-1", "inv-1"))
        .await
        .expect("created after retries");
    assert!(answer.created);
    assert_eq!(app.stripe.payment_intents().await.len(), 1);
    assert_eq!(app.stripe.count(CREATE_INTENT).await, 3);
}

/// The create's two writes from concurrent calls, which the store may send together (one
/// statement for many on PostgreSQL, one transaction on SQLite), are each answered as their own
/// would be: of the writes that share an invoice or a key one is written, the others write
/// nothing; an attach the database refuses fails alone; every other attach answers its own row.
async fn concurrent_create_writes_are_each_answered_as_alone(db: Db) {
    use paybridge::adapters::store::Store;
    use paybridge::app::ports::{PaymentRecords, StoreError};
    use paybridge::domain::{PaymentStatus, StatusChange};
    use sqlx::Connection;

    let app = TestApp::spawn(db).await;
    let store = Store::connect(&app.database_url, 4).await.expect("store");
    let mut writes = Vec::new();
    for i in 0..16 {
        writes.push((
            support::creating_payment(&format!("inv-own-{i}")),
            format!("k-own-{i}"),
        ));
        writes.push((
            support::creating_payment("inv-shared"),
            format!("k-shared-{i}"),
        ));
        writes.push((
            support::creating_payment(&format!("inv-key-{i}")),
            "k-shared".to_owned(),
        ));
    }
    let answers = futures::future::join_all(
        writes
            .iter()
            .map(|(payment, key)| store.insert_payment(payment, key, "fp")),
    )
    .await;
    let mut written = Vec::new();
    let (mut shared_invoice, mut shared_key) = (0, 0);
    for ((payment, key), answer) in writes.iter().zip(answers) {
        match answer {
            Ok(true) => written.push(payment.clone()),
            Ok(false) | Err(StoreError::Conflict) => {}
            Err(other) => panic!("{key}: {other}"),
        }
        let wrote = written.last().is_some_and(|last| last.id == payment.id);
        if key.starts_with("k-own-") {
            assert!(wrote, "{key} shares nothing and is written");
        }
        shared_invoice += usize::from(wrote && payment.invoice_id == "inv-shared");
        shared_key += usize::from(wrote && key == "k-shared");
    }
    assert_eq!((written.len(), shared_invoice, shared_key), (18, 1, 1));
    for payment in &written {
        assert_eq!(
            store
                .get_payment(None, &payment.id)
                .await
                .expect("read")
                .as_ref(),
            Some(payment),
            "written as asked"
        );
    }
    let mut conn = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let mut counts = Vec::new();
    for table in ["payment", "idempotency_key", "payment_event"] {
        let (count,): (i64,) = sqlx::query_as(&format!("select count(*) from {table}"))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        counts.push(count);
    }
    assert_eq!(counts, [18, 18, 18], "payments, keys and first events");

    // Every payment attached at once; the last one with the first one's intent, which the
    // unique index refuses to one of the two.
    let change = StatusChange::status_only(
        PaymentStatus::Creating,
        PaymentStatus::RequiresPaymentMethod,
        None,
    );
    let intents: Vec<String> = written
        .iter()
        .enumerate()
        .map(|(i, payment)| {
            let owner = if i + 1 == written.len() {
                &written[0]
            } else {
                payment
            };
            format!("pi_{}", owner.id)
        })
        .collect();
    let attached =
        futures::future::join_all(written.iter().zip(&intents).map(|(payment, intent)| {
            store.attach_intent(&payment.id, intent, Some("secret"), &change, 2)
        }))
        .await;
    let mut refused = 0;
    for ((payment, intent), answer) in written.iter().zip(&intents).zip(attached) {
        match answer {
            Ok(row) => {
                assert_eq!(row.id, payment.id, "its own row");
                assert_eq!(
                    row.stripe_payment_intent_id.as_deref(),
                    Some(intent.as_str())
                );
                assert_eq!(row.status, PaymentStatus::RequiresPaymentMethod);
            }
            Err(StoreError::Conflict) => refused += 1,
            Err(other) => panic!("{}: {other}", payment.id),
        }
    }
    assert_eq!(refused, 1, "one of the two attaches with one intent");
}

on_both_databases!(
    create_returns_a_client_secret_and_the_intent_exists_at_stripe_with_metadata,
    a_replay_with_the_same_key_returns_the_first_answer_without_calling_stripe,
    the_same_key_with_a_different_request_is_refused,
    twenty_concurrent_creates_with_one_key_make_one_intent,
    twenty_keys_for_one_invoice_make_one_intent,
    a_paid_invoice_refuses_a_new_payment,
    an_open_payment_for_another_amount_blocks_the_invoice,
    a_customer_email_makes_one_stripe_customer_reused_across_payments,
    an_unknown_stripe_customer_is_refused_and_frees_the_invoice,
    stripe_unavailable_answers_unavailable_and_a_retry_makes_one_intent,
    a_lost_stripe_answer_is_recovered_with_the_same_intent,
    stripe_retries_inside_one_call_reuse_the_idempotency_key,
    concurrent_create_writes_are_each_answered_as_alone,
);

async fn every_status_change_is_appended_to_the_event_log(db: Db) {
    let app = TestApp::spawn(db).await;
    let (_, payment, _) = app.create_paid("key-1", "inv-1").await;
    app.get(&payment.id, true).await.expect("refreshed");
    app.get(&payment.id, true)
        .await
        .expect("refreshed again: no change");

    let store = paybridge::adapters::store::Store::connect(&app.database_url, 1)
        .await
        .expect("store");
    let events = paybridge::app::ports::ChangeFeed::status_events_after(&store, &payment.id, 0)
        .await
        .expect("events");
    let events: Vec<(&str, Option<&str>, &str)> = events
        .iter()
        .map(|event| {
            (
                event.source.as_str(),
                event.from.map(|from| from.as_str()),
                event.to.as_str(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("create", None, "creating"),
            ("create", Some("creating"), "requires_payment_method"),
            ("refresh", Some("requires_payment_method"), "succeeded"),
        ]
    );
}

mod event_log {
    use super::*;
    on_both_databases!(every_status_change_is_appended_to_the_event_log);
}
