//! Storing tokens for an owner: which of the owner's accounts a write lands on (the
//! compatibility account, a named one, or a new one), with its labels, in the
//! writer's transaction together with the account's place on the refresh schedule
//! and the invalidation of what the cache held.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    last_4, owner_filter, seal, stored_refresh_at, Account, AccountError, AccountState, ConnectionRole, Credential,
    TokenSet, COLUMNS,
};
use crate::crypto::KeyRing;
use crate::ids::{AccountId, IntegrationId};
use crate::keys::columns;
use crate::owner::Owner;
use crate::store::schedule;

/// Accounts an owner may hold for one integration: enough for every account a person
/// or team keeps at one provider, and a bound on what one caller can make.
pub const MAX_ACCOUNTS_PER_OWNER: usize = 20;

/// Which of the owner's accounts a write is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// Connect or reconnect: insert the compatibility account, or replace its tokens (or
    /// those of the owner's account with the same `account_identifier`).
    Upsert,
    /// Import (POST): insert the compatibility account; an existing one is a conflict.
    InsertOnly,
    /// PUT: the compatibility account must exist.
    UpdateOnly,
    /// The owner's account with this id, which must exist (a PUT or a reauthorization
    /// naming it).
    Account(AccountId),
    /// `connection_intent: add`: the owner's account with the same `account_identifier`
    /// if there is one; else a new account, the compatibility one while the owner has
    /// none, else a standard one where `several` accounts are allowed
    /// ([`AccountError::MultipleUnavailable`] otherwise).
    Add { several: bool },
}

/// An account's labels as a write gives them: `None` keeps the stored value,
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub account_identifier: Option<Option<String>>,
    pub account_display_name: Option<Option<String>>,
    /// The provider's name for the account: it fills an empty label, never replaces one.
    pub provider_display_name: Option<String>,
}

/// What a write stored: the account, and its state before (`None`: it is new).
#[derive(Debug)]
pub struct Stored {
    pub account: Account,
    pub previous: Option<AccountState>,
}

/// Where a write lands.
enum Landing {
    Insert(ConnectionRole),
    Update(AccountId, AccountState),
}

