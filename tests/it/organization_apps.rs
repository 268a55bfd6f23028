//! Organization-scoped providers: an integration with organization credentials connects
//! each organization's members through that organization's own OAuth app (the client
//! the fake provider sees), refreshes and revokes with it, and an organization's
//! `enabled` and `scopes` apply to its members' connect flows.

use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use reqwest::Method;
use serde_json::{json, Value};

use crate::connect::{authorize, provider_redirect};
use crate::support::app::TestApp;

/// An integration with organization credentials at a fake provider, which knows the
/// OAuth apps of `org_a` and `org_b` (neither configured in Pipes yet).
async fn setup(app: &TestApp) -> DemoProvider {
    let (demo, _) = DemoProvider::spawn(DemoConfig { auto_consent: true, ..DemoConfig::default() }).await.unwrap();
    for org in ["org_a", "org_b"] {
        demo.register_client(ClientRegistration {
            client_id: format!("{org}-app"),
            client_secret: format!("demo_cs_{org}_0123456789"),
            redirect_uris: vec![app.config().redirect_uri("byoa")],
            auth_method: ClientAuthMethod::Basic,
        });
    }
    let base = demo.base_url();
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({
                "provider": "byoa", "enabled": true, "scopes": ["read", "write"],
                "credentials": {"type": "organization"},
                "custom_provider": {"name": "Bring your own app", "authorization_url": format!("{base}/authorize"),
                    "token_url": format!("{base}/token"), "revocation_url": format!("{base}/revoke"),
                    "authenticate_via": "basic_auth_header"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["credentials"], json!({"type": "organization", "client_id": null, "redacted_client_secret": null}));
    demo
}

async fn configure(app: &TestApp, org: &str, body: Value) -> (u16, Value) {
    app.admin(Method::PUT, &format!("/organizations/{org}/data_integration_configurations/byoa"), Some(body)).await
}

async fn connect_member(app: &TestApp, user: &str, org: &str) -> String {
    let url = authorize(app, "byoa", user, Some(org), None).await;
    let callback = provider_redirect(app, &url).await;
    let resp = app.http.get(callback).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the callback's page (no return_to)");
    let page = resp.text().await.unwrap();
    let failed: Vec<(String, Value)> =
        sqlx::query_as("SELECT event, data FROM events").fetch_all(&app.db).await.unwrap();
    assert!(failed.iter().any(|(e, _)| e.ends_with(".connected")), "{failed:?} {page}");
    let row: (String,) =
        sqlx::query_as("SELECT id FROM connected_accounts WHERE user_id = $1 AND organization_id = $2")
            .bind(user)
            .bind(org)
            .fetch_one(&app.db)
            .await
            .expect("the account was stored");
    row.0
}

#[tokio::test]
async fn each_organization_connects_through_its_own_app_and_no_other() {
    let app = TestApp::spawn().await;
    let demo = setup(&app).await;

    // Nothing configured: members cannot start, and an account outside any organization never can.
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/byoa/authorize",
            Some(json!({"user_id": "a1", "organization_id": "org_a"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("organization_credentials_missing")), "{body}");
    let (status, body) =
        app.admin(Method::POST, "/data-integrations/byoa/authorize", Some(json!({"user_id": "a1"}))).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("organization_id")), "{body}");

    // Bad configurations change nothing.
    for (body, field) in [
        (json!({"client_id": "org_a-app"}), "client_secret"),
        (json!({"client_secret": "demo_cs_org_a_0123456789"}), "client_id"),
        (json!({"config": {"subdomain": "acme"}}), "config.subdomain"),
        (json!({"scopes": ["has space"]}), "scopes"),
    ] {
        let (status, answer) = configure(&app, "org_a", body.clone()).await;
        assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some(field)), "{body}: {answer}");
    }
    let (status, _) = configure(&app, "org_a", json!({"clientid": "x"})).await;
    assert_eq!(status, 422, "an unknown field is refused");
    let configured: i64 =
        sqlx::query_scalar("SELECT count(*) FROM organization_configurations").fetch_one(&app.db).await.unwrap();
    assert_eq!(configured, 0);

    let (status, shown) =
        configure(&app, "org_a", json!({"client_id": "org_a-app", "client_secret": "demo_cs_org_a_0123456789"})).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["object"], "data_integration_configuration");
    assert_eq!(shown["credentials"]["has_credentials"], true);
    assert_eq!(shown["credentials"]["client_id"], "org_a-app");
    assert_eq!(shown["credentials"]["client_secret_last_four"], "6789");
    assert_eq!(shown["credentials"]["redirect_uri"], app.config().redirect_uri("byoa"));
    assert!(!shown.to_string().contains("demo_cs_org_a"), "the secret is never answered: {shown}");

    // A member of org_a connects through org_a's app: the provider saw org_a-app.
    let id = connect_member(&app, "a1", "org_a").await;
    let account = crate::pipeline::load(&app, &id).await;
    let access = account.access_token.clone().unwrap();
    assert_eq!(demo.client_of(access.expose()).as_deref(), Some("org_a-app"));
    // A member of org_b still cannot: org_a's app is org_a's.
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/byoa/authorize",
            Some(json!({"user_id": "b1", "organization_id": "org_b"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("organization_credentials_missing")), "{body}");
    // Nor does a member of org_b read org_a's member's token.
    let (_, read) = app
        .call(
            Method::POST,
            "/data-integrations/byoa/token",
            Some(&app.tokens_key.clone()),
            Some(json!({"user_id": "a1", "organization_id": "org_b"})),
        )
        .await;
    assert_eq!(read, json!({"active": false, "error": "not_installed"}));

    // The refresh presents the refresh token with org_a's app.
    let refreshes = demo.stats().refreshes;
    sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - interval '1 second' WHERE account_id = $1")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let integration =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), "byoa", pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    let outcome =
        app.state.refresher.refresh(&integration, &id.clone().into(), pipes::refresh::Reason::Scheduled).await;
    assert!(matches!(outcome, Ok(pipes::refresh::RefreshOutcome::Refreshed(_))), "{outcome:?}");
    let after = crate::pipeline::load(&app, &id).await;
    assert_eq!(demo.stats().refreshes, refreshes + 1);
    assert_eq!(demo.client_of(after.access_token.unwrap().expose()).as_deref(), Some("org_a-app"));

    // org_b configures its app: its members connect through it.
    let (status, _) =
        configure(&app, "org_b", json!({"client_id": "org_b-app", "client_secret": "demo_cs_org_b_0123456789"})).await;
    assert_eq!(status, 200);
    let b = connect_member(&app, "b1", "org_b").await;
    let b_token = crate::pipeline::load(&app, &b).await.access_token.unwrap();
    assert_eq!(demo.client_of(b_token.expose()).as_deref(), Some("org_b-app"));

    // Disconnecting revokes with the organization's app (the provider accepts only the issuing client).
    let (status, _) = app
        .admin(Method::DELETE, "/user_management/users/a1/connected_accounts/byoa?organization_id=org_a", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(demo.stats().revocations, 1, "revoked at the provider");
}

#[tokio::test]
async fn an_organization_narrows_scopes_and_can_turn_a_provider_off_for_its_members() {
    let app = TestApp::spawn().await;
    setup(&app).await;
    let (status, shown) = configure(
        &app,
        "org_a",
        json!({"client_id": "org_a-app", "client_secret": "demo_cs_org_a_0123456789", "scopes": ["read"]}),
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["scopes"], json!(["read"]));
    let url = authorize(&app, "byoa", "a1", Some("org_a"), None).await;
    let scope: Vec<(String, String)> =
        url.query_pairs().into_owned().filter(|(k, _)| k == "scope" || k == "client_id").collect();
    assert!(scope.contains(&("scope".into(), "read".into())), "{url}");
    assert!(scope.contains(&("client_id".into(), "org_a-app".into())), "{url}");

    // `null` inherits the integration's scopes again.
    let (_, shown) = configure(&app, "org_a", json!({"scopes": null})).await;
    assert_eq!(shown["scopes"], json!(["read", "write"]));

    let (_, shown) = configure(&app, "org_a", json!({"enabled": false})).await;
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["credentials"]["has_credentials"], true, "the app is kept");
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/byoa/authorize",
            Some(json!({"user_id": "a1", "organization_id": "org_a"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("integration_not_found")), "{body}");

    // The list shows every provider as the organization has it.
    let (status, list) = app.admin(Method::GET, "/organizations/org_a/data_integration_configurations", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["slug"], "byoa");
    assert_eq!(list["data"][0]["enabled"], false);
    let (_, other) = app.admin(Method::GET, "/organizations/org_b/data_integration_configurations", None).await;
    assert_eq!(
        (other["data"][0]["enabled"].as_bool(), other["data"][0]["credentials"]["has_credentials"].as_bool()),
        (Some(true), Some(false))
    );

    // An integration with its own app takes no organization app.
    crate::support::fixtures::demo_integration(&app, "shared", ClientAuthMethod::Basic).await;
    let (status, body) = app
        .admin(
            Method::PUT,
            "/organizations/org_a/data_integration_configurations/shared",
            Some(json!({"client_id": "x", "client_secret": "y"})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("not_allowed")), "{body}");
    let (status, _) = app
        .admin(
            Method::PUT,
            "/organizations/org_a/data_integration_configurations/nothing",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reads_report_the_scopes_missing_from_what_the_members_organization_asks_for() {
    let app = TestApp::spawn().await;
    setup(&app).await;
    for org in ["org_a", "org_b"] {
        let app_of = json!({"client_id": format!("{org}-app"), "client_secret": format!("demo_cs_{org}_0123456789")});
        assert_eq!(configure(&app, org, app_of).await.0, 200);
    }
    connect_member(&app, "a1", "org_a").await;
    connect_member(&app, "b1", "org_b").await;
    let missing = |user: &'static str, org: &'static str| {
        let app = &app;
        async move {
            let (status, read) = app
                .call(
                    Method::POST,
                    "/data-integrations/byoa/credentials",
                    Some(&app.tokens_key),
                    Some(json!({"user_id": user, "organization_id": org})),
                )
                .await;
            assert_eq!(status, 200, "{read}");
            read["credential"]["missing_scopes"].clone()
        }
    };
    // Both were granted the integration's scopes; the reads are cached now.
    assert_eq!(missing("a1", "org_a").await, json!([]));
    assert_eq!(missing("b1", "org_b").await, json!([]));

    // org_a asks its members for more: its member's reads say what the grant lacks at
    // once, the other organization's member is unaffected.
    let (status, shown) = configure(&app, "org_a", json!({"scopes": ["read", "admin"]})).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(missing("a1", "org_a").await, json!(["admin"]));
    assert_eq!(missing("b1", "org_b").await, json!([]));
    let (_, token) = app
        .call(
            Method::POST,
            "/data-integrations/byoa/token",
            Some(&app.tokens_key),
            Some(json!({"user_id": "a1", "organization_id": "org_a"})),
        )
        .await;
    assert_eq!(token["access_token"]["missing_scopes"], json!(["admin"]), "{token}");

    // Back to the integration's scopes.
    configure(&app, "org_a", json!({"scopes": null})).await;
    assert_eq!(missing("a1", "org_a").await, json!([]));
}

#[tokio::test]
async fn an_organization_names_its_own_instance_of_a_catalog_provider() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({"provider": "zendesk", "enabled": true, "credentials": {"type": "organization"}})),
        )
        .await;
    assert_eq!(status, 201, "each organization names its own subdomain: {body}");
    let zendesk = |org: &str, body: Value| {
        let app = &app;
        let path = format!("/organizations/{org}/data_integration_configurations/zendesk");
        async move { app.admin(Method::PUT, &path, Some(body)).await }
    };

    // Only the provider's own fields, each a value it accepts; nothing is stored otherwise.
    let (status, body) = zendesk("org_a", json!({"config": {"region": "eu"}})).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("config.region")), "{body}");
    let (status, body) = zendesk("org_a", json!({"config": {"subdomain": "evil.example.com/x"}})).await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("invalid")), "{body}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM organization_configurations").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, 0);

    // An app without its instance: authorizing names what is missing.
    let app_a = json!({"client_id": "acme-zendesk", "client_secret": "zd_secret_0123456789"});
    assert_eq!(zendesk("org_a", app_a).await.0, 200);
    let (status, body) = app
        .admin(
            Method::POST,
            "/data-integrations/zendesk/authorize",
            Some(json!({"user_id": "a1", "organization_id": "org_a"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["code"], "organization_config_missing", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("subdomain"), "{body}");

    let (status, shown) = zendesk("org_a", json!({"config": {"subdomain": "acme"}})).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["config"], json!({"subdomain": "acme"}));
    let (status, answer) = app
        .admin(
            Method::POST,
            "/data-integrations/zendesk/authorize",
            Some(json!({"user_id": "a1", "organization_id": "org_a"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let page = answer["url"].as_str().unwrap();
    // The confirmation page lets its form lead to the organization's instance only.
    let shown = app.http.get(page).send().await.unwrap();
    let csp = shown.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("form-action 'self' https://acme.zendesk.com;"), "{csp}");
    let url = crate::connect::confirm(&app, &app.http, page).await;
    assert_eq!(url.host_str(), Some("acme.zendesk.com"), "{url}");
    assert_eq!(url.path(), "/oauth/authorizations/new");
    assert!(url.query_pairs().any(|(k, v)| k == "client_id" && v == "acme-zendesk"), "{url}");

    // Config belongs to integrations with organization credentials only.
    crate::support::fixtures::demo_integration(&app, "shared", ClientAuthMethod::Basic).await;
    let (status, body) = app
        .admin(
            Method::PUT,
            "/organizations/org_a/data_integration_configurations/shared",
            Some(json!({"config": {"subdomain": "acme"}})),
        )
        .await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("not_allowed")), "{body}");
}
