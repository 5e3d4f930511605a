//! The payment's description, shown by Stripe on receipts and in the Dashboard.

use std::fmt;

use super::validation::{FieldViolation, is_forbidden_char};

/// At most 1000 characters; no control characters at all (not even newlines or tabs, which
/// receipts do not render) and no invisible formatting characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 1000;
    const FIELD: &'static str = "description";

    /// A present description: must not be blank.
    pub fn parse(raw: &str) -> Result<Description, FieldViolation> {
        if raw.trim().is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "must not be blank"));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(FieldViolation::new(
                Self::FIELD,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if raw.chars().any(is_forbidden_char) {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must not contain control or invisible formatting characters",
            ));
        }
        Ok(Description(raw.to_owned()))
    }

    /// The field is optional in the proto: an empty string means "no description".
    pub fn parse_optional(raw: &str) -> Result<Option<Description>, FieldViolation> {
        if raw.is_empty() {
            Ok(None)
        } else {
            Description::parse(raw).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
