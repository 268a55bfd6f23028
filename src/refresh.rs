//! Refreshing one account's token: the single flight shared by the workers
//! and on-demand reads (DESIGN §2.3), and the classification of the outcome
//! (DESIGN §2.4).
//!
//! Two layers keep refreshes of one account from racing: an in-process lock
//! (so 200 concurrent reads in one process make one attempt) and a lease on
//! the account's row in PostgreSQL, with a fencing check on write (so two
//! processes never present the same refresh token). A crashed holder's lease
//! expires after `PIPES_REFRESH_LEASE`. Whoever waits re-reads the account and
//! uses the token the holder stored.

// No panic here (the same lints as `crate::oauth`): after a provider's answer, a panic
// loses the rotated refresh token, and presenting the old one revokes the grant.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::PgPool;

use crate::cache::TokenCache;
use crate::crypto::KeyRing;
use crate::events::{self, EventKind};
use crate::ids::AccountId;
use crate::metrics as m;
use crate::oauth::client::{request_token, Grant, OAuthClient};
use crate::oauth::response::TokenError;
use crate::store::accounts::{
    self, Account, AccountError, AccountState, LeaseBatch, StoreBatch, StoreRequest, TokenSet,
};
use crate::store::group::{Answer, Group};
use crate::store::integrations::{self, Integration};
use crate::store::organizations::{self, App, ConfigurationError};

/// Why a refresh is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A read found the token not fresh: refresh unless it is fresh by now.
    OnDemand,
    /// A scheduled job: refresh unless `refresh_at` moved into the future meanwhile.
    Scheduled,
    /// The provider refused token `version` before its time (the relay saw a 401):
    /// refresh unless a newer token was stored meanwhile.
    Rejected { version: i64 },
}

#[derive(Debug)]
pub enum RefreshOutcome {
    /// A new token was stored.
    Refreshed(Account),
    /// Nothing to do: the token is fresh (someone else refreshed it).
    AlreadyFresh(Account),
    /// The grant is dead; the account now needs reauthorization.
    NeedsReauthorization,
    /// The integration's credentials were refused; it is marked invalid.
    IntegrationInvalid,
    /// Try again later.
    Transient { reason: String, retry_after: Option<Duration> },
    /// The account no longer exists or is not connected.
    NotConnected(Option<Account>),
    /// The account belongs to another integration (a forged job): no provider was asked.
    OtherIntegration,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Refresher {
    db: PgPool,
    ring: KeyRing,
    http: crate::outbound::ProviderClient,
    cache: TokenCache,
    lease: Duration,
    wait_for_holder: Duration,
    min_validity: Duration,
    refresh_lead: Duration,
    locks: Arc<Mutex<HashMap<AccountId, Arc<tokio::sync::Mutex<()>>>>>,
    /// Leases and stores of concurrent refreshes, each group one statement.
    leases: Arc<Group<LeaseBatch>>,
    stores: Arc<Group<StoreBatch>>,
}

/// Requests per batched statement at most.
const GROUP_LIMIT: usize = 256;

impl Refresher {
    pub fn new(
        db: PgPool,
        ring: KeyRing,
        http: crate::outbound::ProviderClient,
        cache: TokenCache,
        config: &crate::config::Config,
    ) -> Self {
        Refresher {
            leases: Arc::new(Group::new(LeaseBatch { db: db.clone(), lease: config.refresh_lease }, GROUP_LIMIT)),
            stores: Arc::new(Group::new(StoreBatch { db: db.clone() }, GROUP_LIMIT)),
            db,
            ring,
            http,
            cache,
            lease: config.refresh_lease,
            wait_for_holder: config.provider_timeout.saturating_add(Duration::from_secs(2)),
            min_validity: config.min_validity,
            refresh_lead: config.refresh_lead,
            locks: Arc::default(),
        }
    }

    /// When to refresh a token expiring at `expires_at` (with jitter).
    pub fn schedule(
        &self,
        integration: &Integration,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        has_refresh_token: bool,
    ) -> Option<DateTime<Utc>> {
        let tokens_expire =
            integration.spec().ok().and_then(|s| s.oauth.as_ref().map(|o| o.tokens_expire)).unwrap_or(true);
        let jitter = rand::thread_rng().gen::<f64>();
        crate::policy::refresh_at(now, expires_at, has_refresh_token, tokens_expire, self.refresh_lead, jitter)
    }

