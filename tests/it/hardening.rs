//! Hostile input from every side: provider endpoints that point inside, an admin
//! key that tries to move the client secret, a forged refresh job, providers that
//! answer absurd lifetimes or endless bodies, callers over their rate limits.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use pipes::config::{Config, Settings};
use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use pipes::secret::Secret;
use pipes::store::accounts::TokenSet;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::{test_settings, TestApp};
use crate::support::fixtures::{demo_integration, seed_account, store_tokens};
use crate::tokens::{metric, read, token_of};

fn strict(s: &mut Settings) {
    s.set("PIPES_ALLOW_PRIVATE_NETWORK", "false");
}

#[tokio::test]
async fn a_provider_endpoint_inside_the_network_is_never_called_outside_development() {
    let app = TestApp::spawn_with(strict).await;
    // Stored behind the API's back (the API refuses such a URL): the request-time
    // check must still refuse to send the refresh token there.
    let p = demo_integration(&app, "hd-inside", ClientAuthMethod::Basic).await;
    let (_, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    let (status, answer) = read(&app, "hd-inside", json!({"user_id": "u1"})).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(p.demo.refreshes(), 0, "the provider on this machine was never asked");
    let row: (String,) =
        sqlx::query_as("SELECT last_refresh_error FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(row.0, "config", "recorded as a configuration failure");
}

#[tokio::test]
async fn a_host_name_that_resolves_to_this_machine_is_refused_when_saved() {
    let app = TestApp::spawn_with(strict).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let addrs: Vec<_> =
        tokio::net::lookup_host((hostname.as_str(), 443)).await.expect("the hostname resolves").collect();
    assert!(addrs.iter().all(|a| pipes::outbound::is_internal(a.ip())), "{hostname} resolves inside: {addrs:?}");
    let body = json!({"provider": "inside", "credentials": {"client_id": "id", "client_secret": "secret"},
        "custom_provider": {"name": "Inside", "authorization_url": "https://example.com/a",
            "token_url": format!("https://{hostname}/token")}});
    let (status, answer) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["field"], "custom_provider.token_url");
    assert_eq!(answer["errors"][0]["code"], "private_address");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM integrations").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn moving_the_client_secret_needs_the_secret_in_the_same_request() {
    let app = TestApp::spawn().await;
    crate::connect::api_integration(&app, "hd-move", ClientAuthMethod::Basic, |_| {}).await;
    let before = app.admin(Method::GET, "/data-integrations/hd-move", None).await.1;
    for change in [
        json!({"custom_provider": {"token_url": "https://collector.example/token"}}),
        json!({"custom_provider": {"refresh_token_url": "https://collector.example/token"}}),
        json!({"custom_provider": {"revocation_url": "https://collector.example/revoke"}}),
        json!({"custom_provider": {"authenticate_via": "request_body"}}),
        json!({"credentials": {"client_id": "other"}, "custom_provider": {"token_url": "https://collector.example/t"}}),
    ] {
        let (status, answer) = app.admin(Method::PUT, "/data-integrations/hd-move", Some(change.clone())).await;
        assert_eq!(status, 422, "{change}: {answer}");
        assert_eq!(answer["errors"][0]["field"], "credentials.client_secret", "{change}");
    }
    let after = app.admin(Method::GET, "/data-integrations/hd-move", None).await.1;
    assert_eq!(before, after, "a refused change changes nothing");
    // Anything else needs no secret; with the secret, the URL may move.
    let (status, _) = app.admin(Method::PUT, "/data-integrations/hd-move", Some(json!({"description": "x"}))).await;
    assert_eq!(status, 200);
    let body = json!({"credentials": {"client_secret": "the-secret-0000"},
        "custom_provider": {"token_url": "https://collector.example/token"}});
    let (status, moved) = app.admin(Method::PUT, "/data-integrations/hd-move", Some(body)).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["custom_provider"]["token_url"], "https://collector.example/token");
    // A catalog provider's host, filled from config, moves the secret too.
    let zendesk = json!({"provider": "zendesk", "config": {"subdomain": "acme"},
        "credentials": {"client_id": "id", "client_secret": "zendesk-secret"}});
    assert_eq!(app.admin(Method::POST, "/data-integrations", Some(zendesk)).await.0, 201);
    let (status, answer) =
        app.admin(Method::PUT, "/data-integrations/zendesk", Some(json!({"config": {"subdomain": "other"}}))).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("credentials.client_secret")));
}

