//! Claiming due accounts and publishing their refresh jobs (DESIGN §2.2).
//!
//! The schedule lives in `refresh_schedule`, one narrow row per connected account with
//! a refresh token and a `refresh_at`, kept in step with `connected_accounts` by the
//! refresh's grouped store (`StoreBatch`, in its own statement) and, for every other
//! writer, by a row trigger (migration `20261127180000`). A claim reads a batch of due accounts there and records
//! each in `refresh_claims` (`enqueued_at = now()`) in one statement; that table's
//! primary key keeps two schedulers from claiming the same account. It commits before
//! publishing (holding locks across broker round trips would stall the workers' leases).
//! Only confirmed jobs count; the claims of accounts whose publish failed are deleted
//! again at once. A job lost after its confirm (a broker losing its disk) makes its
//! account claimable again after `PIPES_REQUEUE_AFTER`. Storing a token, moving
//! `refresh_at` or leaving the schedule deletes the claim (the store statement, or the
//! triggers for other writers); a worker moves
//! it into the future while a retry waits, and deletes it when there was nothing to do.
//!
//! The claim can also commit and its answer be lost (the connection to PostgreSQL drops
//! after the statement ran): the scheduler then knows nothing of the accounts it
//! claimed, and they would wait `PIPES_REQUEUE_AFTER`, longer than many tokens live. So
//! each claim stamps its rows with a `claim_id` of its own; when a claim fails,
//! [`Claims`] remembers the id, and the next tick first publishes the accounts still
//! carrying it (still connected, due and not refreshed since). On the normal path
//! nothing is remembered and no account is published twice.
//!
//! A tick does not walk the whole due range every time. Once a walk has reached its end,
//! every due account before the highest `refresh_at` it claimed is claimed (or was
//! skipped for its integration), and stays so until its job stores a token, which moves
//! its `refresh_at` forward and out of that range. So the next ticks walk only from that
//! high-water mark (less [`WALK_MARGIN`], for writes that committed late); a backlog of
//! claimed accounts waiting in the queue is not read again on every tick. What can make an
//! account claimable behind the mark without a write that moves it forward (a claim
//! released or expired, a job dead-lettered, an import of a token long expired) is found
//! by a full walk from the start, at least every [`FULL_WALK_EVERY`] and on the tick after
//! any failure. An integration enabled again or fixed (its accounts skipped by the walks
//! while it was not) makes the next tick a full walk.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use pipes_workers::{Headers, PublishError};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::Tick;
use crate::metrics as m;
use crate::queues::{RefreshJob, REFRESH};

/// Due entries read per claim statement (its window), so at most as many accounts
/// claimed. A window costs in proportion to its size; a large one spreads the statement's
/// round trip and commit over many accounts.
pub const BATCH: i64 = 10_000;
/// Publishes awaiting their confirm at once (confirms are pipelined on one channel).
const PUBLISH_CONCURRENCY: usize = 512;
/// Failed claims remembered at most (one per tick is the most an outage adds; they expire
/// after `PIPES_REQUEUE_AFTER` anyway).
const LOST_CLAIMS_KEPT: usize = 100;
/// A tick walks the due range from its start at least this often (and never less often
/// than `PIPES_REQUEUE_AFTER`, after which a lost job's claim expires); the ticks between
/// start at the high-water mark of the walks before them.
pub const FULL_WALK_EVERY: Duration = Duration::from_secs(30);
/// How far before the high-water mark an incremental walk starts: a write that computed
/// its `refresh_at` (about now) before the last walk and committed after it is still seen.
/// Small, because the claimed accounts in it are read again on every tick: a few thousand
/// at most even in a burst, which PostgreSQL checks one by one against their claims
/// instead of hashing every claim in flight.
pub const WALK_MARGIN: Duration = Duration::from_secs(2);

