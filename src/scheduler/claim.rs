//! Claiming due accounts and publishing their refresh jobs (DESIGN §2.2).
//!
//! A claim marks a batch of due accounts `enqueued_at = now()` in one statement with
//! `FOR UPDATE SKIP LOCKED`, so two schedulers never claim the same account, and commits
//! before publishing (holding row locks across broker round trips would stall the
//! workers' leases). Only confirmed jobs count; the accounts whose publish failed are
//! released again at once. A job lost after its confirm (a broker losing its disk) makes
//! its account due again after `PIPES_REQUEUE_AFTER`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use pipes_workers::{Headers, PublishError};
use sqlx::{PgPool, Row};

use super::Tick;
use crate::metrics as m;
use crate::queues::{RefreshJob, REFRESH};

/// Accounts claimed per statement. Large, because the planner reads every due entry at
/// or after the cursor (a bitmap scan, then a sort) whatever the limit: few big claims
/// read each due row about once per tick, many small ones read them over and over.
pub const BATCH: i64 = 10_000;
/// Publishes awaiting their confirm at once (confirms are pipelined on one channel).
const PUBLISH_CONCURRENCY: usize = 128;

/// The claim. It walks `connected_accounts_due_idx` (its predicate is repeated here so
/// the planner can use the partial index) in `refresh_at` order from a cursor (`$3`,
/// the last `refresh_at` the previous batch of the tick claimed), so a tick reads each
/// due entry about once: its cost grows with the number of due accounts, not the
/// number stored, and not quadratically with the batches. Accounts of disabled or
/// invalid integrations are left alone: the provider refused their client credentials
/// and asking again per account changes nothing until an operator fixes them.
pub const CLAIM_SQL: &str = "WITH due AS (
    SELECT c.id FROM connected_accounts c
    WHERE c.state = 'connected' AND c.refresh_at IS NOT NULL AND c.refresh_token_enc IS NOT NULL
      AND c.refresh_at <= now() AND c.refresh_at >= $3
      AND (c.enqueued_at IS NULL OR c.enqueued_at < now() - $1::interval)
      AND EXISTS (SELECT 1 FROM integrations i WHERE i.id = c.integration_id AND i.enabled AND i.state = 'valid')
    ORDER BY c.refresh_at
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED)
UPDATE connected_accounts a SET enqueued_at = now()
FROM due, integrations i
WHERE a.id = due.id AND i.id = a.integration_id
RETURNING a.id, a.integration_id, i.slug, a.enqueued_at, a.refresh_at";

/// One claimed account.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub account_id: String,
    pub integration_id: String,
    pub provider: String,
    pub enqueued_at: DateTime<Utc>,
    pub refresh_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("claiming due accounts failed")]
    Db(#[from] sqlx::Error),
    #[error("{failed} refresh job(s) were not confirmed by the broker; their accounts were released")]
    Publish {
        failed: usize,
        #[source]
        source: PublishError,
    },
}

/// Claims up to `limit` due accounts due at or after `from` (marks them enqueued) and
/// returns them. Start a tick from [`DateTime::UNIX_EPOCH`].
pub async fn claim(
    db: &PgPool,
    requeue_after: Duration,
    limit: i64,
    from: DateTime<Utc>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(CLAIM_SQL).bind(requeue_after).bind(limit).bind(from).fetch_all(db).await?;
    Ok(rows
        .iter()
        .map(|r| Claimed {
            account_id: r.get("id"),
            integration_id: r.get("integration_id"),
            provider: r.get("slug"),
            enqueued_at: r.get("enqueued_at"),
            refresh_at: r.get("refresh_at"),
        })
        .collect())
}

/// Clears the mark of accounts whose job was never confirmed, unless claimed again since.
pub async fn release(db: &PgPool, claimed: &[Claimed]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = claimed.iter().map(|c| c.account_id.as_str()).collect();
    let stamps: Vec<DateTime<Utc>> = claimed.iter().map(|c| c.enqueued_at).collect();
    sqlx::query(
        "UPDATE connected_accounts a SET enqueued_at = NULL
         FROM unnest($1::text[], $2::timestamptz[]) AS r(id, stamp)
         WHERE a.id = r.id AND a.enqueued_at = r.stamp",
    )
    .bind(&ids)
    .bind(&stamps)
    .execute(db)
    .await?;
    Ok(())
}

/// The scheduler task: claims and publishes batch after batch until nothing is due.
/// Stops at the first batch with an unconfirmed publish (the broker is likely down; the
/// next tick tries again) and between batches on shutdown; after shutdown began no new
/// publish starts (those accounts are released too).
pub async fn enqueue_due(tick: Tick) -> Result<(), ClaimError> {
    let db = &tick.state.db;
    let queue = tick.topology.work_queue(REFRESH);
    let mut cursor = DateTime::UNIX_EPOCH;
    loop {
        let batch = claim(db, tick.state.config.requeue_after, BATCH, cursor).await?;
        let full = batch.len() as i64 == BATCH;
        // Ties at the cursor are read again; they are enqueued by now and filtered out.
        cursor = batch.iter().map(|c| c.refresh_at).max().unwrap_or(cursor);
        let publisher = &tick.publisher;
        let cancel = &tick.cancel;
        let results: Vec<(Claimed, Result<(), PublishError>)> = futures_util::stream::iter(batch)
            .map(|claimed| {
                let queue = queue.as_str();
                async move {
                    if cancel.is_cancelled() {
                        // Shutting down: released below, for the next scheduler.
                        return (claimed, Err(PublishError::ShuttingDown { queue: queue.to_owned() }));
                    }
                    let job = RefreshJob::V1 {
                        account_id: claimed.account_id.clone(),
                        integration_id: claimed.integration_id.clone(),
                    };
                    let result = publisher.publish(queue, &job, Headers::new()).await;
                    (claimed, result)
                }
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .collect()
            .await;
        let mut unconfirmed = Vec::new();
        let mut first_error = None;
        for (claimed, result) in results {
            match result {
                Ok(()) => metrics::counter!(m::REFRESH_JOBS_ENQUEUED, "provider" => claimed.provider).increment(1),
                Err(err) => {
                    first_error.get_or_insert(err);
                    unconfirmed.push(claimed);
                }
            }
        }
        if let Some(source) = first_error {
            if let Err(err) = release(db, &unconfirmed).await {
                // They come due again after PIPES_REQUEUE_AFTER instead.
                tracing::warn!(error = %err, count = unconfirmed.len(), "could not release unconfirmed accounts");
            }
            return Err(ClaimError::Publish { failed: unconfirmed.len(), source });
        }
        if !full || tick.cancel.is_cancelled() {
            return Ok(());
        }
    }
}
