//! The outbox relay (scheduler role) and replays (CLI).
//!
//! The relay claims unrelayed events in order (`FOR NO KEY UPDATE SKIP LOCKED`, so
//! any number of schedulers can run) and holds that claim while it creates
//! one `webhook_deliveries` row per (event, enabled endpoint that wants it),
//! publishes one confirmed `DeliveryJob` per delivery not yet attempted, and
//! then marks the events relayed. The delivery rows are committed before
//! their jobs are published, so a worker never looks for a row it cannot see
//! yet. If publishing fails, the claim rolls back and the next pass publishes
//! the same (still unattempted) deliveries again; a job published twice is
//! harmless, as the handler skips delivered deliveries.
//!
//! Replays publish jobs marked with [`REPLAY_HEADER`], which the handler sends
//! even when the delivery succeeded before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipes_workers::{within_shutdown_grace, Broker, Headers, PublishError, Publisher, Topology};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{EventKind, Family};
use crate::ids::IdKind;
use crate::queues::{self, DeliveryJob};

/// Header on replayed jobs: send even if delivered before.
pub const REPLAY_HEADER: &str = "x-pipes-replay";

/// Events claimed per transaction.
const BATCH: i64 = 100;
/// Pause between passes when the outbox is empty.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Pause after a failed pass (database or broker down).
const BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Broker(#[from] pipes_workers::BrokerError),
    #[error(transparent)]
    Topology(#[from] pipes_workers::TopologyError),
}

/// Relays the outbox and re-sends deliveries. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    db: PgPool,
    broker: Broker,
    publisher: Publisher,
    topology: Topology,
    queue: String,
    declared: Arc<AtomicBool>,
}

impl Relay {
    pub fn new(db: PgPool, broker: &Broker, config: &Config) -> Self {
        let topology = queues::topology(config);
        Relay {
            db,
            broker: broker.clone(),
            publisher: Publisher::new(broker),
            queue: topology.work_queue(queues::WEBHOOKS),
            topology,
            declared: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs passes until `cancel` fires. A pass in progress then gets the shutdown grace
    /// to finish; one still waiting for a silent broker after that is dropped (its claim
    /// rolls back and the next relay publishes the same deliveries; a job twice is harmless).
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let Some(pass) = within_shutdown_grace(&cancel, self.relay_once()).await else { return };
            let pause = match pass {
                Ok(n) if n as i64 >= BATCH => Duration::ZERO,
                Ok(_) => POLL_EVERY,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay pass failed; retrying");
                    BACKOFF
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One pass: relays up to a batch of events; returns how many.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.db.begin().await?;
        let events = sqlx::query(
            "SELECT id, event FROM events WHERE relayed_at IS NULL ORDER BY seq LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(events.len());
        for row in &events {
            let event_id: String = row.get("id");
            let event: String = row.get("event");
            // On the pool, not in the claim: committed before any job names them. (The
            // claim is NO KEY UPDATE so these inserts' foreign-key checks can share the row.)
            create_deliveries(&self.db, &event_id, &event).await?;
            ids.push(event_id);
        }
        let deliveries: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE event_id = ANY($1) AND status = 'pending' AND attempts = 0 ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.db)
        .await?;
        self.publish_all(&deliveries, false).await?;
        sqlx::query("UPDATE events SET relayed_at = now() WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
        tx.commit().await?;
        if !deliveries.is_empty() {
            tracing::debug!(events = ids.len(), deliveries = deliveries.len(), "relayed events");
        }
        Ok(ids.len())
    }

    /// Re-sends `event_id` to every enabled endpoint that wants it (creating
    /// deliveries for endpoints added since). The event keeps its id. Returns
    /// how many deliveries were queued, or `None` if there is no such event.
    pub async fn replay_event(&self, event_id: &str) -> Result<Option<usize>, RelayError> {
        let event: Option<String> = sqlx::query_scalar("SELECT event FROM events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(&self.db)
            .await?;
        let Some(event) = event else { return Ok(None) };
        create_deliveries(&self.db, event_id, &event).await?;
        let names = subscription_names(&event);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.event_id = $1 AND e.status = 'enabled' AND e.events && $2 ORDER BY d.id",
        )
        .bind(event_id)
        .bind(&names)
        .fetch_all(&self.db)
        .await?;
        self.publish_all(&ids, true).await?;
        Ok(Some(ids.len()))
    }

    /// Re-sends every delivery that failed within `since` (to endpoints still enabled).
    pub async fn replay_failed_since(&self, since: Duration) -> Result<usize, RelayError> {
        let since = chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX);
        let cutoff = crate::time::now().checked_sub_signed(since).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'failed' AND d.updated_at >= $1 AND e.status = 'enabled' ORDER BY d.id",
        )
        .bind(cutoff)
        .fetch_all(&self.db)
        .await?;
        self.publish_all(&ids, true).await?;
        Ok(ids.len())
    }

    async fn publish_all(&self, delivery_ids: &[String], replay: bool) -> Result<(), RelayError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        // The work queue must exist before a mandatory publish can route; a worker
        // declares it too, but the scheduler may start first.
        if !self.declared.load(Ordering::Acquire) {
            self.topology.declare(&self.broker.channel().await?).await?;
            self.declared.store(true, Ordering::Release);
        }
        for id in delivery_ids {
            let job = DeliveryJob::V1 { delivery_id: id.clone() };
            let headers = if replay { Headers::new().with(REPLAY_HEADER, "1") } else { Headers::new() };
            if let Err(error) = self.publisher.publish(&self.queue, &job, headers).await {
                self.declared.store(false, Ordering::Release);
                return Err(error.into());
            }
        }
        Ok(())
    }
}

/// The names a subscription to an event stored as `event` may use (both families').
fn subscription_names(event: &str) -> Vec<&str> {
    match EventKind::parse(event) {
        Some(kind) => vec![kind.name(Family::ConnectedAccount), kind.name(Family::AccountConnection)],
        None => vec![event],
    }
}

/// Creates the missing deliveries of one event, each named as its endpoint subscribed
/// to it ([`EventKind::shown_as`]); returns the new delivery ids.
async fn create_deliveries(db: &PgPool, event_id: &str, event: &str) -> Result<Vec<String>, sqlx::Error> {
    let endpoints: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT id, events FROM webhook_endpoints WHERE status = 'enabled' AND events && $1 ORDER BY id",
    )
    .bind(subscription_names(event))
    .fetch_all(db)
    .await?;
    let kind = EventKind::parse(event);
    let mut created = Vec::with_capacity(endpoints.len());
    for (endpoint_id, subscribed) in endpoints {
        let name = kind.map_or(event, |k| k.shown_as(&subscribed));
        let id: Option<String> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, event_name) VALUES ($1, $2, $3, $4)
             ON CONFLICT (event_id, endpoint_id) DO NOTHING RETURNING id",
        )
        .bind(IdKind::WebhookDelivery.new_id())
        .bind(event_id)
        .bind(&endpoint_id)
        .bind(name)
        .fetch_optional(db)
        .await?;
        created.extend(id);
    }
    Ok(created)
}
