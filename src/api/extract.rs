//! Request extractors whose rejections are `ApiError`s: the API key and its role
//! (401, 403), malformed JSON a 400, a body of the wrong shape a 422 naming the
//! field, a bad query a 400.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::Role;
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// A JSON body. Unknown fields are ignored (SDKs add new ones over time).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BadRequest { code: "payload_too_large", message: "The request body is too large.".into() }
            } else {
                ApiError::bad_request(format!("Could not read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON with errors that name the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            code: "invalid_json",
            message: "The request body must be a JSON object.".into(),
        });
    } else {
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
            code: "invalid_json",
            message: format!("The request body is not valid JSON: {e}"),
        })?
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest {
            code: "invalid_json",
            message: "The request body must be a JSON object.".into(),
        });
    }
    // PostgreSQL refuses NUL in text: name the field instead of failing deep in a query.
    if let Some(field) = nul_field(&value, "") {
        return Err(ApiError::invalid_field(&field, "invalid", "Text must not contain NUL characters."));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names a missing field in its message rather than in the path.
        let (field, code) = match inner.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.split('`').next().unwrap_or_default();
                let field = if path == "." || path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
                (field, "required")
            }
            None => (if path == "." { "body".to_owned() } else { path }, "invalid"),
        };
        ApiError::invalid(vec![FieldError::new(field, code, inner)])
    })
}

/// The path of the first string (or key) holding a NUL character, if any.
fn nul_field(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    let here = || if path.is_empty() { "body".to_owned() } else { path.to_owned() };
    match value {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_field(v, &format!("{}[{i}]", here()))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let field = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k.contains('\0') {
                Some(field)
            } else {
                nul_field(v, &field)
            }
        }),
        _ => None,
    }
}

/// Query parameters with a 400 that says which one is wrong.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| ApiError::BadRequest {
            code: "invalid_query",
            message: format!("Invalid query parameter {}: {}", e.path(), e.inner()),
        })
    }
}

/// A key that may read tokens: `admin` or `tokens`. For the two token routes.
pub struct AnyKey(pub Role);

/// A key that may call provider APIs through the relay: `admin` or `relay`.
pub struct RelayKey;

/// `AppState` behind an `Arc`, for the hot routes (token reads, the relay): axum clones a
/// route's state for every request, and there that clone would cost more than the work.
#[derive(Clone)]
pub struct Shared(pub std::sync::Arc<AppState>);

/// An `admin` key.
pub struct AdminKey;

/// The API key of `Authorization: Bearer <key>`.
pub fn bearer_key(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("Missing Authorization header: send `Authorization: Bearer <api key>`."))?;
    let value = header.to_str().map_err(|_| ApiError::Unauthorized("Malformed Authorization header."))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized("The Authorization header must be `Bearer <api key>`."))
}

async fn role_of(parts: &Parts, state: &AppState) -> Result<Role, ApiError> {
    let key = bearer_key(&parts.headers)?;
    // A key without a current verdict costs a PostgreSQL look-up: an address that
    // keeps presenting unknown keys is refused before it costs one.
    let address = parts.extensions.get::<crate::api::rate_limit::ClientAddr>().map(|a| a.0);
    if let Some(address) = address {
        if !state.keys.is_known(key) {
            state.limits.refuse_lookup(address)?;
        }
    }
    let role = state.keys.verify(key).await?;
    if let (None, Some(address)) = (role, address) {
        state.limits.count_unknown_key(address);
    }
    role.ok_or(ApiError::Unauthorized("Unknown or revoked API key."))
}

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match role_of(parts, state).await? {
            role if role.reads_tokens() => Ok(AnyKey(role)),
            _ => Err(ApiError::Forbidden("This API key may only relay provider calls; it cannot read tokens.")),
        }
    }
}

impl FromRequestParts<Shared> for RelayKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let state = &state.0;
        match role_of(parts, state).await? {
            role if role.relays() => Ok(RelayKey),
            _ => Err(ApiError::Forbidden("This API key may not relay provider calls; use a `relay` (or admin) key.")),
        }
    }
}

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match role_of(parts, state).await? {
            Role::Admin => Ok(AdminKey),
            Role::Tokens => {
                Err(ApiError::Forbidden("This API key may only read tokens; this route needs an admin key."))
            }
            Role::Relay => {
                Err(ApiError::Forbidden("This API key may only relay provider calls; this route needs an admin key."))
            }
        }
    }
}
