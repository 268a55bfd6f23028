//! The widget's HTTP API (DESIGN §3.6). `POST /widgets/token` (admin key)
//! mints a widget token for one user; the widget's own JSON API under
//! `/widget/api/` accepts only that token, in the `Authorization` header (never
//! a cookie, so another site cannot ride on it: CSRF-safe), and acts for that
//! user only. CORS is allowed on this API alone, for any origin but without
//! credentials: a page can only use it with a token the application gave it,
//! so opening it to every origin exposes nothing (the application's pages
//! that embed `<pipes-widget>` live on their own origins).
//! The pages and assets live in `crate::widget::pages`.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::options;
use axum::Json;
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowOrigin, CorsLayer};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::connect::check_id_or_label;
use crate::api::connect::{check_intent, intent};
use crate::api::connected_accounts::{not_connected, ConnectedAccountView};
use crate::api::credential_accounts::{self, ApiKeyBody, ClientCredentialsBody, Verb};
use crate::api::data_providers::{data_provider_view, owner_listing, DataProviderView};
use crate::api::extract::AdminKey;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::integrations::find;
use crate::auth_method::AuthMethod;
use crate::connect::{self, Binding, ConnectRequest};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::owner::{Owner, Ownership};
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::accounts::{AccountState, ConnectionRole, Selector};
use crate::time::rfc3339;
use crate::widget::{self, WidgetClaims, WidgetTokenError};

pub fn routes() -> OpenApiRouter<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([AUTHORIZATION, axum::http::header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    // Each route names OPTIONS itself: the app-wide 405 fallback replaces the
    // method routers' fallbacks, which would bypass the CORS layer for preflights.
    let api = OpenApiRouter::new()
        .routes(routes!(providers))
        .route("/widget/api/providers", options(preflight))
        .routes(routes!(authorize))
        .route("/widget/api/{slug}/authorize", options(preflight))
        .routes(routes!(credential))
        .route("/widget/api/{slug}/credential", options(preflight))
        .routes(routes!(disconnect))
        .route("/widget/api/{slug}", options(preflight))
        .layer(cors);
    OpenApiRouter::new().routes(routes!(create_token)).merge(api).merge(widget::pages::routes().into())
}

/// Reached only by an OPTIONS request that is not a CORS preflight.
async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WidgetTokenBody {
    pub user_id: Option<String>,
    /// Absent, `null` or empty: the user's accounts outside any organization.
    pub organization_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WidgetTokenResponse {
    /// Give it to `<pipes-widget token="…">` or open `/widget#token=…` (after `#`: never sent to a server).
    pub token: String,
    pub expires_at: String,
}

#[utoipa::path(post, path = "/widgets/token", tag = "widget", request_body = WidgetTokenBody, security(("api_key" = [])),
    responses((status = 200, body = WidgetTokenResponse), (status = 401, description = "No or unknown API key"),
        (status = 403, description = "Not an admin key"), (status = 422, description = "Field errors")))]
pub async fn create_token(
    _: AdminKey,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<WidgetTokenBody>,
) -> ApiResult<Json<WidgetTokenResponse>> {
    let mut errors = Vec::new();
    match body.user_id.as_deref() {
        Some(u) => check_id_or_label("user_id", u, &mut errors),
        None => errors.push(FieldError::new("user_id", "required", "user_id is required.")),
    }
    let org = body.organization_id.filter(|o| !o.is_empty());
    if let Some(o) = &org {
        check_id_or_label("organization_id", o, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let user_id = body.user_id.unwrap_or_default();
    let (token, expires_at) =
        widget::issue(state.keyring(), &user_id, org.as_deref(), crate::time::now(), state.config.widget_token_ttl);
    Ok(Json(WidgetTokenResponse { token, expires_at: rfc3339(expires_at) }))
}

/// A request authenticated by a widget token: the user it acts for, and the token's hash
/// (its open connect flows are counted).
pub struct WidgetSession(pub WidgetClaims, pub String);

/// 401 with a code the widget acts on: `widget_token_expired` asks the host page for a new token.
pub struct WidgetAuthError(&'static str, &'static str);

impl IntoResponse for WidgetAuthError {
    fn into_response(self) -> Response {
        (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "code": self.0, "message": self.1 }))).into_response()
    }
}

