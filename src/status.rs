//! `pipes status`: one operator's view gathered from PostgreSQL and the broker
//! — accounts by state per integration, what is due, the oldest overdue
//! account, queue depths and dead letters, failed webhook deliveries, invalid
//! integrations and the roles seen alive recently.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::config::Config;
use crate::time::rfc3339;

/// A role is "alive" if it reported within this window (it reports every 10 s).
const ALIVE_WINDOW_SECS: i64 = 60;

#[derive(Debug, Serialize)]
pub struct Status {
    pub generated_at: String,
    pub integrations: Vec<IntegrationStatus>,
    pub accounts: StateCounts,
    pub due: Due,
    pub queues: Queues,
    pub webhooks: WebhookStatus,
    pub invalid_integrations: Vec<String>,
    pub roles: Vec<RoleStatus>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StateCounts {
    pub connected: i64,
    pub needs_reauthorization: i64,
    pub disconnected: i64,
}

#[derive(Debug, Serialize)]
pub struct IntegrationStatus {
    pub slug: String,
    /// `user` or `organization`: a provider may have one integration of each.
    pub ownership: String,
    pub provider: String,
    /// `oauth`, `api_key` or `client_credentials`.
    pub auth_method: String,
    pub enabled: bool,
    pub state: String,
    pub accounts: StateCounts,
    /// Connected accounts whose last refresh attempt failed.
    pub accounts_with_refresh_failures: i64,
}

#[derive(Debug, Serialize)]
pub struct Due {
    pub now: i64,
    pub next_10_minutes: i64,
    pub oldest_overdue: Option<Overdue>,
}

#[derive(Debug, Serialize)]
pub struct Overdue {
    pub account_id: String,
    pub integration: String,
    pub refresh_at: String,
    pub overdue_seconds: i64,
}

#[derive(Debug, Serialize)]
pub struct Queues {
    /// `None` when the broker could not be asked; `error` says why.
    pub depths: Option<Vec<QueueDepth>>,
    pub dead_letters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QueueDepth {
    pub name: String,
    pub messages: u32,
}

#[derive(Debug, Serialize)]
pub struct WebhookStatus {
    pub failed_last_24h: i64,
    pub pending: i64,
    pub delivered_last_24h: i64,
}

#[derive(Debug, Serialize)]
pub struct RoleStatus {
    pub role: String,
    pub instance: String,
    pub last_seen: String,
    pub alive: bool,
}

fn add(counts: &mut StateCounts, state: &str, n: i64) {
    match state {
        "connected" => counts.connected += n,
        "needs_reauthorization" => counts.needs_reauthorization += n,
        _ => counts.disconnected += n,
    }
}

/// Gathers the status. Database errors fail the whole call; a broker that
/// cannot be reached only blanks the queue section.
pub async fn gather(db: &PgPool, config: &Config, now: DateTime<Utc>) -> Result<Status, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT i.slug, i.ownership, i.provider, i.auth_method, i.enabled, i.state, a.state AS account_state,
                count(a.id) AS n, count(a.id) FILTER (WHERE a.refresh_failures > 0 AND a.state = 'connected') AS failing
         FROM integrations i LEFT JOIN connected_accounts a ON a.integration_id = i.id
         GROUP BY i.slug, i.ownership, i.provider, i.auth_method, i.enabled, i.state, a.state
         ORDER BY i.slug, i.ownership DESC",
    )
    .fetch_all(db)
    .await?;
    let mut integrations: Vec<IntegrationStatus> = Vec::new();
    let mut accounts = StateCounts::default();
    for row in rows {
        let slug: String = row.get("slug");
        let ownership: String = row.get("ownership");
        if integrations.last().map(|i| i.slug != slug || i.ownership != ownership).unwrap_or(true) {
            integrations.push(IntegrationStatus {
                slug: slug.clone(),
                ownership,
                provider: row.get("provider"),
                auth_method: row.get("auth_method"),
                enabled: row.get("enabled"),
                state: row.get("state"),
                accounts: StateCounts::default(),
                accounts_with_refresh_failures: 0,
            });
        }
        let n: i64 = row.get("n");
        if let (Some(entry), Some(state)) = (integrations.last_mut(), row.get::<Option<String>, _>("account_state")) {
            add(&mut entry.accounts, &state, n);
            add(&mut accounts, &state, n);
            entry.accounts_with_refresh_failures += row.get::<i64, _>("failing");
        }
    }
    let invalid_integrations = integrations.iter().filter(|i| i.state == "invalid").map(|i| i.slug.clone()).collect();

