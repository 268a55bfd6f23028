//! The connected accounts API: import, update, disconnect (with revocation),
//! organization scoping and the user's data providers.

use chrono::Utc;
use pipes::cache::Lookup;
use pipes::demo_provider::ClientAuthMethod;
use reqwest::Method;
use serde_json::json;

use crate::connect::{api_integration, connect, events};
use crate::support::app::TestApp;

const PATH: &str = "/user_management/users/user_1/connected_accounts/acme";

#[tokio::test]
async fn import_answers_201_then_409_and_caches_the_token() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let expires_at = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = json!({"access_token": "imported-at", "refresh_token": "imported-rt", "expires_at": expires_at, "scopes": ["read"]});
    let (status, account) = app.admin(Method::POST, PATH, Some(body.clone())).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["object"], "connected_account");
    assert_eq!(account["state"], "connected");
    assert_eq!(account["scopes"], json!(["read"]));
    assert_eq!(account["organization_id"], json!(null));
    assert!(
        account.get("access_token").is_none() && !account.to_string().contains("imported-at"),
        "no tokens in responses"
    );
    let Lookup::Hit(cached) =
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap()
    else {
        panic!("cached")
    };
    assert_eq!(cached.access_token.expose(), "imported-at");
    assert_eq!(cached.missing_scopes, vec!["write".to_owned()]);
    let refresh_at: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT refresh_at FROM refresh_schedule").fetch_optional(&app.db).await.unwrap();
    assert!(refresh_at.is_some(), "an imported expiring token is scheduled");
    let (status, conflict) = app.admin(Method::POST, PATH, Some(body)).await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("conflict")));
    let events = events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "pipes.connected_account.connected");
}

#[tokio::test]
async fn update_replaces_the_tokens_of_an_existing_account_only() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let (status, body) = app.admin(Method::PUT, PATH, Some(json!({"access_token": "at-1"}))).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("connected_account_not_found")));
    let (status, created) =
        app.admin(Method::POST, PATH, Some(json!({"access_token": "at-1", "state": "needs_reauthorization"}))).await;
    assert_eq!(status, 201);
    assert_eq!(created["state"], "needs_reauthorization");
    assert!(matches!(
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap(),
        Lookup::Miss
    ));
    assert!(events(&app).await.is_empty(), "an account imported as needing reauthorization is not connected");
    let (status, updated) =
        app.admin(Method::PUT, PATH, Some(json!({"access_token": "at-2", "scopes": ["read", "write"]}))).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["state"], "connected");
    assert_eq!(updated["scopes"], json!(["read", "write"]));
    let Lookup::Hit(cached) =
        app.state.cache.get("acme", &crate::support::owner("user_1", None), Utc::now()).await.unwrap()
    else {
        panic!("cached")
    };
    assert_eq!(cached.access_token.expose(), "at-2");
    assert!(cached.expires_at.is_none());
    assert_eq!(events(&app).await.len(), 1, "back to connected: one connected event");
}

