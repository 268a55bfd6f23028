//! Several accounts per owner and integration: `connection_intent: add`, the
//! compatibility account that requests naming no account select, selection by
//! `connected_account_id`, and `account_selection_required` where several match.

use reqwest::Method;
use serde_json::{json, Value};

use crate::connect::{api_integration, provider_redirect};
use crate::support::app::TestApp;
use pipes::demo_provider::ClientAuthMethod;

const PATH: &str = "/user_management/users/u1/connected_accounts/multi";

async fn token(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    app.call(Method::POST, &format!("/data-integrations/{slug}/token"), Some(&app.tokens_key.clone()), Some(body)).await
}

fn access_token(answer: &Value) -> &str {
    assert_eq!(answer["active"], true, "{answer}");
    answer["access_token"]["access_token"].as_str().unwrap()
}

async fn add(app: &TestApp, access: &str, identifier: &str, label: &str) -> (u16, Value) {
    let body = json!({"access_token": access, "connection_intent": "add",
        "account_identifier": identifier, "account_display_name": label});
    app.admin(Method::POST, PATH, Some(body)).await
}

async fn count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn an_owners_accounts_are_added_selected_replaced_and_deleted_one_by_one() {
    let app = TestApp::spawn().await;
    api_integration(&app, "multi", ClientAuthMethod::Basic, |b| b["multiple_connections"] = json!(true)).await;

    let (status, work) = add(&app, "t-work", "alice@example.com", "Work").await;
    assert_eq!(status, 201, "{work}");
    assert_eq!(work["connection_role"], "compatibility", "the first account fills the compatibility slot");
    assert_eq!(
        (&work["account_identifier"], &work["account_display_name"]),
        (&json!("alice@example.com"), &json!("Work"))
    );
    let (status, personal) = add(&app, "t-personal", "bob@example.com", "Personal").await;
    assert_eq!((status, personal["connection_role"].as_str()), (201, Some("standard")), "{personal}");
    assert!(personal.get("warnings").is_none());
    // The same provider subject again: that account is updated, not duplicated.
    let (status, again) = add(&app, "t-work-2", "alice@example.com", "Work").await;
    assert_eq!((status, &again["id"]), (201, &work["id"]), "{again}");
    assert_eq!(count(&app).await, 2);
    // A label may repeat, with a warning.
    let (status, third) = add(&app, "t-third", "carol@example.com", "Work").await;
    assert_eq!(status, 201);
    assert_eq!(third["warnings"][0]["code"], "duplicate_account_display_name", "{third}");
    let (work_id, personal_id, third_id) =
        (work["id"].as_str().unwrap(), personal["id"].as_str().unwrap(), third["id"].as_str().unwrap());

    // Reads: no id selects the compatibility account; the plural flag wants one account.
    let (_, plain) = token(&app, "multi", json!({"user_id": "u1"})).await;
    assert_eq!(access_token(&plain), "t-work-2");
    let (status, answer) = token(&app, "multi", json!({"user_id": "u1", "supports_multiple_connections": true})).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("account_selection_required")), "{answer}");
    for _ in 0..2 {
        // PostgreSQL, then the cache: each account is answered from its own entry.
        let (_, named) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": personal_id})).await;
        assert_eq!(access_token(&named), "t-personal");
        let (_, named) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": work_id})).await;
        assert_eq!(access_token(&named), "t-work-2");
    }
    let (status, answer) = token(&app, "multi", json!({"user_id": "u2", "connected_account_id": personal_id})).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("connected_account_not_found")), "never another's");

    let (_, shown) = app.admin(Method::GET, PATH, None).await;
    assert_eq!(shown["id"], work_id);
    let (status, shown) = app.admin(Method::GET, &format!("{PATH}?supports_multiple_connections=true"), None).await;
    assert_eq!((status, shown["code"].as_str()), (409, Some("account_selection_required")));
    let (_, shown) = app.admin(Method::GET, &format!("{PATH}?connected_account_id={third_id}"), None).await;
    assert_eq!((shown["id"].as_str(), shown["connection_role"].as_str()), (Some(third_id), Some("standard")));

    let listed = |flag: &'static str| {
        let app = &app;
        async move {
            let (_, list) =
                app.admin(Method::GET, &format!("/user_management/users/u1/data_providers{flag}"), None).await;
            let row = list["data"].as_array().unwrap().iter().find(|r| r["slug"] == "multi").unwrap().clone();
            let ids: Vec<String> = row["connected_accounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_owned())
                .collect();
            (row["connected_account"]["id"].as_str().unwrap().to_owned(), ids)
        }
    };
    assert_eq!(listed("").await, (work_id.to_owned(), vec![work_id.to_owned()]));
    let (compatibility, all) = listed("?supports_multiple_connections=true").await;
    assert_eq!((compatibility.as_str(), all.len()), (work_id, 3));

    // A PUT naming an account replaces that one (and what the cache held of it).
    let (status, replaced) = app
        .admin(
            Method::PUT,
            &format!("{PATH}?connected_account_id={personal_id}"),
            Some(json!({"access_token": "t-personal-2"})),
        )
        .await;
    assert_eq!((status, replaced["id"].as_str()), (200, Some(personal_id)), "{replaced}");
    assert_eq!(replaced["account_display_name"], "Personal", "an omitted label is kept");
    let (_, named) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": personal_id})).await;
    assert_eq!(access_token(&named), "t-personal-2");
    let (_, cleared) = app
        .admin(
            Method::PUT,
            &format!("{PATH}?connected_account_id={personal_id}"),
            Some(json!({"access_token": "t-personal-3", "account_display_name": null})),
        )
        .await;
    assert_eq!(cleared["account_display_name"], Value::Null, "null clears it");
    let (_, plain) = token(&app, "multi", json!({"user_id": "u1"})).await;
    assert_eq!(access_token(&plain), "t-work-2", "the compatibility account is untouched");

    // Deletes take the named account only.
    let (status, _) = app.admin(Method::DELETE, &format!("{PATH}?connected_account_id={personal_id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": personal_id})).await;
    assert_eq!(status, 404);
    let (status, _) = app.admin(Method::DELETE, PATH, None).await;
    assert_eq!(status, 204, "the compatibility account");
    // An empty compatibility slot: requests naming no account find nothing there; the
    // plural flag finds the one account left; the next plain import fills the slot.
    let (_, plain) = token(&app, "multi", json!({"user_id": "u1"})).await;
    assert_eq!(plain, json!({"active": false, "error": "not_installed"}));
    let (_, sole) = token(&app, "multi", json!({"user_id": "u1", "supports_multiple_connections": true})).await;
    assert_eq!(access_token(&sole), "t-third");
    let (status, filled) = app.admin(Method::POST, PATH, Some(json!({"access_token": "t-new"}))).await;
    assert_eq!((status, filled["connection_role"].as_str()), (201, Some("compatibility")), "{filled}");
    let (_, plain) = token(&app, "multi", json!({"user_id": "u1"})).await;
    assert_eq!(access_token(&plain), "t-new");
}

