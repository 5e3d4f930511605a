//! The hosted payment page in a real browser (issue 18): headless Chromium opens a link the
//! core handed out, the page mounts the (stand-in) Payment Element, a customer types a card and
//! pays, and lands on the tenant's success page through the gateway's return; the payment is
//! then SUCCEEDED. The stand-in Stripe.js (`support/localstripe/stripe-js-stand-in.js`) calls
//! the Stripe fake as Stripe.js calls Stripe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::support::browser::Browser;
use crate::support::gateway::{GatewayOptions, GatewayTest, status_of};
use crate::support::localstripe::{CARD_DECLINED, CARD_NEEDS_AUTHENTICATION, CARD_SUCCEEDS};
use crate::support::{Db, Options, create_request};
use paybridge::pb::v1 as pb;

/// How long a browser step may take on a busy machine.
const STEP: Duration = Duration::from_secs(30);

/// One request the shop (the tenant's pages) received: path with query, and its `Referer`.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    referer: Option<String>,
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

const LOGO: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"40\" \
    viewBox=\"0 0 40 40\"><rect width=\"40\" height=\"40\" rx=\"8\" fill=\"#3949ab\"/>\
    <path d=\"M11 27V13h9a5 5 0 0 1 0 10h-5v4z\" fill=\"#fff\"/></svg>";

async fn shop(State(seen): State<SeenLog>, request: Request) -> Response {
    let uri = request.uri().to_string();
    let referer = request
        .headers()
        .get(header::REFERER)
        .map(|v| v.to_str().unwrap_or("(non-ascii)").to_owned());
    seen.lock().expect("seen").push(Seen {
        uri: uri.clone(),
        referer,
    });
    if uri == "/logo.svg" {
        return ([(header::CONTENT_TYPE, "image/svg+xml")], LOGO).into_response();
    }
    axum::response::Html("<!doctype html><title>Shop</title><h1>Thank you</h1>").into_response()
}

/// The tenant's pages on a free port; returns their origin.
async fn serve_shop() -> (String, SeenLog) {
    let seen = SeenLog::default();
    let app = axum::Router::new().fallback(shop).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A gateway whose core hands out links to it, billing's pages and logo at the shop, and one
/// payment of 129.00 EUR with its hosted link.
async fn open_payment(
    db: Db,
    invoice_id: &str,
) -> (
    GatewayTest,
    String,
    SeenLog,
    pb::CreateInvoicePaymentResponse,
) {
    crate::support::browser::chromium(); // fails here, clearly, without a browser
    let (origin, seen) = serve_shop().await;
    let test = GatewayTest::spawn_with(
        db,
        Options {
            extra_redirect_origin: Some(origin.clone()),
            billing_logo_url: Some(format!("{origin}/logo.svg")),
            ..Options::default()
        },
        GatewayOptions {
            core_points_here: true,
            ..GatewayOptions::default()
        },
    )
    .await;
    let mut request = create_request(&format!("key-{invoice_id}"), invoice_id);
    request.amount = 12_900;
    request.currency = "eur".to_owned();
    request.description = format!("Invoice {invoice_id} · Pro plan, March");
    request.success_url = format!("{origin}/paid");
    request.failure_url = format!("{origin}/payment-failed");
    request.hosted_page = true;
    let created = test.create_with(request).await;
    assert!(
        created.hosted_url.starts_with(&test.url("/pay/")),
        "{}",
        created.hosted_url
    );
    let token = created.hosted_url.rsplit('/').next().expect("token");
    test.remember_secret(token);
    (test, origin, seen, created)
}

/// Opens the link and waits for the Payment Element to be mounted and the button enabled.
async fn open_page(browser: &mut Browser, url: &str) {
    browser.navigate(url).await;
    browser
        .wait_until(
            STEP,
            "document.getElementById('stand-in-card-number') !== null && \
             document.getElementById('pay-button').disabled === false",
            "the payment element mounted",
        )
        .await;
}

async fn type_card(browser: &mut Browser, card: &str) {
    browser.type_into("#stand-in-card-number", card).await;
    browser.type_into("#stand-in-card-expiry", "12 / 34").await;
    browser.type_into("#stand-in-card-cvc", "123").await;
}

/// Waits for the shop's success page, and checks how the browser got there: the payment's id
/// and `succeeded` in the URL, and no client secret or hosted page token in any URL or
/// `Referer` the shop saw.
async fn lands_on_the_success_page(
    browser: &mut Browser,
    test: &GatewayTest,
    origin: &str,
    seen: &SeenLog,
    created: &pb::CreateInvoicePaymentResponse,
) {
    let success = serde_json::to_string(&format!("{origin}/paid?")).expect("json");
    browser
        .wait_until(
            STEP,
            &format!("location.href.startsWith({success})"),
            "the shop's success page",
        )
        .await;
    let href = browser.eval("location.href").await.expect("href");
    let href = href.as_str().expect("string");
    let payment = created.payment.as_ref().expect("payment");
    let params: Vec<(String, String)> = url::Url::parse(href)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect();
    assert!(
        params.contains(&("payment_id".to_owned(), payment.id.clone())),
        "{href}"
    );
    assert!(
        params.contains(&("status".to_owned(), "succeeded".to_owned())),
        "{href}"
    );
    assert_eq!(
        browser.eval("document.referrer").await,
        Ok(serde_json::Value::String(String::new()))
    );
    let token = created.hosted_url.rsplit('/').next().expect("token");
    for request in seen.lock().expect("seen").iter() {
        for secret in [created.client_secret.as_str(), token] {
            assert!(!request.uri.contains(secret), "{request:?}");
            assert!(
                !request.referer.as_deref().unwrap_or("").contains(secret),
                "{request:?}"
            );
        }
    }
    let landing = seen
        .lock()
        .expect("seen")
        .iter()
        .find(|s| s.uri.starts_with("/paid"))
        .cloned()
        .expect("the success page was requested");
    assert!(landing.referer.is_none(), "{landing:?}");
    assert_eq!(status_of(test, created).await, pb::PaymentStatus::Succeeded);
}

/// Where the browser test writes its screenshots: `PAYBRIDGE_TEST_SCREENSHOTS` (a folder, e.g.
/// `docs/images` to renew the README's), or the test target's temporary folder.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    let folder = std::env::var_os("PAYBRIDGE_TEST_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    folder.join(name)
}

