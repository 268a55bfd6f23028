//! The pipeline across silent failures: a broker that stops answering without closing
//! anything (a network partition), and a shutdown that must not wait for it forever.

use std::time::{Duration, Instant};

use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::roles::RoleSet;
use pipes_workers::{Broker, DEFAULT_HEARTBEAT};
use tokio_util::sync::CancellationToken;

use super::{eventually, lease_taken, load, Pipeline, AMQP_URL};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};
use crate::support::proxy::TcpProxy;

async fn enqueued(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT enqueued_at IS NOT NULL FROM connected_accounts WHERE id = $1")
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
    let (first, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(2)).await;
    p.demo.push_fault(Fault::Delay(Duration::from_secs(4)));
    let mut pipeline = Pipeline::start(&app);
    assert!(eventually(Duration::from_secs(10), || lease_taken(&app, &first.id)).await, "the worker took the job");
    // Silent: sockets open, nothing answers (acks, basic.cancel, confirms); or cut: every
    // connection reset and reconnecting refused.
    fault(&proxy);
    // An account claimed meanwhile: the scheduler's publish gets no confirm.
    let (second, _) = seed_account(&app, &p, "u2", None, Duration::from_secs(2)).await;
    // (Cut, the publish fails at once and the account is released: no mark to wait for.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGTERM: before, this waited for the broker until lapin gave the connection up.
    let took = pipeline.stop_within(Duration::from_secs(30)).await;
    proxy.restore();
    eprintln!("stopped in {took:?}");
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
