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
    assert_eq!(events[0].1["id"], account.id.as_str());
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

#[tokio::test]
async fn concurrent_refreshes_of_many_accounts_share_statements_and_each_keeps_its_own_tokens() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-group", ClientAuthMethod::Basic).await;
    let mut seeded = Vec::new();
    for i in 0..40 {
        seeded.push(seed_account(&app, &p, &format!("u{i}"), None, Duration::from_secs(5)).await.0);
    }
    let before = app.state.refresher.group_counts();
    let mut tasks = Vec::new();
    for account in &seeded {
        let refresher = app.state.refresher.clone();
        let integration = p.integration.clone();
        let id = account.id.clone();
        tasks.push(tokio::spawn(async move { refresher.refresh(&integration, &id, Reason::Scheduled).await.unwrap() }));
    }
    let mut tokens = std::collections::HashSet::new();
    for (task, account) in tasks.into_iter().zip(&seeded) {
        let RefreshOutcome::Refreshed(stored) = task.await.unwrap() else { panic!("every account is refreshed") };
        assert_eq!(stored.id, account.id, "each caller gets its own row back");
        assert_eq!(stored.owner, account.owner);
        let access = stored.access_token.as_ref().unwrap().expose().to_owned();
        assert!(p.demo.access_token_valid(&access));
        // What the caller got is what PostgreSQL holds, sealed for this row.
        let row = accounts::find_by_id(&app.db, app.state.keyring(), &account.id).await.unwrap().unwrap();
        assert_eq!(row.access_token.as_ref().unwrap().expose(), access);
        assert_eq!(row.refresh_token.as_ref().unwrap().expose(), stored.refresh_token.as_ref().unwrap().expose());
        assert_ne!(row.refresh_token.as_ref().unwrap().expose(), account.refresh_token.as_ref().unwrap().expose());
        assert_eq!(row.scopes, account.scopes);
        assert!(tokens.insert(access), "tokens are not mixed up between accounts");
    }
    let stats = p.demo.stats();
    assert_eq!((stats.refreshes, stats.reuse_detected), (40, 0));
    let ((lease_statements, leases), (store_statements, stores)) = app.state.refresher.group_counts();
    let (lease_statements, leases) = (lease_statements - before.0 .0, leases - before.0 .1);
    let (store_statements, stores) = (store_statements - before.1 .0, stores - before.1 .1);
    assert_eq!((leases, stores), (40, 40));
    assert!(lease_statements < leases, "leases taken together: {lease_statements} statements for {leases}");
    assert!(store_statements <= stores, "{store_statements} statements for {stores}");
}

