//! The relay: provider calls sent through Pipes with the owner's credential attached,
//! against the fake provider's small protected API (`/api/me`, `/api/echo`).

use std::time::Duration;

use pipes::auth::Role;
use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account, Provider};

const HOUR: Duration = Duration::from_secs(3600);

/// An OAuth integration at the fake provider whose API (its `/api`) the relay may call.
async fn relayed(app: &TestApp, slug: &str) -> Provider {
    let mut p = demo_integration(app, slug, ClientAuthMethod::Basic).await;
    sqlx::query("UPDATE integrations SET custom_provider = custom_provider || jsonb_build_object('api_base_url', $2::text), enabled = true WHERE id = $1")
        .bind(&p.integration.id)
        .bind(format!("{}/api", p.demo.base_url()))
        .execute(&app.db)
        .await
        .unwrap();
    p.integration =
        pipes::store::integrations::by_id(&app.db, app.state.keyring(), &p.integration.id).await.unwrap().unwrap();
    p
}

async fn relay_key(app: &TestApp) -> String {
    pipes::auth::create_key(&app.db, "test-relay", Role::Relay).await.expect("key").0
}

/// A relayed call: `(status, headers, body)`.
async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("relay answers");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn relayed_calls_reach_the_provider_with_the_owners_token_which_the_caller_never_sees() {
    let app = TestApp::spawn().await;
    let p = relayed(&app, "relayed").await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    let key = relay_key(&app).await;

    // A GET by path under the API base URL: the provider saw u1's token.
    let (status, headers, body) = call(
        &app,
        &key,
        Method::GET,
        "/relay/relayed/me",
        &[("pipes-user-id", "u1"), ("x-request-id", "req-relay-1")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["id"], "u1");
    assert!(!String::from_utf8_lossy(&body).contains(&token));
    assert!(headers.values().all(|v| !v.to_str().unwrap_or("").contains(&token)), "no header carries the token");
    assert_eq!(headers["x-request-id"], "req-relay-1", "the request id is passed on and echoed");

    // The same by full URL.
    let url = format!("{}/api/me", p.demo.base_url());
    let (status, _, body) = call(
        &app,
        &key,
        Method::GET,
        "/relay",
        &[("pipes-user-id", "u1"), ("pipes-provider", "relayed"), ("pipes-url", url.as_str())],
        None,
    )
    .await;
    assert_eq!((status, json_of(&body)["id"].clone()), (200, json!("u1")));

    // A streamed POST of 6 MiB (chunked, never held whole by the caller).
    let chunk = vec![b'x'; 64 * 1024];
    let chunks = (0..96).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let stream = futures_util::stream::iter(chunks);
    let (status, _, body) = call(
        &app,
        &key,
        Method::POST,
        "/relay/relayed/echo",
        &[("pipes-user-id", "u1"), ("content-type", "application/octet-stream"), ("authorization-extra", "kept")],
        Some(reqwest::Body::wrap_stream(stream)),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echoed = json_of(&body);
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(vec![b'x'; 96 * 64 * 1024]));
    assert_eq!((echoed["bytes"].as_u64(), echoed["sha256"].as_str()), (Some(96 * 64 * 1024), Some(expected.as_str())));
    assert_eq!(echoed["caller"], "u1");
    assert_eq!(echoed["content_type"], "application/octet-stream");

    // The provider's own errors come back as they are.
    let (status, _, _) =
        call(&app, &key, Method::GET, "/relay/relayed/nothing-here", &[("pipes-user-id", "u1")], None).await;
    assert_eq!(status, 404);
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("pipes_relay_requests_total{provider=\"relayed\",outcome=\"2xx\"}"), "{metrics}");
    assert!(metrics.contains("pipes_relay_bytes_total{provider=\"relayed\",direction=\"request\"}"), "{metrics}");
}

