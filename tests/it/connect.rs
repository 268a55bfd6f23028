//! The connect flow through the HTTP API against the in-process demo provider:
//! authorize, the provider's redirect, the callback's exchange, store, event and cache.

use chrono::Utc;
use pipes::cache::Lookup;
use pipes::demo_provider::{ClientAuthMethod, DemoProvider, Fault, Shape};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::app::TestApp;

/// A demo provider registered as a custom integration through the admin API.
pub struct ApiProvider {
    pub demo: DemoProvider,
    pub slug: String,
}

/// Starts a demo provider (auto-consent) and creates integration `slug` for it
/// through `POST /data-integrations`; `tweak` edits the request body first.
pub async fn api_integration(
    app: &TestApp,
    slug: &str,
    auth: ClientAuthMethod,
    tweak: impl FnOnce(&mut Value),
) -> ApiProvider {
    let (demo, client_id, client_secret) = crate::support::fixtures::demo_client(app, slug, auth).await;
    let base = demo.base_url();
    let mut body = json!({
        "provider": slug,
        "enabled": true,
        "description": "Demo provider",
        "scopes": ["read", "write"],
        "credentials": {"type": "custom", "client_id": client_id, "client_secret": client_secret},
        "custom_provider": {
            "name": format!("Demo {slug}"),
            "authorization_url": format!("{base}/authorize"),
            "token_url": format!("{base}/token"),
            "revocation_url": format!("{base}/revoke"),
            "authenticate_via": match auth { ClientAuthMethod::Basic => "basic_auth_header", ClientAuthMethod::Body => "request_body" },
        },
    });
    tweak(&mut body);
    let (status, created) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    ApiProvider { demo, slug: slug.to_owned() }
}

/// `POST …/authorize`, then the person's part on the confirmation page (in `app.http`,
/// the test's browser): the provider's URL it sends them on to.
pub async fn authorize(app: &TestApp, slug: &str, user: &str, org: Option<&str>, return_to: Option<&str>) -> url::Url {
    let body = json!({"user_id": user, "organization_id": org, "return_to": return_to});
    let (status, answer) = app.admin(Method::POST, &format!("/data-integrations/{slug}/authorize"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    confirm(app, &app.http, answer["url"].as_str().expect("url")).await
}

/// Opens the confirmation page and continues, in `browser`: the provider's URL.
pub async fn confirm(app: &TestApp, browser: &reqwest::Client, page: &str) -> url::Url {
    assert!(page.starts_with(&format!("{}/connect/", app.base_url)), "the confirmation page: {page}");
    let shown = browser.get(page).send().await.expect("confirmation page");
    assert_eq!(shown.status(), 200);
    let sent = browser.post(page).header("origin", &app.base_url).send().await.expect("continue");
    assert_eq!(sent.status(), 303, "on to the provider");
    url::Url::parse(sent.headers()["location"].to_str().expect("location")).expect("absolute url")
}

/// Follows the provider's (auto-consent) redirect: the callback URL it sends the browser to.
pub async fn provider_redirect(app: &TestApp, authorization_url: &url::Url) -> String {
    let resp = app.http.get(authorization_url.as_str()).send().await.expect("provider");
    assert_eq!(resp.status(), 302, "the provider redirects back");
    resp.headers()["location"].to_str().expect("location").to_owned()
}

/// Connects `user` end to end; returns the callback's response.
pub async fn connect(
    app: &TestApp,
    slug: &str,
    user: &str,
    org: Option<&str>,
    return_to: Option<&str>,
) -> reqwest::Response {
    let url = authorize(app, slug, user, org, return_to).await;
    let callback = provider_redirect(app, &url).await;
    app.http.get(callback).send().await.expect("callback")
}

/// The redirect's `Location`, without the flow's `state` (see `the_redirect_carries_the_flows_state`).
pub fn location(resp: &reqwest::Response) -> String {
    let raw = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let Ok(mut url) = url::Url::parse(&raw) else { return raw };
    let kept: Vec<(String, String)> = url.query_pairs().into_owned().filter(|(k, _)| k != "state").collect();
    url.query_pairs_mut().clear().extend_pairs(kept);
    url.to_string()
}

#[tokio::test]
async fn the_redirect_carries_the_flows_state() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "stated", ClientAuthMethod::Basic, |_| {}).await;
    let body = json!({"user_id": "u1", "return_to": "http://app.test/done"});
    let (status, answer) = app.admin(Method::POST, "/data-integrations/stated/authorize", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    let state = answer["state"].as_str().expect("the answer names the state").to_owned();
    let url = confirm(&app, &app.http, answer["url"].as_str().unwrap()).await;
    assert!(url.query_pairs().any(|(k, v)| k == "state" && v == state.as_str()));
    let callback = provider_redirect(&app, &url).await;
    let resp = app.http.get(callback).send().await.unwrap();
    let back = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!((query["status"].as_str(), query["state"].as_str()), ("connected", state.as_str()));
    drop(p);
}

pub async fn events(app: &TestApp) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT event, data FROM events ORDER BY seq").fetch_all(&app.db).await.unwrap()
}

