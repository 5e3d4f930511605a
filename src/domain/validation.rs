//! What a refused input looks like: one violation per field, as `google.rpc.BadRequest` wants.

use std::fmt;

/// One refused field. `field` is the gRPC request field's path (`amount`, `customer.email`,
/// `metadata[colour]`), so the transport layer can hand it over unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Every violation found in one request. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub violations: Vec<FieldViolation>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, violation) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

impl From<FieldViolation> for ValidationError {
    fn from(violation: FieldViolation) -> ValidationError {
        ValidationError {
            violations: vec![violation],
        }
    }
}

impl ValidationError {
    /// The refusals among the fields of one request, in order (`None` for a field that parsed),
    /// so that a caller hears about all of them at once. Give it at least one refusal.
    ///
    /// ```
    /// use paybridge::domain::{Amount, InvoiceId, ValidationError};
    ///
    /// let (invoice_id, amount) = (InvoiceId::parse("INV-1"), Amount::parse(0));
    /// let err = ValidationError::collect([invoice_id.err(), amount.err()]);
    /// assert_eq!(err.violations.len(), 1);
    /// assert_eq!(err.violations[0].field, "amount");
    /// ```
    pub fn collect(refusals: impl IntoIterator<Item = Option<FieldViolation>>) -> ValidationError {
        ValidationError {
            violations: refusals.into_iter().flatten().collect(),
        }
    }
}

/// Characters refused in identifiers and free text: controls (C0, DEL, C1) and the invisible
/// formatting characters that make two different strings look alike (zero-width, bidi overrides,
/// byte-order mark).
pub(crate) fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'   // zero-width space/joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}') // byte-order mark / zero-width no-break space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violation_displays_field_then_description() {
        let v = FieldViolation::new("amount", "must be positive");
        assert_eq!(v.to_string(), "amount: must be positive");
    }

    #[test]
    fn validation_error_lists_every_violation() {
        let err = ValidationError {
            violations: vec![
                FieldViolation::new("amount", "must be positive"),
                FieldViolation::new("currency", "is required"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid request: amount: must be positive; currency: is required"
        );
    }

    #[test]
    fn collect_keeps_every_refusal_in_order() {
        let err = ValidationError::collect([
            Some(FieldViolation::new("a", "x")),
            None,
            Some(FieldViolation::new("b", "y")),
        ]);
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "b"]);
    }

    #[test]
    fn forbidden_chars_cover_controls_and_invisible_formatting() {
        for c in [
            '\0', '\n', '\t', '\u{7F}', '\u{85}', '\u{200B}', '\u{202E}', '\u{2066}', '\u{FEFF}',
        ] {
            assert!(is_forbidden_char(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '€', '日'] {
            assert!(!is_forbidden_char(c), "{c:?}");
        }
    }
}
