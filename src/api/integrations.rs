//! Integrations admin API (DESIGN §3.4): `GET|POST /data-integrations`,
//! `GET|PUT|DELETE /data-integrations/{slug}` (the user-owned root) and
//! `/data-integrations/{slug}/organization` (the organization-owned root of the same
//! provider). Validation lives in `crate::provisioning`, shared with `pipes integrations`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AdminKey;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::owner::Ownership;
use crate::provisioning::{self, CreateIntegration, UpdateIntegration};
use crate::state::AppState;
use crate::store::integrations::{self, CredentialsType, Cursor, Integration, IntegrationState, Order};
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update, remove)).routes(routes!(
        show_organization,
        update_organization,
        remove_organization
    ))
}

/// `credentials` as shown: never the secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialsView {
    /// `custom` (the application's OAuth app) or `organization` (each organization's own,
    /// whose client id and secret are the organization's configuration).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub client_id: Option<String>,
    pub redacted_client_secret: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomProviderView {
    pub name: String,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub refresh_token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub pkce_enabled: bool,
    pub request_scope_separator: String,
    pub scopes_required: bool,
    pub client_secret_required: bool,
    pub additional_authorization_parameters: BTreeMap<String, String>,
    /// `form` or `json`.
    pub token_body_content_type: String,
    /// `request_body` or `basic_auth_header`.
    pub authenticate_via: String,
    /// An API-key provider: where the key goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub api_key: Option<crate::oauth::catalog::ApiKeySpec>,
    /// The base of the provider's REST API, for the relay.
    pub api_base_url: Option<String>,
}

/// A DataIntegration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataIntegrationView {
    pub object: &'static str,
    pub id: String,
    pub slug: String,
    /// The catalog provider, or `custom`.
    pub integration_type: String,
    pub ownership: &'static str,
    pub description: String,
    pub enabled: bool,
    /// Pipes' own: whether an owner may connect several accounts (`connection_intent: add`).
    pub multiple_connections: bool,
    /// `valid`, or `invalid` after the provider refused the client credentials.
    pub state: &'static str,
    pub scopes: Vec<String>,
    /// Register this at the provider (empty for `api_key` and `client_credentials`).
    pub redirect_uri: String,
    /// How accounts authenticate: one of `oauth`, `api_key`, `client_credentials`.
    pub auth_methods: Vec<&'static str>,
    /// The integration's OAuth app; `null` for `api_key` and `client_credentials`,
    /// whose accounts each bring their credential.
    pub credentials: Option<CredentialsView>,
    pub custom_provider: Option<CustomProviderView>,
    /// The catalog provider's config values.
    pub config: BTreeMap<String, String>,
    /// The account the `api_key` given with a create or update connected; `null` otherwise.
    pub installation: Option<InstallationView>,
    pub created_at: String,
    pub updated_at: String,
}

/// The account an `api_key` block connected.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallationView {
    pub id: String,
    pub connection_role: &'static str,
    pub account_identifier: Option<String>,
    pub account_display_name: Option<String>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub api_key_last_4: Option<String>,
}

impl InstallationView {
    fn of(account: &crate::store::accounts::Account) -> Self {
        InstallationView {
            id: account.id.to_string(),
            connection_role: account.role.as_str(),
            account_identifier: account.account_identifier.clone(),
            account_display_name: account.account_display_name.clone(),
            user_id: account.owner.user_id().map(str::to_owned),
            organization_id: account.owner.organization_id().map(str::to_owned),
            api_key_last_4: account.secret_last_4.clone(),
        }
    }
}

fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The wire view of an integration (also what `pipes integrations show` prints).
pub fn view(i: &Integration, config: &Config) -> DataIntegrationView {
    DataIntegrationView {
        object: "data_integration",
        id: i.id.to_string(),
        slug: i.slug.clone(),
        integration_type: if i.custom_provider.is_some() { "custom".to_owned() } else { i.provider.clone() },
        ownership: i.ownership.as_str(),
        description: i.description.clone(),
        enabled: i.enabled,
        multiple_connections: i.multiple_connections,
        state: match i.state {
            IntegrationState::Valid => "valid",
            IntegrationState::Invalid => "invalid",
        },
        scopes: i.scopes.clone(),
        redirect_uri: if i.auth_method.uses_integration_client() {
            config.redirect_uri(&i.slug)
        } else {
            String::new()
        },
        auth_methods: vec![i.auth_method.as_str()],
        credentials: i.auth_method.uses_integration_client().then(|| match i.credentials_type {
            CredentialsType::Custom => CredentialsView {
                kind: "custom",
                client_id: Some(i.client_id.clone()),
                redacted_client_secret: Some(i.redacted_secret.clone()),
            },
            CredentialsType::Organization => {
                CredentialsView { kind: "organization", client_id: None, redacted_client_secret: None }
            }
        }),
        custom_provider: i.custom_provider.as_ref().map(|c| CustomProviderView {
            name: c.name.clone(),
            // An API-key provider has no OAuth endpoints.
            authorization_url: Some(c.authorization_url.clone()).filter(|u| !u.is_empty()),
            token_url: Some(c.token_url.clone()).filter(|u| !u.is_empty()),
            refresh_token_url: c.refresh_token_url.clone(),
            revocation_url: c.revocation_url.clone(),
            pkce_enabled: c.pkce_enabled,
            request_scope_separator: c.request_scope_separator.clone(),
            scopes_required: c.scopes_required,
            client_secret_required: c.client_secret_required,
            additional_authorization_parameters: c.additional_authorization_parameters.clone(),
            token_body_content_type: wire_name(&c.token_body_content_type),
            authenticate_via: wire_name(&c.authenticate_via),
            api_key: c.api_key.clone(),
            api_base_url: c.api_base_url.clone(),
        }),
        config: i.settings.clone(),
        installation: None,
        created_at: rfc3339(i.created_at),
        updated_at: rfc3339(i.updated_at),
    }
}

