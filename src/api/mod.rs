//! The HTTP API (DESIGN §3): one file per resource, assembled here into the
//! router and the one stack every request of `pipes serve` passes.

pub mod browser;
pub mod connect;
pub mod connected_accounts;
pub mod credential_accounts;
pub mod data_providers;
pub mod events;
pub mod extract;
pub mod fast_lane;
pub mod guard;
pub mod health;
pub mod integrations;
pub mod openapi;
pub mod openapi_common;
pub mod organization_configurations;
pub mod rate_limit;
pub mod relay;
pub mod tokens;
pub mod webhooks;
pub mod widget;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// Body size limit for every route.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Upper bound of one request, on-demand refresh included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of `pipes serve`, each with its OpenAPI description.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    // With an internal listener, operations routes are served there only.
    let operations = if state.config.internal_listen.is_none() { health::routes() } else { OpenApiRouter::new() };
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .merge(operations)
        .merge(integrations::routes())
        .merge(connect::routes())
        .merge(credential_accounts::routes())
        .merge(connected_accounts::routes())
        .merge(data_providers::routes())
        .merge(organization_configurations::routes())
        .merge(tokens::routes(state))
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

#[derive(Clone, Copy)]
pub struct MakeUlidRequestId;

impl MakeRequestId for MakeUlidRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

/// A new request id, `req_` and a ULID, encoded without a temporary `String`.
pub fn new_request_id() -> axum::http::HeaderValue {
    let mut id = [0u8; 4 + ulid::ULID_LEN];
    id[..4].copy_from_slice(b"req_");
    let mut ulid = [0u8; ulid::ULID_LEN];
    ulid::Ulid::new().array_to_str(&mut ulid);
    id[4..].copy_from_slice(&ulid);
    // ASCII letters, digits and `_` only: always a valid header value.
    axum::http::HeaderValue::from_bytes(&id).unwrap_or_else(|_| axum::http::HeaderValue::from_static("req_"))
}

/// The full HTTP application of `pipes serve`.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = routes(&state).split_for_parts();
    routes
        .merge(openapi::route(&openapi::document(doc)))
        // A proxy, not an API of its own: documented in the README, not in the OpenAPI document.
        .merge(relay::routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Answers carry tokens, secrets and account state: no cache may keep them
        // unless a route says otherwise (the widget's static assets).
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        .layer(axum::middleware::from_fn(guard::reject_unusable_url))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
}

/// The HTTP service of `pipes serve`, one stack for every route: request id and
/// trace span, the rate limits, the token-read fast lane, then [`router`].
pub fn service(state: AppState) -> Service {
    Service {
        limits: state.limits.clone(),
        keys: state.keys.clone(),
        inner: fast_lane::FastLane::new(state.clone(), router(state)),
    }
}

/// What [`service`] makes, one per connection.
pub type Service = rate_limit::MakeLimited<fast_lane::FastLane>;

/// Serves the API ([`service`]) on `listener` until `cancel` fires, then drains
/// in-flight requests.
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    service: Service,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, service).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

/// Serves `router` on `listener` until `cancel` fires, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}
