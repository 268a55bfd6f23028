//! The integrations admin API: create (catalog and custom), validation, paging,
//! update and delete, and secrets that never come back.

use chrono::Utc;
use pipes::cache::Lookup;
use pipes::crypto::aad;
use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::{json, Value};

use crate::connect::{api_integration, events};
use crate::support::app::TestApp;

fn github(secret: &str) -> Value {
    json!({"provider": "github", "credentials": {"type": "custom", "client_id": "gh-client", "client_secret": secret}})
}

async fn integration_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM integrations").fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn a_catalog_provider_needs_only_credentials_and_its_secret_is_sealed_and_never_returned() {
    let app = TestApp::spawn().await;
    let secret = "gh-secret-0123456789abcd";
    let (status, created) = app.admin(Method::POST, "/data-integrations", Some(github(secret))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["object"], "data_integration");
    assert!(created["id"].as_str().unwrap().starts_with("data_integration_"));
    assert_eq!(created["slug"], "github");
    assert_eq!(created["integration_type"], "github");
    assert_eq!(created["enabled"], false, "off until enabled, as the hosted product creates them");
    assert_eq!(created["state"], "valid");
    assert_eq!(created["auth_methods"], json!(["oauth"]));
    assert_eq!(created["custom_provider"], json!(null));
    assert_eq!(created["redirect_uri"], app.config().redirect_uri("github"));
    let defaults = &pipes::oauth::catalog::Catalog::builtin().get("github").unwrap().oauth().unwrap().default_scopes;
    assert_eq!(created["scopes"], json!(defaults));
    assert_eq!(
        created["credentials"],
        json!({"type": "custom", "client_id": "gh-client", "redacted_client_secret": "********abcd"})
    );
    assert!(
        created["created_at"].as_str().unwrap().ends_with('Z') && created["created_at"].as_str().unwrap().len() == 24
    );
    let (_, shown) = app.admin(Method::GET, "/data-integrations/github", None).await;
    assert_eq!(shown, created);
    assert!(!shown.to_string().contains(secret));
    let (id, sealed): (String, Vec<u8>) =
        sqlx::query_as("SELECT id, client_secret_enc FROM integrations").fetch_one(&app.db).await.unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let opened = app.state.keyring().open_string(&sealed, aad(pipes::keys::columns::CLIENT_SECRET, &id)).unwrap();
    assert_eq!(opened, secret);
    let (status, conflict) = app.admin(Method::POST, "/data-integrations", Some(github(secret))).await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn a_custom_provider_is_stored_with_workos_defaults() {
    let app = TestApp::spawn().await;
    let body = json!({
        "provider": "acme-crm",
        "description": "Acme CRM",
        "scopes": ["contacts.read", "contacts.read"],
        "credentials": {"type": "custom", "client_id": "id", "client_secret": "short"},
        "custom_provider": {"name": "Acme", "authorization_url": "https://acme.test/oauth/authorize",
            "token_url": "https://acme.test/oauth/token", "token_body_content_type": "application/json",
            "additional_authorization_parameters": {"prompt": "consent"}},
    });
    let (status, created) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["integration_type"], "custom");
    assert_eq!(created["scopes"], json!(["contacts.read"]), "duplicates dropped");
    assert_eq!(created["credentials"]["redacted_client_secret"], "****");
    let custom = &created["custom_provider"];
    assert_eq!(custom["pkce_enabled"], true);
    assert_eq!(custom["client_secret_required"], true);
    assert_eq!(custom["request_scope_separator"], " ");
    assert_eq!(custom["authenticate_via"], "request_body");
    assert_eq!(custom["token_body_content_type"], "json");
    assert_eq!(custom["additional_authorization_parameters"], json!({"prompt": "consent"}));
    // Plain http is fine on loopback, for development.
    let mut local = json!({"provider": "local", "credentials": {"client_id": "id", "client_secret": "s"},
        "custom_provider": {"name": "Local", "authorization_url": "http://localhost:9000/a", "token_url": "http://[::1]:9000/t"}});
    assert_eq!(app.admin(Method::POST, "/data-integrations", Some(local.clone())).await.0, 201);
    local["provider"] = json!("local2");
    local["custom_provider"]["token_url"] = json!("http://127.0.0.1:9000/t");
    assert_eq!(app.admin(Method::POST, "/data-integrations", Some(local)).await.0, 201);
}

