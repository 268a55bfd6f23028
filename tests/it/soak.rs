//! Findings of the soak (`benches/soak`), kept as regressions: the stored expiry of a token
//! never outlives the token at the provider, and the demo provider's lifetime range knob
//! that the soak relies on.

use std::time::Duration;

use chrono::Utc;
use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::refresh::{Reason, RefreshOutcome};

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

#[tokio::test]
async fn a_refreshed_token_expiry_counts_from_the_request_not_the_slow_answer() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-expiry", ClientAuthMethod::Basic).await;
    p.demo.set_access_ttl(Duration::from_secs(120));
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    // The provider takes 1.5 s to answer `expires_in: 120`; the token it mints lives 120 s
    // from before that wait at most, so Pipes must not believe in more.
    p.demo.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let before = Utc::now();
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::OnDemand).await.unwrap();
    let RefreshOutcome::Refreshed(stored) = outcome else { panic!("expected a refresh, got {outcome:?}") };
    let expires_at = stored.expires_at.expect("an expiring token");
    let latest_true_expiry = before + chrono::Duration::milliseconds(1500) + chrono::Duration::seconds(120);
    assert!(
        expires_at <= before + chrono::Duration::seconds(120) + chrono::Duration::milliseconds(500),
        "stored expiry {expires_at} overstates the lifetime (request sent at {before}, true expiry ≤ {latest_true_expiry})"
    );
    // And what the provider says agrees: the token is not valid for longer than Pipes thinks.
    let (_, left) = p.demo.access_token_info(stored.access_token.as_ref().unwrap().expose()).expect("live token");
    let left = chrono::Duration::from_std(left.expect("expires")).unwrap();
    assert!(Utc::now() + left >= expires_at - chrono::Duration::seconds(1));
}

#[tokio::test]
async fn the_demo_provider_spreads_access_token_lifetimes_over_a_range() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-ttl", ClientAuthMethod::Basic).await;
    p.demo.set_access_ttl_range(Duration::from_secs(120), Duration::from_secs(600));
    let lifetimes: Vec<u64> = (0..200)
        .map(|i| p.demo.issue_grant(&p.integration.client_id, &format!("u{i}"), &["read"]).unwrap().expires_in.unwrap())
        .collect();
    assert!(lifetimes.iter().all(|s| (120..=600).contains(s)), "{lifetimes:?}");
    let distinct: std::collections::BTreeSet<_> = lifetimes.iter().collect();
    assert!(distinct.len() > 50, "lifetimes should be spread, got {} distinct", distinct.len());
    // A fixed lifetime set afterwards wins over the range.
    p.demo.set_access_ttl(Duration::from_secs(90));
    assert_eq!(p.demo.issue_grant(&p.integration.client_id, "fixed", &["read"]).unwrap().expires_in, Some(90));
}

