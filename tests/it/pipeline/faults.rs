//! The pipeline under stress and failure: racing workers and reads, a worker dying
//! mid-job, a cut broker connection, two schedulers, shutdown, and the claim's plan.

use std::collections::HashSet;
use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::refresh::{Reason, RefreshOutcome};
use pipes::state::AppState;
use pipes::store::accounts::AccountState;
use pipes_workers::lapin::options::{BasicAckOptions, BasicGetOptions};
use pipes_workers::Broker;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{eventually, lease_taken, load, Pipeline, AMQP_URL};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};
use crate::support::proxy::TcpProxy;

/// Another process's view: its own pool, cache client and refresher (so its single
/// flight shares nothing in memory with the app's).
fn other_process(app: &TestApp, cancel: &CancellationToken) -> AppState {
    AppState::new(app.config().clone(), cancel.clone()).expect("second state")
}

/// Inserts `n` connected accounts of `integration_id` with placeholder ciphertexts (never
/// decrypted by these tests), the first `due` of them due a minute ago.
async fn insert_accounts(app: &TestApp, integration_id: &str, n: i32, due: i32) {
    sqlx::query(
        "WITH accounts AS (
           INSERT INTO connected_accounts (id, integration_id, user_id, state, access_token_enc, refresh_token_enc, expires_at)
           SELECT 'data_installation_bulk' || g, $1, 'user' || g, 'connected', '\\x00'::bytea, '\\x00'::bytea,
                  now() + interval '1 hour'
           FROM generate_series(1, $2) g
           RETURNING id)
         INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
         SELECT 'data_installation_bulk' || g, $1,
                CASE WHEN g <= $3 THEN now() - interval '1 minute' ELSE now() + g * interval '1 second' END
         FROM generate_series(1, $2) g WHERE 'data_installation_bulk' || g IN (SELECT id FROM accounts)",
    )
    .bind(integration_id)
    .bind(n)
    .bind(due)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn two_workers_and_on_demand_reads_never_reuse_a_refresh_token() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_MIN_VALIDITY", "1s");
    })
    .await;
    let p = demo_integration(&app, "pl-race", ClientAuthMethod::Basic).await;
    p.demo.set_access_ttl(Duration::from_secs(3));
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(seed_account(&app, &p, &format!("u{i}"), None, Duration::from_secs(3)).await.0.id);
    }
    let others = CancellationToken::new();
    let mut pipeline = Pipeline::new(&app);
    pipeline.scheduler(app.state.clone());
    pipeline.worker(app.state.clone());
    pipeline.worker(other_process(&app, &others));
    let reader = other_process(&app, &others);
    let mut reads = Vec::new();
    for _ in 0..6 {
        let (reader, integration, ids) = (reader.clone(), p.integration.clone(), ids.clone());
        reads.push(tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(8);
            while std::time::Instant::now() < until {
                let id = &ids[rand::thread_rng().gen_range(0..ids.len())];
                let outcome = reader.refresher.refresh(&integration, id, Reason::OnDemand).await.unwrap();
                assert!(
                    matches!(outcome, RefreshOutcome::Refreshed(_) | RefreshOutcome::AlreadyFresh(_)),
                    "{outcome:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for read in reads {
        read.await.unwrap();
    }
    pipeline.stop().await;
    others.cancel();
    let stats = p.demo.stats();
    assert!(stats.refreshes >= 16, "tokens kept being refreshed ({} refreshes)", stats.refreshes);
    assert_eq!(stats.reuse_detected, 0, "no refresh token was presented twice");
    assert_eq!(stats.grants_revoked, 0);
    for id in &ids {
        let account = load(&app, id).await;
        assert_eq!(account.state, AccountState::Connected);
        assert!(
            p.demo.is_grant_alive_for_refresh(account.refresh_token.as_ref().unwrap().expose()),
            "grant of {id} alive"
        );
    }
}

#[tokio::test]
async fn a_worker_that_dies_mid_job_has_its_job_redelivered_and_completed_once() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-crash", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    // The first worker's provider call hangs (it never reaches the provider's state).
    p.demo.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let mut pipeline = Pipeline::new(&app);
    pipeline.scheduler(app.state.clone());
    let doomed_cancel = CancellationToken::new();
    let doomed = pipes::worker::spawn(other_process(&app, &doomed_cancel), doomed_cancel.clone());
    assert!(
        eventually(Duration::from_secs(10), || lease_taken(&app, &account.id)).await,
        "the first worker took the job"
    );
    // The process dies: its channel and connection go without an ack.
    doomed.abort();
    let _ = doomed.await;
    doomed_cancel.cancel();
    pipeline.worker(app.state.clone());
    assert!(
        eventually(Duration::from_secs(20), || async {
            load(&app, &account.id).await.token_version > account.token_version
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async { Pipeline::depth(&app, "refresh").await == 0 }).await,
        "the redelivered job was acked"
    );
    pipeline.stop().await;
    let stats = p.demo.stats();
    assert_eq!((stats.refreshes, stats.reuse_detected), (1, 0), "completed once, no token presented twice");
    assert_eq!(Pipeline::depth(&app, "refresh.dead").await, 0);
    let stored = load(&app, &account.id).await;
    assert!(p.demo.is_grant_alive_for_refresh(stored.refresh_token.as_ref().unwrap().expose()));
}

#[tokio::test]
async fn a_cut_broker_connection_recovers_and_the_jobs_complete() {
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_AMQP_URL", amqp);
    })
    .await;
    let p = demo_integration(&app, "pl-cut", ClientAuthMethod::Basic).await;
    let (first, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    let mut pipeline = Pipeline::start(&app);
    assert!(
        eventually(Duration::from_secs(10), || async {
            load(&app, &first.id).await.token_version > first.token_version
        })
        .await
    );
    proxy.cut();
    let (second, _) = seed_account(&app, &p, "u2", None, Duration::from_secs(2)).await;
    // Ticks run against a dead broker meanwhile: their publishes fail and are released.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(load(&app, &second.id).await.token_version, second.token_version);
    proxy.restore();
    let recovered = eventually(Duration::from_secs(15), || async {
        load(&app, &second.id).await.token_version > second.token_version
    })
    .await;
    assert!(recovered, "scheduler and worker recovered and refreshed the account");
    pipeline.stop().await;
    let stats = p.demo.stats();
    assert_eq!(stats.reuse_detected, 0);
}

#[tokio::test]
async fn two_schedulers_enqueue_each_due_account_once() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-twice", ClientAuthMethod::Basic).await;
    insert_accounts(&app, &p.integration.id, 3000, 2500).await;
    let others = CancellationToken::new();
    let mut pipeline = Pipeline::new(&app);
    pipeline.scheduler(app.state.clone());
    pipeline.scheduler(other_process(&app, &others));
    let all_enqueued = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM refresh_claims").fetch_one(&app.db).await.unwrap() == 2500
    };
    assert!(eventually(Duration::from_secs(15), all_enqueued).await);
    tokio::time::sleep(Duration::from_millis(2200)).await; // two more ticks each
    pipeline.stop().await;
    others.cancel();
    let broker = Broker::connect(AMQP_URL, "pipes-tests").await.unwrap();
    let channel = broker.channel().await.unwrap();
    let queue = pipes::queues::topology(app.config()).work_queue(pipes::queues::REFRESH);
    let mut seen = HashSet::new();
    let mut messages = 0;
    while let Some(message) = channel.basic_get(queue.as_str().into(), BasicGetOptions::default()).await.unwrap() {
        message.ack(BasicAckOptions::default()).await.unwrap();
        let job: pipes::queues::RefreshJob = serde_json::from_slice(&message.delivery.data).unwrap();
        assert!(matches!(job, pipes::queues::RefreshJob::V1 { .. }), "an OAuth account's job: {job:?}");
        seen.insert(job.account_id().clone());
        messages += 1;
    }
    assert_eq!(messages, 2500, "one job per due account");
    assert_eq!(seen.len(), 2500);
}

