//! Connected accounts as the domain changes them: tokens stored for an owner (a
//! connect, an import, an API write) and a disconnect, each with its event, its
//! token cache update and its place on the refresh schedule, in one place.

use sqlx::PgPool;

use crate::cache::TokenCache;
use crate::crypto::KeyRing;
use crate::events::{self, EventKind};
use crate::oauth::client;
use crate::outbound::ProviderClient;
use crate::owner::Owner;
use crate::refresh::Refresher;
use crate::store::accounts::{
    self, Account, AccountError, AccountState, Credential, Labels, Selector, Stored, TokenSet, WriteMode,
};
use crate::store::integrations::Integration;
use crate::store::organizations::{self, App};

/// Whether storing tokens emits `connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Always: the user has just connected (again).
    Connected,
    /// Only when the account was not connected before (an API write).
    IfNewlyConnected,
    /// Never: a bulk import from another system.
    Quietly,
}

/// One write of tokens for an owner ([`Connections::store`]).
#[derive(Debug)]
pub struct TokenWrite<'a> {
    pub owner: &'a Owner,
    /// The member who authorized an organization's account.
    pub established_by: Option<&'a str>,
    pub labels: Labels,
    /// How the account authenticates ([`Credential::OAuth`] for a connect or an import).
    pub credential: Credential,
    pub tokens: &'a TokenSet,
    pub state: AccountState,
    pub mode: WriteMode,
    pub announce: Announce,
}

#[derive(Clone)]
pub struct Connections {
    db: PgPool,
    ring: KeyRing,
    cache: TokenCache,
    refresher: Refresher,
    http: ProviderClient,
}

impl Connections {
    pub fn new(db: PgPool, ring: KeyRing, cache: TokenCache, refresher: Refresher, http: ProviderClient) -> Self {
        Connections { db, ring, cache, refresher, http }
    }

    /// Stores the tokens of `write` (scheduled for a refresh when connected), with the
    /// event its `announce` says, then updates the token cache. `Ok(None)`: no account
    /// to update ([`WriteMode::UpdateOnly`], [`WriteMode::Account`]). The integration
    /// root must be owned the way the write's owner is (the schema refuses anything else).
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
    pub async fn store(
        &self,
        integration: &Integration,
        write: TokenWrite<'_>,
    ) -> Result<Option<Account>, AccountError> {
        let TokenWrite { owner, established_by, labels, credential, tokens, state, mode, announce } = write;
        let now = crate::time::now();
        // A refresh token, or the account's own client, renews the token.
        let renewable = tokens.refresh_token.is_some() || matches!(credential, Credential::ClientCredentials { .. });
        let refresh_at = match state {
            AccountState::Connected => self.refresher.schedule(integration, now, tokens.expires_at, renewable),
            _ => None,
        };
        let mut tx = self.db.begin().await?;
        let written = accounts::write_tokens(
            &mut tx,
            &self.ring,
            &mode,
            &integration.id,
            owner,
            established_by,
            &labels,
            &credential,
            tokens,
            refresh_at,
            state,
        )
        .await?;
        let Some(Stored { account, previous }) = written else { return Ok(None) };
        let announced = match announce {
            Announce::Connected => true,
            Announce::IfNewlyConnected => previous != Some(AccountState::Connected),
            Announce::Quietly => false,
        };
        if announced && account.state == AccountState::Connected {
            let data = events::account_data(&account, integration, AccountState::Connected.as_str());
            events::emit(&mut tx, EventKind::Connected, &data).await?;
        }
        tx.commit().await?;
        // `put` tombstones instead when the account is not connected or the token not fresh.
        self.cache.put(&account, integration, now).await;
        Ok(Some(account))
    }

    /// Disconnects `owner`'s account of `integration` that `selector` names: deleted with
    /// its `disconnected` event, cache tombstoned, then revoked at the provider where
    /// possible. `Ok(None)` when there is none.
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
    pub async fn disconnect(
        &self,
        integration: &Integration,
        owner: &Owner,
        selector: &Selector,
    ) -> Result<Option<Account>, AccountError> {
        let slug = integration.slug.as_str();
        let mut tx = self.db.begin().await?;
        let Some(existing) = accounts::select(&mut *tx, &self.ring, &integration.id, owner, selector).await? else {
            return Ok(None);
        };
        let Some(gone) = accounts::delete(&mut tx, &self.ring, &existing.id).await? else { return Ok(None) };
        let data = events::account_data(&gone, integration, AccountState::Disconnected.as_str());
        events::emit(&mut tx, EventKind::Disconnected, &data).await?;
        tx.commit().await?;
        self.cache.tombstone(slug, &gone).await;
        // Revoke after the delete, so no stored row ever holds a revoked token. Revoking the
        // refresh token ends the whole grant at most providers (RFC 7009 §2.1).
        let token = gone
            .refresh_token
            .as_ref()
            .map(|t| (t, "refresh_token"))
            .or(gone.access_token.as_ref().map(|t| (t, "access_token")));
        let app = match &gone.client {
            Some(_) => App::Integration,
            None => organizations::app_for(&self.db, &self.ring, integration, gone.owner.organization_id())
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(account_id = %gone.id, error = %err, "no app to revoke with; the account is disconnected anyway");
                    App::Integration
                }),
        };
        // A client-credentials account revokes as its own client.
        let as_client = match &gone.client {
            Some(own) => client::OAuthClient::of_account(own),
            None => app.client(integration),
        };
        // An API key is the owner's own: Pipes forgets it, and only they can revoke it.
        let revocable = gone.auth_method != crate::auth_method::AuthMethod::ApiKey;
        let spec = integration.spec().ok();
        if let (Some((token, hint)), Some(oauth), true) =
            (token, spec.as_ref().and_then(|s| s.oauth.as_ref()), revocable)
        {
            if let Err(reason) = client::revoke(&self.http, integration, oauth, as_client, token, hint).await {
                tracing::warn!(account_id = %gone.id, integration = %slug, %reason, "token revocation failed; the account is disconnected anyway");
            }
        }
        tracing::info!(account_id = %gone.id, integration = %slug, "account disconnected");
        Ok(Some(gone))
    }
}
