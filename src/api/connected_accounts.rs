//! Connected accounts (DESIGN §3.3):
//! `GET|POST|PUT|DELETE /user_management/users/{user_id}/connected_accounts/{slug}?organization_id=…`.
//! Every write updates the token cache; tokens never appear in a response.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::connect::check_owner_id;
use crate::api::extract::AdminKey;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::integrations::find;
use crate::connections::Announce;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::ids::{AccountId, IdKind};
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{self, Account, AccountError, AccountState, AccountSummary, TokenSet, WriteMode};
use crate::store::integrations::Integration;
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, import, replace, disconnect))
}

/// A ConnectedAccount. Tokens never appear in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectedAccountView {
    pub object: &'static str,
    pub id: String,
    /// `compatibility`: the owner's one connection for the integration, which requests
    /// without a `connected_account_id` select.
    pub connection_role: &'static str,
    /// The provider's id of the connected account, when one was given.
    pub account_identifier: Option<String>,
    /// A label for the account, when one was given.
    pub account_display_name: Option<String>,
    pub user_id: String,
    pub organization_id: Option<String>,
    pub scopes: Vec<String>,
    pub auth_method: &'static str,
    /// `connected`, `needs_reauthorization` or `disconnected`.
    pub state: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

pub fn view(a: &AccountSummary) -> ConnectedAccountView {
    ConnectedAccountView {
        object: "connected_account",
        id: a.id.to_string(),
        connection_role: "compatibility",
        account_identifier: None,
        account_display_name: None,
        user_id: a.user_id.clone(),
        organization_id: a.organization_id.clone(),
        scopes: a.scopes.clone(),
        auth_method: "oauth",
        state: a.state.as_str(),
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
    }
}

/// Which account a request is about. An unknown parameter is refused (400).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    /// Absent or empty: the user's account outside any organization.
    pub organization_id: Option<String>,
    /// When given, the owner's account must be this one (else 404).
    pub connected_account_id: Option<String>,
    /// Accepted as the SDKs send it: an owner has one account per integration here, so
    /// it changes no answer.
    pub supports_multiple_connections: Option<bool>,
    /// PUT only: `reauthorize`, with `connected_account_id`.
    pub connection_intent: Option<String>,
}

/// The owner and account a request names, checked.
pub(super) struct Target {
    pub organization_id: Option<String>,
    pub only: Option<AccountId>,
}

/// The owner from the path and query, checked; `intent` is where `connection_intent`
/// may be sent (`Some("reauthorize")` for PUT), or `None` where it may not.
pub(super) fn target(user_id: &str, q: OwnerQuery, intent: Option<&str>) -> ApiResult<Target> {
    let mut errors = Vec::new();
    check_owner_id("user_id", user_id, &mut errors);
    let org = q.organization_id.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_owner_id("organization_id", o, &mut errors);
    }
    let only = q.connected_account_id.filter(|id| !id.is_empty());
    if let Some(id) = &only {
        if !IdKind::ConnectedAccount.matches(id) {
            errors.push(FieldError::new("connected_account_id", "invalid", "Not a connected account id."));
        }
    }
    match (q.connection_intent.as_deref(), intent) {
        (None, _) => {}
        (Some(sent), Some(allowed)) if sent == allowed => {
            if only.is_none() {
                errors.push(FieldError::new(
                    "connected_account_id",
                    "required",
                    format!("`connected_account_id` is required with `connection_intent` `{allowed}`."),
                ));
            }
        }
        (Some(_), Some(allowed)) => errors.push(FieldError::new(
            "connection_intent",
            "invalid",
            format!("`connection_intent` may only be `{allowed}` here."),
        )),
        (Some(_), None) => {
            errors.push(FieldError::new("connection_intent", "unsupported", "`connection_intent` is not taken here."))
        }
    }
    if errors.is_empty() {
        Ok(Target { organization_id: org, only: only.map(AccountId::from) })
    } else {
        Err(ApiError::invalid(errors))
    }
}

pub fn not_connected(slug: &str) -> ApiError {
    ApiError::not_found("connected_account_not_found", format!("This user has no connected account for `{slug}`."))
}