#[tokio::test]
async fn a_refresh_job_naming_another_integration_asks_no_provider() {
    let app = TestApp::spawn().await;
    let mine = demo_integration(&app, "hd-mine", ClientAuthMethod::Basic).await;
    let other = demo_integration(&app, "hd-other", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &mine, "u1", None, Duration::from_secs(5)).await;
    let outcome = app.state.refresher.refresh(&other.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::OtherIntegration), "{outcome:?}");
    assert_eq!((mine.demo.refreshes(), other.demo.refreshes()), (0, 0), "no provider was asked");
    let lease: Option<String> = sqlx::query_scalar("SELECT lease_id FROM connected_accounts WHERE id = $1")
        .bind(&account.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(lease, None, "the lease was given back");
    // The account's own integration still refreshes it.
    let (status, answer) = read(&app, "hd-mine", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(token_of(&answer), token);
}

/// What a hostile provider's `/token` answers.
type Answer = fn() -> Response;

/// A provider whose `/token` answers whatever the test sets.
async fn hostile_provider(answer: fn() -> Response) -> String {
    let router = axum::Router::new().route("/token", post(move || async move { answer() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// An integration on `base` with one account whose token has expired.
async fn expired_account_at(app: &TestApp, slug: &str, base: &str) {
    let body = json!({"provider": slug, "scopes": ["read"], "enabled": true,
        "credentials": {"client_id": "id", "client_secret": "secret"},
        "custom_provider": {"name": "Hostile", "authorization_url": format!("{base}/authorize"),
            "token_url": format!("{base}/token")}});
    let (status, created) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let tokens = TokenSet {
        access_token: Secret::new("old-access"),
        refresh_token: Some(Secret::new("old-refresh")),
        expires_at: Some(Utc::now() - chrono::Duration::minutes(1)),
        scopes: vec!["read".into()],
    };
    store_tokens(app, created["id"].as_str().unwrap(), "u1", None, &tokens, None).await;
}

fn lifetime(expires_in: Value) -> Response {
    axum::Json(json!({"access_token": "new-access", "token_type": "bearer", "expires_in": expires_in})).into_response()
}

#[tokio::test]
async fn absurd_lifetimes_from_a_provider_have_a_defined_outcome() {
    let app = TestApp::spawn().await;
    let cases: [(&str, Answer, Option<i64>); 5] = [
        ("hd-huge", || lifetime(json!(9e12)), Some(10 * 365 * 24 * 3600)),
        ("hd-negative", || lifetime(json!(-5)), None),
        ("hd-zero", || lifetime(json!(0)), None),
        ("hd-words", || lifetime(json!("soon")), None),
        ("hd-max", || lifetime(json!(u64::MAX)), Some(10 * 365 * 24 * 3600)),
    ];
    for (slug, answer, secs) in cases {
        let base = hostile_provider(answer).await;
        expired_account_at(&app, slug, &base).await;
        let (status, read_answer) = read(&app, slug, json!({"user_id": "u1"})).await;
        assert_eq!(status, 200, "{slug}: {read_answer}");
        assert_eq!(token_of(&read_answer), "new-access", "{slug}");
        let expires_at = read_answer["access_token"]["expires_at"]
            .as_str()
            .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().signed_duration_since(Utc::now()).num_seconds());
        match secs {
            None => assert_eq!(expires_at, None, "{slug}: taken as not stated"),
            Some(secs) => {
                assert!(expires_at.is_some_and(|left| (secs - 60..=secs).contains(&left)), "{slug}: {expires_at:?}")
            }
        }
    }
}

#[tokio::test]
async fn an_endless_or_huge_provider_answer_is_a_counted_transient_failure() {
    let app = TestApp::spawn().await;
    fn huge() -> Response {
        // 50 MB in 64 KiB chunks, with no length announced.
        let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures_util::stream::iter((0..800).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        Response::new(Body::from_stream(chunks))
    }
    let endless = || {
        let chunks = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"a\":1,")), ()))
        });
        Response::new(Body::from_stream(chunks))
    };
    let announced = || {
        let mut response = huge();
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, axum::http::HeaderValue::from(800 * 64 * 1024));
        response
    };
    for (slug, answer, reason) in [
        ("hd-stream", huge as fn() -> Response, "response_too_large"),
        ("hd-announced", announced as fn() -> Response, "response_too_large"),
        ("hd-endless", endless, "timeout"),
    ] {
        let base = hostile_provider(answer).await;
        expired_account_at(&app, slug, &base).await;
        let series = format!("pipes_provider_responses_refused_total{{reason=\"{reason}\"}}");
        let before = metric(&app, &series);
        let (status, answer) = read(&app, slug, json!({"user_id": "u1"})).await;
        assert_eq!(status, 503, "{slug}: {answer}");
        assert_eq!(answer["code"], "provider_unavailable", "{slug}");
        assert!(metric(&app, &series) > before, "{slug}: counted as {reason}");
    }
    // The role is still serving.
    let (status, _) = app.call(Method::GET, "/health/live", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn callers_over_their_limits_get_429_with_retry_after_and_nothing_else_is_held_back() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_RATE_LIMITS", "token.key=3/m,callback.address=2/m,unknown_keys.address=3/m");
    })
    .await;
    let p = demo_integration(&app, "hd-limits", ClientAuthMethod::Basic).await;
    seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let body = json!({"user_id": "u1"});
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(read(&app, "hd-limits", body.clone()).await.0);
        }
        out
    };
    // The first read verifies the key (until then it counts as a look-up); then the
    // key's 3 a minute, fast lane included.
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let resp = app
        .http
        .post(app.url("/data-integrations/hd-limits/token"))
        .bearer_auth(&app.tokens_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(resp.headers().contains_key("x-request-id"));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    // Another key of the same address is not held back by this key's limit.
    let (status, _) =
        app.call(Method::POST, "/data-integrations/hd-limits/token", Some(&app.admin_key.clone()), Some(body)).await;
    assert_eq!(status, 200);
    // The callback, which carries no key, is limited by address.
    let callback: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(app.call(Method::GET, "/data-integrations/hd-limits/callback?state=x&code=y", None, None).await.0);
        }
        out
    };
    assert_eq!(callback[2], 429, "{callback:?}");
    // Unknown keys: a few cost a look-up each, then the address is refused before any.
    let mut unknown = Vec::new();
    for i in 0..6 {
        let key = format!("pipes_sk_unknown_{i}");
        unknown.push(app.call(Method::GET, "/data-integrations", Some(&key), None).await.0);
    }
    // Three within the budget, a fourth that spends past it, then no more look-ups.
    assert_eq!(unknown, [401, 401, 401, 401, 429, 429]);
    assert!(metric(&app, "pipes_rate_limited_total{group=\"token\",scope=\"key\"}") >= 2.0);
}