    fn needs_refresh(&self, account: &Account, reason: Reason, now: DateTime<Utc>) -> bool {
        match reason {
            Reason::OnDemand => !account.is_fresh(now, self.min_validity),
            Reason::Scheduled => {
                !account.is_fresh(now, self.min_validity) || account.refresh_at.is_some_and(|at| at <= now)
            }
            Reason::Rejected { version } => account.token_version <= version,
        }
    }

    /// Refreshes `account_id` under the single flight.
    #[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, integration = %integration.slug))]
    pub async fn refresh(
        &self,
        integration: &Integration,
        account_id: &AccountId,
        reason: Reason,
    ) -> Result<RefreshOutcome, RefreshError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(account_id.clone()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            self.refresh_locked(integration, account_id, reason).await
        };
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(account_id);
        }
        result
    }

    async fn refresh_locked(
        &self,
        integration: &Integration,
        account_id: &AccountId,
        reason: Reason,
    ) -> Result<RefreshOutcome, RefreshError> {
        let lease_id = ulid::Ulid::new().to_string();
        let deadline = crate::time::after(self.wait_for_holder);
        let mut pause = Duration::from_millis(25);
        let account = loop {
            let now = crate::time::now();
            match self.try_lease(account_id, &lease_id).await? {
                Some(account) => break account,
                None => {
                    // Someone else holds the lease: wait for the token they store.
                    let current = accounts::find_by_id(&self.db, &self.ring, account_id).await?;
                    match current {
                        None => return Ok(RefreshOutcome::NotConnected(None)),
                        Some(a) if a.state != AccountState::Connected => {
                            return Ok(RefreshOutcome::NotConnected(Some(a)))
                        }
                        Some(a) if !self.needs_refresh(&a, reason, now) => return Ok(RefreshOutcome::AlreadyFresh(a)),
                        Some(_) if Instant::now() >= deadline => {
                            return Ok(RefreshOutcome::Transient {
                                reason: "refresh_in_progress".into(),
                                retry_after: Some(Duration::from_secs(1)),
                            })
                        }
                        Some(_) => {
                            tokio::time::sleep(pause).await;
                            pause = pause.saturating_mul(2).min(Duration::from_millis(250));
                        }
                    }
                }
            }
        };
        let outcome = self.refresh_leased(integration, account, &lease_id, reason).await;
        if !matches!(outcome, Ok(RefreshOutcome::Refreshed(_)) | Ok(RefreshOutcome::NeedsReauthorization)) {
            // Stored results clear the lease themselves; everything else frees it here.
            accounts::release_lease(&self.db, account_id, &lease_id).await?;
        }
        outcome
    }

    async fn refresh_leased(
        &self,
        integration: &Integration,
        account: Account,
        lease_id: &str,
        reason: Reason,
    ) -> Result<RefreshOutcome, RefreshError> {
        // The lease was taken just before this; a little margin keeps us inside it.
        let store_until = crate::time::after(self.lease.saturating_sub(Duration::from_secs(2)));
        let provider = integration.slug.clone();
        let now = crate::time::now();
        if account.integration_id != integration.id {
            // Never present one integration's client credentials with another's grant.
            return Ok(RefreshOutcome::OtherIntegration);
        }
        if account.state != AccountState::Connected {
            return Ok(RefreshOutcome::NotConnected(Some(account)));
        }
        if !self.needs_refresh(&account, reason, now) {
            metrics::counter!(m::REFRESH_ATTEMPTS, "provider" => provider, "outcome" => "skipped_fresh").increment(1);
            return Ok(RefreshOutcome::AlreadyFresh(account));
        }
        // A refresh token is presented with the app that obtained it: the integration's,
        // or (organization credentials) the account's organization's.
        let app = match (&account.client, &account.refresh_token) {
            (None, Some(_)) => {
                match organizations::app_for(&self.db, &self.ring, integration, account.owner.organization_id()).await {
                    Ok(app) => app,
                    Err(ConfigurationError::Db(err)) => return Err(err.into()),
                    Err(ConfigurationError::Crypto(err)) => {
                        return Ok(RefreshOutcome::Transient { reason: err.to_string(), retry_after: None })
                    }
                    Err(_) => {
                        // The organization no longer has an app to refresh with.
                        self.mark_reauthorization(integration, &account, "organization_credentials_missing").await?;
                        return Ok(RefreshOutcome::NeedsReauthorization);
                    }
                }
            }
            _ => App::Integration,
        };
        // What renews the token: the account's own client (client credentials), else its
        // refresh token.
        let (as_client, grant) = match (&account.client, &account.refresh_token) {
            (Some(own), _) => (OAuthClient::of_account(own), Grant::ClientCredentials { scopes: &integration.scopes }),
            (None, Some(refresh_token)) => {
                (app.client(integration), Grant::Refresh { refresh_token, scopes: &account.scopes })
            }
            (None, None) => {
                if account.is_fresh(now, self.min_validity) {
                    return Ok(RefreshOutcome::AlreadyFresh(account));
                }
                // Expired and nothing to refresh with: only the user can fix this.
                self.mark_reauthorization(integration, &account, "expired_without_refresh_token").await?;
                return Ok(RefreshOutcome::NeedsReauthorization);
            }
        };
        let spec = match integration.spec() {
            Ok(spec) => spec,
            Err(err) => return Ok(RefreshOutcome::Transient { reason: err.to_string(), retry_after: None }),
        };
        let oauth = match spec.oauth() {
            Ok(oauth) => oauth,
            Err(err) => return Ok(RefreshOutcome::Transient { reason: err.to_string(), retry_after: None }),
        };
        let started = Instant::now();
        // `expires_in` counts from when the provider answered, which is no earlier than this:
        // counting from the response instead would overstate the lifetime by the round trip.
        let requested_at = crate::time::now();
        let result = request_token(&self.http, integration, oauth, as_client, grant).await;
        metrics::histogram!(m::REFRESH_DURATION, "provider" => provider.clone())
            .record(started.elapsed().as_secs_f64());
        let attempt = |outcome: &'static str| {
            metrics::counter!(m::REFRESH_ATTEMPTS, "provider" => provider.clone(), "outcome" => outcome).increment(1)
        };
        match result {
            Ok(grant) => {
                let now = crate::time::now();
                let expires_at = grant.expires_at(requested_at);
                let has_refresh =
                    grant.refresh_token.is_some() || account.refresh_token.is_some() || account.client.is_some();
                let tokens = TokenSet {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                    expires_at,
                    scopes: grant.scopes.unwrap_or_else(|| account.scopes.clone()),
                };
                let refresh_at = self.schedule(integration, now, expires_at, has_refresh);
                match self.store_while_leased(&account, lease_id, &tokens, refresh_at, store_until).await? {
                    Some(stored) => {
                        attempt("success");
                        if let Some(due) = account.refresh_at {
                            metrics::histogram!(m::REFRESH_LAG)
                                .record(now.signed_duration_since(due).num_milliseconds().max(0) as f64 / 1000.0);
                        }
                        self.cache.put(&stored, integration, now).await;
                        Ok(RefreshOutcome::Refreshed(stored))
                    }
                    None => {
                        // Fenced off: the lease expired and another holder took over, or the
                        // account changed state meanwhile. Their write wins.
                        tracing::warn!(account_id = %account.id, "refresh result discarded by the fencing check");
                        attempt("transient_error");
                        Ok(RefreshOutcome::Transient { reason: "fenced".into(), retry_after: None })
                    }
                }
            }
            Err(TokenError::InvalidGrant { code, .. }) => {
                attempt("reauthorization_needed");
                self.mark_reauthorization(integration, &account, &code).await?;
                Ok(RefreshOutcome::NeedsReauthorization)
            }
            Err(TokenError::InvalidClient { code, .. })
                if account.client.is_some() || matches!(app, App::Organization { .. }) =>
            {
                // The account's own client, or its organization's app, was refused: only its
                // owner can give another, and the integration's other accounts are unaffected.
                attempt("reauthorization_needed");
                self.mark_reauthorization(integration, &account, &code).await?;
                Ok(RefreshOutcome::NeedsReauthorization)
            }
            Err(TokenError::InvalidClient { code, .. }) => {
                attempt("integration_invalid");
                tracing::error!(integration = %integration.slug, code = %code, "provider refused the integration's client credentials");
                integrations::mark_invalid(
                    &self.db,
                    &integration.id,
                    &format!("the provider answered {code} to a refresh"),
                )
                .await?;
                metrics::gauge!(m::INTEGRATIONS_INVALID, "provider" => provider.clone()).set(1.0);
                Ok(RefreshOutcome::IntegrationInvalid)
            }
            Err(err) => {
                attempt("transient_error");
                let label = err.label();
                tracing::warn!(account_id = %account.id, error = %label, "refresh failed; will retry");
                accounts::record_transient_failure(&self.db, &account.id, lease_id, &label).await?;
                let retry_after = match err {
                    TokenError::Transient { retry_after, .. } => retry_after,
                    _ => None,
                };
                Ok(RefreshOutcome::Transient { reason: label, retry_after })
            }
        }
    }

    /// Statements and requests of the lease and store groups so far:
    /// `((lease statements, leases), (store statements, stores))`.
    pub fn group_counts(&self) -> ((u64, u64), (u64, u64)) {
        (self.leases.counts(), self.stores.counts())
    }

    /// Takes the account's lease ([`accounts::try_lease`]), in one statement with the
    /// other refreshes asking at the same moment.
    async fn try_lease(&self, account_id: &AccountId, lease_id: &str) -> Result<Option<Account>, AccountError> {
        match self.leases.submit((account_id.to_owned(), lease_id.to_owned())).await {
            Answer::Done(row) => row.map(|r| Account::from_row(&r, &self.ring)).transpose(),
            Answer::Failed(err) => Err(AccountError::Db(err)),
            Answer::Alone => accounts::try_lease(&self.db, &self.ring, account_id, lease_id, self.lease).await,
        }
    }

    /// Stores a refresh result ([`accounts::store_refreshed`]), in one statement with the
    /// other results arriving at the same moment.
    async fn store_refreshed(
        &self,
        leased: &Account,
        lease_id: &str,
        tokens: &TokenSet,
        refresh_at: Option<DateTime<Utc>>,
    ) -> Result<Option<Account>, AccountError> {
        let account_id = &leased.id;
        if let Some(request) = StoreRequest::new(&self.ring, account_id, lease_id, tokens, refresh_at)? {
            match self.stores.submit(request).await {
                Answer::Done(row) => return Ok(row.map(|r| Account::after_store(leased, tokens, &r))),
                Answer::Failed(err) => return Err(AccountError::Db(err)),
                Answer::Alone => {}
            }
        }
        accounts::store_refreshed(&self.db, &self.ring, account_id, lease_id, tokens, refresh_at).await
    }

    /// Stores a refresh result, retrying while PostgreSQL fails and the lease lasts. The
    /// provider has already rotated the refresh token: giving up would lose the only copy
    /// of the new one, and presenting the old one again makes a rotating provider revoke
    /// the grant. Past the lease another holder may refresh anyway, so the retries stop
    /// there; the fencing check keeps a late write from overwriting theirs.
    async fn store_while_leased(
        &self,
        leased: &Account,
        lease_id: &str,
        tokens: &TokenSet,
        refresh_at: Option<DateTime<Utc>>,
        until: Instant,
    ) -> Result<Option<Account>, AccountError> {
        use backon::Retryable;
        let backoff = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_total_delay(Some(until.saturating_duration_since(Instant::now())))
            .without_max_times();
        (|| self.store_refreshed(leased, lease_id, tokens, refresh_at))
            .retry(backoff)
            .when(|err| matches!(err, AccountError::Db(_)) && Instant::now() < until)
            .notify(|err, _| tracing::warn!(account_id = %leased.id, error = %err, "storing a refreshed token failed; retrying while the lease lasts"))
            .await
    }

    /// `needs_reauthorization`, its event in the same transaction, the cache entry dropped.
    async fn mark_reauthorization(
        &self,
        integration: &Integration,
        account: &Account,
        reason: &str,
    ) -> Result<(), RefreshError> {
        let mut tx = self.db.begin().await?;
        let marked = accounts::mark_needs_reauthorization(&mut tx, &self.ring, &account.id, reason).await?;
        if let Some(marked) = &marked {
            let data = events::account_data(marked, integration, AccountState::NeedsReauthorization.as_str());
            events::emit(&mut tx, EventKind::ReauthorizationNeeded, &data).await?;
        }
        tx.commit().await?;
        if let Some(marked) = marked {
            tracing::info!(account_id = %marked.id, integration = %integration.slug, reason, "account needs reauthorization");
            self.cache.tombstone(&integration.slug, &marked).await;
        }
        Ok(())
    }
}
