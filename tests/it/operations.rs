//! Operator commands: `pipes status` and `pipes import`.

use std::time::Duration;

use pipes::demo_provider::ClientAuthMethod;
use pipes::refresh::{Reason, RefreshOutcome};
use pipes::store::accounts;

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, seed_account};

#[tokio::test]
async fn status_counts_accounts_due_overdue_and_invalid_integrations() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "ops-status", ClientAuthMethod::Basic).await;
    let other = demo_integration(&app, "ops-other", ClientAuthMethod::Body).await;
    // Due now (refresh_at in the past), due within 10 minutes, due much later.
    let (overdue, _) = seed_account(&app, &p, "u-overdue", None, Duration::from_secs(600)).await;
    sqlx::query("UPDATE refresh_schedule SET refresh_at = now() - interval '30 seconds' WHERE account_id = $1")
        .bind(&overdue.id)
        .execute(&app.db)
        .await
        .unwrap();
    seed_account(&app, &p, "u-soon", None, Duration::from_secs(900)).await;
    seed_account(&app, &p, "u-later", None, Duration::from_secs(7200)).await;
    let (dead, token) = seed_account(&app, &other, "u-dead", None, Duration::from_secs(5)).await;
    other.demo.revoke_grant_of(&token);
    let outcome = app.state.refresher.refresh(&other.integration, &dead.id, Reason::Scheduled).await.unwrap();
    assert!(matches!(outcome, RefreshOutcome::NeedsReauthorization));
    sqlx::query("UPDATE integrations SET state = 'invalid' WHERE slug = 'ops-other'").execute(&app.db).await.unwrap();

    let status = pipes::status::gather(&app.db, app.config(), chrono::Utc::now()).await.unwrap();
    assert_eq!(status.accounts.connected, 3);
    assert_eq!(status.accounts.needs_reauthorization, 1);
    assert_eq!(status.due.now, 1);
    assert_eq!(status.due.next_10_minutes, 1);
    let oldest = status.due.oldest_overdue.as_ref().expect("an overdue account");
    assert_eq!(oldest.account_id, overdue.id);
    assert_eq!(status.invalid_integrations, vec!["ops-other".to_owned()]);
    let per = status.integrations.iter().find(|i| i.slug == "ops-status").unwrap();
    assert_eq!(per.accounts.connected, 3);
    assert!(status.queues.depths.is_some(), "broker reachable: {:?}", status.queues.error);
    let text = pipes::cli::render_status(&status);
    assert!(text.contains("ops-status") && text.contains("invalid integrations: ops-other"), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["due"]["now"], 1);
}

#[tokio::test]
async fn import_stores_and_caches_accounts_and_reports_bad_lines_without_their_tokens() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "ops-import", ClientAuthMethod::Basic).await;
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let file = format!(
        "{{\"integration\":\"ops-import\",\"user_id\":\"u1\",\"access_token\":\"imported-at-1\",\"refresh_token\":\"imported-rt-1\",\"expires_at\":\"{expires}\",\"scopes\":[\"read\"]}}\n\
         {{\"integration\":\"ops-import\",\"user_id\":\"u2\",\"organization_id\":\"org_9\",\"access_token\":\"imported-at-2\"}}\n\
         {{\"integration\":\"nope\",\"user_id\":\"u3\",\"access_token\":\"imported-at-3\"}}\n\
         {{\"integration\":\"ops-import\",\"user_id\":\"u4\",\"access_token\":\"imported-at-4\",\"bogus\":1}}\n\
         not json at all\n"
    );
    let report = pipes::import::import_lines(&app.state, &file, || {}).await.unwrap();
    assert_eq!(report.imported, 2);
    let lines: Vec<usize> = report.rejected.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![3, 4, 5]);
    for (_, problem) in &report.rejected {
        assert!(!problem.contains("imported-at"), "no token in {problem}");
    }
    let a =
        accounts::find_for_owner(&app.db, app.state.keyring(), &p.integration.id, &crate::support::owner("u1", None))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(a.access_token.unwrap().expose(), "imported-at-1");
    assert!(a.refresh_at.is_some());
    let b = accounts::find_for_owner(
        &app.db,
        app.state.keyring(),
        &p.integration.id,
        &crate::support::owner("u2", Some("org_9")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(b.refresh_at.is_none(), "no expiry: never scheduled");
    let cached =
        app.state.cache.get("ops-import", &crate::support::owner("u1", None), chrono::Utc::now()).await.unwrap();
    assert!(
        matches!(cached, pipes::cache::Lookup::Hit(ref t) if t.access_token.expose() == "imported-at-1"),
        "{cached:?}"
    );
    // A rerun is harmless.
    let again = pipes::import::import_lines(&app.state, &file, || {}).await.unwrap();
    assert_eq!(again.imported, 2);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connected_accounts").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn a_database_from_before_the_schema_baseline_is_refused_with_what_to_do() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (20261127000001, 'init', true, '\\x00'::bytea, 0)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let err = pipes::db::migrate(&app.db).await.unwrap_err().to_string();
    assert!(err.contains("migration 20261127000001") && err.contains("drop it"), "{err}");
}

#[tokio::test]
async fn pipes_dev_sets_up_its_demo_integration_again_and_again_beside_an_organization_root() {
    let app = TestApp::spawn().await;
    pipes::demo_setup::ensure_integration(&app.db, app.config()).await.expect("first start");
    // An organization-owned root of the same slug is another integration, left alone.
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, ownership, client_id, enabled) VALUES ('data_integration_org_demo', 'demo', 'demo', 'organization', 'c', false)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    pipes::demo_setup::ensure_integration(&app.db, app.config()).await.expect("second start");
    let roots: Vec<(String, bool)> =
        sqlx::query_as("SELECT ownership, enabled FROM integrations WHERE slug = 'demo' ORDER BY ownership")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(roots, [("organization".to_owned(), false), ("user".to_owned(), true)]);
}

#[tokio::test]
async fn import_writes_an_organizations_shared_account_on_behalf_of_a_member() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "ops-org", ClientAuthMethod::Basic).await;
    sqlx::query("UPDATE integrations SET ownership = 'organization' WHERE id = $1")
        .bind(&p.integration.id)
        .execute(&app.db)
        .await
        .unwrap();
    let file = "{\"integration\":\"ops-org\",\"user_id\":\"admin\",\"organization_id\":\"org_1\",\"connection_owner\":\"organization\",\"access_token\":\"org-at\"}\n\
         {\"integration\":\"ops-org\",\"user_id\":\"admin\",\"connection_owner\":\"organization\",\"access_token\":\"org-at-2\"}\n\
         {\"integration\":\"ops-org\",\"user_id\":\"u1\",\"access_token\":\"own-at\"}\n";
    let report = pipes::import::import_lines(&app.state, file, || {}).await.unwrap();
    assert_eq!(report.imported, 1, "{report:?}");
    let rejected: Vec<(usize, bool)> =
        report.rejected.iter().map(|(l, why)| (*l, why.contains("organization"))).collect();
    // Line 2 lacks the organization; line 3 names a user-owned root that does not exist.
    assert_eq!(rejected, [(2, true), (3, false)], "{report:?}");
    let shared = accounts::find_for_owner(
        &app.db,
        app.state.keyring(),
        &p.integration.id,
        &pipes::owner::Owner::organization("org_1"),
    )
    .await
    .unwrap()
    .expect("the organization's account");
    assert_eq!((shared.established_by_user_id.as_deref(), shared.owner.user_id()), (Some("admin"), None));
}
