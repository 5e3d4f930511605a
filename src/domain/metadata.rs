//! The caller's metadata, which paybridge passes on to the PaymentIntent.

use std::collections::BTreeMap;

use super::ids::{InvoiceId, PaymentId, TenantId};
use super::validation::{FieldViolation, is_forbidden_char};

/// Caller metadata within Stripe's limits, leaving room for the keys paybridge adds.
///
/// Stripe allows 50 keys, keys up to 40 characters without `[` or `]`, values up to 500
/// characters. paybridge adds `paybridge_payment_id`, `invoice_id` and `tenant` to every
/// PaymentIntent and later checks them when a payment comes back, so a caller may not set those
/// keys (nor any other `paybridge_` key, kept for future use) and may set at most 47.
///
/// Empty values are refused: Stripe reads an empty value as "unset this key", so the intent would
/// silently differ from what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Stripe's limit on keys per object.
    pub const STRIPE_MAX_KEYS: usize = 50;
    /// What is left for the caller once paybridge's keys are in.
    pub const MAX_CALLER_KEYS: usize = Self::STRIPE_MAX_KEYS - Self::RESERVED_KEYS.len();
    pub const MAX_KEY_CHARS: usize = 40;
    pub const MAX_VALUE_CHARS: usize = 500;

    pub const PAYMENT_ID_KEY: &'static str = "paybridge_payment_id";
    pub const INVOICE_ID_KEY: &'static str = "invoice_id";
    pub const TENANT_KEY: &'static str = "tenant";
    /// The keys paybridge sets on every PaymentIntent.
    pub const RESERVED_KEYS: [&'static str; 3] =
        [Self::PAYMENT_ID_KEY, Self::INVOICE_ID_KEY, Self::TENANT_KEY];
    const RESERVED_PREFIX: &'static str = "paybridge_";
    const FIELD: &'static str = "metadata";

    /// Checks every entry; reports the first problem in key order (the order is stable, so the
    /// same request always gets the same answer). A key's problem names `metadata[<key>]`.
    pub fn parse<I>(entries: I) -> Result<Metadata, FieldViolation>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let map: BTreeMap<String, String> = entries.into_iter().collect();
        if map.len() > Self::MAX_CALLER_KEYS {
            return Err(FieldViolation::new(
                Self::FIELD,
                format!(
                    "must have at most {} keys ({} of Stripe's {} are set by paybridge)",
                    Self::MAX_CALLER_KEYS,
                    Self::RESERVED_KEYS.len(),
                    Self::STRIPE_MAX_KEYS
                ),
            ));
        }
        for (key, value) in &map {
            Self::check_entry(key, value)?;
        }
        Ok(Metadata(map))
    }

    fn check_entry(key: &str, value: &str) -> Result<(), FieldViolation> {
        let field = || format!("{}[{}]", Self::FIELD, Self::printable_key(key));
        if key.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "keys must not be empty"));
        }
        if key.chars().count() > Self::MAX_KEY_CHARS {
            return Err(FieldViolation::new(
                field(),
                format!("key must be at most {} characters", Self::MAX_KEY_CHARS),
            ));
        }
        if key.contains(['[', ']']) {
            return Err(FieldViolation::new(
                field(),
                "key must not contain '[' or ']'",
            ));
        }
        if key.chars().any(is_forbidden_char) {
            return Err(FieldViolation::new(
                field(),
                "key must not contain control or invisible formatting characters",
            ));
        }
        // Case-insensitive, so that `Tenant` or `PAYBRIDGE_x` cannot pass for ours.
        let lower = key.to_ascii_lowercase();
        if lower.starts_with(Self::RESERVED_PREFIX) || Self::RESERVED_KEYS.contains(&lower.as_str())
        {
            return Err(FieldViolation::new(
                field(),
                format!(
                    "key is reserved: paybridge sets {}, {} and {}, and keeps the \
                     \"paybridge_\" prefix",
                    Self::PAYMENT_ID_KEY,
                    Self::INVOICE_ID_KEY,
                    Self::TENANT_KEY
                ),
            ));
        }
        if value.is_empty() {
            return Err(FieldViolation::new(
                field(),
                "value must not be empty (Stripe reads an empty value as \"unset\")",
            ));
        }
        if value.chars().count() > Self::MAX_VALUE_CHARS {
            return Err(FieldViolation::new(
                field(),
                format!("value must be at most {} characters", Self::MAX_VALUE_CHARS),
            ));
        }
        Ok(())
    }

    /// Keeps a field path readable when the key itself is the problem (too long, controls).
    fn printable_key(key: &str) -> String {
        let shown: String = key
            .chars()
            .take(Self::MAX_KEY_CHARS)
            .map(|c| if is_forbidden_char(c) { '?' } else { c })
            .collect();
        if key.chars().count() > Self::MAX_KEY_CHARS {
            format!("{shown}…")
        } else {
            shown
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    /// The metadata to send to Stripe: the caller's entries plus paybridge's three keys.
    /// Cannot exceed Stripe's limits: the caller's part was checked to leave room.
    pub fn to_stripe_metadata(
        &self,
        payment_id: &PaymentId,
        invoice_id: &InvoiceId,
        tenant: &TenantId,
    ) -> BTreeMap<String, String> {
        let mut map = self.0.clone();
        map.insert(Self::PAYMENT_ID_KEY.to_owned(), payment_id.to_string());
        map.insert(Self::INVOICE_ID_KEY.to_owned(), invoice_id.to_string());
        map.insert(Self::TENANT_KEY.to_owned(), tenant.to_string());
        map
    }
}

/// The metadata of a Stripe Refund: the caller's entries (checked as a payment's are) plus
/// `paybridge_refund_id`, `paybridge_payment_id` and `tenant`, which tie it to its refund.
pub fn refund_stripe_metadata(
    caller: &BTreeMap<String, String>,
    refund_id: &str,
    payment_id: &str,
    tenant: &str,
) -> BTreeMap<String, String> {
    let mut map = caller.clone();
    map.insert(
        super::REFUND_ID_METADATA_KEY.to_owned(),
        refund_id.to_owned(),
    );
    map.insert(Metadata::PAYMENT_ID_KEY.to_owned(), payment_id.to_owned());
    map.insert(Metadata::TENANT_KEY.to_owned(), tenant.to_owned());
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Metadata, FieldViolation> {
        Metadata::parse(entries(pairs))
    }

    #[test]
    fn empty_metadata_is_fine() {
        let metadata = parse(&[]).unwrap();
        assert!(metadata.is_empty());
        assert_eq!(metadata, Metadata::default());
    }

    #[test]
    fn ordinary_metadata_is_kept_as_given() {
        let metadata = parse(&[("order", "A-17"), ("colour", "vert émeraude")]).unwrap();
        assert_eq!(metadata.len(), 2);
        assert_eq!(metadata.get("colour"), Some("vert émeraude"));
        let keys: Vec<_> = metadata.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["colour", "order"]);
    }

    #[test]
    fn accepts_from_a_hash_map_as_prost_produces() {
        let map: std::collections::HashMap<String, String> =
            entries(&[("a", "1")]).into_iter().collect();
        assert_eq!(Metadata::parse(map).unwrap().get("a"), Some("1"));
    }

    #[test]
    fn at_most_47_caller_keys() {
        let keys: Vec<String> = (0..48).map(|i| format!("k{i}")).collect();
        let ok: Vec<_> = keys[..47]
            .iter()
            .map(|k| (k.clone(), "v".to_owned()))
            .collect();
        assert_eq!(Metadata::parse(ok).unwrap().len(), 47);
        let too_many: Vec<_> = keys.iter().map(|k| (k.clone(), "v".to_owned())).collect();
        let err = Metadata::parse(too_many).unwrap_err();
        assert_eq!(err.field, "metadata");
        assert!(err.description.contains("47"));
    }

    #[test]
    fn keys_are_one_to_40_characters() {
        assert!(parse(&[(&"k".repeat(40), "v")]).is_ok());
        assert!(parse(&[(&"é".repeat(40), "v")]).is_ok());
        let long = "k".repeat(41);
        let err = parse(&[(&long, "v")]).unwrap_err();
        assert_eq!(err.field, format!("metadata[{}…]", "k".repeat(40)));
        assert!(err.description.contains("40"));
        let err = parse(&[("", "v")]).unwrap_err();
        assert_eq!(err.field, "metadata");
        assert!(err.description.contains("empty"));
    }

    #[test]
    fn keys_may_not_contain_square_brackets() {
        for key in ["a[b", "a]b", "[x]"] {
            let err = parse(&[(key, "v")]).unwrap_err();
            assert_eq!(err.field, format!("metadata[{key}]"));
            assert!(err.description.contains("'['"));
        }
    }

    #[test]
    fn keys_may_not_contain_control_characters() {
        let err = parse(&[("a\nb", "v")]).unwrap_err();
        assert_eq!(err.field, "metadata[a?b]");
    }

    #[test]
    fn paybridge_keys_are_reserved() {
        for key in [
            "paybridge_payment_id",
            "paybridge_anything",
            "PAYBRIDGE_x",
            "invoice_id",
            "tenant",
            "Tenant",
        ] {
            let err = parse(&[(key, "v")]).unwrap_err();
            assert_eq!(err.field, format!("metadata[{key}]"));
            assert!(err.description.contains("reserved"), "{key}");
        }
        // Near misses are the caller's.
        assert!(parse(&[("paybridge", "v"), ("tenants", "v"), ("invoice", "v")]).is_ok());
    }

    #[test]
    fn values_are_one_to_500_characters() {
        assert!(parse(&[("k", &"v".repeat(500))]).is_ok());
        assert!(parse(&[("k", &"é".repeat(500))]).is_ok());
        let err = parse(&[("k", &"v".repeat(501))]).unwrap_err();
        assert_eq!(err.field, "metadata[k]");
        assert!(err.description.contains("500"));
        let err = parse(&[("k", "")]).unwrap_err();
        assert!(err.description.contains("empty"));
    }

    #[test]
    fn values_may_hold_any_text() {
        assert!(parse(&[("note", "line one\nline two\t[x]")]).is_ok());
    }

    #[test]
    fn the_first_problem_in_key_order_is_reported() {
        let err = parse(&[("z[", "v"), ("a", "")]).unwrap_err();
        assert_eq!(err.field, "metadata[a]");
    }

    #[test]
    fn stripe_metadata_adds_paybridges_keys() {
        let keys: Vec<_> = (0..47).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let metadata = Metadata::parse(keys).unwrap();
        let payment_id = PaymentId::generate();
        let stripe = metadata.to_stripe_metadata(
            &payment_id,
            &InvoiceId::parse("INV-1").unwrap(),
            &TenantId::parse("billing").unwrap(),
        );
        assert_eq!(stripe.len(), Metadata::STRIPE_MAX_KEYS);
        assert_eq!(stripe["paybridge_payment_id"], payment_id.as_str());
        assert_eq!(stripe["invoice_id"], "INV-1");
        assert_eq!(stripe["tenant"], "billing");
    }
}
