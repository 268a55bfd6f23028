//! Connected accounts as the domain changes them: tokens stored for an owner (a
//! connect, an import, an API write) and a disconnect, each with its event, its
//! token cache update and its place on the refresh schedule, in one place.

use sqlx::PgPool;

use crate::cache::TokenCache;
use crate::crypto::KeyRing;
use crate::events::{self, EventKind};
use crate::ids::AccountId;
use crate::oauth::client;
use crate::outbound::ProviderClient;
use crate::owner::Owner;
use crate::refresh::Refresher;
use crate::store::accounts::{self, Account, AccountError, AccountState, TokenSet, WriteMode};
use crate::store::integrations::Integration;

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

    /// Stores `tokens` for `owner` in `state` (scheduled for a refresh when connected),
    /// with its event as `announce` says, then updates the token cache. `established_by`
    /// is the member who authorized an organization's account. With `only`, the owner's
    /// account must be that one. `Ok(None)`: no account to update
    /// ([`WriteMode::UpdateOnly`]), or not the one `only` names. The integration root
    /// must be owned the way `owner` is (the schema refuses anything else).
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &self,
        integration: &Integration,
        owner: &Owner,
        established_by: Option<&str>,
        tokens: &TokenSet,
        state: AccountState,
        mode: WriteMode,
        announce: Announce,
        only: Option<&AccountId>,
    ) -> Result<Option<Account>, AccountError> {
        let now = crate::time::now();
        let refresh_at = match state {
            AccountState::Connected => {
                self.refresher.schedule(integration, now, tokens.expires_at, tokens.refresh_token.is_some())
            }
            _ => None,
        };
        let mut tx = self.db.begin().await?;
        let existing = match (announce, only) {
            (Announce::IfNewlyConnected, _) | (_, Some(_)) => {
                accounts::find_for_owner(&mut *tx, &self.ring, &integration.id, owner).await?
            }
            _ => None,
        };
        if only.is_some_and(|id| existing.as_ref().is_none_or(|a| a.id != *id)) {
            return Ok(None);
        }
        let was_connected = existing.is_some_and(|a| a.state == AccountState::Connected);
        let written = accounts::write_tokens(
            &mut tx,
            &self.ring,
            mode,
            &integration.id,
            owner,
            established_by,
            tokens,
            refresh_at,
            state,
        )
        .await?;
        let Some(account) = written else { return Ok(None) };
        let announced = match announce {
            Announce::Connected => true,
            Announce::IfNewlyConnected => !was_connected,
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

    /// Disconnects `owner`'s account of `integration`: deleted with its `disconnected`
    /// event, cache tombstoned, then revoked at the provider where possible. `Ok(None)`
    /// when there is none (or it is not the one `only` names).
    #[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
    pub async fn disconnect(
        &self,
        integration: &Integration,
        owner: &Owner,
        only: Option<&AccountId>,
    ) -> Result<Option<Account>, AccountError> {
        let slug = integration.slug.as_str();
        let mut tx = self.db.begin().await?;
        let Some(existing) = accounts::find_for_owner(&mut *tx, &self.ring, &integration.id, owner).await? else {
            return Ok(None);
        };
        if only.is_some_and(|id| existing.id != *id) {
            return Ok(None);
        }
        let Some(gone) = accounts::delete(&mut tx, &self.ring, &existing.id).await? else { return Ok(None) };
        let data = events::account_data(&gone, integration, AccountState::Disconnected.as_str());
        events::emit(&mut tx, EventKind::Disconnected, &data).await?;
        tx.commit().await?;
        self.cache.tombstone(slug, &gone.owner, gone.token_version).await;
        // Revoke after the delete, so no stored row ever holds a revoked token. Revoking the
        // refresh token ends the whole grant at most providers (RFC 7009 §2.1).
        let token = gone
            .refresh_token
            .as_ref()
            .map(|t| (t, "refresh_token"))
            .or(gone.access_token.as_ref().map(|t| (t, "access_token")));
        if let (Some((token, hint)), Ok(spec)) = (token, integration.spec()) {
            if let Err(reason) = client::revoke(&self.http, integration, &spec, token, hint).await {
                tracing::warn!(account_id = %gone.id, integration = %slug, %reason, "token revocation failed; the account is disconnected anyway");
            }
        }
        tracing::info!(account_id = %gone.id, integration = %slug, "account disconnected");
        Ok(Some(gone))
    }
}
