//! What a refresh writes to its account: the single-flight lease (DESIGN §2.3), the
//! new tokens under the fencing check, a transient failure; one account at a time, or
//! many in one statement ([`crate::store::group`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use super::{seal, stored_refresh_at, Account, AccountError, AccountState, TokenSet, COLUMNS};
use crate::crypto::KeyRing;
use crate::ids::AccountId;
use crate::keys::columns;
use crate::store::schedule::{self, REFRESH_AT_OF_C};

/// Takes the account's refresh lease (DESIGN §2.3) unless someone holds a live
/// one. Returns the account as it is now, or `None` when the lease is taken.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn try_lease(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &AccountId,
    lease_id: &str,
    lease: Duration,
) -> Result<Option<Account>, AccountError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE connected_accounts c SET lease_id = $2, lease_until = now() + $3
         WHERE id = $1 AND (lease_until IS NULL OR lease_until < now())
         RETURNING {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at"
    )))
    .bind(id)
    .bind(lease_id)
    .bind(lease)
    .fetch_optional(db)
    .await?;
    row.map(|r| Account::from_row(&r, ring)).transpose()
}

#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn release_lease(db: impl PgExecutor<'_>, id: &AccountId, lease_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connected_accounts SET lease_id = NULL, lease_until = NULL WHERE id = $1 AND lease_id = $2")
        .bind(id)
        .bind(lease_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a refresh result under the fencing check: only the lease holder, and
/// only while the account is still connected. `Ok(None)` when fenced off. One
/// statement with the schedule's ([`schedule::SYNC_STORED`]).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn store_refreshed(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &AccountId,
    lease_id: &str,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
) -> Result<Option<Account>, AccountError> {
    let access = seal(ring, columns::ACCESS_TOKEN, id, Some(&tokens.access_token))?;
    let refresh = seal(ring, columns::REFRESH_TOKEN, id, tokens.refresh_token.as_ref())?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH stored AS (
           UPDATE connected_accounts c SET
             access_token_enc = $3, refresh_token_enc = COALESCE($4, refresh_token_enc), expires_at = $5,
             scopes = $7, token_version = nextval('token_versions'), lease_id = NULL, lease_until = NULL,
             refresh_failures = 0, last_refresh_error = NULL, last_refreshed_at = now(), updated_at = now()
           WHERE id = $1 AND lease_id = $2 AND state = 'connected'
           RETURNING {COLUMNS}, {scheduled}),
         {sync}
         SELECT * FROM stored",
        scheduled = stored_refresh_at("$6::timestamptz"),
        sync = schedule::SYNC_STORED,
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
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %id))]
pub async fn record_transient_failure(
    db: impl PgExecutor<'_>,
    id: &AccountId,
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

/// Many [`try_lease`] calls in one statement ([`crate::store::group`]). Rows another
/// transaction has locked right now count as leased: their holder is writing them, and
/// skipping them keeps batches from two processes from waiting on each other.
pub struct LeaseBatch {
    pub db: sqlx::PgPool,
    pub lease: Duration,
}

/// A lease wanted: (account id, lease id).
pub type LeaseRequest = (AccountId, String);

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
             RETURNING {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at, c.lease_id AS batch_lease_id"
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

/// Many [`store_refreshed`] calls in one statement ([`crate::store::group`]), the
/// schedule's part included ([`schedule::SYNC_STORED`]).
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
        // token: exactly the rows the schedule holds.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH new AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[],
                        $6::timestamptz[], $7::text[])
                 AS n(id, lease_id, access, refresh, expires_at, refresh_at, scopes)),
             stored AS (
             UPDATE connected_accounts c SET
               access_token_enc = new.access, refresh_token_enc = COALESCE(new.refresh, c.refresh_token_enc),
               expires_at = new.expires_at,
               scopes = string_to_array(new.scopes, E'\\x1f'), token_version = nextval('token_versions'),
               lease_id = NULL, lease_until = NULL, refresh_failures = 0,
               last_refresh_error = NULL, last_refreshed_at = now(), updated_at = now()
             FROM new
             WHERE c.id = new.id AND c.lease_id = new.lease_id AND c.state = 'connected'
             RETURNING {STORED_COLUMNS}, {scheduled}, new.lease_id AS batch_lease_id),
             {sync}
             SELECT * FROM stored",
            scheduled = stored_refresh_at("new.refresh_at"),
            sync = schedule::SYNC_STORED,
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
const STORED_COLUMNS: &str = "c.id, c.integration_id, c.expires_at, c.scopes, c.token_version, c.updated_at";

impl Account {
    /// The account as [`StoreBatch`] stored it: `leased` (the row as its lease returned
    /// it) with `tokens` and the values of [`STORED_COLUMNS`] from `row`. The statement
    /// stores only under the lease, so nothing else changed the row in between.
    pub fn after_store(leased: &Account, tokens: &TokenSet, row: &PgRow) -> Account {
        Account {
            id: leased.id.clone(),
            integration_id: leased.integration_id.clone(),
            owner: leased.owner.clone(),
            role: leased.role,
            account_identifier: leased.account_identifier.clone(),
            account_display_name: leased.account_display_name.clone(),
            established_by_user_id: leased.established_by_user_id.clone(),
            state: AccountState::Connected,
            auth_method: leased.auth_method,
            access_token: Some(tokens.access_token.clone()),
            refresh_token: tokens.refresh_token.clone().or_else(|| leased.refresh_token.clone()),
            client: leased.client.clone(),
            secret_last_4: leased.secret_last_4.clone(),
            config: leased.config.clone(),
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