#[tokio::test]
async fn the_relay_refuses_what_it_must_not_send_and_calls_the_provider_for_none_of_it() {
    let app = TestApp::spawn().await;
    let p = relayed(&app, "relayed").await;
    seed_account(&app, &p, "u1", None, HOUR).await;
    let key = relay_key(&app).await;
    let before = p.demo.stats().api_requests;
    let me = [("pipes-user-id", "u1")];
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/relay",
            vec![
                ("pipes-user-id", "u1"),
                ("pipes-provider", "relayed"),
                ("pipes-url", "https://evil.example.com/api/me"),
            ],
            403,
            "host_not_allowed",
        ),
        ("/relay", vec![("pipes-user-id", "u1"), ("pipes-provider", "relayed")], 400, "missing_header"),
        ("/relay/relayed/me", vec![], 400, "missing_header"),
        ("/relay/relayed/me", vec![("pipes-user-id", "nobody")], 404, "not_installed"),
        (
            "/relay/relayed/me",
            vec![("pipes-user-id", "u1"), ("pipes-connection-owner", "organization")],
            422,
            "validation_error",
        ),
        ("/relay/unknown/me", me.to_vec(), 404, "integration_not_found"),
    ];
    for (path, headers, status, code) in cases {
        let (got, _, body) = call(&app, &key, Method::GET, path, &headers, None).await;
        assert_eq!((got, json_of(&body)["code"].as_str()), (status, Some(code)), "{path} {headers:?}");
    }
    // Only relay (and admin) keys relay; a relay key reads no token.
    let (got, _, _) = call(&app, &app.tokens_key, Method::GET, "/relay/relayed/me", &me, None).await;
    assert_eq!(got, 403, "a tokens key may not relay");
    let (got, _) =
        app.call(Method::POST, "/data-integrations/relayed/token", Some(&key), Some(json!({"user_id": "u1"}))).await;
    assert_eq!(got, 403, "a relay key reads no token");
    let (got, _) = app.call(Method::GET, "/data-integrations", Some(&key), None).await;
    assert_eq!(got, 403, "nor administers anything");
    let (got, _, _) = call(&app, "pipes_sk_unknown", Method::GET, "/relay/relayed/me", &me, None).await;
    assert_eq!(got, 401);

    // An account needing reauthorization: the relay's error, no provider call.
    sqlx::query("UPDATE connected_accounts SET state = 'needs_reauthorization' WHERE user_id = 'u1'")
        .execute(&app.db)
        .await
        .unwrap();
    app.state.cache.evict_integration("relayed").await;
    let (got, _, body) = call(&app, &key, Method::GET, "/relay/relayed/me", &me, None).await;
    assert_eq!((got, json_of(&body)["code"].as_str()), (409, Some("needs_reauthorization")));
    assert_eq!(p.demo.stats().api_requests, before, "nothing reached the provider");
}

