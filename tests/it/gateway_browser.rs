//! A real browser through the return: headless Chromium (Debian's `chromium`) leaves a checkout
//! page for the bank's 3-D Secure page, which sends it to the gateway's return URL as Stripe
//! would; the gateway sends it on to the tenant's success page, which this test serves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::browser::chromium;
use crate::support::gateway::{GatewayOptions, GatewayTest, status_of};
use crate::support::localstripe::CARD_NEEDS_AUTHENTICATION;
use crate::support::{Db, Options, create_request};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Html;

/// One request the tenant's pages received: path with query, and its `Referer`.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    referer: Option<String>,
}

#[derive(Clone, Default)]
struct Pages {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Where the checkout page sends the browser (the bank's page).
    next: Arc<Mutex<String>>,
}

/// The page script writes what the browser knows into the DOM, for `--dump-dom`.
const RESULT_PAGE: &str = "<!doctype html><html><body><p id=\"out\"></p><script>\
    document.getElementById('out').textContent = \
    'HREF=' + location.href + ' REFERRER=' + (document.referrer || 'none') + ' END';\
    </script></body></html>";

async fn record(State(pages): State<Pages>, request: Request) -> Html<String> {
    let uri = request.uri().to_string();
    let referer = request
        .headers()
        .get(header::REFERER)
        .map(|v| v.to_str().unwrap_or("(non-ascii)").to_owned());
    pages.seen.lock().expect("seen").push(Seen {
        uri: uri.clone(),
        referer,
    });
    if uri.starts_with("/checkout") {
        let next = serde_json::to_string(&*pages.next.lock().expect("next")).expect("json");
        Html(format!(
            "<!doctype html><html><body><p>Redirecting to your bank…</p>\
             <script>location.href = {next};</script></body></html>"
        ))
    } else {
        Html(RESULT_PAGE.to_owned())
    }
}

/// Serves the tenant's pages on a free port.
async fn serve_pages() -> (SocketAddr, Pages) {
    let pages = Pages::default();
    let app = axum::Router::new()
        .fallback(record)
        .with_state(pages.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, pages)
}

/// Opens `url` in a fresh headless Chromium and returns the final page's DOM.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn a_browser_lands_on_the_success_page_without_leaking_the_client_secret(db: Db) {
    chromium(); // fails here, clearly, when the browser is missing
    let (pages_addr, pages) = serve_pages().await;
    let origin = format!("http://{pages_addr}");
    let test = GatewayTest::spawn_with(
        db,
        Options {
            extra_redirect_origin: Some(origin.clone()),
            ..Options::default()
        },
        GatewayOptions::default(),
    )
    .await;
    let mut request = create_request("browser-1", "INV-B1");
    request.success_url = format!("{origin}/paid");
    request.failure_url = format!("{origin}/payment-failed");
    let created = test.create_with(request).await;
    let payment = created.payment.clone().expect("payment");
    let secret = created.client_secret.clone();

    let confirmed = test.pay(&created, CARD_NEEDS_AUTHENTICATION).await;
    let bank_page = confirmed["next_action"]["redirect_to_url"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no redirect_to_url: {confirmed}"));
    *pages.next.lock().expect("next") = format!("{bank_page}&success=true");

    let dom = dump_dom(&format!("{origin}/checkout")).await;
    let shown = dom
        .split("HREF=")
        .nth(1)
        .and_then(|rest| rest.split(" END").next())
        .unwrap_or_else(|| panic!("the success page did not run: {dom}"));
    // The DOM dump escapes `&` in text.
    let shown = shown.replace("&amp;", "&");
    let (href, referrer) = shown.split_once(" REFERRER=").expect("both values");
    let expected = format!("{origin}/paid?");
    assert!(href.starts_with(&expected), "landed on {href}");
    let final_url = url::Url::parse(href).expect("final url");
    let params: Vec<(String, String)> = final_url.query_pairs().into_owned().collect();
    assert!(
        params.contains(&("payment_id".to_owned(), payment.id.clone())),
        "{href}"
    );
    assert!(
        params.contains(&("status".to_owned(), "succeeded".to_owned())),
        "{href}"
    );
    assert!(
        !href.contains(&secret),
        "the final URL carries the client secret"
    );
    assert!(
        !referrer.contains(&secret),
        "document.referrer carries the secret"
    );

    let seen = pages.seen.lock().expect("seen").clone();
    let landing = seen
        .iter()
        .find(|s| s.uri.starts_with("/paid"))
        .unwrap_or_else(|| panic!("the success page was never requested: {seen:?}"));
    assert!(
        landing.referer.is_none(),
        "the success page got a Referer: {:?}",
        landing.referer
    );
    for request in &seen {
        assert!(!request.uri.contains(&secret), "{request:?}");
        assert!(
            !request.referer.as_deref().unwrap_or("").contains(&secret),
            "{request:?}"
        );
    }
    assert_eq!(
        status_of(&test, &created).await,
        paybridge::pb::v1::PaymentStatus::Succeeded
    );
    test.finish().await;
}

on_both_databases!(a_browser_lands_on_the_success_page_without_leaking_the_client_secret);
