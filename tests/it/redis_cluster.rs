//! The token cache on a Redis Cluster: `PIPES_REDIS_URL` lists the nodes of a
//! real 3-node cluster on loopback ports. Entries spread over every node and
//! are read back by slot; a disconnect or a reauthorization reaches another
//! replica's local cache through the cluster's pub/sub within a second; an
//! integration's entries are evicted from every primary; and reads go on
//! from PostgreSQL while the whole cluster is down, then use it again.

use std::time::{Duration, Instant};

use chrono::Utc;
use pipes::api;
use pipes::cache::{entry_key, Lookup};
use pipes::config::Config;
use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use pipes::state::AppState;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::app::{test_settings, TestApp};
use crate::support::cluster::RedisCluster;
use crate::support::fixtures::{demo_integration, seed_account};

const HOUR: Duration = Duration::from_secs(3600);

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

async fn spawn_on(cluster: &RedisCluster) -> TestApp {
    let url = cluster.url();
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REDIS_URL", url);
    })
    .await;
    assert!(app.state.redis.topology().cluster, "a URL listing several nodes is a cluster");
    let local = app.state.cache.local().clone();
    assert!(eventually(Duration::from_secs(5), async || local.is_enabled()).await.is_some(), "subscription live");
    app
}

async fn read_at(app: &TestApp, base_url: &str, slug: &str, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{base_url}/data-integrations/{slug}/token"))
        .bearer_auth(&app.tokens_key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn token_of(answer: &Value) -> String {
    assert_eq!(answer["active"], true, "{answer}");
    answer["access_token"]["access_token"].as_str().expect("access_token").to_owned()
}

/// A second `serve` replica on the same database and cluster; returns its URL.
async fn spawn_replica(app: &TestApp, cluster: &RedisCluster, cancel: &CancellationToken) -> (AppState, String) {
    let mut settings = test_settings(&app.db_name, &app.unique, &app.base_url);
    settings.set("PIPES_REDIS_URL", cluster.url());
    let replica = AppState::new(Config::from_settings(&settings).unwrap(), cancel.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(listener, api::router(replica.clone()), cancel.clone()));
    let local = replica.cache.local().clone();
    assert!(
        eventually(Duration::from_secs(5), async || local.is_enabled()).await.is_some(),
        "replica subscription live"
    );
    (replica, url)
}

#[tokio::test]
async fn token_reads_are_cached_across_the_slots_of_every_cluster_node() {
    let cluster = RedisCluster::start().await;
    let app = spawn_on(&cluster).await;
    let p = demo_integration(&app, "rcl-spread", ClientAuthMethod::Basic).await;
    let mut tokens = Vec::new();
    for i in 0..40 {
        let (_, token) = seed_account(&app, &p, &format!("u{i}"), None, HOUR).await;
        let (status, answer) = read_at(&app, &app.base_url, "rcl-spread", json!({"user_id": format!("u{i}")})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(token_of(&answer), token);
        tokens.push(token);
    }
    let per_node = cluster.keys_per_node(&format!("it_{}:tok:rcl-spread:*", app.unique));
    assert_eq!(per_node.iter().map(Vec::len).sum::<usize>(), 40, "one entry per account: {per_node:?}");
    assert!(per_node.iter().all(|keys| !keys.is_empty()), "entries spread over every node: {per_node:?}");
    // Each entry is read back from the node owning its slot.
    for (i, token) in tokens.iter().enumerate() {
        match app
            .state
            .cache
            .get("rcl-spread", &crate::support::owner(&format!("u{i}"), None), Utc::now())
            .await
            .expect("cluster GET")
        {
            Lookup::Hit(entry) => assert_eq!(entry.access_token.expose(), token),
            Lookup::Miss => panic!("u{i} not cached"),
        }
    }
    assert_eq!(p.demo.stats().refreshes, 0);
}

#[tokio::test]
async fn disconnects_and_reauthorizations_reach_every_replica_through_the_cluster_within_a_second() {
    let cluster = RedisCluster::start().await;
    let app = spawn_on(&cluster).await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let (replica, replica_url) = spawn_replica(&app, &cluster, &cancel).await;
    let p = demo_integration(&app, "rcl-inval", ClientAuthMethod::Basic).await;
    let (_, gone_token) = seed_account(&app, &p, "leaver", Some("org_1"), HOUR).await;
    let (reauth, reauth_token) = seed_account(&app, &p, "revoked", None, HOUR).await;
    let leaver = json!({"user_id": "leaver", "organization_id": "org_1"});
    let revoked = json!({"user_id": "revoked"});
    for _ in 0..2 {
        assert_eq!(token_of(&read_at(&app, &replica_url, "rcl-inval", leaver.clone()).await.1), gone_token);
        assert_eq!(token_of(&read_at(&app, &replica_url, "rcl-inval", revoked.clone()).await.1), reauth_token);
    }
    for (user, org) in [("leaver", Some("org_1")), ("revoked", None)] {
        let key = entry_key(replica.cache.redis(), "rcl-inval", &crate::support::owner(user, org));
        assert!(
            replica.cache.local().get(&key, Utc::now()).is_some(),
            "the replica answers {user} from its local cache"
        );
    }

    // A disconnect through the API of the first process.
    let (status, body) = app
        .admin(Method::DELETE, "/user_management/users/leaver/connected_accounts/rcl-inval?organization_id=org_1", None)
        .await;
    assert_eq!(status, 204, "{body}");
    let not_installed = json!({"active": false, "error": "not_installed"});
    let took = eventually(Duration::from_secs(1), async || {
        read_at(&app, &replica_url, "rcl-inval", leaver.clone()).await.1 == not_installed
    })
    .await;
    assert!(took.is_some(), "the replica stopped serving the disconnected token within 1 s");

    // A refresh that finds the grant revoked, in the first process.
    assert!(p.demo.revoke_grant_of(&reauth_token));
    sqlx::query("UPDATE refresh_schedule SET refresh_at = now() WHERE account_id = $1")
        .bind(&reauth.id)
        .execute(&app.db)
        .await
        .unwrap();
    let outcome = app.state.refresher.refresh(&p.integration, &reauth.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::NeedsReauthorization), "{outcome:?}");
    let needs = json!({"active": false, "error": "needs_reauthorization"});
    let took = eventually(Duration::from_secs(1), async || {
        read_at(&app, &replica_url, "rcl-inval", revoked.clone()).await.1 == needs
    })
    .await;
    assert!(took.is_some(), "the replica stopped serving the revoked grant's token within 1 s");
}

#[tokio::test]
async fn an_integration_change_evicts_its_entries_from_every_primary() {
    let cluster = RedisCluster::start().await;
    let app = spawn_on(&cluster).await;
    let changed = demo_integration(&app, "rcl-evict", ClientAuthMethod::Basic).await;
    let other = demo_integration(&app, "rcl-keep", ClientAuthMethod::Basic).await;
    for i in 0..30 {
        for p in [&changed, &other] {
            let slug = &p.integration.slug;
            seed_account(&app, p, &format!("u{i}"), None, HOUR).await;
            let (status, answer) = read_at(&app, &app.base_url, slug, json!({"user_id": format!("u{i}")})).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    let count = |slug: &str| -> Vec<usize> {
        cluster.keys_per_node(&format!("it_{}:tok:{slug}:*", app.unique)).iter().map(Vec::len).collect()
    };
    let before = count("rcl-evict");
    assert_eq!(before.iter().sum::<usize>(), 30);
    assert!(before.iter().filter(|n| **n > 0).count() >= 2, "entries on several nodes: {before:?}");

    // Narrowing the scopes changes every cached answer's missing_scopes.
    let (status, body) =
        app.admin(Method::PUT, "/data-integrations/rcl-evict", Some(json!({"scopes": ["read"]}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count("rcl-evict"), vec![0, 0, 0], "every primary was scanned");
    assert_eq!(count("rcl-keep").iter().sum::<usize>(), 30, "other integrations keep their entries");
    let (_, answer) = read_at(&app, &app.base_url, "rcl-evict", json!({"user_id": "u1"})).await;
    assert_eq!(answer["access_token"]["missing_scopes"], json!([]), "{answer}");
}

#[tokio::test]
async fn reads_fall_back_to_postgres_while_the_cluster_is_down_and_use_it_again_after() {
    let cluster = RedisCluster::start().await;
    let app = spawn_on(&cluster).await;
    let p = demo_integration(&app, "rcl-down", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (_, expired) = seed_account(&app, &p, "u2", None, Duration::from_secs(5)).await;
    let u1 = json!({"user_id": "u1"});
    assert_eq!(token_of(&read_at(&app, &app.base_url, "rcl-down", u1.clone()).await.1), token);

    cluster.stop_all();
    let local = app.state.cache.local().clone();
    assert!(
        eventually(Duration::from_secs(3), async || !local.is_enabled()).await.is_some(),
        "the lost subscription turns the local cache off"
    );
    for _ in 0..3 {
        let started = Instant::now();
        let (status, answer) = read_at(&app, &app.base_url, "rcl-down", u1.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(token_of(&answer), token);
        assert!(started.elapsed() < Duration::from_secs(2), "answered from PostgreSQL in {:?}", started.elapsed());
    }
    let (status, answer) = read_at(&app, &app.base_url, "rcl-down", json!({"user_id": "u2"})).await;
    assert_eq!(status, 200, "on-demand refresh works without Redis: {answer}");
    assert_ne!(token_of(&answer), expired);

    cluster.restart_all().await;
    assert!(
        eventually(Duration::from_secs(10), async || local.is_enabled()).await.is_some(),
        "the subscription is back with the cluster"
    );
    let cached = eventually(Duration::from_secs(10), async || {
        read_at(&app, &app.base_url, "rcl-down", json!({"user_id": "u1"})).await;
        matches!(
            app.state.cache.get("rcl-down", &crate::support::owner("u1", None), Utc::now()).await,
            Ok(Lookup::Hit(_))
        )
    })
    .await;
    assert!(cached.is_some(), "reads fill the cluster again");
}

#[test]
fn the_redis_url_names_one_server_or_a_cluster() {
    use pipes::redis_conn::topology;
    let single = topology("redis://127.0.0.1:6379").unwrap();
    assert!(!single.cluster);
    assert_eq!(single.nodes, ["redis://127.0.0.1:6379"]);
    let listed = topology("redis://10.0.0.1:7001, redis://10.0.0.2:7002").unwrap();
    assert!(listed.cluster);
    assert_eq!(listed.nodes, ["redis://10.0.0.1:7001", "redis://10.0.0.2:7002"]);
    let scheme = topology("redis+cluster://10.0.0.1:7001,10.0.0.2:7002").unwrap();
    assert!(scheme.cluster);
    assert_eq!(scheme.nodes, ["redis://10.0.0.1:7001", "redis://10.0.0.2:7002"]);
    assert!(topology("redis+cluster://10.0.0.1:7001").unwrap().cluster, "one seed node is enough");
    assert!(topology("").is_err());
    assert!(topology("http://nope").is_err());
}
