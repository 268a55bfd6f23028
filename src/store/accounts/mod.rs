//! Connected accounts of an integration's owners ([`Owner`]): each owner's
//! `compatibility` account and any `standard` ones beside it, with their
//! encrypted tokens, state and the single-flight lease. Every write that stores or
//! drops a token keeps the account's place on the refresh schedule in the same
//! transaction ([`schedule`]).

use std::time::Duration;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::auth_method::AuthMethod;
use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::{AccountId, IntegrationId};
use crate::keys::columns;
use crate::owner::Owner;
use crate::policy;
use crate::secret::Secret;
use crate::store::schedule::{self, REFRESH_AT_OF_C};

mod listing;
mod refresh;
mod write;
pub use listing::{fresh_page, summaries_for_owner, AccountSummary};
pub use refresh::{
    record_transient_failure, release_lease, store_refreshed, try_lease, LeaseBatch, LeaseRequest, StoreBatch,
    StoreRequest,
};
pub use write::{write_tokens, Labels, Stored, WriteMode, MAX_ACCOUNTS_PER_OWNER};

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

/// An account's place among its owner's accounts of an integration, fixed for its
/// lifetime: the `compatibility` account (at most one per owner) is the one every
/// request that names no account selects; `standard` accounts are selected by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionRole {
    Compatibility,
    Standard,
}

impl ConnectionRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRole::Compatibility => "compatibility",
            ConnectionRole::Standard => "standard",
        }
    }
    pub(crate) fn parse(s: &str) -> Self {
        if s == "standard" {
            ConnectionRole::Standard
        } else {
            ConnectionRole::Compatibility
        }
    }
}

/// A connected account with its tokens decrypted. `Debug` shows `***` for tokens.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub integration_id: IntegrationId,
    pub owner: Owner,
    pub role: ConnectionRole,
    /// The provider's subject of the account, when known.
    pub account_identifier: Option<String>,
    /// A label, when one was given.
    pub account_display_name: Option<String>,
    /// The member whose authorization established an organization-owned account.
    pub established_by_user_id: Option<String>,
    pub state: AccountState,
    /// How it authenticates: its integration's method.
    pub auth_method: AuthMethod,
    /// The credential a read vends: an OAuth access token, an API key as given, or the
    /// token the account's own client obtained.
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// A client-credentials account's own OAuth client.
    pub client: Option<OwnClient>,
    /// The last four characters of the API key or client secret, to show.
    pub secret_last_4: Option<String>,
    /// Non-secret values given with the credential (client credentials' `config`).
    pub config: BTreeMap<String, String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub token_version: i64,
    pub last_refresh_error: Option<String>,
    pub reauthorization_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An account's own OAuth client (client credentials). `Debug` shows `***` for the secret.
#[derive(Debug, Clone)]
pub struct OwnClient {
    pub client_id: String,
    pub client_secret: Secret,
}

/// What authenticates an account besides the tokens a write stores.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Tokens from the authorization-code flow (or imported).
    OAuth,
    /// The token is the owner's API key.
    ApiKey,
    /// The token came from this client's `client_credentials` grant.
    ClientCredentials { client: OwnClient, config: BTreeMap<String, String> },
}

impl Credential {
    pub fn auth_method(&self) -> AuthMethod {
        match self {
            Credential::OAuth => AuthMethod::OAuth,
            Credential::ApiKey => AuthMethod::ApiKey,
            Credential::ClientCredentials { .. } => AuthMethod::ClientCredentials,
        }
    }
}

/// The last four characters of a secret long enough that they reveal little (else none).
pub fn last_4(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    (chars.len() >= 12).then(|| chars[chars.len() - 4..].iter().collect())
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
    #[error("the owner already has an account for this integration, which allows only one")]
    MultipleUnavailable,
    #[error("the owner has as many accounts for this integration as allowed")]
    LimitReached,
    #[error("several accounts of the owner match; the request must name one")]
    SelectionRequired,
    #[error("account {0}: stored without an owner")]
    NoOwner(String),
}

