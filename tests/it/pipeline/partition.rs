//! The pipeline across silent failures: a broker that stops answering without closing
//! anything (a network partition), a shutdown that must not wait for it forever, and a
//! claim that PostgreSQL committed while its answer was lost.

use std::time::{Duration, Instant};

use chrono::Utc;
use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::roles::RoleSet;
use pipes::scheduler::claim::{ClaimError, Claims};
use pipes::scheduler::Tick;
use pipes::state::AppState;
use pipes_workers::{Broker, Publisher, DEFAULT_HEARTBEAT};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use super::{eventually, lease_taken, load, Pipeline, AMQP_URL};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};
use crate::support::proxy::TcpProxy;

async fn enqueued(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM refresh_claims WHERE account_id = $1)")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Turns an integration on or off behind the API's back, as an operator's UPDATE would.
async fn set_enabled(app: &TestApp, integration_id: &str, on: bool) {
    sqlx::query("UPDATE integrations SET enabled = $2 WHERE id = $1")
        .bind(integration_id)
        .bind(on)
        .execute(&app.db)
        .await
        .unwrap();
}

/// Scheduler ticks for `state`, publishing to the test broker's queues (declared here).
async fn ticks(state: AppState, cancel: CancellationToken) -> impl Fn() -> Tick {
    let broker = Broker::connect(AMQP_URL, "pipes-tests").await.unwrap();
    let topology = pipes::queues::topology(&state.config);
    topology.declare(&broker.channel().await.unwrap()).await.unwrap();
    let publisher = Publisher::new(&broker);
    move || {
        let _connection = &broker;
        Tick {
            state: state.clone(),
            publisher: publisher.clone(),
            topology: topology.clone(),
            now: Utc::now(),
            cancel: cancel.clone(),
        }
    }
}

/// Keeps a trace of every claim made from now on in the test's database: a released
/// claim is deleted, possibly before a test polling for it sees it.
async fn trace_claims(app: &TestApp) {
    for statement in [
        "CREATE TABLE claims_seen (account_id text NOT NULL)",
        "CREATE FUNCTION claims_seen_record() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO claims_seen VALUES (NEW.account_id); RETURN NULL; END $$",
        "CREATE TRIGGER claims_seen AFTER INSERT OR UPDATE ON refresh_claims
         FOR EACH ROW EXECUTE FUNCTION claims_seen_record()",
    ] {
        sqlx::query(statement).execute(&app.db).await.unwrap();
    }
}

/// A scheduler claimed the account at some point since [`trace_claims`] (the claim may
/// be released since).
async fn claimed(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM claims_seen WHERE account_id = $1)")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_broker_connection_asks_for_a_short_heartbeat_and_notices_a_silent_broker() {
    let broker = Broker::connect(AMQP_URL, "pipes-tests").await.unwrap();
    assert_eq!(broker.heartbeat(), Duration::from_secs(u64::from(DEFAULT_HEARTBEAT)), "not the broker's 60 s");
    let broker = Broker::connect(&format!("{AMQP_URL}?heartbeat=30"), "pipes-tests").await.unwrap();
    assert_eq!(broker.heartbeat(), Duration::from_secs(30), "the URL's own heartbeat wins");
    // A connection that goes silent is noticed after two missed heartbeats.
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let silent =
        Broker::connect(&format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.addr()), "pipes-tests").await.unwrap();
    assert!(silent.is_connected());
    proxy.stall();
    let noticed = eventually(Duration::from_secs(6), || async { !silent.is_connected() }).await;
    proxy.restore();
    assert!(noticed, "the silent connection was noticed");
}

#[tokio::test]
async fn worker_and_scheduler_cut_off_from_a_silent_broker_finish_the_job_in_flight_and_stop() {
    stop_cut_off_from_the_broker(TcpProxy::stall).await;
}

