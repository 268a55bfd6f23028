//! Connected accounts: one per (integration, user, organization), with its
//! encrypted tokens, refresh schedule, state and the single-flight lease.
//!
//! The scheduler reads the schedule from `refresh_schedule`. The refresh's grouped
//! store ([`StoreBatch`]) writes an account's schedule row and deletes its claim in
//! its own statement; a row trigger does the same for every other write: storing a
//! token or moving `refresh_at` deletes the account's row in `refresh_claims`, and
//! leaving the `connected` state or losing the refresh token takes it off the schedule.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::IdKind;
use crate::keys::columns;
use crate::policy;
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

    /// True when the account's access token may be served at `now` ([`policy::servable`]).
    pub fn is_fresh(&self, now: DateTime<Utc>, min_validity: Duration) -> bool {
        self.state == AccountState::Connected
            && self.access_token.is_some()
            && policy::servable(self.expires_at, now, min_validity)
    }
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
/// access token may be served at `now` ([`policy::servable`]): a page of what the
/// token cache should hold.
pub async fn fresh_page(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    after: &str,
    now: DateTime<Utc>,
    min_validity: Duration,
    limit: i64,
) -> Result<Vec<Account>, AccountError> {
    // `servable` at `now` is `expires_at - floor > now`, i.e. `expires_at > now + floor`.
    let threshold = now.checked_add_signed(policy::serve_floor(min_validity)).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM connected_accounts
         WHERE id > $1 AND state = 'connected' AND access_token_enc IS NOT NULL
           AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY id LIMIT $3"
    )))
    .bind(after)
    .bind(threshold)
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
    let account = Account::from_row(&row, ring)?;
    if !insert {
        // The replaced token must not stay servable from a cache.
        crate::invalidations::record(tx, integration_id, user_id, organization_id, account.token_version).await?;
    }
    Ok(Some(account))
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
    let Some(row) = row else { return Ok(None) };
    let account = Account::from_row(&row, ring)?;
    let org = account.organization_id.as_deref();
    crate::invalidations::record(tx, &account.integration_id, &account.user_id, org, account.token_version).await?;
    Ok(Some(account))
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
    let Some(row) = row else { return Ok(None) };
    let mut account = Account::from_row(&row, ring)?;
    account.token_version = row.get("tombstone");
    let org = account.organization_id.as_deref();
    crate::invalidations::record(tx, &account.integration_id, &account.user_id, org, account.token_version).await?;
    Ok(Some(account))
}

/// Many [`try_lease`] calls in one statement ([`crate::store::group`]). Rows another
/// transaction has locked right now count as leased: their holder is writing them, and
/// skipping them keeps batches from two processes from waiting on each other.
pub struct LeaseBatch {
    pub db: sqlx::PgPool,
    pub lease: Duration,
}

/// A lease wanted: (account id, lease id).
pub type LeaseRequest = (String, String);

impl crate::store::group::Batch for LeaseBatch {
    type Request = LeaseRequest;
    /// The leased row, or `None` when someone else holds the lease.
    type Response = Option<PgRow>;

    async fn run(&self, requests: &[LeaseRequest]) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
        let (ids, leases): (Vec<&str>, Vec<&str>) = requests.iter().map(|(a, l)| (a.as_str(), l.as_str())).unzip();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH wanted AS (SELECT * FROM unnest($1::text[], $2::text[]) AS w(id, lease_id)),
             free AS (
               SELECT c.id FROM connected_accounts c
               WHERE c.id = ANY($1) AND (c.lease_until IS NULL OR c.lease_until < now())
               ORDER BY c.id FOR UPDATE SKIP LOCKED)
             UPDATE connected_accounts c SET lease_id = wanted.lease_id, lease_until = now() + $3
             FROM wanted, free
             WHERE c.id = free.id AND wanted.id = c.id
             RETURNING {}, c.lease_id AS batch_lease_id",
            qualified_columns()
        )))
        .bind(&ids)
        .bind(&leases)
        .bind(self.lease)
        .fetch_all(&self.db)
        .await?;
        Ok(match_rows(requests.iter().map(|(a, l)| (a.as_str(), l.as_str())), rows))
    }
}

/// A refresh result to store under the fencing check ([`store_refreshed`]), sealed.
pub struct StoreRequest {
    id: String,
    lease_id: String,
    access: Option<Vec<u8>>,
    refresh: Option<Vec<u8>>,
    expires_at: Option<DateTime<Utc>>,
    refresh_at: Option<DateTime<Utc>>,
    /// Scope tokens joined by [`SCOPE_SEPARATOR`], which no scope token can contain.
    scopes: String,
}