/// The claim. It walks `refresh_schedule_walk_idx` in key order, `(refresh_at,
/// account_id)`, from a cursor (`$3`, `$5`: the last entry the previous batch of the tick
/// read), a window of at most `$2` due entries, and stops there: a tick reads each due
/// entry about once, so its cost grows with the number of due accounts, not the number
/// stored, and not quadratically with the batches. The index carries the integration id,
/// so on all-visible pages the walk reads the index alone, and the claim never writes to
/// the schedule: it inserts its marks into `refresh_claims`, whose new rows share a few
/// fresh pages however many accounts are stored (see its migration). In the window,
/// accounts of disabled or invalid integrations are left alone (the provider refused
/// their client credentials and asking again per account changes nothing until an
/// operator fixes them), and so are accounts with a live claim (one younger than
/// `PIPES_REQUEUE_AFTER`, `$1`, or a retry's mark in the future). `$4` is the claim's
/// id, stamped on every row it makes.
///
/// Besides one row per claimed account, the statement answers one row for the window
/// itself (`walked` set): its last entry, where the next batch starts (none when the
/// window is empty), how many entries it read, and the integrations whose accounts are
/// claimable. A window of `$2` entries may be followed by more; a shorter one reached
/// the end of the due range. A window can claim nothing (every account in it enqueued
/// already, a backlog waiting in the queue) and the walk still goes on.
///
/// The primary key of `refresh_claims` keeps two schedulers from claiming one account:
/// an insert conflicting with a live claim (one committed after this statement's
/// snapshot, or still in flight, which the insert waits for) updates nothing and
/// returns nothing; an expired one is taken over. Two schedulers walking the same range
/// at once take turns instead of sharing it (the second waits for the first's statement,
/// then finds its accounts claimed); both insert in `(refresh_at, account_id)` order, so
/// they do not wait for each other in a cycle. The walk lists each scheduled account
/// once, so no account conflicts with itself within the statement. An account whose
/// token is stored after the statement's snapshot can still be claimed (nothing locks
/// its schedule row): its worker finds it fresh and deletes the claim.
pub const CLAIM_SQL: &str = "WITH walk AS MATERIALIZED (
    SELECT s.account_id, s.integration_id, s.refresh_at FROM refresh_schedule s
    WHERE s.refresh_at <= now() AND (s.refresh_at, s.account_id) > ($3, $5)
    ORDER BY s.refresh_at, s.account_id
    LIMIT $2),
due AS (
    SELECT w.account_id, w.integration_id, w.refresh_at FROM walk w
    WHERE EXISTS (SELECT 1 FROM integrations i WHERE i.id = w.integration_id AND i.enabled AND i.state = 'valid')
      AND NOT EXISTS (SELECT 1 FROM refresh_claims c
                      WHERE c.account_id = w.account_id AND c.enqueued_at >= now() - $1::interval)),
claimed AS (
    INSERT INTO refresh_claims AS c (account_id, enqueued_at, claim_id, refresh_at, integration_id)
    SELECT account_id, now(), $4::uuid, refresh_at, integration_id FROM due ORDER BY refresh_at, account_id
    ON CONFLICT (account_id) DO UPDATE SET enqueued_at = EXCLUDED.enqueued_at, claim_id = EXCLUDED.claim_id,
        refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id
    WHERE c.enqueued_at < now() - $1::interval
    RETURNING c.account_id, c.enqueued_at, c.refresh_at, c.integration_id)
SELECT c.account_id AS id, c.integration_id, i.slug, c.enqueued_at, c.refresh_at,
       NULL::bigint AS walked, NULL::text[] AS claimable
FROM claimed c JOIN integrations i ON i.id = c.integration_id
UNION ALL
SELECT last.account_id, NULL, NULL, NULL, last.refresh_at, (SELECT count(*) FROM walk),
       ARRAY(SELECT id FROM integrations WHERE enabled AND state = 'valid')
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT w.account_id, w.refresh_at FROM walk w ORDER BY w.refresh_at DESC, w.account_id DESC LIMIT 1) last ON true";

/// Claims again (as `$2`) the accounts a lost claim (`$1`) marked that still wait for
/// their job: still scheduled and due, not refreshed since (storing a token deletes the
/// claim) and not waiting for a retry (which moves its mark into the future). Joins the
/// claims (only the accounts in flight) to the due part of the schedule, never the
/// accounts.
pub const RECLAIM_SQL: &str = "UPDATE refresh_claims c SET enqueued_at = now(), claim_id = $2::uuid
FROM refresh_schedule s, integrations i
WHERE c.claim_id = $1::uuid AND c.enqueued_at <= now()
  AND s.account_id = c.account_id AND s.refresh_at <= now()
  AND i.id = s.integration_id AND i.enabled AND i.state = 'valid'
RETURNING c.account_id AS id, s.integration_id, i.slug, c.enqueued_at, s.refresh_at";

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

