//! The long-running roles: `serve`, `scheduler`, `worker`, and `dev` (all of
//! them in one process). Each runs until its cancellation token fires, then
//! finishes in-flight work and returns. The process waits for that at most
//! `PIPES_SHUTDOWN_TIMEOUT`, then names what did not finish and exits anyway (unacked
//! jobs are redelivered by the broker; handlers are idempotent).

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::Config;
use crate::state::AppState;

/// Which roles one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleSet {
    pub serve: bool,
    pub scheduler: bool,
    pub worker: bool,
}

/// Runs `roles` until `cancel` fires, then waits for them at most `PIPES_SHUTDOWN_TIMEOUT`.
pub async fn run(config: Config, roles: RoleSet, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = if roles.serve {
        AppState::new(config, cancel.clone())?
    } else {
        AppState::without_local_reads(config, cancel.clone())?
    };
    let tasks = state.tasks.clone();
    let names: Vec<&str> = [("serve", roles.serve), ("scheduler", roles.scheduler), ("worker", roles.worker)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect();
    for name in &names {
        tasks.spawn(format!("{name} heartbeat"), heartbeat(state.clone(), name, cancel.clone()));
    }
    if roles.serve {
        let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving the HTTP API");
        let service = api::service(state.clone());
        let api_cancel = cancel.clone();
        tasks.spawn("HTTP API", async move {
            if let Err(err) = api::serve_api(listener, service, api_cancel).await {
                tracing::error!(error = %err, "HTTP server stopped");
            }
        });
        if let Some(internal) = state.config.internal_listen {
            let listener = tokio::net::TcpListener::bind(internal).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health/* (internal)");
            let router = internal_router(state.clone());
            let cancel = cancel.clone();
            tasks.spawn("internal endpoint", async move {
                if let Err(err) = api::serve(listener, router, cancel).await {
                    tracing::error!(error = %err, "internal server stopped");
                }
            });
        }
    } else {
        // Scheduler and worker expose their own /metrics (DESIGN §4).
        let listener = tokio::net::TcpListener::bind(state.config.metrics_listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
        let router = metrics_router(state.clone());
        let cancel = cancel.clone();
        tasks.spawn("metrics endpoint", async move {
            if let Err(err) = api::serve(listener, router, cancel).await {
                tracing::error!(error = %err, "metrics server stopped");
            }
        });
    }
    if roles.scheduler {
        // Further periodic tasks join the same cron loop: `.with_task("name", task_fn)`.
        let scheduler = crate::scheduler::Scheduler::new(state.clone());
        scheduler.spawn(cancel.clone());
        tasks.spawn("outbox relay", crate::webhooks::run_relay(state.clone(), cancel.clone()));
        tasks.spawn("token cache refill", crate::cache_warm::run(state.clone(), cancel.clone()));
    }
    if roles.worker {
        crate::worker::spawn(state.clone(), cancel.clone());
        tasks.spawn("webhook delivery worker", crate::webhooks::run_deliveries(state.clone(), cancel.clone()));
    }
    cancel.cancelled().await;
    let timeout = state.config.shutdown_timeout;
    let unfinished = tasks.wait(timeout).await;
    if unfinished.is_empty() {
        tracing::info!(roles = ?names, "stopped");
    } else {
        // Exiting drops their in-flight jobs unacked: the broker redelivers them.
        tracing::warn!(
            roles = ?names,
            ?timeout,
            unfinished = ?unfinished,
            "not everything finished within PIPES_SHUTDOWN_TIMEOUT; exiting anyway"
        );
    }
    Ok(())
}

/// `/metrics` and `/health/live` for roles without the HTTP API.
/// `PIPES_INTERNAL_LISTEN`: the operations routes of `pipes serve`, away from its public port.
pub fn internal_router(state: AppState) -> Router {
    crate::api::health::routes().with_state(state).into()
}

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

/// Cancels `cancel` on SIGINT or SIGTERM.
pub fn cancel_on_signal(cancel: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown requested; finishing in-flight work");
        cancel.cancel();
    });
}
