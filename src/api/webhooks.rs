//! `GET|POST /webhook_endpoints`, `PATCH|DELETE /webhook_endpoints/{id}`
//! (admin; DESIGN §3.5), in the shapes the official SDKs send and parse
//! (`createWebhookEndpoint`, `listWebhookEndpoints`, `updateWebhookEndpoint`,
//! `deleteWebhookEndpoint`). The secret appears in clear only in the create
//! response; list and update show a redacted form.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AdminKey;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::events::EventKind;
use crate::ids::IdKind;
use crate::outbound as target;
use crate::state::AppState;
use crate::webhooks::endpoints::{self, EndpointPatch, EndpointStatus, PageRequest};

const MAX_URL_LEN: usize = 2048;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(update_endpoint, delete_endpoint))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"endpoint_url": "http://127.0.0.1:9000/webhooks", "events": ["pipes.connected_account.connected"]}))]
pub struct CreateEndpoint {
    /// Where deliveries are POSTed (http or https).
    pub endpoint_url: String,
    /// The event types this endpoint receives.
    pub events: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateEndpoint {
    pub endpoint_url: Option<String>,
    /// `enabled` or `disabled`.
    pub status: Option<String>,
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub limit: Option<i64>,
    pub order: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
}

async fn checked_url(state: &AppState, url: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    if url.len() > MAX_URL_LEN {
        errors.push(FieldError::new(
            "endpoint_url",
            "too_long",
            format!("endpoint_url must be at most {MAX_URL_LEN} characters"),
        ));
        return None;
    }
    match target::check_for_save(url, state.config.allow_private_network).await {
        Ok(parsed) => Some(parsed.to_string()),
        Err(problem) => {
            errors.push(FieldError::new("endpoint_url", problem.code(), format!("endpoint_url {problem}")));
            None
        }
    }
}

/// Known event types, each once, in the order given.
fn checked_events(events: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if events.is_empty() {
        errors.push(FieldError::new("events", "required", "events must name at least one event type"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let event = event.trim();
        if !EventKind::known(event) {
            errors.push(FieldError::new(
                format!("events[{i}]"),
                "unknown_event",
                format!("unknown event type; known: {}", EventKind::NAMES.join(", ")),
            ));
        } else if !out.iter().any(|e| e == event) {
            out.push(event.to_owned());
        }
    }
    out
}

/// Page size and order of a list route, checked.
pub fn page_request(limit: Option<i64>, order: Option<&str>, default_descending: bool) -> ApiResult<(i64, bool)> {
    let limit = limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "out_of_range", "limit must be between 1 and 100"));
    }
    let descending = match order {
        None | Some("") => default_descending,
        Some("asc") => false,
        Some("desc") | Some("normal") => true,
        Some(_) => return Err(ApiError::invalid_field("order", "invalid", "order must be asc, desc or normal")),
    };
    Ok((limit, descending))
}

#[utoipa::path(post, path = "/webhook_endpoints", tag = "webhooks", request_body = CreateEndpoint,
    security(("api_key" = [])),
    responses((status = 201, description = "The endpoint, with its secret (shown only here)"), (status = 422, description = "Invalid URL or event type")))]
pub async fn create_endpoint(
    _: AdminKey,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let url = checked_url(&state, &body.endpoint_url, &mut errors).await;
    let events = checked_events(&body.events, &mut errors);
    let Some(url) = url.filter(|_| errors.is_empty()) else { return Err(ApiError::invalid(errors)) };
    let endpoint = endpoints::create(&state.db, state.keyring(), &url, &events).await?;
    tracing::info!(endpoint_id = %endpoint.id, "webhook endpoint created");
    Ok((StatusCode::CREATED, Json(endpoint.to_json(true))).into_response())
}

#[utoipa::path(get, path = "/webhook_endpoints", tag = "webhooks", security(("api_key" = [])),
    params(("limit" = Option<i64>, Query, description = "1 to 100, default 10"),
           ("order" = Option<String>, Query, description = "asc, desc (default) or normal"),
           ("after" = Option<String>, Query), ("before" = Option<String>, Query)),
    responses((status = 200, description = "A page of endpoints (secrets redacted)")))]
pub async fn list_endpoints(
    _: AdminKey,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let (limit, descending) = page_request(query.limit, query.order.as_deref(), true)?;
    let page = PageRequest {
        limit,
        descending,
        after: query.after.filter(|s| !s.is_empty()),
        before: query.before.filter(|s| !s.is_empty()),
    };
    let page = endpoints::list(&state.db, state.keyring(), &page).await?;
    let data: Vec<_> = page.data.iter().map(|e| e.to_json(false)).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "list_metadata": {"before": page.before, "after": page.after},
    })))
}

fn not_found() -> ApiError {
    ApiError::not_found("webhook_endpoint_not_found", "No webhook endpoint with this id.")
}

#[utoipa::path(patch, path = "/webhook_endpoints/{id}", tag = "webhooks", request_body = UpdateEndpoint,
    security(("api_key" = [])), params(("id" = String, Path, description = "we_…")),
    responses((status = 200, description = "The updated endpoint (secret redacted)"), (status = 404, description = "No such endpoint")))]
pub async fn update_endpoint(
    _: AdminKey,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateEndpoint>,
) -> ApiResult<Json<serde_json::Value>> {
    if !IdKind::WebhookEndpoint.matches(&id) {
        return Err(not_found());
    }
    let mut errors = Vec::new();
    let mut patch = EndpointPatch::default();
    if let Some(url) = &body.endpoint_url {
        patch.endpoint_url = checked_url(&state, url, &mut errors).await;
    }
    if let Some(status) = &body.status {
        patch.status = EndpointStatus::parse(status);
        if patch.status.is_none() {
            errors.push(FieldError::new("status", "invalid", "status must be enabled or disabled"));
        }
    }
    if let Some(events) = &body.events {
        patch.events = Some(checked_events(events, &mut errors));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let endpoint = endpoints::update(&state.db, state.keyring(), &id, &patch).await?.ok_or_else(not_found)?;
    Ok(Json(endpoint.to_json(false)))
}

#[utoipa::path(delete, path = "/webhook_endpoints/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path, description = "we_…")),
    responses((status = 204, description = "Deleted, with its delivery log"), (status = 404, description = "No such endpoint")))]
pub async fn delete_endpoint(
    _: AdminKey,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !IdKind::WebhookEndpoint.matches(&id) || !endpoints::delete(&state.db, &id).await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