#[tokio::test]
async fn every_invalid_create_is_a_422_naming_the_field_and_stores_nothing() {
    // Outside development: plain http and internal addresses are refused too.
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_ALLOW_PRIVATE_NETWORK", "false");
    })
    .await;
    let creds = json!({"type": "custom", "client_id": "id", "client_secret": "secret"});
    let custom = json!({"name": "X", "authorization_url": "https://x.test/a", "token_url": "https://x.test/t"});
    let with = |patch: Value| {
        let mut body = json!({"provider": "xcorp", "credentials": creds.clone(), "custom_provider": custom.clone()});
        merge(&mut body, patch);
        body
    };
    let cases = [
        (json!({"credentials": creds}), "provider"),
        (with(json!({"provider": "Bad Slug!"})), "provider"),
        (json!({"provider": "xcorp", "credentials": creds}), "custom_provider"),
        (json!({"provider": "github", "credentials": creds, "custom_provider": custom}), "custom_provider"),
        (json!({"provider": "github"}), "credentials"),
        (json!({"provider": "github", "credentials": {"type": "shared"}}), "credentials.type"),
        (json!({"provider": "github", "credentials": {"client_id": "id"}}), "credentials.client_secret"),
        (json!({"provider": "github", "credentials": {"client_secret": "s"}}), "credentials.client_id"),
        (
            with(json!({"custom_provider": {"authorization_url": "http://x.test/a"}})),
            "custom_provider.authorization_url",
        ),
        (with(json!({"custom_provider": {"token_url": "/relative"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "ftp://x.test/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://user:pw@x.test/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"revocation_url": "http://10.0.0.1/r"}})), "custom_provider.revocation_url"),
        (with(json!({"custom_provider": {"token_url": "https://127.0.0.1/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://localhost/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[::1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://0.0.0.0/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://169.254.169.254/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://100.64.0.1/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://198.18.0.1/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://240.0.0.1/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[::ffff:10.0.0.1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[::10.0.0.1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[64:ff9b::7f00:1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[2002:c0a8:101::1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[fd00::1]/t"}})), "custom_provider.token_url"),
        (with(json!({"custom_provider": {"token_url": "https://[fe80::1]/t"}})), "custom_provider.token_url"),
        (
            with(json!({"custom_provider": {"refresh_token_url": "https://[ff02::1]/t"}})),
            "custom_provider.refresh_token_url",
        ),
        (with(json!({"custom_provider": {"name": ""}})), "custom_provider.name"),
        (with(json!({"custom_provider": {"request_scope_separator": ";"}})), "custom_provider.request_scope_separator"),
        (with(json!({"custom_provider": {"authenticate_via": "jwt"}})), "custom_provider.authenticate_via"),
        (
            with(json!({"custom_provider": {"token_body_content_type": "xml"}})),
            "custom_provider.token_body_content_type",
        ),
        (
            with(json!({"custom_provider": {"additional_authorization_parameters": {"state": "x"}}})),
            "custom_provider.additional_authorization_parameters.state",
        ),
        (with(json!({"custom_provider": {"scopes_required": true}})), "scopes"),
        (with(json!({"scopes": ["has space"]})), "scopes[0]"),
        (with(json!({"config": {"subdomain": "acme"}})), "config"),
        (with(json!({"auth_methods": ["oauth", "api_key"]})), "auth_methods"),
        (with(json!({"auth_methods": ["password"]})), "auth_methods"),
        (with(json!({"auth_methods": ["client_credentials"]})), "credentials"),
        (with(json!({"api_key": {"secret": "k", "user_id": "u"}})), "api_key"),
        (with(json!({"ownership": "team"})), "ownership"),
        (with(json!({"enabled": "yes"})), "enabled"),
        (json!({"provider": "zendesk", "credentials": creds}), "config.subdomain"),
        (
            json!({"provider": "zendesk", "credentials": creds, "config": {"subdomain": "evil.test/x"}}),
            "config.subdomain",
        ),
        (json!({"provider": "github", "credentials": creds, "config": {"tenant": "x"}}), "config.tenant"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.admin(Method::POST, "/data-integrations", Some(body.clone())).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let fields: Vec<&str> =
            answer["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&field), "{body}: expected {field} in {fields:?}");
        assert_eq!(answer["code"], "validation_error");
    }
    assert_eq!(integration_count(&app).await, 0);
    let (status, ok) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({"provider": "zendesk", "credentials": creds, "config": {"subdomain": "acme"}})),
        )
        .await;
    assert_eq!(status, 201, "{ok}");
    assert_eq!(ok["config"], json!({"subdomain": "acme"}));
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

#[tokio::test]
async fn the_list_pages_with_limit_before_after_and_order() {
    let app = TestApp::spawn().await;
    for slug in ["p1", "p2", "p3", "p4", "p5"] {
        let body = json!({"provider": slug, "credentials": {"client_id": "id", "client_secret": "s"},
            "custom_provider": {"name": slug, "authorization_url": "https://x.test/a", "token_url": "https://x.test/t"}});
        assert_eq!(app.admin(Method::POST, "/data-integrations", Some(body)).await.0, 201);
    }
    let slugs = |page: &Value| {
        page["data"].as_array().unwrap().iter().map(|d| d["slug"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (_, first) = app.admin(Method::GET, "/data-integrations?limit=2", None).await;
    assert_eq!(slugs(&first), ["p5", "p4"], "newest first by default");
    assert_eq!(first["list_metadata"]["before"], json!(null));
    let after = first["list_metadata"]["after"].as_str().unwrap();
    let (_, second) = app.admin(Method::GET, &format!("/data-integrations?limit=2&after={after}"), None).await;
    assert_eq!(slugs(&second), ["p3", "p2"]);
    let after = second["list_metadata"]["after"].as_str().unwrap();
    let (_, last) = app.admin(Method::GET, &format!("/data-integrations?limit=2&after={after}"), None).await;
    assert_eq!(slugs(&last), ["p1"]);
    assert_eq!(last["list_metadata"]["after"], json!(null));
    let before = last["list_metadata"]["before"].as_str().unwrap();
    let (_, back) = app.admin(Method::GET, &format!("/data-integrations?limit=2&before={before}"), None).await;
    assert_eq!(slugs(&back), ["p3", "p2"]);
    let (_, asc) = app.admin(Method::GET, "/data-integrations?order=asc&limit=3", None).await;
    assert_eq!(slugs(&asc), ["p1", "p2", "p3"]);
    for bad in ["limit=0", "limit=101", "limit=ten", "order=sideways", "before=a&after=b"] {
        let (status, _) = app.admin(Method::GET, &format!("/data-integrations?{bad}"), None).await;
        assert_eq!(status, 422, "{bad}");
    }
}

#[tokio::test]
async fn update_changes_fields_rotates_credentials_and_evicts_cached_tokens() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let path = "/user_management/users/user_1/connected_accounts/acme";
    app.admin(Method::POST, path, Some(json!({"access_token": "at", "scopes": ["read"]}))).await;
    assert!(matches!(
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap(),
        Lookup::Hit(_)
    ));
    sqlx::query("UPDATE integrations SET state = 'invalid', state_reason = 'refused'").execute(&app.db).await.unwrap();
    let body = json!({"description": "New", "scopes": ["read"], "credentials": {"client_secret": "rotated-secret-xyz9"},
        "custom_provider": {"request_scope_separator": ","}});
    let (status, updated) = app.admin(Method::PUT, "/data-integrations/acme", Some(body)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["description"], "New");
    assert_eq!(updated["scopes"], json!(["read"]));
    assert_eq!(updated["state"], "valid", "new credentials clear the invalid state");
    assert_eq!(updated["credentials"]["redacted_client_secret"], "********xyz9");
    assert_eq!(updated["credentials"]["client_id"], "client-acme", "unchanged fields stay");
    assert_eq!(updated["custom_provider"]["request_scope_separator"], ",");
    assert!(updated["custom_provider"]["token_url"].as_str().unwrap().ends_with("/token"));
    assert!(matches!(
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap(),
        Lookup::Miss
    ));
    // Where the secret goes changes only with the secret in the same request.
    let (status, answer) = app
        .admin(
            Method::PUT,
            "/data-integrations/acme",
            Some(json!({"custom_provider": {"token_url": "https://x.test"}})),
        )
        .await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("credentials.client_secret")));
    let (_, unchanged) = app.admin(Method::GET, "/data-integrations/acme", None).await;
    assert!(unchanged["custom_provider"]["token_url"].as_str().unwrap().starts_with("http://127.0.0.1"));
    let (status, _) = app.admin(Method::PUT, "/data-integrations/nope", Some(json!({"enabled": false}))).await;
    assert_eq!(status, 404);
    app.admin(Method::POST, "/data-integrations", Some(github("s3cr3t-value-0000"))).await;
    let (status, answer) =
        app.admin(Method::PUT, "/data-integrations/github", Some(json!({"custom_provider": {"name": "x"}}))).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("custom_provider")));
    let (_, reset) = app.admin(Method::PUT, "/data-integrations/github", Some(json!({"scopes": null}))).await;
    let defaults = &pipes::oauth::catalog::Catalog::builtin().get("github").unwrap().oauth().unwrap().default_scopes;
    assert_eq!(reset["scopes"], json!(defaults), "null resets to the provider's defaults");
}

#[tokio::test]
async fn delete_removes_the_integration_with_its_accounts_and_says_so_in_events() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    for user in ["user_1", "user_2"] {
        let path = format!("/user_management/users/{user}/connected_accounts/acme");
        assert_eq!(app.admin(Method::POST, &path, Some(json!({"access_token": "at"}))).await.0, 201);
    }
    let (status, _) = app.admin(Method::DELETE, "/data-integrations/acme", None).await;
    assert_eq!(status, 204);
    assert_eq!(integration_count(&app).await, 0);
    assert!(matches!(
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap(),
        Lookup::Miss
    ));
    let disconnected =
        events(&app).await.into_iter().filter(|(e, _)| e == "pipes.connected_account.disconnected").count();
    assert_eq!(disconnected, 2);
    let (status, answer) = app.admin(Method::DELETE, "/data-integrations/acme", None).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("integration_not_found")));
}

#[tokio::test]
async fn the_openapi_document_describes_the_new_routes() {
    let app = TestApp::spawn().await;
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    for path in [
        "/data-integrations",
        "/data-integrations/{slug}",
        "/data-integrations/{slug}/authorize",
        "/data-integrations/{slug}/callback",
        "/user_management/users/{user_id}/connected_accounts/{slug}",
        "/user_management/users/{user_id}/data_providers",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["CreateIntegration"]["properties"]["config"].is_object());
}
