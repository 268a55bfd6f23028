//! All four event types, produced by the real flows (connect, failed connect,
//! reauthorization needed, disconnect), arrive signed at a receiver with the
//! data fields of DESIGN §3.5; each endpoint receives them under the spelling it
//! subscribed to (`pipes.connected_account.*` or `pipes.account_connection.*`).

use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use reqwest::Method;
use serde_json::Value;

use super::harness::{create_endpoint, verify_with_node_sdk, verify_with_python_sdk, Receiver, Workers};
use crate::connect::{api_integration, connect};
use crate::support::app::TestApp;

const ACCOUNT_FIELDS: [&str; 15] = [
    "object",
    "id",
    "connection_role",
    "account_identifier",
    "account_display_name",
    "data_integration_id",
    "provider_slug",
    "user_id",
    "organization_id",
    "scopes",
    "auth_method",
    "state",
    "established_by_user_id",
    "created_at",
    "updated_at",
];
const FAILURE_FIELDS: [&str; 10] = [
    "object",
    "data_integration_id",
    "provider_slug",
    "user_id",
    "organization_id",
    "error_code",
    "error_reason",
    "provider_error",
    "provider_error_description",
    "created_at",
];

fn has_exactly(data: &Value, fields: &[&str]) {
    let keys: Vec<&str> = data.as_object().expect("data is an object").keys().map(String::as_str).collect();
    for f in fields {
        assert!(keys.contains(f), "missing {f} in {data}");
    }
    assert_eq!(keys.len(), fields.len(), "unexpected fields in {data}");
}

#[tokio::test]
async fn the_real_flows_deliver_all_four_event_types() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start([]).await;
    let (_, secret) = create_endpoint(
        &app,
        &receiver.url(),
        &[
            "pipes.connected_account.connected",
            "pipes.connected_account.connection_failed",
            "pipes.connected_account.reauthorization_needed",
            "pipes.connected_account.disconnected",
        ],
    )
    .await;
    let _workers = Workers::start(&app).await;
    let slug = "wh-flows";
    let provider = api_integration(&app, slug, ClientAuthMethod::Basic, |_| {}).await;

    // connected
    connect(&app, slug, "u1", Some("org_1"), None).await;
    // connection_failed: the user denies consent
    provider.demo.deny_next_consent();
    connect(&app, slug, "u2", None, None).await;
    // reauthorization_needed: the grant is revoked at the provider, then a refresh runs
    let integration =
        pipes::store::integrations::by_slug(&app.db, app.state.keyring(), slug, pipes::owner::Ownership::User)
            .await
            .unwrap()
            .unwrap();
    let account = pipes::store::accounts::find_for_owner(
        &app.db,
        app.state.keyring(),
        &integration.id,
        &crate::support::owner("u1", Some("org_1")),
    )
    .await
    .unwrap()
    .expect("u1 connected");
    let token = account.access_token.clone().unwrap();
    assert!(provider.demo.revoke_grant_of(token.expose()));
    sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - interval '1 second' WHERE account_id = $1")
        .bind(&account.id)
        .execute(&app.db)
        .await
        .unwrap();
    let outcome = app.state.refresher.refresh(&integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::NeedsReauthorization), "{outcome:?}");
    // disconnected: connect u3, then DELETE
    connect(&app, slug, "u3", None, None).await;
    let (status, _) =
        app.admin(Method::DELETE, &format!("/user_management/users/u3/connected_accounts/{slug}"), None).await;
    assert_eq!(status, 204);

    let deliveries = receiver.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries: Vec<_> =
        if receiver.captured().len() > deliveries.len() { receiver.captured() } else { deliveries };
    let mut kinds: Vec<String> = deliveries.iter().map(|d| d.json()["event"].as_str().unwrap().to_owned()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "pipes.connected_account.connected",
            "pipes.connected_account.connected",
            "pipes.connected_account.connection_failed",
            "pipes.connected_account.disconnected",
            "pipes.connected_account.reauthorization_needed",
        ]
    );
    for d in &deliveries {
        let event = verify_with_node_sdk(d, &secret).expect("every delivery verifies with the Node SDK");
        let body = d.json();
        assert_eq!(event["id"], body["id"]);
        let data = &body["data"];
        assert_eq!(data["provider_slug"], slug);
        assert_eq!(data["data_integration_id"], integration.id.as_str());
        match body["event"].as_str().unwrap() {
            "pipes.connected_account.connection_failed" => {
                has_exactly(data, &FAILURE_FIELDS);
                assert_eq!(data["object"], "connection_failed");
                assert_eq!(data["user_id"], "u2");
                assert_eq!(data["provider_error"], "access_denied");
            }
            kind => {
                has_exactly(data, &ACCOUNT_FIELDS);
                assert_eq!(data["object"], "connected_account");
                let expected_state = match kind {
                    "pipes.connected_account.connected" => "connected",
                    "pipes.connected_account.reauthorization_needed" => "needs_reauthorization",
                    _ => "disconnected",
                };
                assert_eq!(data["state"], expected_state, "{kind}");
                if kind == "pipes.connected_account.reauthorization_needed" {
                    assert_eq!(data["id"], account.id.as_str());
                    assert_eq!(data["organization_id"], "org_1");
                }
                if kind == "pipes.connected_account.disconnected" {
                    assert_eq!(data["user_id"], "u3");
                }
            }
        }
    }
}

