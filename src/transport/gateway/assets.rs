//! The hosted payment page's static files, compiled in and served under
//! `/assets/<version>/<file>`. The version is a hash of the files' contents, so a changed file
//! gets a new URL and any copy may be cached for good.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::pages;

const PAY_JS: &str = include_str!("assets/pay.js");
const PAY_CSS: &str = include_str!("assets/pay.css");

/// The first 16 hex digits of the SHA-256 of every file.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = Sha256::new();
    for file in [PAY_JS, PAY_CSS] {
        hasher.update((file.len() as u64).to_be_bytes());
        hasher.update(file.as_bytes());
    }
    hex::encode(hasher.finalize())[..16].to_owned()
});

/// The path of one of the files, as the page links it.
pub(super) fn path(file: &str) -> String {
    format!("/assets/{}/{file}", *VERSION)
}

pub(super) async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    if version != *VERSION {
        return pages::not_found().await;
    }
    let (body, content_type) = match file.as_str() {
        "pay.js" => (PAY_JS, "text/javascript; charset=utf-8"),
        "pay.css" => (PAY_CSS, "text/css; charset=utf-8"),
        _ => return pages::not_found().await,
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The path changes with the contents.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}
