//! Reading a token endpoint's answer: the standard shape (RFC 6749 §5.1) and
//! the quirks of the catalog (Slack's `authed_user` and `ok: false`, string
//! `expires_in`, errors in HTTP 200s, HubSpot's `status`), and classifying
//! failures (DESIGN §2.4) into what the caller must do.

use std::time::Duration;

use serde_json::Value;

use crate::oauth::catalog::{OAuthSpec, TokenResponseShape};
use crate::secret::Secret;

/// The token endpoint's raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Tokens a provider issued.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<Duration>,
    /// Granted scopes, when the provider says (`scope`); else the requested ones apply.
    pub scopes: Option<Vec<String>>,
    /// The provider's account, where the catalog says the answer names it.
    pub subject: Option<String>,
    /// The account's name for people, where the catalog says the answer names it.
    pub display_name: Option<String>,
}

/// Why a token request failed, by what must happen next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The grant is dead: the user must reauthorize.
    #[error("the provider refused the grant ({code})")]
    InvalidGrant { code: String, description: Option<String> },
    /// The integration's client credentials were refused.
    #[error("the provider refused the client credentials ({code})")]
    InvalidClient { code: String, description: Option<String> },
    /// Worth retrying later: 429, 5xx, timeouts, connection errors, garbled answers.
    #[error("transient provider failure: {reason}")]
    Transient { reason: String, retry_after: Option<Duration>, status: Option<u16> },
    /// Any other refusal (e.g. `invalid_request`, `invalid_scope`).
    #[error("the provider refused the request ({code})")]
    Rejected { code: String, description: Option<String>, status: u16 },
    /// The integration itself is misconfigured (URLs).
    #[error("integration misconfigured: {0}")]
    Config(String),
}

impl TokenGrant {
    /// When the token expires, counting `expires_in` from `requested_at` (no later
    /// than the provider's answer). Never overflows: the lifetime is bounded.
    pub fn expires_at(&self, requested_at: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let lifetime = chrono::Duration::from_std(self.expires_in?).ok()?;
        requested_at.checked_add_signed(lifetime)
    }
}

