//! Talking to a provider's token endpoint. The `oauth2` crate builds every
//! request (client authentication, PKCE verifier, redirect URI); our own HTTP
//! function sends it — no redirects, bounded time — and keeps the raw answer,
//! which `response.rs` reads with each provider's quirks and classifies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, TokenUrl,
};
use url::Url;

use super::response::{classify, RawResponse, TokenError, TokenGrant};
use crate::oauth::catalog::{BodyContentType, ClientAuth, OAuthSpec, ProviderSpec, ResolvedUrls};
use crate::outbound::{ProviderClient, TargetError};
use crate::secret::Secret;
use crate::store::integrations::Integration;

/// The OAuth client a provider request authenticates as: the integration's app, or a
/// client-credentials account's own client.
#[derive(Clone, Copy)]
pub struct OAuthClient<'a> {
    pub id: &'a str,
    pub secret: Option<&'a str>,
    /// Endpoints other than the integration's: an organization's own instance.
    pub urls: Option<&'a ResolvedUrls>,
}

impl<'a> OAuthClient<'a> {
    /// The integration's own OAuth app.
    pub fn of_integration(integration: &'a Integration) -> Self {
        use secrecy::ExposeSecret;
        OAuthClient {
            id: &integration.client_id,
            secret: integration.client_secret.as_ref().map(|s| s.expose_secret()),
            urls: None,
        }
    }

    /// An account's own client.
    pub fn of_account(client: &'a crate::store::accounts::OwnClient) -> Self {
        OAuthClient { id: &client.client_id, secret: Some(client.client_secret.expose()), urls: None }
    }

    /// The endpoints requests go to.
    pub fn urls(&self, integration: &'a Integration) -> Result<&'a ResolvedUrls, String> {
        match self.urls {
            Some(urls) => Ok(urls),
            None => integration.urls().map_err(|e| e.to_string()),
        }
    }
}

/// A PKCE pair: the challenge goes in the authorization URL, the verifier is
/// kept (encrypted) with the state until the callback.
pub struct Pkce {
    pub challenge: PkceCodeChallenge,
    pub verifier: Secret,
}

pub fn new_pkce() -> Pkce {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    Pkce { challenge, verifier: Secret::new(verifier.secret().clone()) }
}

/// The provider's authorization URL for one connect attempt.
pub fn authorization_url(
    integration: &Integration,
    oauth: &OAuthSpec,
    as_client: OAuthClient<'_>,
    redirect_uri: &str,
    state: &str,
    scopes: &[String],
    pkce: Option<&Pkce>,
) -> Result<Url, TokenError> {
    let urls = as_client.urls(integration).map_err(TokenError::Config)?;
    let client = BasicClient::new(ClientId::new(as_client.id.to_owned()))
        .set_auth_uri(AuthUrl::from_url(urls.authorization_url.clone()))
        .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| TokenError::Config(e.to_string()))?);
    let state = state.to_owned();
    let mut request = client.authorize_url(move || CsrfToken::new(state));
    // Scopes are joined with the provider's own separator (oauth2 would use a space).
    if !oauth.scopes_configured_at_provider && !scopes.is_empty() {
        request = request.add_extra_param(oauth.scope_param.clone(), oauth.scope_string(scopes));
    }
    for (name, value) in &oauth.authorization_params {
        request = request.add_extra_param(name.clone(), value.clone());
    }
    if let Some(pkce) = pkce {
        request = request.set_pkce_challenge(pkce.challenge.clone());
    }
    Ok(request.url().0)
}

/// What the token endpoint is asked for.
pub enum Grant<'a> {
    Code {
        code: &'a str,
        redirect_uri: &'a str,
        pkce_verifier: Option<&'a Secret>,
    },
    Refresh {
        refresh_token: &'a Secret,
        scopes: &'a [String],
    },
    /// RFC 6749 §4.4: the client's own access, no user in between.
    ClientCredentials {
        scopes: &'a [String],
    },
}

