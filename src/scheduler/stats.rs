//! The scheduler's gauges (DESIGN §4), refreshed on their own clock so a slow count
//! never lengthens a tick: queue depths (passive declares) and due accounts every
//! few seconds, connected accounts per provider and state once a minute (that one
//! counts the whole table).

use std::collections::HashSet;
use std::time::Duration;

use pipes_workers::{Broker, Topology};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(5);
/// Connected-account counts are refreshed every this many rounds.
const COUNT_EVERY_ROUNDS: u32 = 12;

pub(super) async fn run(state: AppState, broker: Broker, topology: Topology, cancel: CancellationToken) {
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    let mut round: u32 = 0;
    loop {
        let counts = async {
            queue_depths(&broker, &topology).await;
            accounts_due(&state).await;
            if round.is_multiple_of(COUNT_EVERY_ROUNDS) {
                connected_accounts(&state, &mut seen).await;
                integrations_invalid(&state).await;
            }
        };
        // A round waiting on a silent broker (or database) is dropped on shutdown: the
        // gauges are only read while the process runs.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = counts => {}
        }
        round = round.wrapping_add(1);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn queue_depths(broker: &Broker, topology: &Topology) {
    let depths = match broker.channel().await {
        Ok(channel) => topology.passive_depths(&channel).await.map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    match depths {
        Ok(depths) => {
            for (queue, n) in depths {
                metrics::gauge!(m::QUEUE_MESSAGES, "queue" => queue).set(f64::from(n));
            }
        }
        Err(err) => tracing::debug!(error = %err, "queue depths not read"),
    }
}

async fn accounts_due(state: &AppState) {
    let due = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM refresh_schedule WHERE refresh_at <= now()")
        .fetch_one(&state.db)
        .await;
    match due {
        Ok(n) => metrics::gauge!(m::ACCOUNTS_DUE).set(n as f64),
        Err(err) => tracing::debug!(error = %err, "due accounts not counted"),
    }
}

/// Counts everything the periodic rounds count, at once (operators' tools and tests).
pub async fn refresh_all(state: &AppState) {
    accounts_due(state).await;
    connected_accounts(state, &mut HashSet::new()).await;
    integrations_invalid(state).await;
}

/// 1 for each integration whose credentials the provider refused, 0 for the others,
/// so the gauge also falls back once an operator fixes the credentials.
async fn integrations_invalid(state: &AppState) {
    let rows = sqlx::query("SELECT slug, state FROM integrations").fetch_all(&state.db).await;
    match rows {
        Ok(rows) => {
            for row in rows {
                let (slug, integration_state): (String, String) = (row.get("slug"), row.get("state"));
                let value = if integration_state == "invalid" { 1.0 } else { 0.0 };
                metrics::gauge!(m::INTEGRATIONS_INVALID, "provider" => slug).set(value);
            }
        }
        Err(err) => tracing::debug!(error = %err, "invalid integrations not counted"),
    }
}

async fn connected_accounts(state: &AppState, seen: &mut HashSet<(String, String, String)>) {
    let rows = sqlx::query(
        "SELECT i.slug, c.auth_method, c.state, count(*) AS n FROM connected_accounts c
         JOIN integrations i ON i.id = c.integration_id GROUP BY i.slug, c.auth_method, c.state",
    )
    .fetch_all(&state.db)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => return tracing::debug!(error = %err, "connected accounts not counted"),
    };
    let mut now_seen = HashSet::new();
    let gauge = |provider: &str, method: &str, account_state: &str| {
        metrics::gauge!(m::CONNECTED_ACCOUNTS, "provider" => provider.to_owned(), "auth_method" => method.to_owned(),
            "state" => account_state.to_owned())
    };
    for row in rows {
        let (provider, method, account_state, n): (String, String, String, i64) =
            (row.get("slug"), row.get("auth_method"), row.get("state"), row.get("n"));
        gauge(&provider, &method, &account_state).set(n as f64);
        now_seen.insert((provider, method, account_state));
    }
    // A series that emptied out reads 0, not its last value.
    for (provider, method, account_state) in seen.difference(&now_seen) {
        gauge(provider, method, account_state).set(0.0);
    }
    *seen = now_seen;
}
