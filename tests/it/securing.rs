//! Securing authorizations: every connect flow is bound to whoever started it. An
//! API-started flow goes through the confirmation page, which binds the browser that
//! continues; a widget flow binds the browser that started it; a session-bound flow
//! (`code_challenge`) saves nothing until the application's server finishes it with
//! the verifier. Each test plays the attacker as an ordinary user would.

use std::collections::HashMap;

use pipes::connect::bound::s256;
use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::{json, Value};

use crate::connect::{api_integration, confirm, events, provider_redirect};
use crate::support::app::TestApp;

const RETURN_URL: &str = "http://app.test/pipes/return";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-verifier";

async fn accounts(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap()
}

fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

async fn start(app: &TestApp, slug: &str, body: Value) -> Value {
    let (status, answer) = app.admin(Method::POST, &format!("/data-integrations/{slug}/authorize"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn an_api_flow_confirmed_in_one_browser_connects_nothing_in_another() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "bound", ClientAuthMethod::Basic, |_| {}).await;
    // The attacker starts a flow for their own user and confirms it in their browser...
    let answer = start(&app, "bound", json!({"user_id": "attacker", "return_to": "http://app.test/done"})).await;
    let provider_url = confirm(&app, &app.http, answer["url"].as_str().unwrap()).await;
    // ...then sends the provider's URL to a victim, whose consent is silent.
    let victim = app.browser();
    let to_callback = victim.get(provider_url.as_str()).send().await.unwrap();
    let callback = to_callback.headers()["location"].to_str().unwrap().to_owned();
    let resp = victim.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 400, "a page, not a redirect into the attacker's application");
    assert!(resp.text().await.unwrap().contains("started in another browser"));
    assert_eq!(accounts(&app).await, 0);
    assert_eq!(p.demo.stats().code_exchanges, 0, "the victim's code is never exchanged");
    let events = events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1["error_code"].as_str()),
        ("pipes.connected_account.connection_failed", Some("browser_mismatch"))
    );
    // The state is spent: not even the starting browser can use it now.
    assert_eq!(app.http.get(&callback).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn the_provider_url_cannot_be_reached_without_the_confirmation_page() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "unconfirmed", ClientAuthMethod::Basic, |_| {}).await;
    let answer = start(&app, "unconfirmed", json!({"user_id": "u1"})).await;
    assert!(answer.get("completion").is_none(), "{answer}");
    let url = answer["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/connect/", app.base_url)), "never straight at the provider: {url}");
    assert!(!url.contains(answer["state"].as_str().unwrap()), "the state is not in the confirmation URL");
    // A callback with the flow's state but no confirmation is refused.
    let state = answer["state"].as_str().unwrap();
    let forged = app.url(&format!("/data-integrations/unconfirmed/callback?code=c&state={state}"));
    let resp = app.http.get(forged).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!((accounts(&app).await, p.demo.stats().code_exchanges), (0, 0));
}