impl TokenError {
    /// A short, secret-free label for logs, metrics and stored errors.
    pub fn label(&self) -> String {
        match self {
            TokenError::InvalidGrant { code, .. } => format!("invalid_grant:{code}"),
            TokenError::InvalidClient { code, .. } => format!("invalid_client:{code}"),
            TokenError::Transient { reason, status, .. } => match status {
                Some(s) => format!("transient:{reason}:{s}"),
                None => format!("transient:{reason}"),
            },
            TokenError::Rejected { code, status, .. } => format!("rejected:{code}:{status}"),
            TokenError::Config(_) => "config".to_owned(),
        }
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The longest lifetime a token answer may claim; a longer `expires_in` is
/// taken as this, so no arithmetic on it can overflow a timestamp.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A lifetime in seconds, as a number or a numeric string (fractions dropped).
/// Zero, negative and unreadable values say nothing usable and count as not
/// stated, as a missing `expires_in` does: taking them at their word would make
/// every read refresh the token again at once.
fn seconds(v: &Value, key: &str) -> Option<Duration> {
    let secs = match v.get(key)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !secs.is_finite() || secs < 1.0 {
        return None;
    }
    Some(Duration::from_secs(secs.min(MAX_EXPIRES_IN.as_secs() as f64) as u64))
}

fn scopes(v: &Value, separator: &str) -> Option<Vec<String>> {
    match v.get("scope").or_else(|| v.get("scopes"))? {
        Value::String(s) => Some(
            s.split(|c: char| c.is_whitespace() || c == ',' || separator.contains(c))
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Value::Array(items) => Some(items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()),
        _ => None,
    }
}

fn error_code(v: &Value) -> Option<String> {
    text(v, "error").or_else(|| {
        // HubSpot answers `{"status": "BAD_REFRESH_TOKEN", "message": …}`.
        v.get("status")
            .and_then(Value::as_str)
            .filter(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .map(str::to_owned)
    })
}

/// Reads and classifies a token endpoint answer.
pub fn classify(oauth: &OAuthSpec, raw: &RawResponse) -> Result<TokenGrant, TokenError> {
    let status = raw.status;
    if status == 429 || status >= 500 {
        return Err(TokenError::Transient {
            reason: if status == 429 { "rate_limited".into() } else { "server_error".into() },
            retry_after: raw.retry_after,
            status: Some(status),
        });
    }
    let json: Option<Value> = serde_json::from_slice(&raw.body).ok().or_else(|| {
        // A few providers still answer form-encoded (RFC 6749 predates JSON everywhere).
        let pairs: serde_json::Map<String, Value> =
            form_urlencoded::parse(&raw.body).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
        (!pairs.is_empty() && pairs.contains_key("access_token") || pairs.contains_key("error"))
            .then_some(Value::Object(pairs))
    });
    let Some(json) = json else {
        return Err(match status {
            401 => TokenError::InvalidClient { code: "http_401".into(), description: None },
            200..=299 => {
                TokenError::Transient { reason: "unreadable_response".into(), retry_after: None, status: Some(status) }
            }
            _ => TokenError::Rejected { code: format!("http_{status}"), description: None, status },
        });
    };
    let envelope_failed =
        oauth.token_response == TokenResponseShape::Slack && json.get("ok") == Some(&Value::Bool(false));
    if let Some(code) =
        error_code(&json).filter(|_| envelope_failed || json.get("access_token").is_none() || status >= 400)
    {
        let description = text(&json, "error_description").or_else(|| text(&json, "message"));
        return Err(if oauth.is_invalid_grant(&code) {
            TokenError::InvalidGrant { code, description }
        } else if oauth.is_invalid_client(&code) || status == 401 {
            TokenError::InvalidClient { code, description }
        } else {
            TokenError::Rejected { code, description, status }
        });
    }
    if status >= 400 {
        return Err(match status {
            401 => TokenError::InvalidClient { code: "http_401".into(), description: None },
            _ => TokenError::Rejected { code: format!("http_{status}"), description: None, status },
        });
    }
    // Slack user tokens sit under `authed_user`; a bot token may sit at the top.
    let body = match oauth.token_response {
        TokenResponseShape::Slack => {
            json.get("authed_user").filter(|u| u.get("access_token").is_some()).unwrap_or(&json)
        }
        TokenResponseShape::Standard => &json,
        TokenResponseShape::Nested => oauth
            .token_path
            .as_deref()
            .unwrap_or("")
            .split('.')
            .filter(|k| !k.is_empty())
            .try_fold(&json, |at, key| at.get(key))
            .unwrap_or(&json),
    };
    let Some(access_token) = text(body, "access_token") else {
        return Err(TokenError::Transient {
            reason: "no_access_token".into(),
            retry_after: None,
            status: Some(status),
        });
    };
    Ok(TokenGrant {
        access_token: Secret::new(access_token),
        refresh_token: text(body, "refresh_token").map(Secret::new),
        expires_in: seconds(body, "expires_in"),
        scopes: scopes(body, &oauth.scope_separator),
        subject: oauth.account_identifier.as_deref().and_then(|path| subject(&json, path)),
        display_name: oauth.account_display_name.as_deref().and_then(|path| subject(&json, path)),
    })
}

/// The text at a dotted `path` of the answer (`owner.user.id`), at most 256 characters.
/// `id_token.<claim>` reads a claim of the OpenID Connect ID token in the answer. Its
/// signature is not checked: it came straight from the token endpoint over TLS, which
/// OpenID Connect Core (§3.1.3.7) accepts in place of one, and it only labels the account.
pub(crate) fn subject(json: &Value, path: &str) -> Option<String> {
    if let Some(claim) = path.strip_prefix("id_token.") {
        use base64::Engine;
        let token = json.get("id_token")?.as_str()?;
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        return subject(&claims, claim);
    }
    let (parents, last) = path.rsplit_once('.').map_or(("", path), |(p, l)| (p, l));
    let mut at = json;
    for key in parents.split('.').filter(|k| !k.is_empty()) {
        at = at.get(key)?;
    }
    text(at, last).filter(|s| s.chars().count() <= 256 && !s.chars().any(char::is_control))
}