#[tokio::test]
async fn a_batched_lease_skips_held_and_locked_accounts_and_a_batched_store_is_fenced() {
    use pipes::store::accounts::{LeaseBatch, StoreBatch, StoreRequest, TokenSet};
    use pipes::store::group::Batch;

    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "rc-batch", ClientAuthMethod::Basic).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(seed_account(&app, &p, &format!("u{i}"), None, Duration::from_secs(600)).await.0.id);
    }
    let (free, held, expired, locked, gone) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]);
    let ring = app.state.keyring();
    let lease = Duration::from_secs(60);
    sqlx::query(
        "UPDATE connected_accounts SET lease_id = 'other', lease_until = now() + interval '1 minute' WHERE id = $1",
    )
    .bind(held)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE connected_accounts SET lease_id = 'dead', lease_until = now() - interval '1 second' WHERE id = $1",
    )
    .bind(expired)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("DELETE FROM connected_accounts WHERE id = $1").bind(gone).execute(&app.db).await.unwrap();
    // Another transaction is writing this row right now.
    let mut writer = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM connected_accounts WHERE id = $1 FOR UPDATE")
        .bind(locked)
        .execute(&mut *writer)
        .await
        .unwrap();

    let batch = LeaseBatch { db: app.db.clone(), lease };
    let requests: Vec<pipes::store::accounts::LeaseRequest> =
        [(free, "l1"), (held, "l2"), (expired, "l3"), (locked, "l4"), (gone, "l5"), (free, "l6")]
            .iter()
            .map(|(id, lease)| (id.to_string().into(), lease.to_string()))
            .collect();
    let leased = tokio::time::timeout(Duration::from_secs(5), batch.run(&requests))
        .await
        .expect("a locked row is skipped, not waited for")
        .unwrap();
    let got: Vec<bool> = leased.iter().map(Option::is_some).collect();
    // `free` is asked for twice: exactly one of the two lease ids gets it.
    assert_eq!(&got[1..5], &[false, true, false, false]);
    assert!(got[0] ^ got[5], "one lease per account: {got:?}");
    let holder: String = sqlx::query_scalar("SELECT lease_id FROM connected_accounts WHERE id = $1")
        .bind(free)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(holder, if got[0] { "l1" } else { "l6" });
    writer.rollback().await.unwrap();

    // Store: the holder of `expired`'s lease (l3) and the loser of `free`'s, plus a changed state.
    let loser = if got[0] { "l6" } else { "l1" };
    let winner = if got[0] { "l1" } else { "l6" };
    let tokens = |access: &str, refresh: Option<&str>, scopes: &[&str]| TokenSet {
        access_token: pipes::secret::Secret::new(access.to_owned()),
        refresh_token: refresh.map(|r| pipes::secret::Secret::new(r.to_owned())),
        expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    };
    let refresh_at = Some(chrono::Utc::now() + chrono::Duration::minutes(50));
    let free_tokens = tokens("at-free", Some("rt-free"), &["read", "write:all"]);
    let expired_tokens = tokens("at-expired", None, &[]);
    let requests = vec![
        StoreRequest::new(ring, free, loser, &tokens("at-loser", Some("rt-loser"), &["read"]), refresh_at)
            .unwrap()
            .unwrap(),
        StoreRequest::new(ring, expired, "l3", &expired_tokens, refresh_at).unwrap().unwrap(),
        StoreRequest::new(ring, free, winner, &free_tokens, refresh_at).unwrap().unwrap(),
        StoreRequest::new(ring, held, "l2", &tokens("at-held", Some("rt-held"), &["read"]), refresh_at)
            .unwrap()
            .unwrap(),
    ];
    let before_expired = accounts::find_by_id(&app.db, ring, expired).await.unwrap().unwrap();
    let before_free = accounts::find_by_id(&app.db, ring, free).await.unwrap().unwrap();
    let stored = StoreBatch { db: app.db.clone() }.run(&requests).await.unwrap();
    assert!(stored[0].is_none(), "a lease it does not hold fences the write off");
    assert!(stored[3].is_none(), "someone else's live lease fences the write off");

    // What landed, and the account the refresh builds from the statement's answer is it.
    let free_row = accounts::find_by_id(&app.db, ring, free).await.unwrap().unwrap();
    assert_eq!(free_row.access_token.as_ref().unwrap().expose(), "at-free");
    assert_eq!(free_row.refresh_token.as_ref().unwrap().expose(), "rt-free");
    assert_eq!(free_row.scopes, vec!["read", "write:all"]);
    let expired_row = accounts::find_by_id(&app.db, ring, expired).await.unwrap().unwrap();
    assert_eq!(expired_row.access_token.as_ref().unwrap().expose(), "at-expired");
    assert_eq!(
        expired_row.refresh_token.as_ref().unwrap().expose(),
        before_expired.refresh_token.as_ref().unwrap().expose(),
        "an answer without a refresh token keeps the stored one"
    );
    assert!(expired_row.scopes.is_empty());
    let same = |a: &accounts::Account, b: &accounts::Account| {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a.access_token.as_ref().map(|t| t.expose()), b.access_token.as_ref().map(|t| t.expose()));
        assert_eq!(a.refresh_token.as_ref().map(|t| t.expose()), b.refresh_token.as_ref().map(|t| t.expose()));
    };
    same(&accounts::Account::after_store(&before_free, &free_tokens, stored[2].as_ref().unwrap()), &free_row);
    same(&accounts::Account::after_store(&before_expired, &expired_tokens, stored[1].as_ref().unwrap()), &expired_row);
    let (lease_id, version): (Option<String>, i64) =
        sqlx::query_as("SELECT lease_id, token_version FROM connected_accounts WHERE id = $1")
            .bind(free)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(lease_id, None, "storing frees the lease");
    assert!(version > before_expired.token_version);
    let held_row = accounts::find_by_id(&app.db, ring, held).await.unwrap().unwrap();
    assert_ne!(held_row.access_token.as_ref().unwrap().expose(), "at-held");
}
