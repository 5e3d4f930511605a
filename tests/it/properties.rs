//! Property tests of the parsers that face untrusted input: the return query, the
//! `Stripe-Signature` check, the tenants file, and request validation. CI runs a short campaign
//! (the default 256 cases, or `PROPTEST_CASES`); `scripts/fuzz` runs a long one (and the
//! cargo-fuzz targets in `fuzz/` where a nightly toolchain and cargo-fuzz are installed).

use std::time::Duration;

use paybridge::adapters::stripe::webhook::{SignatureError, WebhookVerifier, sign};
use paybridge::domain::{
    Amount, Currency, Description, Email, IdempotencyKey, InvoiceId, Metadata, PaymentId,
    RedirectOrigin, RedirectUrl, TenantId,
};
use paybridge::tenants::Tenants;
use paybridge::transport::gateway::{ReturnRefusal, parse_return_query};
use proptest::prelude::*;
use secrecy::SecretString;

fn id_chars() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{1,40}"
}

/// Bytes a hostile query may hold: printable ASCII plus the troublemakers.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,300}",
        "[ -~]{0,300}",
        "[a-z_=&%0-9+;#?]{0,200}",
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #[test]
    fn return_query_never_panics_and_accepts_only_stripes_shape(raw in hostile_text()) {
        if let Ok(query) = parse_return_query(&raw) {
            prop_assert!(raw.len() <= 1024);
            let intent = query.payment_intent();
            prop_assert!(intent.starts_with("pi_"));
            prop_assert!(intent.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            let secret_prefix = format!("{intent}_secret_");
            prop_assert!(query.client_secret().starts_with(&secret_prefix));
            prop_assert!(query.redirect_status().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let shown = format!("{:?}", query);
            prop_assert!(!shown.contains(query.client_secret()));
        }
    }

    #[test]
    fn stripes_own_return_queries_parse_in_any_order(
        id in id_chars(), secret in id_chars(), status in "[a-z_]{0,20}", order in 0usize..6,
    ) {
        let intent = format!("pi_{id}");
        let parts = [
            format!("payment_intent={intent}"),
            format!("payment_intent_client_secret={intent}_secret_{secret}"),
            format!("redirect_status={status}"),
        ];
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let raw = orders[order].iter().map(|&i| parts[i].as_str()).collect::<Vec<_>>().join("&");
        let query = parse_return_query(&raw).expect("Stripe's query parses");
        prop_assert_eq!(query.payment_intent(), intent.as_str());
        prop_assert_eq!(query.redirect_status(), status.as_str());
    }

    #[test]
    fn an_extra_or_repeated_parameter_is_refused(
        id in id_chars(), extra_key in "[a-z_]{1,20}", extra_value in "[a-z0-9]{0,10}",
    ) {
        let base = format!("payment_intent=pi_{id}&payment_intent_client_secret=pi_{id}_secret_x");
        let raw = format!("{base}&{extra_key}={extra_value}");
        let refused = parse_return_query(&raw).err();
        let known = ["payment_intent", "payment_intent_client_secret", "redirect_status"];
        if extra_key == "redirect_status" {
            prop_assert!(refused.is_none() || refused == Some(ReturnRefusal::BadStatus));
        } else if known.contains(&extra_key.as_str()) {
            prop_assert_eq!(refused, Some(ReturnRefusal::Repeated));
        } else {
            prop_assert_eq!(refused, Some(ReturnRefusal::Unknown));
        }
    }

    #[test]
    fn signature_header_parsing_never_panics_and_never_passes_garbage(
        header in hostile_text(), payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let verifier = WebhookVerifier::new(
            vec![SecretString::from("whsec_prop".to_owned())],
            Duration::from_secs(300),
        );
        // A random header cannot carry a valid HMAC of this payload.
        prop_assert!(verifier.verify(&payload, &header, 1_700_000_000).is_err());
    }

    #[test]
    fn a_signature_verifies_exactly_for_its_payload_secret_and_time(
        payload in proptest::collection::vec(any::<u8>(), 0..500),
        flip in any::<prop::sample::Index>(),
        skew in -1000i64..1000,
        rotated in any::<bool>(),
    ) {
        let (current, previous) = ("whsec_current", "whsec_previous");
        let now = 1_700_000_000i64;
        let signed_with = if rotated { previous } else { current };
        let header = sign(&payload, signed_with, now + skew);
        let verifier = WebhookVerifier::new(
            vec![SecretString::from(current.to_owned()), SecretString::from(previous.to_owned())],
            Duration::from_secs(300),
        );
        let result = verifier.verify(&payload, &header, now);
        if skew.abs() <= 300 {
            prop_assert_eq!(result, Ok(()));
        } else {
            prop_assert_eq!(result, Err(SignatureError::Stale));
        }
        // One changed byte of the payload breaks it; so does a secret it was not signed with.
        if !payload.is_empty() && skew.abs() <= 300 {
            let mut tampered = payload.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
            prop_assert_eq!(verifier.verify(&tampered, &header, now), Err(SignatureError::Mismatch));
            let other = WebhookVerifier::new(
                vec![SecretString::from("whsec_other".to_owned())],
                Duration::from_secs(300),
            );
            prop_assert_eq!(other.verify(&payload, &header, now), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn tenants_file_parsing_never_panics(text in hostile_text()) {
        let _ = Tenants::parse_toml(&text);
    }

    #[test]
    fn tenants_file_with_mutated_values_is_refused_with_a_one_line_reason(
        id in "[ -~]{0,70}", hash in "[0-9a-fA-Fx]{0,70}", origin in "[ -~]{0,60}", url in "[ -~]{0,60}",
    ) {
        let text = format!(
            "[[tenants]]\nid = {id:?}\ntoken_sha256 = {hash:?}\nallowed_redirect_origins = [{origin:?}]\n\
             success_url = {url:?}\nfailure_url = {url:?}\n"
        );
        match Tenants::parse_toml(&text) {
            Ok(tenants) => {
                let tenant = tenants.iter().next().expect("one tenant");
                prop_assert!(tenant.id().as_str().len() <= 64);
                prop_assert_eq!(hash.len(), 64);
            }
            Err(error) => {
                let line = error.to_string();
                prop_assert!(!line.contains('\n'), "{}", line);
            }
        }
    }

    #[test]
    fn validation_never_panics_and_keeps_its_invariants(
        text in hostile_text(), amount in any::<i64>(),
        entries in proptest::collection::vec(("[ -~]{0,50}", "[ -~]{0,60}"), 0..60),
    ) {
        if let Ok(key) = IdempotencyKey::parse(&text) {
            prop_assert!((1..=255).contains(&key.as_str().len()));
            prop_assert!(key.as_str().bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
        let _ = InvoiceId::parse(&text);
        let _ = PaymentId::parse(&text);
        let _ = TenantId::parse(&text);
        let _ = Email::parse(&text);
        let _ = Description::parse(&text);
        if let Ok(currency) = Currency::parse(&text) {
            prop_assert!(currency.as_str().bytes().all(|b| b.is_ascii_lowercase()));
            prop_assert_eq!(currency.as_str().len(), 3);
        }
        match Amount::parse(amount) {
            Ok(parsed) => prop_assert!(parsed.minor_units() > 0 && amount == parsed.minor_units()),
            Err(_) => prop_assert!(amount <= 0 || amount > 99_999_999),
        }
        if let Ok(metadata) = Metadata::parse(entries.clone()) {
            prop_assert!(metadata.len() <= 47);
        }
        let allowed = [RedirectOrigin::parse("https://billing.example.com").expect("origin")];
        if let Ok(url) = RedirectUrl::parse("success_url", &text, &allowed) {
            prop_assert!(url.as_str().starts_with("https://billing.example.com"));
        }
        let _ = RedirectOrigin::parse(&text);
    }
}
