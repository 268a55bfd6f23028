//! Connecting an account (DESIGN §3.2): the single-use OAuth `state` (only its
//! hash is stored, bound to integration, user, organization and `return_to`,
//! with the PKCE verifier sealed to it), the authorization URL, and the
//! callback's code exchange, store, event and cache write.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::connections::{Announce, TokenWrite};
use crate::crypto::{aad, random_token, sha256_hex, CryptoError};
use crate::events::{self, ConnectionFailure, EventKind};
use crate::ids::{AccountId, IntegrationId};
use crate::keys::columns;
use crate::oauth::client::{self, Grant};
use crate::oauth::response::TokenError;
use crate::owner::{Owner, Ownership};
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{Account, AccountError, AccountState, Labels, TokenSet, WriteMode};
use crate::store::integrations::{self, Integration, IntegrationError};

/// How long a user has to come back from the provider.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Consumed and expired states are kept this long (so a replay is told apart from a forgery), then purged.
const STATE_RETENTION: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Integration(#[from] IntegrationError),
    #[error("the PKCE verifier could not be sealed or opened: {0}")]
    Crypto(#[from] CryptoError),
    /// The integration cannot build an authorization URL (bad endpoints or config).
    #[error("the integration is misconfigured: {0}")]
    Misconfigured(String),
    /// The owner already has [`MAX_OPEN_STATES`] connect flows open.
    #[error("too many connect flows are open for this owner")]
    TooManyOpen,
}

/// Connect flows an owner may have open (started, not finished, not expired) at
/// once: enough for a few tabs and retries, and a bound on the rows a caller can make.
pub const MAX_OPEN_STATES: i64 = 20;

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

    fn from_columns(intent: Option<&str>, account: Option<String>) -> Self {
        match (intent, account) {
            (Some("add"), _) => Intent::Add,
            (Some("reauthorize"), Some(id)) => Intent::Reauthorize(id.into()),
            _ => Intent::Connect,
        }
    }

    /// Where the flow's tokens are written, for `integration`.
    fn write_mode(&self, integration: &Integration) -> WriteMode {
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
    integration.spec().map(|s| s.default_scopes.clone()).unwrap_or_default()
}

/// Records a new state and returns the provider's authorization URL.
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn begin(
    state: &AppState,
    integration: &Integration,
    req: &ConnectRequest,
    now: DateTime<Utc>,
) -> Result<Begun, ConnectError> {
    let spec = integration.spec()?;
    let raw_state = random_token(32);
    let state_hash = sha256_hex(&raw_state);
    let pkce = spec.pkce.then(client::new_pkce);
    let verifier = pkce
        .as_ref()
        .map(|p| state.keyring().seal_str(p.verifier.expose(), aad(columns::PKCE_VERIFIER, &state_hash)))
        .transpose()?;
    let scopes = requested_scopes(integration);
    let redirect_uri = state.config.redirect_uri(&integration.slug);
    let url = client::authorization_url(integration, &spec, &redirect_uri, &raw_state, &scopes, pkce.as_ref())
        .map_err(|e| ConnectError::Misconfigured(e.to_string()))?;
    let expires_at = now + chrono::Duration::from_std(STATE_TTL).unwrap_or_default();
    let (intent, account) = req.intent.column();
    let inserted = sqlx::query(
        "INSERT INTO oauth_states (state_hash, integration_id, user_id, organization_id, return_to, scopes, pkce_verifier_enc, expires_at, created_at,
                                   connection_intent, connected_account_id, set_display_name, account_display_name)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, $13, $14
         WHERE (SELECT count(*) FROM oauth_states
                WHERE user_id = $3 AND organization_id IS NOT DISTINCT FROM $4 AND used_at IS NULL AND expires_at > $9) < $10",
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
    .execute(&state.db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ConnectError::TooManyOpen);
    }
    // Old states are only useful for telling a replay from a forgery for a while.
    let horizon = now - chrono::Duration::from_std(STATE_RETENTION).unwrap_or_default();
    sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1").bind(horizon).execute(&state.db).await?;
    Ok(Begun { url, state: raw_state })
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
        // The verifier is dropped as the state is consumed: it is never needed again.
        "UPDATE oauth_states s SET used_at = $3, pkce_verifier_enc = NULL
         FROM (SELECT state_hash, pkce_verifier_enc FROM oauth_states WHERE state_hash = $1 FOR UPDATE) old,
              integrations i
         WHERE s.state_hash = old.state_hash AND i.id = s.integration_id AND i.slug = $2
           AND s.used_at IS NULL AND s.expires_at > $3
         RETURNING s.integration_id, s.user_id, s.organization_id, s.return_to, s.scopes, old.pkce_verifier_enc,
                   s.connection_intent, s.connected_account_id, s.set_display_name, s.account_display_name",
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
    let sealed: Option<Vec<u8>> = row.get("pkce_verifier_enc");
    let pkce_verifier = sealed
        .map(|c| state.keyring().open_string(&c, aad(columns::PKCE_VERIFIER, &hash)).map(Secret::new))
        .transpose()?;
    Ok(Ok(Pending {
        integration_id: row.get("integration_id"),
        user_id: row.get("user_id"),
        organization_id: row.get("organization_id"),
        return_to: row.get("return_to"),
        scopes: row.get("scopes"),
        pkce_verifier,
        intent: Intent::from_columns(row.get("connection_intent"), row.get("connected_account_id")),
        account_display_name: row.get::<bool, _>("set_display_name").then(|| row.get("account_display_name")),
    }))
}

