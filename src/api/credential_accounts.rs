//! `POST|PUT /data-integrations/{slug}/api-key` and `/client-credentials`: accounts
//! connected with a credential their owner gives, for integrations whose `auth_methods`
//! is `["api_key"]` or `["client_credentials"]`.
//!
//! POST only adds an account (`connection_intent: add`, required): the owner's first
//! fills the compatibility slot. PUT without `connected_account_id` creates or rotates
//! the owner's compatibility account; with it, rotates that account (`connection_intent:
//! reauthorize` optional). The credential is checked with the provider before anything
//! is stored (`crate::connect::direct`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::connect::check_id_or_label;
use crate::api::connected_accounts::{auth_method_mismatch, not_connected, view, ConnectedAccountView};
use crate::api::extract::{AdminKey, ApiJson};
use crate::api::integrations::find;
use crate::auth_method::AuthMethod;
use crate::connect::direct::{self, Placement};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::ids::IdKind;
use crate::owner::Owner;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{Labels, OwnClient, WriteMode};
use crate::store::integrations::Integration;
use crate::store::organizations;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, update_api_key))
        .routes(routes!(create_client_credentials, update_client_credentials))
}

/// Longest API key, client id or client secret taken.
const MAX_SECRET: usize = 4096;

/// An API key for an owner's account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyBody {
    pub user_id: Option<String>,
    /// Required with `connection_owner: organization`.
    pub organization_id: Option<String>,
    /// `user` (default) or `organization` (the organization's shared account; `user_id`
    /// is the member connecting it).
    pub connection_owner: Option<String>,
    /// PUT: the owner's account to rotate.
    pub connected_account_id: Option<String>,
    /// POST: `add` (required). PUT: `reauthorize` (with `connected_account_id`) or none.
    pub connection_intent: Option<String>,
    #[schema(value_type = String)]
    pub secret: Option<Secret>,
    /// A label. Omitted: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_display_name: Option<Option<String>>,
    /// The provider's id of the account, as the caller attests it. Omitted: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_identifier: Option<Option<String>>,
}

/// An owner's own OAuth client, for the `client_credentials` grant.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsBody {
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub connection_owner: Option<String>,
    pub connected_account_id: Option<String>,
    pub connection_intent: Option<String>,
    pub client_id: Option<String>,
    #[schema(value_type = String)]
    pub client_secret: Option<Secret>,
    /// Non-secret values kept with the account and vended in `config` (at most 20, each
    /// 1-256 characters).
    pub config: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_identifier: Option<Option<String>>,
}

/// What both bodies have: who, which account, which labels.
struct Addressing {
    user_id: Option<String>,
    organization_id: Option<String>,
    connection_owner: Option<String>,
    connected_account_id: Option<String>,
    connection_intent: Option<String>,
    account_display_name: Option<Option<String>>,
    account_identifier: Option<Option<String>>,
}

/// POST adds an account; PUT creates or rotates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Add,
    Upsert,
}

/// The checked addressing: owner, member, labels, and the write mode once the
/// integration is known.
struct Target {
    owner: Owner,
    member: Option<String>,
    labels: Labels,
    account: Option<crate::ids::AccountId>,
    verb: Verb,
}

impl Target {
    fn mode(&self, integration: &Integration) -> WriteMode {
        match (self.verb, &self.account) {
            (Verb::Add, _) => WriteMode::Add { several: integration.multiple_connections },
            (Verb::Upsert, Some(id)) => WriteMode::Account(id.clone()),
            (Verb::Upsert, None) => WriteMode::Upsert,
        }
    }
}

