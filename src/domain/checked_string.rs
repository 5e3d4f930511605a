//! What the domain's checked strings share: a newtype over `String` whose field is private (so
//! holding one proves its `parse` accepted the value), `as_str` and `Display`; the rules of free
//! text that people type (a name, a description, an invoice id); and those of short ASCII text (an
//! idempotency key, a tenant id).

use super::validation::{FieldViolation, is_forbidden_char};

/// Declares a checked string type: the newtype, `as_str` and `Display`. Each type writes its own
/// `parse`, the only way to make one.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Declares an optional free-text field of a request: a checked string with `MAX_CHARS`, a
/// `parse` that applies [`check_free_text`] (a blank value "must not be blank"), and a
/// `parse_optional` for which the empty string means "none".
macro_rules! free_text {
    ($(#[$doc:meta])* $name:ident { field: $field:literal, max_chars: $max_chars:literal }) => {
        $crate::domain::checked_string::checked_string!($(#[$doc])* $name);

        impl $name {
            pub const MAX_CHARS: usize = $max_chars;
            const FIELD: &'static str = $field;

            /// A present value: must not be blank.
            pub fn parse(raw: &str) -> Result<$name, $crate::domain::FieldViolation> {
                $crate::domain::checked_string::check_free_text(
                    Self::FIELD,
                    raw,
                    Self::MAX_CHARS,
                    "must not be blank",
                )?;
                Ok($name(raw.to_owned()))
            }

            /// The field is optional in the proto: an empty string means "none".
            pub fn parse_optional(
                raw: &str,
            ) -> Result<Option<$name>, $crate::domain::FieldViolation> {
                if raw.is_empty() {
                    Ok(None)
                } else {
                    $name::parse(raw).map(Some)
                }
            }
        }
    };
}

pub(crate) use {checked_string, free_text};

/// Free text as people type it: not blank (refused with `blank`), at most `max_chars` characters
/// (not bytes), and no control or invisible formatting characters.
pub(crate) fn check_free_text(
    field: &str,
    raw: &str,
    max_chars: usize,
    blank: &str,
) -> Result<(), FieldViolation> {
    if raw.trim().is_empty() {
        return Err(FieldViolation::new(field, blank));
    }
    if raw.chars().count() > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if raw.chars().any(is_forbidden_char) {
        return Err(FieldViolation::new(
            field,
            "must not contain control or invisible formatting characters",
        ));
    }
    Ok(())
}

/// Short ASCII text: not empty ("is required"), at most `max_len` bytes, every byte `allowed`
/// (refused with `refusal`).
pub(crate) fn check_ascii_text(
    field: &str,
    raw: &str,
    max_len: usize,
    allowed: impl Fn(u8) -> bool,
    refusal: &str,
) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if raw.len() > max_len {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_len} characters"),
        ));
    }
    if !raw.bytes().all(allowed) {
        return Err(FieldViolation::new(field, refusal));
    }
    Ok(())
}