#[tokio::test]
async fn cache_writes_while_redis_is_down_do_not_each_wait_for_a_timeout() {
    let proxy = crate::support::proxy::TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let url = format!("redis://{}", proxy.addr());
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_REDIS_URL", url);
    })
    .await;
    let p = demo_integration(&app, "soak-redis-down", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let cache = &app.state.cache;
    proxy.cut();
    // A refresh worker writes the cache after every refresh; with Redis gone each write used
    // to wait for the write timeout (1 s), so 40 refreshes took 40 s of worker time.
    let started = std::time::Instant::now();
    for _ in 0..40 {
        cache.put(&account, &p.integration, Utc::now()).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "40 cache writes with Redis down took {:?}", started.elapsed());
    // Once Redis is back the cache is used again.
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        cache.put(&account, &p.integration, Utc::now()).await;
        if let Ok(pipes::cache::Lookup::Hit(_)) =
            cache.get(&p.integration.slug, &crate::support::owner("u1", None), Utc::now()).await
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cache was not used again after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotated_token_survives_postgres_dropping_out_between_the_answer_and_the_write() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-pg-cut", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    // A refresher whose PostgreSQL goes through a proxy we can cut.
    let proxy = crate::support::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&format!("postgres://postgres@{}/{}", proxy.addr(), app.db_name))
        .await
        .unwrap();
    let refresher = pipes::refresh::Refresher::new(
        db,
        app.state.keyring().clone(),
        app.state.http.clone(),
        app.state.cache.clone(),
        app.config(),
    );
    // The provider rotates the refresh token after 1.5 s; PostgreSQL is gone from 0.5 s to 3.5 s.
    p.demo.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let integration = p.integration.clone();
    let id = account.id.clone();
    let refreshing = tokio::spawn(async move { refresher.refresh(&integration, &id, Reason::Scheduled).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    let outcome = refreshing.await.unwrap().expect("the write is retried until PostgreSQL is back");
    let RefreshOutcome::Refreshed(stored) = outcome else { panic!("expected a stored refresh, got {outcome:?}") };
    // The new refresh token is the one in PostgreSQL, and it works: no reuse, no revoked grant.
    let fresh = pipes::store::accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    let refresh_token = fresh.refresh_token.as_ref().unwrap().expose().to_owned();
    assert_eq!(Some(refresh_token.as_str()), stored.refresh_token.as_ref().map(|t| t.expose()));
    assert!(p.demo.is_grant_alive_for_refresh(&refresh_token));
    assert_eq!(p.demo.stats().reuse_detected, 0);
}

#[tokio::test]
async fn a_known_api_key_keeps_working_while_postgres_is_unreachable() {
    let app = TestApp::spawn().await;
    let proxy = crate::support::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&format!("postgres://postgres@{}/{}", proxy.addr(), app.db_name))
        .await
        .unwrap();
    let verifier = pipes::auth::KeyVerifier::new(db);
    assert_eq!(verifier.verify(&app.tokens_key).await.unwrap(), Some(pipes::auth::Role::Tokens));
    proxy.cut();
    // Past the cache TTL, PostgreSQL cannot confirm the key: reads served from Redis must
    // not fail for that, and the old verdict is used without waiting on the pool each time.
    tokio::time::sleep(pipes::auth::KEY_CACHE_TTL + Duration::from_millis(200)).await;
    assert_eq!(verifier.verify(&app.tokens_key).await.unwrap(), Some(pipes::auth::Role::Tokens));
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(verifier.verify(&app.tokens_key).await.unwrap(), Some(pipes::auth::Role::Tokens));
    }
    assert!(started.elapsed() < Duration::from_millis(900), "answered from the last verdict: {:?}", started.elapsed());
    // A key never seen before cannot be vouched for: that is an outage (5xx), not a 401.
    assert!(verifier.verify("pipes_sk_unknown").await.is_err());
    proxy.restore();
}

