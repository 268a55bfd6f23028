//! `POST|PUT /data-integrations/{slug}/api-key` and `/client-credentials`, the SDKs'
//! API-key and client-credentials connections. Every integration connects accounts
//! with OAuth (`auth_methods: ["oauth"]`), so each is refused with a 422 naming the
//! mismatch, after the integration is found, and stores nothing. The body is read
//! (and dropped) all the same, so the connection stays usable for the next request.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AdminKey;
use crate::api::integrations::find;
use crate::error::{ApiError, ApiResult};
use crate::owner::Ownership;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, update_api_key))
        .routes(routes!(create_client_credentials, update_client_credentials))
}

async fn refuse(state: &AppState, slug: &str, method: &str) -> ApiResult<StatusCode> {
    let integration = find(state, slug, Ownership::User).await?;
    Err(ApiError::invalid_field(
        "auth_methods",
        "auth_method_mismatch",
        format!(
            "The integration `{}` connects accounts with OAuth (auth_methods [\"oauth\"]); it takes no {method}.",
            integration.slug
        ),
    ))
}

#[utoipa::path(post, path = "/data-integrations/{slug}/api-key", tag = "connect", params(("slug" = String, Path)),
    security(("api_key" = [])), responses((status = 422, description = "`auth_method_mismatch`: the integration takes OAuth only")))]
pub async fn create_api_key(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    _body: Bytes,
) -> ApiResult<StatusCode> {
    refuse(&state, &slug, "API keys").await
}

#[utoipa::path(put, path = "/data-integrations/{slug}/api-key", tag = "connect", params(("slug" = String, Path)),
    security(("api_key" = [])), responses((status = 422, description = "`auth_method_mismatch`: the integration takes OAuth only")))]
pub async fn update_api_key(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    _body: Bytes,
) -> ApiResult<StatusCode> {
    refuse(&state, &slug, "API keys").await
}

#[utoipa::path(post, path = "/data-integrations/{slug}/client-credentials", tag = "connect", params(("slug" = String, Path)),
    security(("api_key" = [])), responses((status = 422, description = "`auth_method_mismatch`: the integration takes OAuth only")))]
pub async fn create_client_credentials(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    _body: Bytes,
) -> ApiResult<StatusCode> {
    refuse(&state, &slug, "client credentials").await
}

#[utoipa::path(put, path = "/data-integrations/{slug}/client-credentials", tag = "connect", params(("slug" = String, Path)),
    security(("api_key" = [])), responses((status = 422, description = "`auth_method_mismatch`: the integration takes OAuth only")))]
pub async fn update_client_credentials(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    _body: Bytes,
) -> ApiResult<StatusCode> {
    refuse(&state, &slug, "client credentials").await
}
