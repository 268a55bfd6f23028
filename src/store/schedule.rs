//! The refresh schedule (DESIGN §2.2): the only code that writes `refresh_schedule`
//! and `refresh_claims`.
//!
//! An account is on the schedule exactly while it is connected, has a refresh token and
//! a time to refresh it. Every writer of an account calls [`sync`] (or, for the refresh's
//! grouped store, splices [`SYNC_STORED`] into its statement) in its own transaction:
//! storing a token moves the account's `refresh_at` and deletes its claim; dropping the
//! refresh token or leaving the `connected` state takes it off the schedule. Deleting an
//! account takes its schedule row along (the foreign key) and [`clear`] its claim.
//!
//! A scheduler claims due accounts ([`claim`]) by inserting a row per account into
//! `refresh_claims`, whose primary key keeps two schedulers from claiming one account; it
//! commits before publishing the jobs. A job never confirmed by the broker is
//! [`release`]d; a claim whose answer was lost is found again by its id ([`reclaim`]); a
//! worker whose refresh waits for a retry [`defer`]s the claim, and one that found
//! nothing to do [`unclaim`]s it. A claim older than `PIPES_REQUEUE_AFTER` is taken over
//! by the next claim: a job lost after its confirm costs a wait, never the account.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

use crate::auth_method::AuthMethod;
use crate::ids::{AccountId, IntegrationId};

/// Puts the account on the schedule at `refresh_at`, or takes it off (`None`), and
/// deletes its claim: whatever a claimed job was for, the tokens just written answer it.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn sync(
    db: impl PgExecutor<'_>,
    account_id: &AccountId,
    integration_id: &IntegrationId,
    refresh_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH unclaimed AS (DELETE FROM refresh_claims WHERE account_id = $1),
         scheduled AS (
           INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
           SELECT $1, $2, $3 WHERE $3::timestamptz IS NOT NULL
           ON CONFLICT (account_id) DO UPDATE
             SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id)
         DELETE FROM refresh_schedule WHERE account_id = $1 AND $3::timestamptz IS NULL",
    )
    .bind(account_id)
    .bind(integration_id)
    .bind(refresh_at)
    .execute(db)
    .await?;
    Ok(())
}

/// [`sync`] for every row of a CTE named `stored` with columns `id`, `integration_id` and
/// `refresh_at`, as more CTEs of the writer's statement (the refresh's grouped store: one
/// statement for its batch). The rows that stay on the schedule are moved with a plain
/// UPDATE and only the missing ones inserted: an upsert of every row first locks each
/// conflicting row, which costs a WAL record of its own.
pub const SYNC_STORED: &str = "rescheduled AS (
       UPDATE refresh_schedule s SET refresh_at = stored.refresh_at, integration_id = stored.integration_id
       FROM stored WHERE s.account_id = stored.id AND stored.refresh_at IS NOT NULL
       RETURNING s.account_id),
     scheduled AS (
       INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
       SELECT id, integration_id, refresh_at FROM stored
       WHERE refresh_at IS NOT NULL AND id NOT IN (SELECT account_id FROM rescheduled) ORDER BY id
       ON CONFLICT (account_id) DO UPDATE
         SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id),
     unscheduled AS (
       DELETE FROM refresh_schedule WHERE account_id IN (SELECT id FROM stored WHERE refresh_at IS NULL)),
     unclaimed AS (
       DELETE FROM refresh_claims WHERE account_id IN (SELECT id FROM stored))";

/// The account's place on the schedule, as an expression over the account row `c`.
pub const REFRESH_AT_OF_C: &str = "(SELECT s.refresh_at FROM refresh_schedule s WHERE s.account_id = c.id)";

/// Deletes the claims of accounts being deleted (their schedule rows go with them).
#[tracing::instrument(level = "debug", skip_all, fields(count = account_ids.len()))]
pub async fn clear(db: impl PgExecutor<'_>, account_ids: &[AccountId]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM refresh_claims WHERE account_id = ANY($1)").bind(account_ids).execute(db).await?;
    Ok(())
}

/// Makes the account (connected, with a refresh token: the caller checked) due now and claims it, as `claim_id`, so that no scheduler
/// publishes a second job beside the one the caller is about to run or publish.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn claim_now(db: impl PgExecutor<'_>, account_id: &AccountId, claim_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH due AS (
           INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
           SELECT id, integration_id, now() FROM connected_accounts WHERE id = $1
           ON CONFLICT (account_id) DO UPDATE SET refresh_at = EXCLUDED.refresh_at)
         INSERT INTO refresh_claims (account_id, enqueued_at, claim_id) VALUES ($1, now(), $2::uuid)
         ON CONFLICT (account_id) DO UPDATE SET enqueued_at = EXCLUDED.enqueued_at, claim_id = EXCLUDED.claim_id",
    )
    .bind(account_id)
    .bind(claim_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps schedulers off the account for `delay` more, while its job's retry waits in a
/// delay queue. Only an existing claim is moved: a token stored meanwhile deleted it,
/// and then there is nothing left to wait for.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn defer(db: impl PgExecutor<'_>, account_id: &AccountId, delay: Duration) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_claims SET enqueued_at = now() + $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(delay)
        .execute(db)
        .await?;
    Ok(())
}