async fn paying_with_4242_on_the_hosted_page_lands_on_the_success_page(db: Db) {
    let (test, origin, seen, created) = open_payment(db, "INV-2041").await;
    let mut browser = Browser::launch().await;
    browser.set_viewport(900, 760, false).await;
    open_page(&mut browser, &created.hosted_url).await;
    let shown = browser
        .eval("document.querySelector('main').innerText")
        .await
        .expect("text");
    let shown = shown.as_str().expect("text");
    for expected in [
        "Billing Example & Co",
        "129.00 EUR",
        "Invoice INV-2041 · Pro plan, March",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in {shown:?}");
    }
    assert_eq!(
        browser
            .eval("document.querySelector('.merchant img').naturalWidth > 0")
            .await,
        Ok(serde_json::Value::Bool(true)),
        "the tenant's logo loaded (the policy allows its origin)"
    );
    type_card(&mut browser, CARD_SUCCEEDS).await;
    let desktop = browser.screenshot().await;

    // At 360 px the page fits the screen: nothing wider than the viewport.
    browser.set_viewport(360, 740, true).await;
    browser
        .wait_until(
            STEP,
            "window.innerWidth === 360 && document.documentElement.scrollWidth <= 360",
            "the page fits 360 px",
        )
        .await;
    let phone = browser.screenshot().await;
    // The README shows the SQLite run's (the page is the same on both engines).
    let suffix = match db {
        Db::Sqlite => "",
        Db::Postgres => "-postgres",
    };
    for (name, png) in [
        (format!("hosted-page{suffix}.png"), &desktop),
        (format!("hosted-page-360{suffix}.png"), &phone),
    ] {
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        assert!(png.len() > 10_000, "{name}: {} bytes", png.len());
        std::fs::write(screenshot_path(&name), png).expect("screenshot written");
    }

    browser.click("#pay-button").await;
    lands_on_the_success_page(&mut browser, &test, &origin, &seen, &created).await;

    // The link of a paid payment shows its state and no form.
    browser.navigate(&created.hosted_url).await;
    browser
        .wait_until(
            STEP,
            "document.getElementById('payment-state') !== null",
            "the paid page",
        )
        .await;
    assert_eq!(
        browser
            .eval(
                "[document.getElementById('payment-form') === null, \
                  document.getElementById('payment-state').innerText]"
            )
            .await,
        Ok(serde_json::json!([
            true,
            "This payment is complete. Thank you!"
        ]))
    );
    test.finish().await;
}

async fn the_3ds_card_authenticates_in_the_stand_in_then_succeeds(db: Db) {
    let (test, origin, seen, created) = open_payment(db, "INV-2042").await;
    let mut browser = Browser::launch().await;
    open_page(&mut browser, &created.hosted_url).await;
    type_card(&mut browser, CARD_NEEDS_AUTHENTICATION).await;
    browser.click("#pay-button").await;
    browser
        .wait_until(
            STEP,
            "document.getElementById('stand-in-3ds-complete') !== null",
            "the 3-D Secure challenge",
        )
        .await;
    browser.click("#stand-in-3ds-complete").await;
    lands_on_the_success_page(&mut browser, &test, &origin, &seen, &created).await;
    test.finish().await;
}

async fn a_declined_card_shows_stripes_message_and_a_retry_with_4242_succeeds(db: Db) {
    let (test, origin, seen, created) = open_payment(db, "INV-2043").await;
    let mut browser = Browser::launch().await;
    open_page(&mut browser, &created.hosted_url).await;
    type_card(&mut browser, CARD_DECLINED).await;
    browser.click("#pay-button").await;
    browser
        .wait_until(
            STEP,
            "!document.getElementById('payment-message').hidden && \
             document.getElementById('pay-button').disabled === false",
            "the decline shown",
        )
        .await;
    let message = browser
        .eval("document.getElementById('payment-message').innerText")
        .await
        .expect("message");
    // Stripe's own message, as the Stripe fake answered the confirm.
    assert_eq!(message, serde_json::json!("Your card was declined."));
    assert_eq!(
        browser.eval("location.href").await,
        Ok(serde_json::Value::String(created.hosted_url.clone())),
        "the customer stays on the page"
    );
    // The shop saw the logo's request only, no result page.
    assert!(
        seen.lock()
            .expect("seen")
            .iter()
            .all(|s| s.uri == "/logo.svg")
    );

    type_card(&mut browser, CARD_SUCCEEDS).await;
    browser.click("#pay-button").await;
    lands_on_the_success_page(&mut browser, &test, &origin, &seen, &created).await;
    test.finish().await;
}

on_both_databases!(
    paying_with_4242_on_the_hosted_page_lands_on_the_success_page,
    the_3ds_card_authenticates_in_the_stand_in_then_succeeds,
    a_declined_card_shows_stripes_message_and_a_retry_with_4242_succeeds,
);
