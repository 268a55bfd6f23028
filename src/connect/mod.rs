//! Connecting an account (DESIGN §3.2): the flow's state and authorization URL
//! (`state`), and the callback's code exchange, store, event and cache write.

pub mod bound;
pub mod direct;
mod state;
pub use state::{
    begin, consume_state, forget_expired, requested_scopes, Begun, Binding, Bound, ConnectRequest, Intent, Pending,
    StateRejection, MAX_OPEN_PER_WIDGET_TOKEN, MAX_OPEN_STATES, STATE_TTL,
};

/// Where an API-started flow sends the browser first: Pipes' confirmation page for `ticket`.
pub fn confirmation_url(config: &crate::config::Config, ticket: &str) -> url::Url {
    let mut url = config.public_url.clone();
    url.set_path(&format!("/connect/{ticket}"));
    url.set_query(None);
    url
}

use chrono::{DateTime, Utc};

use crate::connections::{Announce, TokenWrite};
use crate::crypto::CryptoError;
use crate::events::{self, ConnectionFailure, EventKind};
use crate::oauth::client::{self, Grant};
use crate::oauth::response::TokenError;
use crate::state::AppState;
use crate::store::accounts::{Account, AccountError, AccountState, Credential, Labels, TokenSet};
use crate::store::integrations::{self, Integration, IntegrationError};

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
    /// The organization's configuration or app is missing.
    #[error(transparent)]
    Organization(#[from] crate::store::organizations::ConfigurationError),
    /// The organization turned the provider off for its members.
    #[error("the organization `{organization_id}` has disabled this integration")]
    DisabledForOrganization { organization_id: String },
    /// The owner already has [`MAX_OPEN_STATES`] connect flows open.
    #[error("too many connect flows are open for this owner")]
    TooManyOpen,
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

pub fn failure(
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
        Ok((tokens, names)) => {
            let owner = pending.owner(integration);
            let write = TokenWrite {
                credential: Credential::OAuth,
                owner: &owner,
                established_by: pending.established_by(integration),
                labels: Labels {
                    // The provider's account, when its answer names it: the same account again is that account.
                    account_identifier: names.identifier.map(Some),
                    account_display_name: pending.account_display_name.clone(),
                    provider_display_name: names.display_name,
                },
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
pub async fn failed(
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
) -> Result<Result<(TokenSet, client::AccountNames), ConnectionFailure>, ConnectError> {
    let spec = integration.spec()?;
    let redirect_uri = state.config.redirect_uri(&integration.slug);
    let grant = Grant::Code { code, redirect_uri: &redirect_uri, pkce_verifier: pending.pkce_verifier.as_ref() };
    // `expires_in` counts from the provider's answer, no earlier than the request was sent.
    let requested_at = crate::time::now();
    let app = crate::store::organizations::app_for(
        &state.db,
        state.keyring(),
        integration,
        pending.organization_id.as_deref(),
    )
    .await?;
    let oauth = spec.oauth().map_err(|e| ConnectError::Misconfigured(e.to_string()))?;
    match client::request_token(&state.http, integration, oauth, app.client(integration), grant).await {
        Ok(grant) => {
            let names = match app.client(integration).urls(integration) {
                Ok(urls) => client::account_names(&state.http, &spec, urls, &grant).await,
                Err(_) => client::AccountNames::default(),
            };
            Ok(Ok((
                TokenSet {
                    expires_at: grant.expires_at(requested_at),
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                    scopes: grant.scopes.filter(|s| !s.is_empty()).unwrap_or_else(|| pending.scopes.clone()),
                },
                names,
            )))
        }
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
