//! API-key and client-credentials integrations: accounts connected with a credential
//! their owner gives, checked at the fake provider first, vended by `/credentials` and
//! `/token`, and (client credentials) renewed before expiry by the pipeline.

use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use reqwest::Method;
use serde_json::{json, Value};

use crate::pipeline::{eventually, Pipeline};
use crate::support::app::TestApp;

async fn fake_provider() -> DemoProvider {
    DemoProvider::spawn(DemoConfig { auto_consent: true, ..DemoConfig::default() }).await.expect("demo provider").0
}

/// A custom API-key provider whose keys the fake's `/api/me` checks.
async fn api_key_integration(app: &TestApp, slug: &str, demo: &DemoProvider) -> Value {
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({
                "provider": slug,
                "auth_methods": ["api_key"],
                "enabled": true,
                "custom_provider": {"name": "Keyed", "api_key": {
                    "placement": "header", "header": "Authorization", "format": "Bearer {api_key}",
                    "verify": {"method": "GET", "url": format!("{}/api/me", demo.base_url())}}},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// A client-credentials integration at the fake, which knows `client-a` (Basic auth).
async fn client_integration(app: &TestApp, slug: &str, demo: &DemoProvider) -> Value {
    register(demo, "client-a", "ccsecret_a_0123456789");
    let base = demo.base_url();
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({
                "provider": slug,
                "auth_methods": ["client_credentials"],
                "enabled": true,
                "scopes": ["read"],
                // No authorization_url: the grant sends no user anywhere.
                "custom_provider": {"name": "Machine", "token_url": format!("{base}/token"),
                    "authenticate_via": "basic_auth_header"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

fn register(demo: &DemoProvider, id: &str, secret: &str) {
    demo.register_client(ClientRegistration {
        client_id: id.into(),
        client_secret: secret.into(),
        redirect_uris: vec![],
        auth_method: ClientAuthMethod::Basic,
    });
}

async fn credentials(app: &TestApp, slug: &str, user: &str) -> Value {
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/data-integrations/{slug}/credentials"),
            Some(&app.tokens_key.clone()),
            Some(json!({"user_id": user})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn accounts(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap()
}

async fn events(app: &TestApp) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT event, data FROM events ORDER BY seq").fetch_all(&app.db).await.unwrap()
}

#[tokio::test]
async fn an_api_key_is_checked_stored_vended_rotated_and_forgotten() {
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    demo.add_api_key("apikey_alpha_0123456789", "alpha");
    demo.add_api_key("apikey_bravo_0123456789", "bravo");
    let integration = api_key_integration(&app, "keyed", &demo).await;
    assert_eq!(integration["auth_methods"], json!(["api_key"]));
    assert_eq!(integration["credentials"], Value::Null);
    assert_eq!(integration["redirect_uri"], "");
    assert_eq!(integration["custom_provider"]["authorization_url"], Value::Null);

    // A key the provider refuses stores nothing and never shows in the answer.
    let (status, body) = app
        .admin(
            Method::PUT,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_wrong_0123456789"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("invalid_api_key")), "{body}");
    assert!(!body.to_string().contains("apikey_wrong"), "{body}");
    assert_eq!(accounts(&app).await, 0);

    // PUT without an account creates the compatibility account.
    let (status, account) = app
        .admin(
            Method::PUT,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_alpha_0123456789", "account_display_name": "Alpha"})),
        )
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["auth_method"], "api_key");
    assert_eq!(account["api_key_last_4"], "6789");
    assert_eq!(account["connection_role"], "compatibility");
    assert_eq!(account["account_display_name"], "Alpha");
    assert!(!account.to_string().contains("apikey_alpha"), "the key is never answered: {account}");

    let vended = credentials(&app, "keyed", "u1").await;
    assert_eq!(
        vended,
        json!({"active": true, "credential": {"object": "credential", "auth_method": "api_key",
            "value": "apikey_alpha_0123456789", "config": {}}})
    );
    let (_, token) = app
        .call(
            Method::POST,
            "/data-integrations/keyed/token",
            Some(&app.tokens_key.clone()),
            Some(json!({"user_id": "u1"})),
        )
        .await;
    assert_eq!(token["access_token"]["access_token"], "apikey_alpha_0123456789");
    assert_eq!(token["access_token"]["expires_at"], Value::Null);

    // Rotation: the same account, the new key, no second `connected`.
    let (status, rotated) = app
        .admin(
            Method::PUT,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_bravo_0123456789"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["id"], account["id"]);
    assert_eq!(rotated["account_display_name"], "Alpha", "an omitted label is kept");
    assert_eq!(credentials(&app, "keyed", "u1").await["credential"]["value"], "apikey_bravo_0123456789");
    let connected: Vec<Value> = events(&app)
        .await
        .into_iter()
        .filter(|(e, _)| e == "pipes.connected_account.connected")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["auth_method"], "api_key");
    assert_eq!(connected[0]["api_key_last_4"], "6789");

    // POST only adds, and this integration allows one account per owner.
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_alpha_0123456789"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("connection_intent")), "{body}");
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_alpha_0123456789", "connection_intent": "add"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("multiple_connections_unavailable")), "{body}");
    // Another user's first add fills their compatibility slot.
    let (status, added) = app
        .admin(
            Method::POST,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u2", "secret": "apikey_alpha_0123456789", "connection_intent": "add"})),
        )
        .await;
    assert_eq!((status, added["connection_role"].as_str()), (201, Some("compatibility")), "{added}");

    // Import and authorize are OAuth's; the key routes refuse fields they do not take.
    let (status, body) = app
        .admin(Method::POST, "/user_management/users/u3/connected_accounts/keyed", Some(json!({"access_token": "t"})))
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("auth_method_mismatch")), "{body}");
    let (status, body) =
        app.admin(Method::POST, "/data-integrations/keyed/authorize", Some(json!({"user_id": "u3"}))).await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("auth_method_mismatch")), "{body}");
    let (status, _) = app
        .admin(
            Method::PUT,
            "/data-integrations/keyed/api-key",
            Some(json!({"user_id": "u3", "secret": "apikey_alpha_0123456789", "client_secret": "x"})),
        )
        .await;
    assert_eq!(status, 422, "an unknown field is refused");
    assert_eq!(accounts(&app).await, 2, "nothing stored by refused writes");

    // Disconnect forgets the key.
    let (status, _) = app.admin(Method::DELETE, "/user_management/users/u1/connected_accounts/keyed", None).await;
    assert_eq!(status, 204);
    assert_eq!(credentials(&app, "keyed", "u1").await, json!({"active": false, "error": "not_installed"}));
}

#[tokio::test]
async fn api_key_integrations_are_checked_when_created_and_keys_go_only_where_they_fit() {
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    demo.add_api_key("apikey_first_0123456789", "first");
    let verify = format!("{}/api/me", demo.base_url());
    let create = |secret: &str| {
        json!({
            "provider": "keyed", "auth_methods": ["api_key"], "enabled": true,
            "custom_provider": {"name": "Keyed", "api_key": {"placement": "header", "header": "X-Api-Key",
                "format": "{api_key}", "verify": {"method": "GET", "url": verify}}},
            "api_key": {"secret": secret, "user_id": "u1"},
        })
    };
    // A refused first key: nothing is created.
    let (status, body) = app.admin(Method::POST, "/data-integrations", Some(create("apikey_nope_0123456789"))).await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("invalid_api_key")), "{body}");
    let (status, _) = app.admin(Method::GET, "/data-integrations/keyed", None).await;
    assert_eq!(status, 404);
    // A good one: the integration with its first installation.
    let (status, body) = app.admin(Method::POST, "/data-integrations", Some(create("apikey_first_0123456789"))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["installation"]["user_id"], "u1");
    assert_eq!(body["installation"]["api_key_last_4"], "6789");
    assert_eq!(credentials(&app, "keyed", "u1").await["credential"]["value"], "apikey_first_0123456789");

    // API keys for an OAuth-only catalog provider, OAuth fields on an API-key provider,
    // a key placement without its header: each a 422 naming the field.
    let cases = [
        (json!({"provider": "asana", "auth_methods": ["api_key"]}), "auth_methods"),
        (
            json!({"provider": "other", "auth_methods": ["api_key"], "custom_provider": {"name": "O",
                "token_url": "https://x.test/t", "api_key": {"placement": "query", "query_param": "k"}}}),
            "custom_provider.token_url",
        ),
        (
            json!({"provider": "other", "auth_methods": ["api_key"], "custom_provider": {"name": "O",
                "api_key": {"placement": "header"}}}),
            "custom_provider.api_key",
        ),
        (
            json!({"provider": "other", "auth_methods": ["api_key"], "custom_provider": {"name": "O"}}),
            "custom_provider.api_key",
        ),
        (json!({"provider": "github", "auth_methods": ["api_key"], "scopes": ["repo"]}), "scopes"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.admin(Method::POST, "/data-integrations", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let fields: Vec<&str> =
            answer["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
        assert!(fields.contains(&field), "{body}: expected {field} in {fields:?}");
    }
    // An OAuth integration takes no API key.
    let p = crate::support::fixtures::demo_integration(&app, "oauthy", ClientAuthMethod::Basic).await;
    let (status, body) = app
        .admin(
            Method::PUT,
            "/data-integrations/oauthy/api-key",
            Some(json!({"user_id": "u1", "secret": "apikey_x_0123456789"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("auth_method_mismatch")), "{body}");
    drop(p);
}

#[tokio::test]
async fn a_client_credentials_account_gets_its_token_from_its_own_client() {
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    let integration = client_integration(&app, "machine", &demo).await;
    assert_eq!(integration["auth_methods"], json!(["client_credentials"]));
    assert_eq!(integration["credentials"], Value::Null);

    // Bad input first: nothing reaches the provider, nothing is stored.
    let path = "/data-integrations/machine/client-credentials";
    for (body, field) in [
        (json!({"user_id": "u1", "client_id": "client-a"}), "client_secret"),
        (json!({"user_id": "u1", "client_secret": "ccsecret_a_0123456789"}), "client_id"),
        (json!({"client_id": "client-a", "client_secret": "ccsecret_a_0123456789"}), "user_id"),
        (
            json!({"user_id": "u1", "client_id": "client-a", "client_secret": "s", "connection_intent": "add"}),
            "connection_intent",
        ),
        (
            json!({"user_id": "u1", "client_id": "client-a", "client_secret": "s", "connected_account_id": "bogus"}),
            "connected_account_id",
        ),
    ] {
        let (status, answer) = app.admin(Method::PUT, path, Some(body.clone())).await;
        assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some(field)), "{body}: {answer}");
    }
    // A client the provider refuses.
    let (status, body) = app
        .admin(
            Method::PUT,
            path,
            Some(json!({"user_id": "u1", "client_id": "client-a", "client_secret": "ccsecret_wrong_0123456789"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("invalid_client_credentials")), "{body}");
    assert_eq!(accounts(&app).await, 0);
    assert_eq!(demo.stats().code_exchanges, 0);

    let (status, account) = app
        .admin(
            Method::POST,
            path,
            Some(json!({"user_id": "u1", "organization_id": "org1", "client_id": "client-a",
                "client_secret": "ccsecret_a_0123456789", "config": {"instance": "eu"}, "connection_intent": "add"})),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["auth_method"], "client_credentials");
    assert_eq!(account["client_id"], "client-a");
    assert_eq!(account["client_secret_last_4"], "6789");
    assert!(!account.to_string().contains("ccsecret_a"), "{account}");
    assert_eq!(demo.client_credentials_clients(), vec!["client-a".to_owned()], "the account's own client asked");

    let (status, vended) = app
        .call(
            Method::POST,
            "/data-integrations/machine/credentials",
            Some(&app.tokens_key.clone()),
            Some(json!({"user_id": "u1", "organization_id": "org1"})),
        )
        .await;
    assert_eq!(status, 200);
    let credential = &vended["credential"];
    assert_eq!(credential["auth_method"], "client_credentials");
    assert!(demo.access_token_valid(credential["value"].as_str().unwrap()), "{vended}");
    assert!(credential["expires_at"].is_string(), "{vended}");
    assert_eq!(credential["scopes"], json!(["read"]));
    assert_eq!(credential["missing_scopes"], json!([]));
    assert_eq!(credential["metadata"], json!({}));
    assert_eq!(credential["config"], json!({"instance": "eu"}));
}

#[tokio::test]
async fn a_client_credentials_token_is_renewed_before_expiry_without_a_read_and_a_refused_client_needs_reauthorization()
{
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    demo.set_access_ttl(Duration::from_secs(4));
    client_integration(&app, "machine", &demo).await;
    let (status, account) = app
        .admin(
            Method::PUT,
            "/data-integrations/machine/client-credentials",
            Some(json!({"user_id": "u1", "client_id": "client-a", "client_secret": "ccsecret_a_0123456789"})),
        )
        .await;
    assert_eq!(status, 200, "{account}");
    let id = account["id"].as_str().unwrap().to_owned();
    let first = crate::pipeline::load(&app, &id).await.access_token.unwrap().expose().to_owned();

    let mut pipeline = Pipeline::start(&app);
    // No read in between: the scheduler's job (a client-credentials job) renews it.
    let renewed = eventually(Duration::from_secs(15), || async {
        let now = crate::pipeline::load(&app, &id).await;
        now.access_token.is_some_and(|t| t.expose() != first)
    })
    .await;
    assert!(renewed, "renewed before it expired");
    assert!(demo.client_credentials_clients().len() >= 2);
    assert!(demo.client_credentials_clients().iter().all(|c| c == "client-a"));

    // The provider stops accepting the client: the account needs reauthorization.
    register(&demo, "client-a", "rotated-at-the-provider-0123");
    let marked = eventually(Duration::from_secs(15), || async {
        crate::pipeline::load(&app, &id).await.state == pipes::store::accounts::AccountState::NeedsReauthorization
    })
    .await;
    pipeline.stop().await;
    assert!(marked, "a refused client marks the account");
    let needed: Vec<Value> = events(&app)
        .await
        .into_iter()
        .filter(|(e, _)| e == "pipes.connected_account.reauthorization_needed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(needed.len(), 1);
    assert_eq!(needed[0]["auth_method"], "client_credentials");
    assert_eq!(credentials(&app, "machine", "u1").await, json!({"active": false, "error": "needs_reauthorization"}));
    // The integration itself stays valid: the client was the account's.
    let (_, integration) = app.admin(Method::GET, "/data-integrations/machine", None).await;
    assert_eq!(integration["state"], "valid");
    // New client credentials reconnect it.
    register(&demo, "client-b", "ccsecret_b_0123456789");
    let (status, again) = app
        .admin(
            Method::PUT,
            "/data-integrations/machine/client-credentials",
            Some(json!({"user_id": "u1", "client_id": "client-b", "client_secret": "ccsecret_b_0123456789",
                "connected_account_id": id, "connection_intent": "reauthorize"})),
        )
        .await;
    assert_eq!(
        (status, again["state"].as_str(), again["client_id"].as_str()),
        (200, Some("connected"), Some("client-b"))
    );
}

#[tokio::test]
async fn the_widget_connects_credentials_its_user_types_and_refuses_what_does_not_fit() {
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    client_integration(&app, "machine", &demo).await;
    crate::support::fixtures::demo_integration(&app, "oauthy", ClientAuthMethod::Basic).await;
    let (_, minted) = app.admin(Method::POST, "/widgets/token", Some(json!({"user_id": "w1"}))).await;
    let token = minted["token"].as_str().unwrap().to_owned();
    let widget = |slug: &str, body: Value| {
        let (app, token, path) = (&app, token.clone(), format!("/widget/api/{slug}/credential"));
        async move { app.call(Method::POST, &path, Some(&token), Some(body)).await }
    };

    // What does not fit the integration is refused, and nothing reaches the provider.
    for (slug, body, status, code) in [
        ("machine", json!({"secret": "apikey_x_0123456789"}), 422, "not_allowed"),
        ("machine", json!({"client_secret": "ccsecret_a_0123456789"}), 422, "required"),
        (
            "machine",
            json!({"client_id": "client-a", "client_secret": "ccsecret_wrong_0123456789"}),
            422,
            "invalid_client_credentials",
        ),
        ("oauthy", json!({"secret": "apikey_x_0123456789"}), 422, "auth_method_mismatch"),
    ] {
        let (got, answer) = widget(slug, body.clone()).await;
        let found = answer["errors"][0]["code"].as_str().or(answer["code"].as_str());
        assert_eq!((got, found), (status, Some(code)), "{body}: {answer}");
    }
    let (got, _) = widget("machine", json!({"client_id": "client-a", "clientsecret": "x"})).await;
    assert_eq!(got, 422, "an unknown field");
    assert_eq!(accounts(&app).await, 0);
    let (got, _) =
        app.call(Method::POST, "/widget/api/machine/credential", None, Some(json!({"client_id": "client-a"}))).await;
    assert_eq!(got, 401, "only with a widget token");

    // The right client connects the widget's user; the same again replaces it in place.
    let (got, account) =
        widget("machine", json!({"client_id": "client-a", "client_secret": "ccsecret_a_0123456789"})).await;
    assert_eq!(got, 200, "{account}");
    assert_eq!(
        (account["user_id"].as_str(), account["auth_method"].as_str()),
        (Some("w1"), Some("client_credentials"))
    );
    assert!(credentials(&app, "machine", "w1").await["credential"]["value"].as_str().is_some());
    let body = json!({"client_id": "client-a", "client_secret": "ccsecret_a_0123456789",
        "connection_intent": "reauthorize", "connected_account_id": account["id"]});
    let (got, again) = widget("machine", body).await;
    assert_eq!((got, &again["id"]), (200, &account["id"]), "{again}");
    assert_eq!(accounts(&app).await, 1);
    let (_, listed) = app.call(Method::GET, "/widget/api/providers", Some(&token), None).await;
    let machine = listed["data"].as_array().unwrap().iter().find(|p| p["slug"] == "machine").unwrap().clone();
    assert_eq!(machine["auth_method"], "client_credentials", "{listed}");
}

#[tokio::test]
async fn an_import_brings_api_keys_and_clients_checked_like_a_connect() {
    let app = TestApp::spawn().await;
    let demo = fake_provider().await;
    demo.add_api_key("apikey_moved_0123456789", "moved@keyed");
    api_key_integration(&app, "keyed", &demo).await;
    client_integration(&app, "machine", &demo).await;
    let lines = [
        json!({"integration": "keyed", "user_id": "k1", "api_key": "apikey_moved_0123456789"}),
        json!({"integration": "keyed", "user_id": "k2", "api_key": "apikey_stale_0123456789"}),
        json!({"integration": "keyed", "user_id": "k3", "access_token": "apikey_moved_0123456789"}),
        json!({"integration": "machine", "user_id": "m1", "client_id": "client-a",
            "client_secret": "ccsecret_a_0123456789", "config": {"region": "eu"}}),
        json!({"integration": "machine", "user_id": "m2", "client_id": "client-a",
            "client_secret": "ccsecret_wrong_0123456789"}),
        json!({"integration": "machine", "user_id": "m3", "client_id": "client-a"}),
    ];
    let file: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let report = pipes::import::import_lines(&app.state, &file, || {}).await.unwrap();
    assert_eq!(report.imported, 2, "{report:?}");
    let rejected: Vec<usize> = report.rejected.iter().map(|(n, _)| *n).collect();
    assert_eq!(rejected, [2, 3, 5, 6], "{report:?}");
    let said = format!("{:?}", report.rejected);
    for secret in ["apikey_stale", "apikey_moved", "ccsecret"] {
        assert!(!said.contains(secret), "a rejection names no secret: {said}");
    }
    assert!(said.contains("refused the API key") && said.contains("api_key only"), "{said}");

    assert_eq!(credentials(&app, "keyed", "k1").await["credential"]["value"], "apikey_moved_0123456789");
    let vended = credentials(&app, "machine", "m1").await;
    assert!(demo.access_token_valid(vended["credential"]["value"].as_str().unwrap()), "{vended}");
    assert_eq!(vended["credential"]["config"], json!({"region": "eu"}));
    assert_eq!(accounts(&app).await, 2);
    assert!(events(&app).await.is_empty(), "an import is quiet");
}

#[tokio::test]
async fn a_catalog_provider_of_api_keys_takes_only_api_key_integrations() {
    let app = TestApp::spawn().await;
    let (status, body) =
        app.admin(Method::POST, "/data-integrations", Some(json!({"provider": "stripe", "enabled": true}))).await;
    assert_eq!(status, 422, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["field"] == "auth_methods" && e["message"].as_str().unwrap().contains("API keys only")),
        "{body}"
    );
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({"provider": "stripe", "auth_methods": ["client_credentials"], "enabled": true})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({"provider": "stripe", "auth_methods": ["api_key"], "enabled": true})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["auth_methods"].clone(), body["credentials"].clone()),
        (json!(["api_key"]), Value::Null),
        "{body}"
    );
}
