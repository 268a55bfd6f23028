//! The token read path (DESIGN §2.1, §3.1), in the order it is tried:
//!
//! 1. the in-process answer cache (`local`), while its invalidation
//!    subscription is live;
//! 2. one Redis GET of the owner's encrypted entry (`crate::cache`);
//! 3. PostgreSQL: a fresh token fills the cache; a token that is not fresh is
//!    refreshed on demand under the per-account single flight
//!    (`crate::refresh`) first.
//!
//! A token is answered only if it stays valid for `min_validity`; when it
//! cannot be made fresh because the provider is down the answer is a 503
//! with `Retry-After`, never the stale token. Redis failing only makes reads
//! slower (they go to PostgreSQL and are counted as degraded).

pub mod answer;
pub mod integrations;
pub mod listener;
pub mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cache::{entry_key, key_for, standard_key, Lookup, TokenCache};
use crate::crypto::KeyRing;
use crate::metrics as m;
use crate::owner::Owner;
use crate::refresh::{Reason, RefreshError, RefreshOutcome, Refresher};
use crate::store::accounts::{self, Account, AccountError, AccountState, Selector};
use crate::store::integrations::IntegrationError;
use crate::tasks::Tasks;
use answer::Answer;
use integrations::{IntegrationViews, View};

/// What a read asks for: which of the owner's accounts of the integration.
#[derive(Debug, Clone)]
pub struct ReadTarget {
    pub owner: Owner,
    pub selector: Selector,
}

impl ReadTarget {
    /// The cache entries the answer may be in, most likely first: the owner's
    /// compatibility entry, and a named account's own. None for [`Selector::Sole`],
    /// whose answer depends on how many accounts the owner has (PostgreSQL knows).
    fn keys(&self, redis: &crate::redis_conn::Redis, slug: &str) -> [Option<String>; 2] {
        match &self.selector {
            Selector::Compatibility => [Some(entry_key(redis, slug, &self.owner)), None],
            Selector::Only(id) => {
                [Some(entry_key(redis, slug, &self.owner)), Some(standard_key(redis, slug, &self.owner, id))]
            }
            Selector::Sole => [None, None],
        }
    }

    /// True when a cached answer of `account_id` answers this read.
    fn accepts(&self, account_id: &str) -> bool {
        match &self.selector {
            Selector::Only(id) => id == account_id,
            Selector::Compatibility | Selector::Sole => true,
        }
    }
}

struct Inner {
    db: PgPool,
    ring: KeyRing,
    cache: TokenCache,
    refresher: Refresher,
    views: IntegrationViews,
    hit_duration: metrics::Histogram,
}

/// The read path. Cheap to clone.
#[derive(Clone)]
pub struct Reader(Arc<Inner>);

impl Reader {
    /// Call after the metrics recorder is installed (handles are registered here).
    pub fn new(db: PgPool, ring: KeyRing, cache: TokenCache, refresher: Refresher) -> Self {
        let views = IntegrationViews::new(db.clone(), ring.clone(), cache.local().clone());
        let hit_duration = metrics::histogram!(m::TOKEN_READ_DURATION, "result" => "hit");
        Reader(Arc::new(Inner { db, ring, cache, refresher, views, hit_duration }))
    }