/// Calls the token endpoint and classifies the answer (DESIGN §2.4).
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn request_token(
    http: &ProviderClient,
    integration: &Integration,
    oauth: &OAuthSpec,
    as_client: OAuthClient<'_>,
    grant: Grant<'_>,
) -> Result<TokenGrant, TokenError> {
    let urls = as_client.urls(integration).map_err(TokenError::Config)?;
    let token_url = match grant {
        Grant::Code { .. } | Grant::ClientCredentials { .. } => &urls.token_url,
        Grant::Refresh { .. } => &urls.refresh_token_url,
    };
    http.check(token_url).map_err(refused_url)?;
    let mut client = BasicClient::new(ClientId::new(as_client.id.to_owned()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()))
        .set_auth_type(match oauth.client_auth {
            ClientAuth::BasicAuthHeader => AuthType::BasicAuth,
            ClientAuth::RequestBody => AuthType::RequestBody,
        });
    if let Some(secret) = as_client.secret {
        client = client.set_client_secret(ClientSecret::new(secret.to_owned()));
    }
    let captured: Arc<Mutex<Option<Result<RawResponse, TokenError>>>> = Arc::default();
    let sender = Sender {
        http: http.http().clone(),
        url: token_url.clone(),
        json_body: oauth.token_body_content_type == BodyContentType::Json,
        captured: captured.clone(),
    };
    // oauth2's own parse of the body is ignored: the raw answer is read below,
    // with the provider's quirks (Slack envelopes, string expiries, errors in 200s).
    let _ = match grant {
        Grant::Code { code, redirect_uri, pkce_verifier } => {
            let redirect = RedirectUrl::new(redirect_uri.to_owned()).map_err(|e| TokenError::Config(e.to_string()))?;
            let client = client.set_redirect_uri(redirect);
            let mut req = client.exchange_code(AuthorizationCode::new(code.to_owned()));
            if let Some(v) = pkce_verifier {
                req = req.set_pkce_verifier(PkceCodeVerifier::new(v.expose().to_owned()));
            }
            for (name, value) in &oauth.token_params {
                req = req.add_extra_param(name.clone(), value.clone());
            }
            req.request_async(&sender).await.map(|_| ())
        }
        Grant::Refresh { refresh_token, scopes: _ } => {
            let token = RefreshToken::new(refresh_token.expose().to_owned());
            let mut req = client.exchange_refresh_token(&token);
            for (name, value) in &oauth.token_params {
                req = req.add_extra_param(name.clone(), value.clone());
            }
            req.request_async(&sender).await.map(|_| ())
        }
        Grant::ClientCredentials { scopes } => {
            let mut req = client.exchange_client_credentials();
            // Joined with the provider's own separator (oauth2 would use a space).
            if !scopes.is_empty() {
                req = req.add_extra_param("scope", oauth.scope_string(scopes));
            }
            for (name, value) in &oauth.token_params {
                req = req.add_extra_param(name.clone(), value.clone());
            }
            req.request_async(&sender).await.map(|_| ())
        }
    };
    let raw = captured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_else(|| Err(TokenError::Config("the token request could not be built".into())))?;
    classify(oauth, &raw)
}

/// A provider URL the outbound guard refuses: the integration must be fixed, so it
/// is a configuration error, never a request.
fn refused_url(err: TargetError) -> TokenError {
    TokenError::Config(format!("token URL {err}"))
}

/// Sends oauth2's request with our client and keeps the answer for [`classify`].
struct Sender {
    http: reqwest::Client,
    /// The token URL oauth2 was given, already parsed: its request carries it as text.
    url: Url,
    json_body: bool,
    captured: Arc<Mutex<Option<Result<RawResponse, TokenError>>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("token endpoint request failed")]
struct SendFailed;

// A named future type (rather than a closure) keeps the request future `Send`
// for every lifetime, which axum handlers and spawned tasks need.
impl<'c> oauth2::AsyncHttpClient<'c> for Sender {
    type Error = SendFailed;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, SendFailed>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

impl Sender {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, SendFailed> {
        let result = self.round_trip(request).await;
        *self.captured.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        // oauth2 gets no answer to parse: its reading of the body would be thrown away
        // (the captured answer is classified instead), and parsing it cost as much as
        // classifying it.
        Err(SendFailed)
    }