#[tokio::test]
async fn adds_beyond_the_first_need_the_setting_and_stop_at_the_limit() {
    let app = TestApp::spawn().await;
    api_integration(&app, "multi", ClientAuthMethod::Basic, |_| {}).await;
    let (status, first) = add(&app, "t1", "one", "One").await;
    assert_eq!((status, first["connection_role"].as_str()), (201, Some("compatibility")), "{first}");
    let (status, answer) = add(&app, "t2", "two", "Two").await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("multiple_connections_unavailable")), "{answer}");
    let (status, again) = add(&app, "t1b", "one", "One").await;
    assert_eq!((status, &again["id"]), (201, &first["id"]), "the same subject is still its own account: {again}");
    let body = json!({"user_id": "u1", "connection_intent": "add"});
    let (status, answer) = app.admin(Method::POST, "/data-integrations/multi/authorize", Some(body)).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("multiple_connections_unavailable")), "{answer}");
    assert_eq!(count(&app).await, 1);

    let (status, updated) =
        app.admin(Method::PUT, "/data-integrations/multi", Some(json!({"multiple_connections": true}))).await;
    assert_eq!((status, updated["multiple_connections"].as_bool()), (200, Some(true)), "{updated}");
    for n in 2..=pipes::store::accounts::MAX_ACCOUNTS_PER_OWNER {
        let (status, answer) = add(&app, &format!("t{n}"), &format!("subject-{n}"), "Any").await;
        assert_eq!(status, 201, "{n}: {answer}");
    }
    let (status, answer) = add(&app, "t-over", "subject-over", "Any").await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("connected_account_limit_reached")), "{answer}");
}

