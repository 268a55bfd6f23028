//! The token read API over HTTP: every answer shape and error, on-demand
//! refresh, the single flight under concurrent reads, organization isolation
//! and request validation. Cache behaviour is in `cache.rs`, SDKs in `sdk.rs`,
//! the documented answer schema in `schema.rs`.

mod cache;
mod fast_lane;
mod schema;
mod sdk;

use std::time::Duration;

use chrono::Utc;
use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::secret::Secret;
use pipes::store::accounts::{self, AccountState, TokenSet};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account, store_tokens, Provider};

const HOUR: Duration = Duration::from_secs(3600);

/// `POST /data-integrations/{slug}/token` with the app's `tokens` key.
pub async fn read(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    app.call(Method::POST, &format!("/data-integrations/{slug}/token"), Some(&app.tokens_key.clone()), Some(body)).await
}

/// The access token of an active answer (panics on anything else).
pub fn token_of(answer: &Value) -> String {
    assert_eq!(answer["active"], true, "{answer}");
    answer["access_token"]["access_token"].as_str().expect("access_token").to_owned()
}

/// The value of one series in the Prometheus text, 0 when absent.
pub fn metric(app: &TestApp, series: &str) -> f64 {
    app.state.metrics.render().lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Stores an account whose token has no refresh token and expires at `expires_at`.
async fn seed_without_refresh_token(
    app: &TestApp,
    p: &Provider,
    user: &str,
    expires_at: chrono::DateTime<Utc>,
) -> accounts::Account {
    let tokens = TokenSet {
        access_token: Secret::new("no-refresh-token"),
        refresh_token: None,
        expires_at: Some(expires_at),
        scopes: vec!["read".into()],
    };
    store_tokens(app, &p.integration.id, user, None, &tokens, None).await
}

#[tokio::test]
async fn a_fresh_account_is_answered_from_postgres_then_from_the_cache() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-fresh", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (status, first) = read(&app, "tk-fresh", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(token_of(&first), token);
    let at = &first["access_token"];
    assert_eq!(at["object"], "access_token");
    assert_eq!(at["scopes"], json!(["read"]));
    assert_eq!(at["missing_scopes"], json!(["write"]), "configured scopes the grant lacks");
    let expires_at = at["expires_at"].as_str().unwrap();
    assert_eq!(expires_at, pipes::time::rfc3339(account.expires_at.unwrap()));
    assert!(expires_at.ends_with('Z') && expires_at.len() == "2026-11-27T12:00:00.000Z".len(), "{expires_at}");
    let (_, second) =
        read(&app, "tk-fresh", json!({"user_id": "u1", "organization_id": null, "unknown_field": 1})).await;
    assert_eq!(second, first, "null organization_id means absent; unknown fields are ignored");
    assert_eq!(metric(&app, r#"pipes_token_reads_total{provider="tk-fresh",result="miss"}"#), 1.0);
    assert_eq!(metric(&app, r#"pipes_token_reads_total{provider="tk-fresh",result="hit"}"#), 1.0);
    assert_eq!(p.demo.stats().refreshes, 0);
}

#[tokio::test]
async fn the_credentials_route_answers_the_same_token_as_a_credential() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-cred", ClientAuthMethod::Basic).await;
    let (_, token) = seed_account(&app, &p, "u1", Some("org_1"), HOUR).await;
    let body = json!({"user_id": "u1", "organization_id": "org_1"});
    let (status, answer) = app
        .call(Method::POST, "/data-integrations/tk-cred/credentials", Some(&app.tokens_key.clone()), Some(body.clone()))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["active"], true);
    let credential = &answer["credential"];
    assert_eq!(credential["object"], "credential");
    assert_eq!(credential["auth_method"], "oauth");
    assert_eq!(credential["value"], token.as_str());
    assert_eq!(credential["missing_scopes"], json!(["write"]));
    let (_, as_token) = read(&app, "tk-cred", body).await;
    assert_eq!(as_token["access_token"]["expires_at"], credential["expires_at"]);
    let (_, none) = app
        .call(
            Method::POST,
            "/data-integrations/tk-cred/credentials",
            Some(&app.tokens_key.clone()),
            Some(json!({"user_id": "nobody"})),
        )
        .await;
    assert_eq!(none, json!({"active": false, "error": "not_installed"}));
}

#[tokio::test]
async fn unknown_owners_are_not_installed_and_unknown_or_disabled_integrations_are_404() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-404", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, HOUR).await;
    let (status, answer) = read(&app, "tk-404", json!({"user_id": "someone-else"})).await;
    assert_eq!((status, answer), (200, json!({"active": false, "error": "not_installed"})));
    let (status, answer) =
        read(&app, "tk-404", json!({"user_id": "u1", "connected_account_id": "data_installation_other"})).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("connected_account_not_found")),
        "another account id names nothing: {answer}"
    );
    let (_, answer) = read(&app, "tk-404", json!({"user_id": "u1", "connected_account_id": account.id})).await;
    token_of(&answer);
    let (status, answer) = read(&app, "no-such-integration", json!({"user_id": "u1"})).await;
    assert_eq!(status, 404);
    assert_eq!(answer["code"], "integration_not_found");
    sqlx::query("UPDATE integrations SET enabled = false WHERE slug = 'tk-404'").execute(&app.db).await.unwrap();
    // What the integrations API does after any change: every replica forgets it.
    app.state.integration_changed("tk-404").await;
    let (status, answer) = read(&app, "tk-404", json!({"user_id": "u1"})).await;
    assert_eq!(status, 404, "disabled: {answer}");
    assert_eq!(answer["code"], "integration_not_found");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_on_demand_and_cached() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-refresh", ClientAuthMethod::Body).await;
    let (_, old) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    let (status, answer) = read(&app, "tk-refresh", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    let new = token_of(&answer);
    assert_ne!(new, old, "a token within min_validity of expiry is never served");
    assert!(p.demo.access_token_valid(&new));
    let (_, again) = read(&app, "tk-refresh", json!({"user_id": "u1"})).await;
    assert_eq!(token_of(&again), new);
    assert_eq!(p.demo.stats().refreshes, 1);
    assert_eq!(metric(&app, r#"pipes_token_reads_total{provider="tk-refresh",result="refreshed"}"#), 1.0);
    assert_eq!(metric(&app, r#"pipes_stale_tokens_served_total{provider="tk-refresh"}"#), 0.0);
}

#[tokio::test]
async fn two_hundred_concurrent_reads_of_an_expired_account_make_one_refresh() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-flight", ClientAuthMethod::Basic).await;
    let (_, old) = seed_account(&app, &p, "u1", Some("org_1"), Duration::from_secs(5)).await;
    p.demo.push_fault(Fault::Delay(Duration::from_millis(300)));
    let body = json!({"user_id": "u1", "organization_id": "org_1"});
    let reads = (0..200).map(|_| read(&app, "tk-flight", body.clone()));
    let answers = futures_util::future::join_all(reads).await;
    let tokens: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, answer)| {
            assert_eq!(*status, 200, "{answer}");
            token_of(answer)
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every reader got the one new token");
    assert!(!tokens.contains(&old));
    let stats = p.demo.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.reuse_detected, 0);
}

#[tokio::test]
async fn a_provider_outage_with_an_expired_token_is_a_503_with_retry_after() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-down", ClientAuthMethod::Basic).await;
    let (_, old) = seed_account(&app, &p, "u1", None, Duration::from_secs(30)).await;
    p.demo.push_fault(Fault::TooManyRequests { retry_after_secs: 7 });
    let resp = app
        .http
        .post(app.url("/data-integrations/tk-down/token"))
        .bearer_auth(&app.tokens_key)
        .json(&json!({"user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body = resp.text().await.unwrap();
    assert!(!body.contains(&old), "never the stale token");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "provider_unavailable");
    p.demo.push_fault(Fault::Status(503));
    let (status, _) = read(&app, "tk-down", json!({"user_id": "u1"})).await;
    assert_eq!(status, 503);
    // The account stays connected; the next read (provider back) refreshes.
    let (status, answer) = read(&app, "tk-down", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_ne!(token_of(&answer), old);
    assert_eq!(metric(&app, r#"pipes_token_reads_total{provider="tk-down",result="error"}"#), 2.0);
}

#[tokio::test]
async fn a_revoked_grant_answers_needs_reauthorization_from_then_on() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-revoked", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    assert!(p.demo.revoke_grant_of(&token));
    for _ in 0..2 {
        let (status, answer) = read(&app, "tk-revoked", json!({"user_id": "u1"})).await;
        assert_eq!((status, answer), (200, json!({"active": false, "error": "needs_reauthorization"})));
    }
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    assert_eq!(stored.state, AccountState::NeedsReauthorization);
    let events: Vec<String> = sqlx::query_scalar("SELECT event FROM events").fetch_all(&app.db).await.unwrap();
    assert_eq!(events, ["pipes.connected_account.reauthorization_needed"]);
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_token_marks_reauthorization_with_its_event() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-norefresh", ClientAuthMethod::Basic).await;
    let account = seed_without_refresh_token(&app, &p, "u1", Utc::now() - chrono::Duration::minutes(1)).await;
    let (status, answer) = read(&app, "tk-norefresh", json!({"user_id": "u1"})).await;
    assert_eq!((status, answer), (200, json!({"active": false, "error": "needs_reauthorization"})));
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    assert_eq!(stored.state, AccountState::NeedsReauthorization);
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT event, data FROM events").fetch_all(&app.db).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "pipes.connected_account.reauthorization_needed");
    assert_eq!(events[0].1["id"], account.id.as_str());
    assert_eq!(p.demo.stats().token_requests, 0, "nothing to refresh with");
    // A non-expired token without a refresh token is served as is.
    let fresh = seed_without_refresh_token(&app, &p, "u2", Utc::now() + chrono::Duration::hours(1)).await;
    let (_, answer) = read(&app, "tk-norefresh", json!({"user_id": "u2"})).await;
    assert_eq!(token_of(&answer), "no-refresh-token");
    assert_eq!(fresh.state, AccountState::Connected);
}

#[tokio::test]
async fn the_same_user_in_two_organizations_never_sees_the_other_token() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "tk-orgs", ClientAuthMethod::Basic).await;
    let (_, in_a) = seed_account(&app, &p, "u1", Some("org_a"), HOUR).await;
    let (_, in_b) = seed_account(&app, &p, "u1", Some("org_b"), HOUR).await;
    let (_, personal) = seed_account(&app, &p, "u1", None, HOUR).await;
    for _ in 0..2 {
        let (_, a) = read(&app, "tk-orgs", json!({"user_id": "u1", "organization_id": "org_a"})).await;
        let (_, b) = read(&app, "tk-orgs", json!({"user_id": "u1", "organization_id": "org_b"})).await;
        let (_, none) = read(&app, "tk-orgs", json!({"user_id": "u1"})).await;
        assert_eq!((token_of(&a), token_of(&b), token_of(&none)), (in_a.clone(), in_b.clone(), personal.clone()));
    }
    let (_, c) = read(&app, "tk-orgs", json!({"user_id": "u1", "organization_id": "org_c"})).await;
    assert_eq!(c, json!({"active": false, "error": "not_installed"}));
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let app = TestApp::spawn().await;
    demo_integration(&app, "tk-bad", ClientAuthMethod::Basic).await;
    let url = app.url("/data-integrations/tk-bad/token");
    let send = |key: Option<String>, body: &'static str| {
        let mut req = app.http.post(&url).header("content-type", "application/json").body(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let key = Some(app.tokens_key.clone());
    let (status, body) = send(None, r#"{"user_id": "u1"}"#).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = send(Some("pipes_sk_wrong".into()), r#"{"user_id": "u1"}"#).await;
    assert_eq!(status, 401);
    let (status, body) = send(key.clone(), r#"{"user_id": "#).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_json")));
    let (status, _) = send(key.clone(), r#"["u1"]"#).await;
    assert_eq!(status, 400, "only an object is a valid body");
    for body in [r#"{}"#, r#"{"user_id": ""}"#, r#"{"user_id": "  "}"#, r#"{"user_id": null}"#] {
        let (status, answer) = send(key.clone(), body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["errors"][0]["field"], "user_id", "{answer}");
    }
    let (status, answer) = send(key.clone(), r#"{"user_id": 7}"#).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("user_id")));
    let (status, answer) = send(key.clone(), r#"{"user_id": "u1", "connection_owner": "robot"}"#).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("connection_owner")));
    let (status, answer) = send(key.clone(), r#"{"user_id": "u1", "connection_owner": "organization"}"#).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("organization_id")));
    let (status, answer) =
        send(key.clone(), r#"{"user_id": "u1", "organization_id": "org_1", "connection_owner": "organization"}"#).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("integration_not_found")),
        "no organization-owned integration: never the user's own token in place of the organization's"
    );
    // An admin key may read tokens too.
    let (status, answer) = send(Some(app.admin_key.clone()), r#"{"user_id": "u1"}"#).await;
    assert_eq!((status, answer), (200, json!({"active": false, "error": "not_installed"})));
}