#[tokio::test]
async fn worker_and_scheduler_cut_off_from_an_unreachable_broker_finish_the_job_in_flight_and_stop() {
    stop_cut_off_from_the_broker(TcpProxy::cut).await;
}

/// A job in flight and a publish awaiting its confirm when `fault` strikes the broker
/// connection, then SIGTERM.
async fn stop_cut_off_from_the_broker(fault: fn(&TcpProxy)) {
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_AMQP_URL", amqp)
            .set("PIPES_REQUEUE_AFTER", "10m")
            .set("PIPES_PROVIDER_TIMEOUT", "10s")
            .set("PIPES_REFRESH_LEASE", "20s");
    })
    .await;
    let p = demo_integration(&app, "pl-silent", ClientAuthMethod::Basic).await;
    trace_claims(&app).await;
    let (first, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    p.demo.push_fault(Fault::Delay(Duration::from_secs(4)));
    let mut pipeline = Pipeline::start(&app);
    assert!(eventually(Duration::from_secs(10), || lease_taken(&app, &first.id)).await, "the worker took the job");
    // Silent: sockets open, nothing answers (acks, basic.cancel, confirms); or cut: every
    // connection reset and reconnecting refused.
    fault(&proxy);
    // An account claimed meanwhile: the scheduler's publish gets no confirm.
    let (second, _) = seed_account(&app, &p, "u2", None, Duration::from_secs(2)).await;
    assert!(eventually(Duration::from_secs(5), || claimed(&app, &second.id)).await, "the scheduler claimed u2");
    // SIGTERM: before, this waited for the broker until lapin gave the connection up.
    let took = pipeline.stop_within(Duration::from_secs(30)).await;
    proxy.restore();
    assert!(took < Duration::from_secs(9), "stopping took {took:?}");
    assert!(load(&app, &first.id).await.token_version > first.token_version, "the job in flight was finished");
    // The job that was never confirmed did not leave its account waiting PIPES_REQUEUE_AFTER.
    assert!(!enqueued(&app, &second.id).await, "the unconfirmed account was released");
}

#[tokio::test]
async fn a_process_stops_after_pipes_shutdown_timeout_even_with_a_job_still_running() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_SHUTDOWN_TIMEOUT", "2s").set("PIPES_PROVIDER_TIMEOUT", "30s").set("PIPES_REFRESH_LEASE", "60s");
    })
    .await;
    let _queues = Pipeline::new(&app); // deletes the queues at the end
    let p = demo_integration(&app, "pl-deadline", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    // The provider takes 30 s to answer: longer than the process may wait.
    p.demo.push_fault(Fault::Delay(Duration::from_secs(30)));
    let cancel = CancellationToken::new();
    let roles = RoleSet { serve: false, scheduler: true, worker: true };
    let run = tokio::spawn(pipes::roles::run(app.config().clone(), roles, cancel.clone()));
    assert!(eventually(Duration::from_secs(10), || lease_taken(&app, &account.id)).await, "the job is running");
    let started = Instant::now();
    cancel.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(10), run).await;
    let took = started.elapsed();
    finished.expect("roles::run returned").expect("task").expect("roles::run succeeded");
    assert!(took >= Duration::from_millis(1900), "it waited for the job first ({took:?})");
    assert!(took < Duration::from_secs(5), "then gave up after PIPES_SHUTDOWN_TIMEOUT ({took:?})");
    assert_eq!(load(&app, &account.id).await.token_version, account.token_version, "the job had not finished");
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_published_on_the_next_tick_not_after_requeue_after() {
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REQUEUE_AFTER", "10m");
    })
    .await;
    let queues = Pipeline::new(&app);
    let p = demo_integration(&app, "pl-lost-claim", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    // The scheduler reaches PostgreSQL through the proxy, on one connection (no ping
    // before each use: under `hold_replies` it would never be answered).
    let mut state = app.state.clone();
    state.db = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_lazy(&format!("postgres://postgres@{}/{}", proxy.addr(), app.db_name))
        .unwrap();
    let tick = ticks(state.clone(), queues.cancel.clone()).await;
    let claims = Claims::default();
    // A tick with nothing due: the connection is open and the claim prepared on it. It is
    // back in the pool once sqlx's ping on release is answered: wait for that.
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { state.db.num_idle() == 1 }).await, "connection released");

    // The account comes due; PostgreSQL runs the next claim, but its answer is lost.
    sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - interval '1 second' WHERE account_id = $1")
        .bind(&account.id)
        .execute(&app.db)
        .await
        .unwrap();
    proxy.hold_replies();
    let lost = tokio::spawn(claims.clone().enqueue_due(tick()));
    assert!(eventually(Duration::from_secs(5), || enqueued(&app, &account.id)).await, "the claim committed");
    proxy.cut();
    let failed = tokio::time::timeout(Duration::from_secs(5), lost).await.expect("the claim fails").unwrap();
    assert!(matches!(failed, Err(ClaimError::Db(_))), "{failed:?}");
    assert_eq!(Pipeline::depth(&app, "refresh").await, 0, "nothing was published");

    // PostgreSQL is reachable again: the next tick that gets through publishes the account,
    // although PIPES_REQUEUE_AFTER (10 min) is far off.
    proxy.restore();
    let published = eventually(Duration::from_secs(10), || async {
        claims.clone().enqueue_due(tick()).await.is_ok() && Pipeline::depth(&app, "refresh").await == 1
    })
    .await;
    assert!(published, "the lost claim's account was published");
    // Once: later ticks publish nothing more.
    claims.clone().enqueue_due(tick()).await.unwrap();
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 1, "published once");
    assert!(enqueued(&app, &account.id).await, "and marked enqueued for the worker");
}

