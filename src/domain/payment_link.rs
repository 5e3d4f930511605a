//! Hosted payment page links (issue 18): the token in a link's URL and how long a link works.
//!
//! A link is `<public base>/pay/<token>`. The token is 256 random bits, base64url without
//! padding (43 characters); only its SHA-256 is stored, so a copy of the database gives no
//! working link.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::validation::FieldViolation;

/// Random bytes of a token (the issue asks for at least 128 bits).
const TOKEN_BYTES: usize = 32;

/// Characters of a token: [`TOKEN_BYTES`] in base64url without padding.
pub const PAYMENT_LINK_TOKEN_LEN: usize = 43;

/// The secret in a hosted page link. Its Debug shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentLinkToken(String);

impl PaymentLinkToken {
    /// A new token from the thread's CSPRNG (ChaCha, seeded and reseeded from the OS).
    pub fn generate() -> PaymentLinkToken {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        PaymentLinkToken(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A token of the shape [`generate`](Self::generate) makes; `None` for anything else (which
    /// then gets the same answer as an unknown token).
    pub fn parse(raw: &str) -> Option<PaymentLinkToken> {
        let shaped = raw.len() == PAYMENT_LINK_TOKEN_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        shaped.then(|| PaymentLinkToken(raw.to_owned()))
    }

    /// For the link's URL only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store keeps: the hex SHA-256 of the token.
    pub fn hash_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// What a log line may show to tell links apart: 8 hex digits of the hash.
    pub fn log_id(&self) -> String {
        self.hash_hex()[..8].to_owned()
    }
}

impl fmt::Debug for PaymentLinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PaymentLinkToken([redacted])")
    }
}

/// How long a link works: 1 second to 7 days, 24 hours when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTtl(Duration);

impl LinkTtl {
    pub const DEFAULT: LinkTtl = LinkTtl(Duration::from_secs(24 * 3600));
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const MIN: Duration = Duration::from_secs(1);

    /// Parses a `google.protobuf.Duration` (seconds and nanoseconds) from the request field
    /// `field`; `None` is the default.
    pub fn parse(field: &str, given: Option<(i64, i32)>) -> Result<LinkTtl, FieldViolation> {
        let Some((seconds, nanos)) = given else {
            return Ok(LinkTtl::DEFAULT);
        };
        let refused = || FieldViolation::new(field, "must be from 1 second to 7 days");
        let (Ok(seconds), Ok(nanos)) = (u64::try_from(seconds), u32::try_from(nanos)) else {
            return Err(refused());
        };
        if nanos >= 1_000_000_000 {
            return Err(refused());
        }
        let ttl = Duration::new(seconds, nanos);
        if !(LinkTtl::MIN..=LinkTtl::MAX).contains(&ttl) {
            return Err(refused());
        }
        Ok(LinkTtl(ttl))
    }

    /// In milliseconds (the store's unit).
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_shape_parse_accepts_and_differ() {
        let tokens: std::collections::HashSet<String> = (0..1000)
            .map(|_| PaymentLinkToken::generate().as_str().to_owned())
            .collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert_eq!(token.len(), PAYMENT_LINK_TOKEN_LEN);
            assert_eq!(PaymentLinkToken::parse(token).unwrap().as_str(), token);
        }
    }

    #[test]
    fn other_shapes_are_refused() {
        let good = PaymentLinkToken::generate();
        let good = good.as_str();
        for bad in [
            String::new(),
            good[1..].to_owned(),
            format!("{good}A"),
            format!("{}=", &good[1..]),
            format!("{}%", &good[1..]),
            format!("{}/", &good[1..]),
            format!("{}é", &good[2..]),
        ] {
            assert!(PaymentLinkToken::parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_sha256_and_debug_shows_nothing() {
        let token = PaymentLinkToken::parse(&"a".repeat(43)).unwrap();
        assert_eq!(
            token.hash_hex(),
            hex::encode(Sha256::digest("a".repeat(43).as_bytes()))
        );
        assert_eq!(token.log_id(), token.hash_hex()[..8]);
        assert_eq!(format!("{token:?}"), "PaymentLinkToken([redacted])");
    }

    #[test]
    fn ttl_defaults_to_a_day_and_stays_within_a_second_and_seven_days() {
        assert_eq!(LinkTtl::parse("ttl", None).unwrap(), LinkTtl::DEFAULT);
        assert_eq!(
            LinkTtl::parse("ttl", Some((2, 500_000_000)))
                .unwrap()
                .as_millis(),
            2500
        );
        assert!(LinkTtl::parse("ttl", Some((7 * 86_400, 0))).is_ok());
        for bad in [
            (0, 0),
            (0, 999_999_999),
            (-1, 0),
            (7 * 86_400, 1),
            (1, -1),
            (1, 1_000_000_000),
        ] {
            let refused = LinkTtl::parse("ttl", Some(bad)).unwrap_err();
            assert_eq!(refused.field, "ttl", "{bad:?}");
        }
    }
}
