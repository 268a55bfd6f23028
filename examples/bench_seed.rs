//! Seeds a database for `benches/read.sh`: one integration `bench` and N
//! connected accounts (`user-0` … `user-{N-1}`) whose tokens stay fresh for
//! two hours, written through the app's own store code. Prints a `tokens`
//! API key as the last line of stdout.
//!
//! `PIPES_*` settings come from the environment, as for `pipes serve`.

// Tests and tools read the clock directly (clippy.toml keeps the library to `pipes::time::now`).
#![allow(clippy::disallowed_methods)]

use anyhow::Context;
use chrono::Utc;
use pipes::auth::{create_key, Role};
use pipes::config::{Config, Settings};
use pipes::crypto::{aad, random_token};
use pipes::ids::IdKind;
use pipes::keys::columns;
use pipes::secret::Secret;
use pipes::store::accounts::{write_tokens, AccountState, TokenSet, WriteMode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pipes::install_crypto_provider();
    let count: usize = std::env::args().nth(1).map(|n| n.parse()).transpose().context("account count")?.unwrap_or(1000);
    let config = Config::from_settings(&Settings::from_env()?)?;
    let db = sqlx::PgPool::connect(&config.database_url).await.context("connect to PostgreSQL")?;
    pipes::db::migrate(&db).await?;
    let ring = &config.encryption_keys;

    let integration_id = IdKind::Integration.new_id();
    let secret = ring.seal_str("bench-secret", aad(columns::CLIENT_SECRET, &integration_id))?;
    let custom = serde_json::json!({
        "name": "Benchmark provider",
        "authorization_url": "http://127.0.0.1:9/authorize",
        "token_url": "http://127.0.0.1:9/token",
    });
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, description, scopes, client_id, client_secret_enc, redacted_secret, custom_provider)
         VALUES ($1, 'bench', 'bench', 'Benchmark provider', ARRAY['read','write'], 'bench-client', $2, '***', $3)",
    )
    .bind(&integration_id)
    .bind(secret)
    .bind(custom)
    .execute(&db)
    .await
    .context("insert the integration")?;

    let expires_at = Utc::now() + chrono::Duration::hours(2);
    for i in 0..count {
        let tokens = TokenSet {
            access_token: Secret::new(format!("bench_at_{}", random_token(24))),
            refresh_token: Some(Secret::new(random_token(24))),
            expires_at: Some(expires_at),
            scopes: vec!["read".into()],
        };
        let mut tx = db.begin().await?;
        write_tokens(
            &mut tx,
            ring,
            &WriteMode::Upsert,
            &integration_id.clone().into(),
            &pipes::owner::Owner::user(format!("user-{i}"), None),
            None,
            &Default::default(),
            &pipes::store::accounts::Credential::OAuth,
            &tokens,
            None,
            AccountState::Connected,
        )
        .await?;
        tx.commit().await?;
    }
    let (key, _) = create_key(&db, "bench", Role::Tokens).await?;
    eprintln!("seeded {count} accounts");
    println!("{key}");
    Ok(())
}