#[tokio::test]
async fn disconnect_revokes_at_the_provider_removes_the_tokens_and_drops_the_cache() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    connect(&app, "acme", "user_1", Some("org_1"), None).await;
    let Lookup::Hit(cached) =
        app.state.cache.get("acme", &crate::support::owner("user_1", Some("org_1")), Utc::now()).await.unwrap()
    else {
        panic!("cached")
    };
    let path = format!("{PATH}?organization_id=org_1");
    let (status, _) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(p.demo.stats().revocations, 1);
    assert!(!p.demo.access_token_valid(cached.access_token.expose()), "the grant is revoked");
    assert!(matches!(
        app.state.cache.get("acme", &crate::support::owner("user_1", Some("org_1")), Utc::now()).await.unwrap(),
        Lookup::Miss
    ));
    let (status, _) = app.admin(Method::GET, &path, None).await;
    assert_eq!(status, 404);
    let (event, data) = events(&app).await.pop().unwrap();
    assert_eq!(event, "pipes.connected_account.disconnected");
    assert_eq!(data["state"], "disconnected");
    assert_eq!(data["organization_id"], "org_1");
    let (status, _) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_failed_revocation_does_not_stop_a_disconnect() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |b| {
        b["custom_provider"]["revocation_url"] = json!("http://127.0.0.1:9/revoke")
    })
    .await;
    app.admin(Method::POST, PATH, Some(json!({"access_token": "at", "refresh_token": "rt"}))).await;
    let (status, _) = app.admin(Method::DELETE, PATH, None).await;
    assert_eq!(status, 204);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_same_user_in_two_organizations_has_two_accounts() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let mut ids = Vec::new();
    for (org, token) in [(Some("org_a"), "at-a"), (Some("org_b"), "at-b"), (None, "at-none")] {
        let path = match org {
            Some(o) => format!("{PATH}?organization_id={o}"),
            None => PATH.to_owned(),
        };
        let (status, account) = app.admin(Method::POST, &path, Some(json!({"access_token": token}))).await;
        assert_eq!(status, 201, "{account}");
        assert_eq!(account["organization_id"], json!(org));
        ids.push(account["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for (org, token) in [(Some("org_a"), "at-a"), (Some("org_b"), "at-b"), (None, "at-none")] {
        let Lookup::Hit(cached) =
            app.state.cache.get("acme", &crate::support::owner("user_1", org), Utc::now()).await.unwrap()
        else {
            panic!("cached")
        };
        assert_eq!(cached.access_token.expose(), token);
    }
    let (_, listed) =
        app.admin(Method::GET, "/user_management/users/user_1/data_providers?organization_id=org_b", None).await;
    let account = &listed["data"][0]["connected_account"];
    assert_eq!(account["organization_id"], "org_b");
    app.admin(Method::DELETE, &format!("{PATH}?organization_id=org_a"), None).await;
    let (status, _) = app.admin(Method::GET, &format!("{PATH}?organization_id=org_b"), None).await;
    assert_eq!(status, 200, "deleting one organization's account leaves the other");
}

#[tokio::test]
async fn data_providers_lists_every_enabled_integration_with_this_users_account() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    api_integration(&app, "other", ClientAuthMethod::Basic, |b| b["description"] = json!("")).await;
    api_integration(&app, "off", ClientAuthMethod::Basic, |b| b["enabled"] = json!(false)).await;
    app.admin(Method::POST, PATH, Some(json!({"access_token": "at"}))).await;
    let (status, listed) = app.admin(Method::GET, "/user_management/users/user_1/data_providers", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["object"], "list");
    let data = listed["data"].as_array().unwrap();
    let slugs: Vec<&str> = data.iter().map(|d| d["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["acme", "other"]);
    assert_eq!(data[0]["object"], "data_provider");
    assert_eq!(data[0]["name"], "Demo acme");
    assert_eq!(data[0]["credentials_type"], "oauth2");
    assert_eq!(data[0]["integration_type"], "custom");
    assert_eq!(data[0]["scopes"], json!(["read", "write"]));
    assert_eq!(data[0]["connected_account"]["state"], "connected");
    assert_eq!(data[1]["connected_account"], json!(null));
    let (_, someone_else) = app.admin(Method::GET, "/user_management/users/user_2/data_providers", None).await;
    assert_eq!(someone_else["data"][0]["connected_account"], json!(null));
}

#[tokio::test]
async fn every_bad_input_is_a_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let cases = [
        (json!({}), "access_token"),
        (json!({"access_token": ""}), "access_token"),
        (json!({"access_token": "at", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"access_token": "at", "state": "disconnected"}), "state"),
        (json!({"access_token": "at", "scopes": ["two words"]}), "scopes"),
        (json!({"access_token": 7}), "access_token"),
    ];
    for (body, field) in cases {
        for method in [Method::POST, Method::PUT] {
            let (status, answer) = app.admin(method.clone(), PATH, Some(body.clone())).await;
            assert_eq!(status, 422, "{method} {body} -> {answer}");
            assert_eq!(answer["errors"][0]["field"], field, "{answer}");
        }
    }
    let long_user = "u".repeat(300);
    let (status, answer) =
        app.admin(Method::GET, &format!("/user_management/users/{long_user}/connected_accounts/acme"), None).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("user_id")));
    let (status, answer) = app
        .admin(
            Method::POST,
            "/user_management/users/user_1/connected_accounts/nope",
            Some(json!({"access_token": "at"})),
        )
        .await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("integration_not_found")));
    let (status, answer) = app.call(Method::POST, PATH, Some(&app.admin_key.clone()), None).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("invalid_json")));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(n, 0);
    assert!(events(&app).await.is_empty());
}