/// Stores tokens for an owner, with what `credential` adds (an API key's or client
/// secret's last four, the account's own client), and returns the account with a bumped
/// token version. `Ok(None)` when the account to update does not exist
/// ([`WriteMode::UpdateOnly`], [`WriteMode::Account`]).
#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %integration_id))]
#[allow(clippy::too_many_arguments)]
pub async fn write_tokens(
    tx: &mut sqlx::PgConnection,
    ring: &KeyRing,
    mode: &WriteMode,
    integration_id: &IntegrationId,
    owner: &Owner,
    established_by: Option<&str>,
    labels: &Labels,
    credential: &Credential,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
    state: AccountState,
) -> Result<Option<Stored>, AccountError> {
    // The owner's accounts, locked: the ciphertexts are bound to the row id, so the
    // row a write lands on must be known first.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.id, c.connection_role, c.account_identifier, c.state FROM connected_accounts c
         WHERE c.integration_id = $1 AND {} ORDER BY c.id FOR UPDATE",
        owner_filter(owner, 2)
    )))
    .bind(integration_id)
    .bind(owner.user_id())
    .bind(owner.organization_id())
    .fetch_all(&mut *tx)
    .await?;
    let existing = |pick: &dyn Fn(&sqlx::postgres::PgRow) -> bool| {
        rows.iter().find(|r| pick(r)).map(|r| {
            let state = AccountState::parse(r.get("state")).unwrap_or(AccountState::Disconnected);
            Landing::Update(r.get::<String, _>("id").into(), state)
        })
    };
    let compatibility = || existing(&|r| r.get::<&str, _>("connection_role") == "compatibility");
    // The owner's account of the same provider subject, when the write names one.
    let subject = labels.account_identifier.clone().flatten();
    let same_subject =
        || subject.as_deref().and_then(|s| existing(&|r| r.get::<Option<&str>, _>("account_identifier") == Some(s)));
    let landing = match mode {
        WriteMode::Upsert => {
            same_subject().or_else(compatibility).unwrap_or(Landing::Insert(ConnectionRole::Compatibility))
        }
        WriteMode::InsertOnly => match compatibility() {
            Some(_) => return Err(AccountError::Exists),
            None => Landing::Insert(ConnectionRole::Compatibility),
        },
        WriteMode::UpdateOnly => match compatibility() {
            Some(update) => update,
            None => return Ok(None),
        },
        WriteMode::Account(id) => match existing(&|r| r.get::<&str, _>("id") == id.as_str()) {
            Some(update) => update,
            None => return Ok(None),
        },
        WriteMode::Add { several } => {
            match same_subject() {
                // Reconnecting the same provider account updates it.
                Some(update) => update,
                None if rows.is_empty() => Landing::Insert(ConnectionRole::Compatibility),
                None if !several => return Err(AccountError::MultipleUnavailable),
                None if rows.len() >= MAX_ACCOUNTS_PER_OWNER => return Err(AccountError::LimitReached),
                None if compatibility().is_none() => Landing::Insert(ConnectionRole::Compatibility),
                None => Landing::Insert(ConnectionRole::Standard),
            }
        }
    };
    let (id, previous) = match &landing {
        Landing::Insert(_) => (AccountId::generate(), None),
        Landing::Update(id, state) => (id.clone(), Some(*state)),
    };
    let access = seal(ring, columns::ACCESS_TOKEN, &id, Some(&tokens.access_token))?;
    let refresh = seal(ring, columns::REFRESH_TOKEN, &id, tokens.refresh_token.as_ref())?;
    let (client_id, client_secret, shown, config) = match credential {
        Credential::OAuth => (None, None, None, serde_json::json!({})),
        Credential::ApiKey => (None, None, last_4(tokens.access_token.expose()), serde_json::json!({})),
        Credential::ClientCredentials { client, config } => (
            Some(client.client_id.as_str()),
            seal(ring, columns::ACCOUNT_CLIENT_SECRET, &id, Some(&client.client_secret))?,
            last_4(client.client_secret.expose()),
            serde_json::to_value(config).unwrap_or_else(|_| serde_json::json!({})),
        ),
    };
    let method = credential.auth_method().as_str();
    // Only a connected account is refreshed.
    let scheduled = refresh_at.filter(|_| state == AccountState::Connected);
    let (set_identifier, identifier) = split(&labels.account_identifier);
    let (set_display_name, display_name) = split(&labels.account_display_name);
    let provider_name = labels.provider_display_name.as_deref();
    let row = match landing {
        Landing::Insert(role) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO connected_accounts AS c
               (id, integration_id, ownership, user_id, organization_id, established_by_user_id, state,
                access_token_enc, refresh_token_enc, expires_at, scopes, token_version, last_refreshed_at,
                connection_role, account_identifier, account_display_name,
                auth_method, client_id, client_secret_enc, secret_last_4, config)
             VALUES ($1, $2, $11, $3, $4, $12, $5, $6, $7, $8, $9, nextval('token_versions'), now(), $13, $14, $15,
                     $16, $17, $18, $19, $20)
             ON CONFLICT DO NOTHING
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
        .bind(role.as_str())
        .bind(identifier)
        .bind(if set_display_name { display_name } else { provider_name })
        .bind(method)
        .bind(client_id)
        .bind(&client_secret)
        .bind(&shown)
        .bind(&config)
        .fetch_optional(&mut *tx)
        .await?
        // Another writer made the account (or took the identifier) meanwhile.
        .ok_or(AccountError::Exists)?,
        Landing::Update(..) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE connected_accounts c SET
               state = $2, access_token_enc = $3, refresh_token_enc = $4, expires_at = $5,
               scopes = $7, token_version = nextval('token_versions'), lease_id = NULL, lease_until = NULL,
               refresh_failures = 0, last_refresh_error = NULL, reauthorization_reason = NULL, last_refreshed_at = now(), updated_at = now(),
               established_by_user_id = COALESCE($8, c.established_by_user_id),
               account_identifier = CASE WHEN $9 THEN $10 ELSE c.account_identifier END,
               account_display_name = CASE WHEN $11 THEN $12 ELSE COALESCE(c.account_display_name, $13) END,
               auth_method = $14, client_id = $15, client_secret_enc = $16, secret_last_4 = $17, config = $18
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
        .bind(set_identifier)
        .bind(identifier)
        .bind(set_display_name)
        .bind(display_name)
        .bind(provider_name)
        .bind(method)
        .bind(client_id)
        .bind(&client_secret)
        .bind(&shown)
        .bind(&config)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match &e {
            // The identifier is another of the owner's accounts'.
            sqlx::Error::Database(db) if db.is_unique_violation() => AccountError::Exists,
            _ => AccountError::Db(e),
        })?,
    };
    let account = Account::from_row(&row, ring)?;
    schedule::sync(&mut *tx, &id, integration_id, account.refresh_at).await?;
    if previous.is_some() {
        // The replaced token must not stay servable from a cache.
        crate::invalidations::record(tx, &account).await?;
    }
    Ok(Some(Stored { account, previous }))
}

/// A label as two bind values: whether to set it, and to what.
fn split(label: &Option<Option<String>>) -> (bool, Option<&str>) {
    (label.is_some(), label.as_ref().and_then(|v| v.as_deref()))
}
