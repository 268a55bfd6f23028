//! The connect widget: its token, its JSON API (scoped to one user), its pages'
//! headers, and (in `browser`) the whole flow in headless Chromium.

mod browser;

use std::time::Duration;

use chrono::Utc;
use pipes::crypto::KeyRing;
use pipes::demo_provider::ClientAuthMethod;
use pipes::widget::{self, WidgetTokenError};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::{TestApp, TEST_KEY};
use crate::support::fixtures::{demo_integration, seed_account};

async fn widget_token(app: &TestApp, user: &str, org: Option<&str>) -> String {
    let (status, body) =
        app.admin(Method::POST, "/widgets/token", Some(json!({ "user_id": user, "organization_id": org }))).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Calls the widget API with a widget token.
async fn widget_call(app: &TestApp, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    app.call(method, &format!("/widget/api{path}"), Some(token), body).await
}

fn account_of<'a>(providers: &'a Value, slug: &str) -> &'a Value {
    let list = providers["data"].as_array().expect("data");
    &list.iter().find(|p| p["slug"] == slug).expect("provider listed")["connected_account"]
}

#[tokio::test]
async fn widget_tokens_need_an_admin_key_and_a_user() {
    let app = TestApp::spawn().await;
    let body = json!({ "user_id": "user_a" });
    assert_eq!(app.call(Method::POST, "/widgets/token", None, Some(body.clone())).await.0, 401);
    assert_eq!(app.call(Method::POST, "/widgets/token", Some(&app.tokens_key), Some(body.clone())).await.0, 403);
    let (status, err) = app.admin(Method::POST, "/widgets/token", Some(json!({ "organization_id": "org_1" }))).await;
    assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some("user_id")));
    // What the Node SDK's widgets.getToken sends (its `scopes` are ignored).
    let (status, ok) = app
        .admin(
            Method::POST,
            "/widgets/token",
            Some(json!({ "user_id": "user_a", "organization_id": "org_1", "scopes": ["widgets:users-table:manage"] })),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    let claims = widget::verify(app.state.keyring(), ok["token"].as_str().unwrap(), Utc::now()).expect("verifies");
    assert_eq!((claims.user_id.as_str(), claims.organization_id.as_deref()), ("user_a", Some("org_1")));
    let ttl = claims.expires_at - Utc::now();
    assert!(
        ttl <= chrono::Duration::minutes(30) && ttl > chrono::Duration::minutes(29),
        "lives PIPES_WIDGET_TOKEN_TTL"
    );
}

#[tokio::test]
async fn an_expired_or_forged_widget_token_is_refused_with_a_code_the_widget_acts_on() {
    let app = TestApp::spawn().await;
    let (expired, _) = widget::issue(
        app.state.keyring(),
        "user_a",
        None,
        Utc::now() - chrono::Duration::hours(2),
        Duration::from_secs(60),
    );
    let (status, body) = widget_call(&app, Method::GET, "/providers", &expired, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("widget_token_expired")));
    // Changing the user inside a valid token breaks its signature.
    let valid = widget_token(&app, "user_a", None).await;
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let forged = json!({ "sub": "user_b", "exp": Utc::now().timestamp() + 600, "iat": 0 });
    parts[2] = base64_url(&serde_json::to_vec(&forged).unwrap());
    for token in [parts.join("."), app.admin_key.clone(), "wt1.x.y.z".to_owned()] {
        let (status, body) = widget_call(&app, Method::GET, "/providers", &token, None).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("invalid_widget_token")), "{token:.12}");
    }
    let (status, _) = app.call(Method::GET, "/widget/api/providers", None, None).await;
    assert_eq!(status, 401);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn widget_tokens_survive_a_key_rotation_while_the_old_key_is_in_the_ring() {
    let old = KeyRing::parse(TEST_KEY).unwrap();
    let newer = KeyRing::generate_key_text("k2");
    let rotated = KeyRing::parse(&format!("{newer},{TEST_KEY}")).unwrap();
    let (token, _) = widget::issue(&old, "user_a", None, Utc::now(), Duration::from_secs(60));
    assert_eq!(widget::verify(&rotated, &token, Utc::now()).unwrap().user_id, "user_a");
    let retired = KeyRing::parse(&newer).unwrap();
    assert_eq!(widget::verify(&retired, &token, Utc::now()), Err(WidgetTokenError::BadSignature));
    // The signing key is derived, not the encryption key itself.
    let (kid, derived) = old.derive_key(None, "pipes/widget-token/v1").unwrap();
    assert_eq!(kid, "test1");
    assert_ne!(derived.as_slice(), &(0u8..32).collect::<Vec<u8>>()[..]);
}

