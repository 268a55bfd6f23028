//! Token read routes (DESIGN §3.1), for `tokens` and `admin` keys:
//! `POST /data-integrations/{slug}/token` and `/credentials`. The work is in
//! `crate::read`; this file validates the request and picks the shape.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AnyKey;
use crate::error::{ApiError, FieldError};
use crate::read::answer::{CredentialAnswer, Shape, TokenAnswer};
use crate::read::ReadTarget;
use crate::state::AppState;
use crate::store::accounts::Selector;

/// Longest accepted user, organization or account id.
const MAX_ID_LEN: usize = 256;

/// The two routes, with the state behind one `Arc`: axum clones a route's
/// state for every request, and on this path that clone would cost more
/// than the cache hit itself.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(token)).routes(routes!(credentials)).with_state(Shared(Arc::new(state.clone())))
}

pub use crate::api::extract::Shared;

/// `AnyKey` for routes whose state is `Shared`.
pub struct TokenKey;

impl FromRequestParts<Shared> for TokenKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        AnyKey::from_request_parts(parts, &state.0).await.map(|_| TokenKey)
    }
}

/// The body both routes take. Unknown fields are ignored; `null` means absent.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The user who owns the account; for an organization's shared account, the member
    /// it is read on behalf of.
    #[schema(examples("user_123"))]
    pub user_id: String,
    /// Scopes the connection to an organization.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// The owner's account to answer for (404 `connected_account_not_found` when it is
    /// not one of the owner's).
    #[serde(default)]
    pub connected_account_id: Option<String>,
    /// `user` (the default): the user's own account; `organization`: the organization's
    /// shared account (needs `organization_id`).
    #[serde(default)]
    pub connection_owner: Option<String>,
    /// `true`: without `connected_account_id`, the owner's one account whatever its role,
    /// and 409 `account_selection_required` when there are several. Otherwise only the
    /// owner's compatibility account is considered.
    #[serde(default)]
    pub supports_multiple_connections: Option<bool>,
}

impl TokenRequest {
    pub(crate) fn into_target(self) -> Result<ReadTarget, ApiError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, value: Option<&str>, required: bool| match value {
            None if required => errors.push(FieldError::new(field, "required", format!("`{field}` is required."))),
            Some(v) if v.trim().is_empty() => {
                let code = if required { "required" } else { "invalid" };
                errors.push(FieldError::new(
                    field,
                    code,
                    format!("`{field}` must not be empty; omit it or send null instead."),
                ))
            }
            Some(v) if v.contains('\0') => {
                errors.push(FieldError::new(field, "invalid", format!("`{field}` must not contain NUL characters.")))
            }
            Some(v) if v.len() > MAX_ID_LEN => {
                errors.push(FieldError::new(field, "too_long", format!("`{field}` is longer than {MAX_ID_LEN} bytes.")))
            }
            _ => {}
        };
        check("user_id", Some(&self.user_id), true);
        check("organization_id", self.organization_id.as_deref(), false);
        check("connected_account_id", self.connected_account_id.as_deref(), false);
        let owner =
            crate::owner::requested(self.connection_owner.as_deref(), self.user_id, self.organization_id, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let selector = match (self.connected_account_id, self.supports_multiple_connections) {
            (Some(id), _) => Selector::Only(id.into()),
            (None, Some(true)) => Selector::Sole,
            (None, _) => Selector::Compatibility,
        };
        Ok(ReadTarget { owner, selector })
    }
}

/// The validated body (see [`parse_target`]).
pub struct TargetBody(pub ReadTarget);

impl<S: Send + Sync> FromRequest<S> for TargetBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BadRequest { code: "payload_too_large", message: "The request body is too large.".into() }
            } else {
                ApiError::bad_request(format!("Could not read the request body: {e}"))
            }
        })?;
        parse_target(&bytes).map(TargetBody)
    }
}

/// The account a token read asks about, from its JSON body. The common case is
/// parsed straight into the struct; only a failure goes through the slower
/// parser that names the bad field.
pub fn parse_target(bytes: &[u8]) -> Result<ReadTarget, ApiError> {
    // serde would also take a JSON array for a struct; only objects are valid.
    let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = match serde_json::from_slice::<TokenRequest>(bytes) {
        Ok(request) if is_object => request,
        _ => crate::api::extract::parse_json::<TokenRequest>(bytes)?,
    };
    parsed.into_target()
}

async fn answer(state: &AppState, slug: &str, target: &ReadTarget, shape: Shape) -> Response {
    match state.reads.read(slug, target).await {
        Ok(answer) => {
            let mut response = Response::new(Body::from(answer.body(shape)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}

/// A fresh access token for a connected account.
#[utoipa::path(
    post,
    path = "/data-integrations/{slug}/token",
    tag = "tokens",
    params(("slug" = String, Path, description = "The integration's slug")),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "`active: true` with the token, valid for at least `min_validity`; or `active: false` with why there is none (`not_installed`, `needs_reauthorization`)", body = TokenAnswer),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "Missing or unknown API key"),
        (status = 404, description = "Unknown or disabled integration (`integration_not_found`), or a `connected_account_id` that is not the owner's (`connected_account_not_found`)"),
        (status = 409, description = "The provider refused the integration's client credentials (`integration_invalid`), or several accounts match (`account_selection_required`)"),
        (status = 422, description = "A missing or invalid field"),
        (status = 503, description = "The token expired and the provider is down; see `Retry-After`"),
    ),
    security(("api_key" = []))
)]
pub async fn token(
    State(state): State<Shared>,
    _key: TokenKey,
    Path(slug): Path<String>,
    TargetBody(target): TargetBody,
) -> Response {
    answer(&state.0, &slug, &target, Shape::Token).await
}

/// The same as `/token`, shaped as a vended credential.
#[utoipa::path(
    post,
    path = "/data-integrations/{slug}/credentials",
    tag = "tokens",
    params(("slug" = String, Path, description = "The integration's slug")),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "`active: true` with the credential, valid for at least `min_validity`; or `active: false` with why there is none (`not_installed`, `needs_reauthorization`)", body = CredentialAnswer),
        (status = 400, description = "Malformed JSON"),
        (status = 401, description = "Missing or unknown API key"),
        (status = 404, description = "Unknown or disabled integration (`integration_not_found`), or a `connected_account_id` that is not the owner's (`connected_account_not_found`)"),
        (status = 409, description = "Several accounts match (`account_selection_required`), or the client credentials were refused (`integration_invalid`)"),
        (status = 422, description = "A missing or invalid field"),
        (status = 503, description = "The token expired and the provider is down; see `Retry-After`"),
    ),
    security(("api_key" = []))
)]
pub async fn credentials(
    State(state): State<Shared>,
    _key: TokenKey,
    Path(slug): Path<String>,
    TargetBody(target): TargetBody,
) -> Response {
    answer(&state.0, &slug, &target, Shape::Credential).await
}
