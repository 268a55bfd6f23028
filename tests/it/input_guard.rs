//! Inputs the API fuzzer turned into 5xx or plain-text answers, now clear
//! JSON 4xx that change nothing: NUL characters (PostgreSQL refuses them in
//! text) in a path, a query or a JSON body, and a path that is not UTF-8.
//! The OAuth callback, a browser route, answers those with its error page.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;

async fn raw(app: &TestApp, method: Method, path_and_query: &str, body: Option<Value>) -> (u16, String, Value) {
    let mut req = app.http.request(method, app.url(path_and_query)).bearer_auth(&app.admin_key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = resp.text().await.unwrap_or_default();
    (status, content_type, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn nul_characters_and_non_utf8_in_urls_are_json_400s() {
    let app = TestApp::spawn().await;
    for (path, code) in [
        ("/data-integrations/git%00hub", "invalid_path"),
        ("/data-integrations/%FF", "invalid_path"),
        ("/data-integrations?after=a%00", "invalid_query"),
        ("/webhook_endpoints?before=%00", "invalid_query"),
        ("/events?organization_id=org%00", "invalid_query"),
        ("/events?after=event_%00", "invalid_query"),
    ] {
        let (status, content_type, body) = raw(&app, Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        assert_eq!(body["code"], code, "{path}: {body}");
    }
    let (status, content_type, _) = raw(&app, Method::GET, "/data-integrations/gi%00/callback?state=s", None).await;
    assert_eq!(status, 400);
    assert!(content_type.starts_with("text/html"), "the callback answers a page: {content_type}");
}

#[tokio::test]
async fn nul_characters_in_json_bodies_are_field_errors_and_store_nothing() {
    let app = TestApp::spawn().await;
    let (status, _, body) = raw(
        &app,
        Method::POST,
        "/data-integrations",
        Some(json!({"provider": "github", "description": "a\u{0}b", "credentials": {"type": "custom", "client_id": "c", "client_secret": "s"}})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "description", "{body}");
    let (status, _, body) = raw(&app, Method::GET, "/data-integrations", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!([]), "nothing was stored");

    let (status, _, body) = raw(
        &app,
        Method::POST,
        "/data-integrations/github/token",
        Some(json!({"user_id": "u1", "organization_id": "o\u{0}"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "organization_id", "{body}");
}
