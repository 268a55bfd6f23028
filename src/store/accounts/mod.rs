//! Connected accounts: one per integration and owner ([`Owner`]), with its
//! encrypted tokens, state and the single-flight lease. Every write that stores or
//! drops a token keeps the account's place on the refresh schedule in the same
//! transaction ([`schedule`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::{AccountId, IntegrationId};
use crate::keys::columns;
use crate::owner::Owner;
use crate::policy;
use crate::secret::Secret;
use crate::store::schedule::{self, REFRESH_AT_OF_C};

mod listing;
mod refresh;
pub use listing::{fresh_page, summaries_for_owner, AccountSummary};
pub use refresh::{
    record_transient_failure, release_lease, store_refreshed, try_lease, LeaseBatch, LeaseRequest, StoreBatch,
    StoreRequest,
};

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
    pub id: AccountId,
    pub integration_id: IntegrationId,
    pub owner: Owner,
    /// The member whose authorization established an organization-owned account.
    pub established_by_user_id: Option<String>,
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
    #[error("a connected account already exists for this owner and integration")]
    Exists,
    #[error("account {0}: stored without an owner")]
    NoOwner(String),
}

/// The account's columns, of the row `c`; every statement adds `refresh_at` (the
/// schedule's, or what it writes there).
const COLUMNS: &str =
    "c.id, c.integration_id, c.user_id, c.organization_id, c.established_by_user_id, c.state, c.access_token_enc,
    c.refresh_token_enc, c.expires_at, c.scopes, c.token_version, c.last_refresh_error, c.reauthorization_reason,
    c.created_at, c.updated_at";

/// What a store writes to the schedule: `refresh_at` for an account left with a refresh
/// token, as an expression over the stored row `c` and the requested `refresh_at`.
fn stored_refresh_at(requested: &str) -> String {
    format!("CASE WHEN c.refresh_token_enc IS NULL THEN NULL ELSE {requested} END AS refresh_at")
}

