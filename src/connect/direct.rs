//! Connecting an account without a browser: an API key its owner gives (checked first
//! where the provider has a cheap request that needs a good key), or the owner's own
//! OAuth client, exchanged for a token with the `client_credentials` grant. Nothing is
//! stored unless the provider accepted the credential.

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::connections::{Announce, TokenWrite};
use crate::oauth::client::{self, Grant, OAuthClient};
use crate::oauth::response::TokenError;
use crate::owner::Owner;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{Account, AccountError, AccountState, Credential, Labels, OwnClient, TokenSet, WriteMode};
use crate::store::integrations::Integration;

/// Longest the verification request may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The provider refused the API key (HTTP 401 or 403 to the verification request).
    #[error("the provider refused the API key (HTTP {0})")]
    KeyRefused(u16),
    /// The provider refused the client (`invalid_client` and the like).
    #[error("the provider refused the client credentials ({0})")]
    ClientRefused(String),
    /// The provider could not be asked, or answered something else: nothing was stored.
    #[error("the provider could not check the credential: {0}")]
    ProviderUnavailable(String),
    /// The integration cannot say where to send the request.
    #[error("the integration is misconfigured: {0}")]
    Misconfigured(String),
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// A credential write for an owner: where it lands and its labels.
pub struct Placement<'a> {
    pub owner: &'a Owner,
    /// The member connecting an organization's account.
    pub established_by: Option<&'a str>,
    pub labels: Labels,
    pub mode: WriteMode,
    /// Whether a new account is announced (an import is quiet).
    pub announce: Announce,
}

/// Stores `key` for the owner once the provider accepted it. `Ok(None)`: the account the
/// write names does not exist.
pub async fn connect_api_key(
    state: &AppState,
    integration: &Integration,
    placement: Placement<'_>,
    key: Secret,
) -> Result<Option<Account>, DirectError> {
    verify_key(state, integration, &key).await?;
    let tokens = TokenSet { access_token: key, refresh_token: None, expires_at: None, scopes: Vec::new() };
    store(state, integration, placement, Credential::ApiKey, &tokens).await
}

/// Obtains a token with the owner's client and stores both. `Ok(None)`: the account the
/// write names does not exist.
pub async fn connect_client(
    state: &AppState,
    integration: &Integration,
    placement: Placement<'_>,
    client: OwnClient,
    config: BTreeMap<String, String>,
) -> Result<Option<Account>, DirectError> {
    let spec = integration.spec().map_err(|e| DirectError::Misconfigured(e.to_string()))?;
    let requested_at = crate::time::now();
    let grant = Grant::ClientCredentials { scopes: &integration.scopes };
    let oauth = spec.oauth().map_err(|e| DirectError::Misconfigured(e.to_string()))?;
    let answer = client::request_token(&state.http, integration, oauth, OAuthClient::of_account(&client), grant).await;
    let grant = match answer {
        Ok(grant) => grant,
        Err(TokenError::InvalidClient { code, .. } | TokenError::InvalidGrant { code, .. }) => {
            return Err(DirectError::ClientRefused(code))
        }
        Err(TokenError::Config(message)) => return Err(DirectError::Misconfigured(message)),
        Err(other) => return Err(DirectError::ProviderUnavailable(other.label())),
    };
    let tokens = TokenSet {
        expires_at: grant.expires_at(requested_at),
        access_token: grant.access_token,
        // §4.4.3: no refresh token; the client itself renews the token.
        refresh_token: None,
        scopes: grant.scopes.filter(|s| !s.is_empty()).unwrap_or_else(|| integration.scopes.clone()),
    };
    store(state, integration, placement, Credential::ClientCredentials { client, config }, &tokens).await
}

async fn store(
    state: &AppState,
    integration: &Integration,
    placement: Placement<'_>,
    credential: Credential,
    tokens: &TokenSet,
) -> Result<Option<Account>, DirectError> {
    let write = TokenWrite {
        owner: placement.owner,
        established_by: placement.established_by,
        labels: placement.labels,
        credential,
        tokens,
        state: AccountState::Connected,
        mode: placement.mode,
        announce: placement.announce,
    };
    let stored = state.connections.store(integration, write).await?;
    if let Some(account) = &stored {
        tracing::info!(account_id = %account.id, integration = %integration.slug, auth_method = %integration.auth_method, "credential stored");
    }
    Ok(stored)
}

/// Sends the provider's verification request with `key`, where there is one: 2xx
/// accepts the key, 401 and 403 refuse it, anything else leaves it unchecked and refused
/// for now (the provider must answer first).
async fn verify_key(state: &AppState, integration: &Integration, key: &Secret) -> Result<(), DirectError> {
    let spec = integration.spec().map_err(|e| DirectError::Misconfigured(e.to_string()))?;
    let Some(api_key) = spec.api_key.as_ref() else { return Ok(()) };
    let Some(verify) = api_key.verify.as_ref() else { return Ok(()) };
    let url = match &integration.custom_provider {
        // Checked when the provider was saved (an internal host only where allowed).
        Some(_) => Url::parse(&verify.url).map_err(|e| DirectError::Misconfigured(e.to_string()))?,
        None => spec
            .verify_url(&integration.settings)
            .map_err(|e| DirectError::Misconfigured(e.to_string()))?
            .ok_or_else(|| DirectError::Misconfigured("no verification URL".into()))?,
    };
    if let Err(err) = crate::outbound::check_url(&url, crate::outbound::Schemes::Https, state.http.allow_private()) {
        return Err(DirectError::Misconfigured(format!("api_key.verify.url {err}")));
    }
    let method = reqwest::Method::from_bytes(verify.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let request = api_key.attach(state.http.http().request(method, url), key.expose()).timeout(VERIFY_TIMEOUT);
    let response = request
        .send()
        .await
        .map_err(|e| DirectError::ProviderUnavailable(format!("verification request failed: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if matches!(status.as_u16(), 401 | 403) {
        Err(DirectError::KeyRefused(status.as_u16()))
    } else {
        Err(DirectError::ProviderUnavailable(format!("verification answered HTTP {}", status.as_u16())))
    }
}
