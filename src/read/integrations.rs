//! An in-memory view of integrations by slug, so a token read that hits the
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

/// Integrations by slug. Cheap to clone.
#[derive(Clone)]
pub struct IntegrationViews {
    db: PgPool,
    ring: KeyRing,
    map: Arc<quick_cache::sync::Cache<String, Slot>>,
    /// Says when some integration changed (`LocalCache::integration_changed`).
    local: LocalCache,
}

impl IntegrationViews {
    pub fn new(db: PgPool, ring: KeyRing, local: LocalCache) -> Self {
        IntegrationViews { db, ring, map: Arc::new(quick_cache::sync::Cache::new(1_000)), local }
    }

    /// The loaded integration `slug` if it is enabled and its copy is current,
    /// without waiting for anything; `None` means "ask [`Self::get`]".
    pub fn peek(&self, slug: &str) -> Option<Arc<View>> {
        let slot = self.map.get(slug)?;
        let current = slot.generation == self.local.integrations_generation() && slot.loaded.elapsed() < TTL;
        slot.view.filter(|view| current && view.integration.enabled)
    }

    /// The integration `slug`, enabled or not; `None` if there is none.
    pub async fn get(&self, slug: &str) -> Result<Option<Arc<View>>, IntegrationError> {
        if slug.is_empty() || slug.len() > MAX_SLUG_LEN {
            return Ok(None);
        }
        let generation = self.local.integrations_generation();
        let cached = self.map.get(slug);
        if let Some(slot) = &cached {
            if slot.generation == generation && slot.loaded.elapsed() < TTL {
                return Ok(slot.view.clone());
            }
        }
        match integrations::by_slug(&self.db, &self.ring, slug).await {
            Ok(found) => {
                let view = found.map(|i| Arc::new(View::new(i)));
                self.map.insert(slug.to_owned(), Slot { view: view.clone(), loaded: Instant::now(), generation });
                Ok(view)
            }
            Err(err) => match cached {
                // PostgreSQL is down: what we knew a moment ago beats an error.
                Some(mut slot) => {
                    tracing::warn!(error = %err, slug, "integration reload failed; using the loaded copy");
                    slot.loaded = Instant::now().checked_sub(TTL - RETRY_AFTER_FAILURE).unwrap_or_else(Instant::now);
                    slot.generation = generation;
                    let view = slot.view.clone();
                    self.map.insert(slug.to_owned(), slot);
                    Ok(view)
                }
                None => Err(err),
            },
        }
    }
}
