//! Integration writes, for the admin API and the CLI: insert, replace,
//! delete (with a `disconnected` event per removed account, in the same
//! transaction) and the cursor-paged list.

use sqlx::{PgPool, Row};

use super::{Integration, IntegrationError, COLUMNS, SELECT};
use crate::crypto::{aad, CryptoError, KeyRing};
use crate::events::{self, EventKind};
use crate::ids::{AccountId, IdKind};
use crate::keys::columns;
use crate::owner::{Owner, Ownership};
use crate::provisioning::IntegrationDraft;
use crate::store::accounts::{Account, AccountState, ConnectionRole};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Integration(#[from] IntegrationError),
    #[error("the client secret could not be encrypted: {0}")]
    Crypto(#[from] CryptoError),
    #[error("an integration with this slug and ownership already exists")]
    SlugTaken,
}

fn seal_secret(ring: &KeyRing, id: &str, draft: &IntegrationDraft) -> Result<Option<Vec<u8>>, CryptoError> {
    draft.client_secret.as_ref().map(|s| ring.seal_str(s.expose(), aad(columns::CLIENT_SECRET, id))).transpose()
}

fn custom_json(draft: &IntegrationDraft) -> Option<serde_json::Value> {
    draft.custom_provider.as_ref().and_then(|c| serde_json::to_value(c).ok())
}

fn settings_json(draft: &IntegrationDraft) -> serde_json::Value {
    serde_json::to_value(&draft.settings).unwrap_or_else(|_| serde_json::json!({}))
}

/// Stores a new integration; its client secret is sealed to the new row.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert(db: &PgPool, ring: &KeyRing, draft: &IntegrationDraft) -> Result<Integration, ProvisionError> {
    let id = IdKind::Integration.new_id();
    let sealed = seal_secret(ring, &id, draft)?;
    let redacted = crate::provisioning::redact(draft.client_secret.as_ref().map(|s| s.expose()));
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO integrations (id, slug, provider, description, enabled, scopes, client_id, client_secret_enc,
            redacted_secret, custom_provider, settings, ownership, multiple_connections, auth_method, credentials_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (slug, ownership) DO NOTHING
         RETURNING {}",
        COLUMNS
    )))
    .bind(&id)
    .bind(&draft.slug)
    .bind(&draft.provider)
    .bind(&draft.description)
    .bind(draft.enabled)
    .bind(&draft.scopes)
    .bind(&draft.client_id)
    .bind(sealed)
    .bind(redacted)
    .bind(custom_json(draft))
    .bind(settings_json(draft))
    .bind(draft.ownership.as_str())
    .bind(draft.multiple_connections)
    .bind(draft.auth_method.as_str())
    .bind(draft.credentials_type.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(ProvisionError::SlugTaken)?;
    Ok(Integration::from_row(&row, ring)?)
}

/// Replaces a stored integration with a validated draft. `None` if it is gone.
#[tracing::instrument(level = "debug", skip_all, fields(integration_id = %id))]
pub async fn update(
    db: &PgPool,
    ring: &KeyRing,
    id: &str,
    draft: &IntegrationDraft,
) -> Result<Option<Integration>, ProvisionError> {
    let sealed = seal_secret(ring, id, draft)?;
    let redacted = crate::provisioning::redact(draft.client_secret.as_ref().map(|s| s.expose()));
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE integrations SET description = $2, enabled = $3, scopes = $4, client_id = $5,
            client_secret_enc = $6, redacted_secret = $7, custom_provider = $8, settings = $9,
            state = CASE WHEN $10 THEN 'valid' ELSE state END,
            state_reason = CASE WHEN $10 THEN NULL ELSE state_reason END,
            multiple_connections = $11, updated_at = now()
         WHERE id = $1
         RETURNING {}",
        COLUMNS
    )))
    .bind(id)
    .bind(&draft.description)
    .bind(draft.enabled)
    .bind(&draft.scopes)
    .bind(&draft.client_id)
    .bind(sealed)
    .bind(redacted)
    .bind(custom_json(draft))
    .bind(settings_json(draft))
    .bind(draft.credentials_changed)
    .bind(draft.multiple_connections)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Integration::from_row(&r, ring)).transpose()?)
}

