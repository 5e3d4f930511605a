//! `paybridge tenant new` and `paybridge tenant check`: making a tenant's credential and checking
//! a tenants file before it is deployed.

use std::path::Path;

use base64::Engine as _;
use rand::RngCore as _;

use super::{Tenants, TokenHash};

/// A new tenant: its bearer token (to hand to the tenant, shown once) and the TOML block to add
/// to the tenants file (the token's SHA-256 only).
#[derive(Debug)]
pub struct NewTenant {
    pub token: String,
    pub toml: String,
}

/// Makes a random token (256 bits, URL-safe base64 behind `pbt_`) and the tenant's block, checked
/// as the tenants file would be.
pub fn new_tenant(
    id: &str,
    origins: &[String],
    success_url: &str,
    failure_url: &str,
) -> Result<NewTenant, String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "pbt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let quoted = |value: &str| toml::Value::String(value.to_owned()).to_string();
    let toml = format!(
        "[[tenants]]\nid = {}\ntoken_sha256 = \"{hash}\"\nallowed_redirect_origins = [{}]\n\
         success_url = {}\nfailure_url = {}\n",
        quoted(id),
        origins
            .iter()
            .map(|origin| quoted(origin))
            .collect::<Vec<_>>()
            .join(", "),
        quoted(success_url),
        quoted(failure_url),
    );
    let tenants = Tenants::parse_toml(&toml).map_err(|error| error.to_string())?;
    debug_assert!(tenants.authenticate(&token).is_some());
    debug_assert!(tenants.uses_token_hash(&TokenHash::of_token(&token)));
    Ok(NewTenant { token, toml })
}

/// Checks the tenants file at `path` as `serve` would; the summary, or the reason it would be
/// refused (one line).
pub fn check_file(path: &Path) -> Result<String, String> {
    let tenants = Tenants::load(path).map_err(|error| error.to_string())?;
    let ids: Vec<&str> = tenants.iter().map(|t| t.id().as_str()).collect();
    Ok(format!(
        "{}: {} tenant{} ({})",
        path.display(),
        tenants.len(),
        if tenants.len() == 1 { "" } else { "s" },
        ids.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tenant_gets_a_fresh_token_and_a_block_that_checks_out() {
        let origins = vec![
            "https://billing.example.com".to_owned(),
            "billingapp:".to_owned(),
        ];
        let one = new_tenant(
            "billing",
            &origins,
            "https://billing.example.com/paid",
            "billingapp://failed",
        )
        .unwrap();
        let two = new_tenant(
            "billing",
            &origins,
            "https://billing.example.com/paid",
            "billingapp://failed",
        )
        .unwrap();
        assert_ne!(one.token, two.token);
        assert!(one.token.starts_with("pbt_") && one.token.len() == 4 + 43);
        assert!(
            !one.toml.contains(&one.token),
            "the block holds only the hash"
        );
        let tenants = Tenants::parse_toml(&one.toml).unwrap();
        assert_eq!(
            tenants.authenticate(&one.token).unwrap().id().as_str(),
            "billing"
        );
        assert!(tenants.authenticate(&two.token).is_none());
    }

    #[test]
    fn a_new_tenant_with_a_bad_url_is_refused_with_the_reason() {
        let error = new_tenant(
            "billing",
            &["https://billing.example.com".to_owned()],
            "https://elsewhere.example.com/paid",
            "https://billing.example.com/failed",
        )
        .unwrap_err();
        assert!(error.contains("success_url must lie under"), "{error}");
        let error = new_tenant(
            "Billing!",
            &["https://billing.example.com".to_owned()],
            "https://billing.example.com/paid",
            "https://billing.example.com/failed",
        )
        .unwrap_err();
        assert!(error.contains(": id "), "{error}");
    }

    #[test]
    fn check_file_summarises_a_good_file_and_explains_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let block = new_tenant(
            "billing",
            &["https://billing.example.com".to_owned()],
            "https://billing.example.com/paid",
            "https://billing.example.com/failed",
        )
        .unwrap()
        .toml;
        std::fs::write(&path, &block).unwrap();
        let summary = check_file(&path).unwrap();
        assert!(summary.ends_with(": 1 tenant (billing)"), "{summary}");
        std::fs::write(&path, block.replace("/paid", "#paid")).unwrap();
        let error = check_file(&path).unwrap_err();
        assert!(
            error.contains("line 5: tenant billing: success_url"),
            "{error}"
        );
    }
}
