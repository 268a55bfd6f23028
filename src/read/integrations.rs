//! An in-memory view of integrations by slug and ownership, so a token read that hits the
//! cache costs no PostgreSQL round trip. Entries are re-read after `TTL`
//! (so enabling, disabling or editing an integration shows within seconds
//! even when done straight in the database) and at once when the
//! invalidation channel says the integration changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::local::LocalCache;
use crate::crypto::KeyRing;
use crate::metrics as m;
use crate::owner::Ownership;
use crate::store::integrations::{self, Integration, IntegrationError};

/// How long a loaded integration (or its absence) is trusted.
pub const TTL: Duration = Duration::from_secs(5);
/// After a failed reload, the old entry is used this long before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Slugs longer than this are not looked up at all.
const MAX_SLUG_LEN: usize = 100;

/// One integration as the read path needs it, with its metric handles
/// registered once instead of on every read.
#[derive(Debug)]
pub struct View {
    pub integration: Arc<Integration>,
    pub hits: metrics::Counter,
    /// `pipes_stale_tokens_served_total` for this provider: must stay 0.
    pub stale: metrics::Counter,
}

impl View {
    fn new(integration: Integration) -> Self {
        let provider = integration.slug.clone();
        // Registered at zero so the "must stay 0" series exists for every provider.
        let stale = metrics::counter!(m::STALE_TOKENS_SERVED, "provider" => provider.clone());
        stale.increment(0);
        View {
            stale,
            hits: metrics::counter!(m::TOKEN_READS, "provider" => provider, "result" => "hit"),
            integration: Arc::new(integration),
        }
    }

    /// The `provider` label of this integration's metrics (its slug, as the refresher uses).
    pub fn label(&self) -> &str {
        &self.integration.slug
    }
}

#[derive(Clone)]
struct Slot {
    view: Option<Arc<View>>,
    loaded: Instant,
    generation: u64,
}

/// Integrations by slug, one map per ownership (so a lookup by `&str` allocates
/// nothing). Cheap to clone.
#[derive(Clone)]
pub struct IntegrationViews {
    db: PgPool,
    ring: KeyRing,
    user: Arc<quick_cache::sync::Cache<String, Slot>>,
    organization: Arc<quick_cache::sync::Cache<String, Slot>>,
    /// Says when some integration changed (`LocalCache::integration_changed`).
    local: LocalCache,
}

impl IntegrationViews {
    pub fn new(db: PgPool, ring: KeyRing, local: LocalCache) -> Self {
        let map = || Arc::new(quick_cache::sync::Cache::new(1_000));
        IntegrationViews { db, ring, user: map(), organization: map(), local }
    }

    fn map(&self, ownership: Ownership) -> &quick_cache::sync::Cache<String, Slot> {
        match ownership {
            Ownership::User => &self.user,
            Ownership::Organization => &self.organization,
        }
    }

    /// The loaded integration `slug` of `ownership` if it is enabled and its copy is
    /// current, without waiting for anything; `None` means "ask [`Self::get`]".
    pub fn peek(&self, slug: &str, ownership: Ownership) -> Option<Arc<View>> {
        let slot = self.map(ownership).get(slug)?;
        let current = slot.generation == self.local.integrations_generation() && slot.loaded.elapsed() < TTL;
        slot.view.filter(|view| current && view.integration.enabled)
    }

    /// The integration `slug` of `ownership`, enabled or not; `None` if there is none.
    pub async fn get(&self, slug: &str, ownership: Ownership) -> Result<Option<Arc<View>>, IntegrationError> {
        let map = self.map(ownership);
        if slug.is_empty() || slug.len() > MAX_SLUG_LEN {
            return Ok(None);
        }
        let generation = self.local.integrations_generation();
        let cached = map.get(slug);
        if let Some(slot) = &cached {
            if slot.generation == generation && slot.loaded.elapsed() < TTL {
                return Ok(slot.view.clone());
            }
        }
        match integrations::by_slug(&self.db, &self.ring, slug, ownership).await {
            Ok(found) => {
                let view = found.map(|i| Arc::new(View::new(i)));
                map.insert(slug.to_owned(), Slot { view: view.clone(), loaded: Instant::now(), generation });
                Ok(view)
            }
            Err(err) => match cached {
                // PostgreSQL is down: what we knew a moment ago beats an error.
                Some(mut slot) => {
                    tracing::warn!(error = %err, slug, "integration reload failed; using the loaded copy");
                    slot.loaded = Instant::now().checked_sub(TTL - RETRY_AFTER_FAILURE).unwrap_or_else(Instant::now);
                    slot.generation = generation;
                    let view = slot.view.clone();
                    map.insert(slug.to_owned(), slot);
                    Ok(view)
                }
                None => Err(err),
            },
        }
    }
}
