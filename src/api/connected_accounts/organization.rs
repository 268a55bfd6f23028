//! An organization's shared accounts: `GET|POST|PUT|DELETE
//! /organizations/{organization_id}/connected_accounts/{slug}`, of the provider's
//! organization-owned integration root. A write names the member it is made on
//! behalf of (`user_id` in the body); the account itself has no user owner.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{show_account, write, ConnectedAccountView, Selection, Target, TokensBody, Verb};
use crate::api::connect::check_id_or_label;
use crate::api::extract::{AdminKey, ApiJson, ApiQuery};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::owner::Owner;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, import, replace, disconnect))
}

/// Which of an organization's accounts a request is about. An unknown parameter is
/// refused (400).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OrganizationQuery {
    /// The organization's account the request is about (404 when it is not one of its).
    pub connected_account_id: Option<String>,
    /// `true`: without `connected_account_id`, the organization's one account whatever
    /// its role (409 `account_selection_required` when there are several).
    pub supports_multiple_connections: Option<bool>,
    /// PUT only: `reauthorize`, with `connected_account_id`.
    pub connection_intent: Option<String>,
}

/// The organization's account from the path and query, checked (see `super::target`).
fn target(organization_id: &str, q: OrganizationQuery, intent: Option<&str>) -> ApiResult<Target> {
    let mut errors = Vec::new();
    check_id_or_label("organization_id", organization_id, &mut errors);
    let selection = Selection {
        connected_account_id: q.connected_account_id,
        supports_multiple_connections: q.supports_multiple_connections,
        connection_intent: q.connection_intent,
    };
    Target::checked(Owner::organization(organization_id), selection, intent, errors)
}

/// The member a write is made on behalf of: the body's `user_id`, required.
fn member(body: &TokensBody) -> ApiResult<String> {
    let mut errors = Vec::new();
    match body.user_id.as_deref() {
        Some(user_id) => check_id_or_label("user_id", user_id, &mut errors),
        None => errors.push(FieldError::new(
            "user_id",
            "required",
            "`user_id` (the member the account is written on behalf of) is required.",
        )),
    }
    match body.user_id.clone() {
        Some(user_id) if errors.is_empty() => Ok(user_id),
        _ => Err(ApiError::invalid(errors)),
    }
}

#[utoipa::path(get, path = "/organizations/{organization_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("organization_id" = String, Path), ("slug" = String, Path), OrganizationQuery), security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No integration or no account")))]
pub async fn show(
    _: AdminKey,
    State(state): State<AppState>,
    Path((organization_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OrganizationQuery>,
) -> ApiResult<Json<ConnectedAccountView>> {
    show_account(&state, &slug, target(&organization_id, q, None)?).await
}

/// Creation only: takes no query (no `connected_account_id`, no reauthorization).
#[utoipa::path(post, path = "/organizations/{organization_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("organization_id" = String, Path), ("slug" = String, Path)), request_body = TokensBody, security(("api_key" = [])),
    responses((status = 201, body = ConnectedAccountView), (status = 409, description = "An account exists"), (status = 422, description = "Field errors")))]
pub async fn import(
    _: AdminKey,
    State(state): State<AppState>,
    Path((organization_id, slug)): Path<(String, String)>,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<TokensBody>,
) -> ApiResult<Response> {
    let verb = Verb::Create;
    let target = target(&organization_id, OrganizationQuery::default(), verb.query_intent())?;
    let member = member(&body)?;
    let account = write(&state, &slug, target, Some(member), body, verb).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// A query that takes no parameter at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

#[utoipa::path(put, path = "/organizations/{organization_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("organization_id" = String, Path), ("slug" = String, Path), OrganizationQuery), request_body = TokensBody,
    security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No account"), (status = 422, description = "Field errors")))]
pub async fn replace(
    _: AdminKey,
    State(state): State<AppState>,
    Path((organization_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OrganizationQuery>,
    ApiJson(body): ApiJson<TokensBody>,
) -> ApiResult<Json<ConnectedAccountView>> {
    let verb = Verb::Replace;
    let target = target(&organization_id, q, verb.query_intent())?;
    let member = member(&body)?;
    Ok(Json(write(&state, &slug, target, Some(member), body, verb).await?))
}

#[utoipa::path(delete, path = "/organizations/{organization_id}/connected_accounts/{slug}", tag = "connected_accounts",
    params(("organization_id" = String, Path), ("slug" = String, Path), OrganizationQuery), security(("api_key" = [])),
    responses((status = 204, description = "Disconnected: tokens revoked where possible, removed, cache dropped"), (status = 404, description = "No account")))]
pub async fn disconnect(
    _: AdminKey,
    State(state): State<AppState>,
    Path((organization_id, slug)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OrganizationQuery>,
) -> ApiResult<StatusCode> {
    super::disconnect_account(&state, &slug, target(&organization_id, q, None)?).await
}
