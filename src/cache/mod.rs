//! The Redis token cache: one encrypted entry per connected account, holding
//! exactly what a token read answers. An entry lives until `min_validity`
//! plus the serve margin (`crate::policy::serve_floor`) before the token
//! expires, so a hit is always fresh.
//!
//! Every value starts with the account's token version (`{version}|…`), and
//! writes go through a script that refuses to replace a newer version. A
//! change that removes a token (reauthorization, disconnect) writes a
//! tombstone (`{version}|` with no payload) instead of deleting, so a reader
//! that loaded an older row from PostgreSQL can never put it back.
//!
//! Every accepted write also publishes `{key}|{version}` on the invalidation
//! channel, in the same script, so the in-process answer caches of every
//! `serve` replica (`crate::read::local`) drop older copies at once.
//!
//! In a Redis Cluster (`crate::redis_conn`) every command here touches one
//! key, so entries need no hash tag and spread over every slot: the script's
//! GET/SET/PUBLISH run on the entry's primary, and PUBLISH reaches the
//! subscribers on every node. Dropping an integration scans every primary
//! rather than keeping a per-integration index set: such a set would put all
//! of an integration's accounts in one slot (one node) and make each write
//! touch two keys, while eviction is rare (scopes changed, integration gone).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{aad, KeyRing};
use crate::keys::columns;
use crate::owner::Owner;
use crate::read::local::{LocalCache, INTEGRATION_PREFIX};
use crate::redis_conn::Redis;
use crate::secret::Secret;
use crate::store::accounts::Account;

mod keys;
use crate::store::integrations::Integration;
pub use keys::{entry_key, key_for, key_of, owner_segment, segment_for, standard_key};

/// How long a tombstone blocks stale writes.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// SET the value unless the stored one carries a newer (or equal) version,
/// and announce it on the invalidation channel (ARGV[4]; empty: not announced).
const PUT_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep and tonumber(string.sub(cur, 1, sep - 1)) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], KEYS[1] .. '|' .. ARGV[2])
end
return 1
";

/// What a token read answers, as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedToken {
    pub account_id: String,
    pub version: i64,
    pub access_token: Secret,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub missing_scopes: Vec<String>,
    /// The account's own non-secret values (a client-credentials account's `config`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedToken),
    /// Nothing usable cached: read PostgreSQL.
    Miss,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis is not connected")]
    NotConnected,
    #[error("redis timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis failed since the invalidation outbox was last drained: it may still
    /// hold a token that was removed meanwhile (`crate::invalidations`).
    #[error("redis is not trusted until lost invalidations are written")]
    Unverified,
}

#[derive(Clone)]
pub struct TokenCache {
    redis: Redis,
    ring: KeyRing,
    min_validity: Duration,
    // Behind `Arc`s: the state is cloned for every request.
    script: Arc<redis::Script>,
    channel: Arc<str>,
    local: LocalCache,
    /// The [`Redis::failures`] count as of the last complete drain of the invalidation
    /// outbox; Redis answers are trusted only while it is current. `u64::MAX` until
    /// the first drain: another process may have lost an invalidation before this
    /// one started.
    clean_through: Arc<std::sync::atomic::AtomicU64>,
}

impl TokenCache {
    pub fn new(redis: Redis, ring: KeyRing, min_validity: Duration) -> Self {
        let channel = redis.key("invalidate").into();
        TokenCache {
            redis,
            ring,
            min_validity,
            script: Arc::new(redis::Script::new(PUT_SCRIPT)),
            channel,
            local: LocalCache::default(),
            clean_through: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        }
    }

    /// True while no Redis failure happened since the outbox was last drained.
    pub fn trusted(&self) -> bool {
        self.clean_through.load(std::sync::atomic::Ordering::Acquire) == self.redis.failures()
    }

