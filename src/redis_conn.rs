//! The Redis connection: one server, or a Redis Cluster. Redis holds only
//! disposable data, so it is optional at run time: until it answers, and
//! whenever a command fails, callers treat it as a miss and go to PostgreSQL.
//!
//! `PIPES_REDIS_URL` names a cluster when it lists several nodes
//! (`redis://h1:7001,redis://h2:7002`) or uses the `redis+cluster://` scheme
//! (`redis+cluster://h1:7001,h2:7002`, or one seed node). Callers get a
//! [`Conn`] either way: it implements `redis::aio::ConnectionLike`, and a
//! cluster connection routes each command to the primary of its key's slot
//! (multi-key `DEL` is split by slot). The one thing that differs is `SCAN`,
//! whose cursor belongs to one server: [`Conn::scan_targets`] lists where it
//! must run.
//!
//! After a failure, callers skip Redis for `SKIP_AFTER_FAILURE` (then one
//! command probes it again), so an outage costs each caller nothing instead of
//! a timeout per command: without it a refresh worker waited a whole write
//! timeout per job while Redis was down, and its throughput fell from hundreds
//! to tens of refreshes per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio_util::sync::CancellationToken;

const CLUSTER_SCHEME: &str = "redis+cluster://";

/// What `PIPES_REDIS_URL` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Plain `redis://` URLs: the server, or the cluster's seed nodes.
    pub nodes: Vec<String>,
    pub cluster: bool,
}

/// Parses `PIPES_REDIS_URL` (see the module header).
pub fn topology(url: &str) -> Result<Topology, redis::RedisError> {
    let cluster_scheme = url.trim_start().starts_with(CLUSTER_SCHEME);
    let mut nodes = Vec::new();
    for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let node = if let Some(rest) = part.strip_prefix(CLUSTER_SCHEME) {
            format!("redis://{rest}")
        } else if part.contains("://") {
            part.to_owned()
        } else {
            // `redis+cluster://a:1,b:2`: the scheme is written once.
            format!("redis://{part}")
        };
        redis::Client::open(node.as_str())?;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "PIPES_REDIS_URL names no server",
        )));
    }
    let cluster = cluster_scheme || nodes.len() > 1;
    Ok(Topology { nodes, cluster })
}

/// A connection to the one server or to the cluster. Cheap to clone; both
/// kinds reconnect by themselves (a command fails while they do).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where one `SCAN` cursor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanTarget {
    /// The one server.
    Server,
    /// A cluster primary, by the address the cluster announces.
    Node { host: String, port: u16 },
}

impl Conn {
    /// Every server a full `SCAN` must visit: the server, or each cluster
    /// primary (each holds its own slots' keys; replicas hold copies).
    pub async fn scan_targets(&mut self) -> RedisResult<Vec<ScanTarget>> {
        let Conn::Cluster(c) = self else { return Ok(vec![ScanTarget::Server]) };
        let slots = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let mut targets = Vec::new();
        for range in as_array(&slots) {
            // [start, end, [host, port, id, …] (the primary), replicas…]
            let Some(primary) = as_array(range).get(2) else { continue };
            let fields = as_array(primary);
            let (Some(host), Some(port)) = (fields.first(), fields.get(1)) else { continue };
            let (Ok(host), Ok(port)) =
                (redis::from_redis_value_ref::<String>(host), redis::from_redis_value_ref::<u16>(port))
            else {
                continue;
            };
            let target = ScanTarget::Node { host, port };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    /// One `SCAN cursor MATCH pattern COUNT count` page on `target`.
    pub async fn scan_page(
        &mut self,
        target: &ScanTarget,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        match (self, target) {
            (Conn::Cluster(c), ScanTarget::Node { host, port }) => {
                let route =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port });
                let value = c.route_command(cmd, route).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }
}

fn as_array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// How long callers skip Redis after a command failed or timed out.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Redis {
    conn: Arc<ArcSwapOption<Conn>>,
    topology: Arc<Topology>,
    prefix: Arc<str>,
    timeout: Duration,
    /// Milliseconds after `epoch` until which `conn()` answers `None`.
    skip_until: Arc<AtomicU64>,
    /// Bumped by [`Redis::suspect`].
    failures: Arc<AtomicU64>,
    epoch: Instant,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("cluster", &self.topology.cluster)
            .field("connected", &self.conn.load().is_some())
            .finish()
    }
}

impl Redis {
    /// Starts connecting in the background; returns at once.
    pub fn start(
        url: &str,
        prefix: &str,
        timeout: Duration,
        tasks: &crate::tasks::Tasks,
        cancel: CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let topology = Arc::new(topology(url)?);
        let connect = connector(&topology)?;
        let conn = Arc::new(ArcSwapOption::empty());
        let slot = conn.clone();
        tasks.spawn("redis connect", async move {
            use backon::Retryable;
            let backoff = backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times();
            let connected = (|| connect.connect())
                .retry(backoff)
                .notify(|err, _| tracing::warn!(error = %err, "redis not reachable yet; retrying"));
            tokio::select! {
                () = cancel.cancelled() => {}
                made = connected => {
                    if let Ok(c) = made {
                        slot.store(Some(Arc::new(c)));
                    }
                }
            }
        });
        Ok(Redis {
            conn,
            topology,
            prefix: prefix.into(),
            timeout,
            skip_until: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    /// Waits up to `within` for the first connection (used at start-up and in tests).
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.conn.load().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// A connection handle, if one was ever made (it reconnects by itself) and
    /// no command failed in the last `SKIP_AFTER_FAILURE`.
    pub fn conn(&self) -> Option<Conn> {
        if self.millis() < self.skip_until.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.load().as_deref().cloned()
    }

    /// Records that a command failed or timed out: callers skip Redis for a while.
    pub fn failed(&self) {
        let until = self.millis() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until.fetch_max(until, Ordering::Relaxed);
        self.suspect();
    }

    /// Records that a write may have been lost (a failed command, a lost
    /// subscription): Redis answers are not trusted again until the invalidation
    /// outbox is drained (`crate::invalidations`).
    pub fn suspect(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times Redis was suspected so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The server or cluster this talks to.
    pub fn topology(&self) -> &Topology {
        &self.topology
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

    /// True when the server (or every cluster node: PING goes to all) answers.
    pub async fn ping(&self) -> bool {
        let Some(mut conn) = self.conn() else { return false };
        matches!(
            tokio::time::timeout(
                self.timeout.max(Duration::from_millis(500)),
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// Makes the first connection of either kind.
enum Connector {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

fn connector(topology: &Topology) -> Result<Connector, redis::RedisError> {
    if !topology.cluster {
        let url = topology.nodes.first().map(String::as_str).unwrap_or_default();
        return Ok(Connector::Single(redis::Client::open(url)?));
    }
    let client = ClusterClient::builder(topology.nodes.iter().map(String::as_str))
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        // Retries cover MOVED/ASK during resharding and a failover; a cluster
        // that is down must fail fast, since a read waits on it.
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .build()?;
    Ok(Connector::Cluster(Box::new(client)))
}

impl Connector {
    async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Connector::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                Ok(Conn::Single(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Connector::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}
