//! Webhook secrets and the two signatures every delivery carries (DESIGN §3.5).
//!
//! One secret per endpoint, issued as `whsec_<base64 of 32 random bytes>` and
//! shown to the user once. It serves both schemes, so a receiver needs only
//! the string it was shown:
//!
//! * `WorkOS-Signature: t=<unix ms>, v1=<hex HMAC-SHA256(key, "<t>.<body>")>`
//!   where the key is the secret string exactly as shown (its UTF-8 bytes,
//!   `whsec_` prefix included) — what the official SDKs' `constructEvent` does
//!   with the secret it is given;
//! * Standard Webhooks: `webhook-id`, `webhook-timestamp` (unix s) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>`
//!   where the key is the base64-decoded part after `whsec_` — what the
//!   Standard Webhooks libraries derive from a `whsec_…` secret.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::Secret;

/// Prefix of every endpoint secret (the Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;

pub const WORKOS_SIGNATURE: &str = "workos-signature";
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the webhook secret is not `whsec_` followed by base64")]
    MalformedSecret,
}

/// A fresh endpoint secret.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// What list and update responses show instead of the secret: enough to tell
/// two secrets apart, nothing to sign with.
pub fn redact(secret: &Secret) -> String {
    let tail: String = secret.expose().chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{SECRET_PREFIX}****{tail}")
}

/// The Standard Webhooks key bytes of a `whsec_…` secret.
pub fn standard_key(secret: &Secret) -> Result<Vec<u8>, SignError> {
    let encoded = secret.expose().strip_prefix(SECRET_PREFIX).ok_or(SignError::MalformedSecret)?;
    base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| SignError::MalformedSecret)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The `WorkOS-Signature` header value for `body` sent at `timestamp_ms`.
pub fn workos_signature(secret: &Secret, timestamp_ms: i64, body: &[u8]) -> String {
    let t = timestamp_ms.to_string();
    let mac = hmac_sha256(secret.expose().as_bytes(), &[t.as_bytes(), b".", body]);
    format!("t={t}, v1={}", hex::encode(mac))
}

/// The `webhook-signature` header value (Standard Webhooks, scheme `v1`).
pub fn standard_signature(secret: &Secret, msg_id: &str, timestamp_s: i64, body: &[u8]) -> Result<String, SignError> {
    let key = zeroize::Zeroizing::new(standard_key(secret)?);
    let ts = timestamp_s.to_string();
    let mac = hmac_sha256(&key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac)))
}

/// Every signature header of one delivery attempt, as (name, value) pairs.
pub fn headers(
    secret: &Secret,
    msg_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SignError> {
    let seconds = now.timestamp();
    Ok(vec![
        (WORKOS_SIGNATURE, workos_signature(secret, now.timestamp_millis(), body)),
        (WEBHOOK_ID, msg_id.to_owned()),
        (WEBHOOK_TIMESTAMP, seconds.to_string()),
        (WEBHOOK_SIGNATURE, standard_signature(secret, msg_id, seconds, body)?),
    ])
}
