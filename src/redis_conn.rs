//! The Redis connection. Redis holds only disposable data, so it is optional
//! at run time: until it answers, and whenever a command fails, callers treat
//! it as a miss and go to PostgreSQL. After a failure, callers skip Redis for
//! `SKIP_AFTER_FAILURE` (then one command probes it again), so an outage costs
//! each caller nothing instead of a timeout per command: without it a refresh
//! worker waited a whole write timeout per job while Redis was down, and its
//! throughput fell from hundreds to tens of refreshes per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// How long callers skip Redis after a command failed or timed out.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Redis {
    manager: Arc<ArcSwapOption<ConnectionManager>>,
    prefix: Arc<str>,
    timeout: Duration,
    /// Milliseconds after `epoch` until which `conn()` answers `None`.
    skip_until: Arc<AtomicU64>,
    epoch: Instant,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).field("connected", &self.manager.load().is_some()).finish()
    }
}

impl Redis {
    /// Starts connecting in the background; returns at once.
    pub fn start(url: &str, prefix: &str, timeout: Duration, cancel: CancellationToken) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let manager = Arc::new(ArcSwapOption::empty());
        let slot = manager.clone();
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    made = ConnectionManager::new_with_config(client.clone(), config.clone()) => match made {
                        Ok(m) => {
                            slot.store(Some(Arc::new(m)));
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "redis not reachable yet; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        });
        Ok(Redis { manager, prefix: prefix.into(), timeout, skip_until: Arc::new(AtomicU64::new(0)), epoch: Instant::now() })
    }

    /// Waits up to `within` for the first connection (used at start-up and in tests).
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.manager.load().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// A connection handle, if one was ever made (it reconnects by itself) and
    /// no command failed in the last `SKIP_AFTER_FAILURE`.
    pub fn conn(&self) -> Option<ConnectionManager> {
        if self.millis() < self.skip_until.load(Ordering::Relaxed) {
            return None;
        }
        self.manager.load().as_deref().cloned()
    }

    /// Records that a command failed or timed out: callers skip Redis for a while.
    pub fn failed(&self) {
        let until = self.millis() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until.fetch_max(until, Ordering::Relaxed);
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-command timeout on the read path.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `{prefix}:{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub async fn ping(&self) -> bool {
        let Some(mut conn) = self.conn() else { return false };
        matches!(
            tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), redis::cmd("PING").query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }
}