async fn account_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn connecting_stores_the_account_emits_connected_and_caches_a_fresh_token() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "happy", ClientAuthMethod::Basic, |_| {}).await;
    let url = authorize(&app, &p.slug, "user_1", Some("org_1"), Some("http://app.test/done?tab=apps")).await;
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["scope"], "read write");
    assert_eq!(query["code_challenge_method"], "S256", "PKCE is on by default");
    assert_eq!(query["redirect_uri"], app.config().redirect_uri("happy"));
    // Only the state's hash is stored.
    let stored: String = sqlx::query_scalar("SELECT state_hash FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, pipes::crypto::sha256_hex(&query["state"]));

    let verifier: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT pkce_verifier_enc FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert!(verifier.is_some(), "the PKCE verifier waits, sealed, for the callback");

    let callback = provider_redirect(&app, &url).await;
    let resp = app.http.get(callback).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let verifier: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT pkce_verifier_enc FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert!(verifier.is_none(), "and is dropped once used");
    assert_eq!(location(&resp), "http://app.test/done?tab=apps&provider=happy&status=connected");

    let (status, account) = app
        .admin(Method::GET, "/user_management/users/user_1/connected_accounts/happy?organization_id=org_1", None)
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["state"], "connected");
    assert_eq!(account["scopes"], json!(["read", "write"]));
    assert!(account["id"].as_str().unwrap().starts_with("data_installation_"));
    let events = events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "pipes.connected_account.connected");
    assert_eq!(events[0].1["id"], account["id"]);
    let Lookup::Hit(cached) =
        app.state.cache.get("happy", &crate::support::owner("user_1", Some("org_1")), Utc::now()).await.unwrap()
    else {
        panic!("the fresh token is cached")
    };
    assert!(p.demo.access_token_valid(cached.access_token.expose()));
    let stats = p.demo.stats();
    assert_eq!(stats.code_exchanges, 1);
}

#[tokio::test]
async fn denied_consent_emits_connection_failed_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "deny", ClientAuthMethod::Body, |_| {}).await;
    p.demo.deny_next_consent();
    let resp = connect(&app, "deny", "user_1", None, Some("http://localhost:3000/back")).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), "http://localhost:3000/back?provider=deny&status=error&error=access_denied");
    assert_eq!(account_count(&app).await, 0);
    let events = events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "pipes.connected_account.connection_failed");
    assert_eq!(events[0].1["error_code"], "access_denied");
    assert_eq!(events[0].1["user_id"], "user_1");
    assert_eq!(p.demo.stats().code_exchanges, 0);
}

#[tokio::test]
async fn replayed_expired_and_forged_states_are_refused_and_store_nothing() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "states", ClientAuthMethod::Basic, |_| {}).await;
    // Replayed: the second use of a consumed state.
    let url = authorize(&app, "states", "user_1", None, None).await;
    let callback = provider_redirect(&app, &url).await;
    assert_eq!(app.http.get(&callback).send().await.unwrap().status(), 200);
    let replay = app.http.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("already used"));
    assert_eq!(p.demo.stats().code_exchanges, 1);
    assert_eq!(account_count(&app).await, 1);
    // Expired.
    let url = authorize(&app, "states", "user_2", None, None).await;
    sqlx::query("UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&app.db)
        .await
        .unwrap();
    let resp = app.http.get(provider_redirect(&app, &url).await).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("expired"));
    // Forged, and missing.
    let forged =
        app.http.get(app.url("/data-integrations/states/callback?code=abc&state=forged")).send().await.unwrap();
    assert_eq!(forged.status(), 400);
    assert!(forged.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let missing = app.http.get(app.url("/data-integrations/states/callback?code=abc")).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(p.demo.stats().code_exchanges, 1);
    assert_eq!(account_count(&app).await, 1);
    assert!(events(&app).await.iter().all(|(e, _)| e == "pipes.connected_account.connected"));
}