/// Hands the account back to the next claim: its job is done without storing a token.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn unclaim(db: impl PgExecutor<'_>, account_id: &AccountId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM refresh_claims WHERE account_id = $1").bind(account_id).execute(db).await?;
    Ok(())
}

/// Due entries read per claim statement (its window), so at most as many accounts
/// claimed. A window costs in proportion to its size; a large one spreads the statement's
/// round trip and commit over many accounts.
pub const BATCH: i64 = 10_000;

/// The claim. It walks `refresh_schedule_walk_idx` in key order, `(refresh_at,
/// account_id)`, from a cursor (`$3`, `$5`: the last entry the previous batch of the tick
/// read), a window of at most `$2` due entries, and stops there: a tick reads each due
/// entry about once, so its cost grows with the number of due accounts, not the number
/// stored. The index carries the integration id, so on all-visible pages the walk reads
/// the index alone, and the claim never writes to the schedule: it inserts its rows into
/// `refresh_claims`, which land on a few fresh pages however many accounts are stored.
/// In the window, accounts of disabled or invalid integrations are left alone (asking
/// the provider again per account changes nothing until an operator fixes them), and so
/// are accounts with a live claim (younger than `PIPES_REQUEUE_AFTER`, `$1`, or a retry's
/// claim in the future). `$4` is the claim's id, stamped on every row it makes.
///
/// Besides one row per claimed account, the statement answers one row for the window
/// itself (`walked` set): its last entry, where the next batch starts (none when the
/// window is empty), how many entries it read, and the integrations whose accounts are
/// claimable. A window of `$2` entries may be followed by more; a shorter one reached
/// the end of the due range.
///
/// An insert conflicting with a live claim (committed after this statement's snapshot,
/// or in flight, which the insert waits for) updates nothing and returns nothing; an
/// expired one is taken over. Two schedulers walking one range insert in key order, so
/// they take turns instead of waiting for each other in a cycle. An account whose token
/// is stored after the snapshot can still be claimed: its worker finds it fresh and
/// [`unclaim`]s it.
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
SELECT c.account_id AS id, c.integration_id, i.slug, i.auth_method, c.enqueued_at, c.refresh_at,
       NULL::bigint AS walked, NULL::text[] AS claimable
FROM claimed c JOIN integrations i ON i.id = c.integration_id
UNION ALL
SELECT last.account_id, NULL, NULL, NULL, NULL, last.refresh_at, (SELECT count(*) FROM walk),
       ARRAY(SELECT id FROM integrations WHERE enabled AND state = 'valid')
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT w.account_id, w.refresh_at FROM walk w ORDER BY w.refresh_at DESC, w.account_id DESC LIMIT 1) last ON true";

/// Claims again (as `$2`) the accounts a lost claim (`$1`) made that still wait for
/// their job: still scheduled and due, not refreshed since (storing a token deletes the
/// claim) and not waiting for a retry (which moves its claim into the future). Joins
/// the claims (only the accounts in flight) to the due part of the schedule.
pub const RECLAIM_SQL: &str = "UPDATE refresh_claims c SET enqueued_at = now(), claim_id = $2::uuid
FROM refresh_schedule s, integrations i
WHERE c.claim_id = $1::uuid AND c.enqueued_at <= now()
  AND s.account_id = c.account_id AND s.refresh_at <= now()
  AND i.id = s.integration_id AND i.enabled AND i.state = 'valid'
RETURNING c.account_id AS id, s.integration_id, i.slug, i.auth_method, c.enqueued_at, s.refresh_at";

/// One claimed account.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub account_id: AccountId,
    pub integration_id: IntegrationId,
    pub provider: String,
    /// The integration's: which kind of job renews the account.
    pub auth_method: AuthMethod,
    pub enqueued_at: DateTime<Utc>,
    pub refresh_at: DateTime<Utc>,
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

/// Reads a window of up to `limit` due entries after `after` and claims those of its
/// accounts that have no live claim, stamped with `claim_id` ([`CLAIM_SQL`]). Start a
/// tick from `WalkKey::before(DateTime::UNIX_EPOCH)`.
#[tracing::instrument(level = "debug", skip_all, fields(claim_id = %claim_id))]
pub async fn claim(
    db: impl PgExecutor<'_>,
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
#[tracing::instrument(level = "debug", skip_all, fields(claim_id = %claim_id))]
pub async fn reclaim(db: impl PgExecutor<'_>, lost: &str, claim_id: &str) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(RECLAIM_SQL).bind(lost).bind(claim_id).fetch_all(db).await?;
    Ok(rows.iter().map(claimed).collect())
}

fn claimed(r: &PgRow) -> Claimed {
    Claimed {
        account_id: r.get("id"),
        integration_id: r.get("integration_id"),
        provider: r.get("slug"),
        auth_method: AuthMethod::parse(r.get("auth_method")).unwrap_or(AuthMethod::OAuth),
        enqueued_at: r.get("enqueued_at"),
        refresh_at: r.get("refresh_at"),
    }
}

/// Deletes the claims of accounts whose job was never confirmed, unless claimed again
/// since (or moved by a retry).
#[tracing::instrument(level = "debug", skip_all, fields(count = claimed.len()))]
pub async fn release(db: impl PgExecutor<'_>, claimed: &[Claimed]) -> Result<(), sqlx::Error> {
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
