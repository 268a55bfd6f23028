//! Widget tokens (DESIGN §3.6): short-lived, signed, bound to one user (and
//! organization). The widget's browser code presents one instead of an API
//! key, so it can act for that user only.
//!
//! Format: `wt1.<kid>.<claims>.<mac>` where `claims` is base64url JSON and
//! `mac` is base64url HMAC-SHA256 over `wt1.<kid>.<claims>`, keyed with a
//! subkey derived from the encryption key `kid` (never the raw key). A token
//! signed before a key rotation keeps working while its key stays in the ring.

pub mod pages;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::crypto::KeyRing;

const VERSION: &str = "wt1";
/// The purpose label of the derived signing key.
const LABEL: &str = "pipes/widget-token/v1";
/// Longer tokens are refused before any parsing.
const MAX_LEN: usize = 2048;

/// Whom a widget token acts for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidgetClaims {
    pub user_id: String,
    pub organization_id: Option<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    /// Unix seconds.
    exp: i64,
    iat: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WidgetTokenError {
    #[error("the widget token is malformed")]
    Malformed,
    #[error("the widget token's signature does not verify")]
    BadSignature,
    #[error("the widget token has expired")]
    Expired,
}

fn mac_for(ring: &KeyRing, kid: Option<&str>) -> Option<(String, Hmac<sha2::Sha256>)> {
    let (kid, key) = ring.derive_key(kid, LABEL)?;
    let mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_slice()).ok()?;
    Some((kid.to_owned(), mac))
}

/// Signs a token for `user_id` (and `organization_id`) valid until `now + ttl`.
pub fn issue(
    ring: &KeyRing,
    user_id: &str,
    organization_id: Option<&str>,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> (String, DateTime<Utc>) {
    let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::minutes(30));
    let wire = Wire {
        sub: user_id.to_owned(),
        org: organization_id.map(str::to_owned),
        exp: expires_at.timestamp(),
        iat: now.timestamp(),
    };
    // Serializing a struct of strings and integers cannot fail.
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default());
    // The ring always has a newest key (parsing refuses an empty ring).
    let Some((kid, mut mac)) = mac_for(ring, None) else {
        return (String::new(), expires_at);
    };
    let signed = format!("{VERSION}.{kid}.{claims}");
    mac.update(signed.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    (format!("{signed}.{sig}"), expires_at)
}

/// Checks the signature first, then the expiry at `now`.
pub fn verify(ring: &KeyRing, token: &str, now: DateTime<Utc>) -> Result<WidgetClaims, WidgetTokenError> {
    if token.len() > MAX_LEN {
        return Err(WidgetTokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(VERSION), Some(kid), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WidgetTokenError::Malformed);
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| WidgetTokenError::Malformed)?;
    // A key no longer in the ring cannot vouch for anything.
    let (_, mut mac) = mac_for(ring, Some(kid)).ok_or(WidgetTokenError::BadSignature)?;
    mac.update(format!("{VERSION}.{kid}.{claims}").as_bytes());
    mac.verify_slice(&sig).map_err(|_| WidgetTokenError::BadSignature)?;
    let bytes = URL_SAFE_NO_PAD.decode(claims).map_err(|_| WidgetTokenError::Malformed)?;
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| WidgetTokenError::Malformed)?;
    let expires_at = Utc.timestamp_opt(wire.exp, 0).single().ok_or(WidgetTokenError::Malformed)?;
    if expires_at <= now {
        return Err(WidgetTokenError::Expired);
    }
    Ok(WidgetClaims { user_id: wire.sub, organization_id: wire.org, expires_at })
}
