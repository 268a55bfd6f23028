//! The provider side of the soak: the demo OAuth provider holding every grant, the seeding of
//! the connected accounts, a sampler of the database and the provider, and the run's phases
//! (ready → start → load → stop → audit), driven by files in the run directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use pipes::config::Config;
use pipes::crypto::aad;
use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use pipes::keys::columns;
use rand::Rng;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use crate::{epoch, knob};

pub const SLUG: &str = "soak";

pub async fn run(dir: PathBuf) -> Result<()> {
    let config = Config::from_env()?;
    let url = std::env::var("SOAK_DATABASE_URL").unwrap_or_else(|_| config.database_url.to_string());
    let db =
        sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.context("connect to PostgreSQL")?;
    let accounts: usize = knob("SOAK_ACCOUNTS", 100_000);
    let (ttl_min, ttl_max) = (knob("SOAK_TTL_MIN", 120u64), knob("SOAK_TTL_MAX", 600u64));

    let (demo, _) = DemoProvider::spawn(DemoConfig::default()).await?;
    demo.set_access_ttl_range(Duration::from_secs(ttl_min), Duration::from_secs(ttl_max));
    let integration_id = integration(&config, &db, &demo).await?;
    let started = std::time::Instant::now();
    seed(&config, &db, &demo, &integration_id, accounts).await?;
    eprintln!("seeded {accounts} accounts in {:.1}s", started.elapsed().as_secs_f64());
    let (key, _) = pipes::auth::create_key(&db, "soak", pipes::auth::Role::Tokens).await?;
    tokio::fs::write(dir.join("key"), &key).await?;
    tokio::fs::write(dir.join("ready"), epoch().to_string()).await?;

    wait_for(&dir.join("start")).await;
    let sampler = tokio::spawn(sample(db.clone(), demo.clone(), dir.join("provider.jsonl")));
    let settings = crate::load::Settings {
        serve_url: knob("SOAK_SERVE_URL", "http://127.0.0.1:28080".to_owned()),
        key,
        accounts,
        rate: knob("SOAK_RATE", 1000),
        duration: Duration::from_secs(knob("SOAK_DURATION", 900)),
        min_validity: config.min_validity,
    };
    crate::load::run(settings, demo.clone(), &dir).await?;
    eprintln!("load done; waiting for {}", dir.join("stop").display());
    wait_for(&dir.join("stop")).await;
    sampler.abort();
    crate::audit::run(&config, &db, &demo, &integration_id, &dir).await
}

async fn wait_for(path: &Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers the soak client at the provider and the integration `soak` in Pipes.
async fn integration(config: &Config, db: &PgPool, demo: &DemoProvider) -> Result<String> {
    let secret = format!("secret-{}", ulid::Ulid::new());
    demo.register_client(ClientRegistration {
        client_id: SLUG.into(),
        client_secret: secret.clone(),
        redirect_uris: vec![config.redirect_uri(SLUG)],
        auth_method: ClientAuthMethod::Basic,
    });
    let base = demo.base_url();
    let custom = serde_json::json!({
        "name": "Soak", "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/token"),
        "pkce_enabled": true, "request_scope_separator": " ", "authenticate_via": "basic_auth_header",
    });
    let id = pipes::ids::IdKind::Integration.new_id();
    let sealed = config.encryption_keys.seal_str(&secret, aad(columns::CLIENT_SECRET, &id))?;
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, scopes, client_id, client_secret_enc, redacted_secret, custom_provider)
         VALUES ($1, $2, $2, ARRAY['read'], $2, $3, '***', $4)",
    )
    .bind(&id)
    .bind(SLUG)
    .bind(sealed)
    .bind(custom)
    .execute(db)
    .await?;
    Ok(id)
}