#[tokio::test]
async fn a_state_presented_at_another_integration_is_refused_without_burning_it() {
    let app = TestApp::spawn().await;
    let _a = api_integration(&app, "slug-a", ClientAuthMethod::Basic, |_| {}).await;
    let _b = api_integration(&app, "slug-b", ClientAuthMethod::Basic, |_| {}).await;
    let url = authorize(&app, "slug-a", "user_1", None, Some("http://app.test/")).await;
    let callback = provider_redirect(&app, &url).await;
    let crossed = callback.replace("/slug-a/callback", "/slug-b/callback");
    let resp = app.http.get(&crossed).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("another integration"));
    assert_eq!(account_count(&app).await, 0);
    let resp = app.http.get(&callback).send().await.unwrap();
    assert_eq!(location(&resp), "http://app.test/?provider=slug-a&status=connected");
}

#[tokio::test]
async fn an_exchange_answering_invalid_grant_or_500_emits_connection_failed() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "broken", ClientAuthMethod::Basic, |_| {}).await;
    for (fault, provider_error) in [(Fault::InvalidGrant, "invalid_grant"), (Fault::Status(500), "server_error")] {
        p.demo.push_fault(fault);
        let resp = connect(&app, "broken", "user_1", None, Some("http://app.test/x")).await;
        assert_eq!(resp.status(), 302);
        assert_eq!(location(&resp), "http://app.test/x?provider=broken&status=error&error=exchange_failed");
        let (event, data) = events(&app).await.pop().unwrap();
        assert_eq!(event, "pipes.connected_account.connection_failed");
        assert_eq!(data["error_code"], "exchange_failed");
        assert_eq!(data["provider_error"], provider_error);
    }
    assert_eq!(account_count(&app).await, 0);
    // Neither failure says anything about the client credentials.
    let (_, integration) = app.admin(Method::GET, "/data-integrations/broken", None).await;
    assert_eq!(integration["state"], "valid");
}

#[tokio::test]
async fn basic_and_body_client_authentication_each_work_and_a_mismatch_marks_the_integration_invalid() {
    let app = TestApp::spawn().await;
    api_integration(&app, "basic", ClientAuthMethod::Basic, |_| {}).await;
    api_integration(&app, "body", ClientAuthMethod::Body, |_| {}).await;
    for slug in ["basic", "body"] {
        let resp = connect(&app, slug, "user_1", None, Some("http://app.test/")).await;
        assert!(location(&resp).ends_with("status=connected"), "{slug}: {}", location(&resp));
    }
    // The provider expects Basic; the integration sends the secret in the body.
    api_integration(&app, "mismatch", ClientAuthMethod::Basic, |b| {
        b["custom_provider"]["authenticate_via"] = json!("request_body")
    })
    .await;
    let resp = connect(&app, "mismatch", "user_1", None, Some("http://app.test/")).await;
    assert!(location(&resp).ends_with("error=exchange_failed"), "{}", location(&resp));
    let (_, integration) = app.admin(Method::GET, "/data-integrations/mismatch", None).await;
    assert_eq!(integration["state"], "invalid");
}

