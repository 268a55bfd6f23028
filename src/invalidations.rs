//! The outbox of token-cache invalidations: a disconnect, a reauthorization or
//! a replaced token must stop being served by every replica even when the Redis
//! write that announces it fails.
//!
//! The store writes one row per such change in the change's own transaction
//! ([`record`]); the writer then writes its tombstone at once as before. Every
//! role runs [`run`], which writes the tombstone of every pending row (a
//! versioned write: it can never remove a newer token) and deletes the rows
//! Redis took, so a lost write is repaired within about a second of Redis
//! being reachable again.
//!
//! A process that saw Redis fail (a command, or its invalidation subscription)
//! does not trust Redis answers until a drain that started after the failure
//! left nothing pending (`TokenCache::trusted`): until then its reads go to
//! PostgreSQL.

use std::time::Duration;

use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::cache::{key_of, segment_for, TokenCache};
use crate::metrics as m;
use crate::store::accounts::Account;

/// Rows written per pass at most; the rest wait for the next pass.
const BATCH: i64 = 1000;
/// How often pending rows are looked for while Redis is trusted.
const EVERY: Duration = Duration::from_secs(1);
/// How often while it is not: reads go to PostgreSQL until a drain succeeds.
const EVERY_UNTRUSTED: Duration = Duration::from_millis(100);

/// Records, inside the transaction that changes `account`, that cached copies older
/// than its token version must go. The entry is named by the integration and what
/// follows the slug in its key ([`segment_for`]).
pub async fn record(tx: &mut sqlx::PgConnection, account: &Account) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO cache_invalidations (integration_id, owner_segment, version) VALUES ($1, $2, $3)")
        .bind(&account.integration_id)
        .bind(segment_for(account))
        .bind(account.token_version)
        .execute(tx)
        .await?;
    Ok(())
}

/// Drains the outbox until `cancel` fires.
pub async fn run(db: PgPool, cache: TokenCache, cancel: CancellationToken) {
    loop {
        let pause = if cache.trusted() { EVERY } else { EVERY_UNTRUSTED };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if cache.redis().conn().is_none() {
            continue;
        }
        let failures = cache.redis().failures();
        match drain(&db, &cache).await {
            Ok(true) if cache.redis().failures() == failures => cache.mark_clean(failures),
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "cache invalidation outbox not drained"),
        }
    }
}

/// One pass: the tombstone of every pending row, then the rows Redis took
/// deleted. True when nothing was left pending.
pub async fn drain(db: &PgPool, cache: &TokenCache) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.id, i.slug, c.owner_segment, c.version
         FROM cache_invalidations c JOIN integrations i ON i.id = c.integration_id
         ORDER BY c.id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(db)
    .await?;
    let mut done: Vec<i64> = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = key_of(cache.redis(), row.get("slug"), row.get("owner_segment"));
        if !cache.tombstone_key(&key, row.get("version")).await {
            break;
        }
        done.push(row.get("id"));
    }
    if !done.is_empty() {
        sqlx::query("DELETE FROM cache_invalidations WHERE id = ANY($1)").bind(&done).execute(db).await?;
    }
    let complete = done.len() == rows.len() && (rows.len() as i64) < BATCH;
    if !done.is_empty() {
        metrics::counter!(m::CACHE_INVALIDATIONS_DRAINED).increment(done.len() as u64);
    }
    Ok(complete)
}