#[tokio::test]
async fn each_endpoint_receives_an_event_under_the_name_it_subscribed_to() {
    let app = TestApp::spawn().await;
    let newer = Receiver::start([]).await;
    let first = Receiver::start([]).await;
    let (_, newer_secret) = create_endpoint(
        &app,
        &newer.url(),
        &[
            "pipes.account_connection.connected",
            "pipes.account_connection.add_failed",
            "pipes.account_connection.connection_failed",
        ],
    )
    .await;
    let (_, first_secret) = create_endpoint(
        &app,
        &first.url(),
        &["pipes.connected_account.connected", "pipes.connected_account.connection_failed"],
    )
    .await;
    let _workers = Workers::start(&app).await;
    let slug = "wh-names";
    let provider =
        api_integration(&app, slug, ClientAuthMethod::Basic, |b| b["multiple_connections"] = serde_json::json!(true))
            .await;

    connect(&app, slug, "u1", None, None).await;
    // A failed add, then a failed plain connect.
    provider.demo.deny_next_consent();
    let body = serde_json::json!({"user_id": "u1", "connection_intent": "add"});
    let (status, answer) = app.admin(Method::POST, &format!("/data-integrations/{slug}/authorize"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    let url = crate::connect::confirm(&app, &app.http, answer["url"].as_str().unwrap()).await;
    let callback = crate::connect::provider_redirect(&app, &url).await;
    app.http.get(callback).send().await.unwrap();
    provider.demo.deny_next_consent();
    connect(&app, slug, "u2", None, None).await;

    let names = |deliveries: &[super::harness::Captured]| {
        let mut names: Vec<String> =
            deliveries.iter().map(|d| d.json()["event"].as_str().unwrap().to_owned()).collect();
        names.sort();
        names
    };
    let got = newer.wait_for(3).await;
    assert_eq!(
        names(&got),
        [
            "pipes.account_connection.add_failed",
            "pipes.account_connection.connected",
            "pipes.account_connection.connection_failed"
        ]
    );
    let got_first = first.wait_for(3).await;
    assert_eq!(
        names(&got_first),
        [
            "pipes.connected_account.connected",
            "pipes.connected_account.connection_failed",
            "pipes.connected_account.connection_failed"
        ],
        "the first spelling has no add_failed: a failed add is a connection_failed"
    );
    for (deliveries, secret) in [(&got, &newer_secret), (&got_first, &first_secret)] {
        for d in deliveries {
            let node = verify_with_node_sdk(d, secret).expect("verifies with the Node SDK");
            assert_eq!(node["event"], d.json()["event"]);
            let python = verify_with_python_sdk(d, secret).expect("verifies with the Python SDK");
            assert_eq!((&python["event"], &python["id"]), (&d.json()["event"], &d.json()["id"]));
        }
    }
    // The same event, once in the outbox: the two endpoints got the same id.
    let id_of = |deliveries: &[super::harness::Captured], name: &str| {
        deliveries.iter().find(|d| d.json()["event"] == name).map(|d| d.json()["id"].clone()).unwrap()
    };
    assert_eq!(
        id_of(&got, "pipes.account_connection.connected"),
        id_of(&got_first, "pipes.connected_account.connected")
    );
    // The event list answers by either spelling, under the spelling asked for.
    let (_, listed) = app.admin(Method::GET, "/events?events=pipes.account_connection.add_failed", None).await;
    let listed: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(listed, ["pipes.account_connection.add_failed"]);
    let (_, listed) = app.admin(Method::GET, "/events?events=pipes.connected_account.connection_failed", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event"] == "pipes.connected_account.connection_failed"));
}
