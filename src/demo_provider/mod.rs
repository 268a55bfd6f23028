//! The built-in `demo` OAuth 2.0 authorization server.
//!
//! It serves two audiences: `pipes dev` mounts it so a newcomer can connect an account without
//! registering an app anywhere, and the integration tests spawn it in-process as *the* fake
//! third-party provider. It is therefore a real server (authorization code + PKCE, rotating
//! refresh tokens with reuse detection, RFC 7009 revocation) with programmatic knobs to inject
//! faults and to mimic the non-standard response shapes some providers use.
//!
//! Endpoints, all relative to wherever the router is mounted: `GET /authorize`, `POST /login`,
//! `POST /consent`, `POST /token`, `POST /revoke`, `GET /userinfo`, `GET /grants`,
//! `POST /grants/{id}/revoke`. The HTML pages use relative form actions and redirects, so the
//! router works nested under any prefix (e.g. `/demo`).
//!
//! Knobs are global to one provider instance (not per client): the response [`Shape`], the
//! access-token lifetime, auto-consent, the FIFO of injected [`Fault`]s and a clock offset.

mod browser;
mod error;
mod html;
mod pages;
mod state;
mod token;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;

use state::State;

/// How `/token` and `issue_grant` shape their answers, mimicking providers Pipes must support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// RFC 6749 §5.1 / §5.2.
    #[default]
    Standard,
    /// Slack `oauth.v2.access` user tokens: always HTTP 200, tokens under `authed_user`
    /// (`scope` comma-separated, as Slack does), errors as `{"ok": false, "error": "…"}`
    /// (`invalid_refresh_token`, `invalid_code`, `invalid_client_id`, …).
    Slack,
    /// Standard, but `"expires_in": "3600"` (a string), as some providers send.
    ExpiresInString,
    /// Tokens never expire and no refresh token is issued (GitHub OAuth apps, Notion):
    /// the response has neither `expires_in` nor `refresh_token`.
    NonExpiring,
    /// Refresh responses omit `refresh_token`; the presented one stays valid (no rotation).
    NoRotation,
}

/// How a client authenticates at `/token` and `/revoke` (RFC 6749 §2.3.1). Using the other one
/// is refused with 401 `invalid_client`, as strict providers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// A client (an application such as Pipes) registered at the provider.
#[derive(Clone)]
pub struct ClientRegistration {
    pub client_id: String,
    pub client_secret: String,
    /// Exact-match redirect URIs (RFC 6749 §3.1.2.3); `redirect_uri` is always required.
    pub redirect_uris: Vec<String>,
    pub auth_method: ClientAuthMethod,
}

impl ClientRegistration {
    /// The client `pipes dev` registers for its `demo` integration: a fresh random secret and
    /// the callback `{public_url}/data-integrations/demo/callback`.
    pub fn for_pipes_dev(public_url: &str) -> Self {
        Self {
            client_id: "pipes-demo".to_owned(),
            client_secret: state::random_token("demo_cs_"),
            redirect_uris: vec![format!("{}/data-integrations/demo/callback", public_url.trim_end_matches('/'))],
            auth_method: ClientAuthMethod::Basic,
        }
    }
}

impl std::fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("redirect_uris", &self.redirect_uris)
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

/// A failure injected into the next `/token` request (FIFO, one fault per request). Injected
/// failures change no state: the grant and its tokens stay as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with a JSON error body (`server_error`, or
    /// `temporarily_unavailable` for 503).
    Status(u16),
    /// 429 with `Retry-After: retry_after_secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// Wait this long before handling the request normally. Nothing is touched before the wait
    /// ends, so a client that times out and disconnects first leaves no trace (no rotation).
    Delay(Duration),
    /// 400 `invalid_grant` (Slack shape: 200 `invalid_refresh_token`).
    InvalidGrant,
    /// 401 `invalid_client` (Slack shape: 200 `invalid_client_id`).
    InvalidClient,
    /// HTTP 200 `{"ok": false, "error": <this>}` whatever the shape.
    SlackError(String),
}

/// Settings of a provider instance; every one can also be changed later through the handle.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Where the router is reachable from clients, e.g. `http://localhost:8080/demo`; reported
    /// by [`DemoProvider::base_url`]. `spawn` overwrites it with the bound address.
    pub base_url: String,
    /// Lifetime of access tokens (`expires_in`); 120 s by default so the demo shows refreshes.
    pub access_ttl: Duration,
    /// Skip the login and consent pages: `/authorize` redirects with a code at once, for the
    /// user named by `login_hint` (else `demo-user`). Tests turn it on.
    pub auto_consent: bool,
    pub shape: Shape,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            access_ttl: Duration::from_secs(120),
            auto_consent: false,
            shape: Shape::Standard,
        }
    }
}

/// Tokens minted by [`DemoProvider::issue_grant`]. `refresh_token` and `expires_in` are `None`
/// under [`Shape::NonExpiring`].
#[derive(Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &"***")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Counters for assertions. `revocations` counts grants revoked on request (`/revoke`, the
/// grants page, [`DemoProvider::revoke_grant_of`]); a refresh-token reuse counts in
/// `reuse_detected` instead. `grants_alive` / `grants_revoked` are current totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub token_requests: u64,
    pub code_exchanges: u64,
    pub refreshes: u64,
    pub reuse_detected: u64,
    pub revocations: u64,
    pub grants_alive: u64,
    pub grants_revoked: u64,
    /// Calls of the small protected API (`/api/me`, `/api/echo`).
    pub api_requests: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("unknown client_id")]
    UnknownClient,
    #[error("could not bind the demo provider's listener")]
    Bind(#[source] std::io::Error),
}

