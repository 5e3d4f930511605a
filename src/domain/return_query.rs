//! The query Stripe appends to the return URL: `payment_intent`, `payment_intent_client_secret`
//! and `redirect_status`. One set of rules for the gateway (which checks the browser's query
//! before any gRPC call) and for `VerifyReturn` (which checks what any caller hands in).

use std::fmt;

use super::validation::FieldViolation;

/// A return query of Stripe's shape: a `pi_…` id, a client secret of that intent
/// (`pi_…_secret_…`) and a short lowercase status hint (possibly empty). Its `Debug` leaves the
/// secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct ReturnQuery {
    payment_intent: String,
    client_secret: String,
    redirect_status: String,
}

/// A parameter of the return query that does not have Stripe's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnQueryField {
    PaymentIntent,
    ClientSecret,
    RedirectStatus,
}

impl ReturnQueryField {
    /// The parameter's name, in the query and in `VerifyReturnRequest` alike.
    pub fn name(self) -> &'static str {
        match self {
            ReturnQueryField::PaymentIntent => "payment_intent",
            ReturnQueryField::ClientSecret => "payment_intent_client_secret",
            ReturnQueryField::RedirectStatus => "redirect_status",
        }
    }

    /// The refusal of this field, as a request's field violation.
    pub fn violation(self) -> FieldViolation {
        let description = match self {
            ReturnQueryField::PaymentIntent => "must be a PaymentIntent id (pi_…)",
            ReturnQueryField::ClientSecret => "must be the client secret of payment_intent",
            ReturnQueryField::RedirectStatus => "must be a short lowercase word",
        };
        FieldViolation::new(self.name(), description)
    }
}

impl ReturnQuery {
    pub const MAX_INTENT_LEN: usize = 255;
    pub const MAX_SECRET_LEN: usize = 500;
    pub const MAX_STATUS_LEN: usize = 32;

    /// Checks the three parameters; refuses with every bad one, in the order of the parameters.
    pub fn parse(
        payment_intent: &str,
        client_secret: &str,
        redirect_status: &str,
    ) -> Result<ReturnQuery, Vec<ReturnQueryField>> {
        let is_id_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let is_id_tail = |rest: &str| !rest.is_empty() && rest.bytes().all(is_id_char);
        let mut refused = Vec::new();
        let intent_ok = payment_intent.len() <= Self::MAX_INTENT_LEN
            && payment_intent.strip_prefix("pi_").is_some_and(is_id_tail);
        if !intent_ok {
            refused.push(ReturnQueryField::PaymentIntent);
        }
        let secret_ok = client_secret.len() <= Self::MAX_SECRET_LEN
            && client_secret
                .strip_prefix(payment_intent)
                .and_then(|rest| rest.strip_prefix("_secret_"))
                .is_some_and(is_id_tail);
        if !secret_ok {
            refused.push(ReturnQueryField::ClientSecret);
        }
        let status_ok = redirect_status.len() <= Self::MAX_STATUS_LEN
            && redirect_status
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if !status_ok {
            refused.push(ReturnQueryField::RedirectStatus);
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        Ok(ReturnQuery {
            payment_intent: payment_intent.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_status: redirect_status.to_owned(),
        })
    }

    pub fn payment_intent(&self) -> &str {
        &self.payment_intent
    }

    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// Stripe's hint; for logs, never trusted.
    pub fn redirect_status(&self) -> &str {
        &self.redirect_status
    }
}

impl fmt::Debug for ReturnQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturnQuery")
            .field("payment_intent", &self.payment_intent)
            .field("redirect_status", &self.redirect_status)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(intent: &str, secret: &str, status: &str) -> Vec<ReturnQueryField> {
        ReturnQuery::parse(intent, secret, status).expect_err("refused")
    }

    #[test]
    fn stripes_shape_parses_and_debug_hides_the_secret() {
        let query = ReturnQuery::parse("pi_123", "pi_123_secret_abc", "succeeded").unwrap();
        assert_eq!(query.payment_intent(), "pi_123");
        assert_eq!(query.client_secret(), "pi_123_secret_abc");
        assert_eq!(query.redirect_status(), "succeeded");
        assert!(!format!("{query:?}").contains("secret_abc"));
        assert!(ReturnQuery::parse("pi_1", "pi_1_secret_a", "").is_ok());
    }

    #[test]
    fn every_bad_field_is_named_in_order() {
        use ReturnQueryField::*;
        assert_eq!(
            refused("", "", "x%0a"),
            [PaymentIntent, ClientSecret, RedirectStatus]
        );
        assert_eq!(refused("pi_1", "pi_2_secret_a", "ok"), [ClientSecret]);
        assert_eq!(refused("pi_", "pi__secret_a", ""), [PaymentIntent]);
        assert_eq!(
            refused("pi_%31", "pi_%31_secret_%32", ""),
            [PaymentIntent, ClientSecret]
        );
        assert_eq!(refused("pi_1", "pi_1_secret_", ""), [ClientSecret]);
        assert_eq!(refused("pi_1", "pi_1_secret_a\0", ""), [ClientSecret]);
        assert_eq!(
            refused("pi_1", "pi_1_secret_a", "Succeeded"),
            [RedirectStatus]
        );
    }

    #[test]
    fn lengths_are_bounded() {
        let intent = format!("pi_{}", "a".repeat(ReturnQuery::MAX_INTENT_LEN - 3));
        let secret = format!("{intent}_secret_{}", "b".repeat(200));
        assert!(ReturnQuery::parse(&intent, &secret, "").is_ok());
        let long_intent = format!("{intent}a");
        let long_secret = format!("{long_intent}_secret_b");
        assert_eq!(
            refused(&long_intent, &long_secret, ""),
            [ReturnQueryField::PaymentIntent]
        );
        let too_long_secret = format!("{intent}_secret_{}", "b".repeat(300));
        assert!(too_long_secret.len() > ReturnQuery::MAX_SECRET_LEN);
        assert_eq!(
            refused(&intent, &too_long_secret, ""),
            [ReturnQueryField::ClientSecret]
        );
        let status = "a".repeat(ReturnQuery::MAX_STATUS_LEN + 1);
        assert_eq!(
            refused("pi_1", "pi_1_secret_a", &status),
            [ReturnQueryField::RedirectStatus]
        );
    }

    #[test]
    fn violations_name_the_request_fields() {
        let violation = ReturnQueryField::ClientSecret.violation();
        assert_eq!(violation.field, "payment_intent_client_secret");
        assert_eq!(
            ReturnQueryField::PaymentIntent.violation().field,
            "payment_intent"
        );
        assert_eq!(
            ReturnQueryField::RedirectStatus.violation().field,
            "redirect_status"
        );
    }
}
