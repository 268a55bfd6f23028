//! The long-running roles: `serve`, `scheduler`, `worker`, and `dev` (all of
//! them in one process). Each runs until its cancellation token fires, then
//! finishes in-flight work and returns.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{self, AppState};
use crate::config::Config;

/// Which roles one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleSet {
    pub serve: bool,
    pub scheduler: bool,
    pub worker: bool,
}

/// Runs `roles` until `cancel` fires.
pub async fn run(config: Config, roles: RoleSet, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(config, cancel.clone())?;
    let tasks = TaskTracker::new();
    let names: Vec<&str> = [("serve", roles.serve), ("scheduler", roles.scheduler), ("worker", roles.worker)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect();
    for name in &names {
        tasks.spawn(heartbeat(state.clone(), name, cancel.clone()));
    }
    if roles.serve {
        let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving the HTTP API");
        let service = app::service(state.clone());
        let cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(err) = app::serve_api(listener, service, cancel).await {
                tracing::error!(error = %err, "HTTP server stopped");
            }
        });
    } else {
        // Scheduler and worker expose their own /metrics (DESIGN §4).
        let listener = tokio::net::TcpListener::bind(state.config.metrics_listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
        let router = metrics_router(state.clone());
        let cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(err) = app::serve(listener, router, cancel).await {
                tracing::error!(error = %err, "metrics server stopped");
            }
        });
    }
    if roles.scheduler {
        // Further periodic tasks join the same cron loop: `.with_task("name", task_fn)`.
        let scheduler = crate::scheduler::Scheduler::new(state.clone());
        let handle = scheduler.spawn(cancel.clone());
        tasks.spawn(async move {
            let _ = handle.await;
        });
        tasks.spawn(crate::webhooks::run_relay(state.clone(), cancel.clone()));
    }
    if roles.worker {
        let handle = crate::worker::spawn(state.clone(), cancel.clone());
        tasks.spawn(async move {
            let _ = handle.await;
        });
        tasks.spawn(crate::webhooks::run_deliveries(state.clone(), cancel.clone()));
    }
    tasks.close();
    cancel.cancelled().await;
    tasks.wait().await;
    tracing::info!(roles = ?names, "stopped");
    Ok(())
}

/// `/metrics` and `/health/live` for roles without the HTTP API.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::api::health::metrics))
        .route("/health/live", get(crate::api::health::live))
        .with_state(state)
}

/// Records that this role is alive, for `pipes status`.
async fn heartbeat(state: AppState, role: &'static str, cancel: CancellationToken) {
    let instance = format!("{}:{}", hostname(), std::process::id());
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = sqlx::query(
            "INSERT INTO role_heartbeats (role, instance, last_seen) VALUES ($1, $2, now())
             ON CONFLICT (role, instance) DO UPDATE SET last_seen = now()",
        )
        .bind(role)
        .bind(&instance)
        .execute(&state.db)
        .await;
        if let Err(err) = result {
            tracing::debug!(error = %err, role, "heartbeat not recorded");
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
