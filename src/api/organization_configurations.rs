//! Organization-scoped providers: `GET /organizations/{organization_id}/data_integration_configurations`
//! (every provider configured for the environment, as that organization sees it) and
//! `PUT …/{slug}` (the organization enables or disables it, narrows its scopes, and, for
//! an integration with organization credentials, sets its own OAuth app). Secrets are
//! sealed and never answered.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::connect::check_id_or_label;
use crate::api::extract::{AdminKey, ApiJson};
use crate::auth_method::AuthMethod;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::oauth::catalog::CatalogError;
use crate::owner::Ownership;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::OwnClient;
use crate::store::integrations::{self, CredentialsType, Integration};
use crate::store::organizations::{self, ConfigurationWrite, OrganizationConfiguration};
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(configure))
}

/// An organization's OAuth app for an integration with organization credentials.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrganizationCredentialsView {
    /// Always `organization`.
    pub credentials_type: &'static str,
    pub has_credentials: bool,
    pub client_id: Option<String>,
    pub client_secret_last_four: Option<String>,
    /// Register this at the provider, in the organization's OAuth app.
    pub redirect_uri: String,
}

/// A provider as one organization has it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigurationView {
    /// Always `data_integration_configuration`.
    pub object: &'static str,
    /// The integration's id.
    pub id: String,
    pub organization_id: String,
    pub slug: String,
    pub name: String,
    /// Whether its members may connect: the integration is enabled and the organization
    /// did not switch it off.
    pub enabled: bool,
    /// The organization's scopes, else the integration's; `null` when neither has any.
    pub scopes: Option<Vec<String>>,
    /// The provider config values in effect: the organization's over the integration's
    /// (organization credentials), else the integration's.
    pub config: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    /// Integrations with organization credentials only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<OrganizationCredentialsView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigurationList {
    pub object: &'static str,
    pub data: Vec<ConfigurationView>,
}

/// `PUT …/{slug}`: absent fields keep their value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigureBody {
    pub enabled: Option<bool>,
    /// The scopes the organization's members are asked for; `null` inherits the integration's.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Option<Vec<String>>>,
    /// The organization's OAuth app, with `client_secret` (organization credentials only).
    pub client_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<Secret>,
    /// The provider's config values for the organization's own instance (organization
    /// credentials only); replaces the organization's earlier ones.
    #[schema(value_type = Option<Object>)]
    pub config: Option<BTreeMap<String, String>>,
}

fn view(
    state: &AppState,
    organization_id: &str,
    i: &Integration,
    c: Option<&OrganizationConfiguration>,
) -> ConfigurationView {
    let scopes = c.and_then(|c| c.scopes.clone()).or_else(|| Some(i.scopes.clone()).filter(|s| !s.is_empty()));
    ConfigurationView {
        object: "data_integration_configuration",
        id: i.id.to_string(),
        organization_id: organization_id.to_owned(),
        slug: i.slug.clone(),
        name: i.display_name(),
        enabled: organizations::enabled_for(i, c),
        scopes,
        config: match (i.credentials_type, c) {
            (CredentialsType::Organization, Some(c)) => organizations::config_over(i, &c.config),
            _ => i.settings.clone(),
        },
        created_at: rfc3339(c.map_or(i.created_at, |c| c.created_at)),
        updated_at: rfc3339(c.map_or(i.updated_at, |c| c.updated_at)),
        credentials: (i.credentials_type == CredentialsType::Organization).then(|| OrganizationCredentialsView {
            credentials_type: "organization",
            has_credentials: c.is_some_and(|c| c.client.is_some()),
            client_id: c.and_then(|c| c.client.as_ref()).map(|own| own.client_id.clone()),
            client_secret_last_four: c.and_then(|c| c.client_secret_last_4.clone()),
            redirect_uri: state.config.redirect_uri(&i.slug),
        }),
    }
}

/// An organization's config values: only for organization credentials (the others' config
/// is the integration's), only the provider's own fields, each a value it accepts.
fn check_config(integration: &Integration, config: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if integration.credentials_type != CredentialsType::Organization {
        if !config.is_empty() {
            errors.push(FieldError::new(
                "config",
                "not_allowed",
                format!(
                    "`{}` uses the application's OAuth app; its config is set on the integration.",
                    integration.slug
                ),
            ));
        }
        return;
    }
    let Ok(spec) = integration.spec() else { return };
    let unknown: Vec<&String> = config.keys().filter(|k| !spec.config_params.contains(k)).collect();
    for key in &unknown {
        errors.push(FieldError::new(
            format!("config.{key}"),
            "unknown",
            format!("{} takes no config `{key}`.", spec.name),
        ));
    }
    if !unknown.is_empty() {
        return;
    }
    match spec.resolve_urls(&organizations::config_over(integration, config)) {
        // The organization may name the rest later; authorizing needs them all.
        Ok(_) | Err(CatalogError::MissingParam { .. }) => {}
        Err(CatalogError::InvalidParam { param, reason, .. }) => {
            errors.push(FieldError::new(format!("config.{param}"), "invalid", format!("config `{param}` {reason}.")))
        }
        Err(e) => errors.push(FieldError::new("config", "invalid", e.to_string())),
    }
}