/// A new claim id: unique across schedulers and time. A ULID's 128 bits as 32 hex
/// digits, which PostgreSQL reads as a `uuid` (16 bytes in `refresh_claims`).
pub fn new_claim_id() -> String {
    format!("{:032x}", u128::from(ulid::Ulid::new()))
}

/// A place in the walk of the due schedule: an entry's key, `(refresh_at, account_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkKey {
    pub refresh_at: DateTime<Utc>,
    pub account_id: String,
}

impl WalkKey {
    /// Just before every entry due at `at` or later.
    pub fn before(at: DateTime<Utc>) -> Self {
        WalkKey { refresh_at: at, account_id: String::new() }
    }
}

/// What one claim statement did.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    /// The accounts it claimed.
    pub claimed: Vec<Claimed>,
    /// Due entries it read (its window), claimed or not.
    pub walked: i64,
    /// The last entry it read: where the next batch starts. `None`: nothing left to read.
    pub walked_to: Option<WalkKey>,
    /// The integrations whose accounts were claimable (enabled and valid), by id, in order.
    pub claimable: Vec<String>,
}

impl ClaimBatch {
    /// True when the window was full, so more may be due after it.
    pub fn more(&self, limit: i64) -> bool {
        self.walked >= limit
    }
}

/// Reads a window of up to `limit` due entries after `after` and claims its accounts
/// that are not enqueued already (records them in `refresh_claims`, stamped with
/// `claim_id`). Start a tick from `WalkKey::before(DateTime::UNIX_EPOCH)`.
pub async fn claim(
    db: &PgPool,
    requeue_after: Duration,
    limit: i64,
    after: &WalkKey,
    claim_id: &str,
) -> Result<ClaimBatch, sqlx::Error> {
    let rows = sqlx::query(CLAIM_SQL)
        .bind(requeue_after)
        .bind(limit)
        .bind(after.refresh_at)
        .bind(claim_id)
        .bind(after.account_id.as_str())
        .fetch_all(db)
        .await?;
    let mut batch = ClaimBatch { claimed: Vec::with_capacity(rows.len()), ..ClaimBatch::default() };
    for row in &rows {
        match row.get::<Option<i64>, _>("walked") {
            Some(walked) => {
                batch.walked = walked;
                batch.walked_to = row
                    .get::<Option<String>, _>("id")
                    .map(|account_id| WalkKey { refresh_at: row.get("refresh_at"), account_id });
                batch.claimable = row.get("claimable");
                batch.claimable.sort_unstable();
            }
            None => batch.claimed.push(claimed(row)),
        }
    }
    Ok(batch)
}

/// Claims again, as `claim_id`, the accounts of the lost claim `lost` still waiting for
/// their job ([`RECLAIM_SQL`]).
pub async fn reclaim(db: &PgPool, lost: &str, claim_id: &str) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(RECLAIM_SQL).bind(lost).bind(claim_id).fetch_all(db).await?;
    Ok(rows.iter().map(claimed).collect())
}

fn claimed(r: &PgRow) -> Claimed {
    Claimed {
        account_id: r.get("id"),
        integration_id: r.get("integration_id"),
        provider: r.get("slug"),
        enqueued_at: r.get("enqueued_at"),
        refresh_at: r.get("refresh_at"),
    }
}

/// True unless `err` proves the statement did not commit: the server answered with an
/// error (the statement rolled back), or it never got a connection to run on.
fn may_have_committed(err: &sqlx::Error) -> bool {
    !matches!(
        err,
        sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Configuration(_)
    )
}

/// Deletes the claims of accounts whose job was never confirmed, unless claimed again
/// since (or moved by a retry).
pub async fn release(db: &PgPool, claimed: &[Claimed]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = claimed.iter().map(|c| c.account_id.as_str()).collect();
    let stamps: Vec<DateTime<Utc>> = claimed.iter().map(|c| c.enqueued_at).collect();
    sqlx::query(
        "DELETE FROM refresh_claims c
         USING unnest($1::text[], $2::timestamptz[]) AS r(id, stamp)
         WHERE c.account_id = r.id AND c.enqueued_at = r.stamp",
    )
    .bind(&ids)
    .bind(&stamps)
    .execute(db)
    .await?;
    Ok(())
}

/// A claim that failed after it may have committed.
#[derive(Debug, Clone)]
struct LostClaim {
    id: String,
    at: Instant,
}

