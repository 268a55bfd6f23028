//! Webhook endpoints in PostgreSQL: the URL, the event filter, enabled or
//! disabled, and the signing secret (AES-GCM under the key ring, bound to its
//! row; shown in clear only in the create response).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::crypto::{aad, CryptoError, KeyRing};
use crate::ids::IdKind;
use crate::keys::columns;
use crate::secret::Secret;
use crate::time::rfc3339;
use crate::webhooks::sign;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Enabled => "enabled",
            EndpointStatus::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(EndpointStatus::Enabled),
            "disabled" => Some(EndpointStatus::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub endpoint_url: String,
    /// Debug prints `***`.
    pub secret: Secret,
    pub status: EndpointStatus,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("webhook endpoint {id}: secret does not decrypt")]
    Crypto {
        id: String,
        #[source]
        source: CryptoError,
    },
}

/// A page request, as the list routes take it.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: i64,
    /// Newest first (the SDKs' default for lists of objects).
    pub descending: bool,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// One page and the cursors around it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub before: Option<String>,
    pub after: Option<String>,
}

const COLUMNS: &str = "id, endpoint_url, secret_enc, status, events, created_at, updated_at";

impl Endpoint {
    fn from_row(row: &PgRow, ring: &KeyRing) -> Result<Self, EndpointError> {
        let id: String = row.get("id");
        let sealed: Vec<u8> = row.get("secret_enc");
        let secret = ring
            .open_string(&sealed, aad(columns::WEBHOOK_SECRET, &id))
            .map_err(|source| EndpointError::Crypto { id: id.clone(), source })?;
        Ok(Endpoint {
            endpoint_url: row.get("endpoint_url"),
            secret: Secret::new(secret),
            status: EndpointStatus::parse(row.get::<&str, _>("status")).unwrap_or(EndpointStatus::Disabled),
            events: row.get("events"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            id,
        })
    }

    /// The wire object (DESIGN §3.5). The secret in clear only when `reveal`
    /// (the create response); otherwise a redacted form, so SDK models that
    /// require the field still parse.
    pub fn to_json(&self, reveal: bool) -> Value {
        let secret = if reveal { self.secret.expose().to_owned() } else { sign::redact(&self.secret) };
        json!({
            "object": "webhook_endpoint",
            "id": self.id,
            "endpoint_url": self.endpoint_url,
            "secret": secret,
            "status": self.status.as_str(),
            "events": self.events,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }

    pub fn wants(&self, event: &str) -> bool {
        self.status == EndpointStatus::Enabled && self.events.iter().any(|e| e == event)
    }
}

/// Creates an endpoint with a fresh secret.
pub async fn create(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    url: &str,
    events: &[String],
) -> Result<Endpoint, EndpointError> {
    let id = IdKind::WebhookEndpoint.new_id();
    let secret = sign::generate_secret();
    let sealed = ring
        .seal_str(secret.expose(), aad(columns::WEBHOOK_SECRET, &id))
        .map_err(|source| EndpointError::Crypto { id: id.clone(), source })?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (id, endpoint_url, secret_enc, events) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    )))
    .bind(&id)
    .bind(url)
    .bind(sealed)
    .bind(events)
    .fetch_one(db)
    .await?;
    Endpoint::from_row(&row, ring)
}

pub async fn get(db: impl PgExecutor<'_>, ring: &KeyRing, id: &str) -> Result<Option<Endpoint>, EndpointError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| Endpoint::from_row(&r, ring)).transpose()
}

/// Changes what is given; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub endpoint_url: Option<String>,
    pub status: Option<EndpointStatus>,
    pub events: Option<Vec<String>>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    id: &str,
    patch: &EndpointPatch,
) -> Result<Option<Endpoint>, EndpointError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET
             endpoint_url = COALESCE($2, endpoint_url),
             status = COALESCE($3, status),
             events = COALESCE($4, events),
             updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(patch.endpoint_url.as_deref())
    .bind(patch.status.map(EndpointStatus::as_str))
    .bind(patch.events.as_deref())
    .fetch_optional(db)
    .await?;
    row.map(|r| Endpoint::from_row(&r, ring)).transpose()
}

/// Deletes an endpoint (and, by cascade, its delivery log). Returns whether it existed.
pub async fn delete(db: impl PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id).execute(db).await?;
    Ok(done.rows_affected() > 0)
}

/// A page of endpoints ordered by id (ULIDs: creation order).
pub async fn list(
    db: impl PgExecutor<'_>,
    ring: &KeyRing,
    page: &PageRequest,
) -> Result<Page<Endpoint>, EndpointError> {
    // `before` walks back towards the start of the list, so it reads in the
    // opposite direction and the rows are reversed afterwards.
    let backwards = page.before.is_some();
    let ascending = page.descending == backwards;
    let cursor = page.before.as_deref().or(page.after.as_deref());
    let cmp = if ascending { ">" } else { "<" };
    let dir = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE ($1::text IS NULL OR id {cmp} $1) ORDER BY id {dir} LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(cursor).bind(page.limit + 1).fetch_all(db).await?;
    let mut data = rows.iter().map(|r| Endpoint::from_row(r, ring)).collect::<Result<Vec<_>, _>>()?;
    let more = data.len() as i64 > page.limit;
    data.truncate(page.limit.max(0) as usize);
    if backwards {
        data.reverse();
    }
    let first = data.first().map(|e| e.id.clone());
    let last = data.last().map(|e| e.id.clone());
    let (before, after) = if backwards {
        (if more { first } else { None }, last)
    } else {
        (if cursor.is_some() { first } else { None }, if more { last } else { None })
    };
    Ok(Page { data, before, after })
}

/// Every endpoint, oldest first (for the CLI).
pub async fn all(db: impl PgExecutor<'_>, ring: &KeyRing) -> Result<Vec<Endpoint>, EndpointError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM webhook_endpoints ORDER BY id")))
        .fetch_all(db)
        .await?;
    rows.iter().map(|r| Endpoint::from_row(r, ring)).collect()
}