impl Account {
    pub fn from_row(row: &PgRow, ring: &KeyRing) -> Result<Self, AccountError> {
        let id: String = row.get("id");
        let open = |column: &str, value: Option<Vec<u8>>| -> Result<Option<Secret>, AccountError> {
            value
                .map(|c| ring.open_string(&c, aad(column, &id)).map(Secret::new))
                .transpose()
                .map_err(|source| AccountError::Crypto { id: id.clone(), source })
        };
        let owner = Owner::from_columns(row.get("user_id"), row.get("organization_id"))
            .ok_or_else(|| AccountError::NoOwner(id.clone()))?;
        Ok(Account {
            owner,
            established_by_user_id: row.get("established_by_user_id"),
            access_token: open(columns::ACCESS_TOKEN, row.get("access_token_enc"))?,
            refresh_token: open(columns::REFRESH_TOKEN, row.get("refresh_token_enc"))?,
            integration_id: row.get("integration_id"),
            state: AccountState::parse(row.get("state")).unwrap_or(AccountState::Disconnected),
            expires_at: row.get("expires_at"),
            refresh_at: row.get("refresh_at"),
            scopes: row.get("scopes"),
            token_version: row.get("token_version"),
            last_refresh_error: row.get("last_refresh_error"),
            reauthorization_reason: row.get("reauthorization_reason"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            id: id.into(),
        })
    }

    /// The account without its tokens.
    pub fn summary(&self) -> AccountSummary {
        AccountSummary {
            id: self.id.clone(),
            integration_id: self.integration_id.clone(),
            owner: self.owner.clone(),
            established_by_user_id: self.established_by_user_id.clone(),
            state: self.state,
            scopes: self.scopes.clone(),
            reauthorization_reason: self.reauthorization_reason.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
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

/// The `WHERE` condition selecting `owner`'s accounts of the row `c`, with `$n` bound
/// to [`Owner::user_id`] and `$n+1` to [`Owner::organization_id`]. Each form can use an
/// index, where one `IS NOT DISTINCT FROM` for both kinds could not.
pub(crate) fn owner_filter(owner: &Owner, n: usize) -> String {
    let org = n + 1;
    match owner {
        Owner::User { .. } => format!("c.user_id = ${n} AND c.organization_id IS NOT DISTINCT FROM ${org}"),
        Owner::Organization { .. } => {
            format!("c.user_id IS NULL AND ${n}::text IS NULL AND c.organization_id = ${org}")
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %integration_id))]
pub async fn find_for_owner(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    integration_id: &IntegrationId,
    owner: &Owner,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at FROM connected_accounts c
         WHERE c.integration_id = $1 AND {}",
        owner_filter(owner, 2)
    )))
    .bind(integration_id)
    .bind(owner.user_id())
    .bind(owner.organization_id())
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn find_by_id(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &AccountId,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at FROM connected_accounts c WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
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
#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %integration_id))]
#[allow(clippy::too_many_arguments)]
pub async fn write_tokens(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    mode: WriteMode,
    integration_id: &IntegrationId,
    owner: &Owner,
    established_by: Option<&str>,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
    state: AccountState,
) -> Result<Option<Account>, AccountError> {
    // The ciphertexts are bound to the row id, so the id must be known first.
    let existing: Option<AccountId> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM connected_accounts c WHERE c.integration_id = $1 AND {} FOR UPDATE",
        owner_filter(owner, 2)
    )))
    .bind(integration_id)
    .bind(owner.user_id())
    .bind(owner.organization_id())
    .fetch_optional(&mut *tx)
    .await?;
    let (id, insert) = match (existing, mode) {
        (Some(_), WriteMode::InsertOnly) => return Err(AccountError::Exists),
        (None, WriteMode::UpdateOnly) => return Ok(None),
        (Some(id), _) => (id, false),
        (None, _) => (AccountId::generate(), true),
    };
    let access = seal(ring, columns::ACCESS_TOKEN, &id, Some(&tokens.access_token))?;
    let refresh = seal(ring, columns::REFRESH_TOKEN, &id, tokens.refresh_token.as_ref())?;
    // Only a connected account is refreshed.
    let scheduled = refresh_at.filter(|_| state == AccountState::Connected);
    let row = if insert {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO connected_accounts AS c
               (id, integration_id, ownership, user_id, organization_id, established_by_user_id, state,
                access_token_enc, refresh_token_enc, expires_at, scopes, token_version, last_refreshed_at)
             VALUES ($1, $2, $11, $3, $4, $12, $5, $6, $7, $8, $9, nextval('token_versions'), now())
             ON CONFLICT ON CONSTRAINT connected_accounts_owner_unique DO NOTHING
             RETURNING {COLUMNS}, {scheduled}",
            scheduled = stored_refresh_at("$10::timestamptz")
        )))
        .bind(&id)
        .bind(integration_id)
        .bind(owner.user_id())
        .bind(owner.organization_id())
        .bind(state.as_str())
        .bind(access)
        .bind(refresh)
        .bind(tokens.expires_at)
        .bind(&tokens.scopes)
        .bind(scheduled)
        .bind(owner.ownership().as_str())
        .bind(established_by)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AccountError::Exists)?
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE connected_accounts c SET
               state = $2, access_token_enc = $3, refresh_token_enc = $4, expires_at = $5,
               scopes = $7, token_version = nextval('token_versions'), lease_id = NULL, lease_until = NULL,
               refresh_failures = 0, last_refresh_error = NULL, reauthorization_reason = NULL, last_refreshed_at = now(), updated_at = now(),
               established_by_user_id = COALESCE($8, c.established_by_user_id)
             WHERE id = $1
             RETURNING {COLUMNS}, {scheduled}",
            scheduled = stored_refresh_at("$6::timestamptz")
        )))
        .bind(&id)
        .bind(state.as_str())
        .bind(access)
        .bind(refresh)
        .bind(tokens.expires_at)
        .bind(scheduled)
        .bind(&tokens.scopes)
        .bind(established_by)
        .fetch_one(&mut *tx)
        .await?
    };
    let account = Account::from_row(&row, ring)?;
    schedule::sync(&mut *tx, &id, integration_id, account.refresh_at).await?;
    if !insert {
        // The replaced token must not stay servable from a cache.
        crate::invalidations::record(tx, integration_id, owner, account.token_version).await?;
    }
    Ok(Some(account))
}

/// The grant is dead: the user must reauthorize. Tokens are dropped.
/// Returns the account, or `None` if it was not connected (already marked).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn mark_needs_reauthorization(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    id: &AccountId,
    reason: &str,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE connected_accounts c SET state = 'needs_reauthorization', access_token_enc = NULL,
           refresh_token_enc = NULL, expires_at = NULL,
           reauthorization_reason = $2, lease_id = NULL, lease_until = NULL,
           token_version = nextval('token_versions'), updated_at = now()
         WHERE id = $1 AND state = 'connected'
         RETURNING {COLUMNS}, NULL::timestamptz AS refresh_at"
    )))
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let account = Account::from_row(&row, ring)?;
    schedule::sync(&mut *tx, id, &account.integration_id, None).await?;
    crate::invalidations::record(tx, &account.integration_id, &account.owner, account.token_version).await?;
    Ok(Some(account))
}

/// Deletes the account (disconnect); returns it as it was, except that its
/// `token_version` is a fresh one, newer than any cached copy (for the cache tombstone).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn delete(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    id: &AccountId,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM connected_accounts c WHERE id = $1
         RETURNING {COLUMNS}, NULL::timestamptz AS refresh_at, nextval('token_versions') AS tombstone"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut account = Account::from_row(&row, ring)?;
    account.token_version = row.get("tombstone");
    schedule::clear(&mut *tx, std::slice::from_ref(&account.id)).await?;
    crate::invalidations::record(tx, &account.integration_id, &account.owner, account.token_version).await?;
    Ok(Some(account))
}
