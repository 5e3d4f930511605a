//! Identifiers: the caller's idempotency key and invoice id, our payment and refund ids, the
//! tenant id.

use rand::Rng;

use super::checked_string::{check_ascii_text, check_free_text, checked_string};
use super::validation::FieldViolation;

checked_string! {
    /// The caller's idempotency key for `CreateInvoicePayment`: 1–255 printable ASCII
    /// characters.
    ///
    /// It is only ever compared locally (Stripe gets a key derived from the payment id), but it
    /// is kept to Stripe's own limits so that it can be logged and stored without surprises.
    IdempotencyKey
}

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;
    const FIELD: &'static str = "idempotency_key";

    pub fn parse(raw: &str) -> Result<IdempotencyKey, FieldViolation> {
        check_ascii_text(
            Self::FIELD,
            raw,
            Self::MAX_LEN,
            |b| (0x20..=0x7E).contains(&b),
            "must contain only printable ASCII characters (space to ~)",
        )?;
        Ok(IdempotencyKey(raw.to_owned()))
    }
}

checked_string! {
    /// The caller's own invoice id: at most 200 characters, no control or invisible formatting
    /// characters, and no leading or trailing whitespace.
    ///
    /// Surrounding whitespace is refused rather than trimmed: `"INV-1 "` and `"INV-1"` would
    /// otherwise be two invoices, and the one-open-payment-per-invoice guard against double
    /// charges would not see them as the same. Stored exactly as given.
    InvoiceId
}

impl InvoiceId {
    pub const MAX_CHARS: usize = 200;
    const FIELD: &'static str = "invoice_id";

    pub fn parse(raw: &str) -> Result<InvoiceId, FieldViolation> {
        check_free_text(Self::FIELD, raw, Self::MAX_CHARS, "is required")?;
        if raw.trim() != raw {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must not start or end with whitespace",
            ));
        }
        Ok(InvoiceId(raw.to_owned()))
    }
}

/// Declares one of paybridge's own ids: a prefix followed by 26 characters of lowercase base32
/// (RFC 4648 alphabet `a–z2–7`), i.e. 130 random bits — unguessable, so knowing one id tells
/// nothing about another's.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident { prefix: $prefix:literal, noun: $noun:literal }) => {
        checked_string!($(#[$doc])* $name);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id from the thread-local CSPRNG (`rand::rng()`, OS-seeded ChaCha).
            pub fn generate() -> $name {
                $name(random_id(Self::PREFIX))
            }

            /// Parses an id arriving in a request's `id` field.
            pub fn parse(raw: &str) -> Result<$name, FieldViolation> {
                Self::parse_field(raw, "id")
            }

            /// Parses an id arriving in the request field `field`.
            pub fn parse_field(raw: &str, field: &str) -> Result<$name, FieldViolation> {
                check_random_id(raw, field, Self::PREFIX, $noun).map(|()| $name(raw.to_owned()))
            }
        }
    };
}

const RANDOM_ID_LEN: usize = 26;
const RANDOM_ID_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + RANDOM_ID_LEN);
    id.push_str(prefix);
    for _ in 0..RANDOM_ID_LEN {
        id.push(char::from(
            RANDOM_ID_ALPHABET[rng.random_range(0..RANDOM_ID_ALPHABET.len())],
        ));
    }
    id
}

fn check_random_id(raw: &str, field: &str, prefix: &str, noun: &str) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let well_formed = raw.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == RANDOM_ID_LEN && rest.bytes().all(|b| RANDOM_ID_ALPHABET.contains(&b))
    });
    if !well_formed {
        return Err(FieldViolation::new(
            field,
            format!("must be a {noun} id: {prefix:?} followed by 26 characters of a-z and 2-7"),
        ));
    }
    Ok(())
}

random_id! {
    /// paybridge's id for a payment: `pay_` and 130 random bits.
    PaymentId { prefix: "pay_", noun: "payment" }
}

random_id! {
    /// paybridge's id for a refund: `ref_` and 130 random bits.
    RefundId { prefix: "ref_", noun: "refund" }
}

checked_string! {
    /// A tenant's id, as declared in the tenants file: 1–64 characters of `a–z`, `0–9`, `_`,
    /// `-`.
    TenantId
}

impl TenantId {
    pub const MAX_LEN: usize = 64;
    const FIELD: &'static str = "id";

