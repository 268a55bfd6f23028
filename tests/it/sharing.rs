//! Connection sharing: an organization-owned integration root and its shared
//! accounts, beside the user-owned root of the same provider. The two kinds never
//! answer for each other: not in PostgreSQL, not in the token cache, not in a list.

use chrono::Utc;
use pipes::demo_provider::{ClientAuthMethod, DemoProvider};
use pipes::owner::Owner;
use reqwest::Method;
use serde_json::{json, Value};

use crate::connect::provider_redirect;
use crate::support::app::TestApp;

/// A demo provider with both integration roots of `slug`: user-owned and
/// organization-owned (one OAuth client, one redirect URI).
async fn both_roots(app: &TestApp, slug: &str) -> DemoProvider {
    let (demo, client_id, client_secret) =
        crate::support::fixtures::demo_client(app, slug, ClientAuthMethod::Basic).await;
    let base = demo.base_url();
    for ownership in ["user", "organization"] {
        let body = json!({
            "provider": slug,
            "ownership": ownership,
            "enabled": true,
            "scopes": ["read", "write"],
            "credentials": {"type": "custom", "client_id": client_id, "client_secret": client_secret},
            "custom_provider": {
                "name": format!("Demo {slug}"),
                "authorization_url": format!("{base}/authorize"),
                "token_url": format!("{base}/token"),
                "revocation_url": format!("{base}/revoke"),
                "authenticate_via": "basic_auth_header",
            },
        });
        let (status, created) = app.admin(Method::POST, "/data-integrations", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["ownership"], ownership);
    }
    demo
}