#[tokio::test]
async fn the_confirmation_page_names_the_owner_works_once_and_only_from_itself() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_APP_NAME", "Acme <CRM>");
    })
    .await;
    let _p = api_integration(&app, "named", ClientAuthMethod::Basic, |_| {}).await;
    let answer = start(&app, "named", json!({"user_id": "user_42", "organization_id": "org_7"})).await;
    let page_url = answer["url"].as_str().unwrap().to_owned();
    let page = app.http.get(&page_url).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(!csp.contains("script-src") && csp.starts_with("default-src 'none'"), "no script at all: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("user <strong>user_42</strong>") && html.contains("<strong>org_7</strong>"), "{html}");
    assert!(html.contains("Acme &lt;CRM&gt;"), "the application's name, escaped: {html}");
    assert!(html.contains("<form method=\"post\"") && !html.contains("<script"), "works without JavaScript");
    // Another site cannot submit it for the victim.
    let cross = app.http.post(&page_url).header("origin", "https://evil.test").send().await.unwrap();
    assert_eq!(cross.status(), 403);
    // Continuing works once; the page is gone afterwards.
    confirm(&app, &app.http, &page_url).await;
    let again = app.http.post(&page_url).header("origin", &app.base_url).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));
    let shown = app.http.get(&page_url).send().await.unwrap();
    assert_eq!(shown.status(), 400);
    // An expired one says so.
    let answer = start(&app, "named", json!({"user_id": "user_43"})).await;
    sqlx::query("UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE user_id = 'user_43'")
        .execute(&app.db)
        .await
        .unwrap();
    let expired = app.http.get(answer["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(expired.status(), 400);
    assert!(expired.text().await.unwrap().contains("expired"));
    let unknown = app.http.get(app.url("/connect/not-a-ticket")).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
}

#[tokio::test]
async fn a_widget_flow_is_bound_to_its_browser_and_bounded_per_token() {
    let app = TestApp::spawn().await;
    let _p = api_integration(&app, "wbound", ClientAuthMethod::Basic, |_| {}).await;
    let (_, minted) = app.admin(Method::POST, "/widgets/token", Some(json!({"user_id": "attacker"}))).await;
    let token = minted["token"].as_str().unwrap().to_owned();
    let authorize = |origin: Option<String>| {
        let (app, token) = (&app, token.clone());
        async move {
            let mut req = app
                .http
                .post(app.url("/widget/api/wbound/authorize"))
                .bearer_auth(token)
                .json(&json!({"opener_origin": app.base_url}));
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            req.send().await.unwrap()
        }
    };
    // Only Pipes' own pages may start one.
    assert_eq!(authorize(Some("https://evil.test".into())).await.status(), 403);
    let resp = authorize(Some(app.base_url.clone())).await;
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("pipes-browser=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    let provider_url = resp.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned();
    // The provider URL opened in another browser connects nothing.
    let victim = app.browser();
    let to_callback = victim.get(&provider_url).send().await.unwrap();
    let callback = to_callback.headers()["location"].to_str().unwrap().to_owned();
    let refused = victim.get(&callback).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("started in another browser"));
    assert_eq!(accounts(&app).await, 0);
    // In the browser that started it, the same kind of flow connects.
    let resp = authorize(None).await;
    let provider_url = resp.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned();
    let to_callback = app.http.get(&provider_url).send().await.unwrap();
    let done = app.http.get(to_callback.headers()["location"].to_str().unwrap()).send().await.unwrap();
    assert_eq!(query(done.headers()["location"].to_str().unwrap())["status"], "connected");
    assert_eq!(accounts(&app).await, 1);
    // One widget token holds at most a few open flows.
    for _ in 0..pipes::connect::MAX_OPEN_PER_WIDGET_TOKEN {
        assert_eq!(authorize(None).await.status(), 200);
    }
    let over = authorize(None).await;
    assert_eq!(over.status(), 429);
    assert_eq!(over.json::<Value>().await.unwrap()["code"], "too_many_open_authorizations");
}

#[tokio::test]
async fn widget_pages_never_carry_the_token_in_a_url_or_their_html() {
    let app = TestApp::spawn().await;
    let (_, minted) = app.admin(Method::POST, "/widgets/token", Some(json!({"user_id": "u1"}))).await;
    let token = minted["token"].as_str().unwrap();
    let queried = app.http.get(app.url(&format!("/widget?token={token}"))).send().await.unwrap();
    assert_eq!(queried.status(), 400, "a token in the query string is refused");
    let html = queried.text().await.unwrap();
    assert!(!html.contains(token) && html.contains("#token="), "{html}");
    for path in ["/widget", "/widget/connect"] {
        let page = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(!html.contains("token="), "{path}: {html}");
    }
}

#[tokio::test]
async fn a_session_bound_flow_saves_nothing_until_finish_with_the_verifier() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "sess", ClientAuthMethod::Basic, |_| {}).await;
    let body = json!({"user_id": "u1", "return_to": RETURN_URL, "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256", "account_display_name": "Work"});
    let answer = start(&app, "sess", body).await;
    let provider_url = url::Url::parse(answer["url"].as_str().unwrap()).unwrap();
    assert_ne!(provider_url.origin(), url::Url::parse(&app.base_url).unwrap().origin(), "no confirmation screen");
    assert_eq!(answer["completion"], "finish_required");
    // Any browser may come back: the verifier, in the application's session, is the binding.
    let back = app.browser().get(provider_redirect(&app, &provider_url).await).send().await.unwrap();
    let back = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with(RETURN_URL), "{back}");
    let q = query(&back);
    assert_eq!(q["state"], answer["state"].as_str().unwrap());
    assert!(!q.contains_key("status"));
    assert_eq!((accounts(&app).await, p.demo.stats().code_exchanges), (0, 0), "nothing saved, nothing exchanged");
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT provider_code_enc FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert!(sealed.is_some(), "the provider's code waits, sealed, for finish");

    let finish = |code: &str, verifier: &str, state: &str| {
        let body = json!({"connect_code": code, "code_verifier": verifier, "state": state});
        let app = &app;
        async move { app.admin(Method::POST, "/data-integrations/finish", Some(body)).await }
    };
    let (status, done) = finish(&q["connect_code"], VERIFIER, &q["state"]).await;
    assert_eq!(status, 200, "{done}");
    let account = &done["connected_account"];
    assert_eq!(
        (account["object"].as_str(), account["user_id"].as_str(), account["account_display_name"].as_str()),
        (Some("connected_account"), Some("u1"), Some("Work"))
    );
    assert_eq!((accounts(&app).await, p.demo.stats().code_exchanges), (1, 1));
    // Reused.
    let (status, err) = finish(&q["connect_code"], VERIFIER, &q["state"]).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_connect_code")));
    assert!(err["message"].as_str().unwrap().contains("already used"), "{err}");
    let left: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT provider_code_enc FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert!(left.is_none(), "the provider's code is gone once used");
}

