//! The payment's description, shown by Stripe on receipts and in the Dashboard.

use super::checked_string::free_text;

free_text! {
    /// At most 1000 characters; no control characters at all (not even newlines or tabs, which
    /// receipts do not render) and no invisible formatting characters.
    Description { field: "description", max_chars: 1000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_is_optional() {
        assert_eq!(Description::parse_optional("").unwrap(), None);
        let d = Description::parse_optional("Invoice INV-1 — März")
            .unwrap()
            .unwrap();
        assert_eq!(d.as_str(), "Invoice INV-1 — März");
    }

    #[test]
    fn description_up_to_1000_characters() {
        assert!(Description::parse(&"é".repeat(1000)).is_ok());
        let err = Description::parse(&"é".repeat(1001)).unwrap_err();
        assert_eq!(err.field, "description");
        assert!(err.description.contains("1000"));
    }

    #[test]
    fn description_refuses_every_control_character() {
        for raw in [
            "a\nb",
            "a\rb",
            "a\tb",
            "a\0b",
            "a\u{7F}b",
            "a\u{9B}b",
            "a\u{202E}b",
        ] {
            let err = Description::parse_optional(raw).unwrap_err();
            assert_eq!(err.field, "description", "{raw:?}");
        }
    }

    #[test]
    fn blank_description_is_refused() {
        assert!(Description::parse_optional("   ").is_err());
        assert!(Description::parse("").is_err());
    }
}