#[tokio::test]
async fn shutdown_finishes_the_job_in_flight_before_returning() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-drain", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    p.demo.push_fault(Fault::Delay(Duration::from_millis(800)));
    let mut pipeline = Pipeline::start(&app);
    assert!(eventually(Duration::from_secs(10), || lease_taken(&app, &account.id)).await);
    pipeline.stop().await; // SIGTERM: stop consuming, finish in-flight work, return
    assert!(load(&app, &account.id).await.token_version > account.token_version, "the in-flight refresh finished");
    assert_eq!(Pipeline::depth(&app, "refresh").await, 0, "and its job was acked");
}

async fn claim_plan(app: &TestApp) -> String {
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {}", pipes::store::schedule::CLAIM_SQL)))
            .bind(Duration::from_secs(300))
            .bind(pipes::store::schedule::BATCH)
            .bind(chrono::DateTime::UNIX_EPOCH)
            .bind(pipes::store::schedule::new_claim_id())
            .bind("")
            .fetch_all(&app.db)
            .await
            .unwrap();
    plan.join("\n")
}

#[tokio::test]
async fn the_claim_query_walks_the_due_index() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-plan", ClientAuthMethod::Basic).await;
    insert_accounts(&app, &p.integration.id, 50_000, 100).await;
    // Not vacuumed yet (pages written since the last autovacuum): the walk reads the
    // index and fetches the rows from the heap, reading only.
    sqlx::query("ANALYZE refresh_schedule").execute(&app.db).await.unwrap();
    let plan = claim_plan(&app).await;
    assert!(plan.contains("refresh_schedule_walk_idx"), "the claim walks the schedule's due index:\n{plan}");
    assert!(!plan.contains("Seq Scan on refresh_schedule"), "and never scans the schedule:\n{plan}");
    assert!(!plan.contains("connected_accounts"), "nor reads the accounts:\n{plan}");
    assert!(plan.contains("Insert on refresh_claims"), "it writes its marks into the claims:\n{plan}");
    assert!(!plan.contains("Update on refresh_schedule"), "not into the schedule:\n{plan}");
    // Vacuumed: the schedule's pages are all-visible, as they are in a live system for
    // the rows not written since the last autovacuum (most of the due ones, last
    // written by their previous refresh). The index alone answers the walk.
    sqlx::query("VACUUM ANALYZE refresh_schedule").execute(&app.db).await.unwrap();
    let plan = claim_plan(&app).await;
    assert!(
        plan.contains("Index Only Scan using refresh_schedule_walk_idx on refresh_schedule"),
        "the claim reads only the schedule's due index:\n{plan}"
    );
    assert!(!plan.contains("connected_accounts"), "nor reads the accounts:\n{plan}");
    // Publishing a lost claim's accounts joins the claims (the accounts in flight) to the
    // due schedule, by key or by the due index, whichever the planner finds cheaper.
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {}", pipes::store::schedule::RECLAIM_SQL)))
            .bind(pipes::store::schedule::new_claim_id())
            .bind(pipes::store::schedule::new_claim_id())
            .fetch_all(&app.db)
            .await
            .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("Update on refresh_claims"), "the re-claim moves the claims:\n{plan}");
    assert!(!plan.contains("Seq Scan on refresh_schedule"), "and never scans the schedule:\n{plan}");
    assert!(!plan.contains("connected_accounts"), "nor reads the accounts:\n{plan}");
}

