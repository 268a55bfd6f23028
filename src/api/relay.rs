//! The relay: a caller names an owner and a provider, sends the provider request to
//! Pipes, and Pipes sends it on with the owner's credential attached, so the caller
//! (an AI agent, a job in an untrusted runtime) never holds the token.
//!
//! * `ANY /relay/{slug}/{path…}` sends the request to `path` under the provider's API
//!   base URL (with the query string as sent); `ANY /relay` with `Pipes-Provider` and
//!   `Pipes-Url` sends it to that absolute URL.
//! * The owner: `Pipes-User-Id`, and as the token routes take them
//!   `Pipes-Organization-Id`, `Pipes-Connection-Owner`, `Pipes-Connected-Account-Id`.
//! * Only the provider's API hosts (the catalog's API base URL and `api_hosts`) over
//!   https are called, through the outbound guard that refuses internal addresses.
//! * Bodies stream both ways within [`MAX_REQUEST_BYTES`] and [`MAX_RESPONSE_BYTES`];
//!   redirects are answered, not followed. The provider's status and headers come back
//!   minus hop-by-hop and credential headers.
//! * A 401 from the provider to a bodiless idempotent request refreshes the token once
//!   (under the account's single flight) and sends the request once more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use futures_util::{StreamExt, TryStreamExt};
use url::Url;

use crate::api::extract::{RelayKey, Shared};
use crate::api::tokens::TokenRequest;
use crate::auth_method::AuthMethod;
use crate::metrics as m;
use crate::oauth::catalog::ApiKeySpec;
use crate::read::answer::Answer;
use crate::read::ReadTarget;
use crate::refresh::Reason;
use crate::state::AppState;
use crate::store::integrations::Integration;

/// Largest request body relayed.
pub const MAX_REQUEST_BYTES: u64 = 10 * 1024 * 1024;
/// Largest response body relayed; a longer one is cut off (the connection is closed).
pub const MAX_RESPONSE_BYTES: u64 = 50 * 1024 * 1024;
/// Longest a relayed call may take, response body included: within the stack's
/// [`crate::api::REQUEST_TIMEOUT`], so the provider's own answer comes first.
pub const TIMEOUT: Duration = Duration::from_secs(25);

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/relay", any(by_url))
        .route("/relay/{slug}", any(by_path))
        .route("/relay/{slug}/{*path}", any(by_path))
        .with_state(Shared(Arc::new(state.clone())))
}

/// Why the relay answered itself instead of the provider: `{code, message}`.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

/// Why a relayed call stopped before (or instead of) the provider.
enum Stop {
    Refused(Refusal),
    Api(Box<crate::error::ApiError>),
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Self {
        Stop::Refused(refusal)
    }
}

impl From<crate::error::ApiError> for Stop {
    fn from(err: crate::error::ApiError) -> Self {
        Stop::Api(Box::new(err))
    }
}

impl IntoResponse for Stop {
    fn into_response(self) -> Response {
        match self {
            Stop::Refused(refusal) => refusal.into_response(),
            Stop::Api(err) => err.into_response(),
        }
    }
}

/// Where the request goes.
enum Target<'a> {
    /// A path (and query) under the API base URL.
    Path(&'a str),
    /// An absolute URL.
    Url(&'a str),
}

async fn by_url(
    State(Shared(state)): State<Shared>,
    key: RelayKey,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let slug = match header_text(&headers, "pipes-provider") {
        Ok(Some(slug)) => slug,
        Ok(None) => return missing("Pipes-Provider", "the provider's slug").into_response(),
        Err(refusal) => return refusal.into_response(),
    };
    let url = match header_text(&headers, "pipes-url") {
        Ok(Some(url)) => url,
        Ok(None) => return missing("Pipes-Url", "the absolute URL to call").into_response(),
        Err(refusal) => return refusal.into_response(),
    };
    relay(&state, key, &slug, Target::Url(&url), method, headers, body).await
}

/// `/relay/{slug}` and `/relay/{slug}/{path…}`: the slug, then the path as sent (still
/// percent-encoded) and the query, read from the URI as the caller wrote it.
async fn by_path(
    State(Shared(state)): State<Shared>,
    key: RelayKey,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let raw = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let after = raw.strip_prefix("/relay/").unwrap_or("");
    let (slug, tail) = after.split_at(after.find(['/', '?']).unwrap_or(after.len()));
    relay(&state, key, slug, Target::Path(tail), method, headers, body).await
}

fn missing(header: &str, what: &str) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "missing_header", format!("Send `{header}`: {what}."))
}

/// A header's value as text, if present.
fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid_header", format!("`{name}` is not text."))),
    }
}

/// The owner the headers name, checked as the token routes check their body.
fn owner(headers: &HeaderMap) -> Result<ReadTarget, Stop> {
    let text = |name| header_text(headers, name);
    let user_id = text("pipes-user-id")?.ok_or_else(|| missing("Pipes-User-Id", "the user whose account is used"))?;
    let request = TokenRequest {
        user_id,
        organization_id: text("pipes-organization-id")?,
        connected_account_id: text("pipes-connected-account-id")?,
        connection_owner: text("pipes-connection-owner")?,
        supports_multiple_connections: None,
    };
    // Errors name the fields as the token routes do: `user_id` is `Pipes-User-Id` here.
    Ok(request.into_target()?)
}

