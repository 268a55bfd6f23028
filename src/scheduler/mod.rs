//! The scheduler role (`pipes scheduler`): a loop on `PIPES_SCHEDULER_CRON` that runs a
//! list of periodic tasks on each tick, plus a slower loop that refreshes the gauges.
//!
//! The refresh claim ([`claim`]) is the built-in task; other periodic work can plug in
//! with [`Scheduler::with_task`], and every task gets the same [`Tick`]: the state, a
//! confirmed publisher and the topology. (The event outbox relay runs a loop of its own
//! beside it, spawned in `roles.rs`.) Any number of schedulers can run: a claim inserts
//! into `refresh_claims`, whose primary key keeps two from claiming one account.

pub mod claim;
mod stats;

pub use stats::refresh_all as refresh_gauges;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pipes_workers::{within_shutdown_grace, Broker, Publisher, Topology};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::queues;
use crate::state::AppState;

/// The error a periodic task reports; it is logged and the loop carries on.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;
type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;
type TaskFn = Arc<dyn Fn(Tick) -> TaskFuture + Send + Sync>;

/// What a periodic task gets on each tick.
#[derive(Clone)]
pub struct Tick {
    pub state: AppState,
    /// Confirmed, mandatory publishing (shared channel; safe to use from many tasks).
    pub publisher: Publisher,
    pub topology: Topology,
    /// Set when the tick started.
    pub now: DateTime<Utc>,
    /// Fires on shutdown: a long task should stop between batches.
    pub cancel: CancellationToken,
}

/// The scheduler: a cron loop running its tasks in order on every tick.
pub struct Scheduler {
    state: AppState,
    tasks: Vec<(&'static str, TaskFn)>,
}

impl Scheduler {
    /// A scheduler that claims due accounts and publishes their refresh jobs, and
    /// drops what expired connect flows kept.
    pub fn new(state: AppState) -> Self {
        let claims = claim::Claims::default();
        Scheduler { state, tasks: Vec::new() }
            .with_task("refresh", move |tick| claims.clone().enqueue_due(tick))
            .with_task(
                "connect_flows",
                |tick| async move { crate::connect::forget_expired(&tick.state.db, tick.now).await },
            )
    }

    /// Adds a task run on every tick after the ones already added.
    pub fn with_task<F, Fut, E>(mut self, name: &'static str, task: F) -> Self
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        let task: TaskFn = Arc::new(move |tick| {
            let fut = task(tick);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        self.tasks.push((name, task));
        self
    }

    /// Runs until `cancel` fires; the tick in progress finishes first.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        let tasks = self.state.tasks.clone();
        tasks.spawn("scheduler", self.run(cancel))
    }

    async fn run(self, cancel: CancellationToken) {
        let config = self.state.config.clone();
        let Some(broker) = queues::connect_broker(&config.amqp_url, "pipes-scheduler", &cancel).await else { return };
        let topology = queues::topology(&config);
        // Publishes are `mandatory`: the queues must exist before the first job.
        if !declare_until_done(&broker, &topology, &cancel).await {
            return;
        }
        // After cancel a publish gives up within the grace period: a silent broker cannot
        // hold the last tick (and so the process) forever.
        let publisher = Publisher::new(&broker).with_shutdown(cancel.clone());
        let gauges = self.state.tasks.spawn(
            "scheduler gauges",
            stats::run(self.state.clone(), broker.clone(), topology.clone(), cancel.clone()),
        );
        tracing::info!(cron = %config.scheduler_cron_text, tasks = ?self.tasks.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "scheduler running");
        while let Some(next) = config.scheduler_cron.upcoming(Utc).next() {
            let wait = (next - crate::time::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let started = Instant::now();
            let tick = Tick {
                state: self.state.clone(),
                publisher: publisher.clone(),
                topology: topology.clone(),
                now: crate::time::now(),
                cancel: cancel.clone(),
            };
            for (name, task) in &self.tasks {
                if let Err(err) = task(tick.clone()).await {
                    tracing::warn!(task = name, error = %err, "scheduler task failed; next tick tries again");
                    if is_unroutable(err.as_ref()) {
                        // A queue vanished (deleted by hand): declare it again.
                        let _ = within_shutdown_grace(&cancel, declare_once(&broker, &topology)).await;
                    }
                }
            }
            metrics::histogram!(m::SCHEDULER_TICK_DURATION).record(started.elapsed().as_secs_f64());
            metrics::gauge!(m::SCHEDULER_LAST_TICK).set(crate::time::now().timestamp_millis() as f64 / 1000.0);
        }
        let _ = gauges.await;
        tracing::info!("scheduler stopped");
    }
}

/// Spawns a scheduler with the built-in tasks only (tests, benchmarks).
pub fn spawn(state: AppState, cancel: CancellationToken) -> JoinHandle<()> {
    Scheduler::new(state).spawn(cancel)
}

/// Limit for declaring the queues, so a broker that accepts bytes but never answers
/// cannot hold the scheduler.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

async fn declare_once(broker: &Broker, topology: &Topology) -> Result<(), TaskError> {
    let declare = async {
        let channel = broker.channel().await?;
        topology.declare(&channel).await?;
        Ok(())
    };
    tokio::time::timeout(DECLARE_TIMEOUT, declare)
        .await
        .unwrap_or_else(|_| Err(format!("the broker did not answer within {DECLARE_TIMEOUT:?}").into()))
}

async fn declare_until_done(broker: &Broker, topology: &Topology, cancel: &CancellationToken) -> bool {
    loop {
        let declared = tokio::select! {
            () = cancel.cancelled() => return false,
            declared = declare_once(broker, topology) => declared,
        };
        match declared {
            Ok(()) => return true,
            Err(err) => tracing::warn!(error = %err, "cannot declare the queues yet"),
        }
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn is_unroutable(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(pipes_workers::PublishError::Unroutable { .. }) = e.downcast_ref() {
            return true;
        }
        source = e.source();
    }
    false
}