fn target(a: Addressing, verb: Verb, errors: &mut Vec<FieldError>) -> Target {
    let user_id = match a.user_id {
        Some(u) => {
            check_id_or_label("user_id", &u, errors);
            u
        }
        None => {
            errors.push(FieldError::new("user_id", "required", "user_id is required."));
            String::new()
        }
    };
    let organization_id = a.organization_id.filter(|o| !o.is_empty());
    if let Some(org) = &organization_id {
        check_id_or_label("organization_id", org, errors);
    }
    let owner = crate::owner::requested(a.connection_owner.as_deref(), user_id.clone(), organization_id, errors);
    for (field, value) in
        [("account_display_name", &a.account_display_name), ("account_identifier", &a.account_identifier)]
    {
        if let Some(Some(v)) = value {
            check_id_or_label(field, v, errors);
        }
    }
    let account = a.connected_account_id.filter(|id| !id.is_empty());
    if account.as_deref().is_some_and(|id| !IdKind::ConnectedAccount.matches(id)) {
        errors.push(FieldError::new("connected_account_id", "invalid", "Not a connected account id."));
    }
    match (verb, a.connection_intent.as_deref(), &account) {
        (Verb::Add, Some("add"), None) | (Verb::Upsert, None, _) | (Verb::Upsert, Some("reauthorize"), Some(_)) => {}
        (Verb::Add, _, Some(_)) => errors.push(FieldError::new(
            "connected_account_id",
            "unsupported",
            "POST only adds an account; rotate an existing one with PUT.",
        )),
        (Verb::Add, None, _) => errors.push(FieldError::new(
            "connection_intent",
            "required",
            "POST only adds an account: send `connection_intent: add` (or use PUT).",
        )),
        (Verb::Add, Some(_), _) => {
            errors.push(FieldError::new("connection_intent", "invalid", "`connection_intent` must be `add` here."))
        }
        (Verb::Upsert, Some("reauthorize"), None) => errors.push(FieldError::new(
            "connected_account_id",
            "required",
            "`connection_intent: reauthorize` needs `connected_account_id`.",
        )),
        (Verb::Upsert, Some(_), _) => errors.push(FieldError::new(
            "connection_intent",
            "invalid",
            "PUT takes `connection_intent: reauthorize` (with `connected_account_id`) or none; add accounts with POST.",
        )),
    }
    let member = (owner.ownership() == crate::owner::Ownership::Organization).then_some(user_id);
    Target {
        owner,
        member,
        labels: Labels {
            account_identifier: a.account_identifier,
            account_display_name: a.account_display_name,
            provider_display_name: None,
        },
        account: account.map(Into::into),
        verb,
    }
}

/// A secret field: 1-4096 characters, required.
fn secret(field: &str, value: Option<Secret>, errors: &mut Vec<FieldError>) -> Option<Secret> {
    match value {
        Some(s) if !s.expose().trim().is_empty() && s.expose().len() <= MAX_SECRET => Some(s),
        Some(_) => {
            errors.push(FieldError::new(field, "invalid", format!("Must be 1-{MAX_SECRET} characters.")));
            None
        }
        None => {
            errors.push(FieldError::new(field, "required", format!("`{field}` is required.")));
            None
        }
    }
}

/// The integration root the owner's accounts live in, which must take `method`.
async fn integration_for(state: &AppState, slug: &str, owner: &Owner, method: AuthMethod) -> ApiResult<Integration> {
    let integration = find(state, slug, owner.ownership()).await?;
    if integration.auth_method != method {
        let what = match method {
            AuthMethod::ApiKey => "API keys",
            _ => "client credentials",
        };
        return Err(auth_method_mismatch(&integration, what));
    }
    let configured = match owner.organization_id() {
        Some(org) => organizations::get(&state.db, state.keyring(), org, slug).await?,
        None => None,
    };
    if !organizations::enabled_for(&integration, configured.as_ref()) {
        return Err(ApiError::not_found("integration_not_found", format!("The integration `{slug}` is disabled.")));
    }
    Ok(integration)
}

pub(crate) async fn api_key(
    state: &AppState,
    slug: &str,
    body: ApiKeyBody,
    verb: Verb,
) -> ApiResult<ConnectedAccountView> {
    let mut errors = Vec::new();
    let key = secret("secret", body.secret, &mut errors);
    let target = target(
        Addressing {
            user_id: body.user_id,
            organization_id: body.organization_id,
            connection_owner: body.connection_owner,
            connected_account_id: body.connected_account_id,
            connection_intent: body.connection_intent,
            account_display_name: body.account_display_name,
            account_identifier: body.account_identifier,
        },
        verb,
        &mut errors,
    );
    let Some(key) = key.filter(|_| errors.is_empty()) else { return Err(ApiError::invalid(errors)) };
    let integration = integration_for(state, slug, &target.owner, AuthMethod::ApiKey).await?;
    let placement = Placement {
        owner: &target.owner,
        established_by: target.member.as_deref(),
        labels: target.labels.clone(),
        mode: target.mode(&integration),
        announce: crate::connections::Announce::IfNewlyConnected,
    };
    let account =
        direct::connect_api_key(state, &integration, placement, key).await?.ok_or_else(|| not_connected(slug))?;
    Ok(view(&account.summary()))
}

