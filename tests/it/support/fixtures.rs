//! Test fixtures: an integration backed by an in-process demo provider, and
//! connected accounts seeded straight into the store.

use std::time::Duration;

use chrono::Utc;
use pipes::crypto::aad;
use pipes::demo_provider::{ClientAuthMethod, ClientRegistration, DemoConfig, DemoProvider};
use pipes::keys::columns;
use pipes::secret::Secret;
use pipes::store::accounts::{self, Account, AccountState, TokenSet, WriteMode};
use pipes::store::integrations::{self, Integration};

use super::app::TestApp;

pub struct Provider {
    pub demo: DemoProvider,
    pub integration: Integration,
}

/// Starts an auto-consenting demo provider with a client registered for
/// integration `slug`'s redirect URI; returns it with the client id and secret.
pub async fn demo_client(app: &TestApp, slug: &str, auth: ClientAuthMethod) -> (DemoProvider, String, String) {
    let (demo, _addr) =
        DemoProvider::spawn(DemoConfig { auto_consent: true, ..DemoConfig::default() }).await.expect("demo provider");
    let client_id = format!("client-{slug}");
    let client_secret = format!("demo_cs_{}", ulid::Ulid::new());
    demo.register_client(ClientRegistration {
        client_id: client_id.clone(),
        client_secret: client_secret.clone(),
        redirect_uris: vec![app.config().redirect_uri(slug)],
        auth_method: auth,
    });
    (demo, client_id, client_secret)
}

/// Starts a demo provider and registers it as a custom integration `slug`
/// (scopes `read`, `write`), with the given client authentication method.
pub async fn demo_integration(app: &TestApp, slug: &str, auth: ClientAuthMethod) -> Provider {
    let (demo, client_id, client_secret) = demo_client(app, slug, auth).await;
    let base = demo.base_url();
    let custom = serde_json::json!({
        "name": format!("Demo {slug}"),
        "authorization_url": format!("{base}/authorize"),
        "token_url": format!("{base}/token"),
        "revocation_url": format!("{base}/revoke"),
        "pkce_enabled": true,
        "request_scope_separator": " ",
        "authenticate_via": match auth { ClientAuthMethod::Basic => "basic_auth_header", ClientAuthMethod::Body => "request_body" },
    });
    let id = pipes::ids::IdKind::Integration.new_id();
    let sealed = app.state.keyring().seal_str(&client_secret, aad(columns::CLIENT_SECRET, &id)).unwrap();
    sqlx::query(
        "INSERT INTO integrations (id, slug, provider, description, scopes, client_id, client_secret_enc, redacted_secret, custom_provider)
         VALUES ($1, $2, $2, 'Test provider', ARRAY['read','write'], $3, $4, '***', $5)",
    )
    .bind(&id)
    .bind(slug)
    .bind(&client_id)
    .bind(sealed)
    .bind(custom)
    .execute(&app.db)
    .await
    .expect("insert integration");
    let integration = integrations::by_id(&app.db, app.state.keyring(), &id.into()).await.unwrap().unwrap();
    Provider { demo, integration }
}

/// Issues a grant at the demo provider and stores it as a connected account
/// whose token expires in `expires_in` (as the store sees it).
pub async fn seed_account(
    app: &TestApp,
    p: &Provider,
    user: &str,
    org: Option<&str>,
    expires_in: Duration,
) -> (Account, String) {
    let issued = p.demo.issue_grant(&p.integration.client_id, user, &["read"]).expect("grant");
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(expires_in).unwrap();
    let tokens = TokenSet {
        access_token: Secret::new(issued.access_token.clone()),
        refresh_token: issued.refresh_token.clone().map(Secret::new),
        expires_at: Some(expires_at),
        scopes: vec!["read".into()],
    };
    let refresh_at =
        app.state.refresher.schedule(&p.integration, now, Some(expires_at), tokens.refresh_token.is_some());
    let account = store_tokens(app, &p.integration.id, user, org, &tokens, refresh_at).await;
    (account, issued.access_token)
}

/// Stores `tokens` as the connected account of `user` (and `org`) straight into the
/// store (insert or replace), due for a refresh at `refresh_at`.
pub async fn store_tokens(
    app: &TestApp,
    integration_id: &str,
    user: &str,
    org: Option<&str>,
    tokens: &TokenSet,
    refresh_at: Option<chrono::DateTime<Utc>>,
) -> Account {
    let mut tx = app.db.begin().await.unwrap();
    let account = accounts::write_tokens(
        &mut tx,
        app.state.keyring(),
        &WriteMode::Upsert,
        &integration_id.into(),
        &crate::support::owner(user, org),
        None,
        &Default::default(),
        &accounts::Credential::OAuth,
        tokens,
        refresh_at,
        AccountState::Connected,
    )
    .await
    .unwrap()
    .unwrap()
    .account;
    tx.commit().await.unwrap();
    account
}