/// Joins scope tokens in a batch: RFC 6749 §3.3 scope tokens are printable ASCII.
const SCOPE_SEPARATOR: char = '\u{1f}';

impl StoreRequest {
    /// Seals the tokens for `id`. `None` when a scope contains the separator: such a
    /// request is stored alone.
    pub fn new(
        ring: &KeyRing,
        id: &str,
        lease_id: &str,
        tokens: &TokenSet,
        refresh_at: Option<DateTime<Utc>>,
    ) -> Result<Option<Self>, AccountError> {
        if tokens.scopes.iter().any(|s| s.contains(SCOPE_SEPARATOR)) {
            return Ok(None);
        }
        Ok(Some(StoreRequest {
            id: id.to_owned(),
            lease_id: lease_id.to_owned(),
            access: seal(ring, columns::ACCESS_TOKEN, id, Some(&tokens.access_token))?,
            refresh: seal(ring, columns::REFRESH_TOKEN, id, tokens.refresh_token.as_ref())?,
            expires_at: tokens.expires_at,
            refresh_at,
            scopes: tokens.scopes.join(&SCOPE_SEPARATOR.to_string()),
        }))
    }
}

/// Many [`store_refreshed`] calls in one statement ([`crate::store::group`]).
///
/// The statement keeps the schedule in step itself: it moves or removes the stored
/// accounts' `refresh_schedule` rows and deletes their claims, from the rows it stored,
/// and it sets `pipes.schedule_written` for its own transaction (it is one) so that the
/// row trigger every other writer relies on does not do it a second time, row by row (see
/// migration `20261127180000`). It moves the schedule rows with a plain UPDATE and
/// inserts only the ones missing (an account that had no schedule): an upsert of every
/// row first locks each conflicting row, which costs a WAL record of its own.
///
/// The statement locks only rows whose lease it holds, and no two live holders share a
/// row, so batches practically never wait for each other. It does not lock the rows in a
/// statement of their own first (`FOR UPDATE` in id order), which would cost a round trip.
/// The requests go in id order instead, which the planner follows (a nested loop over
/// them, each row fetched by its key); should two batches ever wait for each other in a
/// cycle (two leases taken over at once from a holder storing late), PostgreSQL cancels
/// one, whose callers retry while their lease lasts.
pub struct StoreBatch {
    pub db: sqlx::PgPool,
}

impl crate::store::group::Batch for StoreBatch {
    type Request = StoreRequest;
    /// The stored row, or `None` when fenced off.
    type Response = Option<PgRow>;