impl FromRequestParts<AppState> for WidgetSession {
    type Rejection = WidgetAuthError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WidgetAuthError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(WidgetAuthError(
                "unauthorized",
                "Send the widget token as `Authorization: Bearer <widget token>`.",
            ))?;
        let hash = crate::crypto::sha256_hex(token);
        widget::verify(state.keyring(), token, crate::time::now()).map(|c| WidgetSession(c, hash)).map_err(
            |e| match e {
                WidgetTokenError::Expired => WidgetAuthError(
                    "widget_token_expired",
                    "The widget token has expired; ask the application for a new one.",
                ),
                WidgetTokenError::Malformed | WidgetTokenError::BadSignature => {
                    WidgetAuthError("invalid_widget_token", "The widget token is not valid.")
                }
            },
        )
    }
}

/// One integration as the widget shows it, with every account of the owner.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WidgetProvider {
    #[serde(flatten)]
    pub provider: DataProviderView,
    /// Why the compatibility account needs reauthorization, in the provider's words (short).
    pub reauthorization_reason: Option<String>,
    /// The user may add another account ("Add another account").
    pub multiple_connections: bool,
    /// The organization's shared account: shown to its members, changed by the application only.
    pub read_only: bool,
    /// `oauth` (Connect goes to the provider), `api_key` (the user types a key) or
    /// `client_credentials` (a client id and secret).
    pub auth_method: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WidgetProviders {
    pub user_id: String,
    pub organization_id: Option<String>,
    /// When the widget token stops working.
    pub expires_at: String,
    pub data: Vec<WidgetProvider>,
}

#[utoipa::path(get, path = "/widget/api/providers", tag = "widget", security(("widget_token" = [])),
    responses((status = 200, body = WidgetProviders), (status = 401, description = "No, invalid or expired (`widget_token_expired`) widget token")))]