#[tokio::test]
async fn an_owner_can_hold_only_so_many_open_connect_flows() {
    let app = TestApp::spawn().await;
    demo_integration(&app, "hd-flows", ClientAuthMethod::Basic).await;
    let body = json!({"user_id": "u1"});
    for i in 0..pipes::connect::MAX_OPEN_STATES {
        let (status, answer) =
            app.admin(Method::POST, "/data-integrations/hd-flows/authorize", Some(body.clone())).await;
        assert_eq!(status, 200, "flow {i}: {answer}");
    }
    let (status, answer) = app.admin(Method::POST, "/data-integrations/hd-flows/authorize", Some(body)).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["code"], "too_many_open_authorizations");
    let (status, _) =
        app.admin(Method::POST, "/data-integrations/hd-flows/authorize", Some(json!({"user_id": "u2"}))).await;
    assert_eq!(status, 200, "another owner is not held back");
}

#[test]
fn bad_rate_limits_are_refused_naming_the_setting() {
    for bad in ["token.key=fast", "tokens.key=5/s", "callback.key=5/s", "token.key=0/s", "token.key=5/h", "token"] {
        let mut s = test_settings("db", "u", "http://localhost:8080");
        s.set("PIPES_RATE_LIMITS", bad);
        let err = Config::from_settings(&s).expect_err(bad).to_string();
        assert!(err.starts_with("PIPES_RATE_LIMITS"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn with_an_internal_listener_operations_routes_leave_the_public_port() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_INTERNAL_LISTEN", "127.0.0.1:0");
    })
    .await;
    for path in ["/metrics", "/health/ready", "/health/live"] {
        assert_eq!(app.call(Method::GET, path, None, None).await.0, 404, "{path} on the public port");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(pipes::api::serve(listener, pipes::roles::internal_router(app.state.clone()), app.cancel.clone()));
    for path in ["/metrics", "/health/ready", "/health/live"] {
        let status = app.http.get(format!("{internal}{path}")).send().await.unwrap().status();
        assert_eq!(status, 200, "{path} on the internal port");
    }
}

#[tokio::test]
async fn answers_carrying_tokens_or_secrets_are_never_stored_by_a_cache() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "hd-store", ClientAuthMethod::Basic).await;
    seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let key = app.tokens_key.clone();
    let mut requests = vec![
        (Method::POST, "/data-integrations/hd-store/token".to_owned(), json!({"user_id": "u1"})),
        // The second read is the fast lane's.
        (Method::POST, "/data-integrations/hd-store/token".to_owned(), json!({"user_id": "u1"})),
        (Method::POST, "/data-integrations/hd-store/credentials".to_owned(), json!({"user_id": "u1"})),
    ];
    requests.push((
        Method::POST,
        "/user_management/users/u2/connected_accounts/hd-store".to_owned(),
        json!({"access_token": "imported"}),
    ));
    requests.push((
        Method::POST,
        "/webhook_endpoints".to_owned(),
        json!({"endpoint_url": "http://127.0.0.1:9/h",
        "events": ["pipes.connected_account.connected"]}),
    ));
    requests.push((Method::POST, "/widgets/token".to_owned(), json!({"user_id": "u1"})));
    for (i, (method, path, body)) in requests.into_iter().enumerate() {
        let key = if i < 3 { key.clone() } else { app.admin_key.clone() };
        let resp = app.http.request(method, app.url(&path)).bearer_auth(key).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
}

#[test]
fn the_configuration_debug_output_shows_no_password_or_secret() {
    let mut s = test_settings("db", "u", "http://localhost:8080");
    s.set("PIPES_DATABASE_URL", "postgres://pipes:pg-pass-123@db.internal:5432/pipes")
        .set("PIPES_REDIS_URL", "redis://:redis-pass-456@cache:6379,redis://:redis-pass-789@cache2:6379")
        .set("PIPES_AMQP_URL", "amqp://pipes:amqp-pass-000@broker:5672/%2f")
        .set("PIPES_DEMO_CLIENT_SECRET", "demo-secret-111");
    let config = Config::from_settings(&s).unwrap();
    let shown = format!("{config:?}");
    for secret in ["pg-pass-123", "redis-pass-456", "redis-pass-789", "amqp-pass-000", "demo-secret-111", "AAECAwQF"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("db.internal"), "the rest of the URL stays readable");
    assert_eq!(&*config.database_url, "postgres://pipes:pg-pass-123@db.internal:5432/pipes");
}
