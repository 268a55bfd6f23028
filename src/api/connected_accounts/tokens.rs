//! The body of a connected-account write: tokens from another system (POST) or after
//! an out-of-band reauthorization (PUT), checked.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult, FieldError};
use crate::secret::Secret;
use crate::store::accounts::{AccountState, Labels, TokenSet};
use crate::store::integrations::Integration;

/// Tokens from another system (POST) or after an out-of-band reauthorization (PUT).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokensBody {
    /// An organization's routes only, and required there: the member the account is
    /// written on behalf of (recorded as `established_by_user_id`).
    pub user_id: Option<String>,
    #[schema(value_type = String)]
    pub access_token: Option<Secret>,
    #[schema(value_type = Option<String>)]
    pub refresh_token: Option<Secret>,
    /// RFC 3339; absent for a token that does not expire.
    pub expires_at: Option<String>,
    /// Granted scopes; default: the integration's.
    pub scopes: Option<Vec<String>>,
    /// `connected` (default) or `needs_reauthorization`.
    pub state: Option<String>,
    /// POST only: `add` makes another account beside the owner's (or updates the one
    /// with the same `account_identifier`). Where the integration allows one account
    /// per owner, adding one where one exists answers 404 `multiple_connections_unavailable`.
    pub connection_intent: Option<String>,
    /// A label for the account. Omitted: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_display_name: Option<Option<String>>,
    /// The provider's id of the account (one account per identifier and owner).
    /// Omitted: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_identifier: Option<Option<String>>,
}

/// The labels of `body`, checked into `errors`: each 1-256 characters without control
/// characters.
pub(super) fn labels(body: &TokensBody, errors: &mut Vec<FieldError>) -> Labels {
    for (field, value) in
        [("account_display_name", &body.account_display_name), ("account_identifier", &body.account_identifier)]
    {
        if let Some(Some(v)) = value {
            crate::api::connect::check_id_or_label(field, v, errors);
        }
    }
    Labels {
        account_identifier: body.account_identifier.clone(),
        account_display_name: body.account_display_name.clone(),
        provider_display_name: None,
    }
}

pub(super) fn parse_tokens(body: TokensBody, integration: &Integration) -> ApiResult<(TokenSet, AccountState)> {
    let mut errors = Vec::new();
    let access = match body.access_token {
        Some(t) if !t.expose().is_empty() && t.expose().len() <= 16_384 => Some(t),
        Some(_) => {
            errors.push(FieldError::new("access_token", "invalid", "The access token must be 1-16384 characters."));
            None
        }
        None => {
            errors.push(FieldError::new("access_token", "required", "access_token is required."));
            None
        }
    };
    let refresh = body.refresh_token.filter(|t| !t.expose().is_empty());
    if refresh.as_ref().is_some_and(|t| t.expose().len() > 16_384) {
        errors.push(FieldError::new("refresh_token", "invalid", "The refresh token must be at most 16384 characters."));
    }
    let expires_at = match body.expires_at.as_deref().filter(|e| !e.is_empty()) {
        None => None,
        Some(e) => match DateTime::parse_from_rfc3339(e) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError::new("expires_at", "invalid", "expires_at must be an RFC 3339 timestamp."));
                None
            }
        },
    };
    let scopes = body.scopes.unwrap_or_else(|| integration.scopes.clone());
    if scopes.len() > 100 || scopes.iter().any(|s| s.is_empty() || s.len() > 200 || s.chars().any(char::is_whitespace))
    {
        errors.push(FieldError::new("scopes", "invalid", "At most 100 scopes of 1-200 characters without spaces."));
    }
    let account_state = match body.state.as_deref() {
        None | Some("connected") => AccountState::Connected,
        Some("needs_reauthorization") => AccountState::NeedsReauthorization,
        Some(_) => {
            errors.push(FieldError::new("state", "invalid", "state must be connected or needs_reauthorization."));
            AccountState::Connected
        }
    };
    match access {
        Some(access_token) if errors.is_empty() => {
            Ok((TokenSet { access_token, refresh_token: refresh, expires_at, scopes }, account_state))
        }
        _ => Err(ApiError::invalid(errors)),
    }
}
