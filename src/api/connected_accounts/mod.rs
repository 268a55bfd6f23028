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

use crate::api::connect::check_id_or_label;
use crate::api::extract::AdminKey;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::integrations::find;
use crate::auth_method::AuthMethod;
use crate::connections::{Announce, TokenWrite};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::ids::{AccountId, IdKind};
use crate::owner::Owner;
use crate::state::AppState;
use crate::store::accounts::{self, Account, AccountSummary, Credential, Selector, WriteMode};
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
    /// `compatibility`: the owner's account that requests naming no account select;
    /// `standard`: another account of the owner, selected by its id.
    pub connection_role: &'static str,
    /// The provider's id of the connected account, when one was given.
    pub account_identifier: Option<String>,
    /// A label for the account, when one was given.
    pub account_display_name: Option<String>,
    /// The owning user; `null` for an organization's shared account.
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub scopes: Vec<String>,
    /// `oauth`, `api_key` or `client_credentials`: the integration's.
    pub auth_method: &'static str,
    /// An API-key account: the key's last four characters (`null` for a short key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_last_4: Option<String>,
    /// A client-credentials account: its client id and the secret's last four characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_last_4: Option<String>,
    /// `connected`, `needs_reauthorization` or `disconnected`.
    pub state: &'static str,
    /// The member whose authorization established an organization's shared account.
    pub established_by_user_id: Option<String>,
    pub state_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Writes only: what the caller may want to know, nothing that stopped the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<Warning>>,
}

/// A non-blocking remark on a write.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Warning {
    /// `duplicate_account_display_name`: another account of the owner has this label.
    pub code: &'static str,
    pub message: String,
}

pub fn view(a: &AccountSummary) -> ConnectedAccountView {
    ConnectedAccountView {
        object: "connected_account",
        id: a.id.to_string(),
        connection_role: a.role.as_str(),
        account_identifier: a.account_identifier.clone(),
        account_display_name: a.account_display_name.clone(),
        user_id: a.owner.user_id().map(str::to_owned),
        organization_id: a.owner.organization_id().map(str::to_owned),
        scopes: a.scopes.clone(),
        auth_method: a.auth_method.as_str(),
        api_key_last_4: a.secret_last_4.clone().filter(|_| a.auth_method == AuthMethod::ApiKey),
        client_id: a.client_id.clone(),
        client_secret_last_4: a.secret_last_4.clone().filter(|_| a.auth_method == AuthMethod::ClientCredentials),
        state: a.state.as_str(),
        established_by_user_id: a.established_by_user_id.clone(),
        state_reason: None,
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
        warnings: None,
    }
}

/// Which of a user's accounts a request is about. An unknown parameter is refused (400).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    /// Absent or empty: the user's account outside any organization.
    pub organization_id: Option<String>,
    /// The owner's account the request is about (404 when it is not one of the owner's).
    pub connected_account_id: Option<String>,
    /// `true`: without `connected_account_id`, the owner's one account whatever its role
    /// (409 `account_selection_required` when there are several). It does not change
    /// which account a PUT updates.
    pub supports_multiple_connections: Option<bool>,
    /// PUT only: `reauthorize`, with `connected_account_id`.
    pub connection_intent: Option<String>,
}

/// Which of an owner's accounts a request is about (the query less the owner).
pub(super) struct Selection {
    pub connected_account_id: Option<String>,
    pub supports_multiple_connections: Option<bool>,
    pub connection_intent: Option<String>,
}

/// The owner and account a request names, checked.
pub(super) struct Target {
    pub owner: Owner,
    /// The account a read or delete is about.
    pub selector: Selector,
    /// The account named by id, if any: what a PUT updates.
    pub only: Option<AccountId>,
}

/// A user's account from the path and query, checked; `intent` is where
/// `connection_intent` may be sent (`Some("reauthorize")` for PUT), or `None` where it
/// may not.
pub(super) fn target(user_id: &str, q: OwnerQuery, intent: Option<&str>) -> ApiResult<Target> {
    let mut errors = Vec::new();
    check_id_or_label("user_id", user_id, &mut errors);
    let org = q.organization_id.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_id_or_label("organization_id", o, &mut errors);
    }
    let selection = Selection {
        connected_account_id: q.connected_account_id,
        supports_multiple_connections: q.supports_multiple_connections,
        connection_intent: q.connection_intent,
    };
    Target::checked(Owner::user(user_id, org), selection, intent, errors)
}

