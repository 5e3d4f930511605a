//! SIGTERM while 64 clients create: every call completes or is refused UNAVAILABLE before any
//! side effect (no row, no intent for its key), and `serve` exits 0 within its grace period.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support;
use crate::support::child::ServeProcess;
use crate::support::{BILLING_TOKEN, Db, LocalStripe, as_tenant, create_request, eventually};
use serde_json::json;
use sqlx::Connection;
use tonic::Code;

const CLIENTS: usize = 64;
const GRACE: Duration = Duration::from_secs(5);

async fn keys_in_database(database_url: &str) -> BTreeSet<String> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url)
        .await
        .expect("database");
    let rows: Vec<(String,)> = sqlx::query_as("select idempotency_key from idempotency_key")
        .fetch_all(&mut conn)
        .await
        .expect("keys");
    conn.close().await.ok();
    rows.into_iter().map(|(k,)| k).collect()
}

async fn sigterm_under_load_completes_or_refuses_every_call_and_exits_zero(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("shutdown.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    // Stripe takes 300 ms per create, so many calls are mid-way when SIGTERM arrives.
    stripe
        .inject_fault(json!({"method": "POST", "path_prefix": "/v1/payment_intents", "status": null, "when": "after", "delay_ms": 300, "times": 1000000}))
        .await;
    let serve = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
        .env("PAYBRIDGE_SHUTDOWN_GRACE", &format!("{}s", GRACE.as_secs()));
    let running = serve.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (grpc, stop, completed) = (serve.client(), Arc::clone(&stop), Arc::clone(&completed));
        clients.push(tokio::spawn(async move {
            let (mut done, mut refused, mut other) = (Vec::new(), Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("term-{client}-{n}");
                n += 1;
                let mut request = as_tenant(BILLING_TOKEN, create_request(&key, &key));
                request.set_timeout(Duration::from_secs(10));
                match grpc.clone().create_invoice_payment(request).await {
                    Ok(_) => {
                        done.push(key);
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) if status.code() == Code::Unavailable => {
                        refused.push(key);
                        // The server is going away: this client stops too.
                        break;
                    }
                    // A call queued on a connection the server closed was never sent; tonic
                    // reports it CANCELLED ("connection closed"). As safe to retry as a refusal,
                    // and checked for side effects the same way.
                    // Or the server's GOAWAY (NO_ERROR) reached the client as it sent the call:
                    // tonic reports INTERNAL "h2 protocol error" for a stream the server never
                    // processed. Checked for side effects the same way.
                    Err(status)
                        if (status.code() == Code::Cancelled
                            && format!("{status:?}").contains("connection closed"))
                            || (status.code() == Code::Internal
                                && format!("{status:?}").contains("GoAway")
                                && format!("{status:?}").contains("NO_ERROR")) =>
                    {
                        refused.push(key);
                        break;
                    }
                    Err(status) => other.push(format!("{key}: {status:?}")),
                }
            }
            (done, refused, other)
        }));
    }
    // SIGTERM once the load has reached the server: as many calls completed as there are
    // clients, the clients busy with their next ones.
    eventually(Duration::from_secs(30), || async {
        match completed.load(Ordering::SeqCst) {
            n if n >= CLIENTS as u64 => Ok(()),
            n => Err(n),
        }
    })
    .await
    .expect("calls completed before SIGTERM within 30 s");
    let completed_before_sigterm = completed.load(Ordering::SeqCst);
    let (status, took, log) = running.terminate(GRACE + Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);

    let (mut done, mut refused, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for client in clients {
        let (d, r, o) = tokio::time::timeout(Duration::from_secs(20), client)
            .await
            .expect("client ends")
            .expect("client");
        done.extend(d);
        refused.extend(r);
        other.extend(o);
    }
    let keys = keys_in_database(&database_url).await;
    let intents = stripe.payment_intents().await;
    let intent_invoices: BTreeSet<String> = intents
        .iter()
        .map(|i| {
            i["metadata"]["invoice_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let refused_with_effect: Vec<&String> = refused
        .iter()
        .filter(|k| keys.contains(*k) || intent_invoices.contains(*k))
        .collect();
    let done_without_intent: Vec<&String> = done
        .iter()
        .filter(|k| !intent_invoices.contains(*k))
        .collect();
    eprintln!(
        "shutdown ({db:?}): {CLIENTS} clients, {} calls: {} completed, {} UNAVAILABLE or never sent ({} of them with a side effect), \
         {} other; {} intents; exit {status:?} {took:?} after SIGTERM (grace {GRACE:?})",
        done.len() + refused.len() + other.len(),
        done.len(),
        refused.len(),
        refused_with_effect.len(),
        other.len(),
        intents.len(),
    );
    assert!(other.is_empty(), "{other:#?}");
    assert!(
        done.len() as u64 > completed_before_sigterm,
        "no call was mid-way at SIGTERM: {completed_before_sigterm} completed before, {} in all",
        done.len()
    );
    assert!(
        refused_with_effect.is_empty(),
        "refused after a side effect: {refused_with_effect:?}"
    );
    assert!(done_without_intent.is_empty(), "{done_without_intent:?}");
    assert_eq!(
        intents.len(),
        done.len(),
        "an intent no caller was told about"
    );
    assert!(status.success(), "exit {status:?}: {log:#?}");
    assert!(took < GRACE + Duration::from_secs(2), "took {took:?}");
}

on_both_databases!(sigterm_under_load_completes_or_refuses_every_call_and_exits_zero);