/// One integration per provider slug: its user-owned root where it has one.
fn by_slug(all: Vec<Integration>) -> BTreeMap<String, Integration> {
    let mut roots: BTreeMap<String, Integration> = BTreeMap::new();
    for i in all {
        let replace = roots.get(&i.slug).is_none_or(|kept| kept.ownership == Ownership::Organization);
        if replace {
            roots.insert(i.slug.clone(), i);
        }
    }
    roots
}

fn checked_org(organization_id: &str) -> ApiResult<()> {
    let mut errors = Vec::new();
    check_id_or_label("organization_id", organization_id, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

#[utoipa::path(get, path = "/organizations/{organization_id}/data_integration_configurations", tag = "organizations",
    params(("organization_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ConfigurationList)))]
pub async fn list(
    _: AdminKey,
    State(state): State<AppState>,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<ConfigurationList>> {
    checked_org(&organization_id)?;
    let roots = by_slug(integrations::all(&state.db, state.keyring()).await?);
    let mut configured = organizations::all(&state.db, state.keyring(), &organization_id).await?;
    let data = roots.values().map(|i| view(&state, &organization_id, i, configured.remove(&i.slug).as_ref())).collect();
    Ok(Json(ConfigurationList { object: "list", data }))
}

#[utoipa::path(put, path = "/organizations/{organization_id}/data_integration_configurations/{slug}", tag = "organizations",
    params(("organization_id" = String, Path), ("slug" = String, Path)), request_body = ConfigureBody, security(("api_key" = [])),
    responses((status = 200, body = ConfigurationView), (status = 404, description = "No integration for this provider"),
        (status = 422, description = "Field errors")))]
pub async fn configure(
    _: AdminKey,
    State(state): State<AppState>,
    Path((organization_id, slug)): Path<(String, String)>,
    ApiJson(body): ApiJson<ConfigureBody>,
) -> ApiResult<Json<ConfigurationView>> {
    checked_org(&organization_id)?;
    let all: Vec<Integration> =
        integrations::all(&state.db, state.keyring()).await?.into_iter().filter(|i| i.slug == slug).collect();
    let Some(integration) = by_slug(all).remove(&slug) else {
        return Err(ApiError::not_found("integration_not_found", format!("No integration `{slug}`.")));
    };
    let mut errors = Vec::new();
    let own_app = integration.credentials_type == CredentialsType::Organization;
    let client = match (body.client_id, body.client_secret) {
        (None, None) => None,
        (Some(_), _) | (_, Some(_)) if !own_app => {
            errors.push(FieldError::new(
                "client_id",
                "not_allowed",
                format!("`{slug}` uses the application's OAuth app; only organization-credential providers take one."),
            ));
            None
        }
        (Some(_), None) => {
            errors.push(FieldError::new("client_secret", "required", "Send the client secret with the client id."));
            None
        }
        (None, Some(_)) => {
            errors.push(FieldError::new("client_id", "required", "Send the client id with the client secret."));
            None
        }
        (Some(id), Some(secret)) => {
            let id = id.trim().to_owned();
            if id.is_empty() || id.len() > 512 || id.chars().any(char::is_control) {
                errors.push(FieldError::new("client_id", "invalid", "Must be 1-512 characters."));
            }
            if secret.expose().trim().is_empty() || secret.expose().len() > 4096 {
                errors.push(FieldError::new("client_secret", "invalid", "Must be 1-4096 characters."));
            }
            Some(OwnClient { client_id: id, client_secret: secret })
        }
    };
    if let Some(config) = &body.config {
        check_config(&integration, config, &mut errors);
    }
    if let Some(Some(scopes)) = &body.scopes {
        if integration.auth_method == AuthMethod::ApiKey {
            errors.push(FieldError::new("scopes", "not_allowed", "An API key carries no OAuth scopes."));
        }
        if scopes.len() > 100
            || scopes.iter().any(|s| s.is_empty() || s.len() > 200 || s.chars().any(char::is_whitespace))
        {
            errors.push(FieldError::new("scopes", "invalid", "At most 100 scopes of 1-200 characters without spaces."));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let write = ConfigurationWrite { enabled: body.enabled, scopes: body.scopes, client, config: body.config };
    let stored = organizations::upsert(&state.db, state.keyring(), &organization_id, &slug, &write).await?;
    // Cached tokens carry `missing_scopes` worked out from the scopes before.
    state.integration_changed(&slug).await;
    tracing::info!(integration = %slug, organization_id = %organization_id, "organization configuration changed");
    Ok(Json(view(&state, &organization_id, &integration, Some(&stored))))
}
