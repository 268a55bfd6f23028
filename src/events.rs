//! Events (DESIGN §3.5) written to the outbox in the same transaction as the
//! change they describe; the scheduler relays them to webhook deliveries.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::ids::IdKind;
use crate::owner::Owner;
use crate::store::accounts::Account;
use crate::store::integrations::Integration;
use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "pipes.connected_account.connected")]
    Connected,
    #[serde(rename = "pipes.connected_account.disconnected")]
    Disconnected,
    #[serde(rename = "pipes.connected_account.reauthorization_needed")]
    ReauthorizationNeeded,
    #[serde(rename = "pipes.connected_account.connection_failed")]
    ConnectionFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 4] =
        [EventKind::Connected, EventKind::Disconnected, EventKind::ReauthorizationNeeded, EventKind::ConnectionFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connected => "pipes.connected_account.connected",
            EventKind::Disconnected => "pipes.connected_account.disconnected",
            EventKind::ReauthorizationNeeded => "pipes.connected_account.reauthorization_needed",
            EventKind::ConnectionFailed => "pipes.connected_account.connection_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The `data` of the three account events. `state` is the account's state
/// after the change (`disconnected` for a disconnect).
pub fn account_data(account: &Account, integration: &Integration, state: &str) -> Value {
    json!({
        "object": "connected_account",
        "id": account.id,
        "data_integration_id": integration.id,
        "provider_slug": integration.slug,
        "connection_role": "compatibility",
        "user_id": account.owner.user_id(),
        "organization_id": account.owner.organization_id(),
        "scopes": account.scopes,
        "auth_method": "oauth",
        "state": state,
        "established_by_user_id": account.established_by_user_id,
        "created_at": rfc3339(account.created_at),
        "updated_at": rfc3339(account.updated_at),
    })
}

/// Why a connection attempt failed, for `connection_failed`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFailure {
    /// Our code: `access_denied`, `exchange_failed`, `provider_error`, …
    pub error_code: String,
    pub error_reason: String,
    pub provider_error: Option<String>,
    pub provider_error_description: Option<String>,
}

pub fn connection_failed_data(
    integration: &Integration,
    owner: &Owner,
    failure: &ConnectionFailure,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "object": "connection_failed",
        "data_integration_id": integration.id,
        "provider_slug": integration.slug,
        "user_id": owner.user_id(),
        "organization_id": owner.organization_id(),
        "error_code": failure.error_code,
        "error_reason": failure.error_reason,
        "provider_error": failure.provider_error,
        "provider_error_description": failure.provider_error_description,
        "created_at": rfc3339(now),
    })
}

/// Writes an event to the outbox; call it inside the transaction of the change.
#[tracing::instrument(level = "debug", skip_all, fields(event = kind.as_str()))]
pub async fn emit(tx: &mut sqlx::PgConnection, kind: EventKind, data: &Value) -> Result<String, sqlx::Error> {
    let id = IdKind::Event.new_id();
    sqlx::query("INSERT INTO events (id, event, data) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(kind.as_str())
        .bind(data)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// Where a stored event sits in the outbox (its `seq`), for a list cursor.
pub async fn seq_of(db: &sqlx::PgPool, id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM events WHERE id = $1").bind(id).fetch_optional(db).await
}

/// Which stored events a list asks for.
pub struct Filter<'a> {
    /// Event types; empty: every type.
    pub kinds: &'a [String],
    /// Events after (ascending) or before (descending) this place in the outbox.
    pub cursor: Option<i64>,
    pub ascending: bool,
    pub range_start: Option<DateTime<Utc>>,
    pub range_end: Option<DateTime<Utc>>,
    pub organization_id: Option<&'a str>,
}

/// A stored event.
pub struct StoredEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` stored events matching `filter`, in outbox order (its direction).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn page(db: &sqlx::PgPool, filter: &Filter<'_>, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    use sqlx::Row;
    let (cmp, dir) = if filter.ascending { (">", "ASC") } else { ("<", "DESC") };
    let sql = format!(
        "SELECT id, event, data, created_at FROM events
         WHERE (cardinality($1::text[]) = 0 OR event = ANY($1))
           AND ($2::bigint IS NULL OR seq {cmp} $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
           AND ($5::text IS NULL OR data->>'organization_id' = $5)
         ORDER BY seq {dir} LIMIT $6"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(filter.kinds)
        .bind(filter.cursor)
        .bind(filter.range_start)
        .bind(filter.range_end)
        .bind(filter.organization_id)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredEvent {
            id: r.get("id"),
            event: r.get("event"),
            data: r.get("data"),
            created_at: r.get("created_at"),
        })
        .collect())
}