impl Target {
    /// The target of `selection` for `owner`, or the field errors found so far and in it.
    fn checked(
        owner: Owner,
        selection: Selection,
        intent: Option<&str>,
        mut errors: Vec<FieldError>,
    ) -> ApiResult<Target> {
        let several = selection.supports_multiple_connections == Some(true);
        let only = selected(selection, intent, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let selector = match (&only, several) {
            (Some(id), _) => Selector::Only(id.clone()),
            (None, true) => Selector::Sole,
            (None, false) => Selector::Compatibility,
        };
        Ok(Target { owner, selector, only })
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

/// 422 `auth_method_mismatch`: the integration's accounts authenticate another way than `what`.
pub fn auth_method_mismatch(integration: &crate::store::integrations::Integration, what: &str) -> ApiError {
    ApiError::invalid_field(
        "auth_methods",
        "auth_method_mismatch",
        format!(
            "The integration `{}` connects accounts with `{}` (auth_methods [\"{}\"]); it takes no {what}.",
            integration.slug, integration.auth_method, integration.auth_method
        ),
    )
}

pub fn not_connected(slug: &str) -> ApiError {
    ApiError::not_found("connected_account_not_found", format!("There is no connected account for `{slug}` here."))
}

/// The account `target` names.
async fn show_account(state: &AppState, slug: &str, target: Target) -> ApiResult<Json<ConnectedAccountView>> {
    let integration = find(state, slug, target.owner.ownership()).await?;
    let account = accounts::select(&state.db, state.keyring(), &integration.id, &target.owner, &target.selector)
        .await?
        .ok_or_else(|| not_connected(slug))?;
    Ok(Json(view(&account.summary())))
}

/// What a write does: create an account (POST) or replace one's tokens (PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Create,
    Replace,
}

impl Verb {
    /// The `connection_intent` the query may carry: `reauthorize` on PUT, none on POST.
    fn query_intent(self) -> Option<&'static str> {
        match self {
            Verb::Create => None,
            Verb::Replace => Some("reauthorize"),
        }
    }
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
    verb: Verb,
) -> ApiResult<ConnectedAccountView> {
    let mut errors = Vec::new();
    let labels = tokens::labels(&body, &mut errors);
    if member.is_none() && body.user_id.is_some() {
        errors.push(FieldError::new("user_id", "unsupported", "The user is named in the path here."));
    }
    if verb == Verb::Create && target.only.is_some() {
        errors.push(FieldError::new(
            "connected_account_id",
            "unsupported",
            "A create makes a new account; name an account on PUT instead.",
        ));
    }
    let adding = match (body.connection_intent.as_deref(), verb) {
        (None, _) => false,
        (Some("add"), Verb::Create) => true,
        (Some(_), Verb::Create) => {
            errors.push(FieldError::new("connection_intent", "invalid", "`connection_intent` may only be `add` here."));
            false
        }
        (Some(_), Verb::Replace) => {
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
    if integration.auth_method != AuthMethod::OAuth {
        return Err(auth_method_mismatch(&integration, "imported OAuth tokens"));
    }
    let mode = match (verb, target.only) {
        (Verb::Create, _) if adding => WriteMode::Add { several: integration.multiple_connections },
        (Verb::Create, _) => WriteMode::InsertOnly,
        (Verb::Replace, Some(id)) => WriteMode::Account(id),
        (Verb::Replace, None) => WriteMode::UpdateOnly,
    };
    let (tokens, account_state) = tokens::parse_tokens(body, &integration)?;
    let write = TokenWrite {
        credential: Credential::OAuth,
        owner: &target.owner,
        established_by: member.as_deref(),
        labels,
        tokens: &tokens,
        state: account_state,
        mode,
        announce: Announce::IfNewlyConnected,
    };
    let account = state.connections.store(&integration, write).await?.ok_or_else(|| not_connected(slug))?;
    let mut shown = view(&account.summary());
    shown.warnings = duplicate_label(state, &account).await?;
    Ok(shown)
}

/// `duplicate_account_display_name` when another of the owner's accounts of the
/// integration has the account's label: labels need not be unique, but a person
/// choosing between accounts by label would be misled.
async fn duplicate_label(state: &AppState, account: &Account) -> ApiResult<Option<Vec<Warning>>> {
    let Some(label) = &account.account_display_name else { return Ok(None) };
    let others = accounts::summaries_for_owner(&state.db, &account.owner).await?;
    let shared = others.iter().any(|other| {
        other.integration_id == account.integration_id
            && other.id != account.id
            && other.account_display_name.as_ref() == Some(label)
    });
    Ok(shared.then(|| {
        vec![Warning {
            code: "duplicate_account_display_name",
            message: "Another connected account of this owner for this integration has this display name.".into(),
        }]
    }))
}

async fn disconnect_account(state: &AppState, slug: &str, target: Target) -> ApiResult<StatusCode> {
    let integration = find(state, slug, target.owner.ownership()).await?;
    state
        .connections
        .disconnect(&integration, &target.owner, &target.selector)
        .await?
        .ok_or_else(|| not_connected(slug))?;
    Ok(StatusCode::NO_CONTENT)
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
    let verb = Verb::Create;
    let account = write(&state, &slug, target(&user_id, q, verb.query_intent())?, None, body, verb).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
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
    let verb = Verb::Replace;
    Ok(Json(write(&state, &slug, target(&user_id, q, verb.query_intent())?, None, body, verb).await?))
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
