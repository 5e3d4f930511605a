//! The gateway behind an ingress (`PAYBRIDGE_GATEWAY_TRUSTED_PROXIES`): the rate limit and the
//! access log key on the client a trusted proxy forwards, and on the TCP peer otherwise, whatever
//! the request's X-Forwarded-For says.

use crate::support::gateway::{
    GatewayOptions, GatewayTest, assert_no_redirect, assert_redirect, captured_logs,
};
use crate::support::{Db, Options};
use paybridge::transport::gateway::TrustedProxies;

/// One request per second per client, three at once.
fn limited(trusted: &str) -> GatewayOptions {
    GatewayOptions {
        rate_limit: 1,
        rate_burst: 3,
        trusted_proxies: TrustedProxies::parse(trusted).expect("trusted proxies"),
        ..GatewayOptions::default()
    }
}

/// The access log's lines for returns.
fn access_lines() -> Vec<String> {
    captured_logs()
        .lines()
        .filter(|line| {
            line.contains("paybridge::gateway::access") && line.contains("/payment/return")
        })
        .map(str::to_owned)
        .collect()
}

async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing(db: Db) {
    // The test's requests come from 127.0.0.1, which is not a trusted proxy here.
    let test = GatewayTest::spawn_with(db, Options::default(), limited("10.0.0.0/8")).await;
    let created = test.create("INV-XFF-1").await;
    for n in 0..3 {
        let spoofed = format!("198.51.100.{n}");
        assert_redirect(
            &test
                .return_with_headers(&created, &[("x-forwarded-for", &spoofed)])
                .await,
        );
    }
    // A fourth address, a Forwarded header: still the peer's one bucket, now empty.
    let limited = test
        .return_with_headers(
            &created,
            &[
                ("x-forwarded-for", "198.51.100.3"),
                ("forwarded", "for=198.51.100.4"),
            ],
        )
        .await;
    assert_no_redirect(&limited, 429);
    let lines = access_lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in &lines {
        assert!(line.contains("client=127.0.0.1"), "{line}");
        assert!(
            !line.contains("198.51.100."),
            "a spoofed address was logged: {line}"
        );
    }
    test.finish().await;
}

async fn behind_a_trusted_proxy_two_customers_get_two_buckets(db: Db) {
    // The test plays the ingress: 127.0.0.1 is trusted, and it forwards two customers.
    let test = GatewayTest::spawn_with(db, Options::default(), limited("127.0.0.0/8")).await;
    let created = test.create("INV-XFF-2").await;
    // The first customer wrote a fake hop of its own; the ingress appended what it saw.
    let first = [("x-forwarded-for", "203.0.113.99, 198.51.100.1")];
    let second = [("x-forwarded-for", "198.51.100.2")];
    for _ in 0..3 {
        assert_redirect(&test.return_with_headers(&created, &first).await);
    }
    assert_no_redirect(&test.return_with_headers(&created, &first).await, 429);
    // The fake hop the first customer wrote is not a bucket of its own either.
    assert_no_redirect(
        &test
            .return_with_headers(
                &created,
                &[("x-forwarded-for", "203.0.113.77, 198.51.100.1")],
            )
            .await,
        429,
    );
    // The second customer has its own bucket, full.
    for _ in 0..3 {
        assert_redirect(&test.return_with_headers(&created, &second).await);
    }
    assert_no_redirect(&test.return_with_headers(&created, &second).await, 429);
    let lines = access_lines();
    let of = |client: &str| {
        lines
            .iter()
            .filter(|line| line.contains(&format!("client={client}")))
            .count()
    };
    assert_eq!(
        (of("198.51.100.1"), of("198.51.100.2")),
        (5, 4),
        "{lines:#?}"
    );
    assert_eq!(
        of("127.0.0.1") + of("203.0.113.99") + of("203.0.113.77"),
        0,
        "{lines:#?}"
    );
    test.finish().await;
}

on_both_databases!(
    a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing,
    behind_a_trusted_proxy_two_customers_get_two_buckets,
);
