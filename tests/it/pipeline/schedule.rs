//! `refresh_schedule` follows the account through its life cycle: every writer of an
//! account keeps a row exactly while the account is connected with a refresh token and a
//! `refresh_at`, and deletes the scheduler's claim (`refresh_claims`) whenever a token is
//! stored, the account leaves the schedule or is deleted. The refresh's batched store
//! does the same in its own statement. No trigger does it for them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pipes::demo_provider::ClientAuthMethod;
use pipes::secret::Secret;
use pipes::store::accounts::{self, StoreBatch, StoreRequest, TokenSet};
use pipes::store::group::Batch;

use crate::support::app::TestApp;
use crate::support::fixtures::{demo_integration, store_tokens};

#[derive(Debug, PartialEq)]
struct Entry {
    refresh_at: DateTime<Utc>,
    enqueued: bool,
    claimed: bool,
}

async fn entry(app: &TestApp, id: &str) -> Option<Entry> {
    sqlx::query_as::<_, (DateTime<Utc>, bool, bool)>(
        "SELECT s.refresh_at, c.enqueued_at IS NOT NULL, c.claim_id IS NOT NULL
         FROM refresh_schedule s LEFT JOIN refresh_claims c ON c.account_id = s.account_id
         WHERE s.account_id = $1",
    )
    .bind(id)
    .fetch_optional(&app.db)
    .await
    .unwrap()
    .map(|(refresh_at, enqueued, claimed)| Entry { refresh_at, enqueued, claimed })
}

/// What a scheduler's claim writes.
async fn mark(app: &TestApp, id: &str) {
    let marked = sqlx::query(
        "INSERT INTO refresh_claims (account_id, enqueued_at, claim_id)
         SELECT account_id, now(), $2::uuid FROM refresh_schedule WHERE account_id = $1",
    )
    .bind(id)
    .bind(pipes::store::schedule::new_claim_id())
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(marked.rows_affected(), 1);
}

/// Whether the account has a claim, scheduled or not.
async fn has_claim(app: &TestApp, id: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refresh_claims WHERE account_id = $1)")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

fn tokens(refresh_token: Option<&str>) -> TokenSet {
    TokenSet {
        access_token: Secret::new("at"),
        refresh_token: refresh_token.map(Secret::new),
        expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        scopes: vec!["read".into()],
    }
}

fn marked_at(refresh_at: DateTime<Utc>) -> Option<Entry> {
    Some(Entry { refresh_at, enqueued: true, claimed: true })
}

fn unmarked_at(refresh_at: DateTime<Utc>) -> Option<Entry> {
    Some(Entry { refresh_at, enqueued: false, claimed: false })
}

