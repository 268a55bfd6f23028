//! All four event types, produced by the real flows (connect, failed connect,
//! reauthorization needed, disconnect), arrive signed at a receiver with the
//! data fields of DESIGN §3.5.

use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use reqwest::Method;
use serde_json::Value;

use super::harness::{create_endpoint, verify_with_node_sdk, Receiver, Workers};
use crate::connect::{api_integration, connect};
use crate::support::app::TestApp;

const ACCOUNT_FIELDS: [&str; 13] = [
    "object",
    "id",
    "connection_role",
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
