//! The parts of a bound flow outside the callback: the confirmation page's single-use
//! ticket (API-started flows), and the `connect_code` that a session-bound flow's
//! callback hands to the application instead of saving, redeemed by `finish` with the
//! `code_verifier` behind the application's `code_challenge`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::Digest;
use sqlx::Row;
use subtle::ConstantTimeEq;

use super::state::{pending, Intent, Pending};
use super::ConnectError;
use crate::crypto::{aad, random_token, sha256_hex};
use crate::ids::IntegrationId;
use crate::keys::columns;

/// How long the application's server has to call `finish` after the callback.
pub const CONNECT_CODE_TTL: Duration = Duration::from_secs(90);

/// A flow waiting on its confirmation page, as the page describes it.
#[derive(Debug)]
pub struct Confirming {
    pub integration_id: IntegrationId,
    pub user_id: String,
    pub organization_id: Option<String>,
    pub intent: Intent,
}

/// Why a confirmation ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRejection {
    Unknown,
    Used,
    Expired,
}

impl TicketRejection {
    pub fn message(self) -> &'static str {
        match self {
            TicketRejection::Unknown => {
                "This connection link is not valid. Start connecting again from the application."
            }
            TicketRejection::Used => {
                "This connection link was already used. Start connecting again from the application."
            }
            TicketRejection::Expired => {
                "This connection link has expired. Start connecting again from the application."
            }
        }
    }
}

/// The flow behind a confirmation ticket, if it can still be confirmed at `now`.
pub async fn confirming(
    state: &crate::state::AppState,
    ticket: &str,
    now: DateTime<Utc>,
) -> Result<Result<Confirming, TicketRejection>, ConnectError> {
    let row = sqlx::query(
        "SELECT integration_id, user_id, organization_id, connection_intent, connected_account_id,
                confirmed_at IS NOT NULL OR used_at IS NOT NULL AS used, expires_at <= $2 AS expired
         FROM oauth_states WHERE confirmation_hash = $1",
    )
    .bind(sha256_hex(ticket))
    .bind(now)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else { return Ok(Err(TicketRejection::Unknown)) };
    if row.get::<bool, _>("used") {
        return Ok(Err(TicketRejection::Used));
    }
    if row.get::<bool, _>("expired") {
        return Ok(Err(TicketRejection::Expired));
    }
    Ok(Ok(Confirming {
        integration_id: row.get("integration_id"),
        user_id: row.get("user_id"),
        organization_id: row.get("organization_id"),
        intent: Intent::from_columns(row.get("connection_intent"), row.get("connected_account_id")),
    }))
}

/// Uses a confirmation ticket once: binds the flow to `browser` (its cookie's hash)
/// and answers the provider's authorization URL.
pub async fn confirm(
    state: &crate::state::AppState,
    ticket: &str,
    browser: &str,
    now: DateTime<Utc>,
) -> Result<Result<url::Url, TicketRejection>, ConnectError> {
    let row = sqlx::query(
        "UPDATE oauth_states s SET confirmed_at = $3, browser_hash = $2, authorization_url_enc = NULL
         FROM (SELECT state_hash, authorization_url_enc FROM oauth_states WHERE confirmation_hash = $1 FOR UPDATE) old
         WHERE s.state_hash = old.state_hash AND s.confirmed_at IS NULL AND s.used_at IS NULL AND s.expires_at > $3
           AND old.authorization_url_enc IS NOT NULL
         RETURNING s.state_hash, old.authorization_url_enc",
    )
    .bind(sha256_hex(ticket))
    .bind(browser)
    .bind(now)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        return Ok(Err(confirming(state, ticket, now).await?.err().unwrap_or(TicketRejection::Used)));
    };
    let hash: String = row.get("state_hash");
    let sealed: Vec<u8> = row.get("authorization_url_enc");
    let url = state.keyring().open_string(&sealed, aad(columns::AUTHORIZATION_URL, &hash))?;
    url::Url::parse(&url).map(Ok).map_err(|e| ConnectError::Misconfigured(e.to_string()))
}

