//! `POST /stripe/webhook` through the gateway: Stripe's deliveries reach the core byte for byte,
//! and only a recorded event is acknowledged.

use std::time::Duration;

use crate::support;
use crate::support::events::{event, now};
use crate::support::gateway::{GatewayTest, captured_logs, status_of};
use crate::support::localstripe::CARD_SUCCEEDS;
use crate::support::{Db, WEBHOOK_SECRET, eventually};
use paybridge::adapters::stripe::webhook::sign;
use paybridge::pb::v1 as pb;

const LIMIT: usize = 256 * 1024;

async fn post_webhook(
    test: &GatewayTest,
    body: Vec<u8>,
    signature: Option<&str>,
) -> reqwest::Response {
    let mut request = test
        .http
        .post(test.url("/stripe/webhook"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.expect("gateway answers")
}

/// Sends a webhook request's headers declaring `length` bytes, and no body; returns the answer.
async fn raw_headers_only(test: &GatewayTest, length: usize, signature: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(test.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /stripe/webhook HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         stripe-signature: {signature}\r\ncontent-length: {length}\r\n\r\n",
        test.addr
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

async fn a_signed_event_is_forwarded_and_acknowledged(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let created = test.create("INV-W1").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    let intent = created
        .payment
        .as_ref()
        .expect("payment")
        .stripe_payment_intent_id
        .clone();
    let object = test.app.stripe.payment_intent(&intent).await;
    let payload = event("evt_gw_1", "payment_intent.succeeded", now(), object);
    let signature = sign(&payload, WEBHOOK_SECRET, now());

    let response = post_webhook(&test, payload.clone(), Some(&signature)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        status_of(&test, &created).await,
        pb::PaymentStatus::Succeeded
    );
    // A redelivery is acknowledged too.
    let again = post_webhook(&test, payload, Some(&signature)).await;
    assert_eq!(again.status().as_u16(), 200);
    // The gateway logs the core's answers by name, as the core does.
    let logs = captured_logs();
    let recorded: Vec<_> = logs
        .lines()
        .filter(|line| line.contains("webhook recorded"))
        .collect();
    for result in [r#"result="applied""#, r#"result="duplicate""#] {
        assert!(
            recorded.iter().any(|line| line.contains(result)),
            "{result} in {recorded:#?}"
        );
    }
    test.finish().await;
}

async fn stripes_own_delivery_settles_the_payment_through_the_gateway(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let registered = reqwest::Client::new()
        .post(format!(
            "{}/_config/webhooks/gateway",
            test.app.stripe.base_url
        ))
        .form(&[
            ("url", test.url("/stripe/webhook").as_str()),
            ("secret", WEBHOOK_SECRET),
        ])
        .send()
        .await
        .expect("register webhook");
    assert!(registered.status().is_success());
    let created = test.create("INV-W2").await;
    test.pay(&created, CARD_SUCCEEDS).await;
    // No return and no refresh: only the webhook can settle it.
    eventually(Duration::from_secs(10), || async {
        match status_of(&test, &created).await {
            pb::PaymentStatus::Succeeded => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the webhook settles the payment");

    // The browser comes back after the webhook: answered from the row, no Stripe read.
    let reads = test.intent_reads(&created).await;
    let response = test.return_for(&created, "succeeded").await;
    let location = support::gateway::assert_redirect(&response);
    assert!(location.contains("status=succeeded"), "{location}");
    assert_eq!(test.intent_reads(&created).await, reads);
    test.finish().await;
}

async fn a_bad_signature_is_answered_400(db: Db) {
    let test = GatewayTest::spawn(db).await;
    let payload = event(
        "evt_gw_2",
        "payment_intent.succeeded",
        now(),
        serde_json::json!({}),
    );
    let forged = sign(&payload, "whsec_not_ours", now());
    let response = post_webhook(&test, payload.clone(), Some(&forged)).await;
    assert_eq!(response.status().as_u16(), 400);
    let unsigned = post_webhook(&test, payload, None).await;
    assert_eq!(unsigned.status().as_u16(), 400);
    test.finish().await;
}

async fn a_body_over_256_kib_is_refused_before_it_is_read(db: Db) {
    let mut test = GatewayTest::spawn(db).await;
    // The core is stopped: a 413 (not a 503) shows the gateway never tried to forward.
    test.app.stop_core().await;
    let big = vec![b' '; LIMIT + 1];
    let signature = sign(&big, WEBHOOK_SECRET, now());
    // Only the headers are sent: the answer comes without waiting for a body.
    let declared = raw_headers_only(&test, LIMIT + 1, &signature).await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");

    // Without a Content-Length (chunked), the stream is capped as it comes in.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = test
        .http
        .post(test.url("/stripe/webhook"))
        .header("stripe-signature", &signature)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The gateway answers 413 and closes the connection while the rest is still being sent, so
    // the client may see the reset before the answer; the gateway's log line says which it was.
    if let Ok(streamed) = &streamed {
        assert_eq!(streamed.status().as_u16(), 413);
    }
    assert!(
        captured_logs().contains("webhook refused: body too large or unreadable"),
        "the streamed body was not capped: {streamed:?}"
    );
    test.app.start_core().await;
    test.finish().await;
}

async fn an_unreachable_core_is_answered_503_so_stripe_retries(db: Db) {
    let mut test = GatewayTest::spawn(db).await;
    test.app.stop_core().await;
    let payload = event(
        "evt_gw_3",
        "payment_intent.succeeded",
        now(),
        serde_json::json!({}),
    );
    let signature = sign(&payload, WEBHOOK_SECRET, now());
    let response = post_webhook(&test, payload, Some(&signature)).await;
    assert_eq!(response.status().as_u16(), 503);
    let get = test.get("/stripe/webhook").await;
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    test.app.start_core().await;
    test.finish().await;
}

on_both_databases!(
    a_signed_event_is_forwarded_and_acknowledged,
    stripes_own_delivery_settles_the_payment_through_the_gateway,
    a_bad_signature_is_answered_400,
    a_body_over_256_kib_is_refused_before_it_is_read,
    an_unreachable_core_is_answered_503_so_stripe_retries,
);
