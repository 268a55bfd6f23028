//! The one HTTP error type: a stable snake_case `code`, a message that says
//! what was wrong, field errors for 422. 5xx bodies say nothing internal; the
//! cause goes to the log with the request id.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::connect::{ConnectError, MAX_OPEN_PER_WIDGET_TOKEN, MAX_OPEN_STATES};
use crate::limits::Refused;
use crate::read::ReadError;
use crate::refresh::RefreshError;
use crate::store::accounts::AccountError;
use crate::store::integrations::{IntegrationError, ProvisionError};
use crate::webhooks::endpoints::EndpointError;

pub use crate::invalid::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { message: String, errors: Vec<FieldError> },
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after_secs: u64 },
    #[error("{message}")]
    Unavailable { code: &'static str, message: String, retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest { code: "invalid_request", message: message.into() }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound { code, message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict { code: "conflict", message: message.into() }
    }
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        ApiError::Unprocessable { message: format!("Validation failed: {}", fields.join(", ")), errors }
    }
    pub fn invalid_field(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, code, message)])
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError::Unavailable { code, message: message.into(), retry_after_secs }
    }
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            // A pool that cannot hand out a connection is an outage the client may retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::error!(error = %err, "database unavailable");
                ApiError::unavailable("database_unavailable", "The database is unavailable; retry shortly.", 2)
            }
            _ => ApiError::Internal(err.into()),
        }
    }
}

