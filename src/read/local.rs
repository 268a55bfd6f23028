//! The in-process layer in front of the Redis token cache: ready-made answers
//! by cache key, so a hot read costs no network round trip.
//!
//! It is only safe while every change reaches it, so it is used only while
//! its Redis subscription is live. Every cache write and tombstone publishes
//! `{key}|{version}` on the invalidation channel (see `cache.rs`); a message
//! leaves a versioned local tombstone so an older copy read from Redis just
//! before can never be put back. When the subscription is lost the layer is
//! switched off and emptied; it comes back once a new subscription is
//! confirmed. Entries also age out after `MAX_AGE`, a bound for anything the
//! channel could still miss.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::{DateTime, Utc};

/// The longest an answer is kept locally, whatever the token's lifetime.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Memory bound of the layer (answers are weighed by their size).
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// A ready answer for one owner's fresh token.
pub struct Ready {
    pub account_id: String,
    pub version: i64,
    /// The answer stops being servable at this instant ([`crate::policy::servable_until`]).
    pub fresh_until: Option<DateTime<Utc>>,
    /// When the token itself expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub stored: Instant,
    /// The `/token` body.
    pub token_body: Bytes,
    /// The `/credentials` body.
    pub credential_body: Bytes,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("account_id", &self.account_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Ready {
    /// Still fresh at `now` and young enough to trust.
    pub fn usable(&self, now: DateTime<Utc>) -> bool {
        crate::policy::still_servable(self.fresh_until, now) && self.stored.elapsed() < MAX_AGE
    }
}

#[derive(Clone)]
enum Slot {
    Ready(Arc<Ready>),
    /// Copies older than this version are gone.
    Gone(i64),
}

impl Slot {
    fn version(&self) -> i64 {
        match self {
            Slot::Ready(r) => r.version,
            Slot::Gone(v) => *v,
        }
    }
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<String, Slot> for Weigh {
    fn weight(&self, key: &String, slot: &Slot) -> u64 {
        let body = match slot {
            Slot::Ready(r) => r.token_body.len() + r.credential_body.len() + r.account_id.len() + 96,
            Slot::Gone(_) => 16,
        };
        (key.len() + body) as u64
    }
}

struct Inner {
    map: quick_cache::sync::Cache<String, Slot, Weigh>,
    /// True while the invalidation subscription is live.
    enabled: AtomicBool,
    /// Bumped on every clear, so a fill that started before it is refused.
    epoch: AtomicU64,
    /// Bumped when an integration changed: loaded integrations are re-read.
    integrations: AtomicU64,
    /// Serializes fills and invalidations (both rare) so their version checks
    /// and inserts cannot interleave; hits never take it.
    writes: Mutex<()>,
}

/// The local answer cache of one process. Cheap to clone.
#[derive(Clone)]
pub struct LocalCache(Arc<Inner>);

impl Default for LocalCache {
    fn default() -> Self {
        LocalCache(Arc::new(Inner {
            map: quick_cache::sync::Cache::with_weighter(100_000, CAPACITY_BYTES, Weigh),
            enabled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            integrations: AtomicU64::new(0),
            writes: Mutex::new(()),
        }))
    }
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache").field("enabled", &self.is_enabled()).field("entries", &self.0.map.len()).finish()
    }
}

impl LocalCache {
    pub fn is_enabled(&self) -> bool {
        self.0.enabled.load(Ordering::Acquire)
    }

    /// A usable answer for `key`, if the layer is on and holds one.
    pub fn get(&self, key: &str, now: DateTime<Utc>) -> Option<Arc<Ready>> {
        if !self.is_enabled() {
            return None;
        }
        match self.0.map.get(key)? {
            Slot::Ready(r) if r.usable(now) => Some(r),
            _ => None,
        }
    }

    /// The epoch to pass to `fill` for a value about to be read from Redis.
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Acquire)
    }

    /// Keeps `ready` unless the layer is off, was cleared since `epoch`, or
    /// already knows a newer version of the key.
    pub fn fill(&self, key: &str, epoch: u64, ready: Arc<Ready>) {
        let _guard = self.0.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_enabled() || self.epoch() != epoch {
            return;
        }
        if self.0.map.peek(key).is_some_and(|slot| slot.version() > ready.version) {
            return;
        }
        self.0.map.insert(key.to_owned(), Slot::Ready(ready));
    }

    /// Everything of `key` older than `version` is gone. Nothing to do while the layer
    /// is off: it holds nothing, and it is emptied again when it comes back on (after its
    /// subscription is confirmed, so every later change arrives through the channel). A
    /// process without reads (a worker) keeps no tombstone of each token it stores.
    pub fn invalidate(&self, key: &str, version: i64) {
        let _guard = self.0.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_enabled() {
            return;
        }
        if self.0.map.peek(key).is_some_and(|slot| slot.version() >= version) {
            return;
        }
        self.0.map.insert(key.to_owned(), Slot::Gone(version));
    }

    /// Drops every entry (an integration changed, or the channel was lost).
    pub fn clear(&self) {
        let _guard = self.0.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        self.0.map.clear();
    }

    /// An integration changed (here or in another process): drop every answer
    /// and make every loaded integration be re-read.
    pub fn integration_changed(&self) {
        self.0.integrations.fetch_add(1, Ordering::AcqRel);
        self.clear();
    }

    /// Changes whenever `integration_changed` is called.
    pub fn integrations_generation(&self) -> u64 {
        self.0.integrations.load(Ordering::Acquire)
    }

    /// Turns the layer on (subscription confirmed) or off (lost; also clears).
    pub fn set_enabled(&self, on: bool) {
        let _guard = self.0.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        if !on {
            self.0.map.clear();
        }
        self.0.enabled.store(on, Ordering::Release);
    }

    /// Applies one message of the invalidation channel: `{key}|{version}`
    /// for a token entry, `integration|{slug}` for a whole integration.
    pub fn apply(&self, message: &str) -> Applied {
        if let Some(slug) = message.strip_prefix(INTEGRATION_PREFIX) {
            self.integration_changed();
            return Applied::Integration(slug.to_owned());
        }
        match message.rsplit_once('|').map(|(k, v)| (k, v.parse::<i64>())) {
            Some((key, Ok(version))) => {
                self.invalidate(key, version);
                Applied::Key
            }
            _ => Applied::Ignored,
        }
    }

    pub fn len(&self) -> usize {
        self.0.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }
}

/// Prefix of the message that drops a whole integration.
pub const INTEGRATION_PREFIX: &str = "integration|";

/// What a channel message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Key,
    Integration(String),
    Ignored,
}