    async fn round_trip(&self, request: HttpRequest) -> Result<RawResponse, TokenError> {
        let (parts, body) = request.into_parts();
        let mut builder = self.http.request(parts.method, self.url.clone());
        for (name, value) in &parts.headers {
            if self.json_body && name == http::header::CONTENT_TYPE {
                continue;
            }
            builder = builder.header(name, value);
        }
        builder = if self.json_body {
            // Some providers take the same fields as a JSON object.
            let fields: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect();
            builder.json(&fields)
        } else {
            builder.body(body)
        };
        let started = std::time::Instant::now();
        let response = builder.send().await.map_err(|e| TokenError::Transient {
            reason: if e.is_timeout() { "timeout".into() } else { "connection_error".into() },
            retry_after: None,
            status: None,
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = read_capped(response, MAX_RESPONSE_BYTES).await.map_err(|reason| {
            metrics::counter!(crate::metrics::PROVIDER_RESPONSES_REFUSED, "reason" => reason).increment(1);
            tracing::warn!(status, reason, "token endpoint answer refused");
            TokenError::Transient { reason: reason.into(), retry_after: None, status: Some(status) }
        })?;
        tracing::debug!(status, elapsed_ms = started.elapsed().as_millis() as u64, "token endpoint answered");
        Ok(RawResponse { status, retry_after, content_type, body })
    }
}

/// The most of a provider's answer that is read: a token answer is a few kilobytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Reads a body of at most `cap` bytes. A longer one (announced or streamed) is
/// refused as soon as it passes the cap; the client's timeout bounds a slow one.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, &'static str> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err("response_too_large");
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > cap {
                    return Err("response_too_large");
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err("timeout"),
            Err(_) => return Err("connection_error"),
        }
    }
}

/// Revokes a token at the provider (RFC 7009). Failures are reported, not fatal.
#[tracing::instrument(level = "debug", skip_all, fields(integration = %integration.slug))]
pub async fn revoke(
    http: &ProviderClient,
    integration: &Integration,
    oauth: &OAuthSpec,
    as_client: OAuthClient<'_>,
    token: &Secret,
    hint: &str,
) -> Result<(), String> {
    let urls = as_client.urls(integration)?;
    let Some(url) = urls.revocation_url.clone() else { return Ok(()) };
    http.check(&url).map_err(|e| format!("revocation_url {e}"))?;
    let mut form = vec![("token", token.expose().to_owned()), ("token_type_hint", hint.to_owned())];
    let mut request = http.http().post(url);
    match (oauth.client_auth, as_client.secret) {
        (ClientAuth::BasicAuthHeader, Some(secret)) => {
            request = request.basic_auth(as_client.id, Some(secret));
        }
        (_, secret) => {
            form.push(("client_id", as_client.id.to_owned()));
            if let Some(secret) = secret {
                form.push(("client_secret", secret.to_owned()));
            }
        }
    }
    let response =
        request.form(&form).send().await.map_err(|e| format!("revocation request failed: {}", e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("revocation answered HTTP {}", response.status().as_u16()))
    }
}

/// Largest profile answer read for an account's subject.
const MAX_USERINFO_BYTES: usize = 64 * 1024;

/// What the provider says of a new grant's account: its stable id and its name for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountNames {
    pub identifier: Option<String>,
    pub display_name: Option<String>,
}

/// The provider's account a new grant belongs to, where the catalog says where
/// (`ProviderSpec::account_identifier`, `account_display_name`): from the token answer
/// itself, or from the profile `userinfo_url` answers to the new access token (read
/// once). Nothing when the catalog says nothing or the profile cannot be read: the
/// account is stored without, never refused.
pub async fn account_names(
    http: &ProviderClient,
    spec: &ProviderSpec,
    urls: &ResolvedUrls,
    grant: &TokenGrant,
) -> AccountNames {
    let mut names = AccountNames { identifier: grant.subject.clone(), display_name: grant.display_name.clone() };
    let wanted = |known: &Option<String>, path: &Option<String>| {
        known.is_none().then(|| path.as_deref().and_then(|p| p.strip_prefix("userinfo.")).map(str::to_owned)).flatten()
    };
    let Some(oauth) = spec.oauth.as_ref() else { return names };
    let id_field = wanted(&names.identifier, &oauth.account_identifier);
    let name_field = wanted(&names.display_name, &oauth.account_display_name);
    if id_field.is_none() && name_field.is_none() {
        return names;
    }
    let Some(profile) = profile(http, spec, urls, grant).await else { return names };
    if let Some(field) = id_field {
        names.identifier = super::response::subject(&profile, &field);
    }
    if let Some(field) = name_field {
        names.display_name = super::response::subject(&profile, &field);
    }
    names
}

/// The account's profile: `userinfo_url` with the new access token.
async fn profile(
    http: &ProviderClient,
    spec: &ProviderSpec,
    urls: &ResolvedUrls,
    grant: &TokenGrant,
) -> Option<serde_json::Value> {
    let url = urls.userinfo_url.clone()?;
    http.check(&url).ok()?;
    let response = http
        .http()
        .get(url)
        .bearer_auth(grant.access_token.expose())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| tracing::debug!(provider = %spec.slug, error = %e.without_url(), "profile request failed"))
        .ok()?;
    if !response.status().is_success() {
        tracing::debug!(provider = %spec.slug, status = response.status().as_u16(), "profile request refused");
        return None;
    }
    let body = response.bytes().await.ok().filter(|b| b.len() <= MAX_USERINFO_BYTES)?;
    serde_json::from_slice(&body).ok()
}
