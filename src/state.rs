//! The state of a Pipes process: its connections and services, shared by every
//! role it runs. Nothing here knows about HTTP routes.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyVerifier;
use crate::cache::TokenCache;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::redis_conn::Redis;
use crate::refresh::Refresher;
use crate::tasks::Tasks;

/// The services of one process, built once and shared by its roles: the database,
/// Redis, the token cache, the refresh single flight, the read path, the API key
/// verifier, the rate limits. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub keys: KeyVerifier,
    /// Outbound HTTP to providers, through the outbound guard (`crate::outbound`).
    pub http: crate::outbound::ProviderClient,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The Redis token cache (every account write updates it).
    pub cache: TokenCache,
    /// The per-account single flight for refreshes.
    pub refresher: Refresher,
    /// Storing and disconnecting accounts, with their events.
    pub connections: crate::connections::Connections,
    /// The token read path (in-process answers, Redis, PostgreSQL).
    pub reads: crate::read::Reader,
    /// The rate limits of `pipes serve`.
    pub limits: crate::limits::Limits,
    /// What `/health/ready` reports.
    pub readiness: crate::readiness::Readiness,
    pub cancel: CancellationToken,
    /// Every background task of the process ([`crate::tasks`]).
    pub tasks: Tasks,
}

impl AppState {
    pub fn keyring(&self) -> &KeyRing {
        &self.config.encryption_keys
    }

    /// Builds the state: lazy database pool, background Redis connection, and the
    /// invalidation subscription that lets token reads answer from memory.
    pub fn new(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        Self::build(config, cancel, true)
    }

    /// The state of a process that answers no token reads (a scheduler or worker
    /// alone): no invalidation subscription. Every token stored publishes one message
    /// on that channel, and a subscriber with no reads to answer would only receive them
    /// all, one per refresh. Its in-process answer cache stays off, as it is whenever the
    /// subscription is down.
    pub fn without_local_reads(config: Config, cancel: CancellationToken) -> anyhow::Result<Self> {
        Self::build(config, cancel, false)
    }

    fn build(config: Config, cancel: CancellationToken, local_reads: bool) -> anyhow::Result<Self> {
        // In-flight refreshes take their leases and store their results in grouped
        // statements (one connection each group); the rarer per-job statements (a retry's
        // mark, a released lease, waiting on another holder) share the rest.
        let db = crate::db::pool(&config.database_url, config.database_pool)?;
        let tasks = Tasks::default();
        let redis =
            Redis::start(&config.redis_url, &config.redis_prefix, config.redis_timeout, &tasks, cancel.clone())?;
        let http = crate::outbound::ProviderClient::new(config.provider_timeout, config.allow_private_network)?;
        let cache = TokenCache::new(redis.clone(), config.encryption_keys.clone(), config.min_validity);
        let refresher =
            Refresher::new(db.clone(), config.encryption_keys.clone(), http.clone(), cache.clone(), &config);
        // The recorder first: the read path registers its metric handles.
        let metrics = crate::metrics::recorder();
        let connections = crate::connections::Connections::new(
            db.clone(),
            config.encryption_keys.clone(),
            cache.clone(),
            refresher.clone(),
            http.clone(),
        );
        let reads =
            crate::read::Reader::new(db.clone(), config.encryption_keys.clone(), cache.clone(), refresher.clone());
        reads.start_upkeep(metrics.clone(), &tasks, cancel.clone());
        tasks.spawn("cache invalidations", crate::invalidations::run(db.clone(), cache.clone(), cancel.clone()));
        let limits = crate::limits::Limits::new(&config.rate_limits);
        tasks.spawn("rate limit upkeep", limits.clone().run_upkeep(cancel.clone()));
        if local_reads {
            reads.listen(&config.redis_url, &tasks, cancel.clone());
        }
        Ok(AppState {
            cache,
            refresher,
            connections,
            reads,
            limits,
            readiness: crate::readiness::Readiness::new(
                db.clone(),
                redis.clone(),
                &config.amqp_url,
                tasks.clone(),
                cancel.clone(),
            ),
            keys: KeyVerifier::new(db.clone()),
            config: Arc::new(config),
            db,
            redis,
            http,
            metrics,
            cancel,
            tasks,
        })
    }
}

impl AppState {
    /// After an integration changed or went away: drop its cached tokens and
    /// loaded copies here at once and, through the cache's invalidation
    /// channel, on every other replica.
    pub async fn integration_changed(&self, slug: &str) {
        self.cache.evict_integration(slug).await;
    }
}
