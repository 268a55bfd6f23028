//! The fake provider and the seed for `benches/relay.sh`: runs the demo provider on
//! ADDR (its `/api/me` is the small protected API), seeds an integration `relayed`
//! whose API base URL is the demo's `/api`, and N connected accounts (`user-0` …)
//! holding tokens the demo issued (valid for three hours at both ends), written through
//! the app's own store code. Prints a `relay` API key and one account's access token
//! (for the direct run), then serves until killed.
//!
//! Usage: relay_bench ADDR N. `PIPES_*` settings come from the environment.

// Tools read the clock directly (clippy.toml keeps the library to `pipes::time::now`).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use pipes::auth::{create_key, Role};
use pipes::config::{Config, Settings};
use pipes::crypto::aad;
use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use pipes::ids::IdKind;
use pipes::keys::columns;
use pipes::secret::Secret;
use pipes::store::accounts::{write_tokens, AccountState, TokenSet, WriteMode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pipes::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().context("ADDR")?.parse().context("ADDR")?;
    let count: usize = args.next().map(|n| n.parse()).transpose().context("N")?.unwrap_or(100);
    let config = Config::from_settings(&Settings::from_env()?)?;
    let db = sqlx::PgPool::connect(&config.database_url).await.context("connect to PostgreSQL")?;
    pipes::db::migrate(&db).await?;
    let ring = &config.encryption_keys;

    let demo = DemoProvider::new(DemoConfig { auto_consent: true, ..DemoConfig::default() });
    demo.set_access_ttl(Duration::from_secs(3 * 3600));
    demo.register_client(ClientRegistration {
        client_id: "bench-client".into(),
        client_secret: "bench-secret".into(),
        redirect_uris: vec![],
        auth_method: ClientAuthMethod::Basic,
    });
    let listener = tokio::net::TcpListener::bind(addr).await.context("bind ADDR")?;
    let base = format!("http://{addr}");

    let integration_id = IdKind::Integration.new_id();
    let secret = ring.seal_str("bench-secret", aad(columns::CLIENT_SECRET, &integration_id))?;
    let custom = serde_json::json!({
        "name": "Relay benchmark provider",
        "authorization_url": format!("{base}/authorize"),
        "token_url": format!("{base}/token"),
        "authenticate_via": "basic_auth_header",
        "api_base_url": format!("{base}/api"),
    });
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, description, scopes, client_id, client_secret_enc, redacted_secret, custom_provider, enabled)
         VALUES ($1, 'relayed', 'relayed', 'Relay benchmark provider', ARRAY['read'], 'bench-client', $2, '***', $3, true)",
    )
    .bind(&integration_id)
    .bind(secret)
    .bind(custom)
    .execute(&db)
    .await
    .context("insert the integration")?;

    let expires_at = Utc::now() + chrono::Duration::hours(3);
    let mut first_token = String::new();
    for i in 0..count {
        let issued = demo.issue_grant("bench-client", &format!("user-{i}"), &["read"])?;
        if i == 0 {
            first_token = issued.access_token.clone();
        }
        let tokens = TokenSet {
            access_token: Secret::new(issued.access_token),
            refresh_token: issued.refresh_token.map(Secret::new),
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
    let (key, _) = create_key(&db, "relay-bench", Role::Relay).await?;
    eprintln!("seeded {count} accounts; the fake provider listens on {base}");
    println!("{key} {first_token}");
    axum::serve(listener, demo.router()).await?;
    Ok(())
}