/// The URL to call, checked against the integration's API hosts.
fn target_url(integration: &Integration, target: &Target<'_>) -> Result<Url, Refusal> {
    let misconfigured = |e: crate::store::integrations::IntegrationError| {
        Refusal::new(StatusCode::CONFLICT, "integration_misconfigured", e.to_string())
    };
    let unavailable = || {
        Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "relay_unavailable",
            format!(
                "`{}` has no API host to relay to (a catalog entry's API base URL, or `custom_provider.api_base_url`).",
                integration.slug
            ),
        )
    };
    let url = match target {
        Target::Path(tail) => {
            let base = integration.api_base().map_err(misconfigured)?.ok_or_else(unavailable)?;
            let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), tail.trim_start_matches('/'));
            let joined = if tail.is_empty() || tail.starts_with('?') {
                format!("{}{tail}", base.as_str().trim_end_matches('/'))
            } else {
                joined
            };
            Url::parse(&joined).map_err(|e| {
                Refusal::new(StatusCode::BAD_REQUEST, "invalid_url", format!("The path does not make a URL: {e}."))
            })?
        }
        Target::Url(url) => Url::parse(url).map_err(|e| {
            Refusal::new(StatusCode::BAD_REQUEST, "invalid_url", format!("`Pipes-Url` is not an absolute URL: {e}."))
        })?,
    };
    let hosts = integration.api_hosts().map_err(misconfigured)?;
    if hosts.is_empty() {
        return Err(unavailable());
    }
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    // The scheme (https) and literal addresses are the outbound guard's to check.
    if !hosts.contains(&host) || !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!("The relay calls `{}` only at {}.", integration.slug, hosts.join(", ")),
        ));
    }
    Ok(url)
}

/// Request headers that stay here: hop-by-hop ones, the relay's own, and credentials.
fn forwarded_request_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(is_hop_by_hop(name)
        || name.starts_with("pipes-")
        || matches!(name, "host" | "authorization" | "proxy-authorization" | "cookie" | "content-length" | "x-api-key"))
}

/// Response headers that stay there: hop-by-hop ones and cookies.
fn forwarded_response_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    !(is_hop_by_hop(name) || matches!(name, "set-cookie" | "content-length"))
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The credential of an active answer: the `/credentials` body's `credential.value`.
fn credential_of(body: &[u8]) -> Option<crate::secret::Secret> {
    #[derive(serde::Deserialize)]
    struct Vended {
        credential: Value,
    }
    #[derive(serde::Deserialize)]
    struct Value {
        value: String,
    }
    serde_json::from_slice::<Vended>(body).ok().map(|v| crate::secret::Secret::new(v.credential.value))
}

/// The owner's credential, fresh: the read path's answer (and its single flight).
async fn credential(
    state: &AppState,
    slug: &str,
    target: &ReadTarget,
) -> Result<(crate::secret::Secret, String, i64), Stop> {
    match state.reads.read(slug, target).await {
        Ok(Answer::Active(ready)) => {
            let secret = credential_of(&ready.credential_body).ok_or_else(|| {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "The credential could not be read.")
            })?;
            Ok((secret, ready.account_id.clone(), ready.version))
        }
        Ok(Answer::NotInstalled) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_installed",
            format!("The owner has no `{slug}` account; connect one first."),
        )
        .into()),
        Ok(Answer::NeedsReauthorization) => Err(Refusal::new(
            StatusCode::CONFLICT,
            "needs_reauthorization",
            format!("The owner's `{slug}` account needs reauthorization; nothing was sent to the provider."),
        )
        .into()),
        Err(err) => Err(crate::error::ApiError::from(err).into()),
    }
}

fn attach(
    request: reqwest::RequestBuilder,
    integration: &Integration,
    key: Option<&ApiKeySpec>,
    secret: &crate::secret::Secret,
) -> reqwest::RequestBuilder {
    match (integration.auth_method, key) {
        (AuthMethod::ApiKey, Some(spec)) => spec.attach(request, secret.expose()),
        _ => request.bearer_auth(secret.expose()),
    }
}