#[utoipa::path(get, path = "/user_management/users/{user_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("user_id" = String, Path), ("slug" = String, Path), OwnerQuery), security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No integration or no account")))]
pub async fn show(
    _: AdminKey,
    State(state): State<AppState>,
    Path((user_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
) -> ApiResult<Json<ConnectedAccountView>> {
    let target = target(&user_id, q, None)?;
    let org = target.organization_id.as_deref();
    let integration = find(&state, &slug).await?;
    let account = accounts::find_for_owner(&state.db, state.keyring(), &integration.id, &user_id, org)
        .await?
        .filter(|a| target.only.as_ref().is_none_or(|id| a.id == *id))
        .ok_or_else(|| not_connected(&slug))?;
    Ok(Json(view(&account.summary())))
}

/// Tokens from another system (POST) or after an out-of-band reauthorization (PUT).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokensBody {
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
    /// POST only: `add`. An owner holds one account per integration, so adding one
    /// where one exists answers 404 `multiple_connections_unavailable`.
    pub connection_intent: Option<String>,
    /// Not stored yet: refused unless `null`.
    pub account_display_name: Option<String>,
    /// Not stored yet: refused unless `null`.
    pub account_identifier: Option<String>,
}

fn parse_tokens(body: TokensBody, integration: &Integration) -> ApiResult<(TokenSet, AccountState)> {
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

/// Writes tokens for an owner, with a `connected` event when the account became connected.
async fn write(
    state: &AppState,
    slug: &str,
    user_id: &str,
    q: OwnerQuery,
    body: TokensBody,
    mode: WriteMode,
) -> ApiResult<Account> {
    let intent = match mode {
        WriteMode::UpdateOnly => Some("reauthorize"),
        WriteMode::InsertOnly | WriteMode::Upsert => None,
    };
    let target = target(user_id, q, intent)?;
    let mut errors = Vec::new();
    for (field, value) in
        [("account_display_name", &body.account_display_name), ("account_identifier", &body.account_identifier)]
    {
        if value.is_some() {
            errors.push(FieldError::new(
                field,
                "unsupported",
                format!("`{field}` is not stored yet; send `null` or omit it."),
            ));
        }
    }
    let adding = match (body.connection_intent.as_deref(), mode) {
        (None, _) => false,
        (Some("add"), WriteMode::InsertOnly) => true,
        (Some(_), WriteMode::InsertOnly) => {
            errors.push(FieldError::new("connection_intent", "invalid", "`connection_intent` may only be `add` here."));
            false
        }
        (Some(_), _) => {
            errors.push(FieldError::new(
                "connection_intent",
                "unsupported",
                "Send `connection_intent` in the query here.",
            ));
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let org = target.organization_id.as_deref();
    let integration = find(state, slug).await?;
    let (tokens, account_state) = parse_tokens(body, &integration)?;
    let stored = state
        .connections
        .store(
            &integration,
            user_id,
            org,
            &tokens,
            account_state,
            mode,
            Announce::IfNewlyConnected,
            target.only.as_ref(),
        )
        .await;
    match stored {
        Err(AccountError::Exists) if adding => Err(ApiError::not_found(
            "multiple_connections_unavailable",
            "This owner already has an account for this integration, and an owner holds one account per integration.",
        )),
        other => other?.ok_or_else(|| not_connected(slug)),
    }
}

#[utoipa::path(post, path = "/user_management/users/{user_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("user_id" = String, Path), ("slug" = String, Path), OwnerQuery), request_body = TokensBody, security(("api_key" = [])),
    responses((status = 201, body = ConnectedAccountView), (status = 409, description = "An account exists"), (status = 422, description = "Field errors")))]
pub async fn import(
    _: AdminKey,
    State(state): State<AppState>,
    Path((user_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
    ApiJson(body): ApiJson<TokensBody>,
) -> ApiResult<Response> {
    let account = write(&state, &slug, &user_id, q, body, WriteMode::InsertOnly).await?;
    Ok((StatusCode::CREATED, Json(view(&account.summary()))).into_response())
}

#[utoipa::path(put, path = "/user_management/users/{user_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("user_id" = String, Path), ("slug" = String, Path), OwnerQuery), request_body = TokensBody, security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No account"), (status = 422, description = "Field errors")))]
pub async fn replace(
    _: AdminKey,
    State(state): State<AppState>,
    Path((user_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
    ApiJson(body): ApiJson<TokensBody>,
) -> ApiResult<Json<ConnectedAccountView>> {
    let account = write(&state, &slug, &user_id, q, body, WriteMode::UpdateOnly).await?;
    Ok(Json(view(&account.summary())))
}

#[utoipa::path(delete, path = "/user_management/users/{user_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("user_id" = String, Path), ("slug" = String, Path), OwnerQuery), security(("api_key" = [])),
    responses((status = 204, description = "Disconnected: tokens revoked where possible, removed, cache dropped"), (status = 404, description = "No account")))]
pub async fn disconnect(
    _: AdminKey,
    State(state): State<AppState>,
    Path((user_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
) -> ApiResult<StatusCode> {
    let target = target(&user_id, q, None)?;
    let integration = find(&state, &slug).await?;
    state
        .connections
        .disconnect(&integration, &user_id, target.organization_id.as_deref(), target.only.as_ref())
        .await?
        .ok_or_else(|| not_connected(&slug))?;
    Ok(StatusCode::NO_CONTENT)
}