/// The scheduler's refresh task, with its memory of claims whose answer was lost.
/// Clones share the memory.
#[derive(Debug, Clone)]
pub struct Claims {
    lost: Arc<Mutex<Vec<LostClaim>>>,
    walk: Arc<Mutex<Walk>>,
    full_walk_every: Duration,
}

impl Default for Claims {
    fn default() -> Self {
        Claims { lost: Arc::default(), walk: Arc::default(), full_walk_every: FULL_WALK_EVERY }
    }
}

/// Where the next tick's walk starts.
#[derive(Debug, Default)]
struct Walk {
    /// When the last walk that started from the beginning and reached its end started.
    /// `None`: the next walk starts from the beginning.
    full_at: Option<Instant>,
    /// The highest `refresh_at` claimed since then.
    high_water: Option<DateTime<Utc>>,
    /// The integrations whose accounts were claimable when that walk started, by id, in
    /// order.
    claimable: Vec<String>,
}

/// How a walk ended: the highest `refresh_at` it claimed, whether it reached the end of
/// the due range (not stopped by shutdown), whether it walked from the start, and the
/// integrations claimable when it began.
struct WalkEnd {
    high_water: Option<DateTime<Utc>>,
    complete: bool,
    full: bool,
    claimable: Option<Vec<String>>,
}

impl Walk {
    /// The walk's start, and whether it is a full walk.
    fn start(&self, full_every: Duration) -> (DateTime<Utc>, bool) {
        match (self.full_at, self.high_water) {
            (Some(at), Some(mark)) if at.elapsed() < full_every => {
                let margin = chrono::Duration::from_std(WALK_MARGIN).unwrap_or_default();
                (mark - margin, false)
            }
            _ => (DateTime::UNIX_EPOCH, true),
        }
    }
}

impl Claims {
    /// Walks the whole due range at least every `every` instead of [`FULL_WALK_EVERY`].
    pub fn with_full_walk_every(mut self, every: Duration) -> Self {
        self.full_walk_every = every;
        self
    }

    /// The scheduler task: publishes the accounts of lost claims, then claims and
    /// publishes batch after batch until nothing is due. Stops at the first failed claim
    /// or batch with an unconfirmed publish (the database or broker is likely down; the
    /// next tick tries again) and between batches on shutdown.
    pub async fn enqueue_due(self, tick: Tick) -> Result<(), ClaimError> {
        self.publish_lost(&tick).await?;
        let started = Instant::now();
        let every = self.full_walk_every.min(tick.state.config.requeue_after);
        let (start, full, known) = {
            let walk = self.lock_walk();
            let (start, full) = walk.start(every);
            (start, full, walk.claimable.clone())
        };
        let result = self.walk(&tick, start, full, &known).await;
        let mut walk = self.lock_walk();
        match result {
            Ok(end) => {
                if let Some(mark) = end.high_water {
                    walk.high_water = Some(walk.high_water.map_or(mark, |m| m.max(mark)));
                }
                if end.full && end.complete {
                    walk.full_at = Some(started);
                    walk.claimable = end.claimable.unwrap_or_default();
                }
                Ok(())
            }
            Err(err) => {
                // Released claims or a batch never claimed may lie behind the mark.
                walk.full_at = None;
                Err(err)
            }
        }
    }

