//! Request validation (the domain's parse functions): never panics; accepted values keep their
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paybridge::domain::{
    Amount, Currency, Description, Email, IdempotencyKey, InvoiceId, Metadata, PaymentId,
    RedirectOrigin, RedirectUrl, TenantId,
};

fuzz_target!(|input: (&str, i64, Vec<(String, String)>)| {
    let (text, amount, entries) = input;
    if let Ok(key) = IdempotencyKey::parse(text) {
        assert!((1..=255).contains(&key.as_str().len()));
    }
    let _ = InvoiceId::parse(text);
    let _ = PaymentId::parse(text);
    let _ = TenantId::parse(text);
    let _ = Email::parse(text);
    let _ = Description::parse(text);
    let _ = Currency::parse(text);
    if let Ok(parsed) = Amount::parse(amount) {
        assert!(parsed.minor_units() > 0);
    }
    if let Ok(metadata) = Metadata::parse(entries) {
        assert!(metadata.len() <= 47);
    }
    let _ = RedirectOrigin::parse(text);
    if let Ok(origin) = RedirectOrigin::parse("https://billing.example.com") {
        let _ = RedirectUrl::parse("success_url", text, &[origin]);
    }
});
