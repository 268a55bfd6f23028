//! Connected accounts: one per (integration, user, organization), with its
//! encrypted tokens, refresh schedule, state and the single-flight lease.
//!
//! The scheduler reads the schedule from `refresh_schedule`, which a trigger on
//! `connected_accounts` keeps in step with every write here (and everywhere else):
//! storing a token or moving `refresh_at` clears the scheduler's mark, leaving the
//! `connected` state or losing the refresh token takes the account off the schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::IdKind;
use crate::keys::columns;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Connected,
    NeedsReauthorization,
    Disconnected,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Connected => "connected",
            AccountState::NeedsReauthorization => "needs_reauthorization",
            AccountState::Disconnected => "disconnected",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connected" => Some(AccountState::Connected),
            "needs_reauthorization" => Some(AccountState::NeedsReauthorization),
            "disconnected" => Some(AccountState::Disconnected),
            _ => None,
        }
    }
}

/// A connected account with its tokens decrypted. `Debug` shows `***` for tokens.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub integration_id: String,
    pub user_id: String,
    pub organization_id: Option<String>,
    pub state: AccountState,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub token_version: i64,
    pub last_refresh_error: Option<String>,
    pub reauthorization_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Tokens as a provider issued them.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Secret,
    /// `None` keeps the stored refresh token (a refresh response may omit it).
    pub refresh_token: Option<Secret>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("account {id}: a token does not decrypt: {source}")]
    Crypto {
        id: String,
        #[source]
        source: CryptoError,
    },
    #[error("a connected account already exists for this user and integration")]
    Exists,
}

const COLUMNS: &str = "id, integration_id, user_id, organization_id, state, access_token_enc, refresh_token_enc,
    expires_at, refresh_at, scopes, token_version, last_refresh_error, reauthorization_reason, created_at, updated_at";

impl Account {
    pub fn from_row(row: &PgRow, ring: &KeyRing) -> Result<Self, AccountError> {
        let id: String = row.get("id");
        let open = |column: &str, value: Option<Vec<u8>>| -> Result<Option<Secret>, AccountError> {
            value
                .map(|c| ring.open_string(&c, aad(column, &id)).map(Secret::new))
                .transpose()
                .map_err(|source| AccountError::Crypto { id: id.clone(), source })
        };
        Ok(Account {
            access_token: open(columns::ACCESS_TOKEN, row.get("access_token_enc"))?,
            refresh_token: open(columns::REFRESH_TOKEN, row.get("refresh_token_enc"))?,
            integration_id: row.get("integration_id"),
            user_id: row.get("user_id"),
            organization_id: row.get("organization_id"),
            state: AccountState::parse(row.get("state")).unwrap_or(AccountState::Disconnected),
            expires_at: row.get("expires_at"),
            refresh_at: row.get("refresh_at"),
            scopes: row.get("scopes"),
            token_version: row.get("token_version"),
            last_refresh_error: row.get("last_refresh_error"),
            reauthorization_reason: row.get("reauthorization_reason"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            id,
        })
    }

    /// True when the access token is fresh enough to serve: it stays valid for
    /// at least `min_validity` plus [`SERVE_MARGIN`] after `now`.
    pub fn is_fresh(&self, now: DateTime<Utc>, min_validity: Duration) -> bool {
        self.state == AccountState::Connected
            && self.access_token.is_some()
            && self.expires_at.is_none_or(|exp| exp > now + serve_floor(min_validity))
    }
}

/// Kept on top of `min_validity` wherever Pipes decides that a token is fresh
/// enough to serve or to cache: the answer still has to travel to the caller,
/// and on a loaded machine a token judged fresh with `min_validity + 0.1 s`
/// left would arrive with less than the promised `min_validity`.
pub const SERVE_MARGIN: Duration = Duration::from_secs(5);

/// The least time a token must have left for Pipes to serve it or cache it:
/// `min_validity + SERVE_MARGIN`. The store, the Redis cache and the local
/// answer cache all judge freshness by this one value.
pub fn serve_floor(min_validity: Duration) -> chrono::Duration {
    chrono::Duration::from_std(min_validity + SERVE_MARGIN).unwrap_or_else(|_| chrono::Duration::days(36_500))
}

/// When to refresh (DESIGN §2.2): `expires_at - min(lead, lifetime / 2)`, minus
/// a jitter of up to a tenth of that lead (at most 30 s) so a batch of tokens
/// issued together does not come due together. `jitter` is in [0, 1).
/// `None` when the account cannot or need not be refreshed.
pub fn refresh_at(
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    has_refresh_token: bool,
    tokens_expire: bool,
    lead: Duration,
    jitter: f64,
) -> Option<DateTime<Utc>> {
    let expires_at = expires_at?;
    if !has_refresh_token || !tokens_expire {
        return None;
    }
    let lifetime = (expires_at - now).max(chrono::Duration::zero());
    let lead = chrono::Duration::from_std(lead).unwrap_or_default().min(lifetime / 2);
    let max_jitter = (lead / 10).min(chrono::Duration::seconds(30));
    let jitter_ms = (max_jitter.num_milliseconds() as f64 * jitter.clamp(0.0, 1.0)) as i64;
    Some(expires_at - lead - chrono::Duration::milliseconds(jitter_ms))
}

fn seal(ring: &KeyRing, column: &str, id: &str, value: Option<&Secret>) -> Result<Option<Vec<u8>>, AccountError> {
    value
        .map(|v| ring.seal_str(v.expose(), aad(column, id)))
        .transpose()
        .map_err(|source| AccountError::Crypto { id: id.to_owned(), source })
}

pub async fn find_for_owner(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    integration_id: &str,
    user_id: &str,
    organization_id: Option<&str>,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM connected_accounts
         WHERE integration_id = $1 AND user_id = $2 AND organization_id IS NOT DISTINCT FROM $3"
    )))
    .bind(integration_id)
    .bind(user_id)
    .bind(organization_id)
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