    /// Called after a drain that left nothing pending, begun at `failures`.
    pub fn mark_clean(&self, failures: u64) {
        self.clean_through.store(failures, std::sync::atomic::Ordering::Release);
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn min_validity(&self) -> Duration {
        self.min_validity
    }

    /// The channel every write is announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// This process's in-process answer cache (off until its subscription is live).
    pub fn local(&self) -> &LocalCache {
        &self.local
    }

    /// Reads an owner's entry. Errors mean Redis failed: the caller reads PostgreSQL.
    pub async fn get(&self, slug: &str, owner: &Owner, now: DateTime<Utc>) -> Result<Lookup, CacheError> {
        self.get_key(&entry_key(&self.redis, slug, owner), now).await
    }

    /// `get` by the entry's key (see `entry_key`).
    pub async fn get_key(&self, key: &str, now: DateTime<Utc>) -> Result<Lookup, CacheError> {
        if !self.trusted() {
            return Err(CacheError::Unverified);
        }
        let mut conn = self.redis.conn().ok_or(CacheError::NotConnected)?;
        let value: Result<Option<Vec<u8>>, CacheError> =
            match tokio::time::timeout(self.redis.timeout(), redis::cmd("GET").arg(key).query_async(&mut conn)).await {
                Ok(result) => result.map_err(CacheError::from),
                Err(_) => Err(CacheError::Timeout),
            };
        let value = value.inspect_err(|_| self.redis.failed())?;
        Ok(self.decode(key, value.as_deref(), now))
    }

    /// Decodes a raw value; anything unusable (tombstone, other key, not fresh) is a miss.
    pub fn decode(&self, key: &str, value: Option<&[u8]>, now: DateTime<Utc>) -> Lookup {
        let Some(value) = value else { return Lookup::Miss };
        let Some(sep) = value.iter().position(|b| *b == b'|') else { return Lookup::Miss };
        let payload = &value[sep + 1..];
        if payload.is_empty() {
            return Lookup::Miss;
        }
        let Ok(plain) = self.ring.open(payload, aad(columns::CACHE_ENTRY, key)) else { return Lookup::Miss };
        let plain = zeroize::Zeroizing::new(plain);
        let Ok(entry) = serde_json::from_slice::<CachedToken>(&plain) else { return Lookup::Miss };
        // The TTL already guarantees this; checking again costs nothing and
        // keeps a clock-skewed entry from ever being served.
        if crate::policy::servable(entry.expires_at, now, self.min_validity) {
            Lookup::Hit(entry)
        } else {
            Lookup::Miss
        }
    }

    /// The entry to cache for a fresh account, with its TTL; `None` if it must not be cached.
    pub fn entry_for(
        &self,
        account: &Account,
        integration: &Integration,
        now: DateTime<Utc>,
    ) -> Option<(CachedToken, Duration)> {
        if !account.is_fresh(now, self.min_validity) {
            return None;
        }
        let ttl = crate::policy::cache_ttl(account.expires_at, now, self.min_validity)?;
        let entry = CachedToken {
            account_id: account.id.to_string(),
            version: account.token_version,
            access_token: account.access_token.clone()?,
            expires_at: account.expires_at,
            scopes: account.scopes.clone(),
            missing_scopes: integration.missing_scopes(account.owner.organization_id(), &account.scopes),
            config: account.config.clone(),
        };
        Some((entry, ttl))
    }

    /// Caches a connected account's fresh token (no-op when not fresh);
    /// never replaces a newer version. Redis errors are logged and ignored:
    /// PostgreSQL stays the truth.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %account.id))]
    pub async fn put(&self, account: &Account, integration: &Integration, now: DateTime<Utc>) {
        let key = key_for(&self.redis, &integration.slug, account);
        let Some((entry, ttl)) = self.entry_for(account, integration, now) else {
            // Not cacheable (e.g. expiring soon): make sure no older copy lingers.
            self.tombstone_key(&key, account.token_version).await;
            return;
        };
        let Some(value) = self.seal_entry(&key, &entry) else { return };
        self.write(&key, value, entry.version, ttl, true).await;
    }

    /// Puts back the entry of an account whose token did not change, after Redis
    /// lost it (`crate::cache_warm`): the same versioned write as [`Self::put`], but
    /// not announced on the invalidation channel, since no replica holds an answer
    /// that it would replace. A refill of a million entries would otherwise be a
    /// million messages to every `serve`. No-op when the token is not fresh.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %account.id))]
    pub async fn restore(&self, account: &Account, integration: &Integration, now: DateTime<Utc>) {
        let key = key_for(&self.redis, &integration.slug, account);
        let Some((entry, ttl)) = self.entry_for(account, integration, now) else { return };
        let Some(value) = self.seal_entry(&key, &entry) else { return };
        self.write(&key, value, entry.version, ttl, false).await;
    }

    fn seal_entry(&self, key: &str, entry: &CachedToken) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(entry).map(zeroize::Zeroizing::new).ok()?;
        let sealed = self.ring.seal(&plain, aad(columns::CACHE_ENTRY, key)).ok()?;
        let mut value = format!("{}|", entry.version).into_bytes();
        value.extend_from_slice(&sealed);
        Some(value)
    }

    /// Marks `account`'s entry as gone as of its token version (reauthorization, disconnect).
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %slug))]
    pub async fn tombstone(&self, slug: &str, account: &Account) {
        let key = key_for(&self.redis, slug, account);
        self.tombstone_key(&key, account.token_version).await;
    }

    /// [`Self::tombstone`] by the entry's key; true once Redis has it (or something newer).
    pub async fn tombstone_key(&self, key: &str, version: i64) -> bool {
        self.write(key, format!("{version}|").into_bytes(), version, TOMBSTONE_TTL, true).await
    }

    /// A versioned write; true when Redis took it or already held a newer version.
    async fn write(&self, key: &str, value: Vec<u8>, version: i64, ttl: Duration, announce: bool) -> bool {
        // This process first; the others through the channel.
        self.local.invalidate(key, version);
        let Some(mut conn) = self.redis.conn() else { return false };
        let mut invocation = self.script.key(key);
        let channel = if announce { &*self.channel } else { "" };
        invocation.arg(value).arg(version).arg(ttl.as_millis() as u64).arg(channel);
        match tokio::time::timeout(Duration::from_secs(1), invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => true,
            Ok(Err(err)) => {
                self.redis.failed();
                tracing::warn!(error = %err, "token cache write failed");
                false
            }
            Err(_) => {
                self.redis.failed();
                tracing::warn!("token cache write timed out");
                false
            }
        }
    }

    /// Drops every entry of an integration (its scopes changed, or it was
    /// deleted), then tells every replica to drop its local answers.
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %slug))]
    pub async fn evict_integration(&self, slug: &str) {
        self.local.integration_changed();
        let Some(mut conn) = self.redis.conn() else { return };
        let pattern = self.redis.key(&format!("tok:{slug}:*"));
        // A cursor belongs to one server: in a cluster, every primary is scanned.
        let targets = conn.scan_targets().await.unwrap_or_default();
        for target in &targets {
            let mut cursor: u64 = 0;
            loop {
                let Ok((next, keys)) = conn.scan_page(target, cursor, &pattern, 500).await else { break };
                if !keys.is_empty() {
                    // A cluster connection splits a multi-key DEL by slot.
                    let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // After the deletes, so no replica refills from an entry about to go.
        let message = format!("{INTEGRATION_PREFIX}{slug}");
        let _: Result<i64, _> = redis::cmd("PUBLISH").arg(&*self.channel).arg(message).query_async(&mut conn).await;
        self.local.integration_changed();
    }
}
