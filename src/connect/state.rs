//! A connect flow's state: the single-use OAuth `state` (only its hash is stored,
//! bound to the integration root, the user, organization, intent and `return_to`, with
//! the PKCE verifier sealed to it), the authorization URL, and consuming the state at
//! the callback exactly once. Every flow is bound to whoever started it ([`Binding`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::ConnectError;
use crate::crypto::{aad, random_token, sha256_hex};
use crate::ids::{AccountId, IntegrationId};
use crate::keys::columns;
use crate::oauth::client;
use crate::owner::{Owner, Ownership};
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::WriteMode;
use crate::store::integrations::Integration;
use crate::store::organizations;

/// How long a user has to come back from the provider.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Consumed and expired states are kept this long (so a replay is told apart from a forgery), then purged.
const STATE_RETENTION: Duration = Duration::from_secs(3600);

/// Connect flows an owner may have open (started, not finished, not expired) at
/// once: enough for a few tabs and retries, and a bound on the rows a caller can make.
pub const MAX_OPEN_STATES: i64 = 20;
/// Connect flows one widget token may have open at once: a page in a browser needs a few.
pub const MAX_OPEN_PER_WIDGET_TOKEN: i64 = 5;

/// How a flow is tied to the person who started it, so that a provider URL sent to
/// someone else connects nothing (DESIGN §3.2, securing authorizations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Started through the API: the URL answered is Pipes' confirmation page, which says
    /// whose account is being connected and binds the browser that continues.
    Confirmation,
    /// Started by the widget in this browser: `browser` is the hash of its cookie.
    Browser { browser: String, widget_token: String },
    /// Session binding: the application's S256 `code_challenge`; the callback saves
    /// nothing and the application's server finishes with the verifier.
    CodeChallenge(String),
}

impl Binding {
    fn column(&self) -> &'static str {
        match self {
            Binding::Confirmation => "confirmation",
            Binding::Browser { .. } => "browser",
            Binding::CodeChallenge(_) => "code_challenge",
        }
    }
}

/// What the callback must check, as stored with the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// The browser coming back must carry the cookie hashing to this (`None`: the
    /// confirmation page was never used, so no browser can finish).
    Browser(Option<String>),
    /// The callback hands out a `connect_code`; `finish` checks the verifier against this challenge.
    CodeChallenge(String),
}

/// Who is connecting, and where they go afterwards. For an organization-owned
/// integration, `user_id` is the member connecting the organization's account.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub user_id: String,
    pub organization_id: Option<String>,
    pub return_to: Option<String>,
    pub intent: Intent,
    /// The label to give the account: `None` keeps it, `Some(None)` clears it.
    pub account_display_name: Option<Option<String>>,
    pub binding: Binding,
}

/// What a connect flow is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Intent {
    /// The owner's compatibility account: connected, or reconnected.
    #[default]
    Connect,
    /// Another account beside the owner's (`connection_intent: add`).
    Add,
    /// The owner's account with this id, reauthorized.
    Reauthorize(AccountId),
}

impl Intent {
    fn column(&self) -> (Option<&'static str>, Option<&str>) {
        match self {
            Intent::Connect => (None, None),
            Intent::Add => (Some("add"), None),
            Intent::Reauthorize(id) => (Some("reauthorize"), Some(id.as_str())),
        }
    }

    pub(super) fn from_columns(intent: Option<&str>, account: Option<String>) -> Self {
        match (intent, account) {
            (Some("add"), _) => Intent::Add,
            (Some("reauthorize"), Some(id)) => Intent::Reauthorize(id.into()),
            _ => Intent::Connect,
        }
    }

    /// Where the flow's tokens are written, for `integration`.
    pub(super) fn write_mode(&self, integration: &Integration) -> WriteMode {
        match self {
            Intent::Connect => WriteMode::Upsert,
            Intent::Add => WriteMode::Add { several: integration.multiple_connections },
            Intent::Reauthorize(id) => WriteMode::Account(id.clone()),
        }
    }
}

/// The scopes a connect attempt asks for: the integration's, else the provider's defaults.
pub fn requested_scopes(integration: &Integration) -> Vec<String> {
    if !integration.scopes.is_empty() {
        return integration.scopes.clone();
    }
    integration.spec().ok().and_then(|s| s.oauth.as_ref().map(|o| o.default_scopes.clone())).unwrap_or_default()
}

