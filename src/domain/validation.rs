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

/// Collects the violations of several fields so that a caller hears about all of them at once.
///
/// ```
/// use paybridge::domain::{Amount, InvoiceId, Violations};
///
/// let mut violations = Violations::new();
/// let invoice_id = violations.check(InvoiceId::parse("INV-1"));
/// let amount = violations.check(Amount::parse(0));
/// let err = violations.finish().unwrap_err();
/// assert_eq!(err.violations.len(), 1);
/// assert!(invoice_id.is_some() && amount.is_none());
/// ```
#[derive(Debug, Default)]
pub struct Violations {
    violations: Vec<FieldViolation>,
}

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Keeps the value, or records the violation and returns `None`.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(violation) => {
                self.violations.push(violation);
                None
            }
        }
    }

    pub fn push(&mut self, violation: FieldViolation) {
        self.violations.push(violation);
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else every recorded violation in order.
    pub fn finish(self) -> Result<(), ValidationError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                violations: self.violations,
            })
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
    fn violations_collects_all_failures_in_order() {
        let mut v = Violations::new();
        assert_eq!(v.check::<u8>(Ok(1)), Some(1));
        assert_eq!(v.check::<u8>(Err(FieldViolation::new("a", "x"))), None);
        v.push(FieldViolation::new("b", "y"));
        assert!(!v.is_empty());
        let err = v.finish().unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["a", "b"]);
    }

    #[test]
    fn violations_without_failures_finish_ok() {
        assert_eq!(Violations::new().finish(), Ok(()));
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