#[tokio::test]
async fn a_token_just_above_min_validity_is_refreshed_not_served() {
    // Run 2 of the soak: tokens judged fresh with min_validity + 0.5 s left arrived at the
    // load generator with less than min_validity left. Freshness now keeps a serve margin
    // on top of min_validity, in the store, the Redis cache and the local answers alike.
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-margin", ClientAuthMethod::Basic).await;
    let min_validity = app.config().min_validity;
    let just_above = min_validity + pipes::policy::SERVE_MARGIN / 2;
    let (account, old) = seed_account(&app, &p, "u1", None, just_above).await;
    assert!(!account.is_fresh(Utc::now(), min_validity));
    // The Redis cache does not keep it either.
    assert!(app.state.cache.entry_for(&account, &p.integration, Utc::now()).is_none());
    let (status, answer) = crate::tokens::read(&app, "soak-margin", serde_json::json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    let served = crate::tokens::token_of(&answer);
    assert_ne!(served, old, "a token inside the serve margin was served");
    assert_eq!(p.demo.stats().refreshes, 1);
    let expires_at: chrono::DateTime<Utc> = answer["access_token"]["expires_at"].as_str().unwrap().parse().unwrap();
    let floor = pipes::policy::serve_floor(min_validity);
    assert!(
        expires_at - Utc::now() > floor - chrono::Duration::seconds(1),
        "served with {:?} left",
        expires_at - Utc::now()
    );
    // Comfortably above the floor, the stored token is served as it is.
    let (_, kept) = seed_account(&app, &p, "u2", None, min_validity + pipes::policy::SERVE_MARGIN * 3).await;
    let (_, answer) = crate::tokens::read(&app, "soak-margin", serde_json::json!({"user_id": "u2"})).await;
    assert_eq!(crate::tokens::token_of(&answer), kept);
    assert_eq!(p.demo.stats().refreshes, 1);
}

#[test]
fn the_stale_tripwire_judges_against_min_validity_itself() {
    use pipes::policy::breaks_promise as is_stale;
    let now = Utc::now();
    let min_validity = Duration::from_secs(60);
    assert!(is_stale(Some(now + chrono::Duration::seconds(59)), now, min_validity));
    assert!(is_stale(Some(now - chrono::Duration::seconds(1)), now, min_validity));
    assert!(!is_stale(Some(now + chrono::Duration::seconds(61)), now, min_validity));
    // Inside the serve margin is not stale: the margin is Pipes' own slack, not the promise.
    assert!(!is_stale(Some(now + chrono::Duration::seconds(62)), now, min_validity));
    assert!(!is_stale(None, now, min_validity), "a token that never expires is never stale");
}

/// Deletes every Redis key of `app`, as a Redis restart without persistence does.
async fn lose_redis(app: &TestApp) {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:*", app.state.config.redis_prefix);
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn a_token_cache_that_redis_lost_is_refilled_from_postgres() {
    // Run 3 of the soak: Redis restarted empty, PostgreSQL was cut 130 s later, and one
    // read in ten failed: accounts nobody had read or refreshed since lived only in
    // PostgreSQL. The scheduler now refills the cache when Redis lost it.
    use pipes::cache::Lookup;
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "soak-refill", ClientAuthMethod::Basic).await;
    let hour = Duration::from_secs(3600);
    let (_, personal) = seed_account(&app, &p, "u1", None, hour).await;
    let (_, in_org) = seed_account(&app, &p, "u1", Some("org_1"), hour).await;
    // Too close to expiry to serve: must not come back.
    seed_account(&app, &p, "u2", None, Duration::from_secs(30)).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let get = |user: &'static str, org: Option<&'static str>| {
        let cache = app.state.cache.clone();
        async move { cache.get("soak-refill", &crate::support::owner(user, org), Utc::now()).await.unwrap() }
    };
    lose_redis(&app).await;
    assert!(matches!(get("u1", None).await, Lookup::Miss));
    // Listen on the invalidation channel: a refill changes no token, so it announces nothing.
    use futures_util::StreamExt;
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(app.state.cache.channel()).await.unwrap();
    let refilled = pipes::cache_warm::refill_if_lost(&app.state, &cancel).await.unwrap();
    assert_eq!(refilled, Some(2));
    let (account, _) = seed_account(&app, &p, "u3", None, hour).await;
    app.state.cache.put(&account, &p.integration, Utc::now()).await;
    let mut messages = pubsub.on_message();
    let mut announced = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        announced.push(message.get_payload::<String>().unwrap());
    }
    drop(messages);
    let u3_key = pipes::cache::entry_key(app.state.cache.redis(), "soak-refill", &crate::support::owner("u3", None));
    assert!(!announced.is_empty() && announced.iter().all(|m| m.starts_with(&u3_key)), "{announced:?}");
    for (org, token) in [(None, &personal), (Some("org_1"), &in_org)] {
        let Lookup::Hit(entry) = get("u1", org).await else { panic!("{org:?} was not refilled") };
        assert_eq!(entry.access_token.expose(), token.as_str());
    }
    assert!(matches!(get("u2", None).await, Lookup::Miss), "a token too old to serve was cached");
    // The marker says this Redis holds the cache: nothing to do until it is lost again.
    assert_eq!(pipes::cache_warm::refill_if_lost(&app.state, &cancel).await.unwrap(), None);
    lose_redis(&app).await;
    assert_eq!(pipes::cache_warm::refill_if_lost(&app.state, &cancel).await.unwrap(), Some(3));
}