pub async fn providers(
    WidgetSession(claims, _): WidgetSession,
    State(state): State<AppState>,
) -> ApiResult<Json<WidgetProviders>> {
    let own = Owner::user(claims.user_id.clone(), claims.organization_id.clone());
    let mut listed: Vec<_> = owner_listing(&state, &own).await?.into_iter().map(|row| (row, false)).collect();
    if let Some(org) = &claims.organization_id {
        let shared = owner_listing(&state, &Owner::organization(org.clone())).await?;
        listed.extend(shared.into_iter().map(|row| (row, true)));
    }
    let data = listed
        .iter()
        .map(|((i, accounts), read_only)| WidgetProvider {
            provider: data_provider_view(i, accounts, true),
            reauthorization_reason: accounts
                .iter()
                .find(|a| a.role == ConnectionRole::Compatibility && a.state == AccountState::NeedsReauthorization)
                .and_then(|a| a.reauthorization_reason.clone()),
            multiple_connections: i.multiple_connections && !read_only,
            read_only: *read_only,
            auth_method: i.auth_method.as_str(),
        })
        .collect();
    Ok(Json(WidgetProviders {
        user_id: claims.user_id,
        organization_id: claims.organization_id,
        expires_at: rfc3339(claims.expires_at),
        data,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WidgetAuthorizeBody {
    /// The origin of the page that opened the popup: the completion page posts the result there.
    pub opener_origin: Option<String>,
    /// Without a popup: the page to come back to (Pipes' own origin or one in `PIPES_ALLOWED_RETURN_TO`).
    pub redirect_to: Option<String>,
    /// `add`: another account; `reauthorize`: the account named by `connected_account_id`.
    pub connection_intent: Option<String>,
    pub connected_account_id: Option<String>,
}

/// Starts a widget flow bound to this browser: the answer sets the browser cookie the
/// callback requires. Only Pipes' own pages may call it (the connect page, which the
/// widget opens), so that the cookie lands in the browser that goes on to the provider.
#[utoipa::path(post, path = "/widget/api/{slug}/authorize", tag = "widget", request_body = WidgetAuthorizeBody,
    params(("slug" = String, Path)), security(("widget_token" = [])),
    responses((status = 200, body = crate::api::connect::AuthorizeResponse), (status = 401, description = "Widget token missing, invalid or expired"),
        (status = 403, description = "Called from another origin than Pipes' own"),
        (status = 404, description = "Unknown or disabled integration"), (status = 422, description = "opener_origin or redirect_to not allowed"),
        (status = 429, description = "Too many open flows for this user or widget token")))]
pub async fn authorize(
    WidgetSession(claims, token_hash): WidgetSession,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<WidgetAuthorizeBody>,
) -> ApiResult<impl IntoResponse> {
    if !crate::api::browser::same_origin(&state.config, &headers) {
        return Err(ApiError::Forbidden(
            "Widget connections start from Pipes' own connect page (/widget/connect), which binds the browser.",
        ));
    }
    let mut errors = Vec::new();
    let opener = body.opener_origin.filter(|o| !o.is_empty()).and_then(|o| {
        match widget::pages::allowed_origin(&state.config, &o) {
            Some(origin) => Some(origin),
            None => {
                errors.push(FieldError::new(
                    "opener_origin",
                    "not_allowed",
                    "Not Pipes' origin nor one in PIPES_ALLOWED_RETURN_TO.",
                ));
                None
            }
        }
    });
    let back =
        body.redirect_to.filter(|r| !r.is_empty()).and_then(|r| match widget::pages::allowed_back(&state.config, &r) {
            Some(url) => Some(url),
            None => {
                errors.push(FieldError::new(
                    "redirect_to",
                    "not_allowed",
                    "Must be a URL on Pipes' origin or one in PIPES_ALLOWED_RETURN_TO.",
                ));
                None
            }
        });
    let intent = intent(body.connection_intent.as_deref(), body.connected_account_id.as_deref(), &mut errors);
    let integration = find(&state, &slug, Ownership::User).await?;
    if !integration.enabled {
        return Err(ApiError::not_found("integration_not_found", format!("The integration `{slug}` is disabled.")));
    }
    if integration.auth_method != crate::auth_method::AuthMethod::OAuth {
        return Err(crate::api::connected_accounts::auth_method_mismatch(&integration, "authorization flows"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let owner = Owner::user(claims.user_id.clone(), claims.organization_id.clone());
    check_intent(&state, &integration, &owner, &intent).await?;
    // The callback comes back to the completion page, which tells the opener (or goes back).
    let return_to = widget::pages::done_url(&state.config, opener.as_deref(), back.as_deref());
    let (browser, cookie) = crate::api::browser::bind(&state.config, &headers);
    let req = ConnectRequest {
        user_id: claims.user_id,
        organization_id: claims.organization_id,
        return_to: Some(return_to),
        intent,
        account_display_name: None,
        binding: Binding::Browser { browser, widget_token: token_hash },
    };
    let begun = connect::begin(&state, &integration, &req, crate::time::now()).await?;
    let answer =
        crate::api::connect::AuthorizeResponse { url: begun.url.to_string(), state: begun.state, completion: None };
    Ok(([(axum::http::header::SET_COOKIE, cookie)], Json(answer)))
}

/// An API key, or a client id and secret, the user typed into the widget.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WidgetCredentialBody {
    /// The API key (API-key integrations).
    #[schema(value_type = Option<String>)]
    pub secret: Option<Secret>,
    /// The client id and secret (client-credentials integrations).
    pub client_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<Secret>,
    /// `add`: another account; `reauthorize`: replace the credential of `connected_account_id`.
    pub connection_intent: Option<String>,
    pub connected_account_id: Option<String>,
}

/// Connects the user's account with a credential they give, checked with the provider
/// first (as `PUT /data-integrations/{slug}/api-key` and `/client-credentials` do).
#[utoipa::path(post, path = "/widget/api/{slug}/credential", tag = "widget", request_body = WidgetCredentialBody,
    params(("slug" = String, Path)), security(("widget_token" = [])),
    responses((status = 200, body = ConnectedAccountView), (status = 401, description = "Widget token missing, invalid or expired"),
        (status = 404, description = "Unknown or disabled integration"),
        (status = 422, description = "Field errors; `auth_method_mismatch`; the provider refused the credential")))]
pub async fn credential(
    WidgetSession(claims, _): WidgetSession,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<WidgetCredentialBody>,
) -> ApiResult<Json<ConnectedAccountView>> {
    let integration = find(&state, &slug, Ownership::User).await?;
    let verb = if body.connection_intent.as_deref() == Some("add") { Verb::Add } else { Verb::Upsert };
    let stray = |field: &str, errors: &mut Vec<FieldError>| {
        errors.push(FieldError::new(field, "not_allowed", format!("`{slug}` does not take `{field}`.")))
    };
    let mut errors = Vec::new();
    let account = match integration.auth_method {
        AuthMethod::ApiKey => {
            if body.client_id.is_some() {
                stray("client_id", &mut errors);
            }
            if body.client_secret.is_some() {
                stray("client_secret", &mut errors);
            }
            if !errors.is_empty() {
                return Err(ApiError::invalid(errors));
            }
            let key = ApiKeyBody {
                user_id: Some(claims.user_id),
                organization_id: claims.organization_id,
                connection_owner: None,
                connected_account_id: body.connected_account_id,
                connection_intent: body.connection_intent,
                secret: body.secret,
                account_display_name: None,
                account_identifier: None,
            };
            credential_accounts::api_key(&state, &slug, key, verb).await?
        }
        AuthMethod::ClientCredentials => {
            if body.secret.is_some() {
                stray("secret", &mut errors);
                return Err(ApiError::invalid(errors));
            }
            let client = ClientCredentialsBody {
                user_id: Some(claims.user_id),
                organization_id: claims.organization_id,
                connection_owner: None,
                connected_account_id: body.connected_account_id,
                connection_intent: body.connection_intent,
                client_id: body.client_id,
                client_secret: body.client_secret,
                config: None,
                account_display_name: None,
                account_identifier: None,
            };
            credential_accounts::client_credentials(&state, &slug, client, verb).await?
        }
        AuthMethod::OAuth => {
            return Err(crate::api::connected_accounts::auth_method_mismatch(&integration, "credentials"))
        }
    };
    Ok(Json(account))
}

/// Which of the user's accounts a widget disconnect is for. An unknown parameter is refused (400).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WidgetAccountQuery {
    /// The account; absent: the compatibility account.
    pub connected_account_id: Option<String>,
}

#[utoipa::path(delete, path = "/widget/api/{slug}", tag = "widget", params(("slug" = String, Path), WidgetAccountQuery), security(("widget_token" = [])),
    responses((status = 204, description = "Disconnected"), (status = 401, description = "Widget token missing, invalid or expired"),
        (status = 404, description = "No integration, or no account of this user")))]
pub async fn disconnect(
    WidgetSession(claims, _): WidgetSession,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiQuery(q): ApiQuery<WidgetAccountQuery>,
) -> ApiResult<StatusCode> {
    let selector = match q.connected_account_id.filter(|id| !id.is_empty()) {
        Some(id) => Selector::Only(id.into()),
        None => Selector::Compatibility,
    };
    // The user's own accounts only: an organization's shared account is read-only here.
    let integration = find(&state, &slug, Ownership::User).await?;
    let owner = Owner::user(claims.user_id, claims.organization_id);
    state.connections.disconnect(&integration, &owner, &selector).await?.ok_or_else(|| not_connected(&slug))?;
    Ok(StatusCode::NO_CONTENT)
}
