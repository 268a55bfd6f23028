//! `GET /user_management/users/{user_id}/data_providers?organization_id=…` and
//! `GET /organizations/{organization_id}/data_providers`: every enabled integration
//! root owned that way (user-owned, or organization-owned) with the owner's account
//! for it. The widget lists the same.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::connect::check_id_or_label;
use crate::api::connected_accounts::{target, view, ConnectedAccountView, OwnerQuery};
use crate::api::extract::{AdminKey, ApiQuery};
use crate::auth_method::AuthMethod;
use crate::error::{ApiError, ApiResult};
use crate::owner::{Owner, Ownership};
use crate::state::AppState;
use crate::store::accounts::{self, AccountSummary, ConnectionRole};
use crate::store::integrations::Integration;
use crate::store::organizations;
use crate::time::rfc3339;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(data_providers)).routes(routes!(organization_data_providers))
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
    /// The owner's compatibility account, if any (never a standard one).
    pub connected_account: Option<ProviderAccountView>,
    /// Every account of the owner with `supports_multiple_connections=true`; else only
    /// the compatibility one.
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
    pub userland_user_id: Option<String>,
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
    let several = q.supports_multiple_connections == Some(true);
    let target = target(&user_id, q, None)?;
    if target.only.is_some() {
        return Err(ApiError::invalid_field(
            "connected_account_id",
            "unsupported",
            "Not taken when listing providers.",
        ));
    }
    let listed = owner_listing(&state, &target.owner).await?;
    let data = listed.iter().map(|(i, a)| data_provider_view(i, a, several)).collect();
    Ok(Json(DataProviderList { object: "list", data }))
}

/// The query of an organization's provider list. An unknown parameter is refused (400).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OrganizationListQuery {
    /// `true`: `connected_accounts` lists every account, not only the compatibility one.
    pub supports_multiple_connections: Option<bool>,
}

#[utoipa::path(get, path = "/organizations/{organization_id}/data_providers", tag = "connected_accounts",
    params(("organization_id" = String, Path), OrganizationListQuery), security(("api_key" = [])),
    responses((status = 200, body = DataProviderList,
        description = "Every enabled organization-owned integration with this organization's shared account for it")))]
pub async fn organization_data_providers(
    _: AdminKey,
    State(state): State<AppState>,
    Path(organization_id): Path<String>,
    ApiQuery(q): ApiQuery<OrganizationListQuery>,
) -> ApiResult<Json<DataProviderList>> {
    let several = q.supports_multiple_connections == Some(true);
    let mut errors = Vec::new();
    check_id_or_label("organization_id", &organization_id, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let listed = owner_listing(&state, &Owner::organization(organization_id)).await?;
    let data = listed.iter().map(|(i, a)| data_provider_view(i, a, several)).collect();
    Ok(Json(DataProviderList { object: "list", data }))
}

/// Every enabled integration root owned the way `owner` is, with the owner's accounts
/// of it, oldest first (no token is read). Shared with the widget.
pub async fn owner_listing(state: &AppState, owner: &Owner) -> ApiResult<Vec<(Integration, Vec<AccountSummary>)>> {
    let integrations = crate::store::integrations::all(&state.db, state.keyring()).await?;
    let mut accounts = accounts::summaries_for_owner(&state.db, owner).await?;
    let configured = match owner.organization_id() {
        Some(org) => organizations::all(&state.db, state.keyring(), org).await?,
        None => Default::default(),
    };
    Ok(integrations
        .into_iter()
        .filter(|i| i.ownership == owner.ownership() && organizations::enabled_for(i, configured.get(&i.slug)))
        .map(|i| {
            let (of, rest) = accounts.drain(..).partition(|a| a.integration_id == i.id);
            accounts = rest;
            (i, of)
        })
        .collect())
}

/// An integration as `data_providers` lists it, with the owner's accounts (all of them
/// when `several`, else the compatibility one).
pub fn data_provider_view(i: &Integration, accounts: &[AccountSummary], several: bool) -> DataProviderView {
    let listed = |a: &AccountSummary| ProviderAccountView {
        account: view(a),
        userland_user_id: a.owner.user_id().map(str::to_owned),
    };
    let compatibility = accounts.iter().find(|a| a.role == ConnectionRole::Compatibility);
    let shown: Vec<ProviderAccountView> =
        if several { accounts.iter().map(listed).collect() } else { compatibility.into_iter().map(listed).collect() };
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
        credentials_type: match i.auth_method {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::OAuth | AuthMethod::ClientCredentials => "oauth2",
        },
        auth_methods: vec![i.auth_method.as_str()],
        connection_owner: i.ownership.as_str(),
        // The older name of `connection_owner`, in its older spelling.
        ownership: match i.ownership {
            Ownership::User => "userland_user",
            Ownership::Organization => "organization",
        },
        scopes: i.scopes.clone(),
        connected_account: compatibility.map(listed),
        connected_accounts: shown,
        created_at: rfc3339(i.created_at),
        updated_at: rfc3339(i.updated_at),
    }
}
