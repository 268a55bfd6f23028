//! The machine-facing endpoints: `POST /token` (RFC 6749 §4.1.3, §6, with injected faults and
//! response shapes), `POST /revoke` (RFC 7009) and `GET /userinfo` (RFC 6750 bearer).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::error::TokenError;
use super::state::Issued;
use super::{ClientAuthMethod, DemoProvider, Fault, Shape};

pub(super) async fn token(State(provider): State<DemoProvider>, headers: HeaderMap, body: Bytes) -> Response {
    let (fault, shape) = {
        let mut state = provider.lock();
        state.stats.token_requests += 1;
        (state.faults.pop_front(), state.shape)
    };
    match fault {
        None => {}
        // Sleep before touching anything: a client that gave up meanwhile leaves no trace.
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(fault) => return fault_response(fault, shape),
    }
    let mut state = provider.lock();
    let shape = state.shape;
    let result = parse_form(&headers, &body).and_then(|form| {
        let client_id =
            authenticate_client(&headers, &form, |id, secret, method| state.authenticate(id, secret, method))?;
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = form.get("code").ok_or(TokenError::InvalidRequest("code is required"))?;
                state.exchange_code(
                    &client_id,
                    code,
                    form.get("redirect_uri").map(String::as_str),
                    form.get("code_verifier").map(String::as_str),
                )
            }
            Some("refresh_token") => {
                let token = form.get("refresh_token").ok_or(TokenError::InvalidRequest("refresh_token is required"))?;
                state.refresh(&client_id, token, form.get("scope").map(String::as_str))
            }
            Some("client_credentials") => {
                Ok(state.client_credentials(&client_id, form.get("scope").map(String::as_str)))
            }
            Some(_) => Err(TokenError::UnsupportedGrantType),
            None => Err(TokenError::InvalidRequest("grant_type is required")),
        }
    });
    drop(state);
    match result {
        Ok(issued) => success_response(issued, shape),
        Err(error) => {
            tracing::debug!(%error, "demo provider refused a token request");
            error_response(&error, shape)
        }
    }
}

/// RFC 7009 §2: 200 whether or not the token was known, once the client is authenticated.
pub(super) async fn revoke(State(provider): State<DemoProvider>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = provider.lock();
    let result = parse_form(&headers, &body).and_then(|form| {
        let client_id =
            authenticate_client(&headers, &form, |id, secret, method| state.authenticate(id, secret, method))?;
        let token = form.get("token").ok_or(TokenError::InvalidRequest("token is required"))?;
        state.revoke_token_of_client(&client_id, token);
        Ok(())
    });
    drop(state);
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(error) => error_response(&error, Shape::Standard),
    }
}

/// `{"sub", "name"}` for a live access token, else 401 (RFC 6750 §3.1).
pub(super) async fn userinfo(State(provider): State<DemoProvider>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let user = token.and_then(|t| provider.lock().access_grant(t).map(|g| g.user.clone()));
    match user {
        Some(user) => Json(json!({"sub": user, "name": user})).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer realm="demo", error="invalid_token""#)],
            Json(json!({"error": "invalid_token", "error_description": "access token missing, expired or revoked"})),
        )
            .into_response(),
    }
}

/// The caller of the small API: an API key's account, or a live access token's user.
fn api_caller(provider: &DemoProvider, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_owned());
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned))?;
    let state = provider.lock();
    state.api_keys.get(&key).cloned().or_else(|| state.access_info(&key).map(|(user, _)| user))
}

/// A small protected API: `GET /api/me` with `Authorization: Bearer <key or access token>`
/// or `X-Api-Key: <key>` answers `{"id", "name"}` of the caller, else 401.
pub(super) async fn api_me(State(provider): State<DemoProvider>, headers: HeaderMap) -> Response {
    provider.lock().stats.api_requests += 1;
    match api_caller(&provider, &headers) {
        Some(account) => Json(json!({"id": account, "name": account})).into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token"}))).into_response(),
    }
}

/// `POST /api/echo`: reads the body as it streams in and answers its length and SHA-256,
/// the caller, and the request's content type; 401 without a good credential.
pub(super) async fn api_echo(
    State(provider): State<DemoProvider>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    use sha2::Digest;
    provider.lock().stats.api_requests += 1;
    let Some(caller) = api_caller(&provider, &headers) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token"}))).into_response();
    };
    let mut stream = body.into_data_stream();
    let (mut bytes, mut hash) = (0u64, sha2::Sha256::new());
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return StatusCode::BAD_REQUEST.into_response() };
        bytes += chunk.len() as u64;
        hash.update(&chunk);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    Json(
        json!({"caller": caller, "bytes": bytes, "sha256": hex::encode(hash.finalize()), "content_type": content_type}),
    )
    .into_response()
}

