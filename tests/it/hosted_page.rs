//! The hosted payment page over HTTP (issue 18): the link a create hands out, the page's
//! security headers and body, one 404 for every bad token (unknown, expired, tampered,
//! malformed), 405 for other methods, expiry and CreatePaymentLink, tenants kept apart, and no
//! client secret or token in any log line.

use std::time::Duration;

use crate::support::gateway::{GatewayOptions, GatewayTest};
use crate::support::{
    BILLING_TOKEN, Db, GATEWAY_TOKEN, ORDERS_TOKEN, Options, as_tenant, count_rows, create_request,
    eventually, sha256_hex,
};
use paybridge::pb::v1 as pb;

/// A gateway whose core hands out links to it.
async fn spawn(db: Db, gateway: GatewayOptions) -> GatewayTest {
    GatewayTest::spawn_with(
        db,
        Options::default(),
        GatewayOptions {
            core_points_here: true,
            ..gateway
        },
    )
    .await
}

fn duration(of: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(of.as_secs()).expect("seconds"),
        nanos: i32::try_from(of.subsec_nanos()).expect("nanos"),
    }
}

/// A create asking for a hosted page link working for `ttl` (the default when `None`).
fn hosted_request(invoice_id: &str, ttl: Option<Duration>) -> pb::CreateInvoicePaymentRequest {
    let mut request = create_request(&format!("key-{invoice_id}"), invoice_id);
    request.hosted_page = true;
    request.hosted_page_ttl = ttl.map(duration);
    request
}