#[tokio::test]
async fn the_schedule_follows_the_account_through_its_life_cycle() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-schedule", ClientAuthMethod::Basic).await;
    let ring = app.state.keyring();
    let in_an_hour = Utc::now() + chrono::Duration::minutes(50);

    // Connected with a refresh token: scheduled, unmarked.
    let account = store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt1")), Some(in_an_hour)).await;
    let id = account.id.clone();
    let due = account.refresh_at.unwrap();
    assert_eq!(entry(&app, &id).await, unmarked_at(due));

    // Claimed; leases, failures and releases leave the mark alone.
    mark(&app, &id).await;
    accounts::try_lease(&app.db, ring, &id, "lease-1", Duration::from_secs(30)).await.unwrap().unwrap();
    accounts::record_transient_failure(&app.db, &id, "lease-1", "provider timed out").await.unwrap();
    accounts::try_lease(&app.db, ring, &id, "lease-2", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(entry(&app, &id).await, marked_at(due));

    // A refreshed token stored: refresh_at moves, the mark is cleared.
    let later = due + chrono::Duration::minutes(30);
    let refreshed =
        accounts::store_refreshed(&app.db, ring, &id, "lease-2", &tokens(None), Some(later)).await.unwrap().unwrap();
    let later = refreshed.refresh_at.unwrap();
    assert_eq!(entry(&app, &id).await, unmarked_at(later));

    // Tokens stored again (a reconnect) clear the mark even with the same refresh_at.
    mark(&app, &id).await;
    store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt2")), Some(later)).await;
    assert_eq!(entry(&app, &id).await, unmarked_at(later));

    // A refresh that leaves no refresh_at (the token no longer expires): off the schedule,
    // its claim gone.
    mark(&app, &id).await;
    accounts::try_lease(&app.db, ring, &id, "lease-3", Duration::from_secs(30)).await.unwrap().unwrap();
    accounts::store_refreshed(&app.db, ring, &id, "lease-3", &tokens(None), None).await.unwrap().unwrap();
    assert_eq!(entry(&app, &id).await, None);
    assert!(!has_claim(&app, &id).await);

    // Tokens without a refresh token: nothing to refresh with, off the schedule.
    store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt3")), Some(later)).await;
    assert_eq!(entry(&app, &id).await, unmarked_at(later));
    store_tokens(&app, &p.integration.id, "u1", None, &tokens(None), Some(later)).await;
    let gone: Option<Vec<u8>> = sqlx::query_scalar("SELECT refresh_token_enc FROM connected_accounts WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(gone.is_none(), "the store dropped the refresh token");
    assert_eq!(entry(&app, &id).await, None);

    // Needs reauthorization: off the schedule; reconnected: back on it.
    store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt4")), Some(later)).await;
    mark(&app, &id).await;
    let mut tx = app.db.begin().await.unwrap();
    accounts::mark_needs_reauthorization(&mut tx, ring, &id, "invalid_grant").await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(entry(&app, &id).await, None);
    assert!(!has_claim(&app, &id).await);
    store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt5")), Some(later)).await;
    assert_eq!(entry(&app, &id).await, unmarked_at(later));

    // Deleted: gone with the account, claim included.
    mark(&app, &id).await;
    assert_eq!(entry(&app, &id).await, marked_at(later));
    let mut tx = app.db.begin().await.unwrap();
    accounts::delete(&mut tx, ring, &id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(entry(&app, &id).await, None);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_schedule").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0);
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_claims").fetch_one(&app.db).await.unwrap();
    assert_eq!(claims, 0);
}

/// Stores through the refresh's batched statement, which writes the schedule itself.
async fn store_batched(
    db: &sqlx::PgPool,
    app: &TestApp,
    id: &str,
    lease_id: &str,
    tokens: &TokenSet,
    refresh_at: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let request = StoreRequest::new(app.state.keyring(), id, lease_id, tokens, refresh_at).unwrap().unwrap();
    let mut rows = StoreBatch { db: db.clone() }.run(&[request]).await.unwrap();
    let row = rows.pop().unwrap().expect("stored under the lease");
    sqlx::Row::get(&row, "refresh_at")
}

#[tokio::test]
async fn the_batched_refresh_store_keeps_the_schedule_in_its_own_statement() {
    let app = TestApp::spawn().await;
    let p = demo_integration(&app, "pl-schedule-batch", ClientAuthMethod::Basic).await;
    let ring = app.state.keyring();
    // A pool of one connection, as a worker's batch would run on.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("postgres://postgres@127.0.0.1:5432/{}", app.db_name))
        .await
        .unwrap();
    let soon = Utc::now() + chrono::Duration::minutes(50);
    let account = store_tokens(&app, &p.integration.id, "u1", None, &tokens(Some("rt1")), Some(soon)).await;
    let id = account.id.clone();
    let other = store_tokens(&app, &p.integration.id, "u2", None, &tokens(Some("rt1")), Some(soon)).await;
    // Claimed, leased and refreshed: the schedule moves, the claim is gone.
    mark(&app, &id).await;
    accounts::try_lease(&one, ring, &id, "lease-1", Duration::from_secs(30)).await.unwrap().unwrap();
    let later =
        store_batched(&one, &app, &id, "lease-1", &tokens(Some("rt2")), Some(soon + chrono::Duration::hours(1)))
            .await
            .unwrap();
    assert_eq!(entry(&app, &id).await, unmarked_at(later));

    // A refresh under a lease someone else holds stores nothing and moves nothing.
    mark(&app, &id).await;
    accounts::try_lease(&one, ring, &id, "lease-2", Duration::from_secs(30)).await.unwrap().unwrap();
    let request =
        StoreRequest::new(ring, &id, "lease-stale", &tokens(Some("rt3")), Some(later + chrono::Duration::hours(1)))
            .unwrap()
            .unwrap();
    let fenced = StoreBatch { db: one.clone() }.run(&[request]).await.unwrap();
    assert!(fenced[0].is_none());
    assert_eq!(entry(&app, &id).await, marked_at(later));

    // A refresh that leaves no refresh_at: off the schedule, claim gone.
    assert_eq!(store_batched(&one, &app, &id, "lease-2", &tokens(None), None).await, None);
    assert_eq!(entry(&app, &id).await, None);
    assert!(!has_claim(&app, &id).await);

    // The next refresh that leaves a refresh_at puts the account back on the schedule:
    // a row the statement inserts, where it otherwise moves one.
    accounts::try_lease(&one, ring, &id, "lease-3", Duration::from_secs(30)).await.unwrap().unwrap();
    let back = store_batched(&one, &app, &id, "lease-3", &tokens(Some("rt4")), Some(soon)).await.unwrap();
    assert_eq!(entry(&app, &id).await, unmarked_at(back));
    assert_eq!(entry(&app, &other.id).await, unmarked_at(other.refresh_at.unwrap()), "another account untouched");
}

#[tokio::test]
async fn no_trigger_keeps_one_table_in_step_with_another() {
    let app = TestApp::spawn().await;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgrelid::regclass::text || '.' || tgname FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND n.nspname = 'public'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(triggers, Vec::<String>::new(), "the code that owns a table writes it");
}
