//! Liveness, readiness (PostgreSQL, Redis, RabbitMQ, as a background monitor
//! last saw them) and the Prometheus scrape route.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes() -> Router<AppState> {
    Router::new().route("/health/live", get(live)).route("/health/ready", get(ready)).route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, description = "The process is up")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "PostgreSQL, Redis and RabbitMQ reachable"), (status = 503, description = "A dependency is down")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let Snapshot { postgres: pg, redis, rabbitmq: amqp } = state.readiness.snapshot(&state).await;
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

/// How often the readiness monitor looks at its connections.
const MONITOR_EVERY: Duration = Duration::from_secs(2);

/// What the dependencies looked like at the monitor's last look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub postgres: bool,
    pub redis: bool,
    pub rabbitmq: bool,
}

/// Readiness as a background monitor sees it through long-lived connections (the
/// pool, the Redis connection, one broker connection), so a probe, however
/// frequent, costs a read of the last snapshot and opens no connection.
#[derive(Clone, Default)]
pub struct Readiness(std::sync::Arc<tokio::sync::OnceCell<tokio::sync::watch::Receiver<Snapshot>>>);

impl Readiness {
    /// The last snapshot; the first call starts the monitor and waits for its first look.
    pub async fn snapshot(&self, state: &AppState) -> Snapshot {
        let rx = self
            .0
            .get_or_init(|| async {
                let (tx, mut rx) = tokio::sync::watch::channel(Snapshot::default());
                tokio::spawn(monitor(state.clone(), tx));
                let _ = rx.changed().await;
                rx
            })
            .await;
        *rx.borrow()
    }
}

async fn monitor(state: AppState, tx: tokio::sync::watch::Sender<Snapshot>) {
    let mut broker: Option<lapin::Connection> = None;
    let mut every = tokio::time::interval(MONITOR_EVERY);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        if !broker.as_ref().is_some_and(|c| c.status().connected()) {
            let connect = lapin::Connection::connect(&state.config.amqp_url, lapin::ConnectionProperties::default());
            broker = tokio::time::timeout(CHECK_TIMEOUT, connect).await.ok().and_then(Result::ok);
        }
        let (postgres, redis) = tokio::join!(postgres_ok(&state.db), state.redis.ping());
        let rabbitmq = broker.as_ref().is_some_and(|c| c.status().connected());
        if tx.send(Snapshot { postgres, redis, rabbitmq }).is_err() {
            return;
        }
    }
}

fn up(ok: bool) -> &'static str {
    if ok {
        "up"
    } else {
        "down"
    }
}

pub async fn postgres_ok(db: &sqlx::PgPool) -> bool {
    matches!(tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(db)).await, Ok(Ok(_)))
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
