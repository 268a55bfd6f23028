//! Readiness: whether PostgreSQL, Redis and RabbitMQ answer, as a background
//! monitor last saw them (`/health/ready`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::redis_conn::Redis;
use crate::tasks::Tasks;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

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
/// The monitor starts on the first probe: a process that is never asked opens no
/// broker connection for it.
#[derive(Clone)]
pub struct Readiness {
    deps: Arc<Deps>,
    last: Arc<OnceCell<watch::Receiver<Snapshot>>>,
}

struct Deps {
    db: PgPool,
    redis: Redis,
    amqp_url: String,
    tasks: Tasks,
    cancel: CancellationToken,
}

impl Readiness {
    pub fn new(db: PgPool, redis: Redis, amqp_url: &str, tasks: Tasks, cancel: CancellationToken) -> Self {
        let deps = Deps { db, redis, amqp_url: amqp_url.to_owned(), tasks, cancel };
        Readiness { deps: Arc::new(deps), last: Arc::default() }
    }

    /// The last snapshot; the first call starts the monitor and waits for its first look.
    pub async fn snapshot(&self) -> Snapshot {
        let rx = self
            .last
            .get_or_init(|| async {
                let (tx, mut rx) = watch::channel(Snapshot::default());
                self.deps.tasks.spawn("readiness monitor", monitor(self.deps.clone(), tx));
                let _ = rx.changed().await;
                rx
            })
            .await;
        *rx.borrow()
    }
}

async fn monitor(state: Arc<Deps>, tx: watch::Sender<Snapshot>) {
    let mut broker: Option<lapin::Connection> = None;
    let mut every = tokio::time::interval(MONITOR_EVERY);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        if !broker.as_ref().is_some_and(|c| c.status().connected()) {
            let connect = lapin::Connection::connect(&state.amqp_url, lapin::ConnectionProperties::default());
            broker = tokio::time::timeout(CHECK_TIMEOUT, connect).await.ok().and_then(Result::ok);
        }
        let (postgres, redis) = tokio::join!(postgres_ok(&state.db), state.redis.ping());
        let rabbitmq = broker.as_ref().is_some_and(|c| c.status().connected());
        if tx.send(Snapshot { postgres, redis, rabbitmq }).is_err() {
            return;
        }
    }
}

pub async fn postgres_ok(db: &sqlx::PgPool) -> bool {
    matches!(tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(db)).await, Ok(Ok(_)))
}