pub(crate) async fn client_credentials(
    state: &AppState,
    slug: &str,
    body: ClientCredentialsBody,
    verb: Verb,
) -> ApiResult<ConnectedAccountView> {
    let mut errors = Vec::new();
    let client_id = match body.client_id {
        Some(id) if !id.trim().is_empty() && id.len() <= MAX_SECRET && !id.chars().any(char::is_control) => {
            Some(id.trim().to_owned())
        }
        Some(_) => {
            errors.push(FieldError::new("client_id", "invalid", format!("Must be 1-{MAX_SECRET} characters.")));
            None
        }
        None => {
            errors.push(FieldError::new("client_id", "required", "`client_id` is required with `client_secret`."));
            None
        }
    };
    let client_secret = secret("client_secret", body.client_secret, &mut errors);
    let config = body.config.unwrap_or_default();
    if config.len() > 20 || config.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.is_empty() || v.len() > 256) {
        errors.push(FieldError::new("config", "invalid", "At most 20 values, keys 1-64 and values 1-256 characters."));
    }
    let target = target(
        Addressing {
            user_id: body.user_id,
            organization_id: body.organization_id,
            connection_owner: body.connection_owner,
            connected_account_id: body.connected_account_id,
            connection_intent: body.connection_intent,
            account_display_name: body.account_display_name,
            account_identifier: body.account_identifier,
        },
        verb,
        &mut errors,
    );
    let (Some(client_id), Some(client_secret), true) = (client_id, client_secret, errors.is_empty()) else {
        return Err(ApiError::invalid(errors));
    };
    let integration = integration_for(state, slug, &target.owner, AuthMethod::ClientCredentials).await?;
    let placement = Placement {
        owner: &target.owner,
        established_by: target.member.as_deref(),
        labels: target.labels.clone(),
        mode: target.mode(&integration),
        announce: crate::connections::Announce::IfNewlyConnected,
    };
    let client = OwnClient { client_id, client_secret };
    let account = direct::connect_client(state, &integration, placement, client, config)
        .await?
        .ok_or_else(|| not_connected(slug))?;
    Ok(view(&account.summary()))
}

#[utoipa::path(post, path = "/data-integrations/{slug}/api-key", tag = "connect", params(("slug" = String, Path)),
    request_body = ApiKeyBody, security(("api_key" = [])),
    responses((status = 201, body = ConnectedAccountView), (status = 404, description = "No integration, or `multiple_connections_unavailable`"),
        (status = 422, description = "Field errors; `auth_method_mismatch`; `invalid_api_key` (the provider refused it)")))]
pub async fn create_api_key(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<ApiKeyBody>,
) -> ApiResult<Response> {
    let account = api_key(&state, &slug, body, Verb::Add).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

#[utoipa::path(put, path = "/data-integrations/{slug}/api-key", tag = "connect", params(("slug" = String, Path)),
    request_body = ApiKeyBody, security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No integration or no such account"),
        (status = 422, description = "Field errors; `auth_method_mismatch`; `invalid_api_key` (the provider refused it)")))]
pub async fn update_api_key(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<ApiKeyBody>,
) -> ApiResult<Json<ConnectedAccountView>> {
    Ok(Json(api_key(&state, &slug, body, Verb::Upsert).await?))
}

#[utoipa::path(post, path = "/data-integrations/{slug}/client-credentials", tag = "connect", params(("slug" = String, Path)),
    request_body = ClientCredentialsBody, security(("api_key" = [])),
    responses((status = 201, body = ConnectedAccountView), (status = 404, description = "No integration, or `multiple_connections_unavailable`"),
        (status = 422, description = "Field errors; `auth_method_mismatch`; `invalid_client_credentials` (the provider refused the client)")))]
pub async fn create_client_credentials(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<ClientCredentialsBody>,
) -> ApiResult<Response> {
    let account = client_credentials(&state, &slug, body, Verb::Add).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

#[utoipa::path(put, path = "/data-integrations/{slug}/client-credentials", tag = "connect", params(("slug" = String, Path)),
    request_body = ClientCredentialsBody, security(("api_key" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 404, description = "No integration or no such account"),
        (status = 422, description = "Field errors; `auth_method_mismatch`; `invalid_client_credentials` (the provider refused the client)")))]
pub async fn update_client_credentials(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<ClientCredentialsBody>,
) -> ApiResult<Json<ConnectedAccountView>> {
    Ok(Json(client_credentials(&state, &slug, body, Verb::Upsert).await?))
}
