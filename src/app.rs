//! Shared state of the HTTP roles and the router with its middleware:
//! request ids, body limit, request timeout, JSON fallbacks.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::Router;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestId, RequestId};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::auth::KeyVerifier;
use crate::cache::TokenCache;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::redis_conn::Redis;
use crate::refresh::Refresher;

/// Body size limit for every route.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Upper bound of one request, on-demand refresh included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler needs. Cheap to clone.
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
    /// The token read path (in-process answers, Redis, PostgreSQL).
    pub reads: crate::read::Reader,
    /// The rate limits of `pipes serve`.
    pub limits: crate::limits::Limits,
    /// What `/health/ready` reports.
    pub readiness: crate::api::health::Readiness,
    pub cancel: CancellationToken,
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
        let redis = Redis::start(&config.redis_url, &config.redis_prefix, config.redis_timeout, cancel.clone())?;
        let http = crate::outbound::ProviderClient::new(config.provider_timeout, config.allow_private_network)?;
        let cache = TokenCache::new(redis.clone(), config.encryption_keys.clone(), config.min_validity);
        let refresher =
            Refresher::new(db.clone(), config.encryption_keys.clone(), http.clone(), cache.clone(), &config);
        // The recorder first: the read path registers its metric handles.
        let metrics = crate::metrics::recorder();
        let reads =
            crate::read::Reader::new(db.clone(), config.encryption_keys.clone(), cache.clone(), refresher.clone());
        reads.start_upkeep(metrics.clone(), cancel.clone());
        tokio::spawn(crate::invalidations::run(db.clone(), cache.clone(), cancel.clone()));
        let limits = crate::limits::Limits::new(&config.rate_limits);
        tokio::spawn(limits.clone().run_upkeep(cancel.clone()));
        if local_reads {
            reads.listen(&config.redis_url, cancel.clone());
        }
        Ok(AppState {
            cache,
            refresher,
            reads,
            limits,
            readiness: Default::default(),
            keys: KeyVerifier::new(db.clone()),
            config: Arc::new(config),
            db,
            redis,
            http,
            metrics,
            cancel,
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
    crate::api::routes(&state.config)
        .merge(crate::api::tokens::routes(&state))
        .fallback(crate::api::not_found)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Answers carry tokens, secrets and account state: no cache may keep them
        // unless a route says otherwise (the widget's static assets).
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        .layer(axum::middleware::from_fn(crate::api::guard::reject_unusable_url))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
}

/// The HTTP service of `pipes serve`, one stack for every route: request id and
/// trace span, the rate limits, the token-read fast lane, then [`router`].
pub fn service(state: AppState) -> Service {
    Service {
        limits: state.limits.clone(),
        keys: state.keys.clone(),
        inner: crate::api::fast_lane::FastLane::new(state.clone(), router(state)),
    }
}

/// What [`service`] makes, one per connection.
pub type Service = crate::api::rate_limit::MakeLimited<crate::api::fast_lane::FastLane>;

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
