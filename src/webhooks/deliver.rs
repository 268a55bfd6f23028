//! The delivery worker: one signed POST per `DeliveryJob` attempt.
//!
//! 2xx → delivered. Anything else (status, timeout after 10 s, connection
//! error, a redirect — never followed) → the next backoff step through the
//! delay queues, at least as long as the receiver's `Retry-After`; after the
//! last step the delivery is `failed` and the job is dead-lettered. A target
//! that resolves to an internal address while those are not allowed fails at
//! once. Every attempt is recorded. The body and its event id are the same on
//! every attempt and replay, so receivers can deduplicate.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pipes_workers::{Broker, ConsumerError, Handler, JobContext, Outcome};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::{aad, KeyRing};
use crate::keys::columns;
use crate::metrics as m;
use crate::outbound as target;
use crate::queues::{self, DeliveryJob};
use crate::secret::Secret;
use crate::time::rfc3339;
use crate::webhooks::relay::REPLAY_HEADER;
use crate::webhooks::sign;

/// No answer within this long is a failed attempt (DESIGN §3.5).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is capped (the longest backoff step wins anyway).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The body every attempt sends (DESIGN §3.5), fields in this order.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub data: &'a Value,
    pub created_at: String,
}

/// The `Handler` of the `webhooks` queue.
pub struct DeliveryHandler {
    db: PgPool,
    ring: KeyRing,
    client: reqwest::Client,
    allow_private: bool,
    /// Handlings a job gets: the first try plus one per retry step.
    max_attempts: u32,
}

struct Loaded {
    status: String,
    event_id: String,
    event: String,
    data: Value,
    event_created_at: DateTime<Utc>,
    endpoint_id: String,
    endpoint_url: String,
    endpoint_enabled: bool,
    secret_enc: Vec<u8>,
}

/// What one attempt came to.
enum Attempt {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Never going to work as configured: no retries.
    Refused {
        error: String,
    },
}

impl DeliveryHandler {
    pub fn new(db: PgPool, config: &Config) -> reqwest::Result<Self> {
        Ok(DeliveryHandler {
            db,
            ring: config.encryption_keys.clone(),
            client: target::client(
                DELIVERY_TIMEOUT,
                config.allow_private_network,
                concat!("pipes-webhooks/", env!("CARGO_PKG_VERSION")),
            )?,
            allow_private: config.allow_private_network,
            max_attempts: u32::try_from(config.webhook_retry_delays.len()).unwrap_or(u32::MAX).saturating_add(1),
        })
    }

