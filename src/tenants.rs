//! The tenants file (`PAYBRIDGE_TENANTS_FILE`): which internal platforms may call, with which
//! credential, and where their customers' browsers may be sent back to.
//!
//! ```toml
//! [[tenants]]
//! id = "billing"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! allowed_redirect_origins = ["https://billing.example.com", "billingapp:"]
//! success_url = "https://billing.example.com/paid"
//! failure_url = "https://billing.example.com/payment-failed"
//! # Optional: each event is POSTed here, signed with the secret in the file (issue 16).
//! webhook_url = "https://billing.example.com/paybridge/events"
//! webhook_secret_file = "/etc/paybridge/push-secrets/billing"
//! # Optional: what the hosted payment page shows (issue 18); the name defaults to the id, and
//! # the logo must lie on one of allowed_redirect_origins (http or https).
//! display_name = "Example Billing"
//! logo_url = "https://billing.example.com/logo.png"
//! ```
//!
//! Only the SHA-256 of each bearer token is stored, never the token. Every problem is reported as
//! one line naming the tenant and the field, so a bad file stops start-up with a clear message.
//! A relative `webhook_secret_file` is read from the tenants file's folder; the secret itself
//! never appears in a message, a log line or a Debug.

use std::fmt;
use std::path::{Path, PathBuf};

use constant_time_eq::constant_time_eq_32;
use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::domain::{FieldViolation, RedirectOrigin, RedirectUrl, TenantId};