/// Connects through authorize and the callback; `owner` is `user` or `organization`.
async fn connect_as(app: &TestApp, slug: &str, user: &str, org: &str, owner: &str) {
    let body = json!({"user_id": user, "organization_id": org, "connection_owner": owner});
    let (status, answer) = app.admin(Method::POST, &format!("/data-integrations/{slug}/authorize"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    let url = crate::connect::confirm(app, &app.http, answer["url"].as_str().unwrap()).await;
    let callback = provider_redirect(app, &url).await;
    let page = app.http.get(callback).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Connected"), "{page}");
}

async fn token(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    app.call(Method::POST, &format!("/data-integrations/{slug}/token"), Some(&app.tokens_key.clone()), Some(body)).await
}

fn access_token(answer: &Value) -> String {
    assert_eq!(answer["active"], true, "{answer}");
    answer["access_token"]["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_organizations_shared_account_serves_its_members_and_never_stands_in_for_theirs() {
    let app = TestApp::spawn().await;
    let demo = both_roots(&app, "shared").await;
    let shared_read =
        |user: &str| json!({"user_id": user, "organization_id": "org_1", "connection_owner": "organization"});
    let own_read = |user: &str| json!({"user_id": user, "organization_id": "org_1"});

    // An admin connects the organization's account; it has no user owner.
    connect_as(&app, "shared", "admin_1", "org_1", "organization").await;
    let (status, org_account) = app.admin(Method::GET, "/organizations/org_1/connected_accounts/shared", None).await;
    assert_eq!(status, 200, "{org_account}");
    assert_eq!(
        (&org_account["user_id"], &org_account["organization_id"], &org_account["established_by_user_id"]),
        (&Value::Null, &json!("org_1"), &json!("admin_1"))
    );
    // Every member reads the same shared token (twice: PostgreSQL, then the cache).
    let (_, first) = token(&app, "shared", shared_read("member_2")).await;
    let shared_token = access_token(&first);
    assert!(demo.access_token_valid(&shared_token));
    for user in ["member_2", "member_3", "admin_1"] {
        let (status, answer) = token(&app, "shared", shared_read(user)).await;
        assert_eq!((status, access_token(&answer)), (200, shared_token.clone()));
    }
    // Nobody's own connection exists: the shared one never answers for it, the admin's included.
    for user in ["member_2", "admin_1"] {
        let (_, answer) = token(&app, "shared", own_read(user)).await;
        assert_eq!(answer, json!({"active": false, "error": "not_installed"}), "{user}");
    }
    let (status, _) = app
        .admin(Method::GET, "/user_management/users/admin_1/connected_accounts/shared?organization_id=org_1", None)
        .await;
    assert_eq!(status, 404);

    // A member's own account beside it: distinct rows, tokens and cache entries.
    connect_as(&app, "shared", "member_2", "org_1", "user").await;
    let (_, own) = token(&app, "shared", own_read("member_2")).await;
    let own_token = access_token(&own);
    assert_ne!(own_token, shared_token);
    let (_, again) = token(&app, "shared", shared_read("member_2")).await;
    assert_eq!(access_token(&again), shared_token, "the shared account is unchanged");
    let (_, other_member) = token(&app, "shared", own_read("member_3")).await;
    assert_eq!(other_member, json!({"active": false, "error": "not_installed"}), "never another member's own");
    let (_, shared_for_3) = token(&app, "shared", shared_read("member_3")).await;
    assert_eq!(access_token(&shared_for_3), shared_token);
    let (_, member_account) = app
        .admin(Method::GET, "/user_management/users/member_2/connected_accounts/shared?organization_id=org_1", None)
        .await;
    assert_eq!(
        (&member_account["user_id"], &member_account["established_by_user_id"]),
        (&json!("member_2"), &Value::Null)
    );
    let org_id = org_account["id"].as_str().unwrap();
    let member_id = member_account["id"].as_str().unwrap();
    assert_ne!(org_id, member_id);
    let redis = app.state.cache.redis();
    let shared_key = pipes::cache::entry_key(redis, "shared", &Owner::organization("org_1"));
    let own_key = pipes::cache::entry_key(redis, "shared", &crate::support::owner("member_2", Some("org_1")));
    assert_ne!(shared_key, own_key);

    // An id of the other kind of owner names nothing here: 404, nothing read or deleted.
    let (status, answer) = app
        .admin(
            Method::GET,
            &format!("/organizations/org_1/connected_accounts/shared?connected_account_id={member_id}"),
            None,
        )
        .await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("connected_account_not_found")));
    let path = format!(
        "/user_management/users/member_2/connected_accounts/shared?organization_id=org_1&connected_account_id={org_id}"
    );
    let (status, _) = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/organizations/org_2/connected_accounts/shared?connected_account_id={org_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404, "another organization cannot delete it");
    let (_, other_org) =
        token(&app, "shared", json!({"user_id": "x", "organization_id": "org_2", "connection_owner": "organization"}))
            .await;
    assert_eq!(other_org, json!({"active": false, "error": "not_installed"}));

    // Each list shows its own kind of root, with its own kind of account.
    let (status, listed) = app.admin(Method::GET, "/organizations/org_1/data_providers", None).await;
    assert_eq!(status, 200, "{listed}");
    let rows = listed["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!((&rows[0]["connection_owner"], &rows[0]["ownership"]), (&json!("organization"), &json!("organization")));
    assert_eq!(rows[0]["connected_account"]["id"], org_id);
    assert_eq!(rows[0]["connected_account"]["userland_user_id"], Value::Null);
    assert_eq!(rows[0]["connected_accounts"].as_array().unwrap().len(), 1);
    let (_, mine) =
        app.admin(Method::GET, "/user_management/users/member_2/data_providers?organization_id=org_1", None).await;
    let rows = mine["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{mine}");
    assert_eq!((&rows[0]["connection_owner"], &rows[0]["ownership"]), (&json!("user"), &json!("userland_user")));
    assert_eq!(rows[0]["connected_account"]["id"], member_id);

    // The events say whose account it is.
    let connected: Vec<Value> =
        sqlx::query_scalar("SELECT data FROM events WHERE event = 'pipes.connected_account.connected' ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(connected.len(), 2);
    assert_eq!((&connected[0]["user_id"], &connected[0]["established_by_user_id"]), (&Value::Null, &json!("admin_1")));
    assert_eq!(connected[1]["user_id"], "member_2");

    // Disconnecting the shared account leaves the member's own.
    let (status, _) = app.admin(Method::DELETE, "/organizations/org_1/connected_accounts/shared", None).await;
    assert_eq!(status, 204);
    let (_, gone) = token(&app, "shared", shared_read("member_2")).await;
    assert_eq!(gone, json!({"active": false, "error": "not_installed"}));
    assert!(!demo.access_token_valid(&shared_token), "revoked at the provider");
    let (_, still) = token(&app, "shared", own_read("member_2")).await;
    assert_eq!(access_token(&still), own_token);
}

#[tokio::test]
async fn an_organizations_account_is_imported_refreshed_and_replaced_on_behalf_of_a_member() {
    let app = TestApp::spawn().await;
    let demo = both_roots(&app, "orgimp").await;
    let path = "/organizations/org_1/connected_accounts/orgimp";
    let grant = demo.issue_grant("client-orgimp", "org_1", &["read"]).unwrap();
    // Expiring within `min_validity`: the first read refreshes it.
    let soon = (Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let tokens = json!({"access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_at": soon});

    let (status, answer) = app.admin(Method::POST, path, Some(tokens.clone())).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("user_id")), "the member is required");
    let (status, answer) =
        app.admin(Method::POST, &format!("{path}?organization_id=org_1"), Some(tokens.clone())).await;
    assert_eq!(status, 400, "a create takes no query: {answer}");
    let mut body = tokens.clone();
    body["user_id"] = json!("admin_1");
    let (status, created) = app.admin(Method::POST, path, Some(body.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((&created["user_id"], &created["established_by_user_id"]), (&Value::Null, &json!("admin_1")));
    let (status, answer) = app.admin(Method::POST, path, Some(body)).await;
    assert_eq!(status, 409, "one shared account per organization: {answer}");

    let read = json!({"user_id": "member_9", "organization_id": "org_1", "connection_owner": "organization"});
    let (_, answer) = token(&app, "orgimp", read.clone()).await;
    let refreshed = access_token(&answer);
    assert_ne!(refreshed, grant.access_token, "refreshed on demand");
    assert_eq!(demo.refreshes(), 1);

    // A replacement by another member records who reauthorized it.
    let put = json!({"user_id": "admin_2", "access_token": "replaced-token"});
    let (status, replaced) = app.admin(Method::PUT, path, Some(put)).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!((&replaced["id"], &replaced["established_by_user_id"]), (&created["id"], &json!("admin_2")));
    let (_, answer) = token(&app, "orgimp", read).await;
    assert_eq!(access_token(&answer), "replaced-token");
    let (status, _) =
        app.admin(Method::PUT, path, Some(json!({"user_id": "admin_2", "access_token": "t", "state": "bogus"}))).await;
    assert_eq!(status, 422);
    let (status, _) = app
        .admin(
            Method::PUT,
            "/organizations/org_2/connected_accounts/orgimp",
            Some(json!({"user_id": "a", "access_token": "t"})),
        )
        .await;
    assert_eq!(status, 404, "another organization has no account to replace");
    // A user's route takes no member in the body.
    let (status, answer) = app
        .admin(
            Method::POST,
            "/user_management/users/u1/connected_accounts/orgimp",
            Some(json!({"user_id": "u1", "access_token": "t"})),
        )
        .await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("user_id")));
}

#[tokio::test]
async fn the_organization_root_is_managed_beside_the_user_root() {
    let app = TestApp::spawn().await;
    let _demo = both_roots(&app, "roots").await;
    let (status, again) = app
        .admin(
            Method::POST,
            "/data-integrations",
            Some(json!({"provider": "roots", "ownership": "organization", "credentials": {"type": "custom", "client_id": "c", "client_secret": "s"},
                "custom_provider": {"name": "R", "authorization_url": "https://r.test/a", "token_url": "https://r.test/t"}})),
        )
        .await;
    assert_eq!(status, 409, "one root of each ownership per provider: {again}");

    let (status, org_root) = app.admin(Method::GET, "/data-integrations/roots/organization", None).await;
    assert_eq!((status, org_root["ownership"].as_str()), (200, Some("organization")), "{org_root}");
    let (_, user_root) = app.admin(Method::GET, "/data-integrations/roots", None).await;
    assert_eq!(user_root["ownership"], "user");
    assert_ne!(org_root["id"], user_root["id"]);

    for (query, expected) in [
        ("?ownership=organization", vec!["organization"]),
        ("?ownership=user", vec!["user"]),
        ("?order=normal", vec!["user", "organization"]),
    ] {
        let (status, listed) = app.admin(Method::GET, &format!("/data-integrations{query}"), None).await;
        assert_eq!(status, 200, "{query}: {listed}");
        let got: Vec<&str> =
            listed["data"].as_array().unwrap().iter().map(|i| i["ownership"].as_str().unwrap()).collect();
        assert_eq!(got, expected, "{query}");
    }
    let (status, answer) = app.admin(Method::GET, "/data-integrations?ownership=team", None).await;
    assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some("ownership")));

    let (status, updated) =
        app.admin(Method::PUT, "/data-integrations/roots/organization", Some(json!({"description": "Shared"}))).await;
    assert_eq!((status, updated["description"].as_str()), (200, Some("Shared")));
    let (_, user_root) = app.admin(Method::GET, "/data-integrations/roots", None).await;
    assert_ne!(user_root["description"], "Shared", "the user root is untouched");

    // Deleting the organization root takes its shared accounts, not the users'.
    let own = json!({"access_token": "own"});
    let (status, _) = app.admin(Method::POST, "/user_management/users/u1/connected_accounts/roots", Some(own)).await;
    assert_eq!(status, 201);
    let shared = json!({"user_id": "admin", "access_token": "shared"});
    let (status, _) = app.admin(Method::POST, "/organizations/org_1/connected_accounts/roots", Some(shared)).await;
    assert_eq!(status, 201);
    let (status, _) = app.admin(Method::DELETE, "/data-integrations/roots/organization", None).await;
    assert_eq!(status, 204);
    let (status, _) = app.admin(Method::GET, "/data-integrations/roots/organization", None).await;
    assert_eq!(status, 404);
    let (status, _) = app.admin(Method::GET, "/organizations/org_1/connected_accounts/roots", None).await;
    assert_eq!(status, 404);
    let (status, account) = app.admin(Method::GET, "/user_management/users/u1/connected_accounts/roots", None).await;
    assert_eq!(status, 200, "{account}");
}

#[test]
fn a_user_and_an_organization_never_share_a_cache_entry() {
    use pipes::cache::owner_segment;
    let org = owner_segment(&Owner::organization("org_1"));
    let user = owner_segment(&Owner::user("org_1", None));
    assert!(org.starts_with("org:") && org.len() == 36, "{org}");
    assert_eq!(user.len(), 32, "{user}");
    assert_ne!(&org[4..], user);
    // A user's entry keeps the name it had before owners had kinds (the migration
    // computes the same for pending invalidations).
    assert_eq!(owner_segment(&crate::support::owner("u1", Some("org_1"))), "24bdfbd662be51ee0b9bdf148be6b824");
    assert_eq!(owner_segment(&crate::support::owner("u1", None)), "b25f7500b435557b02d030c3fd28eb8a");
}