#[tokio::test]
async fn string_expires_in_and_non_expiring_tokens_are_stored_as_such() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "quirky", ClientAuthMethod::Basic, |_| {}).await;
    p.demo.set_shape(Shape::ExpiresInString);
    connect(&app, "quirky", "user_1", None, None).await;
    let (expires_at, refresh_at): (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>) = sqlx::query_as(
        "SELECT expires_at, s.refresh_at FROM connected_accounts c LEFT JOIN refresh_schedule s ON s.account_id = c.id
             WHERE user_id = 'user_1'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let lifetime = expires_at.expect("expiry from a string expires_in") - Utc::now();
    assert!((100..=120).contains(&lifetime.num_seconds()), "{lifetime}");
    assert!(refresh_at.unwrap() < expires_at.unwrap());

    p.demo.set_shape(Shape::NonExpiring);
    connect(&app, "quirky", "user_2", None, None).await;
    type Stored = (Option<chrono::DateTime<Utc>>, Option<chrono::DateTime<Utc>>, Option<Vec<u8>>);
    let (expires_at, refresh_at, refresh): Stored = sqlx::query_as(
        "SELECT expires_at, s.refresh_at, refresh_token_enc
         FROM connected_accounts c LEFT JOIN refresh_schedule s ON s.account_id = c.id WHERE user_id = 'user_2'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((expires_at, refresh_at, refresh), (None, None, None), "served as-is, never scheduled");
    let Lookup::Hit(cached) =
        app.state.cache.get("quirky", &crate::support::owner("user_2", None), Utc::now()).await.unwrap()
    else {
        panic!("cached")
    };
    assert_eq!(cached.expires_at, None);
}

#[tokio::test]
async fn slack_shaped_code_exchanges_read_the_user_token_under_authed_user() {
    // Custom providers speak standard OAuth; the Slack envelope belongs to the catalog's
    // `slack` entry, so its spec is used here against the demo provider's endpoints.
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "slackish", ClientAuthMethod::Body, |_| {}).await;
    p.demo.set_shape(Shape::Slack);
    let integration =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), "slackish", pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    let slack = pipes::oauth::catalog::Catalog::builtin().get("slack").unwrap().oauth().unwrap().clone();
    let url = pipes::oauth::client::authorization_url(
        &integration,
        &slack,
        pipes::oauth::client::OAuthClient::of_integration(&integration),
        &app.config().redirect_uri("slackish"),
        "s1",
        &["read".into()],
        None,
    )
    .unwrap();
    let callback = url::Url::parse(&provider_redirect(&app, &url).await).unwrap();
    let code = callback.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let redirect_uri = app.config().redirect_uri("slackish");
    let grant = pipes::oauth::client::Grant::Code { code: &code, redirect_uri: &redirect_uri, pkce_verifier: None };
    let as_client = pipes::oauth::client::OAuthClient::of_integration(&integration);
    let tokens =
        pipes::oauth::client::request_token(&app.state.http, &integration, &slack, as_client, grant).await.unwrap();
    assert!(p.demo.access_token_valid(tokens.access_token.expose()));
    assert!(tokens.refresh_token.is_some());
    assert_eq!(tokens.subject.as_deref(), Some("demo-user"), "the catalog reads the member from authed_user.id");
    // Slack asks for user scopes as `user_scope`, which the demo does not read, so it grants
    // its default scope; the answer's comma-separated `scope` is read all the same.
    assert_eq!(tokens.scopes, Some(vec!["profile".to_owned()]));
    // A code replayed at Slack answers HTTP 200 `{"ok": false}`: a refusal, not tokens.
    let grant = pipes::oauth::client::Grant::Code { code: &code, redirect_uri: &redirect_uri, pkce_verifier: None };
    assert!(pipes::oauth::client::request_token(&app.state.http, &integration, &slack, as_client, grant)
        .await
        .is_err());
}

#[tokio::test]
async fn reconnecting_replaces_the_tokens_and_returns_the_account_to_connected() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "again", ClientAuthMethod::Basic, |_| {}).await;
    connect(&app, "again", "user_1", None, None).await;
    let (id, old): (String, i64) =
        sqlx::query_as("SELECT id, token_version FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    sqlx::query("UPDATE connected_accounts SET state = 'needs_reauthorization', access_token_enc = NULL, refresh_token_enc = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM refresh_schedule").execute(&app.db).await.unwrap();
    let resp = connect(&app, "again", "user_1", None, None).await;
    assert_eq!(resp.status(), 200);
    let (id2, state, new): (String, String, i64) =
        sqlx::query_as("SELECT id, state, token_version FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!((id2, state.as_str()), (id, "connected"));
    assert!(new > old);
    let Lookup::Hit(cached) =
        app.state.cache.get("again", &crate::support::owner("user_1", None), Utc::now()).await.unwrap()
    else {
        panic!("cached")
    };
    assert_eq!(cached.version, new);
    assert!(p.demo.access_token_valid(cached.access_token.expose()));
    assert_eq!(events(&app).await.len(), 2);
}

#[tokio::test]
async fn a_callback_without_return_to_shows_a_self_contained_page() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "paged", ClientAuthMethod::Basic, |_| {}).await;
    let resp = connect(&app, "paged", "user_1", None, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let html = resp.text().await.unwrap();
    assert!(html.contains("Connected") && html.contains("Demo paged"), "{html}");
    assert!(!html.contains("<script") && !html.contains("src="), "nothing external");
    p.demo.deny_next_consent();
    let html = connect(&app, "paged", "user_2", None, None).await.text().await.unwrap();
    assert!(html.contains("Not connected") && html.contains("did not grant"), "{html}");
}