    pub fn parse(raw: &str) -> Result<TenantId, FieldViolation> {
        check_ascii_text(
            Self::FIELD,
            raw,
            Self::MAX_LEN,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-',
            "must contain only a-z, 0-9, '_' and '-'",
        )?;
        Ok(TenantId(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- IdempotencyKey ---

    #[test]
    fn idempotency_key_accepts_one_to_255_printable_ascii() {
        assert_eq!(IdempotencyKey::parse("k").unwrap().as_str(), "k");
        let longest = "a".repeat(255);
        assert_eq!(IdempotencyKey::parse(&longest).unwrap().as_str(), longest);
        let all_printable: String = (0x20u8..=0x7E).map(char::from).collect();
        assert!(IdempotencyKey::parse(&all_printable).is_ok());
    }

    #[test]
    fn idempotency_key_is_required() {
        let err = IdempotencyKey::parse("").unwrap_err();
        assert_eq!(err.field, "idempotency_key");
        assert_eq!(err.description, "is required");
    }

    #[test]
    fn idempotency_key_longer_than_255_is_refused() {
        let err = IdempotencyKey::parse(&"a".repeat(256)).unwrap_err();
        assert_eq!(err.field, "idempotency_key");
        assert!(err.description.contains("255"));
    }

    #[test]
    fn idempotency_key_refuses_control_characters_and_non_ascii() {
        for raw in [
            "a\nb",
            "tab\t",
            "del\u{7F}",
            "\0",
            "café",
            "ключ",
            "\u{200B}",
        ] {
            let err = IdempotencyKey::parse(raw).unwrap_err();
            assert_eq!(err.field, "idempotency_key", "{raw:?}");
            assert!(err.description.contains("printable ASCII"), "{raw:?}");
        }
    }

    // --- InvoiceId ---

    #[test]
    fn invoice_id_accepts_ordinary_ids_including_unicode() {
        for raw in ["INV-2024-0001", "42", "facture n°7", "請求書-1", "a b"] {
            assert_eq!(InvoiceId::parse(raw).unwrap().as_str(), raw);
        }
        assert!(InvoiceId::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn invoice_id_is_required_and_blank_counts_as_missing() {
        for raw in ["", " ", "   \u{3000}"] {
            let err = InvoiceId::parse(raw).unwrap_err();
            assert_eq!(err.field, "invoice_id");
            assert_eq!(err.description, "is required", "{raw:?}");
        }
    }

    #[test]
    fn invoice_id_longer_than_200_characters_is_refused() {
        let err = InvoiceId::parse(&"é".repeat(201)).unwrap_err();
        assert!(err.description.contains("200"));
    }

    #[test]
    fn invoice_id_refuses_control_and_invisible_characters() {
        for raw in [
            "INV\n1",
            "INV\t1",
            "INV\u{0}",
            "INV\u{202E}1",
            "INV\u{200B}1",
        ] {
            let err = InvoiceId::parse(raw).unwrap_err();
            assert!(err.description.contains("control"), "{raw:?}");
        }
    }

    #[test]
    fn invoice_id_with_surrounding_whitespace_is_refused_not_trimmed() {
        for raw in [" INV-1", "INV-1 ", "\u{A0}INV-1"] {
            let err = InvoiceId::parse(raw).unwrap_err();
            assert!(err.description.contains("whitespace"), "{raw:?}");
        }
    }

    // --- PaymentId ---

    #[test]
    fn generated_payment_ids_have_the_documented_shape_and_parse_back() {
        let id = PaymentId::generate();
        assert!(id.as_str().starts_with("pay_"));
        assert_eq!(id.as_str().len(), 30);
        assert_eq!(PaymentId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn generated_payment_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| PaymentId::generate()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn payment_id_parse_refuses_malformed_ids() {
        let good_tail = "abcdefghijklmnopqrstuvwxyz";
        assert!(PaymentId::parse(&format!("pay_{good_tail}")).is_ok());
        for raw in [
            "".to_owned(),
            good_tail.to_owned(),                        // no prefix
            format!("PAY_{good_tail}"),                  // prefix is case-sensitive
            format!("pi_{good_tail}"),                   // a Stripe id
            format!("pay_{}", &good_tail[..25]),         // too short
            format!("pay_{good_tail}a"),                 // too long
            format!("pay_{}", good_tail.to_uppercase()), // uppercase
            format!("pay_{}1", &good_tail[..25]),        // 1 is not base32
            format!("pay_{}é", &good_tail[..24]),        // non-ASCII
        ] {
            let err = PaymentId::parse(&raw).unwrap_err();
            assert_eq!(err.field, "id", "{raw:?}");
        }
    }

    // --- TenantId ---

    #[test]
    fn tenant_id_accepts_lowercase_digits_underscore_hyphen() {
        for raw in ["billing", "orders-eu_2", "a", &"x".repeat(64)] {
            assert_eq!(TenantId::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn tenant_id_refuses_empty_long_and_other_characters() {
        for raw in [
            "",
            &"x".repeat(65),
            "Billing",
            "bill ing",
            "bill.ing",
            "billing/",
            "é",
        ] {
            let err = TenantId::parse(raw).unwrap_err();
            assert_eq!(err.field, "id", "{raw:?}");
        }
    }
}
