//! The three answer shapes of a token read (DESIGN §3.1), rendered once per
//! cached token so a hit only copies bytes: `/token` answers an
//! `access_token` object, `/credentials` the same data as a `credential`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;

use super::local::Ready;
use crate::auth_method::AuthMethod;
use crate::cache::CachedToken;

/// What a valid read answers (always HTTP 200).
#[derive(Debug, Clone)]
pub enum Answer {
    Active(Arc<Ready>),
    NotInstalled,
    NeedsReauthorization,
}

/// Which route is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Token,
    Credential,
}

impl Answer {
    /// The JSON body for `shape`.
    pub fn body(&self, shape: Shape) -> Bytes {
        match (self, shape) {
            (Answer::Active(ready), Shape::Token) => ready.token_body.clone(),
            (Answer::Active(ready), Shape::Credential) => ready.credential_body.clone(),
            (Answer::NotInstalled, _) => Bytes::from_static(br#"{"active":false,"error":"not_installed"}"#),
            (Answer::NeedsReauthorization, _) => {
                Bytes::from_static(br#"{"active":false,"error":"needs_reauthorization"}"#)
            }
        }
    }
}

/// The 200 answer of `/token`: a token, or why there is none; `active` tells which.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only describes the wire shapes; the bodies are rendered by `ready` and `Answer::body`.
pub enum TokenAnswer<'a> {
    Active(ActiveToken<'a>),
    Inactive(Inactive),
}

/// The 200 answer of `/credentials`: a credential, or why there is none; `active` tells which.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CredentialAnswer<'a> {
    Active(ActiveCredential<'a>),
    Inactive(Inactive),
}

/// A schema that admits only `value`, so the shapes of a `oneOf` exclude each other.
fn always(ty: Type, value: impl Into<Value>) -> Object {
    ObjectBuilder::new().schema_type(ty).enum_values(Some([value.into()])).build()
}

fn always_true() -> Object {
    always(Type::Boolean, true)
}

fn always_false() -> Object {
    always(Type::Boolean, false)
}

fn always_access_token() -> Object {
    always(Type::String, "access_token")
}

fn always_credential() -> Object {
    always(Type::String, "credential")
}

fn token_methods() -> Object {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["oauth", "client_credentials"])).build()
}

fn always_api_key() -> Object {
    always(Type::String, "api_key")
}

/// `{"active": true, "access_token": {…}}`.
#[derive(Serialize, ToSchema)]
pub struct ActiveToken<'a> {
    #[schema(schema_with = always_true)]
    pub active: bool,
    pub access_token: AccessToken<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct AccessToken<'a> {
    /// Always `access_token`.
    #[schema(schema_with = always_access_token)]
    pub object: &'static str,
    pub access_token: &'a str,
    /// RFC 3339 with milliseconds; `null` for tokens that do not expire.
    #[serde(with = "crate::time::wire_opt")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: &'a [String],
    /// The integration's configured scopes that the grant lacks.
    pub missing_scopes: &'a [String],
}

/// `{"active": true, "credential": {…}}`.
#[derive(Serialize, ToSchema)]
pub struct ActiveCredential<'a> {
    #[schema(schema_with = always_true)]
    pub active: bool,
    pub credential: Credential<'a>,
}

/// A vended credential: an OAuth or client-credentials token, or an API key.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Credential<'a> {
    Token(TokenCredential<'a>),
    Key(KeyCredential<'a>),
}

/// An OAuth or client-credentials access token.
#[derive(Serialize, ToSchema)]
pub struct TokenCredential<'a> {
    /// Always `credential`.
    #[schema(schema_with = always_credential)]
    pub object: &'static str,
    /// `oauth` or `client_credentials`.
    #[schema(schema_with = token_methods)]
    pub auth_method: &'static str,
    pub value: &'a str,
    #[serde(with = "crate::time::wire_opt")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: &'a [String],
    pub missing_scopes: &'a [String],
    /// Non-secret fields of the provider's token response; none are kept, so `{}`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The integration's non-secret provider settings (e.g. a Zendesk subdomain), with a
    /// client-credentials account's own `config` over them.
    pub config: &'a BTreeMap<String, String>,
}

/// An API key, as its owner gave it.
#[derive(Serialize, ToSchema)]
pub struct KeyCredential<'a> {
    /// Always `credential`.
    #[schema(schema_with = always_credential)]
    pub object: &'static str,
    /// Always `api_key`.
    #[schema(schema_with = always_api_key)]
    pub auth_method: &'static str,
    pub value: &'a str,
    pub config: &'a BTreeMap<String, String>,
}

/// `{"active": false, "error": "not_installed" | "needs_reauthorization"}`.
#[derive(Serialize, ToSchema)]
pub struct Inactive {
    #[schema(schema_with = always_false)]
    pub active: bool,
    pub error: InactiveReason,
}

/// Why a valid read has no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InactiveReason {
    /// The owner has no connected account for this integration.
    NotInstalled,
    /// The grant was revoked or expired: the user must reconnect.
    NeedsReauthorization,
}

/// Renders the ready answers of a cached token that stays fresh until
/// `min_validity` plus the serve margin before it expires; `settings` are the
/// integration's, `method` how its accounts authenticate.
pub fn ready(
    token: &CachedToken,
    min_validity: Duration,
    settings: &BTreeMap<String, String>,
    method: AuthMethod,
) -> Ready {
    let secret = token.access_token.expose();
    let token_body = serde_json::to_vec(&ActiveToken {
        active: true,
        access_token: AccessToken {
            object: "access_token",
            access_token: secret,
            expires_at: token.expires_at,
            scopes: &token.scopes,
            missing_scopes: &token.missing_scopes,
        },
    });
    let merged;
    let config = if token.config.is_empty() {
        settings
    } else {
        merged = settings.iter().chain(&token.config).map(|(k, v)| (k.clone(), v.clone())).collect();
        &merged
    };
    let credential_body = serde_json::to_vec(&ActiveCredential {
        active: true,
        credential: match method {
            AuthMethod::ApiKey => {
                Credential::Key(KeyCredential { object: "credential", auth_method: "api_key", value: secret, config })
            }
            AuthMethod::OAuth | AuthMethod::ClientCredentials => Credential::Token(TokenCredential {
                object: "credential",
                auth_method: method.as_str(),
                value: secret,
                expires_at: token.expires_at,
                scopes: &token.scopes,
                missing_scopes: &token.missing_scopes,
                metadata: serde_json::Map::new(),
                config,
            }),
        },
    });
    Ready {
        account_id: token.account_id.clone(),
        version: token.version,
        fresh_until: crate::policy::servable_until(token.expires_at, min_validity),
        expires_at: token.expires_at,
        stored: Instant::now(),
        // Serializing strings and string slices cannot fail.
        token_body: token_body.map(Bytes::from).unwrap_or_default(),
        credential_body: credential_body.map(Bytes::from).unwrap_or_default(),
    }
}