// One mapping per domain error type: what each failure means to an API caller.
// A database that cannot be reached is a 503 to retry; anything the caller cannot
// fix is a 500 whose cause goes to the log only.

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::Exists => ApiError::conflict(
                "A connected account already exists for this owner and integration (or with this account_identifier).",
            ),
            AccountError::MultipleUnavailable => ApiError::not_found(
                "multiple_connections_unavailable",
                "This owner already has an account for this integration, which allows one account per owner.",
            ),
            AccountError::LimitReached => ApiError::Conflict {
                code: "connected_account_limit_reached",
                message: format!(
                    "This owner has {} accounts for this integration, the most allowed; disconnect one first.",
                    crate::store::accounts::MAX_ACCOUNTS_PER_OWNER
                ),
            },
            AccountError::SelectionRequired => selection_required(),
            AccountError::Db(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// 409 `account_selection_required`, as both SDKs read it.
fn selection_required() -> ApiError {
    ApiError::Conflict {
        code: "account_selection_required",
        message: "Several connected accounts match; name one with connected_account_id.".into(),
    }
}

impl From<IntegrationError> for ApiError {
    fn from(err: IntegrationError) -> Self {
        match err {
            IntegrationError::Db(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(err: RefreshError) -> Self {
        match err {
            RefreshError::Db(e) => e.into(),
            RefreshError::Account(e) => e.into(),
        }
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        ApiError::TooManyRequests {
            code: "rate_limited",
            message: refused.message(),
            retry_after_secs: refused.retry_after_secs(),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::NoIntegration(slug) => {
                ApiError::not_found("integration_not_found", format!("There is no enabled integration `{slug}`."))
            }
            // 503 with `Retry-After`: the SDKs retry it.
            ReadError::ProviderDown { retry_after } => ApiError::unavailable(
                "provider_unavailable",
                "The token has expired and the provider is not answering a refresh right now; retry shortly.",
                retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(2).clamp(1, 300),
            ),
            ReadError::IntegrationInvalid(slug) => ApiError::Conflict {
                code: "integration_invalid",
                message: format!(
                    "The provider refused the client credentials of integration `{slug}`; update them, then retry."
                ),
            },
            ReadError::AccountNotFound => ApiError::not_found(
                "connected_account_not_found",
                "There is no connected account with this connected_account_id for this owner and integration.",
            ),
            ReadError::SelectionRequired => selection_required(),
            ReadError::Integration(e) => e.into(),
            ReadError::Account(e) => e.into(),
            ReadError::Refresh(e) => e.into(),
        }
    }
}

/// A misconfigured integration is the caller's to fix (4xx); a database outage may be retried.
impl From<ConnectError> for ApiError {
    fn from(err: ConnectError) -> Self {
        let misconfigured = |m: &dyn std::fmt::Display| ApiError::BadRequest {
            code: "integration_misconfigured",
            message: format!("The integration cannot connect accounts: {m}"),
        };
        match err {
            ConnectError::TooManyOpen => ApiError::TooManyRequests {
                code: "too_many_open_authorizations",
                message: format!(
                    "This user already has {MAX_OPEN_STATES} connect flows open (a widget token {MAX_OPEN_PER_WIDGET_TOKEN}); \
                     finish one or retry when they expire."
                ),
                retry_after_secs: 60,
            },
            ConnectError::Misconfigured(m) | ConnectError::Integration(IntegrationError::Urls { message: m, .. }) => {
                misconfigured(&m)
            }
            ConnectError::Integration(e @ IntegrationError::UnknownProvider(_)) => misconfigured(&e),
            ConnectError::Db(e) | ConnectError::Integration(IntegrationError::Db(e)) => e.into(),
            ConnectError::Account(e) => e.into(),
            ConnectError::Organization(e) => e.into(),
            ConnectError::DisabledForOrganization { organization_id } => ApiError::not_found(
                "integration_not_found",
                format!("The organization `{organization_id}` has disabled this integration for its members."),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::connect::direct::DirectError> for ApiError {
    fn from(err: crate::connect::direct::DirectError) -> Self {
        use crate::connect::direct::DirectError;
        match err {
            DirectError::KeyRefused(status) => ApiError::invalid_field(
                "secret",
                "invalid_api_key",
                format!("The provider refused this API key (HTTP {status}); nothing was stored."),
            ),
            DirectError::ClientRefused(code) => ApiError::invalid_field(
                "client_secret",
                "invalid_client_credentials",
                format!("The provider refused this client ({code}); nothing was stored."),
            ),
            DirectError::ProviderUnavailable(why) => ApiError::unavailable(
                "provider_unavailable",
                format!("The provider could not check the credential ({why}); nothing was stored. Try again."),
                5,
            ),
            DirectError::Misconfigured(m) => ApiError::BadRequest {
                code: "integration_misconfigured",
                message: format!("The integration cannot connect accounts: {m}"),
            },
            DirectError::Account(e) => e.into(),
        }
    }
}

impl From<crate::store::organizations::ConfigurationError> for ApiError {
    fn from(err: crate::store::organizations::ConfigurationError) -> Self {
        use crate::store::organizations::ConfigurationError;
        match err {
            ConfigurationError::NoOrganization { .. } => {
                ApiError::invalid_field("organization_id", "required", format!("{err}."))
            }
            ConfigurationError::NotConfigured { .. } => ApiError::invalid_field(
                "organization_id",
                "organization_credentials_missing",
                format!("{err}: its admin sets the client id and secret first."),
            ),
            ConfigurationError::MissingConfig { ref param, .. } => ApiError::invalid_field(
                "organization_id",
                "organization_config_missing",
                format!("{err}: its admin sets config `{param}` first."),
            ),
            ConfigurationError::Db(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<ProvisionError> for ApiError {
    fn from(err: ProvisionError) -> Self {
        match err {
            ProvisionError::SlugTaken => ApiError::conflict("An integration with this slug already exists."),
            ProvisionError::Db(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<EndpointError> for ApiError {
    fn from(err: EndpointError) -> Self {
        match err {
            EndpointError::Db(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message, errors): (&str, String, Option<&[FieldError]>) = match &self {
            ApiError::BadRequest { code, message } => (code, message.clone(), None),
            ApiError::Unauthorized(m) => ("unauthorized", (*m).to_owned(), None),
            ApiError::Forbidden(m) => ("forbidden", (*m).to_owned(), None),
            ApiError::NotFound { code, message } => (code, message.clone(), None),
            ApiError::Conflict { code, message } => (code, message.clone(), None),
            ApiError::Unprocessable { message, errors } => ("validation_error", message.clone(), Some(errors)),
            ApiError::Unavailable { code, message, .. } | ApiError::TooManyRequests { code, message, .. } => {
                (code, message.clone(), None)
            }
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                ("internal_error", "Something went wrong on our side.".to_owned(), None)
            }
        };
        let body = serde_json::to_vec(&Body { code, message: &message, errors }).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        if let ApiError::Unavailable { retry_after_secs, .. } | ApiError::TooManyRequests { retry_after_secs, .. } =
            self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
