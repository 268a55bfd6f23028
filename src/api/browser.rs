//! The browser cookie that ties a connect flow to the browser that started it:
//! set when the widget starts a flow or the confirmation page is used, and required
//! by the callback, so a provider URL opened in another browser connects nothing.
//! Over https it is `__Host-pipes-browser` (Secure, host-only, `Path=/`); on a plain-http
//! development server, where a `Secure` cookie cannot be set, `pipes-browser`.
//! HttpOnly, and SameSite=Lax so that it comes along on the provider's redirect back.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::config::Config;
use crate::connect::STATE_TTL;
use crate::crypto::{random_token, sha256_hex};

fn cookie_name(config: &Config) -> &'static str {
    if config.plain_http() {
        "pipes-browser"
    } else {
        "__Host-pipes-browser"
    }
}

/// The value of the cookie `name` a request sent, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The browser's id, from its cookie; a value Pipes did not make is ignored.
fn browser_id(config: &Config, headers: &HeaderMap) -> Option<String> {
    cookie(headers, cookie_name(config))
        .filter(|v| v.len() == 43 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .map(str::to_owned)
}

/// The hash a flow stores of the browser that sent `headers` (`None`: no cookie).
pub fn hash(config: &Config, headers: &HeaderMap) -> Option<String> {
    browser_id(config, headers).map(|id| sha256_hex(&id))
}

/// Binds a flow to this browser: the hash to store with the flow, and the `Set-Cookie`
/// value that gives the browser its id (the one it has, renewed, or a new one).
pub fn bind(config: &Config, headers: &HeaderMap) -> (String, HeaderValue) {
    let id = browser_id(config, headers).unwrap_or_else(|| random_token(32));
    let secure = if config.plain_http() { "" } else { "; Secure" };
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        cookie_name(config),
        STATE_TTL.as_secs()
    );
    // The id is base64url and the rest fixed text: always a valid header value.
    let value = HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
    (sha256_hex(&id), value)
}

/// Whether a request comes from a page on Pipes' own origin: a browser always names the
/// origin of a cross-site POST (`Origin`, or `Sec-Fetch-Site`), and a request without
/// either is not a browser's, so it cannot carry a victim's cookie.
pub fn same_origin(config: &Config, headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().is_ok_and(|o| o == config.public_url.origin().ascii_serialization());
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}
