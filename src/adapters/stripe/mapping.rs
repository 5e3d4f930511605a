//! From async-stripe's types to the port's types, and error mapping.

use std::collections::BTreeMap;

use stripe_shared::{PaymentIntent, PaymentIntentStatus};

use super::transport::StripeHttpError;
use crate::app::ports::{LastPaymentError, ProviderError, ProviderIntent};
use crate::domain::PaymentStatus;

/// Stripe's PaymentIntent status onto the local status.
///
/// Every variant async-stripe 1.0.0-rc.10 knows is named. The crate marks the enum
/// `#[non_exhaustive]`, so the compiler insists on a final catch-all arm; it, like `Unknown(..)`,
/// is an answer we cannot interpret.
pub(crate) fn map_status(status: &PaymentIntentStatus) -> Result<PaymentStatus, ProviderError> {
    match status {
        PaymentIntentStatus::RequiresPaymentMethod => Ok(PaymentStatus::RequiresPaymentMethod),
        PaymentIntentStatus::RequiresConfirmation => Ok(PaymentStatus::RequiresConfirmation),
        PaymentIntentStatus::RequiresAction => Ok(PaymentStatus::RequiresAction),
        PaymentIntentStatus::Processing => Ok(PaymentStatus::Processing),
        PaymentIntentStatus::RequiresCapture => Ok(PaymentStatus::RequiresCapture),
        PaymentIntentStatus::Succeeded => Ok(PaymentStatus::Succeeded),
        PaymentIntentStatus::Canceled => Ok(PaymentStatus::Canceled),
        PaymentIntentStatus::Unknown(other) => Err(ProviderError::Unexpected(format!(
            "unknown PaymentIntent status `{other}`"
        ))),
        other => Err(ProviderError::Unexpected(format!(
            "PaymentIntent status `{}` is not mapped",
            other.as_str()
        ))),
    }
}

pub(crate) fn to_provider_intent(pi: PaymentIntent) -> Result<ProviderIntent, ProviderError> {
    let status = map_status(&pi.status)?;
    let last_payment_error = pi.last_payment_error.map(|e| LastPaymentError {
        code: e
            .code
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .or(e.decline_code.clone()),
        message: e.message.clone(),
    });
    Ok(ProviderIntent {
        id: pi.id.as_str().to_owned(),
        status,
        amount: pi.amount,
        currency: pi.currency.to_string(),
        client_secret: pi.client_secret,
        metadata: pi.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        last_payment_error,
    })
}

/// The transport or Stripe error onto the port's error.
pub(crate) fn map_http_error(error: StripeHttpError) -> ProviderError {
    match error {
        StripeHttpError::Status { status: 404, .. } => ProviderError::NotFound,
        StripeHttpError::Status {
            status,
            code,
            message,
        } if (400..500).contains(&status) && status != 429 && status != 409 => {
            ProviderError::Rejected {
                status,
                code,
                message,
            }
        }
        // 409/429/5xx that Stripe said not to retry, or a retryable error out of retries.
        e @ StripeHttpError::Status {
            status: 409 | 429 | 500..=599,
            ..
        } => ProviderError::Unavailable(e.to_string()),
        e @ (StripeHttpError::Exhausted { .. }
        | StripeHttpError::OverBudget
        | StripeHttpError::Connection(_)
        | StripeHttpError::Timeout(_)) => ProviderError::Unavailable(e.to_string()),
        e @ (StripeHttpError::Status { .. }
        | StripeHttpError::Build(_)
        | StripeHttpError::Deserialize(_)) => ProviderError::Unexpected(e.to_string()),
    }
}

/// JSON kinds of the fields async-stripe requires (non-`Option` in its structs).
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Integer,
    String,
    Bool,
    Object,
    Array,
}

impl Kind {
    fn matches(self, v: &serde_json::Value) -> bool {
        match self {
            Kind::Integer => v.is_i64(),
            Kind::String => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Object => v.is_object(),
            Kind::Array => v.is_array(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::String => "a string",
            Kind::Bool => "a boolean",
            Kind::Object => "an object",
            Kind::Array => "an array",
        }
    }
}

/// The fields `stripe_shared::PaymentIntent` (1.0.0-rc.10) cannot do without.
pub(crate) const PAYMENT_INTENT_REQUIRED: &[(&str, Kind)] = &[
    ("amount", Kind::Integer),
    ("amount_capturable", Kind::Integer),
    ("amount_received", Kind::Integer),
    ("capture_method", Kind::String),
    ("confirmation_method", Kind::String),
    ("created", Kind::Integer),
    ("currency", Kind::String),
    ("id", Kind::String),
    ("livemode", Kind::Bool),
    ("metadata", Kind::Object),
    ("payment_method_types", Kind::Array),
    ("status", Kind::String),
];

/// The fields `stripe_shared::Customer` (1.0.0-rc.10) cannot do without.
pub(crate) const CUSTOMER_REQUIRED: &[(&str, Kind)] = &[
    ("created", Kind::Integer),
    ("id", Kind::String),
    ("livemode", Kind::Bool),
];

/// async-stripe parses with miniserde, which only says "error deserializing request data".
/// Re-read the body with serde_json and name what is missing or mistyped.
pub(crate) fn explain_parse_failure(
    type_name: &str,
    body: Option<&[u8]>,
    required: &[(&str, Kind)],
) -> ProviderError {
    let detail = match body {
        None => "the response body was not kept".to_owned(),
        Some(body) => match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => format!("the body is not JSON ({} bytes): {e}", body.len()),
            Ok(serde_json::Value::Object(map)) => {
                let mut problems = Vec::new();
                for (field, kind) in required {
                    match map.get(*field) {
                        None => problems.push(format!("`{field}` is missing")),
                        Some(serde_json::Value::Null) => {
                            problems.push(format!("`{field}` is null"))
                        }
                        Some(v) if !kind.matches(v) => {
                            problems.push(format!("`{field}` is not {}", kind.name()))
                        }
                        Some(_) => {}
                    }
                }
                if let Some(err) = map.get("last_payment_error").filter(|v| !v.is_null())
                    && err.get("type").is_none_or(|t| !t.is_string())
                {
                    problems.push("`last_payment_error.type` is missing".to_owned());
                }
                if problems.is_empty() {
                    "every required top-level field is present; a nested object or a field's \
                     type does not match async-stripe's definition"
                        .to_owned()
                } else {
                    problems.join(", ")
                }
            }
            Ok(_) => "the body is JSON but not an object".to_owned(),
        },
    };
    ProviderError::Unexpected(format!(
        "could not parse the {type_name} Stripe sent: {detail}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> StripeHttpError {
        StripeHttpError::Status {
            status,
            code: Some("some_code".to_owned()),
            message: "m".to_owned(),
        }
    }

    #[test]
    fn http_errors_map_onto_provider_errors() {
        assert!(matches!(
            map_http_error(status(404)),
            ProviderError::NotFound
        ));
        assert!(matches!(
            map_http_error(status(402)),
            ProviderError::Rejected { status: 402, .. }
        ));
        for s in [409, 429, 500, 503] {
            assert!(matches!(
                map_http_error(status(s)),
                ProviderError::Unavailable(_)
            ));
        }
        assert!(matches!(
            map_http_error(status(302)),
            ProviderError::Unexpected(_)
        ));
        assert!(matches!(
            map_http_error(StripeHttpError::Timeout(std::time::Duration::from_secs(1))),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            map_http_error(StripeHttpError::Exhausted {
                attempts: 3,
                last: Box::new(status(500)),
            }),
            ProviderError::Unavailable(_)
        ));
    }
}