/// A cloneable handle on one provider instance; the router and every clone share its state.
#[derive(Clone)]
pub struct DemoProvider {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for DemoProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoProvider").field("base_url", &self.lock().base_url).finish_non_exhaustive()
    }
}

impl DemoProvider {
    pub fn new(config: DemoConfig) -> Self {
        Self { state: Arc::new(Mutex::new(State::new(config))) }
    }

    /// Binds `127.0.0.1:0`, serves the router in a background task and returns the handle with
    /// `base_url` set to `http://127.0.0.1:<port>`.
    pub async fn spawn(config: DemoConfig) -> Result<(Self, SocketAddr), DemoError> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(DemoError::Bind)?;
        let addr = listener.local_addr().map_err(DemoError::Bind)?;
        let provider = Self::new(config);
        provider.lock().base_url = format!("http://{addr}");
        let app = provider.router();
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "demo provider stopped serving");
            }
        });
        Ok((provider, addr))
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/authorize", get(pages::authorize))
            .route("/login", post(pages::login))
            .route("/consent", post(pages::consent))
            .route("/grants", get(pages::grants))
            .route("/grants/{id}/revoke", post(pages::revoke_grant))
            .route("/token", post(token::token))
            .route("/revoke", post(token::revoke))
            .route("/userinfo", get(token::userinfo))
            .route("/api/me", get(token::api_me))
            .route("/api/echo", post(token::api_echo))
            .with_state(self.clone())
    }

    /// The URL the provider is reachable at (no trailing slash); empty if never configured.
    pub fn base_url(&self) -> String {
        self.lock().base_url.clone()
    }

    /// Makes `/api/me` accept `key` as the API key of `account`.
    pub fn add_api_key(&self, key: &str, account: &str) {
        self.lock().api_keys.insert(key.to_owned(), account.to_owned());
    }

    /// The client ids that asked for a `client_credentials` grant, in order.
    pub fn client_credentials_clients(&self) -> Vec<String> {
        self.lock().client_credentials_clients.clone()
    }

    /// Registers a client, replacing any registration with the same `client_id`.
    pub fn register_client(&self, registration: ClientRegistration) {
        self.lock().register(registration);
    }

    /// Creates a grant directly, as if `user` had consented to `scopes` (tests seed imported
    /// accounts with it). Follows the current shape and access-token lifetime.
    pub fn issue_grant(&self, client_id: &str, user: &str, scopes: &[&str]) -> Result<IssuedTokens, DemoError> {
        let mut state = self.lock();
        if state.client(client_id).is_none() {
            return Err(DemoError::UnknownClient);
        }
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        let issued = state.new_grant(client_id, user, scopes);
        Ok(IssuedTokens {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_in: issued.expires_in,
        })
    }

    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_ttl(&self, ttl: Duration) {
        let mut state = self.lock();
        state.access_ttl = ttl;
        state.access_ttl_max = None;
    }

    /// Lifetimes of access tokens issued from now on: a random whole number of seconds in
    /// `[min, max]` per token, so a large population of grants expires spread out.
    pub fn set_access_ttl_range(&self, min: Duration, max: Duration) {
        let mut state = self.lock();
        state.access_ttl = min;
        state.access_ttl_max = Some(max);
    }

    pub fn set_shape(&self, shape: Shape) {
        self.lock().shape = shape;
    }

    pub fn set_auto_consent(&self, on: bool) {
        self.lock().auto_consent = on;
    }

    /// The next consent decision (automatic or clicked) is a denial: the client gets
    /// `error=access_denied`.
    pub fn deny_next_consent(&self) {
        self.lock().deny_next = true;
    }

    /// Moves the provider's clock forward, so codes and access tokens expire without sleeping.
    /// Only the provider's view of time changes.
    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Refreshes answered so far: [`Self::stats`] without counting the grants, cheap
    /// enough to poll while thousands of grants are refreshed a second.
    pub fn refreshes(&self) -> u64 {
        self.lock().stats.refreshes
    }

    /// Whether presenting this refresh token now would succeed.
    pub fn is_grant_alive_for_refresh(&self, refresh_token: &str) -> bool {
        self.lock().refresh_usable(refresh_token)
    }

    /// Whether this access token is unexpired and its grant alive (what `/userinfo` checks).
    pub fn access_token_valid(&self, access_token: &str) -> bool {
        self.lock().access_grant(access_token).is_some()
    }

    /// For a live access token (unexpired, grant alive): the grant's user and how long the token
    /// stays valid at the provider (`None`: it never expires). `None` for any other token.
    /// The client id a token (access or refresh) was issued to.
    pub fn client_of(&self, token: &str) -> Option<String> {
        self.lock().client_of_token(token)
    }

    pub fn access_token_info(&self, access_token: &str) -> Option<(String, Option<Duration>)> {
        self.lock().access_info(access_token)
    }

    /// Revokes the grant an access or refresh token belongs to, as the user would from the
    /// provider's settings page. Returns whether a live grant was revoked.
    pub fn revoke_grant_of(&self, token: &str) -> bool {
        let mut state = self.lock();
        match state.grant_of_token(token) {
            Some(grant) => state.revoke_on_request(grant),
            None => false,
        }
    }

    /// Locks the state; a panic while it was held cannot leave it half-updated in a way that
    /// matters to a test double, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