#[tokio::test]
async fn an_internal_address_is_refused_even_where_the_integration_names_it() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_ALLOW_PRIVATE_NETWORK", "false");
    })
    .await;
    let p = demo_integration(&app, "inside", ClientAuthMethod::Basic).await;
    sqlx::query("UPDATE integrations SET custom_provider = custom_provider || '{\"api_base_url\": \"https://127.0.0.1/api\"}'::jsonb WHERE id = $1")
        .bind(&p.integration.id)
        .execute(&app.db)
        .await
        .unwrap();
    let key = relay_key(&app).await;
    let (got, _, body) = call(&app, &key, Method::GET, "/relay/inside/me", &[("pipes-user-id", "u1")], None).await;
    assert_eq!(
        (got, json_of(&body)["code"].as_str()),
        (403, Some("address_not_allowed")),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn a_provider_401_renews_the_token_once_and_the_call_is_sent_again() {
    let app = TestApp::spawn().await;
    let p = relayed(&app, "relayed").await;
    // Pipes thinks the token good for an hour; the provider's clock says it expired.
    seed_account(&app, &p, "u1", None, HOUR).await;
    p.demo.advance_clock(Duration::from_secs(2 * 3600));
    let key = relay_key(&app).await;
    let (status, _, body) = call(&app, &key, Method::GET, "/relay/relayed/me", &[("pipes-user-id", "u1")], None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["id"], "u1");
    assert_eq!(p.demo.refreshes(), 1, "exactly one refresh");

    // A POST is not sent twice: its 401 comes back as it is.
    p.demo.advance_clock(Duration::from_secs(2 * 3600));
    let (status, _, _) =
        call(&app, &key, Method::POST, "/relay/relayed/echo", &[("pipes-user-id", "u1")], Some("x".into())).await;
    assert_eq!(status, 401);
    assert_eq!(p.demo.refreshes(), 1);
}

#[tokio::test]
async fn concurrent_relayed_calls_for_an_expired_token_make_one_refresh() {
    let app = TestApp::spawn().await;
    let p = relayed(&app, "relayed").await;
    seed_account(&app, &p, "u1", None, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let key = relay_key(&app).await;
    let calls = (0..8).map(|_| call(&app, &key, Method::GET, "/relay/relayed/me", &[("pipes-user-id", "u1")], None));
    let answers = futures_util::future::join_all(calls).await;
    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(p.demo.refreshes(), 1, "one refresh for all of them");
}

#[tokio::test]
async fn an_api_key_goes_where_the_provider_takes_it_and_oversized_bodies_are_refused() {
    let app = TestApp::spawn().await;
    let (demo, _) =
        pipes::demo_provider::DemoProvider::spawn(pipes::demo_provider::DemoConfig::default()).await.unwrap();
    demo.add_api_key("apikey_relay_0123456789", "keyed-account");
    let base = demo.base_url();
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({
                "provider": "keyed",
                "auth_methods": ["api_key"],
                "enabled": true,
                "custom_provider": {"name": "Keyed", "api_base_url": format!("{base}/api"), "api_key": {
                    "placement": "header", "header": "X-Api-Key", "format": "{api_key}",
                    "verify": {"method": "GET", "url": format!("{base}/api/me")}}},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["custom_provider"]["api_base_url"], format!("{base}/api"));
    let (status, body) = app
        .admin(
            Method::PUT,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "k1", "secret": "apikey_relay_0123456789"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let key = relay_key(&app).await;
    let (status, _, body) = call(&app, &key, Method::GET, "/relay/keyed/me", &[("pipes-user-id", "k1")], None).await;
    assert_eq!((status, json_of(&body)["id"].clone()), (200, json!("keyed-account")), "the key went in X-Api-Key");

    // A declared body over the limit is refused before anything is sent; so is one that
    // grows past it while streaming.
    let before = demo.stats().api_requests;
    let big = pipes::api::relay::MAX_REQUEST_BYTES + 1;
    let (status, _, body) = call(
        &app,
        &key,
        Method::POST,
        "/relay/keyed/echo",
        &[("pipes-user-id", "k1")],
        Some(vec![b'x'; big as usize].into()),
    )
    .await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (413, Some("request_too_large")));
    assert_eq!(demo.stats().api_requests, before, "nothing was sent");
    let chunk = vec![b'y'; 1024 * 1024];
    let chunks = (0..11).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let (status, _, body) = call(
        &app,
        &key,
        Method::POST,
        "/relay/keyed/echo",
        &[("pipes-user-id", "k1")],
        Some(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))),
    )
    .await;
    assert_eq!((status, json_of(&body)["code"].as_str()), (413, Some("request_too_large")));
}

#[tokio::test]
async fn one_owners_relayed_calls_are_limited_without_slowing_another_owner() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_RATE_LIMITS", "relay.owner=3/m");
    })
    .await;
    let p = relayed(&app, "relayed").await;
    seed_account(&app, &p, "u1", None, HOUR).await;
    seed_account(&app, &p, "u2", None, HOUR).await;
    let key = relay_key(&app).await;
    for _ in 0..3 {
        assert_eq!(call(&app, &key, Method::GET, "/relay/relayed/me", &[("pipes-user-id", "u1")], None).await.0, 200);
    }
    let (status, headers, _) =
        call(&app, &key, Method::GET, "/relay/relayed/me", &[("pipes-user-id", "u1")], None).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(call(&app, &key, Method::GET, "/relay/relayed/me", &[("pipes-user-id", "u2")], None).await.0, 200);
}