/// The path of a link (`/pay/<token>`), checked to be under this gateway; its token is
/// remembered as a secret no log may show.
fn link_path(test: &GatewayTest, url: &str) -> String {
    let path = url
        .strip_prefix(&test.url(""))
        .unwrap_or_else(|| panic!("{url} is not under the gateway {}", test.url("")));
    let token = path.strip_prefix("/pay/").expect("a /pay/ link");
    assert_eq!(token.len(), 43, "256 bits, base64url: {token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    test.remember_secret(token);
    path.to_owned()
}

fn unix_seconds_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

async fn create_payment_link(
    test: &GatewayTest,
    token: &str,
    payment_id: &str,
    ttl: Option<Duration>,
) -> Result<pb::PaymentLink, tonic::Status> {
    test.app
        .client
        .clone()
        .create_payment_link(as_tenant(
            token,
            pb::CreatePaymentLinkRequest {
                payment_id: payment_id.to_owned(),
                ttl: ttl.map(duration),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn a_hosted_link_serves_the_page_with_its_security_headers(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let created = test.create_with(hosted_request("INV-H1", None)).await;
    let secret = created.client_secret.clone();
    let path = link_path(&test, &created.hosted_url);
    let expires = created.hosted_url_expires_at.expect("expiry");
    let in_a_day = unix_seconds_now() + 24 * 3600;
    assert!(
        (in_a_day - 60..=in_a_day + 5).contains(&expires.seconds),
        "default TTL is 24 h: {expires:?}"
    );

    let response = test.get(&path).await;
    assert_eq!(response.status().as_u16(), 200, "{response:?}");
    let headers = response.headers().clone();
    let stripe = &test.app.stripe.base_url;
    assert_eq!(
        headers["content-security-policy"],
        format!(
            "default-src 'none'; script-src 'self' {stripe}; style-src 'self'; img-src 'self'; \
             frame-src {stripe}; connect-src {stripe}; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'"
        )
        .as_str()
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let body = response.text().await.expect("body");

    // What the page shows and hands to its script.
    assert!(body.contains("Billing Example &amp; Co"), "{body}");
    assert!(body.contains("42.00 USD"), "{body}");
    assert!(body.contains("Invoice for tests"), "{body}");
    assert!(body.contains(&format!("data-client-secret=\"{secret}\"")));
    assert!(body.contains("data-publishable-key=\"pk_test_paybridge\""));
    assert!(body.contains(&format!(
        "data-return-url=\"{}\"",
        test.url("/payment/return")
    )));
    assert!(body.contains(&format!(
        "<script src=\"{}\" defer>",
        test.app.stripe.stripe_js_url()
    )));
    // No inline script or style: every script has a src, no style element or attribute.
    assert_eq!(
        body.matches("<script").count(),
        body.matches("<script src=\"").count()
    );
    assert!(
        !body.contains("<style") && !body.contains("style="),
        "{body}"
    );

    // The page's own files, from the gateway, under a versioned path.
    for (file, content_type) in [
        ("pay.js", "text/javascript; charset=utf-8"),
        ("pay.css", "text/css; charset=utf-8"),
    ] {
        let at = body
            .split('"')
            .find(|part| part.starts_with("/assets/") && part.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not linked: {body}"));
        let version = at.split('/').nth(2).expect("version");
        assert_eq!(version.len(), 16, "{at}");
        let asset = test.get(at).await;
        assert_eq!(asset.status().as_u16(), 200, "{at}");
        assert_eq!(asset.headers()["content-type"], content_type);
        assert_eq!(
            asset.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!asset.text().await.expect("asset").is_empty());
        let stale = test.get(&at.replace(version, "0000000000000000")).await;
        assert_eq!(stale.status().as_u16(), 404);
    }

    // The access log shows the route, never the token.
    let logs = crate::support::gateway::captured_logs();
    assert!(logs.contains("/pay/…"), "no access log line for the page");
    test.finish().await;
}

/// Status, body and headers but the date.
async fn answer_of(test: &GatewayTest, path: &str) -> (u16, Vec<(String, String)>, String) {
    let started = std::time::Instant::now();
    let response = test.get(path).await;
    let took = started.elapsed();
    assert!(
        took >= paybridge::transport::gateway::NOT_FOUND_FLOOR,
        "{path}: a bad token answered in {took:?}"
    );
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().expect("ascii").to_owned()))
        .collect();
    headers.sort();
    (status, headers, response.text().await.expect("body"))
}

async fn unknown_expired_tampered_and_malformed_tokens_get_the_same_404(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let expiring = test
        .create_with(hosted_request("INV-H2", Some(Duration::from_secs(1))))
        .await;
    let expiring_path = link_path(&test, &expiring.hosted_url);
    let working = test.create_with(hosted_request("INV-H3", None)).await;
    let working_path = link_path(&test, &working.hosted_url);
    let token = working_path.strip_prefix("/pay/").expect("token");
    let flipped = if token.ends_with('A') { 'B' } else { 'A' };
    let tampered = format!("/pay/{}{flipped}", &token[..token.len() - 1]);
    let unknown = format!("/pay/{}", "Zz9-_".repeat(9).get(..43).expect("43"));

    // The expired link, once past its second.
    eventually(Duration::from_secs(15), || async {
        match test.get(&expiring_path).await.status().as_u16() {
            404 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the 1 s link answers 404 once expired");

    let reference = answer_of(&test, &unknown).await;
    assert_eq!(reference.0, 404);
    assert!(
        reference.2.contains("not valid or has expired"),
        "{}",
        reference.2
    );
    for bad in [
        expiring_path.clone(),
        tampered,
        format!("/pay/{}", &token[..42]),
        format!("/pay/{token}A"),
        "/pay/x".to_owned(),
        format!("/pay/{}%41", &token[..40]),
        format!("/pay/{}/{}", &token[..20], &token[21..]),
        format!("/pay/{token}/"),
    ] {
        assert_eq!(answer_of(&test, &bad).await, reference, "{bad}");
    }
    // The working link still works.
    assert_eq!(test.get(&working_path).await.status().as_u16(), 200);
    test.finish().await;
}

async fn other_methods_get_405(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let created = test.create_with(hosted_request("INV-H4", None)).await;
    let path = link_path(&test, &created.hosted_url);
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
        reqwest::Method::HEAD,
    ] {
        let response = test
            .http
            .request(method.clone(), test.url(&path))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET", "{method}");
    }
    test.finish().await;
}

async fn an_expired_link_is_404_and_create_payment_link_gives_a_working_one(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let created = test
        .create_with(hosted_request("INV-H5", Some(Duration::from_secs(5))))
        .await;
    let payment = created.payment.clone().expect("payment");
    let path = link_path(&test, &created.hosted_url);
    let expires = created.hosted_url_expires_at.expect("expiry");
    assert!((unix_seconds_now()..=unix_seconds_now() + 6).contains(&expires.seconds));
    assert_eq!(test.get(&path).await.status().as_u16(), 200);
    eventually(Duration::from_secs(20), || async {
        match test.get(&path).await.status().as_u16() {
            404 => Ok(()),
            other => Err(other),
        }
    })
    .await
    .expect("the 5 s link answers 404 once expired");

    // The store holds the token's hash, never the token; the janitor's delete removes the
    // expired link (on this engine's SQL).
    let token = path.strip_prefix("/pay/").expect("token");
    let url = &test.app.database_url;
    let rows_with = |column_value: String| {
        format!("select count(*) from payment_link where token_sha256 = '{column_value}'")
    };
    assert_eq!(count_rows(url, &rows_with(sha256_hex(token))).await, 1);
    // (The token itself is not queried for: this query's own log line would show it.)
    assert_eq!(
        count_rows(url, "select count(*) from payment_link").await,
        1,
        "the one row is the hash's"
    );
    let store = paybridge::adapters::store::Store::connect(url, 2)
        .await
        .expect("store");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    use paybridge::app::ports::PaymentLinks;
    assert_eq!(
        store
            .delete_expired_payment_links(now_ms)
            .await
            .expect("deleted"),
        1
    );
    store.close().await;
    assert_eq!(
        count_rows(url, "select count(*) from payment_link").await,
        0
    );

    let link = create_payment_link(&test, BILLING_TOKEN, &payment.id, None)
        .await
        .expect("a new link");
    let new_path = link_path(&test, &link.url);
    assert_ne!(new_path, path);
    let response = test.get(&new_path).await;
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains(&format!("data-client-secret=\"{}\"", created.client_secret)));
    // The old link stays expired.
    assert_eq!(test.get(&path).await.status().as_u16(), 404);

    // The same create replayed hands out another link to the same payment.
    let replayed = test
        .create_with(hosted_request("INV-H5", Some(Duration::from_secs(60))))
        .await;
    assert!(!replayed.created);
    let replayed_path = link_path(&test, &replayed.hosted_url);
    assert_ne!(replayed_path, new_path);
    assert_eq!(test.get(&replayed_path).await.status().as_u16(), 200);
    test.finish().await;
}

async fn links_are_the_tenants_own_and_only_the_gateway_resolves_them(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let created = test.create_with(hosted_request("INV-H6", None)).await;
    let payment = created.payment.clone().expect("payment");
    let path = link_path(&test, &created.hosted_url);
    let token = path.strip_prefix("/pay/").expect("token").to_owned();

    let refused = create_payment_link(&test, ORDERS_TOKEN, &payment.id, None)
        .await
        .expect_err("another tenant's payment");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    // A tenant may not resolve a link (nor may anyone without a credential)...
    for credential in [Some(BILLING_TOKEN), Some(ORDERS_TOKEN), None] {
        let request = pb::ResolvePaymentLinkRequest {
            token: token.clone(),
        };
        let request = match credential {
            Some(credential) => as_tenant(credential, request),
            None => tonic::Request::new(request),
        };
        let refused = test
            .app
            .client
            .clone()
            .resolve_payment_link(request)
            .await
            .expect_err("not the gateway");
        let expected = if credential.is_some() {
            tonic::Code::PermissionDenied
        } else {
            tonic::Code::Unauthenticated
        };
        assert_eq!(refused.code(), expected, "{credential:?}: {refused:?}");
        assert!(!refused.message().contains(&created.client_secret));
    }
    // ...the gateway may.
    let page = test
        .app
        .client
        .clone()
        .resolve_payment_link(as_tenant(
            GATEWAY_TOKEN,
            pb::ResolvePaymentLinkRequest { token },
        ))
        .await
        .expect("the gateway resolves")
        .into_inner();
    assert_eq!(page.payment.expect("payment").id, payment.id);
    assert_eq!(page.tenant_display_name, "Billing Example & Co");
    assert_eq!(page.client_secret, created.client_secret);
    assert_eq!(test.get(&path).await.status().as_u16(), 200);
    test.finish().await;
}

async fn a_cancelled_payments_page_shows_its_state_and_no_form(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    let created = test.create_with(hosted_request("INV-H7", None)).await;
    let payment = created.payment.clone().expect("payment");
    let path = link_path(&test, &created.hosted_url);
    test.app.cancel(&payment.id).await.expect("cancelled");

    let response = test.get(&path).await;
    assert_eq!(response.status().as_u16(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains("This payment was cancelled"), "{body}");
    assert!(
        !body.contains("<form") && !body.contains("<script"),
        "{body}"
    );
    assert!(!body.contains(&created.client_secret));

    let refused = create_payment_link(&test, BILLING_TOKEN, &payment.id, None)
        .await
        .expect_err("not open");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    test.finish().await;
}

async fn link_lifetimes_are_checked(db: Db) {
    let test = spawn(db, GatewayOptions::default()).await;
    for (ttl, hosted) in [
        (Some(Duration::from_secs(8 * 86_400)), true),
        (Some(Duration::ZERO), true),
        (Some(Duration::from_secs(60)), false),
    ] {
        let mut request = hosted_request("INV-H8", ttl);
        request.hosted_page = hosted;
        let refused = test.app.create(request).await.expect_err("refused");
        assert_eq!(
            crate::support::violated_fields(&refused),
            ["hosted_page_ttl"],
            "{ttl:?} {hosted}"
        );
    }
    let created = test.create("INV-H8").await;
    assert!(created.hosted_url.is_empty() && created.hosted_url_expires_at.is_none());
    let payment = created.payment.expect("payment");
    let refused = create_payment_link(
        &test,
        BILLING_TOKEN,
        &payment.id,
        Some(Duration::from_secs(7 * 86_400 + 1)),
    )
    .await
    .expect_err("too long");
    assert_eq!(crate::support::violated_fields(&refused), ["ttl"]);
    // A payment created without a link gets none at the gateway either.
    assert_eq!(test.get("/pay/").await.status().as_u16(), 404);
    test.finish().await;
}

async fn the_page_is_rate_limited_per_client_like_returns(db: Db) {
    let test = spawn(
        db,
        GatewayOptions {
            rate_limit: 1,
            rate_burst: 2,
            ..GatewayOptions::default()
        },
    )
    .await;
    // Three at once from one address: the burst lets two through, the third is refused.
    let bad = format!("/pay/{}", "a".repeat(43));
    let (a, b, c) = tokio::join!(test.get(&bad), test.get(&bad), test.get(&bad));
    let mut statuses = [a, b, c].map(|response| response.status().as_u16());
    statuses.sort_unstable();
    assert_eq!(statuses, [404, 404, 429]);
    test.finish().await;
}

on_both_databases!(
    a_hosted_link_serves_the_page_with_its_security_headers,
    unknown_expired_tampered_and_malformed_tokens_get_the_same_404,
    other_methods_get_405,
    an_expired_link_is_404_and_create_payment_link_gives_a_working_one,
    links_are_the_tenants_own_and_only_the_gateway_resolves_them,
    a_cancelled_payments_page_shows_its_state_and_no_form,
    link_lifetimes_are_checked,
    the_page_is_rate_limited_per_client_like_returns,
);
