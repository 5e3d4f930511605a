//! The return route's query check: never panics; what it accepts has Stripe's shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paybridge::transport::gateway::parse_return_query;

fuzz_target!(|raw: &str| {
    if let Ok(query) = parse_return_query(raw) {
        assert!(raw.len() <= 1024);
        assert!(query.payment_intent().starts_with("pi_"));
        assert!(
            query
                .client_secret()
                .starts_with(&format!("{}_secret_", query.payment_intent()))
        );
    }
});