/// What the provider sent back to the callback.
#[derive(Debug, Default, Clone)]
pub struct ProviderAnswer {
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

#[derive(Debug)]
pub enum Outcome {
    Connected(Box<Account>),
    Failed(ConnectionFailure),
}

fn failure(
    code: &str,
    reason: impl Into<String>,
    provider_error: Option<String>,
    description: Option<String>,
) -> ConnectionFailure {
    ConnectionFailure {
        error_code: code.to_owned(),
        error_reason: reason.into(),
        provider_error,
        provider_error_description: description,
    }
}

/// Finishes a connect attempt: exchanges the code and stores the account with
/// its `connected` event, or records `connection_failed` and stores nothing.
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn complete(
    state: &AppState,
    integration: &Integration,
    pending: &Pending,
    answer: ProviderAnswer,
) -> Result<Outcome, ConnectError> {
    let result = match (&answer.error, &answer.code) {
        (Some(error), _) => {
            let (code, reason) = if error == "access_denied" {
                ("access_denied", "The user did not grant access.")
            } else {
                ("provider_error", "The provider refused the authorization request.")
            };
            Err(failure(code, reason, Some(error.clone()), answer.error_description.clone()))
        }
        (None, None) => Err(failure("missing_code", "The provider sent neither a code nor an error.", None, None)),
        (None, Some(code)) => exchange(state, integration, pending, code).await?,
    };
    let now = crate::time::now();
    match result {
        Ok(tokens) => {
            let owner = pending.owner(integration);
            let write = TokenWrite {
                owner: &owner,
                established_by: pending.established_by(integration),
                labels: Labels { account_identifier: None, account_display_name: pending.account_display_name.clone() },
                tokens: &tokens,
                state: AccountState::Connected,
                mode: pending.intent.write_mode(integration),
                announce: Announce::Connected,
            };
            let stored = match state.connections.store(integration, write).await {
                Ok(Some(account)) => Ok(account),
                Ok(None) => Err(failure(
                    "connected_account_not_found",
                    "The account to reauthorize is no longer connected.",
                    None,
                    None,
                )),
                Err(AccountError::MultipleUnavailable) => Err(failure(
                    "multiple_connections_unavailable",
                    "This integration allows one account per owner, and one is connected.",
                    None,
                    None,
                )),
                Err(AccountError::LimitReached) => Err(failure(
                    "connected_account_limit_reached",
                    "The owner has as many accounts for this integration as allowed.",
                    None,
                    None,
                )),
                Err(other) => return Err(other.into()),
            };
            match stored {
                Ok(account) => {
                    tracing::info!(account_id = %account.id, integration = %integration.slug, "account connected");
                    Ok(Outcome::Connected(Box::new(account)))
                }
                Err(fail) => failed(state, integration, pending, fail, now).await,
            }
        }
        Err(fail) => failed(state, integration, pending, fail, now).await,
    }
}

/// Records a failed attempt (`connection_failed`) and stores nothing.
async fn failed(
    state: &AppState,
    integration: &Integration,
    pending: &Pending,
    fail: ConnectionFailure,
    now: DateTime<Utc>,
) -> Result<Outcome, ConnectError> {
    let mut tx = state.db.begin().await?;
    let data = events::connection_failed_data(integration, &pending.owner(integration), &fail, now);
    let kind = if pending.intent == Intent::Add { EventKind::AddFailed } else { EventKind::ConnectionFailed };
    events::emit(&mut tx, kind, &data).await?;
    tx.commit().await?;
    tracing::info!(integration = %integration.slug, error = %fail.error_code, "connection failed");
    Ok(Outcome::Failed(fail))
}

/// The code exchange (RFC 6749 §4.1.3), classified.
async fn exchange(
    state: &AppState,
    integration: &Integration,
    pending: &Pending,
    code: &str,
) -> Result<Result<TokenSet, ConnectionFailure>, ConnectError> {
    let spec = integration.spec()?;
    let redirect_uri = state.config.redirect_uri(&integration.slug);
    let grant = Grant::Code { code, redirect_uri: &redirect_uri, pkce_verifier: pending.pkce_verifier.as_ref() };
    // `expires_in` counts from the provider's answer, no earlier than the request was sent.
    let requested_at = crate::time::now();
    match client::request_token(&state.http, integration, &spec, grant).await {
        Ok(grant) => Ok(Ok(TokenSet {
            expires_at: grant.expires_at(requested_at),
            access_token: grant.access_token,
            refresh_token: grant.refresh_token,
            scopes: grant.scopes.filter(|s| !s.is_empty()).unwrap_or_else(|| pending.scopes.clone()),
        })),
        Err(err) => {
            tracing::warn!(integration = %integration.slug, error = %err.label(), "code exchange failed");
            let (provider_error, description) = match &err {
                TokenError::InvalidGrant { code, description }
                | TokenError::InvalidClient { code, description }
                | TokenError::Rejected { code, description, .. } => (Some(code.clone()), description.clone()),
                TokenError::Transient { reason, .. } => (Some(reason.clone()), None),
                TokenError::Config(_) => (None, None),
            };
            if let TokenError::InvalidClient { code, .. } = &err {
                // The same classification as a refresh (DESIGN §2.4): the credentials are wrong.
                integrations::mark_invalid(
                    &state.db,
                    &integration.id,
                    &format!("the provider answered {code} to a code exchange"),
                )
                .await?;
            }
            Ok(Err(failure(
                "exchange_failed",
                format!("The provider's token endpoint refused the code ({}).", err.label()),
                provider_error,
                description,
            )))
        }
    }
}
