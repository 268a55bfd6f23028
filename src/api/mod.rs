//! The HTTP API (DESIGN §3): one file per resource, assembled here.

pub mod connect;
pub mod connected_accounts;
pub mod events;
pub mod extract;
pub mod fast_lane;
pub mod guard;
pub mod health;
pub mod integrations;
pub mod openapi;
pub mod openapi_common;
pub mod rate_limit;
pub mod tokens;
pub mod webhooks;
pub mod widget;

use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::app::AppState;
use crate::error::ApiError;

/// Every route of `pipes serve` but the token reads, which `app::router`
/// adds with a state of their own (see `tokens::routes`).
pub fn routes(config: &crate::config::Config) -> Router<AppState> {
    // With an internal listener, operations routes are served there only.
    let operations = if config.internal_listen.is_none() { health::routes() } else { Router::new() };
    Router::new()
        .merge(operations)
        .merge(openapi::routes())
        .merge(integrations::routes())
        .merge(connect::routes())
        .merge(connected_accounts::routes())
        .merge(webhooks::routes())
        .merge(events::routes())
        .merge(widget::routes())
}

pub async fn not_found() -> Response {
    ApiError::not_found("not_found", "No such route.").into_response()
}

pub async fn method_not_allowed() -> Response {
    let mut response = ApiError::BadRequest {
        code: "method_not_allowed",
        message: "This method is not allowed on this route.".into(),
    }
    .into_response();
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}