/// Records a new state and returns where to send the browser: the provider's
/// authorization URL, or for [`Binding::Confirmation`] Pipes' confirmation page.
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn begin(
    state: &AppState,
    integration: &Integration,
    req: &ConnectRequest,
    now: DateTime<Utc>,
) -> Result<Begun, ConnectError> {
    let spec = integration.spec()?;
    let oauth = spec.oauth().map_err(|e| ConnectError::Misconfigured(e.to_string()))?;
    let raw_state = random_token(32);
    let state_hash = sha256_hex(&raw_state);
    let ring = state.keyring();
    let pkce = oauth.pkce.then(client::new_pkce);
    let verifier = pkce
        .as_ref()
        .map(|p| ring.seal_str(p.verifier.expose(), aad(columns::PKCE_VERIFIER, &state_hash)))
        .transpose()?;
    // The organization's configuration: whether its members may connect, what they are
    // asked for, and (organization credentials) its own OAuth app.
    let organization = match &req.organization_id {
        Some(org) => organizations::get(&state.db, ring, org, &integration.slug).await?,
        None => None,
    };
    if let (Some(org), false) = (&req.organization_id, organizations::enabled_for(integration, organization.as_ref())) {
        return Err(ConnectError::DisabledForOrganization { organization_id: org.clone() });
    }
    let app = match req.organization_id.as_deref() {
        Some(org) => organizations::app_of(integration, org, organization.as_ref())?,
        None => organizations::app_for(&state.db, ring, integration, None).await?,
    };
    let scopes = organization.and_then(|c| c.scopes).unwrap_or_else(|| requested_scopes(integration));
    let redirect_uri = state.config.redirect_uri(&integration.slug);
    let provider_url = client::authorization_url(
        integration,
        oauth,
        app.client(integration),
        &redirect_uri,
        &raw_state,
        &scopes,
        pkce.as_ref(),
    )
    .map_err(|e| ConnectError::Misconfigured(e.to_string()))?;
    let expires_at = now + chrono::Duration::from_std(STATE_TTL).unwrap_or_default();
    let (intent, account) = req.intent.column();
    // The confirmation page holds the provider's URL (it carries the state) until it is used.
    let (url, confirmation_hash, sealed_url) = match &req.binding {
        Binding::Confirmation => {
            let ticket = random_token(32);
            let sealed = ring.seal_str(provider_url.as_str(), aad(columns::AUTHORIZATION_URL, &state_hash))?;
            (super::confirmation_url(&state.config, &ticket), Some(sha256_hex(&ticket)), Some(sealed))
        }
        _ => (provider_url, None, None),
    };
    let (browser, widget_token, challenge) = match &req.binding {
        Binding::Browser { browser, widget_token } => (Some(browser.as_str()), Some(widget_token.as_str()), None),
        Binding::CodeChallenge(challenge) => (None, None, Some(challenge.as_str())),
        Binding::Confirmation => (None, None, None),
    };
    let inserted = sqlx::query(
        "INSERT INTO oauth_states (state_hash, integration_id, user_id, organization_id, return_to, scopes, pkce_verifier_enc, expires_at, created_at,
                                   connection_intent, connected_account_id, set_display_name, account_display_name,
                                   binding, confirmation_hash, authorization_url_enc, browser_hash, widget_token_hash, code_challenge)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20
         WHERE (SELECT count(*) FROM oauth_states
                WHERE user_id = $3 AND organization_id IS NOT DISTINCT FROM $4 AND used_at IS NULL AND expires_at > $9) < $10
           AND ($19::text IS NULL OR (SELECT count(*) FROM oauth_states
                WHERE widget_token_hash = $19 AND used_at IS NULL AND expires_at > $9) < $21)",
    )
    .bind(&state_hash)
    .bind(&integration.id)
    .bind(&req.user_id)
    .bind(&req.organization_id)
    .bind(&req.return_to)
    .bind(&scopes)
    .bind(verifier)
    .bind(expires_at)
    .bind(now)
    .bind(MAX_OPEN_STATES)
    .bind(intent)
    .bind(account)
    .bind(req.account_display_name.is_some())
    .bind(req.account_display_name.clone().flatten())
    .bind(req.binding.column())
    .bind(confirmation_hash)
    .bind(sealed_url)
    .bind(browser)
    .bind(widget_token)
    .bind(challenge)
    .bind(MAX_OPEN_PER_WIDGET_TOKEN)
    .execute(&state.db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ConnectError::TooManyOpen);
    }
    Ok(Begun { url, state: raw_state })
}

/// Housekeeping, on every scheduler tick: the secrets of expired flows (sealed PKCE
/// verifier, provider URL and provider code) are dropped at once, and the rows after
/// [`STATE_RETENTION`] (kept so a replay is told apart from a forgery).
pub async fn forget_expired(db: &sqlx::PgPool, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE oauth_states SET pkce_verifier_enc = NULL, authorization_url_enc = NULL, provider_code_enc = NULL
         WHERE (expires_at <= $1 OR connect_code_expires_at <= $1)
           AND (pkce_verifier_enc IS NOT NULL OR authorization_url_enc IS NOT NULL OR provider_code_enc IS NOT NULL)",
    )
    .bind(now)
    .execute(db)
    .await?;
    let horizon = now - chrono::Duration::from_std(STATE_RETENTION).unwrap_or_default();
    sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1").bind(horizon).execute(db).await?;
    Ok(())
}

