//! The refresh pipeline end to end: scheduler → RabbitMQ → worker → demo provider →
//! PostgreSQL → Redis, with real infrastructure. Each test runs its own scheduler and
//! workers in-process on its own queue prefix and deletes its queues at the end.

mod faults;
mod partition;
mod schedule;

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use pipes::cache::Lookup;
use pipes::demo_provider::{ClientAuthMethod, Fault, Shape};
use pipes::state::AppState;
use pipes::store::accounts::{self, Account, AccountState};
use pipes_workers::lapin::options::QueueDeleteOptions;
use pipes_workers::Broker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Polls `condition` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn load(app: &TestApp, id: &str) -> Account {
    accounts::find_by_id(&app.db, app.state.keyring(), &id.into()).await.unwrap().expect("account exists")
}

/// A refresh of the account is under way (its lease is held).
pub async fn lease_taken(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT lease_until IS NOT NULL AND lease_until > now() FROM connected_accounts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Scheduler and workers of one test, plus the cleanup of its queues.
pub struct Pipeline {
    pub cancel: CancellationToken,
    handles: Vec<JoinHandle<()>>,
    queues: Vec<String>,
}

impl Pipeline {
    pub fn new(app: &TestApp) -> Pipeline {
        let queues = pipes::queues::topology(app.config()).queue_names();
        Pipeline { cancel: CancellationToken::new(), handles: Vec::new(), queues }
    }

    /// A scheduler and one worker on the app's state.
    pub fn start(app: &TestApp) -> Pipeline {
        let mut p = Pipeline::new(app);
        p.scheduler(app.state.clone());
        p.worker(app.state.clone());
        p
    }

    pub fn scheduler(&mut self, state: AppState) {
        self.handles.push(pipes::scheduler::spawn(state, self.cancel.clone()));
    }

    pub fn worker(&mut self, state: AppState) {
        self.handles.push(pipes::worker::spawn(state, self.cancel.clone()));
    }

    /// Cancels and waits for every role to finish its in-flight work.
    pub async fn stop(&mut self) {
        self.stop_within(Duration::from_secs(20)).await;
    }

    /// Cancels and waits for every role, failing if that takes longer than `limit`;
    /// returns how long it took.
    pub async fn stop_within(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        self.cancel.cancel();
        for handle in self.handles.drain(..) {
            let left = limit.saturating_sub(started.elapsed());
            tokio::time::timeout(left, handle).await.expect("roles stop in time").expect("role task");
        }
        started.elapsed()
    }

    /// Messages in one of this app's queues (`refresh`, `refresh.dead`, …).
    pub async fn depth(app: &TestApp, suffix: &str) -> u32 {
        let topology = pipes::queues::topology(app.config());
        let name = format!("{}.{suffix}", topology.prefix);
        let broker = Broker::connect(AMQP_URL, "pipes-tests").await.unwrap();
        let depths = topology.passive_depths(&broker.channel().await.unwrap()).await.unwrap();
        depths.into_iter().find(|(n, _)| *n == name).map(|(_, d)| d).expect("queue exists")
    }
}

impl Drop for Pipeline {
    /// Deletes the queues even after a failed assertion, on a thread of its own (the test's
    /// runtime may be unwinding) over a direct connection (the test's may be cut).
    fn drop(&mut self) {
        self.cancel.cancel();
        let names = std::mem::take(&mut self.queues);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(broker) = Broker::connect(AMQP_URL, "pipes-tests-cleanup").await else { return };
                for name in names {
                    // A channel per queue: deleting a missing one would close the channel.
                    if let Ok(channel) = broker.channel().await {
                        let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
                    }
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn a_due_account_is_refreshed_before_expiry_without_any_read_and_the_rotation_is_stored() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-due", ClientAuthMethod::Basic).await;
    let (account, old_access) = seed_account(&app, &p, "u1", None, Duration::from_secs(4)).await;
    let mut pipeline = Pipeline::start(&app);
    let refreshed = eventually(Duration::from_secs(10), || async {
        load(&app, &account.id).await.token_version > account.token_version
    })
    .await;
    assert!(refreshed, "the scheduler and a worker refreshed the account");
    let stored = load(&app, &account.id).await;
    let now = Utc::now();
    let refreshed_at: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT last_refreshed_at FROM connected_accounts WHERE id = $1")
            .bind(&account.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(refreshed_at < account.expires_at.unwrap(), "refreshed before the old token expired");
    let new_access = stored.access_token.as_ref().unwrap().expose().to_owned();
    assert_ne!(new_access, old_access);
    assert!(p.demo.access_token_valid(&new_access));
    let old_refresh = account.refresh_token.as_ref().unwrap().expose();
    let new_refresh = stored.refresh_token.as_ref().unwrap().expose();
    assert_ne!(new_refresh, old_refresh, "the rotated refresh token is stored");
    assert!(p.demo.is_grant_alive_for_refresh(new_refresh));
    assert!(stored.refresh_at.unwrap() > now && stored.refresh_at < stored.expires_at);
    // The Redis entry is the new token, so the next read is a hit.
    match app.state.cache.get("pl-due", &crate::support::owner("u1", None), Utc::now()).await.unwrap() {
        Lookup::Hit(hit) => assert_eq!(hit.version, stored.token_version),
        Lookup::Miss => panic!("the cache holds the new token"),
    }
    pipeline.stop().await;
    assert_eq!(p.demo.stats().refreshes, 1);
    assert_eq!(Pipeline::depth(&app, "refresh").await, 0, "the job was acked");
}

#[tokio::test]
async fn a_refresh_response_without_a_new_refresh_token_keeps_the_old_one() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-norot", ClientAuthMethod::Body).await;
    p.demo.set_shape(Shape::NoRotation);
    let (account, old_access) = seed_account(&app, &p, "u1", Some("org_1"), Duration::from_secs(3)).await;
    let mut pipeline = Pipeline::start(&app);
    assert!(
        eventually(Duration::from_secs(10), || async {
            load(&app, &account.id).await.token_version > account.token_version
        })
        .await
    );
    let stored = load(&app, &account.id).await;
    assert_ne!(stored.access_token.as_ref().unwrap().expose(), old_access);
    assert_eq!(stored.refresh_token.as_ref().unwrap().expose(), account.refresh_token.as_ref().unwrap().expose());
    assert!(stored.refresh_at.is_some(), "still scheduled: it can be refreshed again");
    pipeline.stop().await;
}

#[tokio::test]
async fn a_revoked_grant_marks_reauthorization_with_exactly_one_event() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-revoked", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", None, Duration::from_secs(3)).await;
    app.state.cache.put(&account, &p.integration, Utc::now()).await;
    assert!(p.demo.revoke_grant_of(&token));
    let mut pipeline = Pipeline::start(&app);
    assert!(
        eventually(Duration::from_secs(10), || async {
            load(&app, &account.id).await.state == AccountState::NeedsReauthorization
        })
        .await
    );
    // A few more ticks change nothing: no second job, no second event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pipeline.stop().await;
    let events: Vec<String> = sqlx::query_scalar("SELECT event FROM events").fetch_all(&app.db).await.unwrap();
    assert_eq!(events, vec!["pipes.connected_account.reauthorization_needed".to_owned()]);
    assert_eq!(p.demo.stats().token_requests, 1);
    assert!(
        matches!(
            app.state.cache.get("pl-revoked", &crate::support::owner("u1", None), Utc::now()).await.unwrap(),
            Lookup::Miss
        ),
        "cache entry dropped"
    );
}

#[tokio::test]
async fn two_503s_then_success_are_retried_and_the_account_stays_connected() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-503", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3)).await;
    p.demo.push_fault(Fault::Status(503));
    p.demo.push_fault(Fault::Status(503));
    let mut pipeline = Pipeline::start(&app);
    assert!(
        eventually(Duration::from_secs(10), || async {
            load(&app, &account.id).await.token_version > account.token_version
        })
        .await
    );
    pipeline.stop().await;
    let stored = load(&app, &account.id).await;
    assert_eq!(stored.state, AccountState::Connected);
    assert_eq!(stored.last_refresh_error, None, "success clears the last error");
    let stats = p.demo.stats();
    assert_eq!((stats.token_requests, stats.refreshes), (3, 1));
    assert_eq!(Pipeline::depth(&app, "refresh.dead").await, 0);
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REFRESH_RETRY_DELAYS", "200ms,1s,2s");
    })
    .await;
    let p = demo_integration(&app, "pl-429", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3)).await;
    p.demo.push_fault(Fault::TooManyRequests { retry_after_secs: 1 });
    let mut pipeline = Pipeline::start(&app);
    assert!(eventually(Duration::from_secs(10), || async { p.demo.stats().token_requests >= 1 }).await);
    let limited_at = Instant::now();
    assert!(eventually(Duration::from_secs(10), || async { p.demo.stats().refreshes >= 1 }).await);
    let waited = limited_at.elapsed();
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}, before Retry-After: 1");
    assert!(waited < Duration::from_millis(1900), "retried after {waited:?}: the 1 s step, not a later one");
    pipeline.stop().await;
    assert_eq!(load(&app, &account.id).await.state, AccountState::Connected);
}

