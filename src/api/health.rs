//! Liveness, readiness (PostgreSQL, Redis, RabbitMQ, as a background monitor
//! last saw them) and the Prometheus scrape route.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::readiness::Snapshot;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(live)).routes(routes!(ready)).routes(routes!(metrics))
}

#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "The process is up")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "PostgreSQL, Redis and RabbitMQ reachable"), (status = 503, description = "A dependency is down")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let Snapshot { postgres: pg, redis, rabbitmq: amqp } = state.readiness.snapshot().await;
    let checks = json!({"postgres": up(pg), "redis": up(redis), "rabbitmq": up(amqp)});
    let down: Vec<&str> = [("postgres", pg), ("redis", redis), ("rabbitmq", amqp)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    if down.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready", "checks": checks}))).into_response()
    } else {
        let body = json!({
            "code": "not_ready",
            "message": format!("Not ready: {} unreachable.", down.join(", ")),
            "checks": checks,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn up(ok: bool) -> &'static str {
    if ok {
        "up"
    } else {
        "down"
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    render_metrics(&state.metrics)
}

/// Renders the process's metrics in the Prometheus text format.
pub fn render_metrics(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response {
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