#[tokio::test]
async fn a_named_account_is_the_only_one_read_replaced_or_deleted_and_unsupported_fields_are_refused() {
    let app = TestApp::spawn().await;
    api_integration(&app, "acme", ClientAuthMethod::Basic, |_| {}).await;
    let expires_at = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let tokens = |at: &str| json!({"access_token": at, "refresh_token": "rt", "expires_at": expires_at});
    let (status, account) = app.admin(Method::POST, PATH, Some(tokens("at-1"))).await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().unwrap().to_owned();
    let other = "data_installation_01JZ0000000000000000000000";
    let version = || async {
        sqlx::query_scalar::<_, i64>("SELECT token_version FROM connected_accounts").fetch_one(&app.db).await.unwrap()
    };
    let before = version().await;

    // Naming the owner's account: that one; naming another: 404, nothing changed.
    let (status, shown) = app.admin(Method::GET, &format!("{PATH}?connected_account_id={id}"), None).await;
    assert_eq!((status, shown["id"].as_str()), (200, Some(id.as_str())));
    let (status, err) = app.admin(Method::GET, &format!("{PATH}?connected_account_id={other}"), None).await;
    assert_eq!((status, err["code"].as_str()), (404, Some("connected_account_not_found")));
    let (status, _) =
        app.admin(Method::PUT, &format!("{PATH}?connected_account_id={other}"), Some(tokens("at-2"))).await;
    assert_eq!(status, 404);
    let (status, _) = app.admin(Method::DELETE, &format!("{PATH}?connected_account_id={other}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(version().await, before, "neither the replace nor the delete touched the account");

    // Parameters that are not taken, or not yet stored, are refused and change nothing.
    let (status, err) =
        app.admin(Method::PUT, &format!("{PATH}?connection_intent=reauthorize"), Some(tokens("at-2"))).await;
    assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some("connected_account_id")));
    let (status, err) = app.admin(Method::GET, &format!("{PATH}?colour=blue"), None).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_query")), "{err}");
    let mut labelled = tokens("at-2");
    labelled["account_display_name"] = json!("Work\u{7}");
    let (status, err) = app.admin(Method::PUT, PATH, Some(labelled)).await;
    assert_eq!((status, err["errors"][0]["field"].as_str()), (422, Some("account_display_name")));
    let mut add = tokens("at-3");
    add["connection_intent"] = json!("add");
    let (status, err) = app.admin(Method::POST, PATH, Some(add)).await;
    assert_eq!((status, err["code"].as_str()), (404, Some("multiple_connections_unavailable")), "{err}");
    assert_eq!(version().await, before);

    // Reauthorizing the named account replaces its tokens; deleting it by name removes it.
    let (status, replaced) = app
        .admin(
            Method::PUT,
            &format!("{PATH}?connection_intent=reauthorize&connected_account_id={id}"),
            Some(tokens("at-4")),
        )
        .await;
    assert_eq!((status, replaced["id"].as_str()), (200, Some(id.as_str())), "{replaced}");
    let (status, _) = app.admin(Method::DELETE, &format!("{PATH}?connected_account_id={id}"), None).await;
    assert_eq!(status, 204);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0);
}
