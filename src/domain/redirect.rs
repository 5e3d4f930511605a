//! Where a browser may be sent after paying: only to origins the tenant declared.
//!
//! An open redirect on a payment page is a phishing tool, so a [`RedirectUrl`] can only be made
//! from a string that lies under one of the tenant's [`RedirectOrigin`]s. The checks run on the
//! raw string first (the URL parser quietly drops tabs and newlines and turns `\` into `/`, which
//! is how look-alike URLs slip through other validators), then on the parsed URL.

use std::fmt;

use url::Url;

use super::validation::{FieldViolation, is_forbidden_char};

/// Schemes that may never be a tenant's app scheme nor a redirect target other than through a
/// declared web origin: they run code, read local files or are web schemes in disguise.
const FORBIDDEN_APP_SCHEMES: &[&str] = &[
    "about",
    "blob",
    "chrome",
    "data",
    "file",
    "filesystem",
    "ftp",
    "http",
    "https",
    "intent",
    "javascript",
    "jar",
    "vbscript",
    "view-source",
    "ws",
    "wss",
];

/// One origin a tenant may send browsers back to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RedirectOrigin {
    /// `https://host[:port]`, or `http://` for a loopback host (`localhost`, `127.0.0.1`, `[::1]`)
    /// when a tenant lists it for local development.
    Web {
        /// `https` or `http`.
        scheme: String,
        /// Lowercase (the URL parser normalises it; IDNs are in punycode).
        host: String,
        /// Explicit or the scheme's default, so `:443` and nothing compare equal.
        port: u16,
    },
    /// A mobile app's deep-link scheme, written `billingapp:`; stored lowercase, without the `:`.
    App { scheme: String },
}

impl RedirectOrigin {
    const FIELD: &'static str = "allowed_redirect_origins";

    /// Parses one entry of a tenant's `allowed_redirect_origins`.
    pub fn parse(raw: &str) -> Result<RedirectOrigin, FieldViolation> {
        let refuse = |why: String| Err(FieldViolation::new(Self::FIELD, format!("{raw:?}: {why}")));
        if raw.is_empty() {
            return refuse("must not be empty".into());
        }
        if let Some(scheme) = raw.strip_suffix(':') {
            if !is_scheme(scheme) {
                return refuse(
                    "an app scheme is a letter followed by letters, digits, '+', '-' or '.', \
                     then ':' (e.g. \"billingapp:\")"
                        .into(),
                );
            }
            let scheme = scheme.to_ascii_lowercase();
            if FORBIDDEN_APP_SCHEMES.contains(&scheme.as_str()) {
                return refuse(format!("\"{scheme}:\" cannot be an app scheme"));
            }
            return Ok(RedirectOrigin::App { scheme });
        }
        if let Some(why) = raw_url_problem(raw) {
            return refuse(why.into());
        }
        let url = Url::parse(raw).map_err(|e| {
            FieldViolation::new(Self::FIELD, format!("{raw:?}: not a valid origin ({e})"))
        })?;
        let Some(host) = url.host_str() else {
            return refuse(
                "must be https://host[:port] or an app scheme like \"billingapp:\"".into(),
            );
        };
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not contain user info".into());
        }
        if url.path() != "/" || url.query().is_some() {
            return refuse("must be an origin only (scheme, host and port), without a path".into());
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(host) => {}
            "http" => return refuse("must use https (http is allowed only for localhost)".into()),
            _ => {
                return refuse(
                    "must be https://host[:port] or an app scheme like \"billingapp:\"".into(),
                );
            }
        }
        let port = url.port_or_known_default().unwrap_or(443);
        Ok(RedirectOrigin::Web {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// Whether `url` lies under this origin: same scheme, host and (effective) port, or same app
    /// scheme.
    fn admits(&self, url: &Url) -> bool {
        match self {
            RedirectOrigin::Web { scheme, host, port } => {
                url.scheme() == scheme
                    && url.host_str() == Some(host.as_str())
                    && url.port_or_known_default() == Some(*port)
            }
            RedirectOrigin::App { scheme } => url.scheme() == scheme,
        }
    }
}

impl fmt::Display for RedirectOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectOrigin::Web { scheme, host, port } => {
                let default = if scheme == "https" { 443 } else { 80 };
                if *port == default {
                    write!(f, "{scheme}://{host}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            RedirectOrigin::App { scheme } => write!(f, "{scheme}:"),
        }
    }
}

/// An absolute URL under one of a tenant's allowed origins; the only kind of URL paybridge ever
/// sends a browser to.
#[derive(Clone, PartialEq, Eq)]
pub struct RedirectUrl(Url);

impl RedirectUrl {
    pub const MAX_LEN: usize = 2048;

    /// Parses `raw` for the request field `field` (`success_url`, `failure_url`), accepting it
    /// only if it lies under one of `allowed`.
    pub fn parse(
        field: &str,
        raw: &str,
        allowed: &[RedirectOrigin],
    ) -> Result<RedirectUrl, FieldViolation> {
        let refuse = |why: &str| Err(FieldViolation::new(field, why));
        if raw.is_empty() {
            return refuse("must not be empty");
        }
        if raw.len() > Self::MAX_LEN {
            return refuse("must be at most 2048 characters");
        }
        if let Some(why) = raw_url_problem(raw) {
            return refuse(why);
        }
        let url = match Url::parse(raw) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                return refuse("must be an absolute URL (https://… or an allowed app scheme)");
            }
            Err(_) => return refuse("must be a valid URL"),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not contain user info (user@host)");
        }
        if allowed.iter().any(|origin| origin.admits(&url)) {
            return Ok(RedirectUrl(url));
        }
        match url.scheme() {
            "https" => refuse("must lie under one of the tenant's allowed redirect origins"),
            "http" => refuse("must use https, or an http origin the tenant allows"),
            scheme if FORBIDDEN_APP_SCHEMES.contains(&scheme) => {
                refuse(&format!("the scheme \"{scheme}:\" is not allowed"))
            }
            _ => refuse("must use an app scheme the tenant allows"),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The same URL with `params` set in its query: a parameter of the same name already there is
    /// replaced (every occurrence), others are kept in order, and new ones are appended in the
    /// order given. Used to tell the tenant's page `payment_id`, `invoice_id` and `status`.
    pub fn with_query(&self, params: &[(&str, &str)]) -> RedirectUrl {
        let kept: Vec<(String, String)> = self
            .0
            .query_pairs()
            .filter(|(name, _)| !params.iter().any(|(new, _)| new == name))
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let mut url = self.0.clone();
        if kept.is_empty() && params.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .extend_pairs(params);
        }
        RedirectUrl(url)
    }
}

/// Shows the URL as text; `url::Url`'s own Debug lists every component.
impl fmt::Debug for RedirectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedirectUrl").field(&self.as_str()).finish()
    }
}