#[tokio::test]
async fn authorize_validates_its_input() {
    let app = TestApp::spawn().await;
    api_integration(&app, "checked", ClientAuthMethod::Basic, |b| {
        b["custom_provider"]["request_scope_separator"] = json!(",")
    })
    .await;
    let path = "/data-integrations/checked/authorize";
    let cases = [
        (json!({}), "user_id"),
        (json!({"user_id": ""}), "user_id"),
        (json!({"user_id": "u", "return_to": "https://evil.test/steal"}), "return_to"),
        (json!({"user_id": "u", "return_to": "not a url"}), "return_to"),
        (json!({"user_id": "u", "connection_owner": "organization"}), "organization_id"),
        (json!({"user_id": "u", "organization_id": "org_1", "connection_owner": "robot"}), "connection_owner"),
        (json!({"user_id": "u", "config": {"subdomain": "acme"}}), "config"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["errors"][0]["field"], field, "{answer}");
    }
    let (status, answer) =
        app.admin(Method::POST, "/data-integrations/nope/authorize", Some(json!({"user_id": "u"}))).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("integration_not_found")));
    // The provider has no organization-owned integration: never the user-owned one instead.
    let shared = json!({"user_id": "u", "organization_id": "org_1", "connection_owner": "organization"});
    let (status, answer) = app.admin(Method::POST, path, Some(shared)).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("integration_not_found")), "{answer}");
    app.admin(Method::PUT, "/data-integrations/checked", Some(json!({"enabled": false}))).await;
    let (status, _) = app.admin(Method::POST, path, Some(json!({"user_id": "u"}))).await;
    assert_eq!(status, 404, "a disabled integration cannot be connected");
    app.admin(Method::PUT, "/data-integrations/checked", Some(json!({"enabled": true}))).await;
    let (status, _) = app.call(Method::POST, path, Some(&app.tokens_key.clone()), Some(json!({"user_id": "u"}))).await;
    assert_eq!(status, 403);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM oauth_states").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0, "refused requests store no state");
    // The provider's separator joins the scopes.
    let url = authorize(&app, "checked", "u", None, Some("http://app.test/")).await;
    assert!(url.query_pairs().any(|(k, v)| k == "scope" && v == "read,write"), "{url}");
}

#[tokio::test]
async fn the_account_subject_and_name_come_from_the_profile_where_the_catalog_says() {
    use pipes::oauth::client::{account_names, AccountNames};
    use pipes::oauth::response::TokenGrant;
    use pipes::secret::Secret;
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "profiled", ClientAuthMethod::Basic, |_| {}).await;
    // GitHub's entry, pointed at the demo provider's profile endpoint.
    let mut spec = pipes::oauth::catalog::Catalog::builtin().get("github").unwrap().clone();
    let oauth = spec.oauth.as_mut().unwrap();
    assert_eq!(oauth.account_identifier.as_deref(), Some("userinfo.id"));
    oauth.account_identifier = Some("userinfo.sub".into());
    oauth.account_display_name = Some("userinfo.name".into());
    let mut urls = spec.resolve_urls(&Default::default()).unwrap();
    urls.userinfo_url = Some(url::Url::parse(&format!("{}/userinfo", p.demo.base_url())).unwrap());
    let issued = p.demo.issue_grant("client-profiled", "octocat", &["read"]).unwrap();
    let grant = TokenGrant {
        access_token: Secret::new(issued.access_token),
        refresh_token: None,
        expires_in: None,
        scopes: None,
        subject: None,
        display_name: None,
    };
    let both = AccountNames { identifier: Some("octocat".into()), display_name: Some("octocat".into()) };
    assert_eq!(account_names(&app.state.http, &spec, &urls, &grant).await, both);
    // A token the profile refuses: no names, and nothing else fails.
    let refused = TokenGrant { access_token: Secret::new("not-a-token"), ..grant.clone() };
    assert_eq!(account_names(&app.state.http, &spec, &urls, &refused).await, AccountNames::default());
    // Names in the token answer itself are taken as they are, with no profile request.
    let named = TokenGrant {
        access_token: Secret::new("not-a-token"),
        subject: Some("U1".into()),
        display_name: Some("Acme workspace".into()),
        ..grant
    };
    let got = account_names(&app.state.http, &spec, &urls, &named).await;
    assert_eq!((got.identifier.as_deref(), got.display_name.as_deref()), (Some("U1"), Some("Acme workspace")));
}