#[tokio::test]
async fn invalid_client_marks_the_integration_invalid_and_leaves_accounts_untouched() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-client", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3)).await;
    p.demo.push_fault(Fault::InvalidClient);
    let mut pipeline = Pipeline::start(&app);
    let invalid = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM integrations WHERE id = $1")
            .bind(&p.integration.id)
            .fetch_one(&app.db)
            .await
            .unwrap()
            == "invalid"
    };
    assert!(eventually(Duration::from_secs(10), invalid).await);
    // More ticks: the scheduler leaves the integration's accounts alone until it is fixed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pipeline.stop().await;
    let stored = load(&app, &account.id).await;
    assert_eq!(stored.state, AccountState::Connected);
    assert_eq!(stored.token_version, account.token_version, "tokens untouched");
    assert_eq!(stored.refresh_token.as_ref().unwrap().expose(), account.refresh_token.as_ref().unwrap().expose());
    assert_eq!(p.demo.stats().token_requests, 1);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn a_job_that_exhausts_its_retries_is_dead_lettered_and_the_next_pass_tries_again() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-dead", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(4)).await;
    for _ in 0..4 {
        p.demo.push_fault(Fault::Status(502));
    }
    let mut pipeline = Pipeline::start(&app);
    assert!(
        eventually(Duration::from_secs(15), || async {
            load(&app, &account.id).await.token_version > account.token_version
        })
        .await
    );
    pipeline.stop().await;
    assert_eq!(Pipeline::depth(&app, "refresh.dead").await, 1, "the exhausted job was dead-lettered");
    let stored = load(&app, &account.id).await;
    assert_eq!(stored.state, AccountState::Connected, "a transient failure never asks for reauthorization");
    let stats = p.demo.stats();
    assert_eq!((stats.token_requests, stats.refreshes, stats.reuse_detected), (5, 1, 0));
}