/// The account's columns, of the row `c`; every statement adds `refresh_at` (the
/// schedule's, or what it writes there).
const COLUMNS: &str = "c.id, c.integration_id, c.user_id, c.organization_id, c.connection_role, c.account_identifier,
    c.account_display_name, c.established_by_user_id, c.state, c.auth_method, c.access_token_enc,
    c.refresh_token_enc, c.client_id, c.client_secret_enc, c.secret_last_4, c.config, c.expires_at, c.scopes, c.token_version, c.last_refresh_error, c.reauthorization_reason,
    c.created_at, c.updated_at";

/// What a store writes to the schedule: `refresh_at` for an account left with something
/// to renew its token with (a refresh token, or its own client), as an expression over
/// the stored row `c` and the requested `refresh_at`.
fn stored_refresh_at(requested: &str) -> String {
    format!(
        "CASE WHEN c.refresh_token_enc IS NULL AND c.client_secret_enc IS NULL THEN NULL ELSE {requested} END AS refresh_at"
    )
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
        let client_id: Option<String> = row.get("client_id");
        let client_secret = open(columns::ACCOUNT_CLIENT_SECRET, row.get("client_secret_enc"))?;
        let config: serde_json::Value = row.get("config");
        Ok(Account {
            owner,
            role: ConnectionRole::parse(row.get("connection_role")),
            account_identifier: row.get("account_identifier"),
            account_display_name: row.get("account_display_name"),
            established_by_user_id: row.get("established_by_user_id"),
            access_token: open(columns::ACCESS_TOKEN, row.get("access_token_enc"))?,
            refresh_token: open(columns::REFRESH_TOKEN, row.get("refresh_token_enc"))?,
            auth_method: AuthMethod::parse(row.get("auth_method")).unwrap_or(AuthMethod::OAuth),
            client: client_id
                .zip(client_secret)
                .map(|(client_id, client_secret)| OwnClient { client_id, client_secret }),
            secret_last_4: row.get("secret_last_4"),
            config: serde_json::from_value(config).unwrap_or_default(),
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
            role: self.role,
            account_identifier: self.account_identifier.clone(),
            account_display_name: self.account_display_name.clone(),
            established_by_user_id: self.established_by_user_id.clone(),
            state: self.state,
            auth_method: self.auth_method,
            client_id: self.client.as_ref().map(|c| c.client_id.clone()),
            secret_last_4: self.secret_last_4.clone(),
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

/// Which of an owner's accounts of an integration a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The compatibility account: what a request that names no account (and does not
    /// declare it knows of several) selects.
    Compatibility,
    /// The owner's account with this id.
    Only(AccountId),
    /// The owner's one account, whatever its role; several is
    /// [`AccountError::SelectionRequired`].
    Sole,
}

/// The owner's account `selector` names; `None` when there is none.
#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %integration_id))]
pub async fn select(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    integration_id: &IntegrationId,
    owner: &Owner,
    selector: &Selector,
) -> Result<Option<Account>, AccountError> {
    let which = match selector {
        Selector::Compatibility => "AND c.connection_role = 'compatibility' AND $4::text IS NULL",
        Selector::Only(_) => "AND c.id = $4",
        // Two rows are enough to tell one from several.
        Selector::Sole => "AND $4::text IS NULL ORDER BY c.id LIMIT 2",
    };
    let only = match selector {
        Selector::Only(id) => Some(id.as_str()),
        _ => None,
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at FROM connected_accounts c
         WHERE c.integration_id = $1 AND {} {which}",
        owner_filter(owner, 2)
    )))
    .bind(integration_id)
    .bind(owner.user_id())
    .bind(owner.organization_id())
    .bind(only)
    .fetch_all(db)
    .await?;
    match rows.as_slice() {
        [] => Ok(None),
        [row] => Account::from_row(row, ring).map(Some),
        _ => Err(AccountError::SelectionRequired),
    }
}

/// The owner's compatibility account ([`Selector::Compatibility`]).
pub async fn find_for_owner(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    integration_id: &IntegrationId,
    owner: &Owner,
) -> Result<Option<Account>, AccountError> {
    select(db, ring, integration_id, owner, &Selector::Compatibility).await
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
    crate::invalidations::record(tx, &account).await?;
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
    crate::invalidations::record(tx, &account).await?;
    Ok(Some(account))
}