pub async fn find_by_id(db: impl PgExecutor<'_>, ring: &KeyRing, id: &str) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM connected_accounts WHERE id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

/// Up to `limit` connected accounts with an id after `after`, in id order, whose
/// access token is fresh enough to serve at `now` (see [`serve_floor`]): a page of
/// what the token cache should hold.
pub async fn fresh_page(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    after: &str,
    min_validity: Duration,
    limit: i64,
) -> Result<Vec<Account>, AccountError> {
    let floor = serve_floor(min_validity).to_std().unwrap_or(min_validity);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM connected_accounts
         WHERE id > $1 AND state = 'connected' AND access_token_enc IS NOT NULL
           AND (expires_at IS NULL OR expires_at > now() + $2)
         ORDER BY id LIMIT $3"
    )))
    .bind(after)
    .bind(floor)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(|r| Account::from_row(r, ring)).collect()
}

/// What an account is being written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Connect or reconnect: insert, or replace the tokens of the existing account.
    Upsert,
    /// Import (POST): insert only; an existing account is a conflict.
    InsertOnly,
    /// PUT: the account must exist.
    UpdateOnly,
}

/// Stores tokens for an owner and returns the account, `connected`, with a
/// bumped token version. `Ok(None)` only for `UpdateOnly` without an account.
#[allow(clippy::too_many_arguments)]
pub async fn write_tokens(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    mode: WriteMode,
    integration_id: &str,
    user_id: &str,
    organization_id: Option<&str>,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
    state: AccountState,
) -> Result<Option<Account>, AccountError> {
    // The ciphertexts are bound to the row id, so the id must be known first.
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM connected_accounts
         WHERE integration_id = $1 AND user_id = $2 AND organization_id IS NOT DISTINCT FROM $3 FOR UPDATE",
    )
    .bind(integration_id)
    .bind(user_id)
    .bind(organization_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, insert) = match (existing, mode) {
        (Some(_), WriteMode::InsertOnly) => return Err(AccountError::Exists),
        (None, WriteMode::UpdateOnly) => return Ok(None),
        (Some(id), _) => (id, false),
        (None, _) => (IdKind::ConnectedAccount.new_id(), true),
    };
    let access = seal(ring, columns::ACCESS_TOKEN, &id, Some(&tokens.access_token))?;
    let refresh = seal(ring, columns::REFRESH_TOKEN, &id, tokens.refresh_token.as_ref())?;
    let row = if insert {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO connected_accounts
               (id, integration_id, user_id, organization_id, state, access_token_enc, refresh_token_enc,
                expires_at, refresh_at, scopes, token_version, last_refreshed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, nextval('token_versions'), now())
             ON CONFLICT ON CONSTRAINT connected_accounts_owner_unique DO NOTHING
             RETURNING {COLUMNS}"
        )))
        .bind(&id)
        .bind(integration_id)
        .bind(user_id)
        .bind(organization_id)
        .bind(state.as_str())
        .bind(access)
        .bind(refresh)
        .bind(tokens.expires_at)
        .bind(refresh_at)
        .bind(&tokens.scopes)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AccountError::Exists)?
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE connected_accounts SET
               state = $2, access_token_enc = $3, refresh_token_enc = $4, expires_at = $5, refresh_at = $6,
               scopes = $7, token_version = nextval('token_versions'), lease_id = NULL, lease_until = NULL,
               refresh_failures = 0, last_refresh_error = NULL, reauthorization_reason = NULL, last_refreshed_at = now(), updated_at = now()
             WHERE id = $1
             RETURNING {COLUMNS}"
        )))
        .bind(&id)
        .bind(state.as_str())
        .bind(access)
        .bind(refresh)
        .bind(tokens.expires_at)
        .bind(refresh_at)
        .bind(&tokens.scopes)
        .fetch_one(&mut *tx)
        .await?
    };
    Account::from_row(&row, ring).map(Some)
}