/// `user{i}` for i in 0..n: a real grant each, sealed under the app's keys and bound to its
/// row, scheduled the way the app schedules (`policy::refresh_at`).
async fn seed(config: &Config, db: &PgPool, demo: &DemoProvider, integration_id: &str, n: usize) -> Result<()> {
    let ring = &config.encryption_keys;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        type Columns = (Vec<String>, Vec<String>, Vec<Vec<u8>>, Vec<Vec<u8>>);
        let mut rows: Columns = Default::default();
        let (mut expires, mut due) = (Vec::new(), Vec::new());
        for i in chunk {
            let user = format!("user{i}");
            let now = Utc::now();
            let issued = demo.issue_grant(SLUG, &user, &["read"])?;
            let id = pipes::ids::IdKind::ConnectedAccount.new_id();
            let refresh = issued.refresh_token.context("demo grants carry a refresh token")?;
            let lifetime = chrono::Duration::seconds(issued.expires_in.context("demo tokens expire")? as i64);
            let expires_at = now + lifetime;
            let jitter = rand::thread_rng().gen::<f64>();
            rows.2.push(ring.seal_str(&issued.access_token, aad(columns::ACCESS_TOKEN, &id))?);
            rows.3.push(ring.seal_str(&refresh, aad(columns::REFRESH_TOKEN, &id))?);
            expires.push(expires_at);
            due.push(pipes::policy::refresh_at(now, Some(expires_at), true, true, config.refresh_lead, jitter));
            rows.0.push(id);
            rows.1.push(user);
        }
        sqlx::query(
            "WITH a AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::timestamptz[],
                                    $6::timestamptz[])
                 AS a(id, user_id, access, refresh, expires_at, refresh_at)),
             accounts AS (
               INSERT INTO connected_accounts (id, integration_id, user_id, state, access_token_enc,
                 refresh_token_enc, expires_at, scopes, token_version)
               SELECT a.id, $7, a.user_id, 'connected', a.access, a.refresh, a.expires_at, ARRAY['read'],
                 nextval('token_versions')
               FROM a
               RETURNING id)
             INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
             SELECT a.id, $7, a.refresh_at FROM a WHERE a.id IN (SELECT id FROM accounts)",
        )
        .bind(&rows.0)
        .bind(&rows.1)
        .bind(&rows.2)
        .bind(&rows.3)
        .bind(&expires)
        .bind(&due)
        .bind(integration_id)
        .execute(db)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE connected_accounts, refresh_schedule").execute(db).await?;
    Ok(())
}

/// Every 10 s, one JSON line: accounts due, overdue by more than 30 s, expired while still
/// connected (a refresh that came too late), not connected, and the provider's counters.
async fn sample(db: PgPool, demo: DemoProvider, path: PathBuf) -> Result<()> {
    let mut file = tokio::fs::File::create(&path).await?;
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        let row: Result<(i64, i64, i64, i64, Option<f64>), _> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'connected' AND refresh_at <= now()),
                    count(*) FILTER (WHERE state = 'connected' AND refresh_at <= now() - interval '30 seconds'),
                    count(*) FILTER (WHERE state = 'connected' AND expires_at <= now()),
                    count(*) FILTER (WHERE state <> 'connected'),
                    extract(epoch FROM now() - min(refresh_at) FILTER (WHERE state = 'connected'))::float8
             FROM connected_accounts c LEFT JOIN refresh_schedule s ON s.account_id = c.id",
        )
        .fetch_one(&db)
        .await;
        let stats = demo.stats();
        let line = match row {
            Ok((due, overdue_30s, expired, not_connected, oldest)) => serde_json::json!({
                "t": epoch(), "due": due, "overdue_30s": overdue_30s, "expired": expired,
                "not_connected": not_connected, "oldest_due_s": oldest,
                "refreshes": stats.refreshes, "token_requests": stats.token_requests,
                "reuse_detected": stats.reuse_detected, "grants_revoked": stats.grants_revoked,
            }),
            Err(err) => serde_json::json!({"t": epoch(), "error": err.to_string()}),
        };
        file.write_all(format!("{line}\n").as_bytes()).await?;
        file.flush().await?;
    }
}
