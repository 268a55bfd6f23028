//! API keys (DESIGN §3): `Authorization: Bearer <key>`, stored only as SHA-256
//! hashes, with a role. Verified keys are remembered in memory for a few
//! seconds so the token read path costs no database round trip, and a revoked
//! key stops working within that bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::crypto::{random_token, sha256_hex};
use crate::ids::IdKind;

/// How long a verification result is trusted before the database is asked again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(3);
/// How long a verdict keeps being used while PostgreSQL cannot be asked. Without it, a
/// database outage failed every token read with 503 even when the token itself was in
/// Redis; a key revoked during an outage stays usable this long.
pub const KEY_CACHE_STALE_IF_ERROR: Duration = Duration::from_secs(300);
/// After a failed check, how long callers use the old verdict before asking again.
const KEY_RECHECK_AFTER_ERROR: Duration = Duration::from_secs(1);
const KEY_PREFIX: &str = "pipes_sk_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Tokens,
    /// Calls provider APIs through the relay; never sees a token.
    Relay,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tokens => "tokens",
            Role::Relay => "relay",
        }
    }

    /// Whether the key may read tokens and credentials (`/token`, `/credentials`).
    pub fn reads_tokens(self) -> bool {
        matches!(self, Role::Admin | Role::Tokens)
    }

    /// Whether the key may call provider APIs through the relay.
    pub fn relays(self) -> bool {
        matches!(self, Role::Admin | Role::Relay)
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "tokens" => Some(Role::Tokens),
            "relay" => Some(Role::Relay),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
struct Verdict {
    role: Option<Role>,
    /// When PostgreSQL last confirmed it.
    checked: Instant,
    /// When to ask PostgreSQL again.
    recheck_at: Instant,
}

impl Verdict {
    /// Trusted without asking PostgreSQL again.
    fn current(&self) -> bool {
        Instant::now() < self.recheck_at && self.checked.elapsed() < KEY_CACHE_STALE_IF_ERROR
    }
}

/// Remembers recent verifications by key hash (never the key itself).
#[derive(Clone)]
pub struct KeyVerifier {
    db: PgPool,
    cache: Arc<quick_cache::sync::Cache<[u8; 32], Verdict>>,
}

impl KeyVerifier {
    pub fn new(db: PgPool) -> Self {
        KeyVerifier { db, cache: Arc::new(quick_cache::sync::Cache::new(10_000)) }
    }

    /// The role of a presented key if a verdict younger than [`KEY_CACHE_TTL`]
    /// says it is valid, without waiting for anything; `None` means "ask
    /// [`Self::verify`]" (unknown, revoked, or not checked recently).
    pub fn recently_verified(&self, presented: &str) -> Option<Role> {
        self.current_verdict(&digest(presented)).and_then(|v| v.role)
    }

    /// The key's SHA-256 digest when a current verdict says it is valid: what the
    /// rate limits count a key by.
    pub fn verified_digest(&self, presented: &str) -> Option<[u8; 32]> {
        let digest = digest(presented);
        self.current_verdict(&digest).and_then(|v| v.role).map(|_| digest)
    }

    /// Whether a current verdict (valid or not) is known for the key: checking it
    /// again costs no PostgreSQL round trip.
    pub fn is_known(&self, presented: &str) -> bool {
        self.current_verdict(&digest(presented)).is_some()
    }

    fn current_verdict(&self, digest: &[u8; 32]) -> Option<Verdict> {
        self.cache.get(digest).filter(Verdict::current)
    }

    /// The role of a presented key, or `None` for unknown and revoked keys.
    pub async fn verify(&self, presented: &str) -> Result<Option<Role>, sqlx::Error> {
        let digest = digest(presented);
        let known = self.cache.get(&digest);
        if let Some(v) = known.as_ref().filter(|v| v.current()) {
            return Ok(v.role);
        }
        let row = sqlx::query(
            "UPDATE api_keys SET last_used_at = now()
             WHERE key_hash = $1 AND revoked_at IS NULL
             RETURNING role",
        )
        .bind(hex::encode(digest))
        .fetch_optional(&self.db)
        .await;
        let row = match (row, known) {
            (Ok(row), _) => row,
            // PostgreSQL is unreachable: keep trusting what it said recently.
            (Err(err), Some(v)) if v.checked.elapsed() < KEY_CACHE_STALE_IF_ERROR => {
                tracing::debug!(error = %err, "API key check failed; using the last verdict");
                self.cache.insert(digest, Verdict { recheck_at: Instant::now() + KEY_RECHECK_AFTER_ERROR, ..v });
                return Ok(v.role);
            }
            (Err(err), _) => return Err(err),
        };
        let role = row.and_then(|r| Role::parse(r.get::<&str, _>("role")));
        let now = Instant::now();
        self.cache.insert(digest, Verdict { role, checked: now, recheck_at: now + KEY_CACHE_TTL });
        Ok(role)
    }
}

/// What verdicts are remembered by: the key's SHA-256, never the key itself.
fn digest(presented: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(presented.as_bytes()).into()
}

/// A stored key, as `pipes api-keys list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a key and returns it in clear, once, with its record.
pub async fn create_key(db: &PgPool, name: &str, role: Role) -> Result<(String, ApiKeyInfo), sqlx::Error> {
    let key = format!("{KEY_PREFIX}{}", random_token(32));
    let id = IdKind::ApiKey.new_id();
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    let row = sqlx::query(
        "INSERT INTO api_keys (id, name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING created_at",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(sha256_hex(&key))
    .bind(&prefix)
    .fetch_one(db)
    .await?;
    let info = ApiKeyInfo {
        id,
        name: name.to_owned(),
        role,
        key_prefix: prefix,
        created_at: row.get("created_at"),
        last_used_at: None,
        revoked_at: None,
    };
    Ok((key, info))
}

pub async fn list_keys(db: &PgPool) -> Result<Vec<ApiKeyInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ApiKeyInfo {
            id: r.get("id"),
            name: r.get("name"),
            role: Role::parse(r.get::<&str, _>("role")).unwrap_or(Role::Tokens),
            key_prefix: r.get("key_prefix"),
            created_at: r.get("created_at"),
            last_used_at: r.get("last_used_at"),
            revoked_at: r.get("revoked_at"),
        })
        .collect())
}

/// Revokes a key by id or name; returns whether one was revoked.
pub async fn revoke_key(db: &PgPool, id_or_name: &str) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE (id = $1 OR name = $1) AND revoked_at IS NULL")
            .bind(id_or_name)
            .execute(db)
            .await?;
    Ok(done.rows_affected())
}
