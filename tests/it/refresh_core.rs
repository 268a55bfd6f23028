//! The refresh single flight and failure classification, called directly.

use std::time::Duration;

use pipes::demo_provider::{ClientAuthMethod, Fault};
use pipes::refresh::{Reason, RefreshOutcome};
use pipes::store::accounts;

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

#[tokio::test]
async fn an_expiring_token_is_refreshed_and_rotated() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-rotate", ClientAuthMethod::Basic).await;
    let (account, old_token) = seed_account(&app, &p, "u1", None, Duration::from_secs(30)).await;
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::OnDemand).await.unwrap();
    let RefreshOutcome::Refreshed(stored) = outcome else { panic!("expected a refresh, got {outcome:?}") };
    let new_token = stored.access_token.as_ref().unwrap().expose().to_owned();
    assert_ne!(new_token, old_token);
    assert!(p.demo.access_token_valid(&new_token));
    assert_ne!(
        stored.refresh_token.as_ref().unwrap().expose(),
        account.refresh_token.as_ref().unwrap().expose(),
        "rotated"
    );
    assert!(stored.token_version > account.token_version);
    assert!(stored.refresh_at.unwrap() < stored.expires_at.unwrap());
    // Fresh now: a second call does nothing.
    let again = app.state.refresher.refresh(&p.integration, &account.id, Reason::OnDemand).await.unwrap();
    assert!(matches!(again, RefreshOutcome::AlreadyFresh(_)), "{again:?}");
    assert_eq!(p.demo.stats().refreshes, 1);
}

#[tokio::test]
async fn concurrent_refreshes_of_one_account_make_one_provider_call() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-flight", ClientAuthMethod::Body).await;
    let (account, _) = seed_account(&app, &p, "u1", Some("org_1"), Duration::from_secs(5)).await;
    p.demo.push_fault(Fault::Delay(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let refresher = app.state.refresher.clone();
        let integration = p.integration.clone();
        let id = account.id.clone();
        tasks.push(tokio::spawn(async move { refresher.refresh(&integration, &id, Reason::OnDemand).await.unwrap() }));
    }
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(matches!(outcome, RefreshOutcome::Refreshed(_) | RefreshOutcome::AlreadyFresh(_)), "{outcome:?}");
    }
    let stats = p.demo.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.reuse_detected, 0);
}

#[tokio::test]
async fn a_revoked_grant_marks_reauthorization_with_one_event() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-revoked", ClientAuthMethod::Basic).await;
    let (account, token) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    assert!(p.demo.revoke_grant_of(&token));
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::NeedsReauthorization), "{outcome:?}");
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    assert_eq!(stored.state, accounts::AccountState::NeedsReauthorization);
    assert!(stored.access_token.is_none() && stored.refresh_token.is_none());
    let again = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(again, RefreshOutcome::NotConnected(_)), "{again:?}");
    let events: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT event, data FROM events").fetch_all(&app.db).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "pipes.connected_account.reauthorization_needed");
    assert_eq!(events[0].1["id"], account.id);
    assert_eq!(events[0].1["state"], "needs_reauthorization");
}

#[tokio::test]
async fn transient_failures_keep_the_account_connected_and_invalid_client_marks_the_integration() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-transient", ClientAuthMethod::Basic).await;
    let (account, _) = seed_account(&app, &p, "u1", None, Duration::from_secs(5)).await;
    p.demo.push_fault(Fault::TooManyRequests { retry_after_secs: 7 });
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    match outcome {
        RefreshOutcome::Transient { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(7))),
        other => panic!("{other:?}"),
    }
    p.demo.push_fault(Fault::Status(503));
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::Transient { .. }), "{outcome:?}");
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    assert_eq!(stored.state, accounts::AccountState::Connected);
    p.demo.push_fault(Fault::InvalidClient);
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::IntegrationInvalid), "{outcome:?}");
    let state: String = sqlx::query_scalar("SELECT state FROM integrations WHERE id = $1")
        .bind(&p.integration.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "invalid");
    let stored = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
    assert_eq!(stored.state, accounts::AccountState::Connected, "accounts untouched");
    // Success afterwards still works (the lease was released each time).
    let outcome = app.state.refresher.refresh(&p.integration, &account.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::Refreshed(_)), "{outcome:?}");
}