    let due_row = sqlx::query(
        "SELECT count(*) FILTER (WHERE refresh_at <= $1) AS due_now,
                count(*) FILTER (WHERE refresh_at > $1 AND refresh_at <= $1 + interval '10 minutes') AS due_soon
         FROM refresh_schedule
         WHERE refresh_at <= $1 + interval '10 minutes'",
    )
    .bind(now)
    .fetch_one(db)
    .await?;
    let oldest = sqlx::query(
        "SELECT s.account_id AS id, i.slug, s.refresh_at FROM refresh_schedule s JOIN integrations i ON i.id = s.integration_id
         WHERE s.refresh_at <= $1
         ORDER BY s.refresh_at LIMIT 1",
    )
    .bind(now)
    .fetch_optional(db)
    .await?
    .map(|r| {
        let at: DateTime<Utc> = r.get("refresh_at");
        Overdue { account_id: r.get("id"), integration: r.get("slug"), refresh_at: rfc3339(at), overdue_seconds: (now - at).num_seconds() }
    });

    let hooks = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = 'failed' AND updated_at > $1 - interval '24 hours') AS failed,
                count(*) FILTER (WHERE status = 'pending') AS pending,
                count(*) FILTER (WHERE status = 'delivered' AND updated_at > $1 - interval '24 hours') AS delivered
         FROM webhook_deliveries",
    )
    .bind(now)
    .fetch_one(db)
    .await?;

    let roles = sqlx::query("SELECT role, instance, last_seen FROM role_heartbeats WHERE last_seen > $1 - interval '1 day' ORDER BY role, instance")
        .bind(now)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| {
            let seen: DateTime<Utc> = r.get("last_seen");
            RoleStatus {
                role: r.get("role"),
                instance: r.get("instance"),
                last_seen: rfc3339(seen),
                alive: (now - seen).num_seconds() <= ALIVE_WINDOW_SECS,
            }
        })
        .collect();

    Ok(Status {
        generated_at: rfc3339(now),
        integrations,
        accounts,
        due: Due { now: due_row.get("due_now"), next_10_minutes: due_row.get("due_soon"), oldest_overdue: oldest },
        queues: queue_depths(config).await,
        webhooks: WebhookStatus {
            failed_last_24h: hooks.get("failed"),
            pending: hooks.get("pending"),
            delivered_last_24h: hooks.get("delivered"),
        },
        invalid_integrations,
        roles,
    })
}

async fn queue_depths(config: &Config) -> Queues {
    let failed = |error: String| Queues { depths: None, dead_letters: None, error: Some(error) };
    let topology = crate::queues::topology(config);
    let broker = match tokio::time::timeout(
        Duration::from_secs(5),
        pipes_workers::Broker::connect(&config.amqp_url, "pipes-status"),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return failed(format!("broker unreachable: {e}")),
        Err(_) => return failed("broker unreachable: timed out".into()),
    };
    let mut depths = Vec::new();
    for name in topology.queue_names() {
        // A passive declare of a missing queue closes its channel: one channel per queue.
        let Ok(channel) = broker.channel().await else { return failed("broker channel unavailable".into()) };
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        match channel.queue_declare(name.as_str().into(), options, lapin::types::FieldTable::default()).await {
            Ok(q) => depths.push(QueueDepth { name, messages: q.message_count() }),
            Err(_) => depths.push(QueueDepth { name, messages: 0 }),
        }
        let _ = channel.close(200, "status".into()).await;
    }
    let dead_letters = depths.iter().filter(|d| d.name.ends_with(".dead")).map(|d| u64::from(d.messages)).sum();
    Queues { depths: Some(depths), dead_letters: Some(dead_letters), error: None }
}
