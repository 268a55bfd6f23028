//! Refilling the token cache after Redis lost it.
//!
//! Redis keeps nothing on disk in the recommended setup, so a restart (or a flush)
//! empties the token cache. Reads then still work — every miss reads PostgreSQL and
//! fills the entry back — but until an account is read or refreshed again, PostgreSQL is
//! the only place its token is served from, and a PostgreSQL outage in that window fails
//! reads that Redis could have answered.
//!
//! So the scheduler role watches for a marker key. When it is missing — a fresh Redis,
//! a restart, a flush — it sets it (`SET NX`: one scheduler wins) and refills the cache
//! from PostgreSQL page by page: every connected account whose token is fresh enough to
//! serve, through the same versioned write as every other cache write, which never
//! replaces a newer entry or a tombstone (but without announcing each entry on the
//! invalidation channel: nothing changed that a replica's local answers would miss). The marker is set *before* the refill: a Redis
//! that restarts during the refill has lost the marker too, and is refilled again.
//!
//! In a Redis Cluster the marker lives on one primary: a restart of another one is
//! refilled through reads and refreshes only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ids::IntegrationId;
use crate::state::AppState;
use crate::store::accounts;
use crate::store::integrations::{self, Integration};

/// How often the marker is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Accounts read from PostgreSQL per page.
const PAGE: i64 = 1_000;
/// Cache writes in flight at once.
const WRITES_IN_FLIGHT: usize = 32;

/// The marker's key under the Redis prefix.
pub fn marker_key(state: &AppState) -> String {
    state.redis.key("cache:warm")
}

/// Watches the marker until `cancel` fires, refilling the cache whenever it is gone.
pub async fn run(state: AppState, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        match refill_if_lost(&state, &cancel).await {
            Ok(Some(count)) => tracing::info!(entries = count, "token cache refilled after Redis lost it"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "token cache refill failed; trying again shortly"),
        }
    }
}

/// If the marker is missing, sets it and refills the cache; returns how many accounts
/// were written, or `None` when the cache was not lost (or Redis is unreachable).
pub async fn refill_if_lost(state: &AppState, cancel: &CancellationToken) -> anyhow::Result<Option<u64>> {
    let Some(mut conn) = state.redis.conn() else { return Ok(None) };
    let set: Option<String> = tokio::time::timeout(
        state.redis.timeout().max(Duration::from_secs(1)),
        redis::cmd("SET").arg(marker_key(state)).arg(crate::time::now().to_rfc3339()).arg("NX").query_async(&mut conn),
    )
    .await??;
    if set.is_none() {
        // The marker is there: this Redis still holds what was written to it.
        return Ok(None);
    }
    refill(state, cancel).await.map(Some)
}

/// Writes every servable account's entry, page by page, until done or cancelled.
pub async fn refill(state: &AppState, cancel: &CancellationToken) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut loaded: HashMap<IntegrationId, Option<Integration>> = HashMap::new();
    let mut after = String::new();
    let mut written = 0u64;
    while !cancel.is_cancelled() {
        let page = accounts::fresh_page(
            &state.db,
            state.keyring(),
            &after,
            crate::time::now(),
            state.config.min_validity,
            PAGE,
        )
        .await?;
        let Some(last) = page.last() else { break };
        after = last.id.to_string();
        for account in &page {
            if !loaded.contains_key(&account.integration_id) {
                let integration = integrations::by_id(&state.db, state.keyring(), &account.integration_id).await?;
                loaded.insert(account.integration_id.clone(), integration);
            }
        }
        let now = crate::time::now();
        let mut in_flight = FuturesUnordered::new();
        for account in &page {
            let Some(Some(integration)) = loaded.get(&account.integration_id) else { continue };
            if !integration.enabled {
                continue;
            }
            in_flight.push(state.cache.restore(account, integration, now));
            if in_flight.len() >= WRITES_IN_FLIGHT && in_flight.next().await.is_some() {
                written += 1;
            }
        }
        while in_flight.next().await.is_some() {
            written += 1;
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    tracing::debug!(written, took = ?started.elapsed(), "token cache refill pass done");
    Ok(written)
}