    async fn run(&self, requests: &[StoreRequest]) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
        let mut sorted: Vec<&StoreRequest> = requests.iter().collect();
        sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = sorted.iter().map(|r| r.id.as_str()).collect();
        let leases: Vec<&str> = sorted.iter().map(|r| r.lease_id.as_str()).collect();
        let access: Vec<Option<&[u8]>> = sorted.iter().map(|r| r.access.as_deref()).collect();
        let refresh: Vec<Option<&[u8]>> = sorted.iter().map(|r| r.refresh.as_deref()).collect();
        let expires: Vec<Option<DateTime<Utc>>> = sorted.iter().map(|r| r.expires_at).collect();
        let refresh_at: Vec<Option<DateTime<Utc>>> = sorted.iter().map(|r| r.refresh_at).collect();
        let scopes: Vec<&str> = sorted.iter().map(|r| r.scopes.as_str()).collect();
        // The stored rows are all `connected`; one whose refresh_at is set has a refresh
        // token (the CASE below): exactly the rows the schedule holds. The statement is its
        // own transaction: `pipes.schedule_written` is set transaction-locally by `new`,
        // which every stored row is joined with, so it is on before the first row is
        // updated and the row trigger checks it, and off again once the statement ends.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH new AS (
               SELECT n.* FROM (SELECT set_config('pipes.schedule_written', 'on', true)) AS written,
                 unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[],
                        $6::timestamptz[], $7::text[])
                 AS n(id, lease_id, access, refresh, expires_at, refresh_at, scopes)),
             stored AS (
             UPDATE connected_accounts c SET
               access_token_enc = new.access, refresh_token_enc = COALESCE(new.refresh, c.refresh_token_enc),
               expires_at = new.expires_at,
               refresh_at = CASE WHEN new.refresh IS NULL AND c.refresh_token_enc IS NULL THEN NULL
                                 ELSE new.refresh_at END,
               scopes = string_to_array(new.scopes, E'\\x1f'), token_version = nextval('token_versions'),
               lease_id = NULL, lease_until = NULL, refresh_failures = 0,
               last_refresh_error = NULL, last_refreshed_at = now(), updated_at = now()
             FROM new
             WHERE c.id = new.id AND c.lease_id = new.lease_id AND c.state = 'connected'
             RETURNING {STORED_COLUMNS}, new.lease_id AS batch_lease_id),
             rescheduled AS (
               UPDATE refresh_schedule s SET refresh_at = stored.refresh_at, integration_id = stored.integration_id
               FROM stored WHERE s.account_id = stored.id AND stored.refresh_at IS NOT NULL
               RETURNING s.account_id),
             scheduled AS (
               INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
               SELECT id, integration_id, refresh_at FROM stored
               WHERE refresh_at IS NOT NULL AND id NOT IN (SELECT account_id FROM rescheduled) ORDER BY id
               ON CONFLICT (account_id) DO UPDATE
                 SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id),
             unscheduled AS (
               DELETE FROM refresh_schedule WHERE account_id IN (SELECT id FROM stored WHERE refresh_at IS NULL)),
             unclaimed AS (
               DELETE FROM refresh_claims WHERE account_id IN (SELECT id FROM stored))
             SELECT * FROM stored"
        )))
        .bind(&ids)
        .bind(&leases)
        .bind(&access)
        .bind(&refresh)
        .bind(&expires)
        .bind(&refresh_at)
        .bind(&scopes)
        .fetch_all(&self.db)
        .await?;
        Ok(match_rows(requests.iter().map(|r| (r.id.as_str(), r.lease_id.as_str())), rows))
    }
}

/// What [`StoreBatch`] returns of a stored row: what the statement itself worked out.
/// The rest the refresh holds already ([`Account::after_store`]), and sending the sealed
/// tokens back to be opened again cost the worker as much as sealing them.
const STORED_COLUMNS: &str =
    "c.id, c.integration_id, c.expires_at, c.refresh_at, c.scopes, c.token_version, c.updated_at";

impl Account {
    /// The account as [`StoreBatch`] stored it: `leased` (the row as its lease returned
    /// it) with `tokens` and the values of [`STORED_COLUMNS`] from `row`. The statement
    /// stores only under the lease, so nothing else changed the row in between.
    pub fn after_store(leased: &Account, tokens: &TokenSet, row: &PgRow) -> Account {
        Account {
            id: leased.id.clone(),
            integration_id: leased.integration_id.clone(),
            user_id: leased.user_id.clone(),
            organization_id: leased.organization_id.clone(),
            state: AccountState::Connected,
            access_token: Some(tokens.access_token.clone()),
            refresh_token: tokens.refresh_token.clone().or_else(|| leased.refresh_token.clone()),
            expires_at: row.get("expires_at"),
            refresh_at: row.get("refresh_at"),
            scopes: row.get("scopes"),
            token_version: row.get("token_version"),
            last_refresh_error: None,
            reauthorization_reason: leased.reauthorization_reason.clone(),
            created_at: leased.created_at,
            updated_at: row.get("updated_at"),
        }
    }
}

/// [`COLUMNS`] qualified with the table alias `c`, for statements that join.
fn qualified_columns() -> &'static str {
    static QUALIFIED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    QUALIFIED.get_or_init(|| COLUMNS.split(',').map(|c| format!("c.{}", c.trim())).collect::<Vec<_>>().join(", "))
}

/// Hands each request the returned row that is its own: same account, and the lease it
/// asked for (a batch may carry one account twice, under two lease ids).
fn match_rows<'a>(requests: impl Iterator<Item = (&'a str, &'a str)>, rows: Vec<PgRow>) -> Vec<Option<PgRow>> {
    let mut by_id: HashMap<String, PgRow> = HashMap::with_capacity(rows.len());
    for row in rows {
        by_id.insert(row.get("id"), row);
    }
    requests
        .map(|(id, lease_id)| {
            let row = by_id.remove(id)?;
            let holder: Option<String> = row.try_get("batch_lease_id").ok();
            if holder.as_deref() == Some(lease_id) {
                Some(row)
            } else {
                by_id.insert(id.to_owned(), row);
                None
            }
        })
        .collect()
}