/// The SHA-256 of a bearer token. Its Debug never shows the hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented bearer token.
    pub fn of_token(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits (either case). Refuses the hash of the empty token, which would let
    /// a caller in by sending no credential at all.
    pub fn parse_hex(raw: &str) -> Result<TokenHash, String> {
        if raw.len() != 64 {
            return Err(format!(
                "must be 64 hex digits (a SHA-256), got {} characters",
                raw.chars().count()
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(raw, &mut bytes)
            .map_err(|_| "must be 64 hex digits (a SHA-256): found a non-hex character")?;
        let hash = TokenHash(bytes);
        if hash == TokenHash::of_token("") {
            return Err("is the SHA-256 of an empty token".into());
        }
        Ok(hash)
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        constant_time_eq_32(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// Where a tenant's events are pushed (`webhook_url`), and the secret they are signed with (read
/// from `webhook_secret_file`). Its Debug shows the URL only.
#[derive(Clone)]
pub struct PushEndpoint {
    url: Url,
    secret: SecretString,
}

impl PushEndpoint {
    /// Fewest characters a signing secret may have.
    pub const MIN_SECRET_LEN: usize = 16;

    /// Checks a push endpoint: `https`, or `http` to a loopback address only (tests and local
    /// tools); no user name or password in the URL, no fragment.
    pub fn new(url: &str, secret: SecretString) -> Result<PushEndpoint, String> {
        let url = Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err(
                    "must be https (http only to a loopback address: localhost, 127.0.0.1, [::1])"
                        .to_owned(),
                );
            }
            other => return Err(format!("must be an https URL, not {other}:")),
        }
        if url.host().is_none() {
            return Err("must name a host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".to_owned());
        }
        if url.fragment().is_some() {
            return Err("must not have a fragment".to_owned());
        }
        use secrecy::ExposeSecret;
        if secret.expose_secret().chars().count() < Self::MIN_SECRET_LEN {
            return Err(format!(
                "needs a signing secret of at least {} characters",
                Self::MIN_SECRET_LEN
            ));
        }
        Ok(PushEndpoint { url, secret })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The signing secret: for the signature only, never for a log.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
}

impl fmt::Debug for PushEndpoint {
    /// The URL without its query, which may carry a credential of the receiver's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.query().is_some() {
            shown.set_query(Some("redacted"));
        }
        f.debug_struct("PushEndpoint")
            .field("url", &shown.as_str())
            .finish_non_exhaustive()
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// One internal platform allowed to call paybridge.
#[derive(Clone)]
pub struct Tenant {
    id: TenantId,
    allowed_redirect_origins: Vec<RedirectOrigin>,
    /// Where the browser goes after a successful payment, unless the request names its own URL.
    success_url: RedirectUrl,
    /// Where the browser goes after a failed or cancelled payment, likewise.
    failure_url: RedirectUrl,
    /// Private and left out of Debug: even a hash should not end up in logs.
    token_sha256: TokenHash,
    /// Where its events are pushed, if anywhere.
    push: Option<PushEndpoint>,
    /// The name the hosted payment page shows.
    display_name: String,
    /// The logo the hosted payment page shows, on one of its allowed origins.
    logo_url: Option<RedirectUrl>,
}

impl Tenant {
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    pub fn allowed_redirect_origins(&self) -> &[RedirectOrigin] {
        &self.allowed_redirect_origins
    }

    pub fn success_url(&self) -> &RedirectUrl {
        &self.success_url
    }

    pub fn failure_url(&self) -> &RedirectUrl {
        &self.failure_url
    }

    /// Where its events are pushed, when it declared `webhook_url`.
    pub fn push(&self) -> Option<&PushEndpoint> {
        self.push.as_ref()
    }

    /// The name its customers know it by (`display_name`, or the id).
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// Its logo for the hosted payment page, if it declared one.
    pub fn logo_url(&self) -> Option<&RedirectUrl> {
        self.logo_url.as_ref()
    }

    /// Parses a URL from a request (`success_url`, `failure_url`) against this tenant's origins.
    pub fn redirect_url(&self, field: &str, raw: &str) -> Result<RedirectUrl, FieldViolation> {
        RedirectUrl::parse(field, raw, &self.allowed_redirect_origins)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("allowed_redirect_origins", &self.allowed_redirect_origins)
            .field("success_url", &self.success_url)
            .field("failure_url", &self.failure_url)
            .field("push", &self.push)
            .field("display_name", &self.display_name)
            .field("logo_url", &self.logo_url)
            .finish_non_exhaustive()
    }
}

/// Every tenant of the file; at least one, ids and token hashes unique.
#[derive(Debug, Clone)]
pub struct Tenants {
    tenants: Vec<Tenant>,
}

/// Why the tenants file was refused. Each Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read tenants file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A problem in a file that was read; wraps the problem with the file's path.
    #[error("tenants file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<TenantsError>,
    },
    /// Not valid TOML, or a key that is not part of the format (a typo would otherwise be
    /// silently ignored).
    #[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Syntax {
        line: Option<usize>,
        message: String,
    },
    #[error("no tenants: declare at least one [[tenants]] table")]
    NoTenants,
    /// `tenant` is the tenant's id when it has a readable one, else its position (`#2`).
    #[error("tenant {tenant}: {field} {message}")]
    Invalid {
        tenant: String,
        field: String,
        message: String,
    },
}

/// The file as written, before any checking. Every field is optional here so that a missing one
/// gets a message naming its tenant instead of serde's "missing field".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Option<String>,
    token_sha256: Option<String>,
    allowed_redirect_origins: Option<Vec<String>>,
    success_url: Option<String>,
    failure_url: Option<String>,
    webhook_url: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    display_name: Option<String>,
    logo_url: Option<String>,
}

impl Tenants {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Tenants, TenantsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        Tenants::parse_toml_in(&text, folder).map_err(|e| TenantsError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Checks the text of a tenants file; relative `webhook_secret_file`s are read from the
    /// current folder.
    pub fn parse_toml(text: &str) -> Result<Tenants, TenantsError> {
        Tenants::parse_toml_in(text, Path::new("."))
    }

    /// Checks the text of a tenants file whose relative `webhook_secret_file`s lie in `folder`.
    pub fn parse_toml_in(text: &str, folder: &Path) -> Result<Tenants, TenantsError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TenantsError::Syntax {
            line: e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().trim().replace('\n', " "),
        })?;
        if raw.tenants.is_empty() {
            return Err(TenantsError::NoTenants);
        }
        let mut tenants: Vec<Tenant> = Vec::with_capacity(raw.tenants.len());
        for (index, raw_tenant) in raw.tenants.into_iter().enumerate() {
            let tenant = check_tenant(index, raw_tenant, folder)?;
            if let Some(first) = tenants.iter().position(|t| t.id == tenant.id) {
                return Err(invalid(
                    tenant.id.as_str(),
                    "id",
                    format!(
                        "is declared twice (tenants #{} and #{})",
                        first + 1,
                        index + 1
                    ),
                ));
            }
            if let Some(other) = tenants
                .iter()
                .find(|t| t.token_sha256 == tenant.token_sha256)
            {
                return Err(invalid(
                    tenant.id.as_str(),
                    "token_sha256",
                    format!(
                        "is the same as tenant {}'s: each tenant needs its own token",
                        other.id
                    ),
                ));
            }
            tenants.push(tenant);
        }
        Ok(Tenants { tenants })
    }

    /// The tenant whose token this is, if any. The token's hash is compared with every tenant's
    /// in constant time, without stopping at a match, so timing tells nothing about which tenant
    /// (or how many) there are.
    pub fn authenticate(&self, bearer_token: &str) -> Option<&Tenant> {
        if bearer_token.is_empty() {
            return None;
        }
        let presented = TokenHash::of_token(bearer_token);
        let mut found = None;
        for tenant in &self.tenants {
            if tenant.token_sha256.matches(&presented) {
                found = Some(tenant);
            }
        }
        found
    }

    /// Whether some tenant's token has this hash (to keep the gateway's token apart from all
    /// tenants').
    pub fn uses_token_hash(&self, hash: &TokenHash) -> bool {
        self.tenants
            .iter()
            .fold(false, |found, t| found | t.token_sha256.matches(hash))
    }

    /// The tenant with this id (e.g. the one a stored payment belongs to).
    pub fn get(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Always false for a checked file; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

fn invalid(tenant: &str, field: &str, message: impl Into<String>) -> TenantsError {
    TenantsError::Invalid {
        tenant: tenant.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

fn check_tenant(index: usize, raw: RawTenant, folder: &Path) -> Result<Tenant, TenantsError> {
    let position = format!("#{}", index + 1);
    let Some(raw_id) = raw.id else {
        return Err(invalid(&position, "id", "is missing"));
    };
    let id = TenantId::parse(&raw_id)
        .map_err(|v| invalid(&format!("{position} ({raw_id:?})"), "id", v.description))?;
    let name = id.as_str();
    let missing = |field: &str| invalid(name, field, "is missing");

    let token_sha256 = raw.token_sha256.ok_or_else(|| missing("token_sha256"))?;
    let token_sha256 = TokenHash::parse_hex(&token_sha256)
        .map_err(|message| invalid(name, "token_sha256", message))?;

    let raw_origins = raw
        .allowed_redirect_origins
        .ok_or_else(|| missing("allowed_redirect_origins"))?;
    if raw_origins.is_empty() {
        return Err(invalid(
            name,
            "allowed_redirect_origins",
            "must list at least one origin",
        ));
    }
    let allowed_redirect_origins = raw_origins
        .iter()
        .map(|o| RedirectOrigin::parse(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|v| invalid(name, "allowed_redirect_origins", v.description))?;

    let default_url = |field: &str, value: Option<String>| {
        let value = value.ok_or_else(|| missing(field))?;
        RedirectUrl::parse(field, &value, &allowed_redirect_origins)
            .map_err(|v| invalid(name, field, v.description))
    };
    let success_url = default_url("success_url", raw.success_url)?;
    let failure_url = default_url("failure_url", raw.failure_url)?;
    let push = check_push(name, raw.webhook_url, raw.webhook_secret_file, folder)?;
    let display_name = check_display_name(name, raw.display_name)?;
    let logo_url = raw
        .logo_url
        .map(|raw| check_logo_url(name, &raw, &allowed_redirect_origins))
        .transpose()?;

    Ok(Tenant {
        id,
        allowed_redirect_origins,
        success_url,
        failure_url,
        token_sha256,
        push,
        display_name,
        logo_url,
    })
}

/// Longest `display_name`, in characters.
const MAX_DISPLAY_NAME: usize = 100;

/// 1–100 characters, no control characters, no surrounding spaces; the id when absent.
fn check_display_name(name: &str, raw: Option<String>) -> Result<String, TenantsError> {
    let Some(raw) = raw else {
        return Ok(name.to_owned());
    };
    let count = raw.chars().count();
    if count == 0 || count > MAX_DISPLAY_NAME {
        return Err(invalid(
            name,
            "display_name",
            format!("must have 1 to {MAX_DISPLAY_NAME} characters"),
        ));
    }
    if raw.chars().any(char::is_control) || raw.trim() != raw {
        return Err(invalid(
            name,
            "display_name",
            "must have no control characters and no surrounding spaces",
        ));
    }
    Ok(raw)
}

/// An http(s) URL on one of the tenant's allowed origins (the page's Content-Security-Policy
/// allows images from that origin only).
fn check_logo_url(
    name: &str,
    raw: &str,
    origins: &[RedirectOrigin],
) -> Result<RedirectUrl, TenantsError> {
    let url = RedirectUrl::parse("logo_url", raw, origins)
        .map_err(|v| invalid(name, "logo_url", v.description))?;
    match Url::parse(url.as_str()) {
        Ok(parsed) if matches!(parsed.scheme(), "https" | "http") && parsed.host().is_some() => {
            Ok(url)
        }
        _ => Err(invalid(name, "logo_url", "must be an http(s) URL")),
    }
}

/// `webhook_url` and `webhook_secret_file` go together; the file must hold the secret (one
/// trailing newline is not part of it). Messages name the file, never its content.
fn check_push(
    name: &str,
    url: Option<String>,
    secret_file: Option<PathBuf>,
    folder: &Path,
) -> Result<Option<PushEndpoint>, TenantsError> {
    let (url, secret_file) = match (url, secret_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(invalid(
                name,
                "webhook_secret_file",
                "is missing: webhook_url needs a signing secret",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                name,
                "webhook_url",
                "is missing: webhook_secret_file is set without it",
            ));
        }
        (Some(url), Some(file)) => (url, folder.join(file)),
    };
    let text = std::fs::read_to_string(&secret_file).map_err(|e| {
        invalid(
            name,
            "webhook_secret_file",
            format!("cannot be read ({}): {e}", secret_file.display()),
        )
    })?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() || secret.trim() != secret {
        return Err(invalid(
            name,
            "webhook_secret_file",
            format!(
                "({}) must hold the secret alone, without surrounding spaces",
                secret_file.display()
            ),
        ));
    }
    if secret.chars().count() < PushEndpoint::MIN_SECRET_LEN {
        return Err(invalid(
            name,
            "webhook_secret_file",
            format!(
                "({}) must hold a secret of at least {} characters",
                secret_file.display(),
                PushEndpoint::MIN_SECRET_LEN
            ),
        ));
    }
    PushEndpoint::new(&url, SecretString::from(secret.to_owned()))
        .map(Some)
        .map_err(|message| invalid(name, "webhook_url", message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "test".
    const TEST_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn hash_hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    const SAMPLE: &str = r#"
# Two internal platforms.
[[tenants]]
id = "billing"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")
allowed_redirect_origins = ["https://billing.example.com", "billingapp:"]
success_url = "https://billing.example.com/paid"
failure_url = "https://billing.example.com/payment-failed"

[[tenants]]
id = "orders-eu"
token_sha256 = "09DC72C7E34679DCA4F27B58144A13C8C100A058C3F2AABBC6D0513634808F24"  # sha256("orders-token"), uppercase
allowed_redirect_origins = ["https://shop.example.eu:8443", "http://localhost:3000"]
success_url = "https://shop.example.eu:8443/thanks"
failure_url = "http://localhost:3000/failed"
"#;

    fn tenant_toml(id: &str, token: &str) -> String {
        format!(
            r#"
[[tenants]]
id = "{id}"
token_sha256 = "{}"
allowed_redirect_origins = ["https://{id}.example.com"]
success_url = "https://{id}.example.com/ok"
failure_url = "https://{id}.example.com/ko"
"#,
            hash_hex(token)
        )
    }

    /// One valid tenant with `line` replaced (matched by its key) or, if no key matches, added.
    fn with_line(key: &str, line: &str) -> String {
        let base = tenant_toml("billing", "test");
        let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
        match lines
            .iter()
            .position(|l| l.starts_with(&format!("{key} =")))
        {
            Some(i) if line.is_empty() => {
                lines.remove(i);
            }
            Some(i) => lines[i] = line.to_owned(),
            None => lines.push(line.to_owned()),
        }
        lines.join("\n")
    }

    fn refused(text: &str) -> String {
        let err = Tenants::parse_toml(text).expect_err(text);
        let message = err.to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        message
    }

    #[test]
    fn sample_file_parses() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        assert_eq!(tenants.len(), 2);
        assert!(!tenants.is_empty());
        let billing = tenants.get("billing").unwrap();
        assert_eq!(billing.id().as_str(), "billing");
        assert_eq!(billing.allowed_redirect_origins().len(), 2);
        assert_eq!(
            billing.success_url().as_str(),
            "https://billing.example.com/paid"
        );
        assert_eq!(
            billing.failure_url().as_str(),
            "https://billing.example.com/payment-failed"
        );
        let orders = tenants.get("orders-eu").unwrap();
        assert_eq!(
            orders.success_url().as_str(),
            "https://shop.example.eu:8443/thanks"
        );
        assert_eq!(
            orders.failure_url().as_str(),
            "http://localhost:3000/failed"
        );
        let ids: Vec<_> = tenants.iter().map(|t| t.id().as_str()).collect();
        assert_eq!(ids, ["billing", "orders-eu"]);
        assert!(tenants.get("nobody").is_none());
    }

    #[test]
    fn display_name_defaults_to_the_id_and_the_logo_must_lie_on_an_allowed_origin() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        let billing = tenants.get("billing").unwrap();
        assert_eq!(billing.display_name(), "billing");
        assert!(billing.logo_url().is_none());

        let named = with_line("display_name", "display_name = \"Billing & Co\"");
        let named = format!("{named}\nlogo_url = \"https://billing.example.com/logo.svg\"");
        let tenants = Tenants::parse_toml(&named).unwrap();
        let billing = tenants.get("billing").unwrap();
        assert_eq!(billing.display_name(), "Billing & Co");
        assert_eq!(
            billing.logo_url().unwrap().as_str(),
            "https://billing.example.com/logo.svg"
        );

        for (line, field) in [
            ("display_name = \"\"", "display_name"),
            ("display_name = \" padded\"", "display_name"),
            ("display_name = \"a\\u0007b\"", "display_name"),
            ("logo_url = \"https://evil.example/logo.png\"", "logo_url"),
            ("logo_url = \"billingapp://logo.png\"", "logo_url"),
        ] {
            let text = with_line(line.split(' ').next().unwrap(), line);
            let text = text.replace(
                "allowed_redirect_origins = [\"https://billing.example.com\"]",
                "allowed_redirect_origins = [\"https://billing.example.com\", \"billingapp:\"]",
            );
            let message = refused(&text);
            assert!(message.contains(field), "{line}: {message}");
        }
        let long = format!("display_name = \"{}\"", "x".repeat(101));
        assert!(refused(&with_line("display_name", &long)).contains("display_name"));
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        assert_eq!(Tenants::load(&path).unwrap().len(), 2);

        std::fs::write(&path, "tenants = []").unwrap();
        let err = Tenants::load(&path).unwrap_err();
        assert!(
            matches!(&err, TenantsError::InFile { source, .. } if matches!(**source, TenantsError::NoTenants))
        );
        assert!(err.to_string().contains("tenants.toml"));

        let missing = dir.path().join("absent.toml");
        let err = Tenants::load(&missing).unwrap_err();
        assert!(matches!(err, TenantsError::Read { .. }));
        assert!(err.to_string().contains("absent.toml"));
    }

    // --- authenticate ---

    #[test]
    fn authenticate_finds_the_tenant_of_a_token() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        assert_eq!(
            tenants.authenticate("test").unwrap().id().as_str(),
            "billing"
        );
        assert_eq!(
            tenants.authenticate("orders-token").unwrap().id().as_str(),
            "orders-eu"
        );
    }

    #[test]
    fn authenticate_refuses_unknown_empty_and_near_tokens() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        for token in [
            "",
            "Test",
            "test ",
            " test",
            "tes",
            TEST_HASH,
            "Bearer test",
        ] {
            assert!(tenants.authenticate(token).is_none(), "{token:?}");
        }
    }

    #[test]
    fn uses_token_hash_tells_whether_a_hash_is_taken() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        assert!(tenants.uses_token_hash(&TokenHash::of_token("test")));
        assert!(!tenants.uses_token_hash(&TokenHash::of_token("gateway")));
    }

    #[test]
    fn tenant_redirect_url_uses_its_own_origins() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        let billing = tenants.get("billing").unwrap();
        assert!(
            billing
                .redirect_url("success_url", "billingapp://done")
                .is_ok()
        );
        let err = billing
            .redirect_url("success_url", "https://shop.example.eu:8443/thanks")
            .unwrap_err();
        assert_eq!(err.field, "success_url");
    }

    // --- Debug ---

    #[test]
    fn debug_never_shows_the_token_hash() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        for shown in [
            format!("{tenants:?}"),
            format!("{:#?}", tenants.get("billing").unwrap()),
        ] {
            assert!(shown.contains("billing"));
            assert!(!shown.contains("9f86d0"), "{shown}");
            assert!(!shown.to_lowercase().contains("09dc72c7"), "{shown}");
            assert!(!shown.contains("token_sha256"), "{shown}");
            // Nor as a byte array.
            assert!(!shown.contains("159, 134"), "{shown}");
        }
        assert_eq!(
            format!("{:?}", TokenHash::of_token("test")),
            "TokenHash(<redacted>)"
        );
    }

    // --- TokenHash ---

    #[test]
    fn token_hash_accepts_either_case() {
        let lower = TokenHash::parse_hex(TEST_HASH).unwrap();
        let upper = TokenHash::parse_hex(&TEST_HASH.to_uppercase()).unwrap();
        assert!(lower.matches(&upper));
        assert!(lower.matches(&TokenHash::of_token("test")));
    }

    #[test]
    fn token_hash_must_be_64_hex_digits() {
        assert!(
            TokenHash::parse_hex(&TEST_HASH[..63])
                .unwrap_err()
                .contains("64")
        );
        assert!(TokenHash::parse_hex(&format!("{TEST_HASH}0")).is_err());
        assert!(
            TokenHash::parse_hex(&TEST_HASH.replace('9', "g"))
                .unwrap_err()
                .contains("non-hex")
        );
        assert!(TokenHash::parse_hex("").is_err());
        // 64 bytes but not 64 characters.
        assert!(TokenHash::parse_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn token_hash_of_the_empty_token_is_refused() {
        let empty = hash_hex("");
        assert!(
            TokenHash::parse_hex(&empty)
                .unwrap_err()
                .contains("empty token")
        );
    }

    // --- file rules ---

    #[test]
    fn at_least_one_tenant() {
        for text in ["", "# nothing\n", "tenants = []"] {
            assert_eq!(
                refused(text),
                "no tenants: declare at least one [[tenants]] table"
            );
        }
    }

    #[test]
    fn ids_must_be_well_formed() {
        for bad in ["Billing", "bill ing", "", &"x".repeat(65), "billing!"] {
            let message = refused(&with_line("id", &format!("id = {bad:?}")));
            assert!(message.starts_with("tenant #1 ("), "{message}");
            assert!(message.contains(": id "), "{message}");
        }
    }

    #[test]
    fn ids_must_be_unique() {
        let text = format!(
            "{}{}",
            tenant_toml("billing", "one"),
            tenant_toml("billing", "two")
        );
        let message = refused(&text);
        assert_eq!(
            message,
            "tenant billing: id is declared twice (tenants #1 and #2)"
        );
    }

    #[test]
    fn token_hashes_must_be_unique() {
        let text = format!(
            "{}{}",
            tenant_toml("billing", "same"),
            tenant_toml("orders", "same")
        );
        assert_eq!(
            refused(&text),
            "tenant orders: token_sha256 is the same as tenant billing's: each tenant needs its own token"
        );
    }

    #[test]
    fn token_hashes_that_differ_only_in_case_are_the_same() {
        let text = format!(
            "{}{}",
            tenant_toml("billing", "same"),
            tenant_toml("orders", "same")
                .replace(&hash_hex("same"), &hash_hex("same").to_uppercase())
        );
        assert!(refused(&text).contains("token_sha256 is the same"));
    }

    #[test]
    fn token_hash_must_be_hex_sha256() {
        let message = refused(&with_line("token_sha256", r#"token_sha256 = "test""#));
        assert!(
            message.starts_with("tenant billing: token_sha256 must be 64 hex digits"),
            "{message}"
        );
    }

    #[test]
    fn every_field_is_required() {
        for field in [
            "token_sha256",
            "allowed_redirect_origins",
            "success_url",
            "failure_url",
        ] {
            assert_eq!(
                refused(&with_line(field, "")),
                format!("tenant billing: {field} is missing")
            );
        }
        assert_eq!(refused(&with_line("id", "")), "tenant #1: id is missing");
    }

    #[test]
    fn allowed_origins_must_be_well_formed_and_not_empty() {
        let message = refused(&with_line(
            "allowed_redirect_origins",
            "allowed_redirect_origins = []",
        ));
        assert_eq!(
            message,
            "tenant billing: allowed_redirect_origins must list at least one origin"
        );
        for bad in [
            "http://billing.example.com",
            "https://billing.example.com/path",
            "javascript:",
            "https://user@billing.example.com",
        ] {
            let message = refused(&with_line(
                "allowed_redirect_origins",
                &format!("allowed_redirect_origins = [\"https://billing.example.com\", {bad:?}]"),
            ));
            assert!(
                message.starts_with("tenant billing: allowed_redirect_origins "),
                "{message}"
            );
            assert!(message.contains(bad), "{message}");
        }
    }

    #[test]
    fn default_urls_must_lie_under_the_allowed_origins() {
        let message = refused(&with_line(
            "success_url",
            r#"success_url = "https://evil.example/ok""#,
        ));
        assert_eq!(
            message,
            "tenant billing: success_url must lie under one of the tenant's allowed redirect origins"
        );
        let message = refused(&with_line(
            "failure_url",
            r#"failure_url = "https://billing.example.com.evil.com/ko""#,
        ));
        assert!(
            message.starts_with("tenant billing: failure_url "),
            "{message}"
        );
        let message = refused(&with_line(
            "failure_url",
            r#"failure_url = "https://billing.example.com/ko#x""#,
        ));
        assert!(message.contains("fragment"), "{message}");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line_number() {
        let message = refused(&with_line("token", r#"token = "test""#));
        assert!(
            message.starts_with("line 8: unknown field `token`"),
            "{message}"
        );
        let message = refused(&format!("version = 1\n{}", tenant_toml("billing", "test")));
        assert!(
            message.starts_with("line 1: unknown field `version`"),
            "{message}"
        );
    }

    #[test]
    fn toml_syntax_errors_are_one_line() {
        let message = refused("[[tenants]]\nid \"billing\"\n");
        assert!(message.starts_with("line 2: "), "{message}");
        let message = refused(&with_line("id", "id = 42"));
        assert!(message.contains("invalid type"), "{message}");
    }

    // --- pushes ---

    /// A tenants file with `extra` lines for `billing`, and a secret file `push.secret` holding
    /// `secret` beside it.
    fn push_file(extra: &str, secret: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("push.secret"), secret).unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(
            &path,
            format!("{}\n{extra}\n", tenant_toml("billing", "test")),
        )
        .unwrap();
        (dir, path)
    }

    fn push_refused(extra: &str, secret: &str) -> String {
        let (_dir, path) = push_file(extra, secret);
        let error = Tenants::load(&path).expect_err(extra);
        let TenantsError::InFile { source, .. } = error else {
            panic!("not a problem in the file: {error}");
        };
        let message = source.to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        assert!(
            !message.contains(secret.trim()) || secret.trim().is_empty(),
            "{message}"
        );
        message
    }

    const GOOD_SECRET: &str = "psk_0123456789abcdef";

    #[test]
    fn a_push_endpoint_is_read_with_its_secret_from_a_file_beside_the_tenants_file() {
        use secrecy::ExposeSecret;
        let (_dir, path) = push_file(
            "webhook_url = \"https://billing.example.com/events\"\nwebhook_secret_file = \"push.secret\"",
            &format!("{GOOD_SECRET}\n"),
        );
        let tenants = Tenants::load(&path).unwrap();
        let push = tenants
            .get("billing")
            .unwrap()
            .push()
            .expect("a push endpoint");
        assert_eq!(push.url().as_str(), "https://billing.example.com/events");
        assert_eq!(
            push.secret().expose_secret(),
            GOOD_SECRET,
            "without the newline"
        );
        let shown = format!("{tenants:?}");
        assert!(
            shown.contains("https://billing.example.com/events"),
            "{shown}"
        );
        assert!(!shown.contains(GOOD_SECRET), "{shown}");

        let with_query = PushEndpoint::new(
            "https://hooks.example.com/in?key=receiver-credential",
            SecretString::from(GOOD_SECRET.to_owned()),
        )
        .unwrap();
        let shown = format!("{with_query:?}");
        assert!(!shown.contains("receiver-credential"), "{shown}");
        assert!(shown.contains("https://hooks.example.com/in?"), "{shown}");
        assert_eq!(
            with_query.url().as_str(),
            "https://hooks.example.com/in?key=receiver-credential",
            "sent as configured"
        );
    }

    #[test]
    fn tenants_without_a_push_endpoint_have_none() {
        let tenants = Tenants::parse_toml(SAMPLE).unwrap();
        assert!(tenants.iter().all(|t| t.push().is_none()));
    }

    #[test]
    fn http_push_urls_are_for_loopback_only() {
        for url in [
            "http://127.0.0.1:8123/events",
            "http://localhost/events",
            "http://[::1]:9000/",
        ] {
            let (_dir, path) = push_file(
                &format!("webhook_url = {url:?}\nwebhook_secret_file = \"push.secret\""),
                GOOD_SECRET,
            );
            assert!(Tenants::load(&path).is_ok(), "{url}");
        }
        for (url, expected) in [
            ("http://billing.example.com/events", "must be https"),
            ("http://10.0.0.1/events", "must be https"),
            ("ftp://billing.example.com/events", "must be an https URL"),
            ("billing.example.com/events", "is not a URL"),
            (
                "https://user:pw@billing.example.com/",
                "user name or password",
            ),
            ("https://billing.example.com/events#x", "fragment"),
        ] {
            let message = push_refused(
                &format!("webhook_url = {url:?}\nwebhook_secret_file = \"push.secret\""),
                GOOD_SECRET,
            );
            assert!(
                message.starts_with("tenant billing: webhook_url "),
                "{message}"
            );
            assert!(message.contains(expected), "{url}: {message}");
        }
    }

    #[test]
    fn push_url_and_secret_file_go_together() {
        assert_eq!(
            push_refused(
                "webhook_url = \"https://billing.example.com/e\"",
                GOOD_SECRET
            ),
            "tenant billing: webhook_secret_file is missing: webhook_url needs a signing secret"
        );
        assert_eq!(
            push_refused("webhook_secret_file = \"push.secret\"", GOOD_SECRET),
            "tenant billing: webhook_url is missing: webhook_secret_file is set without it"
        );
    }

    #[test]
    fn push_secret_files_must_exist_and_hold_a_long_enough_secret_never_shown() {
        let extra = |file: &str| {
            format!(
                "webhook_url = \"https://billing.example.com/e\"\nwebhook_secret_file = {file:?}"
            )
        };
        let message = push_refused(&extra("absent.secret"), GOOD_SECRET);
        assert!(
            message.starts_with("tenant billing: webhook_secret_file cannot be read ("),
            "{message}"
        );
        assert!(message.contains("absent.secret"), "{message}");
        for (secret, expected) in [
            ("short-secret", "at least 16 characters"),
            ("", "must hold the secret alone"),
            ("  psk_0123456789abcdef", "must hold the secret alone"),
            ("psk_0123456789abcdef\n\n", "must hold the secret alone"),
        ] {
            let message = push_refused(&extra("push.secret"), secret);
            assert!(
                message.starts_with("tenant billing: webhook_secret_file ("),
                "{message}"
            );
            assert!(message.contains(expected), "{secret:?}: {message}");
        }
    }
}
