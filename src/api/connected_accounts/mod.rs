//! Connected accounts (DESIGN §3.3), of a user or of an organization:
//! `GET|POST|PUT|DELETE /user_management/users/{user_id}/connected_accounts/{slug}?organization_id=…`
//! and `/organizations/{organization_id}/connected_accounts/{slug}` (`organization`).
//! Every write updates the token cache; tokens never appear in a response.

mod organization;
mod tokens;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
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
use crate::owner::Owner;
use crate::state::AppState;
use crate::store::accounts::{self, Account, AccountError, AccountSummary, WriteMode};
use crate::time::rfc3339;
pub use tokens::TokensBody;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, import, replace, disconnect)).merge(organization::routes())
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
    /// The owning user; `null` for an organization's shared account.
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub scopes: Vec<String>,
    pub auth_method: &'static str,
    /// `connected`, `needs_reauthorization` or `disconnected`.
    pub state: &'static str,
    /// The member whose authorization established an organization's shared account.
    pub established_by_user_id: Option<String>,
    pub state_reason: Option<String>,
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
        user_id: a.owner.user_id().map(str::to_owned),
        organization_id: a.owner.organization_id().map(str::to_owned),
        scopes: a.scopes.clone(),
        auth_method: "oauth",
        state: a.state.as_str(),
        established_by_user_id: a.established_by_user_id.clone(),
        state_reason: None,
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
    }
}

/// Which of a user's accounts a request is about. An unknown parameter is refused (400).
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

/// Which of an owner's accounts a request is about (the query less the owner).
pub(super) struct Selection {
    pub connected_account_id: Option<String>,
    pub connection_intent: Option<String>,
}

/// The owner and account a request names, checked.
pub(super) struct Target {
    pub owner: Owner,
    pub only: Option<AccountId>,
}

/// A user's account from the path and query, checked; `intent` is where
/// `connection_intent` may be sent (`Some("reauthorize")` for PUT), or `None` where it
/// may not.
pub(super) fn target(user_id: &str, q: OwnerQuery, intent: Option<&str>) -> ApiResult<Target> {
    let mut errors = Vec::new();
    check_owner_id("user_id", user_id, &mut errors);
    let org = q.organization_id.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_owner_id("organization_id", o, &mut errors);
    }
    let selection = Selection { connected_account_id: q.connected_account_id, connection_intent: q.connection_intent };
    let only = selected(selection, intent, &mut errors);
    if errors.is_empty() {
        Ok(Target { owner: Owner::user(user_id, org), only })
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// The account `selection` names, checked into `errors`.
fn selected(selection: Selection, intent: Option<&str>, errors: &mut Vec<FieldError>) -> Option<AccountId> {
    let only = selection.connected_account_id.filter(|id| !id.is_empty());
    if let Some(id) = &only {
        if !IdKind::ConnectedAccount.matches(id) {
            errors.push(FieldError::new("connected_account_id", "invalid", "Not a connected account id."));
        }
    }
    match (selection.connection_intent.as_deref(), intent) {
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
    only.map(AccountId::from)
}

pub fn not_connected(slug: &str) -> ApiError {
    ApiError::not_found("connected_account_not_found", format!("There is no connected account for `{slug}` here."))
}

/// The account `target` names.
async fn show_account(state: &AppState, slug: &str, target: Target) -> ApiResult<Json<ConnectedAccountView>> {
    let integration = find(state, slug, target.owner.ownership()).await?;
    let account = accounts::find_for_owner(&state.db, state.keyring(), &integration.id, &target.owner)
        .await?
        .filter(|a| target.only.as_ref().is_none_or(|id| a.id == *id))
        .ok_or_else(|| not_connected(slug))?;
    Ok(Json(view(&account.summary())))
}

/// Writes tokens for `target`'s owner, with a `connected` event when the account became
/// connected. `member` is the organization member an organization's account is written
/// on behalf of (`None` on a user's routes, where the body must not name one).
async fn write(
    state: &AppState,
    slug: &str,
    target: Target,
    member: Option<String>,
    body: TokensBody,
    mode: WriteMode,
) -> ApiResult<Account> {
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
    if member.is_none() && body.user_id.is_some() {
        errors.push(FieldError::new("user_id", "unsupported", "The user is named in the path here."));
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
    let integration = find(state, slug, target.owner.ownership()).await?;
    let (tokens, account_state) = tokens::parse_tokens(body, &integration)?;
    let stored = state
        .connections
        .store(
            &integration,
            &target.owner,
            member.as_deref(),
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

async fn disconnect_account(state: &AppState, slug: &str, target: Target) -> ApiResult<StatusCode> {
    let integration = find(state, slug, target.owner.ownership()).await?;
    state
        .connections
        .disconnect(&integration, &target.owner, target.only.as_ref())
        .await?
        .ok_or_else(|| not_connected(slug))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `connection_intent` a write takes in its query: `reauthorize` on PUT, none on POST.
fn query_intent(mode: WriteMode) -> Option<&'static str> {
    match mode {
        WriteMode::UpdateOnly => Some("reauthorize"),
        WriteMode::InsertOnly | WriteMode::Upsert => None,
    }
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
    show_account(&state, &slug, target(&user_id, q, None)?).await
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
    let mode = WriteMode::InsertOnly;
    let account = write(&state, &slug, target(&user_id, q, query_intent(mode))?, None, body, mode).await?;
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
    let mode = WriteMode::UpdateOnly;
    let account = write(&state, &slug, target(&user_id, q, query_intent(mode))?, None, body, mode).await?;
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
    disconnect_account(&state, &slug, target(&user_id, q, None)?).await
}
