//! Claiming due accounts and publishing their refresh jobs (DESIGN §2.2); the
//! statements are the schedule's own ([`crate::store::schedule`]).
//!
//! A tick claims a window of due accounts, commits, and publishes their jobs while it
//! claims the next window (holding locks across broker round trips would stall the
//! workers' leases). Only confirmed jobs count; the claims of accounts whose publish
//! failed are released at once.
//!
//! The claim can also commit and its answer be lost (the connection to PostgreSQL drops
//! after the statement ran): the scheduler then knows nothing of the accounts it
//! claimed, and they would wait `PIPES_REQUEUE_AFTER`, longer than many tokens live. So
//! each claim stamps its rows with a `claim_id` of its own; when a claim fails,
//! [`Claims`] remembers the id, and the next tick first publishes the accounts still
//! carrying it. On the normal path nothing is remembered and no account is published
//! twice.
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

use super::Tick;
use crate::metrics as m;
use crate::queues::{RefreshJob, REFRESH};
use crate::store::schedule::{claim, new_claim_id, reclaim, release, Claimed, WalkKey, BATCH};

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

/// True unless `err` proves the statement did not commit: the server answered with an
/// error (the statement rolled back), or it never got a connection to run on.
fn may_have_committed(err: &sqlx::Error) -> bool {
    !matches!(
        err,
        sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Configuration(_)
    )
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
                let job = RefreshJob::for_account(
                    claimed.auth_method,
                    claimed.account_id.clone(),
                    claimed.integration_id.clone(),
                );
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