/// Between full walks a tick walks the due range only from the high-water mark of the
/// walks before it, so a backlog of claimed accounts is not read again on every tick; what
/// became claimable behind the mark without moving forward (a released claim, an import of
/// a token long expired) waits for the next full walk, and no longer.
#[tokio::test]
async fn ticks_between_full_walks_start_at_the_high_water_mark_and_a_full_walk_finds_what_lies_behind_it() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REQUEUE_AFTER", "10m");
    })
    .await;
    let queues = Pipeline::new(&app);
    let p = demo_integration(&app, "pl-walk", ClientAuthMethod::Basic).await;
    let mut accounts = Vec::new();
    for user in ["behind", "mark", "late-import", "new"] {
        accounts.push(seed_account(&app, &p, user, None, Duration::from_secs(3600)).await.0);
    }
    let [behind, mark, late, new] = [0, 1, 2, 3].map(|i| accounts[i].id.clone());
    let due = |id: &str, ago: &str| {
        sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - $2::interval WHERE account_id = $1")
            .bind(id.to_owned())
            .bind(ago.to_owned())
    };
    let tick = ticks(app.state.clone(), queues.cancel.clone()).await;
    let every = Duration::from_secs(3);
    let claims = Claims::default().with_full_walk_every(every);

    // A full walk claims two accounts: the mark is the later one's refresh_at.
    due(&behind, "2 minutes").execute(&app.db).await.unwrap();
    due(&mark, "1 minute").execute(&app.db).await.unwrap();
    let full = Instant::now();
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 2);

    // Behind the mark, a claim goes (as a worker that dead-lettered its job drops it) and a
    // token long expired is imported; ahead of it, an account comes due.
    sqlx::query("DELETE FROM refresh_claims WHERE account_id = $1").bind(&behind).execute(&app.db).await.unwrap();
    due(&late, "2 hours").execute(&app.db).await.unwrap();
    due(&new, "1 second").execute(&app.db).await.unwrap();
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert!(full.elapsed() < every, "the test machine is too slow for this test");
    assert_eq!(Pipeline::depth(&app, "refresh").await, 3, "only the account ahead of the mark");
    assert!(enqueued(&app, &new).await);
    assert!(!enqueued(&app, &behind).await && !enqueued(&app, &late).await);

    // The next full walk publishes both, and nothing twice. (`full` was taken just before
    // the first walk started: a little more than `every` since then.)
    tokio::time::sleep(every.saturating_sub(full.elapsed()) + Duration::from_millis(50)).await;
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 5, "the full walk found both");
    assert!(enqueued(&app, &behind).await && enqueued(&app, &late).await);
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 5, "published once");
}