    /// Starts the periodic upkeep of the metrics recorder: histogram samples (read
    /// latencies, refresh durations) pile up in memory between scrapes otherwise.
    pub fn start_upkeep(
        &self,
        recorder: metrics_exporter_prometheus::PrometheusHandle,
        tasks: &Tasks,
        cancel: CancellationToken,
    ) {
        tasks.spawn("metrics upkeep", async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = every.tick() => recorder.run_upkeep(),
                }
            }
        });
    }

    /// Starts the invalidation subscription that turns the local cache on.
    pub fn listen(&self, redis_url: &str, tasks: &Tasks, cancel: CancellationToken) {
        let inner = &self.0;
        tasks.spawn(
            "invalidation subscription",
            listener::run(
                redis_url.to_owned(),
                inner.cache.channel().to_owned(),
                inner.cache.local().clone(),
                inner.cache.redis().clone(),
                cancel,
            ),
        );
    }

    pub fn views(&self) -> &IntegrationViews {
        &self.0.views
    }

    /// The answer for `owner` from the in-process answer cache alone, if the
    /// integration is loaded and the answer is there: no I/O, no waiting. `None`
    /// means "ask [`Self::read`]", which tries this first anyway.
    pub fn hit(&self, slug: &str, target: &ReadTarget) -> Option<Arc<local::Ready>> {
        let started = Instant::now();
        let view = self.0.views.peek(slug, target.owner.ownership())?;
        self.local_hit(&view, target, started)
    }

    fn local_hit(&self, view: &View, target: &ReadTarget, started: Instant) -> Option<Arc<local::Ready>> {
        let inner = &self.0;
        let now = crate::time::now();
        let ready = target
            .keys(inner.cache.redis(), &view.integration.slug)
            .into_iter()
            .flatten()
            .find_map(|key| inner.cache.local().get(&key, now).filter(|ready| target.accepts(&ready.account_id)))?;
        view.hits.increment(1);
        self.check_served(view, &ready);
        inner.hit_duration.record(started.elapsed().as_secs_f64());
        Some(ready)
    }

    /// Answers a read of `slug` for `target`.
    pub async fn read(&self, slug: &str, target: &ReadTarget) -> Result<Answer, ReadError> {
        let started = Instant::now();
        let inner = &self.0;
        let view = match inner.views.get(slug, target.owner.ownership()).await {
            Ok(Some(view)) if view.integration.enabled => view,
            Ok(_) => return Err(ReadError::NoIntegration(slug.to_owned())),
            Err(err) => return Err(err.into()),
        };
        if let Some(ready) = self.local_hit(&view, target, started) {
            return Ok(Answer::Active(ready));
        }
        let (result, label) = match self.read_through(&view, target).await {
            Ok((answer, label)) => (Ok(answer), label),
            Err(err) => (Err(err), "error"),
        };
        if let Ok(Answer::Active(ready)) = &result {
            self.check_served(&view, ready);
        }
        metrics::counter!(m::TOKEN_READS, "provider" => view.label().to_owned(), "result" => label).increment(1);
        metrics::histogram!(m::TOKEN_READ_DURATION, "result" => label).record(started.elapsed().as_secs_f64());
        result
    }

    /// The tripwire behind `pipes_stale_tokens_served_total`: judged at the
    /// moment of answering against the promise itself (`min_validity`, without
    /// the serve margin), independently of the freshness checks that chose the
    /// answer. Counts; it never changes what is served.
    fn check_served(&self, view: &View, ready: &local::Ready) {
        if crate::policy::breaks_promise(ready.expires_at, crate::time::now(), self.0.cache.min_validity()) {
            view.stale.increment(1);
            tracing::error!(account_id = %ready.account_id, "served a token with less than min_validity left");
        }
    }

    /// Redis, then PostgreSQL; returns the answer and its metric label.
    async fn read_through(&self, view: &View, target: &ReadTarget) -> Result<(Answer, &'static str), ReadError> {
        let inner = &self.0;
        let local = inner.cache.local();
        let min_validity = inner.cache.min_validity();
        let epoch = local.epoch();
        for key in target.keys(inner.cache.redis(), &view.integration.slug).into_iter().flatten() {
            match inner.cache.get_key(&key, crate::time::now()).await {
                Ok(Lookup::Hit(entry)) => {
                    let ready = Arc::new(answer::ready(
                        &entry,
                        min_validity,
                        &view.integration.settings,
                        view.integration.auth_method,
                    ));
                    local.fill(&key, epoch, ready.clone());
                    if target.accepts(&ready.account_id) {
                        return Ok((Answer::Active(ready), "hit"));
                    }
                }
                Ok(Lookup::Miss) => {}
                Err(err) => {
                    // PostgreSQL stays the truth: answer from it, and count it.
                    metrics::counter!(m::CACHE_DEGRADED).increment(1);
                    tracing::debug!(error = %err, "token cache unavailable; reading PostgreSQL");
                    break;
                }
            }
        }
        let integration = &view.integration;
        let found = accounts::select(&inner.db, &inner.ring, &integration.id, &target.owner, &target.selector).await;
        let account = match found {
            Ok(Some(account)) => account,
            Ok(None) => match target.selector {
                // An id that is not one of the owner's accounts names nothing: never another's.
                Selector::Only(_) => return Err(ReadError::AccountNotFound),
                Selector::Compatibility | Selector::Sole => return Ok((Answer::NotInstalled, "not_installed")),
            },
            Err(AccountError::SelectionRequired) => return Err(ReadError::SelectionRequired),
            Err(err) => return Err(err.into()),
        };
        match account.state {
            AccountState::Disconnected => return Ok((Answer::NotInstalled, "not_installed")),
            AccountState::NeedsReauthorization => return Ok((Answer::NeedsReauthorization, "needs_reauthorization")),
            AccountState::Connected => {}
        }
        if let Some(answer) = self.serve_fresh(view, epoch, &account).await {
            return Ok((answer, "miss"));
        }
        let outcome = inner.refresher.refresh(integration, &account.id, Reason::OnDemand).await?;
        match outcome {
            RefreshOutcome::Refreshed(a) | RefreshOutcome::AlreadyFresh(a) => {
                match self.serve_fresh(view, epoch, &a).await {
                    Some(answer) => Ok((answer, "refreshed")),
                    // Someone else's token that is already too old again: never serve it.
                    None => Err(ReadError::ProviderDown { retry_after: None }),
                }
            }
            RefreshOutcome::NeedsReauthorization => Ok((Answer::NeedsReauthorization, "needs_reauthorization")),
            RefreshOutcome::NotConnected(Some(a)) if a.state == AccountState::NeedsReauthorization => {
                Ok((Answer::NeedsReauthorization, "needs_reauthorization"))
            }
            RefreshOutcome::NotConnected(_) | RefreshOutcome::OtherIntegration => {
                Ok((Answer::NotInstalled, "not_installed"))
            }
            RefreshOutcome::IntegrationInvalid => Err(ReadError::IntegrationInvalid(integration.slug.clone())),
            RefreshOutcome::Transient { retry_after, .. } => Err(ReadError::ProviderDown { retry_after }),
        }
    }

    /// The answer for `account` if its token is fresh, after caching it (under the
    /// account's own entry, whatever entry the read looked in).
    async fn serve_fresh(&self, view: &View, epoch: u64, account: &Account) -> Option<Answer> {
        let inner = &self.0;
        let now = crate::time::now();
        let (entry, _) = inner.cache.entry_for(account, &view.integration, now)?;
        inner.cache.put(account, &view.integration, now).await;
        let ready = Arc::new(answer::ready(
            &entry,
            inner.cache.min_validity(),
            &view.integration.settings,
            view.integration.auth_method,
        ));
        if !ready.usable(crate::time::now()) {
            // Cannot happen after `entry_for` above; checked again because a
            // stale token must never leave (`pipes_stale_tokens_served_total` stays 0).
            return None;
        }
        let key = key_for(inner.cache.redis(), &view.integration.slug, account);
        inner.cache.local().fill(&key, epoch, ready.clone());
        Some(Answer::Active(ready))
    }
}

/// Why a read has no answer to give.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("there is no enabled integration `{0}`")]
    NoIntegration(String),
    /// The read named an account that is not one of the owner's.
    #[error("the owner has no connected account with this id")]
    AccountNotFound,
    /// The owner has several accounts and the read named none.
    #[error("several connected accounts match; name one with connected_account_id")]
    SelectionRequired,
    /// The token is not fresh and the provider does not answer a refresh right now.
    #[error("the provider is not answering a refresh")]
    ProviderDown { retry_after: Option<Duration> },
    /// The provider refused the integration's client credentials.
    #[error("the provider refused the client credentials of integration `{0}`")]
    IntegrationInvalid(String),
    #[error(transparent)]
    Integration(#[from] IntegrationError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}
