//! The webhook endpoint and events routes: the official Node SDK's calls, validation,
//! auth, and the secret shown only once.

use std::time::Duration;

use pipes::events::EventKind;
use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{create_endpoint, emit, run_script};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

#[tokio::test]
async fn the_node_sdk_manages_endpoints_and_lists_events() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_ALLOW_PRIVATE_NETWORK", "false");
    })
    .await;
    let p = demo_integration(&app, "wh-sdk", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let connected =
        emit(&app, EventKind::Connected, &pipes::events::account_data(&account, &p.integration, "connected")).await;
    emit(
        &app,
        EventKind::ReauthorizationNeeded,
        &pipes::events::account_data(&account, &p.integration, "needs_reauthorization"),
    )
    .await;

    // The SDK calls back into this test's server: wait for it off the runtime.
    let input = json!({"apiKey": app.admin_key, "port": app.addr.port()});
    let out = tokio::task::spawn_blocking(move || run_script("node", "node/webhook_endpoints.mjs", &input))
        .await
        .unwrap()
        .expect("SDK calls succeed");
    let created = &out["created"];
    assert!(created["id"].as_str().unwrap().starts_with("we_"));
    assert_eq!(created["endpointUrl"], "https://hooks.example.com/pipes");
    assert_eq!(created["status"], "enabled");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    assert_eq!(out["listed"][0]["id"], created["id"]);
    let listed_secret = out["listed"][0]["secret"].as_str().unwrap();
    assert!(!listed_secret.contains(&secret[6..20]), "the secret is shown only on create: {listed_secret}");
    assert_eq!(out["updated"]["status"], "disabled");
    let events = out["events"]["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "filtered to the requested types: {events:?}");
    assert_eq!(events[0]["id"], connected.as_str());
    assert_eq!(events[0]["event"], "pipes.connected_account.connected");
    assert_eq!(events[0]["data"]["providerSlug"], "wh-sdk");
    assert_eq!(out["afterDelete"], json!([]));
    let (stored, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE position($1::bytea in secret_enc) > 0) FROM webhook_endpoints",
    )
    .bind(secret.as_bytes())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((stored, plain), (0, 0));
}

#[tokio::test]
async fn bad_endpoint_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"endpoint_url": "ftp://example.com/x", "events": ["pipes.connected_account.connected"]}),
            "endpoint_url",
            "invalid_scheme",
        ),
        (
            json!({"endpoint_url": "not a url", "events": ["pipes.connected_account.connected"]}),
            "endpoint_url",
            "invalid_url",
        ),
        (
            json!({"endpoint_url": "https://u:p@example.com/", "events": ["pipes.connected_account.connected"]}),
            "endpoint_url",
            "credentials_not_allowed",
        ),
        (json!({"endpoint_url": "https://example.com/", "events": []}), "events", "required"),
        (json!({"endpoint_url": "https://example.com/", "events": ["user.created"]}), "events[0]", "unknown_event"),
        (json!({"events": ["pipes.connected_account.connected"]}), "endpoint_url", "required"),
    ];
    for (body, field, code) in cases {
        let (status, answer) = app.admin(Method::POST, "/webhook_endpoints", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["errors"][0]["field"], field, "{body}: {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{body}: {answer}");
    }
    let (status, _) =
        app.call(Method::POST, "/webhook_endpoints", Some(&app.tokens_key.clone()), Some(json!({}))).await;
    assert_eq!(status, 403);
    let (status, _) = app.call(Method::GET, "/events", None, None).await;
    assert_eq!(status, 401);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);

    let (id, _) = create_endpoint(&app, "https://example.com/hook", &["pipes.connected_account.connected"]).await;
    let (status, body) =
        app.admin(Method::PATCH, &format!("/webhook_endpoints/{id}"), Some(json!({"status": "paused"}))).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("status")));
    for path in ["/webhook_endpoints/we_01ARZ3NDEKTSV4RRFFQ69G5FAV", "/webhook_endpoints/nope"] {
        let (status, body) = app.admin(Method::PATCH, path, Some(json!({"status": "enabled"}))).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("webhook_endpoint_not_found")));
        assert_eq!(app.admin(Method::DELETE, path, None).await.0, 404);
    }
    for query in [
        "limit=0",
        "limit=101",
        "order=sideways",
        "events=user.created",
        "after=event_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "range_start=yesterday",
    ] {
        let (status, body) = app.admin(Method::GET, &format!("/events?{query}"), None).await;
        assert_eq!(status, 422, "{query}: {body}");
    }
    assert_eq!(app.admin(Method::DELETE, &format!("/webhook_endpoints/{id}"), None).await.0, 204);
}

#[tokio::test]
async fn events_page_forward_with_after_for_catching_up() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "wh-page", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            emit(&app, EventKind::Connected, &pipes::events::account_data(&account, &p.integration, "connected")).await,
        );
    }
    let (status, page) = app.admin(Method::GET, "/events?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["object"], "list");
    let first: Vec<&str> = page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(first, vec![ids[0].as_str(), ids[1].as_str()], "oldest first");
    assert_eq!(page["list_metadata"]["after"], ids[1].as_str());
    assert_eq!(page["data"][0]["object"], "event");
    let (_, rest) = app.admin(Method::GET, &format!("/events?after={}&limit=10", ids[1]), None).await;
    let rest: Vec<&str> = rest["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(rest, ids[2..].iter().map(String::as_str).collect::<Vec<_>>());
    let (_, newest) = app.admin(Method::GET, "/events?order=desc&limit=1", None).await;
    assert_eq!(newest["data"][0]["id"], ids[4].as_str());
    let (_, repeated) = app
        .admin(
            Method::GET,
            "/events?events=pipes.connected_account.disconnected&events=pipes.connected_account.connected&limit=100",
            None,
        )
        .await;
    assert_eq!(repeated["data"].as_array().unwrap().len(), 5);
}
