//! Who pays: an existing Stripe customer, or an email address (and name) to create one for.

use super::checked_string::{checked_string, free_text};
use super::validation::FieldViolation;

/// The customer of a payment, as `CreateInvoicePaymentRequest.customer` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Customer {
    /// A customer the tenant already has at Stripe.
    Existing(StripeCustomerId),
    /// A customer to create at Stripe.
    New {
        email: Email,
        name: Option<CustomerName>,
    },
}

checked_string! {
    /// An email address (`customer.email`), checked for sanity rather than RFC 5322 in full:
    /// at most 254 characters, printable ASCII without spaces, exactly one `@`, a local part of
    /// at most 64 characters, and a domain of at least two dot-separated labels of letters,
    /// digits and hyphens. Quoted local parts and address literals are refused; nobody pays with
    /// those.
    Email
}

impl Email {
    pub const MAX_LEN: usize = 254;
    const MAX_LOCAL_LEN: usize = 64;
    const FIELD: &'static str = "customer.email";

    pub fn parse(raw: &str) -> Result<Email, FieldViolation> {
        let refuse = |why: &str| Err(FieldViolation::new(Self::FIELD, why));
        if raw.is_empty() {
            return refuse("is required");
        }
        if raw.len() > Self::MAX_LEN {
            return refuse("must be at most 254 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse("must not contain spaces, control or non-ASCII characters");
        }
        if raw.contains(['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\']) {
            return refuse("must be a plain address like name@example.com");
        }
        let Some((local, domain)) = raw.split_once('@') else {
            return refuse("must contain an '@'");
        };
        if domain.contains('@') {
            return refuse("must contain exactly one '@'");
        }
        if local.is_empty() || local.len() > Self::MAX_LOCAL_LEN {
            return refuse("must have 1 to 64 characters before the '@'");
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return refuse("must not have a leading, trailing or doubled '.' before the '@'");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return refuse("must have a domain like example.com after the '@'");
        }
        Ok(Email(raw.to_owned()))
    }
}

free_text! {
    /// The customer's name (`customer.name`): at most 256 characters, not blank, no control or
    /// invisible formatting characters.
    CustomerName { field: "customer.name", max_chars: 256 }
}

checked_string! {
    /// A Stripe customer id (`customer.stripe_customer_id`): `cus_` followed by 1–250 ASCII
    /// letters and digits.
    StripeCustomerId
}

impl StripeCustomerId {
    const PREFIX: &'static str = "cus_";
    const MAX_TAIL: usize = 250;
    const FIELD: &'static str = "customer.stripe_customer_id";

    pub fn parse(raw: &str) -> Result<StripeCustomerId, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "is required"));
        }
        let well_formed = raw.strip_prefix(Self::PREFIX).is_some_and(|tail| {
            (1..=Self::MAX_TAIL).contains(&tail.len())
                && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if !well_formed {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be a Stripe customer id: \"cus_\" followed by 1 to 250 letters and digits",
            ));
        }
        Ok(StripeCustomerId(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- Email ---

    #[test]
    fn email_accepts_ordinary_addresses() {
        for raw in [
            "ada@example.com",
            "Ada.Lovelace+invoices@mail.example.co.uk",
            "x@a-b.io",
            "o'brien@example.ie",
            "1@2.3",
        ] {
            assert_eq!(Email::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn email_is_required() {
        let err = Email::parse("").unwrap_err();
        assert_eq!(err.field, "customer.email");
        assert_eq!(err.description, "is required");
    }

    #[test]
    fn email_longer_than_254_is_refused() {
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(60)
        );
        let ok = format!("{}@{domain}", "x".repeat(254 - 1 - domain.len()));
        assert_eq!(ok.len(), 254);
        assert!(Email::parse(&ok).is_ok());
        let err = Email::parse(&format!("y{ok}")).unwrap_err();
        assert!(err.description.contains("254"));
    }

    #[test]
    fn email_needs_exactly_one_at() {
        assert!(
            Email::parse("ada.example.com")
                .unwrap_err()
                .description
                .contains("'@'")
        );
        assert!(
            Email::parse("a@b@example.com")
                .unwrap_err()
                .description
                .contains("exactly one")
        );
    }

    #[test]
    fn email_refuses_spaces_controls_and_non_ascii() {
        for raw in [
            "ada @example.com",
            " ada@example.com",
            "ada@example.com\n",
            "ad\ta@x.com",
            "adé@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn email_refuses_malformed_parts() {
        for raw in [
            "@example.com",
            &format!("{}@example.com", "a".repeat(65)),
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ada@",
            "ada@localhost",
            "ada@.example.com",
            "ada@example..com",
            "ada@example.com.",
            "ada@-example.com",
            "ada@exa_mple.com",
            "\"ada\"@example.com",
            "Ada <ada@example.com>",
            "ada@[127.0.0.1]",
            "a,b@example.com",
        ] {
            let err = Email::parse(raw).unwrap_err();
            assert_eq!(err.field, "customer.email", "{raw:?}");
        }
    }

    // --- CustomerName ---

    #[test]
    fn customer_name_accepts_up_to_256_characters() {
        assert_eq!(
            CustomerName::parse("Ada Lovelace").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert!(CustomerName::parse(&"é".repeat(256)).is_ok());
        let err = CustomerName::parse(&"é".repeat(257)).unwrap_err();
        assert_eq!(err.field, "customer.name");
        assert!(err.description.contains("256"));
    }

    #[test]
    fn customer_name_refuses_blank_and_control_characters() {
        assert!(CustomerName::parse("  ").is_err());
        assert!(CustomerName::parse("Ada\nLovelace").is_err());
        assert!(CustomerName::parse("Ada\u{202E}ecalevoL").is_err());
    }

    #[test]
    fn customer_name_is_optional() {
        assert_eq!(CustomerName::parse_optional("").unwrap(), None);
        assert!(CustomerName::parse_optional("Ada").unwrap().is_some());
        assert!(CustomerName::parse_optional(" ").is_err());
    }

    // --- StripeCustomerId ---

    #[test]
    fn stripe_customer_id_accepts_cus_and_alphanumerics() {
        for raw in [
            "cus_NffrFeUfNV2Hib",
            "cus_1",
            &format!("cus_{}", "a".repeat(250)),
        ] {
            assert_eq!(StripeCustomerId::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn stripe_customer_id_refuses_other_shapes() {
        for raw in [
            "",
            "cus_",
            "NffrFeUfNV2Hib",
            "CUS_NffrFeUfNV2Hib",
            "pi_NffrFeUfNV2Hib",
            "cus_Nffr-FeUf",
            "cus_Nffr FeUf",
            "cus_é",
            &format!("cus_{}", "a".repeat(251)),
        ] {
            let err = StripeCustomerId::parse(raw).unwrap_err();
            assert_eq!(err.field, "customer.stripe_customer_id", "{raw:?}");
        }
    }
}