impl fmt::Display for RedirectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusals decided on the raw string, before the parser can normalise the trick away.
fn raw_url_problem(raw: &str) -> Option<&'static str> {
    if raw.chars().any(is_forbidden_char) {
        return Some("must not contain control or invisible formatting characters");
    }
    if raw.chars().any(char::is_whitespace) {
        return Some("must not contain whitespace (percent-encode it)");
    }
    if raw.contains('\\') {
        return Some("must not contain backslashes");
    }
    if raw.contains('#') {
        return Some("must not contain a fragment ('#')");
    }
    None
}

/// RFC 3986 `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(raw: &[&str]) -> Vec<RedirectOrigin> {
        raw.iter()
            .map(|o| RedirectOrigin::parse(o).unwrap())
            .collect()
    }

    fn billing() -> Vec<RedirectOrigin> {
        origins(&["https://billing.example.com", "billingapp:"])
    }

    fn parse(raw: &str) -> Result<RedirectUrl, FieldViolation> {
        RedirectUrl::parse("success_url", raw, &billing())
    }

    fn refused(raw: &str) -> String {
        let err = parse(raw).expect_err(raw);
        assert_eq!(err.field, "success_url");
        err.description
    }

    // --- RedirectOrigin ---

    #[test]
    fn origin_parses_https_hosts_with_default_port_normalised() {
        let a = RedirectOrigin::parse("https://Billing.Example.com").unwrap();
        let b = RedirectOrigin::parse("https://billing.example.com:443/").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a,
            RedirectOrigin::Web {
                scheme: "https".into(),
                host: "billing.example.com".into(),
                port: 443
            }
        );
        assert_eq!(a.to_string(), "https://billing.example.com");
        let c = RedirectOrigin::parse("https://billing.example.com:8443").unwrap();
        assert_eq!(c.to_string(), "https://billing.example.com:8443");
    }

    #[test]
    fn origin_parses_app_schemes() {
        assert_eq!(
            RedirectOrigin::parse("BillingApp:").unwrap(),
            RedirectOrigin::App {
                scheme: "billingapp".into()
            }
        );
        assert!(RedirectOrigin::parse("com.example.billing:").is_ok());
        assert_eq!(
            RedirectOrigin::parse("billingapp:").unwrap().to_string(),
            "billingapp:"
        );
    }

    #[test]
    fn origin_refuses_dangerous_or_web_app_schemes() {
        for raw in [
            "javascript:",
            "data:",
            "file:",
            "http:",
            "https:",
            "vbscript:",
            "intent:",
            "JavaScript:",
        ] {
            let err = RedirectOrigin::parse(raw).unwrap_err();
            assert_eq!(err.field, "allowed_redirect_origins");
            assert!(err.description.contains("cannot be an app scheme"), "{raw}");
        }
        for raw in ["1app:", "bil ling:", "bill_app:", ":"] {
            assert!(RedirectOrigin::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn origin_refuses_paths_queries_fragments_and_user_info() {
        for raw in [
            "https://billing.example.com/paid",
            "https://billing.example.com?x=1",
            "https://billing.example.com/#x",
            "https://user@billing.example.com",
            "https://user:pw@billing.example.com",
            "https://billing.example.com\\",
            " https://billing.example.com",
            "",
        ] {
            assert!(RedirectOrigin::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn origin_allows_http_only_for_loopback() {
        for raw in [
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "http://localhost",
        ] {
            assert!(RedirectOrigin::parse(raw).is_ok(), "{raw}");
        }
        let err = RedirectOrigin::parse("http://billing.example.com").unwrap_err();
        assert!(err.description.contains("https"));
    }

    #[test]
    fn origin_refuses_other_schemes_with_hosts_and_bare_words() {
        for raw in [
            "ftp://billing.example.com",
            "wss://billing.example.com",
            "billing.example.com",
        ] {
            assert!(RedirectOrigin::parse(raw).is_err(), "{raw}");
        }
    }

    // --- RedirectUrl: accepted ---

    #[test]
    fn url_under_an_allowed_https_origin_is_accepted() {
        for raw in [
            "https://billing.example.com/paid",
            "https://billing.example.com",
            "https://billing.example.com/a/b?c=d&e=f",
            "https://BILLING.example.com/paid",
            "HTTPS://billing.example.com/paid",
            "https://billing.example.com:443/paid",
        ] {
            assert!(parse(raw).is_ok(), "{raw}");
        }
        assert_eq!(
            parse("https://BILLING.example.com:443/paid")
                .unwrap()
                .as_str(),
            "https://billing.example.com/paid"
        );
    }

    #[test]
    fn url_with_an_allowed_app_scheme_is_accepted() {
        for raw in [
            "billingapp://payment/done",
            "billingapp:done",
            "BillingApp://x?y=1",
        ] {
            assert!(parse(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn url_on_a_non_default_port_needs_that_port_allowed() {
        let allowed = origins(&["https://billing.example.com:8443"]);
        assert!(RedirectUrl::parse("f", "https://billing.example.com:8443/x", &allowed).is_ok());
        assert!(RedirectUrl::parse("f", "https://billing.example.com/x", &allowed).is_err());
        assert!(parse("https://billing.example.com:8443/x").is_err());
    }

    #[test]
    fn http_localhost_is_accepted_only_when_listed() {
        let err = refused("http://localhost:3000/paid");
        assert!(err.contains("https"));
        let allowed = origins(&["http://localhost:3000"]);
        assert!(RedirectUrl::parse("f", "http://localhost:3000/paid", &allowed).is_ok());
        assert!(RedirectUrl::parse("f", "http://localhost:3001/paid", &allowed).is_err());
        assert!(RedirectUrl::parse("f", "https://localhost:3000/paid", &allowed).is_err());
        assert!(RedirectUrl::parse("f", "http://127.0.0.1:3000/paid", &allowed).is_err());
    }

    // --- RedirectUrl: refused ---

    #[test]
    fn dangerous_schemes_are_refused() {
        for raw in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "vbscript:msgbox",
        ] {
            let why = refused(raw);
            assert!(why.contains("is not allowed"), "{raw}: {why}");
        }
    }

    #[test]
    fn plain_http_is_refused() {
        assert!(refused("http://billing.example.com/paid").contains("https"));
    }

    #[test]
    fn user_info_is_refused() {
        for raw in [
            "https://a@evil.example",
            "https://billing.example.com@evil.example/",
            "https://user:pw@billing.example.com/paid",
            "billingapp://user@host/x",
        ] {
            assert!(refused(raw).contains("user info"), "{raw}");
        }
    }

    #[test]
    fn foreign_and_look_alike_hosts_are_refused() {
        for raw in [
            "https://evil.example/paid",
            "https://billing.example.com.evil.com/paid",
            "https://evilbilling.example.com/paid",
            "https://sub.billing.example.com/paid",
            "https://example.com/paid",
            "https://billing.example.co/paid",
            "https://billing.example.com./paid",
            "https://xn--bllng-7qa.example.com/paid",
        ] {
            assert!(refused(raw).contains("allowed redirect origins"), "{raw}");
        }
    }

    #[test]
    fn unknown_app_schemes_are_refused() {
        assert!(refused("otherapp://x").contains("app scheme"));
        assert!(refused("billingapp2://x").contains("app scheme"));
    }

    #[test]
    fn backslashes_are_refused() {
        for raw in [
            "https://billing.example.com\\@evil.example",
            "https:\\\\evil.example",
            "https://billing.example.com/a\\b",
        ] {
            assert!(refused(raw).contains("backslash"), "{raw}");
        }
    }

    #[test]
    fn control_characters_and_whitespace_are_refused() {
        for raw in [
            "https://billing.example.com/pa\nid",
            "https://billing.exam\tple.com/paid",
            "\u{0}https://billing.example.com/",
            "https://billing.example.com/\u{7F}",
            "https://billing.example.com\u{200B}/paid",
            "https://billing.example.com/\u{202E}diap",
        ] {
            assert!(refused(raw).contains("control"), "{raw:?}");
        }
        for raw in [
            " https://billing.example.com/",
            "https://billing.example.com/a b",
        ] {
            assert!(refused(raw).contains("whitespace"), "{raw:?}");
        }
    }

    #[test]
    fn fragments_are_refused() {
        assert!(refused("https://billing.example.com/paid#x").contains("fragment"));
        assert!(refused("https://billing.example.com/paid#").contains("fragment"));
    }

    #[test]
    fn relative_and_empty_urls_are_refused() {
        for raw in [
            "/paid",
            "//evil.example/paid",
            "billing.example.com/paid",
            "?x=1",
        ] {
            assert!(refused(raw).contains("absolute"), "{raw}");
        }
        assert!(refused("").contains("empty"));
    }

    #[test]
    fn urls_longer_than_2048_are_refused() {
        let base = "https://billing.example.com/";
        let ok = format!("{base}{}", "a".repeat(2048 - base.len()));
        assert!(parse(&ok).is_ok());
        assert!(refused(&format!("{ok}a")).contains("2048"));
    }

    #[test]
    fn debug_shows_the_url_as_text() {
        let url = parse("https://billing.example.com/paid").unwrap();
        assert_eq!(
            format!("{url:?}"),
            r#"RedirectUrl("https://billing.example.com/paid")"#
        );
    }

    #[test]
    fn no_origins_means_no_url() {
        assert!(RedirectUrl::parse("failure_url", "https://billing.example.com/", &[]).is_err());
    }

    #[test]
    fn the_violation_names_the_given_field() {
        let err =
            RedirectUrl::parse("failure_url", "https://evil.example/", &billing()).unwrap_err();
        assert_eq!(err.field, "failure_url");
    }

    // --- with_query ---

    #[test]
    fn with_query_appends_parameters() {
        let url = parse("https://billing.example.com/paid").unwrap();
        let next = url.with_query(&[("payment_id", "pay_x"), ("status", "succeeded")]);
        assert_eq!(
            next.as_str(),
            "https://billing.example.com/paid?payment_id=pay_x&status=succeeded"
        );
        // The original is untouched.
        assert_eq!(url.as_str(), "https://billing.example.com/paid");
    }

    #[test]
    fn with_query_replaces_same_named_parameters_and_keeps_others() {
        let url =
            parse("https://billing.example.com/paid?lang=de&status=forged&status=again").unwrap();
        let next = url.with_query(&[("status", "failed"), ("invoice_id", "INV 1&2")]);
        assert_eq!(
            next.as_str(),
            "https://billing.example.com/paid?lang=de&status=failed&invoice_id=INV+1%262"
        );
    }

    #[test]
    fn with_query_works_for_app_scheme_urls() {
        let url = parse("billingapp://payment/done").unwrap();
        assert_eq!(
            url.with_query(&[("status", "succeeded")]).as_str(),
            "billingapp://payment/done?status=succeeded"
        );
        let opaque = parse("billingapp:done").unwrap();
        assert_eq!(
            opaque.with_query(&[("status", "succeeded")]).as_str(),
            "billingapp:done?status=succeeded"
        );
    }

    #[test]
    fn with_query_result_stays_under_the_origin() {
        let url = parse("https://billing.example.com/paid").unwrap();
        let next = url.with_query(&[("next", "https://evil.example/#x")]);
        assert!(RedirectUrl::parse("success_url", next.as_str(), &billing()).is_ok());
    }
}
