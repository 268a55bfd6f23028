//! In-memory state of the demo provider and the rules that govern it: single-use codes
//! (RFC 6749 §4.1.2, §4.1.3), PKCE S256 (RFC 7636 §4.6), refresh-token rotation with reuse
//! detection (RFC 6749 §10.4, OAuth 2.0 Security BCP §4.14) and grant revocation (RFC 7009).
//! Handlers hold the lock briefly and never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::browser::{Pending, Session};
use super::error::TokenError;
use super::{ClientAuthMethod, ClientRegistration, DemoConfig, Fault, Shape, Stats};

const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a login/consent page stays usable.
pub(super) const PENDING_TTL: Duration = Duration::from_secs(600);

/// 32 random bytes, base64url, behind a prefix that tells a human what the token is.
pub(super) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Constant-time comparison for secrets, so timing does not reveal matching prefixes.
pub(super) fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

enum CodeStatus {
    Fresh,
    /// A failed exchange burns the code, as a cautious server does.
    Burnt,
    Redeemed(u64),
}

struct Code {
    client_id: String,
    redirect_uri: String,
    user: String,
    scopes: Vec<String>,
    challenge: Option<String>,
    expires_at: Instant,
    status: CodeStatus,
}

pub(super) struct Grant {
    pub client_id: String,
    pub user: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked: bool,
}

struct Access {
    grant: u64,
    /// `None`: never expires (NonExpiring shape).
    expires_at: Option<Instant>,
}

struct Refresh {
    grant: u64,
    used: bool,
}

/// What a successful token request returns; `refresh_token: None` means "omit it".
pub(super) struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    pub user: String,
}

pub(super) struct State {
    pub base_url: String,
    pub access_ttl: Duration,
    /// When set, each access token lives a random whole number of seconds in
    /// `[access_ttl, access_ttl_max]`, so tokens issued together expire apart (the soak).
    pub access_ttl_max: Option<Duration>,
    pub shape: Shape,
    pub auto_consent: bool,
    pub deny_next: bool,
    pub faults: VecDeque<Fault>,
    pub clock_offset: Duration,
    pub stats: Stats,
    clients: HashMap<String, ClientRegistration>,
    codes: HashMap<String, Code>,
    grants: BTreeMap<u64, Grant>,
    next_grant: u64,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    pub(super) pending: HashMap<String, Pending>,
    pub(super) sessions: HashMap<String, Session>,
    /// API keys the `/api/me` endpoint accepts, with the account each names.
    pub(super) api_keys: HashMap<String, String>,
    /// The client ids the `client_credentials` grant was asked by, in order.
    pub(super) client_credentials_clients: Vec<String>,
}

impl State {
    pub(super) fn new(config: DemoConfig) -> Self {
        Self {
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            access_ttl: config.access_ttl,
            access_ttl_max: None,
            shape: config.shape,
            auto_consent: config.auto_consent,
            deny_next: false,
            faults: VecDeque::new(),
            clock_offset: Duration::ZERO,
            stats: Stats::default(),
            clients: HashMap::new(),
            codes: HashMap::new(),
            grants: BTreeMap::new(),
            next_grant: 1,
            access: HashMap::new(),
            refresh: HashMap::new(),
            pending: HashMap::new(),
            sessions: HashMap::new(),
            api_keys: HashMap::new(),
            client_credentials_clients: Vec::new(),
        }
    }

    /// The provider's clock: real time plus what `advance_clock` added.
    pub(super) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn wall_now(&self) -> DateTime<Utc> {
        crate::time::now() + chrono::TimeDelta::from_std(self.clock_offset).unwrap_or_default()
    }

    pub(super) fn register(&mut self, registration: ClientRegistration) {
        self.clients.insert(registration.client_id.clone(), registration);
    }

    pub(super) fn client(&self, client_id: &str) -> Option<&ClientRegistration> {
        self.clients.get(client_id)
    }

    /// RFC 6749 §2.3.1: the secret must match and arrive the way the client registered.
    pub(super) fn authenticate(
        &self,
        client_id: &str,
        secret: &str,
        method: ClientAuthMethod,
    ) -> Result<(), TokenError> {
        let client = self.clients.get(client_id).ok_or(TokenError::InvalidClient("unknown client"))?;
        if !ct_eq(&client.client_secret, secret) {
            return Err(TokenError::InvalidClient("client authentication failed"));
        }
        if client.auth_method != method {
            return Err(TokenError::InvalidClient("client authentication method not allowed for this client"));
        }
        Ok(())
    }