    /// Claims and publishes from `start` to the end of the due range. An incremental walk
    /// (`full` false) whose first statement finds an integration claimable that was not
    /// when the last full walk began (`known`: enabled again, or its credentials fixed)
    /// starts over from the beginning: the walks since may have skipped its due accounts
    /// and moved the mark past them.
    async fn walk(
        &self,
        tick: &Tick,
        start: DateTime<Utc>,
        full: bool,
        known: &[String],
    ) -> Result<WalkEnd, ClaimError> {
        let db = &tick.state.db;
        let requeue_after = tick.state.config.requeue_after;
        let mut end = WalkEnd { high_water: None, complete: false, full, claimable: None };
        let mut cursor = WalkKey::before(start);
        // Each batch is published while the next one is claimed: the database and the
        // broker work at the same time instead of taking turns.
        let mut claimed: Vec<Claimed> = Vec::new();
        let mut more = true;
        loop {
            let to_publish = std::mem::take(&mut claimed);
            let claim_id = new_claim_id();
            let cancelled = tick.cancel.is_cancelled();
            let claiming = async {
                if !more || cancelled {
                    return Ok(None);
                }
                claim(db, requeue_after, BATCH, &cursor, &claim_id).await.map(Some)
            };
            let (next, published) = tokio::join!(claiming, publish(tick, to_publish));
            let next = match next {
                Ok(next) => next,
                Err(err) => {
                    self.remember(claim_id, &err);
                    if let Err(publish_err) = published {
                        tracing::warn!(error = %publish_err, "publishing refresh jobs failed");
                    }
                    return Err(err.into());
                }
            };
            if let Err(err) = published {
                // Stop here; the batch claimed meanwhile goes back for the next tick.
                let next = next.map(|n| n.claimed).unwrap_or_default();
                if let Err(release_err) = release(db, &next).await {
                    tracing::warn!(error = %release_err, count = next.len(), "could not release claimed accounts");
                }
                return Err(err);
            }
            let Some(next) = next else {
                end.complete = !cancelled;
                return Ok(end);
            };
            more = next.more(BATCH);
            if let Some(to) = next.walked_to {
                cursor = to;
            }
            if end.claimable.is_none() {
                let back_on = next.claimable.iter().any(|id| known.binary_search(id).is_err());
                if back_on && !end.full {
                    end.full = true;
                    more = true;
                    cursor = WalkKey::before(DateTime::UNIX_EPOCH);
                }
                end.claimable = Some(next.claimable);
            }
            // The mark is what the walk claimed, not how far it read: what it read past
            // its last claim (accounts of an integration that is off) stays in front of the
            // next tick's walk, which claims them as soon as the integration is back.
            if let Some(last) = next.claimed.iter().map(|c| c.refresh_at).max() {
                end.high_water = Some(end.high_water.map_or(last, |mark| mark.max(last)));
            }
            claimed = next.claimed;
        }
    }

    fn lock_walk(&self) -> std::sync::MutexGuard<'_, Walk> {
        self.walk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes what the lost claims marked and nobody published. A lost claim is
    /// forgotten once asked about (or after `PIPES_REQUEUE_AFTER`, when its accounts are
    /// due again anyway).
    async fn publish_lost(&self, tick: &Tick) -> Result<(), ClaimError> {
        let requeue_after = tick.state.config.requeue_after;
        let lost: Vec<LostClaim> = {
            let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
            lost.retain(|claim| claim.at.elapsed() < requeue_after);
            lost.clone()
        };
        for claim in lost {
            let claim_id = new_claim_id();
            let batch = match reclaim(&tick.state.db, &claim.id, &claim_id).await {
                Ok(batch) => batch,
                Err(err) => {
                    // The old id stays remembered; the new one may have committed too.
                    self.remember(claim_id, &err);
                    return Err(err.into());
                }
            };
            self.lost.lock().unwrap_or_else(PoisonError::into_inner).retain(|c| c.id != claim.id);
            if !batch.is_empty() {
                tracing::info!(count = batch.len(), "publishing the accounts of a claim whose answer was lost");
            }
            publish(tick, batch).await?;
        }
        Ok(())
    }

    fn remember(&self, claim_id: String, err: &sqlx::Error) {
        if !may_have_committed(err) {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        lost.push(LostClaim { id: claim_id, at: Instant::now() });
        let excess = lost.len().saturating_sub(LOST_CLAIMS_KEPT);
        lost.drain(..excess);
    }
}

/// Publishes one refresh job per claimed account. The accounts whose job was not
/// confirmed are released; after shutdown began no new publish starts (those accounts
/// are released too).
async fn publish(tick: &Tick, batch: Vec<Claimed>) -> Result<(), ClaimError> {
    let queue = tick.topology.work_queue(REFRESH);
    let publisher = &tick.publisher;
    let results: Vec<(Claimed, Result<(), PublishError>)> = futures_util::stream::iter(batch)
        .map(|claimed| {
            let queue = queue.as_str();
            async move {
                if tick.cancel.is_cancelled() {
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
    let Some(source) = first_error else { return Ok(()) };
    if let Err(err) = release(&tick.state.db, &unconfirmed).await {
        // They come due again after PIPES_REQUEUE_AFTER instead.
        tracing::warn!(error = %err, count = unconfirmed.len(), "could not release unconfirmed accounts");
    }
    Err(ClaimError::Publish { failed: unconfirmed.len(), source })
}
