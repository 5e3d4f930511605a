//! The process's Stripe request budget holds under a burst of returns, and every browser still
//! gets an answer it can act on.

use crate::support;
use crate::support::gateway::{GatewayOptions, GatewayTest};
use crate::support::localstripe::CARD_SUCCEEDS;
use crate::support::{Db, Options, create_request};

const RATE: u32 = 10;
/// The budget's burst at this rate (a tenth of the rate, at least one).
const BURST: u32 = 1;
/// How late a read may reach the Stripe fake after its slot in the budget: a loaded machine can
/// hold up the core's runtime or the fake's one Python thread that long, and the reads held up
/// arrive together.
const LATE_BY_AT_MOST_MS: u64 = 1000;

async fn two_hundred_unsettled_returns_in_one_second_keep_to_the_stripe_budget(db: Db) {
    let test = GatewayTest::spawn_with(
        db,
        Options {
            stripe_max_rps: RATE,
            ..Default::default()
        },
        GatewayOptions::default(),
    )
    .await;
    // The payments are taken and paid through another replica with a budget of its own, so that
    // only the returns spend the gateway's core's budget.
    let taker = test.app.spawn_replica(Options::default()).await;
    let mut created = Vec::new();
    for i in 0..200 {
        let answer = taker
            .create(create_request(&format!("k{i}"), &format!("inv-{i}")))
            .await
            .expect("created");
        test.remember_secret(&answer.client_secret);
        created.push(answer);
    }
    for chunk in created.chunks(20) {
        futures::future::join_all(chunk.iter().map(|answer| {
            let payment = answer.payment.as_ref().expect("payment");
            test.app.stripe.pay(
                &payment.stripe_payment_intent_id,
                &answer.client_secret,
                CARD_SUCCEEDS,
            )
        }))
        .await;
    }
    let before: Vec<u64> = read_times(&test).await;

    let answers = futures::future::join_all(
        created
            .iter()
            .map(|answer| test.return_for(answer, "succeeded")),
    )
    .await;
    let mut redirected = 0;
    let mut asked_to_retry = 0;
    for response in &answers {
        match response.status().as_u16() {
            303 => {
                let location = support::gateway::assert_redirect(response);
                assert!(location.contains("status=succeeded"), "{location}");
                redirected += 1;
            }
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "{response:?}"
                );
                asked_to_retry += 1;
            }
            other => panic!("a browser got {other}"),
        }
    }
    // 200 returns in a second are more than the budget allows: some browsers are asked to come
    // back; others wait for their slot rather than being refused at once, so more are served
    // than one second of the budget holds.
    assert!(
        asked_to_retry > 0,
        "all {redirected} returns were served within a budget of {RATE}/s"
    );
    assert!(
        redirected > (RATE + BURST) as usize,
        "only {redirected} returns served: the budget refused instead of waiting"
    );

    let reads: Vec<u64> = read_times(&test)
        .await
        .into_iter()
        .filter(|at| !before.contains(at))
        .collect();
    assert_eq!(
        reads.len(),
        redirected,
        "one Stripe read per verified return"
    );
    // `n` reads take at least `n - BURST` of the budget's intervals, from the first one's slot
    // to the last one's; each reaches the fake after its slot, at most `LATE_BY_AT_MOST_MS` so.
    let interval_ms = u64::from(1000 / RATE);
    for (i, first) in reads.iter().enumerate() {
        for (n, last) in (1u64..).zip(&reads[i..]) {
            let least = n.saturating_sub(u64::from(BURST)) * interval_ms;
            assert!(
                last - first + LATE_BY_AT_MOST_MS >= least,
                "{n} Stripe reads within {} ms, from {first}",
                last - first
            );
        }
    }
    drop(taker);
    test.finish().await;
}

/// When each `GET /v1/payment_intents/{id}` reached the fake (unix ms), sorted.
async fn read_times(test: &GatewayTest) -> Vec<u64> {
    let log = test.app.stripe.requests().await;
    let mut times: Vec<u64> = log["requests"]
        .as_array()
        .expect("request log")
        .iter()
        .filter(|r| r["route"] == "GET /v1/payment_intents/{id}")
        .filter_map(|r| Some(r["at_ms"].as_u64()? - r["ms"].as_u64()?))
        .collect();
    times.sort_unstable();
    times
}

on_both_databases!(two_hundred_unsettled_returns_in_one_second_keep_to_the_stripe_budget);
