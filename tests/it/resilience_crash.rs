//! `kill -9` of `paybridge serve` (the built binary) at random moments while several clients
//! create payments, on a SQLite file and on PostgreSQL. Clients retry with their keys; some give
//! up after one try. In the end each key has exactly one PaymentIntent at the Stripe fake, no row
//! stays `creating` once the reconciler has run, and every payment paid at Stripe is settled —
//! without a return or a webhook, across one more crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::child::ServeProcess;
use crate::support::{
    BILLING_TOKEN, Db, LocalStripe, as_tenant, count_rows, create_request, eventually, test_seed,
};
use paybridge::pb::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tonic::Code;

const KILLS: usize = 5;
const CLIENTS: usize = 6;

/// What one client did.
#[derive(Default)]
struct ClientReport {
    answers: Vec<(String, pb::CreateInvoicePaymentResponse)>,
    abandoned: Vec<String>,
    calls: u64,
    failures: u64,
}

/// Creates with fresh keys until `stop`, counting each answer in `answered` as it comes.
async fn run_client(
    serve: ServeProcess,
    client: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> ClientReport {
    let grpc = serve.client();
    let mut report = ClientReport::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let (key, invoice) = (format!("crash-{client}-{n}"), format!("INV-K{client}-{n}"));
        // Every third key is tried once only: its client "crashes" too, and only the
        // reconciler can finish what the server started for it.
        let give_up = n % 3 == 2;
        n += 1;
        loop {
            assert!(Instant::now() < deadline, "{key}: no answer within 120 s");
            let mut request = as_tenant(BILLING_TOKEN, create_request(&key, &invoice));
            request.set_timeout(Duration::from_secs(5));
            report.calls += 1;
            match grpc.clone().create_invoice_payment(request).await {
                Ok(answer) => {
                    report.answers.push((key.clone(), answer.into_inner()));
                    answered.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(status) => {
                    report.failures += 1;
                    assert!(
                        matches!(
                            status.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unknown
                        ),
                        "{key}: {status:?}"
                    );
                    if give_up {
                        report.abandoned.push(key.clone());
                        break;
                    }
                    // The client's pause before it retries (the server may be restarting).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    report
}

/// The count `sql` gives once it is `want`, or the last one after `within`.
async fn wait_for_rows(database_url: &str, sql: &str, want: i64, within: Duration) -> i64 {
    eventually(within, || async {
        let count = count_rows(database_url, sql).await;
        if count == want { Ok(count) } else { Err(count) }
    })
    .await
    .unwrap_or_else(|last| last)
}

async fn kill_9_during_creates_leaves_one_intent_per_key_and_nothing_stuck(db: Db) {
    // The kill times are drawn from this seed (the clients' timing is the machine's).
    let mut kill_times = StdRng::seed_from_u64(test_seed("kill -9 during creates"));
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("crash.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    // Stripe acts, then answers 150 ms later: most kills land between the committed `creating`
    // row and the recorded intent, the window the design must survive.
    stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "status": null, "when": "after", "delay_ms": 150, "times": 1000000}))
        .await;
    let serve = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
        .env("PAYBRIDGE_RECONCILE_INTERVAL", "1s")
        .env("PAYBRIDGE_RECONCILE_AFTER", "1s")
        // A killed process strands the claims of its sweep for the lease: keep it short here.
        .env("PAYBRIDGE_RECONCILE_LEASE", "3s")
        .env("PAYBRIDGE_SHUTDOWN_GRACE", "2s");
    let mut running = serve.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            tokio::spawn(run_client(serve.clone(), client, stop, answered))
        })
        .collect();
    let kills = AtomicU64::new(0);
    for _ in 0..KILLS {
        let pause = kill_times.random_range(300..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        running.kill9().await;
        kills.fetch_add(1, Ordering::SeqCst);
        running = serve.start().await;
    }
    // The last server, never killed, answers creates before the clients stop.
    let answered_before = answered.load(Ordering::SeqCst);
    eventually(Duration::from_secs(60), || async {
        match answered.load(Ordering::SeqCst) - answered_before {
            since if since >= CLIENTS as u64 => Ok(()),
            since => Err(since),
        }
    })
    .await
    .expect("creates answered by the last server within 60 s");
    stop.store(true, Ordering::SeqCst);
    let mut answers: BTreeMap<String, pb::CreateInvoicePaymentResponse> = BTreeMap::new();
    let (mut calls, mut failures, mut abandoned) = (0, 0, 0);
    for client in clients {
        let report = client.await.expect("client");
        calls += report.calls;
        failures += report.failures;
        abandoned += report.abandoned.len();
        answers.extend(report.answers);
    }
    stripe.clear_faults().await;

    // The reconciler finishes what the abandoned keys left `creating`.
    let creating = wait_for_rows(
        &database_url,
        "select count(*) from payment where status = 'creating'",
        0,
        Duration::from_secs(30),
    )
    .await;

    // Half the payments are paid at Stripe; then one more crash, and nobody comes back to
    // tell paybridge (no return, no webhook): the reconciler must notice on its own.
    let mut paid = Vec::new();
    for answer in answers.values().step_by(2) {
        let payment = answer.payment.as_ref().expect("payment");
        stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        paid.push(payment.id.clone());
    }
    running.kill9().await;
    let running = serve.start().await;
    let settled_sql = format!(
        "select count(*) from payment where status = 'succeeded' and payment_id in ({})",
        paid.iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let settled = wait_for_rows(
        &database_url,
        &settled_sql,
        paid.len() as i64,
        Duration::from_secs(30),
    )
    .await;

    // One intent per payment and per invoice (each key has its own invoice).
    let intents = stripe.payment_intents().await;
    let mut by_payment: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_invoice: BTreeMap<String, usize> = BTreeMap::new();
    for intent in &intents {
        *by_payment
            .entry(intent["metadata"]["paybridge_payment_id"].to_string())
            .or_default() += 1;
        *by_invoice
            .entry(intent["metadata"]["invoice_id"].to_string())
            .or_default() += 1;
    }
    let duplicates: usize = by_payment.values().map(|n| n - 1).sum::<usize>()
        + by_invoice.values().map(|n| n - 1).sum::<usize>();
    let rows = count_rows(&database_url, "select count(*) from payment").await;
    let creating_at_end = count_rows(
        &database_url,
        "select count(*) from payment where status = 'creating'",
    )
    .await;
    let (status, _, _) = running.terminate(Duration::from_secs(10)).await;
    eprintln!(
        "crashes ({db:?}): {} kill -9 during creates + 1 after paying, {calls} create calls \
         ({failures} failed and were retried or abandoned), {} keys answered, {abandoned} abandoned, \
         {rows} payment rows, {} intents at Stripe, {duplicates} duplicate intents, \
         {creating} rows creating after the reconciler, {}/{} paid payments settled",
        kills.load(Ordering::SeqCst),
        answers.len(),
        intents.len(),
        settled,
        paid.len()
    );
    for answer in answers.values() {
        let payment = answer.payment.as_ref().expect("payment");
        assert_eq!(
            by_payment.get(&format!("\"{}\"", payment.id)),
            Some(&1),
            "payment {} has no intent or several",
            payment.id
        );
    }
    assert_eq!(duplicates, 0, "a key or invoice got a second PaymentIntent");
    assert_eq!(creating, 0, "rows stayed creating after the reconciler ran");
    assert_eq!(creating_at_end, 0);
    assert_eq!(
        settled,
        paid.len() as i64,
        "a paid payment stayed unsettled"
    );
    assert_eq!(
        rows as usize,
        intents.len(),
        "every payment row has its intent"
    );
    assert!(status.success(), "{status:?}");
}

on_both_databases!(kill_9_during_creates_leaves_one_intent_per_key_and_nothing_stuck);
