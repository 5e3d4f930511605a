//! A replica killed mid-sweep: its reconciler claims are renewed while it works (another replica
//! leaves them alone however long the sweep takes), and once it is gone another replica picks
//! the work up within 15 s, with the default lease and sweep interval.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::child::ServeProcess;
use crate::support::fault_proxy::{FaultProxy, NetFault};
use crate::support::{
    BILLING_TOKEN, LocalStripe, as_tenant, count_rows, create_request, eventually,
};

const PAYMENTS: usize = 4;
/// `PAYBRIDGE_RECONCILE_LEASE`'s default.
const LEASE: Duration = Duration::from_secs(8);
/// What the issue asks: another replica has the work within this of a kill -9.
const PICKED_UP_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_sweep_has_its_claims_picked_up_within_15_s() {
    let dir = tempfile::tempdir().expect("dir");
    let stripe = LocalStripe::start().await;
    let database_url = crate::support::postgres::fresh_database().await;

    // The payments are made through a replica without a reconciler and paid at Stripe: only a
    // reconciler can settle them (no return, no webhook).
    let maker = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
        .env("PAYBRIDGE_RECONCILE_INTERVAL", "0s");
    let making = maker.start().await;
    let mut ids = Vec::new();
    for n in 0..PAYMENTS {
        let answer = maker
            .client()
            .create_invoice_payment(as_tenant(
                BILLING_TOKEN,
                create_request(&format!("failover-{n}"), &format!("INV-F{n}")),
            ))
            .await
            .expect("created")
            .into_inner();
        let payment = answer.payment.expect("payment");
        stripe
            .pay_succeeding(&payment.stripe_payment_intent_id, &answer.client_secret)
            .await;
        ids.push(format!("'{}'", payment.id));
    }
    making.kill9().await;
    let settled_sql = format!(
        "select count(*) from payment where status = 'succeeded' and payment_id in ({})",
        ids.join(", ")
    );

    // Replica A claims them all in its first sweep and hangs reading the first at Stripe.
    let proxy = FaultProxy::start(&stripe.base_url).await;
    proxy.set(NetFault::StallBefore).await;
    let stuck = ServeProcess::new(dir.path(), database_url.clone(), proxy.url())
        .env("PAYBRIDGE_RECONCILE_INTERVAL", "1s")
        .env("PAYBRIDGE_RECONCILE_AFTER", "0s")
        .env("PAYBRIDGE_STRIPE_TIMEOUT", "50s")
        .env("PAYBRIDGE_STRIPE_MAX_RETRIES", "0");
    let stuck_running = stuck.start().await;
    eventually(Duration::from_secs(15), || async {
        let leased = count_rows(
            &database_url,
            "select count(*) from payment where reconcile_lease_until is not null",
        )
        .await;
        let stalled = proxy.stats().stalls.load(Ordering::SeqCst);
        if leased == PAYMENTS as i64 && stalled >= 1 {
            Ok(())
        } else {
            Err((leased, stalled))
        }
    })
    .await
    .expect("replica A claimed every payment and waits on Stripe");

    // Replica B, with the default lease and interval, sweeps beside it: for twice the lease it
    // finds every payment held (A renews its claims while its sweep works).
    let taker = ServeProcess::new(dir.path(), database_url.clone(), stripe.base_url.clone())
        .env("PAYBRIDGE_RECONCILE_AFTER", "0s");
    let taker_running = taker.start().await;
    let watched = Instant::now();
    while watched.elapsed() < 2 * LEASE {
        assert_eq!(
            count_rows(&database_url, &settled_sql).await,
            0,
            "replica B took a payment replica A still held ({:?} after B started)",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kill -9 A: B settles every payment within 15 s.
    stuck_running.kill9().await;
    let killed = Instant::now();
    let settled = eventually(PICKED_UP_WITHIN, || async {
        match count_rows(&database_url, &settled_sql).await {
            all if all == PAYMENTS as i64 => Ok(killed.elapsed()),
            some => Err(some),
        }
    })
    .await;
    let took = settled.unwrap_or_else(|some| {
        panic!("{some} of {PAYMENTS} payments settled {PICKED_UP_WITHIN:?} after the kill")
    });
    eprintln!(
        "a killed replica's reconciler claims were picked up and settled {took:?} after the kill"
    );
    taker_running.kill9().await;
}