/// Form body per RFC 6749 §3.2; a repeated parameter is an error (§3.1).
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, TokenError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(TokenError::InvalidRequest("body must be application/x-www-form-urlencoded"));
    }
    let mut form = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if form.insert(key.into_owned(), value.into_owned()).is_some() {
            return Err(TokenError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(form)
}

/// Finds the client's credentials (Basic header or body, never both: §2.3) and checks them.
fn authenticate_client(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    check: impl FnOnce(&str, &str, ClientAuthMethod) -> Result<(), TokenError>,
) -> Result<String, TokenError> {
    let (client_id, secret, method) = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            if form.contains_key("client_secret") {
                return Err(TokenError::InvalidRequest("more than one client authentication method used"));
            }
            let (id, secret) = basic_credentials(value)?;
            if form.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(TokenError::InvalidClient("client_id does not match the Authorization header"));
            }
            (id, secret, ClientAuthMethod::Basic)
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone(), ClientAuthMethod::Body),
            _ => return Err(TokenError::InvalidClient("client authentication required")),
        },
    };
    check(&client_id, &secret, method)?;
    Ok(client_id)
}

/// §2.3.1: `base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(value: &HeaderValue) -> Result<(String, String), TokenError> {
    const MALFORMED: TokenError = TokenError::InvalidClient("malformed Basic credentials");
    let value = value.to_str().map_err(|_| MALFORMED)?;
    let (scheme, encoded) = value.split_once(' ').ok_or(MALFORMED)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(TokenError::InvalidClient("unsupported authentication scheme"));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| MALFORMED)?;
    let decoded = String::from_utf8(decoded).map_err(|_| MALFORMED)?;
    let (id, secret) = decoded.split_once(':').ok_or(MALFORMED)?;
    Ok((percent_decode(id), percent_decode(secret)))
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => match (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// §5.1: token responses must not be cached.
const NO_STORE: [(header::HeaderName, &str); 2] = [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")];

fn success_response(issued: Issued, shape: Shape) -> Response {
    let body = match shape {
        Shape::Slack => {
            let mut user = json!({
                "id": issued.user,
                "access_token": issued.access_token,
                "token_type": "user",
                "scope": issued.scopes.join(","),
            });
            if let Some(expires_in) = issued.expires_in {
                user["expires_in"] = json!(expires_in);
            }
            if let Some(refresh_token) = issued.refresh_token {
                user["refresh_token"] = json!(refresh_token);
            }
            json!({"ok": true, "app_id": "A0DEMO", "team": {"id": "T0DEMO", "name": "Demo"}, "authed_user": user})
        }
        _ => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "scope": issued.scopes.join(" "),
            });
            if let Some(expires_in) = issued.expires_in {
                body["expires_in"] = if shape == Shape::ExpiresInString {
                    Value::String(expires_in.to_string())
                } else {
                    json!(expires_in)
                };
            }
            if let Some(refresh_token) = issued.refresh_token {
                body["refresh_token"] = json!(refresh_token);
            }
            body
        }
    };
    (StatusCode::OK, NO_STORE, Json(body)).into_response()
}

fn error_response(error: &TokenError, shape: Shape) -> Response {
    if shape == Shape::Slack {
        return slack_error(error.slack_code());
    }
    let body = Json(json!({"error": error.code(), "error_description": error.description()}));
    if let TokenError::InvalidClient(_) = error {
        // §5.2: a 401 must say which scheme to use.
        let challenge = [(header::WWW_AUTHENTICATE, r#"Basic realm="demo""#)];
        return (StatusCode::UNAUTHORIZED, NO_STORE, challenge, body).into_response();
    }
    (StatusCode::BAD_REQUEST, NO_STORE, body).into_response()
}

fn slack_error(code: &str) -> Response {
    (StatusCode::OK, NO_STORE, Json(json!({"ok": false, "error": code}))).into_response()
}

fn fault_response(fault: Fault, shape: Shape) -> Response {
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let error =
                if status == StatusCode::SERVICE_UNAVAILABLE { "temporarily_unavailable" } else { "server_error" };
            let body = json!({"error": error, "error_description": format!("injected HTTP {}", status.as_u16())});
            (status, NO_STORE, Json(body)).into_response()
        }
        Fault::TooManyRequests { retry_after_secs } => {
            let body = if shape == Shape::Slack {
                json!({"ok": false, "error": "ratelimited"})
            } else {
                json!({"error": "rate_limited", "error_description": "too many requests"})
            };
            let retry_after = [(header::RETRY_AFTER, retry_after_secs.to_string())];
            (StatusCode::TOO_MANY_REQUESTS, NO_STORE, retry_after, Json(body)).into_response()
        }
        Fault::InvalidGrant => error_response(&TokenError::InvalidRefreshToken("injected invalid_grant"), shape),
        Fault::InvalidClient => error_response(&TokenError::InvalidClient("injected invalid_client"), shape),
        Fault::SlackError(code) => slack_error(&code),
        // Handled by the caller before any state is touched.
        Fault::Delay(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