/// A connect flow begun: where to send the browser, and the flow's `state` (also in the
/// URL, and on the redirect to `return_to`, for the application to match the two).
#[derive(Debug)]
pub struct Begun {
    pub url: url::Url,
    pub state: String,
}

/// A state that was presented and accepted (now consumed).
#[derive(Debug)]
pub struct Pending {
    pub integration_id: IntegrationId,
    /// Who started the flow: the owner of a user-owned account, or the member
    /// connecting an organization's.
    pub user_id: String,
    pub organization_id: Option<String>,
    pub return_to: Option<String>,
    pub scopes: Vec<String>,
    pub pkce_verifier: Option<Secret>,
    pub intent: Intent,
    pub account_display_name: Option<Option<String>>,
    pub bound: Bound,
}

/// Why a presented state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRejection {
    Unknown,
    Expired,
    Reused,
    OtherIntegration,
}

impl Pending {
    /// The owner of the account this flow connects, for `integration` (its root).
    pub fn owner(&self, integration: &Integration) -> Owner {
        match (integration.ownership, &self.organization_id) {
            (Ownership::Organization, Some(org)) => Owner::organization(org.clone()),
            _ => Owner::user(self.user_id.clone(), self.organization_id.clone()),
        }
    }

    /// Who established the account, for an organization-owned one.
    pub fn established_by(&self, integration: &Integration) -> Option<&str> {
        (integration.ownership == Ownership::Organization).then_some(self.user_id.as_str())
    }
}

impl StateRejection {
    pub fn message(self) -> &'static str {
        match self {
            StateRejection::Unknown => "This sign-in link is not valid. Start connecting again from the application.",
            StateRejection::Expired => "This sign-in link has expired. Start connecting again from the application.",
            StateRejection::Reused => {
                "This sign-in link was already used. Start connecting again from the application."
            }
            StateRejection::OtherIntegration => "This sign-in link belongs to another integration.",
        }
    }
}

/// Consumes `raw_state` for an integration root of `slug` (the callback's path names
/// the provider; the state names the root) exactly once, before `now` plus its TTL.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn consume_state(
    state: &AppState,
    slug: &str,
    raw_state: &str,
    now: DateTime<Utc>,
) -> Result<Result<Pending, StateRejection>, ConnectError> {
    let hash = sha256_hex(raw_state);
    let row = sqlx::query(
        // The verifier is dropped as the state is consumed, unless `finish` exchanges the code later.
        "UPDATE oauth_states s SET used_at = $3, authorization_url_enc = NULL,
                pkce_verifier_enc = CASE WHEN s.binding = 'code_challenge' THEN s.pkce_verifier_enc END
         FROM (SELECT state_hash, pkce_verifier_enc FROM oauth_states WHERE state_hash = $1 FOR UPDATE) old,
              integrations i
         WHERE s.state_hash = old.state_hash AND i.id = s.integration_id AND i.slug = $2
           AND s.used_at IS NULL AND s.expires_at > $3
         RETURNING s.*, old.pkce_verifier_enc AS sealed_verifier",
    )
    .bind(&hash)
    .bind(slug)
    .bind(now)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        // Say why, without consuming anything.
        let seen = sqlx::query(
            "SELECT i.slug, s.used_at IS NOT NULL AS used
             FROM oauth_states s JOIN integrations i ON i.id = s.integration_id WHERE s.state_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&state.db)
        .await?;
        return Ok(Err(match seen {
            None => StateRejection::Unknown,
            Some(r) if r.get::<String, _>("slug") != slug => StateRejection::OtherIntegration,
            Some(r) if r.get::<bool, _>("used") => StateRejection::Reused,
            Some(_) => StateRejection::Expired,
        }));
    };
    Ok(Ok(pending(state, &row, &hash)?))
}

/// The flow stored in an `oauth_states` row (`s.*` with the PKCE verifier as `sealed_verifier`).
pub(super) fn pending(state: &AppState, row: &PgRow, hash: &str) -> Result<Pending, ConnectError> {
    let sealed: Option<Vec<u8>> = row.get("sealed_verifier");
    let pkce_verifier = sealed
        .map(|c| state.keyring().open_string(&c, aad(columns::PKCE_VERIFIER, hash)).map(Secret::new))
        .transpose()?;
    let bound = match row.get::<Option<String>, _>("code_challenge") {
        Some(challenge) if row.get::<String, _>("binding") == "code_challenge" => Bound::CodeChallenge(challenge),
        _ => Bound::Browser(row.get("browser_hash")),
    };
    Ok(Pending {
        integration_id: row.get("integration_id"),
        user_id: row.get("user_id"),
        organization_id: row.get("organization_id"),
        return_to: row.get("return_to"),
        scopes: row.get("scopes"),
        pkce_verifier,
        intent: Intent::from_columns(row.get("connection_intent"), row.get("connected_account_id")),
        account_display_name: row.get::<bool, _>("set_display_name").then(|| row.get("account_display_name")),
        bound,
    })
}