    async fn load(&self, delivery_id: &str) -> Result<Option<Loaded>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT d.status, ev.id AS event_id, COALESCE(d.event_name, ev.event) AS event, ev.data, ev.created_at AS event_created_at,
                    e.id AS endpoint_id, e.endpoint_url, e.status AS endpoint_status, e.secret_enc
             FROM webhook_deliveries d
             JOIN events ev ON ev.id = d.event_id
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.id = $1",
        )
        .bind(delivery_id)
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|r| Loaded {
            status: r.get("status"),
            event_id: r.get("event_id"),
            event: r.get("event"),
            data: r.get("data"),
            event_created_at: r.get("event_created_at"),
            endpoint_id: r.get("endpoint_id"),
            endpoint_url: r.get("endpoint_url"),
            endpoint_enabled: r.get::<&str, _>("endpoint_status") == "enabled",
            secret_enc: r.get("secret_enc"),
        }))
    }

    async fn attempt(&self, loaded: &Loaded, secret: &Secret) -> Attempt {
        let body = WebhookBody {
            id: &loaded.event_id,
            event: &loaded.event,
            data: &loaded.data,
            created_at: rfc3339(loaded.event_created_at),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return Attempt::Refused { error: "unserializable_event".into() };
        };
        let Ok(url) = url::Url::parse(&loaded.endpoint_url) else {
            return Attempt::Refused { error: "invalid_url".into() };
        };
        match target::resolve(&url, self.allow_private).await {
            Ok(_) => {}
            Err(target::TargetError::Unresolvable) => {
                return Attempt::Failed { status: None, error: Some("unresolvable_host".into()), retry_after: None }
            }
            Err(error) => return Attempt::Refused { error: error.code().into() },
        }
        let headers = match sign::headers(secret, &loaded.event_id, crate::time::now(), &body) {
            Ok(headers) => headers,
            Err(_) => return Attempt::Refused { error: "malformed_secret".into() },
        };
        let mut request = self.client.post(url).header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Attempt::Delivered { status: response.status().as_u16() },
            Ok(response) => Attempt::Failed {
                status: Some(response.status().as_u16()),
                error: None,
                retry_after: retry_after(response.headers(), crate::time::now()),
            },
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connection_failed"
                } else {
                    "request_failed"
                };
                Attempt::Failed { status: None, error: Some(kind.into()), retry_after: None }
            }
        }
    }

    /// Records one attempt and the delivery's new status, in one transaction.
    async fn record(
        &self,
        delivery_id: &str,
        status: &str,
        code: Option<u16>,
        latency: Duration,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let attempt: i32 = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(), status = $2, updated_at = now()
             WHERE id = $1 RETURNING attempts",
        )
        .bind(delivery_id)
        .bind(status)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5)")
            .bind(delivery_id)
            .bind(attempt)
            .bind(code.map(i32::from))
            .bind(i32::try_from(latency.as_millis()).unwrap_or(i32::MAX))
            .bind(error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

impl Handler for DeliveryHandler {
    type Job = DeliveryJob;

    async fn handle(&self, job: DeliveryJob, ctx: JobContext) -> Outcome {
        let DeliveryJob::V1 { delivery_id } = job;
        let retry = |reason: &str| Outcome::Retry { after: None, reason: reason.to_owned() };
        let loaded = match self.load(&delivery_id).await {
            Ok(Some(loaded)) => loaded,
            // The endpoint was deleted, or the relay's transaction rolled back after publishing.
            Ok(None) => return Outcome::Done,
            Err(error) => {
                tracing::warn!(%delivery_id, %error, "cannot load delivery");
                return retry("database_unavailable");
            }
        };
        // Delivered already (a duplicate job) or paused: nothing to send. A replay sends
        // again whatever happened before.
        let replay = ctx.headers.get(REPLAY_HEADER).is_some();
        if (loaded.status == "delivered" && !replay) || !loaded.endpoint_enabled {
            return Outcome::Done;
        }
        let secret = match self.ring.open_string(&loaded.secret_enc, aad(columns::WEBHOOK_SECRET, &loaded.endpoint_id))
        {
            Ok(secret) => Secret::new(secret),
            Err(error) => {
                tracing::error!(%delivery_id, endpoint_id = %loaded.endpoint_id, %error, "webhook secret does not decrypt");
                return retry("secret_unavailable");
            }
        };
        let started = Instant::now();
        let attempt = self.attempt(&loaded, &secret).await;
        let latency = started.elapsed();
        let last = ctx.attempt >= self.max_attempts;
        let (status, code, error, outcome) = match attempt {
            Attempt::Delivered { status } => ("delivered", Some(status), None, Outcome::Done),
            Attempt::Refused { error } => {
                let reason = format!("refused: {error}");
                ("failed", None, Some(error), Outcome::DeadLetter { reason })
            }
            Attempt::Failed { status, error, .. } if last => {
                let reason = format!("attempts exhausted: {}", describe(status, error.as_deref()));
                ("failed", status, error, Outcome::DeadLetter { reason })
            }
            Attempt::Failed { status, error, retry_after } => {
                let reason = describe(status, error.as_deref());
                ("pending", status, error, Outcome::Retry { after: retry_after, reason })
            }
        };
        if let Err(db_error) = self.record(&delivery_id, status, code, latency, error.as_deref()).await {
            tracing::warn!(%delivery_id, error = %db_error, "attempt not recorded; retrying the job");
            return retry("database_unavailable");
        }
        let outcome_label = match status {
            "delivered" => "delivered",
            "failed" => "failed",
            _ => "retried",
        };
        metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => outcome_label).increment(1);
        tracing::info!(%delivery_id, event_id = %loaded.event_id, attempt = ctx.attempt, outcome = outcome_label, status_code = ?code, "webhook attempt");
        outcome
    }
}

fn describe(status: Option<u16>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "failed".to_owned(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &http::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
            (at - now).to_std().ok()?
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Consumes the `webhooks` queue until `cancel` fires (worker role).
pub async fn run_consumer(
    db: PgPool,
    broker: Broker,
    config: &Config,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let handler = DeliveryHandler::new(db, config)?;
    let topology = queues::topology(config);
    pipes_workers::run_consumer(broker, topology, queues::WEBHOOKS, handler, config.worker_concurrency, cancel)
        .await
        .map_err(|e: ConsumerError| anyhow::anyhow!(e))
}