#[tokio::test]
async fn the_claim_reads_one_window_per_batch_and_walks_past_a_backlog() {
    use pipes::store::schedule::{claim, new_claim_id, WalkKey, BATCH};
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-window", ClientAuthMethod::Basic).await;
    // Two and a half windows of due accounts, all due at the very same instant (one
    // statement's now()): only the account id orders them.
    let due = (2 * BATCH + BATCH / 2) as i32;
    insert_accounts(&app, &p.integration.id, due + 1_000, due).await;
    sqlx::query("VACUUM ANALYZE refresh_schedule").execute(&app.db).await.unwrap();
    let requeue_after = app.config().requeue_after;
    let start = || WalkKey::before(chrono::DateTime::UNIX_EPOCH);

    // One batch reads its window of the schedule and no more.
    let mut tx = app.db.begin().await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        pipes::store::schedule::CLAIM_SQL
    )))
    .bind(requeue_after)
    .bind(BATCH)
    .bind(chrono::DateTime::UNIX_EPOCH)
    .bind(new_claim_id())
    .bind("")
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let mut read = Vec::new();
    rows_read(&plan, "refresh_schedule", &mut read);
    assert!(!read.is_empty(), "the plan reads the schedule: {plan}");
    assert!(read.iter().all(|&rows| rows <= BATCH as f64), "one window of {BATCH} at most, read {read:?}: {plan}");

    // A walk from the start claims everything, window after window.
    let walk = |cursor: WalkKey| {
        let db = app.db.clone();
        async move {
            let (mut cursor, mut claimed, mut windows) = (cursor, Vec::new(), Vec::new());
            loop {
                let batch = claim(&db, requeue_after, BATCH, &cursor, &new_claim_id()).await.unwrap();
                windows.push(batch.claimed.len());
                claimed.extend(batch.claimed.iter().map(|c| c.account_id.clone()));
                let more = batch.more(BATCH);
                match batch.walked_to {
                    Some(to) if more => cursor = to,
                    _ => return (claimed, windows),
                }
            }
        }
    };
    let (claimed, windows) = walk(start()).await;
    assert_eq!(claimed.len(), due as usize, "windows {windows:?}");
    assert_eq!(claimed.iter().collect::<HashSet<_>>().len(), due as usize, "each account once");
    assert_eq!(windows.len(), 3);

    // The last accounts' claims go (their jobs dead-lettered, say). The next walk from the
    // start finds two full windows of accounts still enqueued, claims nothing there, and
    // goes on to claim exactly the released ones.
    let released: Vec<pipes::ids::AccountId> = sqlx::query_scalar(
        "DELETE FROM refresh_claims WHERE account_id IN
           (SELECT account_id FROM refresh_claims ORDER BY refresh_at DESC, account_id DESC LIMIT 3000)
         RETURNING account_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let (again, windows) = walk(start()).await;
    assert_eq!(windows[..2], [0, 0], "the backlog's windows claim nothing: {windows:?}");
    assert_eq!(again.iter().collect::<HashSet<_>>(), released.iter().collect::<HashSet<_>>());
    assert_eq!(again.len(), released.len());
}

/// The "Actual Rows" of every plan node that reads `relation`.
fn rows_read(node: &serde_json::Value, relation: &str, out: &mut Vec<f64>) {
    match node {
        serde_json::Value::Object(map) => {
            if map.get("Relation Name").and_then(|r| r.as_str()) == Some(relation) {
                out.extend(map.get("Actual Rows").and_then(|r| r.as_f64()));
            }
            map.values().for_each(|v| rows_read(v, relation, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| rows_read(v, relation, out)),
        _ => {}
    }
}
