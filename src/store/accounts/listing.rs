//! Reads over many accounts: a page of what the token cache should hold, and an
//! owner's accounts without their tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Row};

use super::{Account, AccountError, AccountState, ConnectionRole, COLUMNS};
use crate::auth_method::AuthMethod;
use crate::crypto::KeyRing;
use crate::ids::{AccountId, IntegrationId};
use crate::owner::Owner;
use crate::policy;
use crate::store::schedule::REFRESH_AT_OF_C;

/// Up to `limit` connected accounts with an id after `after`, in id order, whose
/// access token may be served at `now` ([`policy::servable`]): a page of what the
/// token cache should hold.
#[tracing::instrument(level = "debug", skip_all, fields(after = %after))]
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
        "SELECT {COLUMNS}, {REFRESH_AT_OF_C} AS refresh_at FROM connected_accounts c
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

/// An account without its tokens: what a listing of an owner's accounts shows.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    pub id: AccountId,
    pub integration_id: IntegrationId,
    pub owner: Owner,
    pub role: ConnectionRole,
    pub account_identifier: Option<String>,
    pub account_display_name: Option<String>,
    pub established_by_user_id: Option<String>,
    pub state: AccountState,
    pub auth_method: AuthMethod,
    /// A client-credentials account's client id.
    pub client_id: Option<String>,
    pub secret_last_4: Option<String>,
    pub scopes: Vec<String>,
    pub reauthorization_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every account of an owner, without a token read or decrypted.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn summaries_for_owner(db: impl PgExecutor<'_>, owner: &Owner) -> Result<Vec<AccountSummary>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.id, c.integration_id, c.connection_role, c.account_identifier, c.account_display_name,
                c.established_by_user_id, c.state, c.auth_method, c.client_id, c.secret_last_4, c.scopes,
                c.reauthorization_reason, c.created_at, c.updated_at
         FROM connected_accounts c WHERE {} ORDER BY c.id",
        super::owner_filter(owner, 1)
    )))
    .bind(owner.user_id())
    .bind(owner.organization_id())
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| AccountSummary {
            id: r.get("id"),
            integration_id: r.get("integration_id"),
            owner: owner.clone(),
            role: ConnectionRole::parse(r.get("connection_role")),
            account_identifier: r.get("account_identifier"),
            account_display_name: r.get("account_display_name"),
            established_by_user_id: r.get("established_by_user_id"),
            state: AccountState::parse(r.get("state")).unwrap_or(AccountState::Disconnected),
            auth_method: AuthMethod::parse(r.get("auth_method")).unwrap_or(AuthMethod::OAuth),
            client_id: r.get("client_id"),
            secret_last_4: r.get("secret_last_4"),
            scopes: r.get("scopes"),
            reauthorization_reason: r.get("reauthorization_reason"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        })
        .collect())
}
