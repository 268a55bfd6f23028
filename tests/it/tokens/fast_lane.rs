//! The fast lane (`pipes::api::fast_lane`) answers cached token reads in front of
//! the router. It must be indistinguishable from the router: the same bodies and
//! headers, and every request it is not sure about handled by the router.

use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{metric, read, token_of, HOUR};
use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

/// A raw `POST` with the given extra header lines and body, sent in two parts
/// `pause` apart; returns the status line, the headers and the body.
async fn raw_post(app: &TestApp, path: &str, extra: &str, body: &str, pause: Duration) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: pipes\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{extra}Connection: close\r\n\r\n",
        app.tokens_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(pause).await;
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (status.to_owned(), headers.to_ascii_lowercase(), body.to_owned())
}

/// Waits until `user`'s answer is served from the in-process cache.
async fn warm(app: &TestApp, slug: &str, user: &str) {
    let hits = format!(r#"pipes_token_reads_total{{provider="{slug}",result="hit"}}"#);
    for _ in 0..50 {
        let before = metric(app, &hits);
        let (status, _) = read(app, slug, json!({"user_id": user})).await;
        assert_eq!(status, 200);
        if metric(app, &hits) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user}'s answer never became a cache hit");
}

#[tokio::test]
async fn cached_answers_carry_the_same_body_and_headers_as_the_router() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "lane", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    warm(&app, "lane", "u1").await;
    for (path, field) in
        [("/data-integrations/lane/token", "access_token"), ("/data-integrations/lane/credentials", "value")]
    {
        let response = app
            .http
            .post(app.url(path))
            .bearer_auth(&app.tokens_key)
            .json(&json!({"user_id": "u1", "organization_id": null, "unknown": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.starts_with("req_") && id.len() == 30, "{id}");
        let body: serde_json::Value = response.json().await.unwrap();
        let inner = if field == "value" { &body["credential"] } else { &body["access_token"] };
        assert_eq!(inner[field], token.as_str(), "{body}");
    }
    // A caller's own request id is echoed back, as the router does.
    let (status, headers, body) = raw_post(
        &app,
        "/data-integrations/lane/token",
        "X-Request-ID: trace-42\r\nContent-Length: 16\r\n",
        r#"{"user_id":"u1"}"#,
        Duration::ZERO,
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(headers.contains("x-request-id: trace-42"), "{headers}");
    assert_eq!(token_of(&serde_json::from_str(&body).unwrap()), token);
}

#[tokio::test]
async fn requests_the_lane_cannot_vouch_for_get_the_routers_answer() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "lane-err", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, HOUR).await;
    warm(&app, "lane-err", "u1").await;
    let path = "/data-integrations/lane-err/token";
    // Unknown key: 401, although the answer is cached.
    let (status, answer) = app.call(Method::POST, path, Some("pk_unknown"), Some(json!({"user_id": "u1"}))).await;
    assert_eq!(status, 401, "{answer}");
    // Invalid body: the router's 422 with field errors.
    let (status, answer) = read(&app, "lane-err", json!({"user_id": "u1", "connection_owner": "robot"})).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["field"], "connection_owner");
    // Another account id than the cached one: not this owner's account.
    let (status, answer) = read(&app, "lane-err", json!({"user_id": "u1", "connected_account_id": "nope"})).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("connected_account_not_found")));
    let (status, answer) = read(&app, "lane-err", json!({"user_id": "u1", "connected_account_id": account.id})).await;
    assert_eq!((status, answer["active"].as_bool()), (200, Some(true)));
    // The wrong method on the route.
    let (status, _) = app.call(Method::PUT, path, Some(&app.tokens_key.clone()), Some(json!({"user_id": "u1"}))).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_body_that_arrives_late_or_chunked_is_still_answered() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "lane-slow", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    warm(&app, "lane-slow", "u1").await;
    let body = r#"{"user_id":"u1"}"#;
    let (status, _, answer) = raw_post(
        &app,
        "/data-integrations/lane-slow/token",
        &format!("Content-Length: {}\r\n", body.len()),
        body,
        Duration::from_millis(300),
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(token_of(&serde_json::from_str(&answer).unwrap()), token);
    // No Content-Length: chunked, which the lane leaves to the router.
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let (status, _, answer) = raw_post(
        &app,
        "/data-integrations/lane-slow/token",
        "Transfer-Encoding: chunked\r\n",
        &chunked,
        Duration::from_millis(100),
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(answer.contains(&token), "{answer}");
}