/// A walk that claims nothing sets no mark: accounts that came due while their
/// integration was off are claimed on the first tick after it is back on, not at the
/// next full walk.
#[tokio::test]
async fn accounts_due_while_their_integration_was_off_are_claimed_on_the_next_tick() {
    let app = TestApp::spawn().await;
    let queues = Pipeline::new(&app);
    let p = demo_integration(&app, "pl-off", ClientAuthMethod::Basic).await;
    let mut ids = Vec::new();
    for user in ["a", "b", "c"] {
        ids.push(seed_account(&app, &p, user, None, Duration::from_secs(3600)).await.0.id);
    }
    set_enabled(&app, &p.integration.id, false).await;
    // Due a minute apart: far more than the margin a walk keeps behind its mark.
    for (i, id) in ids.iter().enumerate() {
        sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - $2 * interval '1 minute' WHERE account_id = $1")
            .bind(id)
            .bind(3 - i as i32)
            .execute(&app.db)
            .await
            .unwrap();
    }
    let tick = ticks(app.state.clone(), queues.cancel.clone()).await;
    let claims = Claims::default().with_full_walk_every(Duration::from_secs(3600));

    claims.clone().enqueue_due(tick()).await.unwrap();
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 0, "nothing claimed while the integration is off");
    set_enabled(&app, &p.integration.id, true).await;
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 3, "all three on the next tick");
}

/// An integration enabled again may have due accounts behind the mark of the walks that
/// skipped them (another integration's accounts moved it on): its first tick walks from
/// the start and claims them, instead of leaving them to the next full walk.
#[tokio::test]
async fn an_integration_enabled_again_has_its_accounts_behind_the_mark_claimed_on_the_next_tick() {
    let app = TestApp::spawn().await;
    let queues = Pipeline::new(&app);
    let on = demo_integration(&app, "pl-mark-on", ClientAuthMethod::Basic).await;
    let off = demo_integration(&app, "pl-mark-off", ClientAuthMethod::Basic).await;
    let ahead = seed_account(&app, &on, "ahead", None, Duration::from_secs(3600)).await.0.id;
    let mut behind = Vec::new();
    for user in ["a", "b"] {
        behind.push(seed_account(&app, &off, user, None, Duration::from_secs(3600)).await.0.id);
    }
    let due = |ids: Vec<pipes::ids::AccountId>, ago: &str| {
        sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - $2::interval WHERE account_id = ANY($1)")
            .bind(ids)
            .bind(ago.to_owned())
    };
    due(behind.clone(), "10 minutes").execute(&app.db).await.unwrap();
    due(vec![ahead.clone()], "1 minute").execute(&app.db).await.unwrap();
    set_enabled(&app, &off.integration.id, false).await;
    let tick = ticks(app.state.clone(), queues.cancel.clone()).await;
    let claims = Claims::default().with_full_walk_every(Duration::from_secs(3600));

    // The full walk claims the one account it may: the mark is nine minutes past the others.
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 1);
    assert!(enqueued(&app, &ahead).await);
    set_enabled(&app, &off.integration.id, true).await;
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 3, "the accounts behind the mark, on the next tick");
    claims.clone().enqueue_due(tick()).await.unwrap();
    assert_eq!(Pipeline::depth(&app, "refresh").await, 3, "and once");
}
