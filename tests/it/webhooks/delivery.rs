//! Delivery end to end: signatures, retries, outages, filters, private addresses, replay.

use std::time::Duration;

use chrono::Utc;
use pipes::events::{self, ConnectionFailure, EventKind};
use pipes::refresh::Reason;
use pipes::store::accounts;
use pipes::webhooks::endpoints;
use reqwest::Method;
use serde_json::json;

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};
use crate::support::proxy::TcpProxy;

use super::harness::*;

#[tokio::test]
async fn a_delivery_verifies_with_the_node_sdk_and_standard_webhooks() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start([]).await;
    let (_, secret) = create_endpoint(&app, &receiver.url(), &["pipes.connected_account.connection_failed"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let _workers = Workers::start(&app).await;
    let p = demo_integration(&app, "wh-sign", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let failure = ConnectionFailure {
        error_code: "access_denied".into(),
        error_reason: "The user denied access.".into(),
        provider_error: Some("access_denied".into()),
        provider_error_description: Some("denied".into()),
    };
    let data = events::connection_failed_data(
        &p.integration,
        &crate::support::owner("u1", Some("org_1")),
        &failure,
        Utc::now(),
    );
    let event_id = emit(&app, EventKind::ConnectionFailed, &data).await;

    let delivery = receiver.wait_for(1).await.remove(0);
    let body = delivery.json();
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["event"], "pipes.connected_account.connection_failed");
    assert_eq!(body["data"]["error_code"], "access_denied");
    assert_eq!(delivery.header("webhook-id"), event_id);
    let sig = delivery.header("workos-signature");
    assert!(sig.starts_with("t=") && sig.contains(", v1="), "{sig}");

    let event = verify_with_node_sdk(&delivery, &secret).expect("Node SDK accepts the signature");
    assert_eq!(event["id"], event_id.as_str());
    assert_eq!(event["data"]["dataIntegrationId"], p.integration.id.as_str());
    assert_eq!(event["data"]["providerSlug"], "wh-sign");
    assert_eq!(event["data"]["errorCode"], "access_denied");
    let verified = verify_with_standard_webhooks(&delivery, &secret).expect("Standard Webhooks accepts the signature");
    assert_eq!(verified["id"], event_id.as_str());

    // A wrong secret or a changed body is rejected by both.
    assert!(verify_with_node_sdk(&delivery, "whsec_AAAA").is_err());
    let mut tampered = delivery.clone();
    tampered.body = tampered.body.replace("access_denied", "access_granted");
    assert!(verify_with_node_sdk(&tampered, &secret).is_err());
    assert!(verify_with_standard_webhooks(&tampered, &secret).is_err());
    // The worker records the outcome just after the receiver answered.
    let delivered =
        eventually(WAIT, || async { delivery_status(&app, &event_id).await.as_deref() == Some("delivered") }).await;
    assert!(delivered, "the delivery is recorded as delivered");
}

#[tokio::test]
async fn an_endpoint_that_fails_three_times_gets_the_event_on_the_fourth_attempt_with_the_same_id() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start([500, 429, 503]).await;
    let (_, secret) = create_endpoint(&app, &receiver.url(), &["pipes.connected_account.reauthorization_needed"]).await;
    let _workers = Workers::start(&app).await;
    // The real flow: a refresh meets a revoked grant.
    let p = demo_integration(&app, "wh-retry", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", Some("org_9"), Duration::from_secs(5)).await;
    assert!(p.demo.revoke_grant_of(&token));
    app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();

    let got = receiver.wait_for(4).await;
    let ids: Vec<String> = got.iter().map(|c| c.json()["id"].as_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "same event id on every attempt: {ids:?}");
    assert!(got.iter().all(|c| c.header("webhook-id") == ids[0]));
    let event_id = ids[0].clone();
    assert!(
        eventually(WAIT, || async { delivery_status(&app, &event_id).await.as_deref() == Some("delivered") }).await
    );
    let attempts = attempts_of(&app, &event_id).await;
    let codes: Vec<Option<i32>> = attempts.iter().map(|a| a.0).collect();
    assert_eq!(codes, vec![Some(500), Some(429), Some(503), Some(200)]);
    // The fourth one still carries a signature the SDK accepts, and the real data.
    let last = &got[3];
    verify_with_node_sdk(last, &secret).expect("signature of the retried delivery");
    let data = last.json()["data"].clone();
    assert_eq!(data["object"], "connected_account");
    assert_eq!(data["id"], account.id.as_str());
    assert_eq!(data["data_integration_id"], p.integration.id.as_str());
    assert_eq!(data["provider_slug"], "wh-retry");
    assert_eq!(data["user_id"], "u1");
    assert_eq!(data["organization_id"], "org_9");
    assert_eq!(data["state"], "needs_reauthorization");
    for field in ["scopes", "created_at", "updated_at"] {
        assert!(!data[field].is_null(), "{field} present");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.captured().len(), 4, "nothing after the 2xx");
    let metrics = app.state.metrics.render();
    for outcome in ["delivered", "retried"] {
        assert!(
            metrics.contains(&format!("pipes_webhook_deliveries_total{{outcome=\"{outcome}\"}}")),
            "{outcome} counted"
        );
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_once_it_is_back() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_WEBHOOK_RETRY_DELAYS", "300ms,600ms,1s,2s,4s");
    })
    .await;
    let receiver = Receiver::start([]).await;
    let proxy = TcpProxy::start(receiver.addr).await;
    proxy.cut();
    let url = format!("http://{}/hook", proxy.addr());
    create_endpoint(&app, &url, &["pipes.connected_account.connected"]).await;
    let _workers = Workers::start(&app).await;
    let p = demo_integration(&app, "wh-down", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let event_id = emit(&app, EventKind::Connected, &events::account_data(&account, &p.integration, "connected")).await;

    assert!(
        eventually(WAIT, || async { attempts_of(&app, &event_id).await.len() >= 2 }).await,
        "failed attempts recorded"
    );
    let failed = attempts_of(&app, &event_id).await;
    assert!(
        failed.iter().all(|(code, error)| code.is_none() && error.as_deref() == Some("connection_failed")),
        "{failed:?}"
    );
    assert!(receiver.captured().is_empty());
    proxy.restore();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["id"], event_id.as_str());
    assert_eq!(got[0].json()["data"]["state"], "connected");
    assert!(
        eventually(WAIT, || async { delivery_status(&app, &event_id).await.as_deref() == Some("delivered") }).await
    );
}