/// The callback of a session-bound flow: keeps the provider's code sealed (it is
/// exchanged only by `finish`) and answers the single-use `connect_code`.
pub async fn hand_off(
    state: &crate::state::AppState,
    raw_state: &str,
    provider_code: &str,
    now: DateTime<Utc>,
) -> Result<String, ConnectError> {
    let hash = sha256_hex(raw_state);
    let connect_code = random_token(32);
    let sealed = state.keyring().seal_str(provider_code, aad(columns::PROVIDER_CODE, &hash))?;
    let deadline = now + chrono::Duration::from_std(CONNECT_CODE_TTL).unwrap_or_default();
    sqlx::query(
        "UPDATE oauth_states SET connect_code_hash = $2, provider_code_enc = $3, connect_code_expires_at = $4
         WHERE state_hash = $1",
    )
    .bind(&hash)
    .bind(sha256_hex(&connect_code))
    .bind(sealed)
    .bind(deadline)
    .execute(&state.db)
    .await?;
    Ok(connect_code)
}

/// Why `finish` refused a connect code. The code is spent by any attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishRejection {
    Unknown,
    Used,
    Expired,
    StateMismatch,
    VerifierMismatch,
}

impl FinishRejection {
    /// The hosted product's codes (`ConnectionFinishErrorBodyCode`): a code that cannot be
    /// used for any reason but age is `invalid_connect_code`; the message says which.
    pub fn code(self) -> &'static str {
        match self {
            FinishRejection::Expired => "authorization_state_expired",
            _ => "invalid_connect_code",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            FinishRejection::Unknown => "No flow has this connect_code.",
            FinishRejection::Used => "This connect_code was already used; start the authorization again.",
            FinishRejection::Expired => "This connect_code has expired (90 seconds); start the authorization again.",
            FinishRejection::StateMismatch => "The state does not belong to this connect_code.",
            FinishRejection::VerifierMismatch => "The code_verifier does not match the flow's code_challenge.",
        }
    }
}

/// `base64url(SHA-256(verifier))`, RFC 7636 §4.2.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Spends `connect_code` once: checks that `raw_state` (when given) is its flow's and
/// that `code_verifier` matches the challenge, and answers the flow with the provider's code.
pub async fn redeem(
    state: &crate::state::AppState,
    connect_code: &str,
    code_verifier: &str,
    raw_state: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Result<(Pending, String), FinishRejection>, ConnectError> {
    let code_hash = sha256_hex(connect_code);
    let row = sqlx::query(
        "UPDATE oauth_states s SET finished_at = $2, provider_code_enc = NULL, pkce_verifier_enc = NULL
         FROM (SELECT state_hash, provider_code_enc, pkce_verifier_enc FROM oauth_states
               WHERE connect_code_hash = $1 FOR UPDATE) old
         WHERE s.state_hash = old.state_hash AND s.finished_at IS NULL AND s.connect_code_expires_at > $2
           AND old.provider_code_enc IS NOT NULL
         RETURNING s.*, old.pkce_verifier_enc AS sealed_verifier, old.provider_code_enc AS sealed_code",
    )
    .bind(&code_hash)
    .bind(now)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        let seen: Option<bool> =
            sqlx::query_scalar("SELECT finished_at IS NOT NULL FROM oauth_states WHERE connect_code_hash = $1")
                .bind(&code_hash)
                .fetch_optional(&state.db)
                .await?;
        return Ok(Err(match seen {
            None => FinishRejection::Unknown,
            Some(true) => FinishRejection::Used,
            Some(false) => FinishRejection::Expired,
        }));
    };
    let hash: String = row.get("state_hash");
    if raw_state.is_some_and(|raw| !bool::from(hash.as_bytes().ct_eq(sha256_hex(raw).as_bytes()))) {
        return Ok(Err(FinishRejection::StateMismatch));
    }
    let challenge: String = row.get::<Option<String>, _>("code_challenge").unwrap_or_default();
    if !bool::from(s256(code_verifier).as_bytes().ct_eq(challenge.as_bytes())) {
        return Ok(Err(FinishRejection::VerifierMismatch));
    }
    let sealed: Vec<u8> = row.get("sealed_code");
    let provider_code = state.keyring().open_string(&sealed, aad(columns::PROVIDER_CODE, &hash))?;
    Ok(Ok((pending(state, &row, &hash)?, provider_code)))
}