/// Loads the integration root `slug` of `ownership` or answers 404 `integration_not_found`.
pub async fn find(state: &AppState, slug: &str, ownership: Ownership) -> ApiResult<Integration> {
    integrations::by_slug(&state.db, state.keyring(), slug, ownership).await?.ok_or_else(|| not_found(slug, ownership))
}

fn not_found(slug: &str, ownership: Ownership) -> ApiError {
    let message = match ownership {
        Ownership::User => format!("No integration `{slug}`."),
        Ownership::Organization => format!("No organization-owned integration `{slug}`."),
    };
    ApiError::not_found("integration_not_found", message)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// 1-100, default 10.
    pub limit: Option<String>,
    /// An integration id: the page before it.
    pub before: Option<String>,
    /// An integration id: the page after it.
    pub after: Option<String>,
    /// `desc` (default, newest first), `asc`, or `normal` (the same as `asc`).
    pub order: Option<String>,
    /// Only the roots owned this way: `user` or `organization`.
    pub ownership: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListMetadata {
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataIntegrationList {
    pub object: &'static str,
    pub data: Vec<DataIntegrationView>,
    pub list_metadata: ListMetadata,
}

#[utoipa::path(get, path = "/data-integrations", tag = "integrations", params(ListQuery), security(("api_key" = [])),
    responses((status = 200, body = DataIntegrationList), (status = 422, description = "Bad paging parameter")))]
pub async fn list(
    _: AdminKey,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<DataIntegrationList>> {
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 10,
        Some(l) => l.parse::<i64>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
            ApiError::invalid_field("limit", "invalid", "limit must be a whole number from 1 to 100.")
        })?,
    };
    let order = match q.order.as_deref().unwrap_or("desc") {
        "desc" | "" => Order::Desc,
        "asc" | "normal" => Order::Asc,
        _ => return Err(ApiError::invalid_field("order", "invalid", "order must be asc, desc or normal.")),
    };
    let ownership = match q.ownership.as_deref().filter(|o| !o.is_empty()) {
        None => None,
        Some(sent) => Some(Ownership::parse(sent).ok_or_else(|| {
            ApiError::invalid_field("ownership", "invalid", "ownership must be user or organization.")
        })?),
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let cursor = match (nonempty(q.before), nonempty(q.after)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field("before", "invalid", "Give before or after, not both."))
        }
        (Some(b), None) => Cursor::Before(b),
        (None, Some(a)) => Cursor::After(a),
        (None, None) => Cursor::Start,
    };
    let page = integrations::list_page(&state.db, state.keyring(), limit, &cursor, order, ownership).await?;
    Ok(Json(DataIntegrationList {
        object: "list",
        data: page.data.iter().map(|i| view(i, &state.config)).collect(),
        list_metadata: ListMetadata { before: page.before, after: page.after },
    }))
}

#[utoipa::path(post, path = "/data-integrations", tag = "integrations", request_body = CreateIntegration, security(("api_key" = [])),
    responses((status = 201, body = DataIntegrationView), (status = 409, description = "The slug is taken"),
        (status = 422, description = "Field errors")))]
pub async fn create(
    _: AdminKey,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> ApiResult<Response> {
    let draft =
        provisioning::validate_create(body, state.config.allow_private_network).await.map_err(ApiError::invalid)?;
    let integration = integrations::insert(&state.db, state.keyring(), &draft).await?;
    let installation = match install_key(state.clone(), &integration, draft.api_key).await {
        Ok(installed) => installed,
        Err(err) => {
            // The key was refused (or could not be stored): the create stores nothing.
            integrations::delete(&state.db, &integration).await?;
            return Err(err);
        }
    };
    tracing::info!(integration = %integration.slug, id = %integration.id, "integration created");
    let mut shown = view(&integration, &state.config);
    shown.installation = installation;
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

#[utoipa::path(get, path = "/data-integrations/{slug}", tag = "integrations", security(("api_key" = [])),
    params(("slug" = String, Path)), responses((status = 200, body = DataIntegrationView), (status = 404, description = "No such integration")))]