#[tokio::test]
async fn a_connect_flow_adds_an_account_or_reauthorizes_the_one_it_names() {
    let app = TestApp::spawn().await;
    let p = api_integration(&app, "multi", ClientAuthMethod::Basic, |b| b["multiple_connections"] = json!(true)).await;
    let flow = |body: Value| {
        let app = &app;
        async move {
            let (status, answer) = app.admin(Method::POST, "/data-integrations/multi/authorize", Some(body)).await;
            assert_eq!(status, 200, "{answer}");
            let url = crate::connect::confirm(app, &app.http, answer["url"].as_str().unwrap()).await;
            let callback = provider_redirect(app, &url).await;
            let page = app.http.get(callback).send().await.unwrap().text().await.unwrap();
            assert!(page.contains("Connected"), "{page}");
        }
    };
    flow(json!({"user_id": "u1"})).await;
    flow(json!({"user_id": "u1", "connection_intent": "add", "account_display_name": "Second"})).await;
    let (_, list) = app
        .admin(Method::GET, "/user_management/users/u1/data_providers?supports_multiple_connections=true", None)
        .await;
    let accounts = list["data"][0]["connected_accounts"].as_array().unwrap().clone();
    assert_eq!(accounts.len(), 2, "{list}");
    let second = accounts.iter().find(|a| a["connection_role"] == "standard").expect("a standard account");
    assert_eq!(second["account_display_name"], "Second");
    let second_id = second["id"].as_str().unwrap();
    let (_, before) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": second_id})).await;
    let before = access_token(&before).to_owned();
    assert!(p.demo.access_token_valid(&before));

    // Reauthorizing names the account; nothing else changes.
    for (body, field) in [
        (json!({"user_id": "u1", "connection_intent": "reauthorize"}), "connected_account_id"),
        (json!({"user_id": "u1", "connected_account_id": second_id}), "connected_account_id"),
        (json!({"user_id": "u1", "connection_intent": "merge"}), "connection_intent"),
        (json!({"user_id": "u1", "code_challenge": "abc", "code_challenge_method": "S256"}), "code_challenge"),
    ] {
        let (status, answer) = app.admin(Method::POST, "/data-integrations/multi/authorize", Some(body.clone())).await;
        assert_eq!((status, answer["errors"][0]["field"].as_str()), (422, Some(field)), "{body}: {answer}");
    }
    let body = json!({"user_id": "u2", "connection_intent": "reauthorize", "connected_account_id": second_id});
    let (status, answer) = app.admin(Method::POST, "/data-integrations/multi/authorize", Some(body)).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("connected_account_not_found")), "another's account");
    flow(json!({"user_id": "u1", "connection_intent": "reauthorize", "connected_account_id": second_id})).await;
    assert_eq!(count(&app).await, 2);
    let (_, after) = token(&app, "multi", json!({"user_id": "u1", "connected_account_id": second_id})).await;
    assert_ne!(access_token(&after), before, "the named account has new tokens");
}
