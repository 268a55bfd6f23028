//! Connected accounts (DESIGN §3.3):
//! `GET|POST|PUT|DELETE /user_management/users/{user_id}/connected_accounts/{slug}?organization_id=…`
//! and `GET /user_management/users/{user_id}/data_providers?organization_id=…`.
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
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{self, Account, AccountState, AccountSummary, TokenSet, WriteMode};
use crate::store::integrations::Integration;
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, import, replace, disconnect)).routes(routes!(data_providers))
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OwnerQuery {
    /// Absent or empty: the user's account outside any organization.
    pub organization_id: Option<String>,
}

/// The owner from the path and query, checked.
fn owner(user_id: &str, q: OwnerQuery) -> ApiResult<Option<String>> {
    let mut errors = Vec::new();
    check_owner_id("user_id", user_id, &mut errors);
    let org = q.organization_id.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_owner_id("organization_id", o, &mut errors);
    }
    if errors.is_empty() {
        Ok(org)
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
    let org = owner(&user_id, q)?;
    let integration = find(&state, &slug).await?;
    let account = accounts::find_for_owner(&state.db, state.keyring(), &integration.id, &user_id, org.as_deref())
        .await?
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
    let org = owner(user_id, q)?;
    let integration = find(state, slug).await?;
    let (tokens, account_state) = parse_tokens(body, &integration)?;
    state
        .connections
        .store(&integration, user_id, org.as_deref(), &tokens, account_state, mode, Announce::IfNewlyConnected)
        .await?
        .ok_or_else(|| not_connected(slug))
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
    let org = owner(&user_id, q)?;
    let integration = find(&state, &slug).await?;
    state.connections.disconnect(&integration, &user_id, org.as_deref()).await?.ok_or_else(|| not_connected(&slug))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataProviderView {
    pub object: &'static str,
    pub id: String,
    pub name: String,
    pub description: String,
    pub slug: String,
    pub integration_type: String,
    pub credentials_type: &'static str,
    pub auth_methods: Vec<&'static str>,
    pub connection_owner: &'static str,
    pub ownership: &'static str,
    pub scopes: Vec<String>,
    /// The owner's account, if any.
    pub connected_account: Option<ProviderAccountView>,
    /// The owner's accounts: at most one here.
    pub connected_accounts: Vec<ProviderAccountView>,
    pub created_at: String,
    pub updated_at: String,
}

/// An account as a provider row lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderAccountView {
    #[serde(flatten)]
    pub account: ConnectedAccountView,
    /// `user_id` under its older name, which the SDKs still read.
    pub userland_user_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataProviderList {
    pub object: &'static str,
    pub data: Vec<DataProviderView>,
}

#[utoipa::path(get, path = "/user_management/users/{user_id}/data_providers", tag = "connected_accounts",
    params(("user_id" = String, Path), OwnerQuery), security(("api_key" = [])),
    responses((status = 200, body = DataProviderList, description = "Every enabled integration with this user's account for it")))]
pub async fn data_providers(
    _: AdminKey,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
) -> ApiResult<Json<DataProviderList>> {
    let org = owner(&user_id, q)?;
    let listed = owner_listing(&state, &user_id, org.as_deref()).await?;
    let data = listed.iter().map(|(i, a)| data_provider_view(i, a.as_ref())).collect();
    Ok(Json(DataProviderList { object: "list", data }))
}

/// Every enabled integration with the owner's account for it, if any (no token is
/// read). Shared with the widget.
pub async fn owner_listing(
    state: &AppState,
    user_id: &str,
    org: Option<&str>,
) -> ApiResult<Vec<(Integration, Option<AccountSummary>)>> {
    let integrations = crate::store::integrations::all(&state.db, state.keyring()).await?;
    let mut accounts = accounts::summaries_for_owner(&state.db, user_id, org).await?;
    Ok(integrations
        .into_iter()
        .filter(|i| i.enabled)
        .map(|i| {
            let account = accounts.iter().position(|a| a.integration_id == i.id).map(|at| accounts.swap_remove(at));
            (i, account)
        })
        .collect())
}

/// An integration as `data_providers` lists it, with the owner's account.
pub fn data_provider_view(i: &Integration, account: Option<&AccountSummary>) -> DataProviderView {
    let listed = account.map(|a| ProviderAccountView { account: view(a), userland_user_id: a.user_id.clone() });
    DataProviderView {
        object: "data_provider",
        id: i.id.to_string(),
        name: i.display_name(),
        description: if i.description.is_empty() {
            i.spec().map(|s| s.description.clone()).unwrap_or_default()
        } else {
            i.description.clone()
        },
        slug: i.slug.clone(),
        integration_type: if i.custom_provider.is_some() { "custom".to_owned() } else { i.provider.clone() },
        credentials_type: "oauth2",
        auth_methods: vec!["oauth"],
        connection_owner: "user",
        // The older name of `connection_owner`, in its older spelling.
        ownership: "userland_user",
        scopes: i.scopes.clone(),
        connected_account: listed.clone(),
        connected_accounts: listed.into_iter().collect(),
        created_at: rfc3339(i.created_at),
        updated_at: rfc3339(i.updated_at),
    }
}