/// Whether the request can be sent again after a refresh: idempotent and without a body.
fn replayable(method: &Method, headers: &HeaderMap) -> bool {
    let bodiless = headers.get(header::CONTENT_LENGTH).is_none_or(|v| v == "0")
        && !headers.contains_key(header::TRANSFER_ENCODING);
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE) && bodiless
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    state: &AppState,
    _key: RelayKey,
    slug: &str,
    target: Target<'_>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let owner = match owner(&headers) {
        Ok(owner) => owner,
        Err(stop) => return stop.into_response(),
    };
    let view = match state.reads.views().get(slug, owner.owner.ownership()).await {
        Ok(Some(view)) if view.integration.enabled => view,
        Ok(_) => {
            return Refusal::new(StatusCode::NOT_FOUND, "integration_not_found", format!("No integration `{slug}`."))
                .into_response()
        }
        Err(err) => return crate::error::ApiError::from(crate::read::ReadError::from(err)).into_response(),
    };
    if let Err(refused) = state.limits.check_owner(slug, &owner.owner) {
        return crate::error::ApiError::from(refused).into_response();
    }
    let integration = &view.integration;
    let provider = integration.slug.clone();
    let count = |outcome: &'static str| {
        metrics::counter!(m::RELAY_REQUESTS, "provider" => provider.clone(), "outcome" => outcome).increment(1);
    };
    let url = match target_url(integration, &target) {
        Ok(url) => url,
        Err(refusal) => {
            count("refused");
            return refusal.into_response();
        }
    };
    if let Err(err) = state.http.check(&url) {
        count("refused");
        return Refusal::new(StatusCode::FORBIDDEN, "address_not_allowed", format!("The relay does not call {err}."))
            .into_response();
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES) {
        count("refused");
        return Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("The relay takes request bodies up to {MAX_REQUEST_BYTES} bytes."),
        )
        .into_response();
    }
    let (secret, account_id, version) = match credential(state, slug, &owner).await {
        Ok(found) => found,
        Err(stop) => {
            count("refused");
            return stop.into_response();
        }
    };
    let spec = integration.spec().ok();
    let key_spec = spec.as_ref().and_then(|s| s.api_key.as_ref());
    let replay = replayable(&method, &headers) && integration.auth_method != AuthMethod::ApiKey;
    let forwarded: HeaderMap = headers
        .iter()
        .filter(|(name, _)| forwarded_request_header(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();

    // The request body streams through, counted against the limit.
    let sent = Arc::new(AtomicU64::new(0));
    let too_large = Arc::new(AtomicBool::new(false));
    let upload = {
        let (sent, too_large) = (sent.clone(), too_large.clone());
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            if sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64 > MAX_REQUEST_BYTES {
                too_large.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body too large"));
            }
            Ok::<_, std::io::Error>(chunk)
        })
    };
    let build = |secret: &crate::secret::Secret, body: reqwest::Body| {
        attach(state.http.http().request(method.clone(), url.clone()), integration, key_spec, secret)
            .headers(forwarded.clone())
            .timeout(TIMEOUT)
            .body(body)
    };
    let started = Instant::now();
    let mut answer = build(&secret, reqwest::Body::wrap_stream(upload)).send().await;
    if replay && matches!(&answer, Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED) {
        // The provider refused a token Pipes thought good: renew it once, and send again.
        let id: crate::ids::AccountId = account_id.clone().into();
        match state.refresher.refresh(integration, &id, Reason::Rejected { version }).await {
            Ok(_) => match credential(state, slug, &owner).await {
                Ok((fresh, _, fresh_version)) if fresh_version > version => {
                    answer = build(&fresh, reqwest::Body::from(Vec::new())).send().await;
                }
                Ok(_) => {}
                Err(response) => {
                    count("refused");
                    return response.into_response();
                }
            },
            Err(err) => tracing::warn!(account_id = %account_id, error = %err, "relay: refresh after a 401 failed"),
        }
    }
    metrics::histogram!(m::RELAY_DURATION, "provider" => provider.clone()).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::RELAY_BYTES, "provider" => provider.clone(), "direction" => "request")
        .increment(sent.load(Ordering::Relaxed));
    let answer = match answer {
        Ok(answer) => answer,
        Err(_) if too_large.load(Ordering::Relaxed) => {
            count("refused");
            return Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("The relay takes request bodies up to {MAX_REQUEST_BYTES} bytes."),
            )
            .into_response();
        }
        Err(err) if err.is_timeout() => {
            count("timeout");
            return Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "provider_timeout",
                "The provider did not answer in time.",
            )
            .into_response();
        }
        Err(err) => {
            count("unreachable");
            tracing::warn!(provider = %provider, error = %err.without_url(), "relay: provider unreachable");
            return Refusal::new(StatusCode::BAD_GATEWAY, "provider_unreachable", "The provider could not be reached.")
                .into_response();
        }
    };
    if answer.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES) {
        count("refused");
        return Refusal::new(
            StatusCode::BAD_GATEWAY,
            "response_too_large",
            format!("The provider's answer is longer than the relay's {MAX_RESPONSE_BYTES} bytes."),
        )
        .into_response();
    }
    count(match answer.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    });
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        if forwarded_response_header(name) {
            response = response.header(name, value);
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let download = {
        let (received, provider) = (received.clone(), provider.clone());
        answer.bytes_stream().map_err(std::io::Error::other).and_then(move |chunk| {
            let total = received.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            metrics::counter!(m::RELAY_BYTES, "provider" => provider.clone(), "direction" => "response")
                .increment(chunk.len() as u64);
            std::future::ready(if total > MAX_RESPONSE_BYTES {
                // Cut off: the caller sees the connection end before the body does.
                Err(std::io::Error::other("response body too large"))
            } else {
                Ok(chunk)
            })
        })
    };
    response.body(Body::from_stream(download)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