pub async fn show(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<Json<DataIntegrationView>> {
    show_root(&state, &slug, Ownership::User).await
}

#[utoipa::path(put, path = "/data-integrations/{slug}", tag = "integrations", request_body = UpdateIntegration, security(("api_key" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = DataIntegrationView), (status = 404, description = "No such integration"), (status = 422, description = "Field errors")))]
pub async fn update(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> ApiResult<Json<DataIntegrationView>> {
    update_root(&state, &slug, Ownership::User, body).await
}

#[utoipa::path(delete, path = "/data-integrations/{slug}", tag = "integrations", security(("api_key" = [])),
    params(("slug" = String, Path)), responses((status = 204, description = "Deleted with its connected accounts"), (status = 404, description = "No such integration")))]
pub async fn remove(_: AdminKey, State(state): State<AppState>, Path(slug): Path<String>) -> ApiResult<StatusCode> {
    remove_root(&state, &slug, Ownership::User).await
}

/// The organization-owned root of a provider (`ownership: organization`). The path
/// names no organization: the root serves every organization's shared accounts.
#[utoipa::path(get, path = "/data-integrations/{slug}/organization", tag = "integrations", security(("api_key" = [])),
    params(("slug" = String, Path)), responses((status = 200, body = DataIntegrationView), (status = 404, description = "No such integration")))]
pub async fn show_organization(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<Json<DataIntegrationView>> {
    show_root(&state, &slug, Ownership::Organization).await
}

#[utoipa::path(put, path = "/data-integrations/{slug}/organization", tag = "integrations", request_body = UpdateIntegration,
    security(("api_key" = [])), params(("slug" = String, Path)),
    responses((status = 200, body = DataIntegrationView), (status = 404, description = "No such integration"), (status = 422, description = "Field errors")))]
pub async fn update_organization(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> ApiResult<Json<DataIntegrationView>> {
    update_root(&state, &slug, Ownership::Organization, body).await
}

#[utoipa::path(delete, path = "/data-integrations/{slug}/organization", tag = "integrations", security(("api_key" = [])),
    params(("slug" = String, Path)), responses((status = 204, description = "Deleted with its connected accounts"), (status = 404, description = "No such integration")))]
pub async fn remove_organization(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<StatusCode> {
    remove_root(&state, &slug, Ownership::Organization).await
}

async fn show_root(state: &AppState, slug: &str, ownership: Ownership) -> ApiResult<Json<DataIntegrationView>> {
    let integration = find(state, slug, ownership).await?;
    Ok(Json(view(&integration, &state.config)))
}

async fn update_root(
    state: &AppState,
    slug: &str,
    ownership: Ownership,
    body: UpdateIntegration,
) -> ApiResult<Json<DataIntegrationView>> {
    let existing = find(state, slug, ownership).await?;
    let draft = provisioning::validate_update(&existing, body, state.config.allow_private_network)
        .await
        .map_err(ApiError::invalid)?;
    let updated = integrations::update(&state.db, state.keyring(), &existing.id, &draft)
        .await?
        .ok_or_else(|| not_found(slug, ownership))?;
    // Cached entries carry `missing_scopes` computed from the old scopes.
    state.integration_changed(slug).await;
    let installation = install_key(state.clone(), &updated, draft.api_key).await?;
    let mut shown = view(&updated, &state.config);
    shown.installation = installation;
    Ok(Json(shown))
}

/// Connects (or rotates) the account of an `api_key` block: the owner's compatibility
/// account, the user's own or, on an organization-owned root, the organization's.
async fn install_key(
    state: AppState,
    integration: &Integration,
    key: Option<provisioning::KeyInstall>,
) -> ApiResult<Option<InstallationView>> {
    let Some(key) = key else { return Ok(None) };
    let owner = match (integration.ownership, key.organization_id.filter(|o| !o.is_empty())) {
        (Ownership::User, org) => crate::owner::Owner::user(&key.user_id, org),
        (Ownership::Organization, Some(org)) => crate::owner::Owner::Organization { organization_id: org },
        (Ownership::Organization, None) => {
            return Err(ApiError::invalid_field(
                "api_key.organization_id",
                "required",
                "An organization-owned integration's key belongs to an organization: name it.",
            ))
        }
    };
    let member = (integration.ownership == Ownership::Organization).then_some(key.user_id.as_str());
    let placement = crate::connect::direct::Placement {
        owner: &owner,
        established_by: member,
        labels: Default::default(),
        mode: crate::store::accounts::WriteMode::Upsert,
        announce: crate::connections::Announce::IfNewlyConnected,
    };
    let account = crate::connect::direct::connect_api_key(&state, integration, placement, key.secret)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("an upsert stored no account")))?;
    Ok(Some(InstallationView::of(&account)))
}

async fn remove_root(state: &AppState, slug: &str, ownership: Ownership) -> ApiResult<StatusCode> {
    let existing = find(state, slug, ownership).await?;
    let removed = integrations::delete(&state.db, &existing).await?.ok_or_else(|| not_found(slug, ownership))?;
    state.integration_changed(slug).await;
    tracing::info!(integration = %slug, ownership = ownership.as_str(), accounts = removed, "integration deleted");
    Ok(StatusCode::NO_CONTENT)
}