#[tokio::test]
async fn a_job_naming_another_integration_than_its_accounts_is_dropped_and_counted() {
    let app = TestApp::spawn().await;
    let mine = demo_integration(&app, "pl-mine", ClientAuthMethod::Basic).await;
    let other = demo_integration(&app, "pl-other", ClientAuthMethod::Basic).await;
    // Not due for an hour: only the forged job could make anything happen.
    let (account, token) = seed_account(&app, &mine, "u1", None, Duration::from_secs(3600)).await;
    let mut pipeline = Pipeline::new(&app);
    pipeline.worker(app.state.clone());
    let broker = Broker::connect(AMQP_URL, "pipes-tests").await.unwrap();
    let topology = pipes::queues::topology(app.config());
    topology.declare(&broker.channel().await.unwrap()).await.unwrap();
    let forged =
        pipes::queues::RefreshJob::V1 { account_id: account.id.clone(), integration_id: other.integration.id.clone() };
    pipes_workers::Publisher::new(&broker)
        .publish(&topology.work_queue(pipes::queues::REFRESH), &forged, pipes_workers::Headers::new())
        .await
        .unwrap();
    let series = "pipes_refresh_jobs_dropped_total{reason=\"integration_mismatch\"}";
    let dropped = eventually(Duration::from_secs(10), || async { crate::tokens::metric(&app, series) >= 1.0 }).await;
    assert!(dropped, "the worker dropped the job and counted it");
    assert_eq!((mine.demo.refreshes(), other.demo.refreshes()), (0, 0), "no provider was asked");
    let stored = load(&app, &account.id).await;
    assert_eq!(stored.access_token.as_ref().map(|t| t.expose().to_owned()), Some(token));
    assert_eq!(Pipeline::depth(&app, "refresh").await, 0, "acknowledged, not retried");
    pipeline.stop().await;
}