    pub(super) fn new_code(&mut self, pending: &Pending, user: &str) -> String {
        let now = self.now();
        // Expired codes are kept a while longer so a late replay is still recognised.
        self.codes.retain(|_, c| c.expires_at + PENDING_TTL > now);
        let code = random_token("demo_code_");
        self.codes.insert(
            code.clone(),
            Code {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                user: user.to_owned(),
                scopes: pending.scopes.clone(),
                challenge: pending.challenge.clone(),
                expires_at: now + CODE_TTL,
                status: CodeStatus::Fresh,
            },
        );
        code
    }

    /// RFC 6749 §4.1.3 with RFC 7636 §4.6.
    pub(super) fn exchange_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<Issued, TokenError> {
        let now = self.now();
        let entry = self.codes.get_mut(code).ok_or(TokenError::InvalidCode("unknown authorization code"))?;
        if entry.client_id != client_id {
            return Err(TokenError::InvalidCode("code was issued to another client"));
        }
        match entry.status {
            CodeStatus::Fresh => {}
            CodeStatus::Burnt => return Err(TokenError::InvalidCode("authorization code already used")),
            CodeStatus::Redeemed(grant) => {
                // §4.1.2: a replayed code revokes what was issued from it.
                self.revoke(grant);
                return Err(TokenError::InvalidCode("authorization code already used"));
            }
        }
        entry.status = CodeStatus::Burnt;
        if now >= entry.expires_at {
            return Err(TokenError::InvalidCode("authorization code expired"));
        }
        if redirect_uri != Some(entry.redirect_uri.as_str()) {
            return Err(TokenError::InvalidCode("redirect_uri does not match the authorization request"));
        }
        match (&entry.challenge, verifier) {
            (None, None) => {}
            (Some(_), None) => return Err(TokenError::InvalidCode("code_verifier required")),
            // A verifier without a challenge is a PKCE downgrade attempt (Security BCP §2.1.1).
            (None, Some(_)) => return Err(TokenError::InvalidCode("no code_challenge was sent")),
            (Some(challenge), Some(verifier)) => {
                let well_formed = (43..=128).contains(&verifier.len())
                    && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                if !well_formed || !ct_eq(&computed, challenge) {
                    return Err(TokenError::InvalidCode("code_verifier does not match"));
                }
            }
        }
        let (user, scopes) = (entry.user.clone(), entry.scopes.clone());
        let grant = self.next_grant;
        let issued = self.new_grant(client_id, &user, scopes);
        if let Some(entry) = self.codes.get_mut(code) {
            entry.status = CodeStatus::Redeemed(grant);
        }
        self.stats.code_exchanges += 1;
        Ok(issued)
    }

    /// RFC 6749 §6 with rotation; reuse of a rotated token revokes the whole grant.
    pub(super) fn refresh(&mut self, client_id: &str, token: &str, scope: Option<&str>) -> Result<Issued, TokenError> {
        let rt = self.refresh.get(token).ok_or(TokenError::InvalidRefreshToken("unknown refresh token"))?;
        let (grant_id, used) = (rt.grant, rt.used);
        let grant = self.grants.get(&grant_id).ok_or(TokenError::InvalidRefreshToken("unknown refresh token"))?;
        if grant.client_id != client_id {
            return Err(TokenError::InvalidRefreshToken("refresh token was issued to another client"));
        }
        if grant.revoked {
            return Err(TokenError::InvalidRefreshToken("grant revoked"));
        }
        if used {
            self.revoke(grant_id);
            self.stats.reuse_detected += 1;
            return Err(TokenError::InvalidRefreshToken("refresh token already used; the grant is revoked"));
        }
        // §6: a narrower scope may be asked for, never a wider one.
        let scopes = match scope {
            None => grant.scopes.clone(),
            Some(requested) => {
                let requested: Vec<String> = requested.split_whitespace().map(str::to_owned).collect();
                if requested.iter().any(|s| !grant.scopes.contains(s)) {
                    return Err(TokenError::InvalidScope("scope exceeds the original grant"));
                }
                requested
            }
        };
        let user = grant.user.clone();
        let rotate = !matches!(self.shape, Shape::NoRotation | Shape::NonExpiring);
        let (access_token, expires_in) = self.mint_access(grant_id);
        let refresh_token = if rotate {
            if let Some(old) = self.refresh.get_mut(token) {
                old.used = true;
            }
            Some(self.mint_refresh(grant_id))
        } else {
            None
        };
        self.stats.refreshes += 1;
        Ok(Issued { access_token, refresh_token, expires_in, scopes, user })
    }

    /// RFC 6749 §4.4: an access token for the (authenticated) client itself, without a
    /// refresh token (§4.4.3); its grant's user is the client.
    pub(super) fn client_credentials(&mut self, client_id: &str, scope: Option<&str>) -> Issued {
        self.client_credentials_clients.push(client_id.to_owned());
        let scopes =
            scope.map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
        let mut issued = self.new_grant(client_id, client_id, scopes);
        issued.refresh_token = None;
        issued
    }