#[tokio::test]
async fn the_providers_name_for_an_account_fills_an_empty_label_and_never_replaces_one() {
    use pipes::store::accounts::{Labels, TokenSet};
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "named", ClientAuthMethod::Basic, |_| {}).await;
    let integration =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), "named", pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    let owner = pipes::owner::Owner::user("u1".to_owned(), None);
    let tokens = TokenSet {
        access_token: pipes::secret::Secret::new("t1"),
        refresh_token: None,
        expires_at: None,
        scopes: vec![],
    };
    let write = |labels: Labels| {
        let (app, integration, owner, tokens) = (&app, &integration, &owner, &tokens);
        async move {
            let write = pipes::connections::TokenWrite {
                credential: pipes::store::accounts::Credential::OAuth,
                owner,
                established_by: None,
                labels,
                tokens,
                state: pipes::store::accounts::AccountState::Connected,
                mode: pipes::store::accounts::WriteMode::Upsert,
                announce: pipes::connections::Announce::Connected,
            };
            app.state.connections.store(integration, write).await.unwrap().unwrap().summary().account_display_name
        }
    };
    let provider = |name: &str| Labels { provider_display_name: Some(name.into()), ..Labels::default() };
    assert_eq!(write(provider("ada@example.com")).await.as_deref(), Some("ada@example.com"), "fills a new account's");
    let set = Labels { account_display_name: Some(Some("Work".into())), ..provider("ada@example.com") };
    assert_eq!(write(set).await.as_deref(), Some("Work"), "the application's label wins");
    assert_eq!(write(provider("other@example.com")).await.as_deref(), Some("Work"), "never replaces a label");
    drop(p);
}

#[tokio::test]
async fn a_catalog_entrys_token_params_go_with_every_token_request() {
    use axum::extract::State;
    use std::sync::{Arc, Mutex};
    // A token endpoint that keeps each request's form and answers a token.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let router = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|State(seen): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                seen.lock().unwrap().push(body);
                axum::Json(json!({"access_token": "at", "refresh_token": "rt", "expires_in": 3600}))
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = TestApp::spawn().await;
    api_integration(&app, "withings-like", ClientAuthMethod::Body, |_| {}).await;
    let integration = pipes::store::integrations::by_slug(
        &app.db,
        app.state.keyring(),
        "withings-like",
        pipes::owner::Ownership::User,
    )
    .await
    .unwrap()
    .unwrap();
    let mut spec = pipes::oauth::catalog::Catalog::builtin().get("github").unwrap().oauth().unwrap().clone();
    spec.token_params = [("action".to_owned(), "requesttoken".to_owned())].into();
    let token_url = url::Url::parse(&format!("http://{addr}/token")).unwrap();
    let urls = pipes::oauth::catalog::ResolvedUrls {
        authorization_url: token_url.clone(),
        token_url: token_url.clone(),
        refresh_token_url: token_url,
        revocation_url: None,
        userinfo_url: None,
    };
    let as_client = pipes::oauth::client::OAuthClient { id: "c", secret: Some("s"), urls: Some(&urls) };
    let redirect_uri = app.config().redirect_uri("withings-like");
    let code = pipes::oauth::client::Grant::Code { code: "the-code", redirect_uri: &redirect_uri, pkce_verifier: None };
    pipes::oauth::client::request_token(&app.state.http, &integration, &spec, as_client, code).await.unwrap();
    let rt = pipes::secret::Secret::new("rt".to_owned());
    let refresh = pipes::oauth::client::Grant::Refresh { refresh_token: &rt, scopes: &[] };
    pipes::oauth::client::request_token(&app.state.http, &integration, &spec, as_client, refresh).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (form, grant) in seen.iter().zip(["authorization_code", "refresh_token"]) {
        assert!(form.contains("action=requesttoken") && form.contains(&format!("grant_type={grant}")), "{form}");
    }
}