#[tokio::test]
async fn a_disabled_endpoint_and_a_filtered_out_event_get_nothing() {
    let app = TestApp::spawn().await;
    let all = Receiver::start([]).await;
    let only_connected = Receiver::start([]).await;
    let disabled = Receiver::start([]).await;
    let every: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    create_endpoint(&app, &all.url(), &every).await;
    create_endpoint(&app, &only_connected.url(), &["pipes.connected_account.connected"]).await;
    let (disabled_id, _) = create_endpoint(&app, &disabled.url(), &every).await;
    let (status, body) = app
        .admin(Method::PATCH, &format!("/webhook_endpoints/{disabled_id}"), Some(json!({"status": "disabled"})))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("disabled")));
    let _workers = Workers::start(&app).await;

    // The real disconnect: the account row goes, its event in the same transaction.
    let p = demo_integration(&app, "wh-filter", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let mut tx = app.db.begin().await.unwrap();
    let gone = accounts::delete(&mut tx, app.state.keyring(), &account.id).await.unwrap().unwrap();
    let disconnected =
        events::emit(&mut tx, EventKind::Disconnected, &events::account_data(&gone, &p.integration, "disconnected"))
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let connected =
        emit(&app, EventKind::Connected, &events::account_data(&account, &p.integration, "connected")).await;

    let got = all.wait_for(2).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|c| (c.json()["id"].as_str().unwrap().to_owned(), c.json()["event"].as_str().unwrap().to_owned()))
        .collect();
    seen.sort();
    let mut expected = vec![
        (disconnected.clone(), "pipes.connected_account.disconnected".to_owned()),
        (connected.clone(), "pipes.connected_account.connected".to_owned()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(
        got.iter().find(|c| c.json()["id"] == disconnected.as_str()).unwrap().json()["data"]["state"],
        "disconnected"
    );
    let got = only_connected.wait_for(1).await;
    assert_eq!(got[0].json()["id"], connected.as_str());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(only_connected.captured().len(), 1, "the filtered-out event never came");
    assert!(disabled.captured().is_empty(), "the disabled endpoint got nothing");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1")
        .bind(&disabled_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_private_address_is_refused_unless_allowed() {
    let app = TestApp::spawn_with(|s| {
        s.set("PIPES_ALLOW_PRIVATE_NETWORK", "false");
    })
    .await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://169.254.169.254/latest",
        "http://192.168.0.1/",
    ] {
        let (status, body) = app
            .admin(
                Method::POST,
                "/webhook_endpoints",
                Some(json!({"endpoint_url": url, "events": ["pipes.connected_account.connected"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["errors"][0]["field"], "endpoint_url");
        assert_eq!(body["errors"][0]["code"], "private_address", "{url}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0, "nothing stored");

    // An endpoint stored while private targets were allowed (or whose name now
    // resolves inside) is refused again at delivery time, without a request.
    let receiver = Receiver::start([]).await;
    endpoints::create(&app.db, app.state.keyring(), &receiver.url(), &["pipes.connected_account.connected".to_owned()])
        .await
        .unwrap();
    let _workers = Workers::start(&app).await;
    let p = demo_integration(&app, "wh-private", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let event_id = emit(&app, EventKind::Connected, &events::account_data(&account, &p.integration, "connected")).await;
    assert!(eventually(WAIT, || async { delivery_status(&app, &event_id).await.as_deref() == Some("failed") }).await);
    assert_eq!(attempts_of(&app, &event_id).await, vec![(None, Some("private_address".to_owned()))]);
    assert!(receiver.captured().is_empty());
    assert!(app.state.metrics.render().contains("pipes_webhook_deliveries_total{outcome=\"failed\"}"));
}

#[tokio::test]
async fn replay_re_sends_an_event_and_failed_deliveries_with_the_same_id() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start([]).await;
    let (_, secret) = create_endpoint(&app, &receiver.url(), &["pipes.connected_account.connected"]).await;
    let workers = Workers::start(&app).await;
    let p = demo_integration(&app, "wh-replay", pipes::demo_provider::ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(3600)).await;
    let first = emit(&app, EventKind::Connected, &events::account_data(&account, &p.integration, "connected")).await;
    receiver.wait_for(1).await;

    assert_eq!(workers.relay.replay_event(&first).await.unwrap(), Some(1));
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["id"], first.as_str());
    assert_eq!(got[1].header("webhook-id"), first);
    assert_eq!(got[0].body, got[1].body, "the same body");
    verify_with_node_sdk(&got[1], &secret).expect("replayed delivery is signed");
    assert_eq!(workers.relay.replay_event("event_01ARZ3NDEKTSV4RRFFQ69G5FAV").await.unwrap(), None);

    // A receiver that keeps failing exhausts the retries; the delivery is failed.
    receiver.answer_always(500);
    let second = emit(&app, EventKind::Connected, &events::account_data(&account, &p.integration, "connected")).await;
    assert!(eventually(WAIT, || async { delivery_status(&app, &second).await.as_deref() == Some("failed") }).await);
    assert_eq!(attempts_of(&app, &second).await.len(), 5, "first try plus one per retry step");
    receiver.answer_ok();
    let before = receiver.captured().len();
    assert_eq!(workers.relay.replay_failed_since(Duration::from_secs(3600)).await.unwrap(), 1);
    assert!(eventually(WAIT, || async { delivery_status(&app, &second).await.as_deref() == Some("delivered") }).await);
    let last = receiver.captured().pop().unwrap();
    assert_eq!(receiver.captured().len(), before + 1);
    assert_eq!(last.json()["id"], second.as_str());
}