    pub(super) fn new_grant(&mut self, client_id: &str, user: &str, scopes: Vec<String>) -> Issued {
        let id = self.next_grant;
        self.next_grant += 1;
        let created_at = self.wall_now();
        self.grants.insert(
            id,
            Grant {
                client_id: client_id.to_owned(),
                user: user.to_owned(),
                scopes: scopes.clone(),
                created_at,
                revoked: false,
            },
        );
        let (access_token, expires_in) = self.mint_access(id);
        let refresh_token = (self.shape != Shape::NonExpiring).then(|| self.mint_refresh(id));
        Issued { access_token, refresh_token, expires_in, scopes, user: user.to_owned() }
    }

    fn mint_access(&mut self, grant: u64) -> (String, Option<u64>) {
        let token = random_token("demo_at_");
        let ttl = (self.shape != Shape::NonExpiring).then(|| self.pick_ttl());
        let expires_at = ttl.map(|ttl| self.now() + ttl);
        self.access.insert(token.clone(), Access { grant, expires_at });
        (token, ttl.map(|ttl| ttl.as_secs()))
    }

    fn pick_ttl(&self) -> Duration {
        match self.access_ttl_max {
            Some(max) if max.as_secs() > self.access_ttl.as_secs() => {
                Duration::from_secs(rand::thread_rng().gen_range(self.access_ttl.as_secs()..=max.as_secs()))
            }
            _ => self.access_ttl,
        }
    }

    /// The user of a live access token and how long it stays valid (`None`: never expires).
    pub(super) fn access_info(&self, token: &str) -> Option<(String, Option<Duration>)> {
        let access = self.access.get(token)?;
        let grant = self.access_grant(token)?;
        let now = self.now();
        Some((grant.user.clone(), access.expires_at.map(|at| at.saturating_duration_since(now))))
    }

    fn mint_refresh(&mut self, grant: u64) -> String {
        let token = random_token("demo_rt_");
        self.refresh.insert(token.clone(), Refresh { grant, used: false });
        token
    }

    /// Revokes a grant; every token of it stops working. Returns whether it was alive.
    fn revoke(&mut self, grant: u64) -> bool {
        match self.grants.get_mut(&grant) {
            Some(g) if !g.revoked => {
                g.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// A revocation someone asked for (as opposed to theft detection), counted in `revocations`.
    pub(super) fn revoke_on_request(&mut self, grant: u64) -> bool {
        let revoked = self.revoke(grant);
        if revoked {
            self.stats.revocations += 1;
        }
        revoked
    }

    /// RFC 7009 §2.1: only the client the token was issued to may revoke it.
    pub(super) fn revoke_token_of_client(&mut self, client_id: &str, token: &str) {
        if let Some(grant) = self.grant_of_token(token) {
            if self.grants.get(&grant).is_some_and(|g| g.client_id == client_id) {
                self.revoke_on_request(grant);
            }
        }
    }

    /// The client an access or refresh token was issued to.
    pub(super) fn client_of_token(&self, token: &str) -> Option<String> {
        self.grant_of_token(token).and_then(|g| self.grants.get(&g)).map(|g| g.client_id.clone())
    }

    pub(super) fn grant_of_token(&self, token: &str) -> Option<u64> {
        self.access.get(token).map(|a| a.grant).or_else(|| self.refresh.get(token).map(|r| r.grant))
    }

    /// The grant of a usable access token: unexpired and its grant alive.
    pub(super) fn access_grant(&self, token: &str) -> Option<&Grant> {
        let access = self.access.get(token)?;
        if access.expires_at.is_some_and(|at| self.now() >= at) {
            return None;
        }
        self.grants.get(&access.grant).filter(|g| !g.revoked)
    }

    pub(super) fn refresh_usable(&self, token: &str) -> bool {
        self.refresh.get(token).is_some_and(|r| !r.used && self.grants.get(&r.grant).is_some_and(|g| !g.revoked))
    }

    pub(super) fn live_grants(&self) -> impl Iterator<Item = (u64, &Grant)> {
        self.grants.iter().filter(|(_, g)| !g.revoked).map(|(id, g)| (*id, g))
    }

    pub(super) fn stats(&self) -> Stats {
        let revoked = self.grants.values().filter(|g| g.revoked).count() as u64;
        Stats { grants_alive: self.grants.len() as u64 - revoked, grants_revoked: revoked, ..self.stats }
    }

    pub(super) fn revoke_grant_by_id(&mut self, id: u64) -> bool {
        self.revoke_on_request(id)
    }
}
