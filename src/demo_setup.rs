//! The demo: the built-in demo OAuth provider served on `PIPES_DEMO_LISTEN`,
//! registered as the integration `demo`, so a newcomer can connect an account,
//! watch its 2-minute tokens refresh and see a revoked grant ask for
//! reauthorization — without registering an app anywhere.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::aad;
use crate::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use crate::ids::IdKind;
use crate::keys::columns;

pub const DEMO_SLUG: &str = "demo";
pub const DEMO_CLIENT_ID: &str = "pipes-demo";

/// Runs the demo provider until `cancel` fires.
pub async fn run_provider(config: &Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let provider = DemoProvider::new(DemoConfig {
        base_url: config.demo_public_url.clone(),
        access_ttl: Duration::from_secs(120),
        auto_consent: false,
        ..DemoConfig::default()
    });
    provider.register_client(ClientRegistration {
        client_id: DEMO_CLIENT_ID.to_owned(),
        client_secret: config.demo_client_secret.expose().to_owned(),
        redirect_uris: vec![config.redirect_uri(DEMO_SLUG)],
        auth_method: ClientAuthMethod::Basic,
    });
    let listener = tokio::net::TcpListener::bind(config.demo_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, public_url = %config.demo_public_url, "demo OAuth provider listening");
    crate::api::serve(listener, provider.router(), cancel).await?;
    Ok(())
}

/// Creates or updates the `demo` integration pointing at the demo provider:
/// the browser goes to its public URL, Pipes calls its internal URL.
pub async fn ensure_integration(db: &PgPool, config: &Config) -> anyhow::Result<()> {
    let public = config.demo_public_url.trim_end_matches('/');
    let internal = config.demo_internal_url.trim_end_matches('/');
    let custom = serde_json::json!({
        "name": "Demo Provider",
        "authorization_url": format!("{public}/authorize"),
        "token_url": format!("{internal}/token"),
        "revocation_url": format!("{internal}/revoke"),
        "pkce_enabled": true,
        "request_scope_separator": " ",
        "authenticate_via": "basic_auth_header",
    });
    let existing: Option<String> =
        sqlx::query_scalar("SELECT id FROM integrations WHERE slug = $1 AND ownership = 'user'")
            .bind(DEMO_SLUG)
            .fetch_optional(db)
            .await?;
    let id = existing.unwrap_or_else(|| IdKind::Integration.new_id());
    let sealed =
        config.encryption_keys.seal_str(config.demo_client_secret.expose(), aad(columns::CLIENT_SECRET, &id))?;
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, description, scopes, client_id, client_secret_enc, redacted_secret, custom_provider, enabled)
         VALUES ($1, $2, $2, 'A built-in demo provider: tokens live 2 minutes and refresh tokens rotate.',
                 ARRAY['profile','files.read'], $3, $4, '***', $5, true)
         ON CONFLICT (slug, ownership) DO UPDATE SET client_id = EXCLUDED.client_id, client_secret_enc = EXCLUDED.client_secret_enc,
           custom_provider = EXCLUDED.custom_provider, state = 'valid', state_reason = NULL, updated_at = now()",
    )
    .bind(&id)
    .bind(DEMO_SLUG)
    .bind(DEMO_CLIENT_ID)
    .bind(sealed)
    .bind(custom)
    .execute(db)
    .await?;
    tracing::info!(slug = DEMO_SLUG, "demo integration ready");
    Ok(())
}
