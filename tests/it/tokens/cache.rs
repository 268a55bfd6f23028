//! The caches of the read path: Redis going away (reads fall back to
//! PostgreSQL), the in-process answer cache and its invalidation across
//! replicas, and its version rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pipes::api;
use pipes::cache::entry_key;
use pipes::config::Config;
use pipes::demo_provider::ClientAuthMethod;
use pipes::read::local::{LocalCache, Ready};
use pipes::secret::Secret;
use pipes::state::AppState;
use pipes::store::accounts::{self, AccountState, TokenSet, WriteMode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{metric, read, token_of, HOUR};
use crate::support::app::{test_settings, TestApp};
use crate::support::fixtures::{demo_integration, seed_account};
use crate::support::proxy::TcpProxy;

/// Polls `check` every 20 ms until it holds or `within` passes; returns the time taken.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn spawn_behind_redis_proxy() -> (TestApp, TcpProxy) {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let url = format!("redis://{}", proxy.addr());
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REDIS_URL", url);
    })
    .await;
    let local = app.state.cache.local().clone();
    assert!(eventually(Duration::from_secs(5), async || local.is_enabled()).await.is_some(), "subscription live");
    (app, proxy)
}

/// Replaces an owner's tokens in PostgreSQL only, as a write that never
/// reached this replica's caches would.
async fn replace_in_postgres_only(app: &TestApp, integration_id: &str, user: &str, token: &str) {
    let tokens = TokenSet {
        access_token: Secret::new(token),
        refresh_token: Some(Secret::new("r")),
        expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        scopes: vec!["read".into()],
    };
    let mut tx = app.db.begin().await.unwrap();
    accounts::write_tokens(
        &mut tx,
        app.state.keyring(),
        &WriteMode::UpdateOnly,
        &integration_id.into(),
        &crate::support::owner(user, None),
        None,
        &Default::default(),
        &accounts::Credential::OAuth,
        &tokens,
        None,
        AccountState::Connected,
    )
    .await
    .unwrap()
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn reads_are_answered_from_postgres_while_redis_is_cut() {
    let (app, proxy) = spawn_behind_redis_proxy().await;
    let p = demo_integration(&app, "tc-cut", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (_, expired_token) = seed_account(&app, &p, "u2", None, Duration::from_secs(5)).await;
    token_of(&read(&app, "tc-cut", json!({"user_id": "u1"})).await.1);
    let degraded_before = metric(&app, "pipes_cache_degraded_total");
    proxy.cut();
    let local = app.state.cache.local().clone();
    assert!(
        eventually(Duration::from_secs(3), async || !local.is_enabled()).await.is_some(),
        "a lost subscription switches the local cache off"
    );
    assert!(local.is_empty(), "and empties it");
    for _ in 0..3 {
        let started = Instant::now();
        let (status, answer) = read(&app, "tc-cut", json!({"user_id": "u1"})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(token_of(&answer), token);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    // On-demand refresh works without Redis too.
    let (status, answer) = read(&app, "tc-cut", json!({"user_id": "u2"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(token_of(&answer), expired_token);
    assert!(metric(&app, "pipes_cache_degraded_total") >= degraded_before + 3.0);
    proxy.restore();
    assert!(eventually(Duration::from_secs(10), async || local.is_enabled()).await.is_some(), "back once Redis is");
    let (_, answer) = read(&app, "tc-cut", json!({"user_id": "u1"})).await;
    assert_eq!(token_of(&answer), token);
}

#[tokio::test]
async fn a_lost_subscription_clears_the_local_cache() {
    let (app, proxy) = spawn_behind_redis_proxy().await;
    let p = demo_integration(&app, "tc-lost", ClientAuthMethod::Basic).await;
    let (_, old) = seed_account(&app, &p, "u1", None, HOUR).await;
    for _ in 0..2 {
        assert_eq!(token_of(&read(&app, "tc-lost", json!({"user_id": "u1"})).await.1), old);
    }
    let key = entry_key(app.state.cache.redis(), "tc-lost", &crate::support::owner("u1", None));
    assert!(app.state.cache.local().get(&key, Utc::now()).is_some(), "answered from the local cache");
    replace_in_postgres_only(&app, &p.integration.id, "u1", "new-token").await;
    proxy.cut();
    let took = eventually(Duration::from_secs(3), async || {
        read(&app, "tc-lost", json!({"user_id": "u1"})).await.1["access_token"]["access_token"] == "new-token"
    })
    .await;
    assert!(took.is_some(), "the local copy was dropped with the subscription");
}

#[tokio::test]
async fn a_disconnect_stops_being_served_by_another_replica_within_a_second() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tc-replicas", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", Some("org_1"), HOUR).await;
    // A second `serve` replica on the same database and Redis prefix.
    let config = Config::from_settings(&test_settings(&app.db_name, &app.unique, &app.base_url)).unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let replica = AppState::new(config, cancel.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, api::router(replica.clone()), cancel.clone()));
    let local = replica.cache.local().clone();
    assert!(eventually(Duration::from_secs(5), async || local.is_enabled()).await.is_some());
    let read_replica = async || -> Value {
        let resp = app
            .http
            .post(format!("{replica_url}/data-integrations/tc-replicas/token"))
            .bearer_auth(&app.tokens_key)
            .json(&json!({"user_id": "u1", "organization_id": "org_1"}))
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    };
    assert_eq!(token_of(&read_replica().await), token);
    let key = entry_key(replica.cache.redis(), "tc-replicas", &crate::support::owner("u1", Some("org_1")));
    assert!(local.get(&key, Utc::now()).is_some(), "the replica answers from its local cache");
    // The disconnect's writes, made by the first process.
    let mut tx = app.db.begin().await.unwrap();
    let gone = accounts::delete(&mut tx, app.state.keyring(), &account.id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    app.state.cache.tombstone("tc-replicas", &gone).await;
    let took = eventually(Duration::from_secs(1), async || {
        read_replica().await == json!({"active": false, "error": "not_installed"})
    })
    .await;
    assert!(took.is_some(), "the replica stopped serving the disconnected token within 1 s");
}

fn ready(version: i64, token: &str) -> Arc<Ready> {
    ready_until(version, token, Utc::now() + chrono::Duration::hours(1))
}

fn ready_until(version: i64, token: &str, fresh_until: chrono::DateTime<Utc>) -> Arc<Ready> {
    Arc::new(Ready {
        account_id: "data_installation_x".into(),
        version,
        fresh_until: Some(fresh_until),
        expires_at: Some(fresh_until + chrono::Duration::seconds(65)),
        stored: Instant::now(),
        token_body: token.as_bytes().to_vec().into(),
        credential_body: token.as_bytes().to_vec().into(),
    })
}

#[tokio::test]
async fn the_local_cache_never_takes_back_an_older_version() {
    let local = LocalCache::default();
    let now = Utc::now();
    local.fill("k", local.epoch(), ready(1, "one"));
    assert!(local.get("k", now).is_none(), "off until a subscription is live");
    local.apply("k|1");
    assert!(local.is_empty(), "and while off it keeps no tombstones either (a worker stores many tokens)");
    local.set_enabled(true);
    local.fill("k", local.epoch(), ready(1, "one"));
    assert_eq!(local.get("k", now).unwrap().token_body, "one");
    // An invalidation of version 2 arrives before a reader puts back the copy
    // of version 1 that it read from Redis just before.
    let epoch = local.epoch();
    local.apply("k|2");
    assert!(local.get("k", now).is_none());
    local.fill("k", epoch, ready(1, "one"));
    assert!(local.get("k", now).is_none(), "older than the invalidation");
    local.fill("k", epoch, ready(2, "two"));
    assert_eq!(local.get("k", now).unwrap().token_body, "two");
    // A clear refuses fills that started before it.
    let epoch = local.epoch();
    local.apply("integration|some-slug");
    local.fill("k", epoch, ready(3, "three"));
    assert!(local.get("k", now).is_none());
    // Not fresh any more: not served.
    local.fill("k", local.epoch(), ready_until(4, "four", now - chrono::Duration::seconds(1)));
    assert!(local.get("k", now).is_none());
    local.set_enabled(false);
    assert!(local.is_empty());
}

/// How many connections listen on the invalidation channel.
async fn subscribers(app: &TestApp) -> i64 {
    let mut conn =
        redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap();
    let counts: Vec<(String, i64)> =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(app.state.cache.channel()).query_async(&mut conn).await.unwrap();
    counts.first().map_or(0, |(_, n)| *n)
}

#[tokio::test]
async fn only_a_process_that_answers_reads_subscribes_to_invalidations() {
    let app = TestApp::spawn().await;
    let config = Config::from_settings(&test_settings(&app.db_name, &app.unique, &app.base_url)).unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The test app serves reads: its subscription is up.
    assert!(eventually(Duration::from_secs(5), async || app.state.cache.local().is_enabled()).await.is_some());
    let before = subscribers(&app).await;
    assert!(before >= 1, "the serving process listens");

    // A scheduler or worker alone: no subscription, and its answer cache stays off.
    let background = AppState::without_local_reads(config.clone(), cancel.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscribers(&app).await, before, "a process without reads receives no invalidations");
    assert!(!background.cache.local().is_enabled());

    // Another serving replica does subscribe.
    let replica = AppState::new(config, cancel.clone()).unwrap();
    assert!(eventually(Duration::from_secs(5), async || replica.cache.local().is_enabled()).await.is_some());
    assert_eq!(subscribers(&app).await, before + 1);
}

#[tokio::test]
async fn a_disconnect_whose_tombstone_was_lost_is_served_by_no_replica_after_redis_returns() {
    let (app, proxy) = spawn_behind_redis_proxy().await;
    let p = demo_integration(&app, "tc-outbox", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    // A second replica behind the same Redis proxy.
    let mut settings = test_settings(&app.db_name, &app.unique, &app.base_url);
    settings.set("PIPES_REDIS_URL", format!("redis://{}", proxy.addr()));
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let replica = AppState::new(Config::from_settings(&settings).unwrap(), cancel.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, api::router(replica.clone()), cancel.clone()));
    let replica_local = replica.cache.local().clone();
    assert!(eventually(Duration::from_secs(5), async || replica_local.is_enabled()).await.is_some());
    let reads = async || -> [Value; 2] {
        let on_replica = app
            .http
            .post(format!("{replica_url}/data-integrations/tc-outbox/token"))
            .bearer_auth(&app.tokens_key)
            .json(&json!({"user_id": "u1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        [read(&app, "tc-outbox", json!({"user_id": "u1"})).await.1, on_replica]
    };
    for answer in reads().await {
        assert_eq!(token_of(&answer), token, "both replicas serve the token before the cut");
    }
    proxy.cut();
    let local = app.state.cache.local().clone();
    assert!(eventually(Duration::from_secs(3), async || !local.is_enabled() && !replica_local.is_enabled())
        .await
        .is_some());
    // The disconnect commits; its tombstone cannot reach Redis, which still holds the token.
    let (status, _) =
        app.admin(reqwest::Method::DELETE, "/user_management/users/u1/connected_accounts/tc-outbox", None).await;
    assert_eq!(status, 204);
    let pending = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM cache_invalidations").fetch_one(&app.db).await.unwrap()
    };
    assert_eq!(pending().await, 1, "the lost invalidation is kept in PostgreSQL");
    proxy.restore();
    // From the moment Redis is back, neither replica ever answers the token.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for answer in reads().await {
            assert_eq!(answer, json!({"active": false, "error": "not_installed"}), "after {:?}", started.elapsed());
        }
    }
    assert_eq!(pending().await, 0, "the outbox was drained once Redis answered");
    assert!(app.state.cache.trusted() && replica.cache.trusted(), "and Redis is trusted again");
    let key = entry_key(app.state.cache.redis(), "tc-outbox", &crate::support::owner("u1", None));
    let mut redis =
        redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap();
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(value.ends_with(b"|"), "Redis holds a tombstone, not the token");
}