#[tokio::test]
async fn finish_refuses_a_wrong_verifier_another_flows_state_and_old_codes_and_saves_nothing() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "fin", ClientAuthMethod::Basic, |_| {}).await;
    let flow = |user: &str| {
        let app = &app;
        let body = json!({"user_id": user, "return_to": RETURN_URL, "code_challenge": s256(VERIFIER)});
        async move {
            let answer = start(app, "fin", body).await;
            let url = url::Url::parse(answer["url"].as_str().unwrap()).unwrap();
            let back = app.http.get(provider_redirect(app, &url).await).send().await.unwrap();
            query(back.headers()["location"].to_str().unwrap())
        }
    };
    let finish = |body: Value| {
        let app = &app;
        async move { app.admin(Method::POST, "/data-integrations/finish", Some(body)).await }
    };
    // A wrong verifier spends the code: a thief cannot try again, nor can anyone.
    let q = flow("u1").await;
    let wrong = "x".repeat(43);
    let (status, err) =
        finish(json!({"connect_code": q["connect_code"], "code_verifier": wrong, "state": q["state"]})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_connect_code")));
    assert!(err["message"].as_str().unwrap().contains("code_verifier does not match"), "{err}");
    let (status, err) =
        finish(json!({"connect_code": q["connect_code"], "code_verifier": VERIFIER, "state": q["state"]})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_connect_code")));
    assert!(err["message"].as_str().unwrap().contains("already used"), "{err}");
    // Another flow's state.
    let a = flow("u2").await;
    let b = flow("u3").await;
    let (status, err) =
        finish(json!({"connect_code": a["connect_code"], "code_verifier": VERIFIER, "state": b["state"]})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_connect_code")));
    assert!(err["message"].as_str().unwrap().contains("state does not belong"), "{err}");
    // Expired (90 seconds).
    sqlx::query("UPDATE oauth_states SET connect_code_expires_at = now() - interval '1 second' WHERE user_id = 'u3'")
        .execute(&app.db)
        .await
        .unwrap();
    let (status, err) =
        finish(json!({"connect_code": b["connect_code"], "code_verifier": VERIFIER, "state": b["state"]})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("authorization_state_expired")));
    // Unknown, and malformed input.
    let (status, err) = finish(json!({"connect_code": "nope", "code_verifier": VERIFIER, "state": b["state"]})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_connect_code")));
    let (status, err) = finish(json!({"connect_code": "c", "code_verifier": "short", "extra": 1})).await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = finish(json!({"connect_code": "c", "code_verifier": "short"})).await;
    assert_eq!(status, 422, "{err}");
    let fields: Vec<&str> = err["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["code_verifier"], "the state is optional, as the SDKs send it");
    assert_eq!((accounts(&app).await, p.demo.stats().code_exchanges), (0, 0), "no provider code was ever exchanged");
    // Abandoned flows keep nothing once expired.
    pipes::connect::forget_expired(
        &app.db,
        chrono::Utc::now() + chrono::Duration::hours(1) - chrono::Duration::minutes(30),
    )
    .await
    .unwrap();
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_states WHERE provider_code_enc IS NOT NULL OR pkce_verifier_enc IS NOT NULL
            OR authorization_url_enc IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test]
async fn authorize_checks_the_challenge_and_the_registered_return_url() {
    let app = TestApp::spawn().await;
    let _p = api_integration(&app, "chk", ClientAuthMethod::Basic, |_| {}).await;
    let challenge = s256(VERIFIER);
    let refused = [
        (
            json!({"code_challenge": challenge, "code_challenge_method": "plain", "return_to": RETURN_URL}),
            "code_challenge_method",
        ),
        (json!({"code_challenge_method": "S256"}), "code_challenge_method"),
        (json!({"code_challenge": "short", "return_to": RETURN_URL}), "code_challenge"),
        (json!({"code_challenge": challenge}), "return_to"),
        (json!({"code_challenge": challenge, "return_to": "http://app.test/other"}), "return_to"),
        (json!({"code_challenge": challenge, "return_to": format!("{RETURN_URL}?x=1")}), "return_to"),
    ];
    for (mut body, field) in refused {
        body["user_id"] = json!("u1");
        let (status, err) = app.admin(Method::POST, "/data-integrations/chk/authorize", Some(body.clone())).await;
        assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some(field)), "{body}: {err}");
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert_eq!(before, 0, "a refused authorize stores nothing");
    // A loopback return URL matches on any port.
    let body = json!({"user_id": "u1", "code_challenge": challenge, "return_to": "http://localhost:5173/return"});
    let (status, answer) = app.admin(Method::POST, "/data-integrations/chk/authorize", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn the_slug_finish_is_reserved_for_finishing_connections() {
    let app = TestApp::spawn().await;
    let body = json!({"provider": "finish", "enabled": true,
        "credentials": {"type": "custom", "client_id": "c", "client_secret": "s"},
        "custom_provider": {"name": "F", "authorization_url": "https://f.example/a", "token_url": "https://f.example/t"}});
    let (status, err) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
    assert_eq!((status, err["errors"][0]["code"].as_str()), (422, Some("reserved")), "{err}");
}
