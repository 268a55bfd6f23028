//! The subscription that keeps the local answer cache honest: it applies
//! every invalidation published by any process, and switches the local cache
//! off (emptying it) the moment the subscription is lost or stops answering
//! pings. It reconnects on its own (to the next node, for a cluster); the
//! local cache is back on only once a new subscription is confirmed.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::local::LocalCache;
use crate::redis_conn::Redis;

/// How often the subscription is pinged to notice a silent (half-open) connection.
const PING_EVERY: Duration = Duration::from_millis(500);
/// A ping or connect slower than this counts as a lost subscription.
const DEADLINE: Duration = Duration::from_secs(1);

/// Listens on `channel` until `cancel` fires.
pub async fn run(redis_url: String, channel: String, local: LocalCache, redis: Redis, cancel: CancellationToken) {
    // A cluster's PUBLISH reaches the subscribers of every node, so one
    // plain subscription to any node is enough; a lost one moves to the next.
    let clients: Vec<redis::Client> = match crate::redis_conn::topology(&redis_url)
        .and_then(|t| t.nodes.iter().map(|n| redis::Client::open(n.as_str())).collect())
    {
        Ok(clients) => clients,
        Err(err) => {
            tracing::error!(error = %err, "invalid Redis URL: the local token cache stays off");
            return;
        }
    };
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(client) = clients.get(next % clients.len().max(1)) else { return };
        let session = listen_once(client, &channel, &local, &cancel).await;
        local.set_enabled(false);
        // Invalidations published meanwhile were missed, and Redis may have lost writes.
        redis.suspect();
        match session {
            Ok(()) if cancel.is_cancelled() => return,
            Ok(()) => {
                tracing::warn!("token cache invalidation subscription lost; local cache off until it is back");
                backoff = Duration::from_millis(100);
            }
            Err(err) => tracing::debug!(error = %err, "token cache invalidation subscription failed"),
        }
        next = next.wrapping_add(1);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription, until it fails. `Ok` when it ended (or `cancel` fired).
async fn listen_once(
    client: &redis::Client,
    channel: &str,
    local: &LocalCache,
    cancel: &CancellationToken,
) -> Result<(), redis::RedisError> {
    let timed_out = || redis::RedisError::from((redis::ErrorKind::Io, "timed out"));
    let mut pubsub = tokio::time::timeout(DEADLINE, client.get_async_pubsub()).await.map_err(|_| timed_out())??;
    tokio::time::timeout(DEADLINE, pubsub.subscribe(channel)).await.map_err(|_| timed_out())??;
    let (mut sink, mut stream) = pubsub.split();
    // Whatever changed while we were not listening is unknown: start empty.
    local.integration_changed();
    local.set_enabled(true);
    tracing::debug!(channel, "token cache invalidation subscription live");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let Ok(payload) = message.get_payload::<String>() else { continue };
                local.apply(&payload);
            }
            _ = ping.tick() => {
                match tokio::time::timeout(DEADLINE, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(err),
                    Err(_) => return Err(timed_out()),
                }
            }
        }
    }
}