/// Deletes an integration with its accounts and pending states; emits one
/// `disconnected` event per account. Returns how many accounts went, or `None`.
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn delete(db: &PgPool, integration: &Integration) -> Result<Option<u64>, ProvisionError> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query(
        "DELETE FROM connected_accounts WHERE integration_id = $1
         RETURNING id, user_id, organization_id, connection_role, account_identifier, account_display_name,
                   established_by_user_id, auth_method, secret_last_4, scopes, created_at, updated_at",
    )
    .bind(&integration.id)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<AccountId> = rows.iter().map(|row| row.get("id")).collect();
    crate::store::schedule::clear(&mut *tx, &ids).await?;
    for row in &rows {
        let account = Account {
            id: row.get("id"),
            integration_id: integration.id.clone(),
            owner: Owner::from_columns(row.get("user_id"), row.get("organization_id"))
                .ok_or_else(|| sqlx::Error::Protocol("a connected account without an owner".into()))?,
            role: ConnectionRole::parse(row.get("connection_role")),
            account_identifier: row.get("account_identifier"),
            account_display_name: row.get("account_display_name"),
            established_by_user_id: row.get("established_by_user_id"),
            state: AccountState::Disconnected,
            auth_method: crate::auth_method::AuthMethod::parse(row.get("auth_method"))
                .unwrap_or(crate::auth_method::AuthMethod::OAuth),
            access_token: None,
            refresh_token: None,
            client: None,
            secret_last_4: row.get("secret_last_4"),
            config: Default::default(),
            expires_at: None,
            refresh_at: None,
            scopes: row.get("scopes"),
            token_version: 0,
            last_refresh_error: None,
            reauthorization_reason: None,
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        };
        let data = events::account_data(&account, integration, AccountState::Disconnected.as_str());
        events::emit(&mut tx, EventKind::Disconnected, &data).await?;
    }
    let gone = sqlx::query("DELETE FROM integrations WHERE id = $1").bind(&integration.id).execute(&mut *tx).await?;
    crate::store::organizations::forget_unused(&mut *tx, &integration.slug).await?;
    tx.commit().await?;
    Ok((gone.rows_affected() == 1).then_some(rows.len() as u64))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// Where a page starts: after or before an integration id, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Start,
    After(String),
    Before(String),
}

/// One page and the cursors to its neighbours (`None` at either end).
#[derive(Debug)]
pub struct Page {
    pub data: Vec<Integration>,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Lists integrations by id (ULIDs, so creation order), `limit` per page.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_page(
    db: &PgPool,
    ring: &KeyRing,
    limit: i64,
    cursor: &Cursor,
    order: Order,
    ownership: Option<Ownership>,
) -> Result<Page, ProvisionError> {
    // Paging backwards reads in the opposite direction, then flips the page.
    let backwards = matches!(cursor, Cursor::Before(_));
    let sql = match (order, backwards) {
        (Order::Desc, false) => "($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        (Order::Asc, false) => "($1::text IS NULL OR id > $1) ORDER BY id ASC LIMIT $2",
        (Order::Desc, true) => "id > $1 ORDER BY id ASC LIMIT $2",
        (Order::Asc, true) => "id < $1 ORDER BY id DESC LIMIT $2",
    };
    let key = match cursor {
        Cursor::Start => None,
        Cursor::After(id) | Cursor::Before(id) => Some(id.as_str()),
    };
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} WHERE ($3::text IS NULL OR ownership = $3) AND {sql}")))
            .bind(key)
            .bind(limit + 1)
            .bind(ownership.map(Ownership::as_str))
            .fetch_all(db)
            .await?;
    let more = rows.len() as i64 > limit;
    let mut data =
        rows.iter().take(limit as usize).map(|r| Integration::from_row(r, ring)).collect::<Result<Vec<_>, _>>()?;
    if backwards {
        data.reverse();
    }
    let first = data.first().map(|i| i.id.to_string());
    let last = data.last().map(|i| i.id.to_string());
    let (before, after) = match cursor {
        Cursor::Start => (None, if more { last } else { None }),
        Cursor::After(_) => (first, if more { last } else { None }),
        Cursor::Before(_) => (if more { first } else { None }, last),
    };
    Ok(Page { data, before, after })
}

/// Every integration (the CLI's list), oldest first.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn all(db: &PgPool, ring: &KeyRing) -> Result<Vec<Integration>, ProvisionError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY id"))).fetch_all(db).await?;
    Ok(rows.iter().map(|r| Integration::from_row(r, ring)).collect::<Result<Vec<_>, _>>()?)
}

/// How many accounts an integration has, by state (for `pipes integrations show`).
pub async fn account_counts(db: &PgPool, integration_id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, count(*) FROM connected_accounts WHERE integration_id = $1 GROUP BY state ORDER BY state",
    )
    .bind(integration_id)
    .fetch_all(db)
    .await
}
