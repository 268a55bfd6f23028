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

/// The two spellings of the event names: `pipes.connected_account.*`, the first, and
/// `pipes.account_connection.*`, the SDKs' newer one. An event is stored once, under its
/// kind's [`EventKind::as_str`]; each webhook endpoint receives it under the name it
/// subscribed to (`crate::webhooks::relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ConnectedAccount,
    AccountConnection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    Connected,
    Disconnected,
    ReauthorizationNeeded,
    ConnectionFailed,
    /// A connect flow adding another account (`connection_intent: add`) failed. Only the
    /// newer family names it; the first calls it `connection_failed`.
    AddFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Connected,
        EventKind::Disconnected,
        EventKind::ReauthorizationNeeded,
        EventKind::ConnectionFailed,
        EventKind::AddFailed,
    ];

    /// Every name an endpoint may subscribe to, or list events by.
    pub const NAMES: [&'static str; 9] = [
        "pipes.connected_account.connected",
        "pipes.connected_account.disconnected",
        "pipes.connected_account.reauthorization_needed",
        "pipes.connected_account.connection_failed",
        "pipes.account_connection.connected",
        "pipes.account_connection.disconnected",
        "pipes.account_connection.reauthorization_needed",
        "pipes.account_connection.connection_failed",
        "pipes.account_connection.add_failed",
    ];

    /// The kind's name in `family`.
    pub fn name(self, family: Family) -> &'static str {
        match (self, family) {
            (EventKind::Connected, Family::ConnectedAccount) => "pipes.connected_account.connected",
            (EventKind::Disconnected, Family::ConnectedAccount) => "pipes.connected_account.disconnected",
            (EventKind::ReauthorizationNeeded, Family::ConnectedAccount) => {
                "pipes.connected_account.reauthorization_needed"
            }
            (EventKind::ConnectionFailed | EventKind::AddFailed, Family::ConnectedAccount) => {
                "pipes.connected_account.connection_failed"
            }
            (EventKind::Connected, Family::AccountConnection) => "pipes.account_connection.connected",
            (EventKind::Disconnected, Family::AccountConnection) => "pipes.account_connection.disconnected",
            (EventKind::ReauthorizationNeeded, Family::AccountConnection) => {
                "pipes.account_connection.reauthorization_needed"
            }
            (EventKind::ConnectionFailed, Family::AccountConnection) => "pipes.account_connection.connection_failed",
            (EventKind::AddFailed, Family::AccountConnection) => "pipes.account_connection.add_failed",
        }
    }

    /// The name the event is stored under: the first family's, except for `add_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AddFailed => self.name(Family::AccountConnection),
            kind => kind.name(Family::ConnectedAccount),
        }
    }

    /// The kind stored as `stored` ([`Self::as_str`]).
    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == stored)
    }

    /// True when `name` is one of [`Self::NAMES`].
    pub fn known(name: &str) -> bool {
        Self::NAMES.contains(&name)
    }

    /// The name an event of this kind is shown under to someone who asked for `names`
    /// (a subscription, or a list filter): the newer family's when they asked for it,
    /// else the first's; with no names at all, the stored one.
    pub fn shown_as<S: AsRef<str>>(self, names: &[S]) -> &'static str {
        let asked = |family| names.iter().any(|n| n.as_ref() == self.name(family));
        if names.is_empty() {
            self.as_str()
        } else if asked(Family::AccountConnection) {
            self.name(Family::AccountConnection)
        } else {
            self.name(Family::ConnectedAccount)
        }
    }

    /// The kinds whose events a subscription to `name` receives.
    pub fn received_by(name: &str) -> impl Iterator<Item = EventKind> + '_ {
        Self::ALL
            .into_iter()
            .filter(move |k| k.name(Family::ConnectedAccount) == name || k.name(Family::AccountConnection) == name)
    }
}

/// The `data` of the three account events. `state` is the account's state
/// after the change (`disconnected` for a disconnect).
pub fn account_data(account: &Account, integration: &Integration, state: &str) -> Value {
    let mut data = json!({
        "object": "connected_account",
        "id": account.id,
        "data_integration_id": integration.id,
        "provider_slug": integration.slug,
        "connection_role": account.role.as_str(),
        "account_identifier": account.account_identifier,
        "account_display_name": account.account_display_name,
        "user_id": account.owner.user_id(),
        "organization_id": account.owner.organization_id(),
        "scopes": account.scopes,
        "auth_method": account.auth_method.as_str(),
        "state": state,
        "established_by_user_id": account.established_by_user_id,
        "created_at": rfc3339(account.created_at),
        "updated_at": rfc3339(account.updated_at),
    });
    if account.auth_method == crate::auth_method::AuthMethod::ApiKey {
        data["api_key_last_4"] = json!(account.secret_last_4);
    }
    data
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
    /// Event names ([`EventKind::NAMES`]); empty: every event.
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
    let stored: Vec<&str> =
        filter.kinds.iter().flat_map(|name| EventKind::received_by(name)).map(EventKind::as_str).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&stored)
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