/// Takes the account's refresh lease (DESIGN §2.3) unless someone holds a live
/// one. Returns the account as it is now, or `None` when the lease is taken.
pub async fn try_lease(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &str,
    lease_id: &str,
    lease: Duration,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE connected_accounts SET lease_id = $2, lease_until = now() + $3
         WHERE id = $1 AND (lease_until IS NULL OR lease_until < now())
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(lease_id)
    .bind(lease)
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

pub async fn release_lease(db: impl PgExecutor<'_>, id: &str, lease_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connected_accounts SET lease_id = NULL, lease_until = NULL WHERE id = $1 AND lease_id = $2")
        .bind(id)
        .bind(lease_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a refresh result under the fencing check: only the lease holder, and
/// only while the account is still connected. `Ok(None)` when fenced off.
pub async fn store_refreshed(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &str,
    lease_id: &str,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
) -> Result<Option<Account>, AccountError> {
    let access = seal(ring, columns::ACCESS_TOKEN, id, Some(&tokens.access_token))?;
    let refresh = seal(ring, columns::REFRESH_TOKEN, id, tokens.refresh_token.as_ref())?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE connected_accounts SET
           access_token_enc = $3, refresh_token_enc = COALESCE($4, refresh_token_enc), expires_at = $5,
           refresh_at = CASE WHEN $4 IS NULL AND refresh_token_enc IS NULL THEN NULL ELSE $6 END,
           scopes = $7, token_version = nextval('token_versions'), lease_id = NULL, lease_until = NULL,
           refresh_failures = 0, last_refresh_error = NULL, last_refreshed_at = now(), updated_at = now()
         WHERE id = $1 AND lease_id = $2 AND state = 'connected'
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(lease_id)
    .bind(access)
    .bind(refresh)
    .bind(tokens.expires_at)
    .bind(refresh_at)
    .bind(&tokens.scopes)
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

/// Records a transient failure and frees the lease; the account stays connected.
pub async fn record_transient_failure(
    db: impl PgExecutor<'_>,
    id: &str,
    lease_id: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connected_accounts SET refresh_failures = refresh_failures + 1, last_refresh_error = $3,
           lease_id = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1 AND lease_id = $2",
    )
    .bind(id)
    .bind(lease_id)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// The grant is dead: the user must reauthorize. Tokens are dropped.
/// Returns the account, or `None` if it was not connected (already marked).
pub async fn mark_needs_reauthorization(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    id: &str,
    reason: &str,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE connected_accounts SET state = 'needs_reauthorization', access_token_enc = NULL,
           refresh_token_enc = NULL, refresh_at = NULL, expires_at = NULL,
           reauthorization_reason = $2, lease_id = NULL, lease_until = NULL,
           token_version = nextval('token_versions'), updated_at = now()
         WHERE id = $1 AND state = 'connected'
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

/// Deletes the account (disconnect); returns it as it was, except that its
/// `token_version` is a fresh one, newer than any cached copy (for the cache tombstone).
pub async fn delete(tx: &mut sqlx::PgConnection, ring: &KeyRing, id: &str) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM connected_accounts WHERE id = $1 RETURNING {COLUMNS}, nextval('token_versions') AS tombstone"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|r| {
        let mut account = Account::from_row(&r, ring)?;
        account.token_version = r.get("tombstone");
        Ok(account)
    })
    .transpose()
}