#[tokio::test]
async fn a_widget_token_sees_and_disconnects_only_its_own_users_account() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "wd-scope", ClientAuthMethod::Basic).await;
    seed_account(&app, &p, "user_b", None, Duration::from_secs(600)).await;
    let token_a = widget_token(&app, "user_a", None).await;
    let token_b = widget_token(&app, "user_b", None).await;
    let token_b_org = widget_token(&app, "user_b", Some("org_1")).await;

    let (status, listed) = widget_call(&app, Method::GET, "/providers", &token_a, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["user_id"], "user_a");
    assert!(account_of(&listed, "wd-scope").is_null(), "user A sees no account");
    let (_, listed_org) = widget_call(&app, Method::GET, "/providers", &token_b_org, None).await;
    assert!(account_of(&listed_org, "wd-scope").is_null(), "the organization's view is separate");
    let (_, listed_b) = widget_call(&app, Method::GET, "/providers", &token_b, None).await;
    assert_eq!(account_of(&listed_b, "wd-scope")["state"], "connected");
    assert_eq!(listed_b["data"][0]["description"], "Test provider");

    let (status, _) = widget_call(&app, Method::DELETE, "/wd-scope", &token_a, None).await;
    assert_eq!(status, 404, "A cannot disconnect B");
    let (status, _) = app.admin(Method::GET, "/user_management/users/user_b/connected_accounts/wd-scope", None).await;
    assert_eq!(status, 200, "B's account is untouched");

    let (status, _) = widget_call(&app, Method::DELETE, "/wd-scope", &token_b, None).await;
    assert_eq!(status, 204);
    let (status, _) = app.admin(Method::GET, "/user_management/users/user_b/connected_accounts/wd-scope", None).await;
    assert_eq!(status, 404);
    assert_eq!(p.demo.stats().revocations, 1, "disconnecting revokes at the provider, as the admin route does");
}

#[tokio::test]
async fn widget_authorize_comes_back_to_the_completion_page_for_the_token_user() {
    let app = TestApp::spawn().await;
    let _provider = demo_integration(&app, "wd-auth", ClientAuthMethod::Basic).await;
    let token = widget_token(&app, "user_a", Some("org_1")).await;
    let (status, err) = widget_call(
        &app,
        Method::POST,
        "/wd-auth/authorize",
        &token,
        Some(json!({ "opener_origin": "http://evil.test" })),
    )
    .await;
    assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some("opener_origin")));
    let (status, err) = widget_call(
        &app,
        Method::POST,
        "/wd-auth/authorize",
        &token,
        Some(json!({ "redirect_to": "https://evil.test/x" })),
    )
    .await;
    assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some("redirect_to")));
    assert_eq!(widget_call(&app, Method::POST, "/nope/authorize", &token, Some(json!({}))).await.0, 404);

    let (status, body) =
        widget_call(&app, Method::POST, "/wd-auth/authorize", &token, Some(json!({ "opener_origin": app.base_url })))
            .await;
    assert_eq!(status, 200, "{body}");
    // The demo provider consents at once here; follow the browser's redirects by hand.
    let to_callback = app.http.get(body["url"].as_str().unwrap()).send().await.unwrap();
    let callback = to_callback.headers()["location"].to_str().unwrap().to_owned();
    let to_done = app.http.get(&callback).send().await.unwrap();
    let done = url::Url::parse(to_done.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(done.path(), "/widget/done");
    let q: std::collections::HashMap<String, String> = done.query_pairs().into_owned().collect();
    assert_eq!(
        (q["opener_origin"].as_str(), q["provider"].as_str(), q["status"].as_str()),
        (app.base_url.as_str(), "wd-auth", "connected")
    );
    let (status, _) = app
        .admin(Method::GET, "/user_management/users/user_a/connected_accounts/wd-auth?organization_id=org_1", None)
        .await;
    assert_eq!(status, 200, "connected for the token's user and organization");
    let page = app.http.get(done.as_str()).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("data-opener-origin=\"{}\"", app.base_url)), "{page}");
}

#[tokio::test]
async fn widget_pages_have_a_strict_csp_and_never_reflect_unchecked_input() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/widget?token=%22%3E%3Cscript%3Ealert(1)%3C/script%3E")).send().await.unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let html = resp.text().await.unwrap();
    assert!(!html.contains("<script>alert") && !html.contains("&lt;script&gt;"), "a query token is never rendered");

    let done = app.http.get(app.url("/widget/done?back=https%3A%2F%2Fevil.test%2F&opener_origin=https%3A%2F%2Fevil.test&provider=x&status=connected")).send().await.unwrap();
    assert!(done.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    let html = done.text().await.unwrap();
    assert!(
        html.contains("data-back=\"\"") && html.contains("data-opener-origin=\"\""),
        "foreign targets are dropped: {html}"
    );

    for (path, kind) in [
        ("/widget.js", "text/javascript"),
        ("/widget.css", "text/css"),
        ("/widget/done.js", "text/javascript"),
        ("/widget/connect.js", "text/javascript"),
    ] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(kind));
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    for path in ["/widgets/token", "/widget/api/providers", "/widget/api/{slug}/authorize", "/widget/api/{slug}"] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test]
async fn only_the_widget_api_answers_cross_origin_requests() {
    let app = TestApp::spawn().await;
    let preflight = |path: &str| {
        app.http
            .request(Method::OPTIONS, app.url(path))
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let widget = preflight("/widget/api/providers").await.unwrap();
    assert_eq!(widget.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("*"));
    assert!(widget.headers().get("access-control-allow-credentials").is_none(), "never with cookies");
    let admin = preflight("/data-integrations").await.unwrap();
    assert!(admin.headers().get("access-control-allow-origin").is_none());
}
