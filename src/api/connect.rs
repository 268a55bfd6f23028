//! The connect routes (DESIGN §3.2): `POST /data-integrations/{slug}/authorize`
//! (admin) starts a flow; `GET /data-integrations/{slug}/callback` is where the
//! browser comes back, and redirects to `return_to` or shows a small page.
//!
//! Every flow is bound to whoever started it (securing authorizations): without a
//! `code_challenge`, the URL answered is the confirmation page `GET /connect/{ticket}`,
//! which says whose account the provider account joins and, when the person continues
//! (`POST`), sets the browser cookie the callback requires. With a `code_challenge`,
//! the callback saves nothing: it hands `return_to` a `connect_code`, and
//! `POST /data-integrations/finish` with the `code_verifier` saves the account.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::browser;
use crate::api::extract::AdminKey;
use crate::api::extract::ApiJson;
use crate::api::integrations::find;
use crate::config::Config;
use crate::connect::bound::{self, FinishRejection};
use crate::connect::{self, Binding, Bound, ConnectRequest, Intent, Outcome, ProviderAnswer};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::ids::IdKind;
use crate::owner::Owner;
use crate::state::AppState;
use crate::store::accounts::{self, AccountError, Selector};
use crate::store::integrations::{self, Integration};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(callback))
        .routes(routes!(confirmation, confirm))
        .routes(routes!(finish))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AuthorizeBody {
    pub user_id: Option<String>,
    /// `null` means none.
    pub organization_id: Option<String>,
    /// Where the browser goes afterwards; its origin must be in `PIPES_ALLOWED_RETURN_TO`.
    pub return_to: Option<String>,
    /// `user` (default): the account is the user's own; `organization`: the
    /// organization's shared account, connected by `user_id` (needs `organization_id`).
    pub connection_owner: Option<String>,
    /// Per-connection config is not supported: config values are set on the integration.
    #[schema(value_type = Option<Object>)]
    pub config: Option<HashMap<String, String>>,
    /// `add`: connect another account beside the owner's; `reauthorize`: the account
    /// named by `connected_account_id`. Absent: the owner's (compatibility) account.
    pub connection_intent: Option<String>,
    /// With `connection_intent: reauthorize` only.
    pub connected_account_id: Option<String>,
    /// A label for the account. Omitted: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::provisioning::present")]
    #[schema(value_type = Option<String>)]
    pub account_display_name: Option<Option<String>>,
    /// Session binding: `base64url(SHA-256(code_verifier))`. The callback then saves
    /// nothing and redirects to `return_to` (required, one of `PIPES_RETURN_URLS`) with a
    /// `connect_code`, which `POST /data-integrations/finish` redeems with the verifier.
    pub code_challenge: Option<String>,
    /// `S256` (the default and the only one).
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthorizeResponse {
    /// Send the user's browser here: Pipes' confirmation page, or with a
    /// `code_challenge` the provider's authorization page.
    pub url: String,
    /// The flow's state: also on the redirect to `return_to`, to match the two.
    pub state: String,
    /// `finish_required` for a session-bound flow: `return_to` gets a `connect_code`
    /// that the application's server must finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<&'static str>,
}

/// A user or organization id, or an account label: 1-256 characters, no control characters.
pub fn check_id_or_label(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    if value.is_empty() || value.chars().count() > 256 || value.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "invalid", "Must be 1-256 characters without control characters."));
    }
}

/// `return_to` must be an absolute http(s) URL on an allowed origin.
fn check_return_to(config: &Config, value: &str) -> Result<String, FieldError> {
    let url = url::Url::parse(value)
        .map_err(|_| FieldError::new("return_to", "invalid_url", "return_to must be an absolute URL."))?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || !config.allowed_return_to.contains(&origin) {
        return Err(FieldError::new(
            "return_to",
            "not_allowed",
            format!("The origin {origin} is not in PIPES_ALLOWED_RETURN_TO."),
        ));
    }
    Ok(url.to_string())
}

#[utoipa::path(post, path = "/data-integrations/{slug}/authorize", tag = "connect", request_body = AuthorizeBody,
    params(("slug" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = AuthorizeResponse), (status = 404, description = "Unknown or disabled integration"),
        (status = 422, description = "Field errors (e.g. return_to not allowed)")))]
pub async fn authorize(
    _: AdminKey,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<AuthorizeBody>,
) -> ApiResult<Json<AuthorizeResponse>> {
    let mut errors = Vec::new();
    match body.user_id.as_deref() {
        Some(u) => check_id_or_label("user_id", u, &mut errors),
        None => errors.push(FieldError::new("user_id", "required", "user_id is required.")),
    }
    let organization_id = body.organization_id.clone().filter(|o| !o.is_empty());
    if let Some(org) = &organization_id {
        check_id_or_label("organization_id", org, &mut errors);
    }
    let user_id = body.user_id.clone().unwrap_or_default();
    let owner = crate::owner::requested(
        body.connection_owner.as_deref(),
        user_id.clone(),
        organization_id.clone(),
        &mut errors,
    );
    let return_to = match body.return_to.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        // A session-bound flow's return_to is one registered URL exactly (checked with the challenge).
        Some(r) if body.code_challenge.is_some() => Some(r.to_owned()),
        Some(r) => check_return_to(&state.config, r).map_err(|e| errors.push(e)).ok(),
    };
    let intent = intent(body.connection_intent.as_deref(), body.connected_account_id.as_deref(), &mut errors);
    if let Some(Some(label)) = &body.account_display_name {
        check_id_or_label("account_display_name", label, &mut errors);
    }
    let binding = binding(&state.config, &body, return_to.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let integration = find(&state, &slug, owner.ownership()).await?;
    if !integration.enabled {
        return Err(ApiError::not_found("integration_not_found", format!("The integration `{slug}` is disabled.")));
    }
    if integration.auth_method != crate::auth_method::AuthMethod::OAuth {
        return Err(crate::api::connected_accounts::auth_method_mismatch(&integration, "authorization flows"));
    }
    if let Some(config) = body.config.filter(|c| !c.is_empty()) {
        if config.iter().any(|(k, v)| integration.settings.get(k) != Some(v)) {
            errors.push(FieldError::new(
                "config",
                "unsupported",
                "Per-connection config is not supported; set config on the integration.",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    check_intent(&state, &integration, &owner, &intent).await?;
    let req = ConnectRequest {
        user_id,
        organization_id,
        return_to,
        intent,
        account_display_name: body.account_display_name,
        binding,
    };
    let completion = matches!(req.binding, Binding::CodeChallenge(_)).then_some("finish_required");
    let begun = connect::begin(&state, &integration, &req, crate::time::now()).await?;
    Ok(Json(AuthorizeResponse { url: begun.url.to_string(), state: begun.state, completion }))
}

/// How an API-started flow is bound: by the application's `code_challenge` (S256 only,
/// with a registered `return_to`), else by the confirmation page.
fn binding(config: &Config, body: &AuthorizeBody, return_to: Option<&str>, errors: &mut Vec<FieldError>) -> Binding {
    let challenge = body.code_challenge.as_deref();
    match body.code_challenge_method.as_deref() {
        None | Some("S256") => {}
        Some(_) => errors.push(FieldError::new("code_challenge_method", "unsupported", "Only `S256` is supported.")),
    }
    let Some(challenge) = challenge else {
        if body.code_challenge_method.is_some() {
            errors.push(FieldError::new("code_challenge_method", "unsupported", "Requires `code_challenge`."));
        }
        return Binding::Confirmation;
    };
    // An S256 challenge is a base64url SHA-256: 43 characters without padding.
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        errors.push(FieldError::new(
            "code_challenge",
            "invalid",
            "Must be base64url(SHA-256(code_verifier)) without padding: 43 characters.",
        ));
    }
    match return_to.map(url::Url::parse) {
        None => errors.push(FieldError::new("return_to", "required", "`return_to` is required with `code_challenge`.")),
        Some(Ok(url)) if config.is_registered_return_url(&url) => {}
        Some(_) => errors.push(FieldError::new(
            "return_to",
            "return_to_requires_exact_match",
            "With `code_challenge`, `return_to` must exactly match one of PIPES_RETURN_URLS (no query or fragment).",
        )),
    }
    Binding::CodeChallenge(challenge.to_owned())
}

/// The flow's intent from `connection_intent` and `connected_account_id`, checked into `errors`.
pub(crate) fn intent(
    connection_intent: Option<&str>,
    connected_account_id: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Intent {
    let account = connected_account_id.filter(|id| !id.is_empty());
    if account.is_some_and(|id| !IdKind::ConnectedAccount.matches(id)) {
        errors.push(FieldError::new("connected_account_id", "invalid", "Not a connected account id."));
    }
    match (connection_intent, account) {
        (None, None) => Intent::Connect,
        (Some("add"), None) => Intent::Add,
        (Some("reauthorize"), Some(id)) => Intent::Reauthorize(id.into()),
        (Some("reauthorize"), None) => {
            errors.push(FieldError::new(
                "connected_account_id",
                "required",
                "`connected_account_id` is required with `connection_intent` `reauthorize`.",
            ));
            Intent::Connect
        }
        (None | Some("add"), Some(_)) => {
            errors.push(FieldError::new(
                "connected_account_id",
                "unsupported",
                "`connected_account_id` is taken with `connection_intent` `reauthorize` only.",
            ));
            Intent::Connect
        }
        (Some(_), _) => {
            errors.push(FieldError::new(
                "connection_intent",
                "invalid",
                "`connection_intent` must be `add` or `reauthorize`.",
            ));
            Intent::Connect
        }
    }
}

/// Refuses at once a flow whose result is known already: an add where the integration
/// allows one account and the owner has it, a reauthorization of another's account.
pub(crate) async fn check_intent(
    state: &AppState,
    integration: &Integration,
    owner: &Owner,
    intent: &Intent,
) -> ApiResult<()> {
    match intent {
        Intent::Connect => Ok(()),
        Intent::Add if integration.multiple_connections => Ok(()),
        Intent::Add => {
            let held = accounts::summaries_for_owner(&state.db, owner).await?;
            if held.iter().any(|a| a.integration_id == integration.id) {
                return Err(AccountError::MultipleUnavailable.into());
            }
            Ok(())
        }
        Intent::Reauthorize(id) => {
            let selector = Selector::Only(id.clone());
            match accounts::select(&state.db, state.keyring(), &integration.id, owner, &selector).await? {
                Some(_) => Ok(()),
                None => Err(ApiError::not_found(
                    "connected_account_not_found",
                    "There is no connected account with this connected_account_id for this owner and integration.",
                )),
            }
        }
    }
}

#[utoipa::path(get, path = "/data-integrations/{slug}/callback", tag = "connect",
    params(("slug" = String, Path), ("code" = Option<String>, Query), ("state" = String, Query), ("error" = Option<String>, Query)),
    responses((status = 302, description = "Back to return_to with provider, status (and error)"),
        (status = 200, description = "A result page when there is no return_to"),
        (status = 400, description = "Unknown, expired, reused or foreign state: a page; nothing stored", content_type = "text/html"),
        (status = 404, description = "Unknown integration: a page", content_type = "text/html")))]
pub async fn callback(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // First value of each parameter; a browser request never gets a JSON error here.
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    match run_callback(&state, &slug, params, &headers).await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = ?err, integration = %slug, "callback failed");
            let status = if err.status().is_server_error() { err.status() } else { StatusCode::BAD_REQUEST };
            page(status, "Something went wrong", &err.to_string())
        }
    }
}

async fn run_callback(
    state: &AppState,
    slug: &str,
    mut params: HashMap<String, String>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let Some(raw_state) = params.remove("state").filter(|s| !s.is_empty()) else {
        return Ok(page(StatusCode::BAD_REQUEST, "Invalid sign-in link", "The provider's answer has no state."));
    };
    let pending = match connect::consume_state(state, slug, &raw_state, crate::time::now()).await? {
        Ok(p) => p,
        Err(rejection) => {
            tracing::info!(integration = %slug, ?rejection, "callback state refused");
            return Ok(page(StatusCode::BAD_REQUEST, "Invalid sign-in link", rejection.message()));
        }
    };
    // The state names the integration root (user- or organization-owned) it was made for.
    let Some(integration) = integrations::by_id(&state.db, state.keyring(), &pending.integration_id).await? else {
        return Ok(page(StatusCode::NOT_FOUND, "Unknown integration", "This integration does not exist."));
    };
    let answer = ProviderAnswer {
        code: params.remove("code").filter(|c| !c.is_empty()),
        error: params.remove("error").filter(|e| !e.is_empty()),
        error_description: params.remove("error_description"),
    };
    let name = integration.display_name();
    match &pending.bound {
        // Only the browser that started (or confirmed) the flow may finish it.
        Bound::Browser(expected) => {
            if expected.is_none() || browser::hash(&state.config, headers) != *expected {
                let fail = connect::failure(
                    "browser_mismatch",
                    "The connection was started in another browser, so nothing was connected.",
                    None,
                    None,
                );
                connect::failed(state, &integration, &pending, fail, crate::time::now()).await?;
                return Ok(page(
                    StatusCode::BAD_REQUEST,
                    "Not connected",
                    &format!(
                        "This {name} connection was started in another browser, so nothing was connected. \
                         Start again from the application, in this browser."
                    ),
                ));
            }
        }
        // Saved only when the application's server finishes with the verifier.
        Bound::CodeChallenge(_) => {
            if let (Some(code), None) = (&answer.code, &answer.error) {
                let connect_code = bound::hand_off(state, &raw_state, code, crate::time::now()).await?;
                let to = pending.return_to.as_deref().unwrap_or_default();
                return Ok(redirect(to, &[("provider", slug), ("connect_code", &connect_code), ("state", &raw_state)]));
            }
        }
    }
    let outcome = connect::complete(state, &integration, &pending, answer).await?;
    Ok(match (outcome, pending.return_to) {
        (Outcome::Connected(_), Some(to)) => {
            redirect(&to, &[("provider", slug), ("status", "connected"), ("state", &raw_state)])
        }
        (Outcome::Failed(f), Some(to)) => {
            redirect(&to, &[("provider", slug), ("status", "error"), ("error", &f.error_code), ("state", &raw_state)])
        }
        (Outcome::Connected(_), None) => {
            page(StatusCode::OK, "Connected", &format!("Your {name} account is connected. You can close this window."))
        }
        (Outcome::Failed(f), None) => {
            page(StatusCode::OK, "Not connected", &format!("{name} was not connected: {}", f.error_reason))
        }
    })
}

/// No `Debug`: the connect code and the verifier are secrets.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishBody {
    /// From the redirect to `return_to`.
    pub connect_code: Option<String>,
    /// The verifier behind the flow's `code_challenge`, kept in the user's session.
    pub code_verifier: Option<String>,
    /// The flow's `state` (answered by authorize, and on the redirect). Optional; when
    /// sent, it must be this connect code's flow.
    pub state: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FinishResponse {
    pub connected_account: crate::api::connected_accounts::ConnectedAccountView,
}

#[utoipa::path(post, path = "/data-integrations/finish", tag = "connect", request_body = FinishBody,
    security(("api_key" = [])),
    responses((status = 200, body = FinishResponse),
        (status = 400, description = "Unknown, used or expired connect_code, another flow's state, a wrong code_verifier, or the provider refused the code: nothing saved"),
        (status = 422, description = "Field errors")))]
pub async fn finish(
    _: AdminKey,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FinishBody>,
) -> ApiResult<Json<FinishResponse>> {
    let mut errors = Vec::new();
    let mut required = |field: &str, value: &Option<String>| -> String {
        match value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) if v.len() <= 256 => v.to_owned(),
            Some(_) => {
                errors.push(FieldError::new(field, "invalid", "At most 256 characters."));
                String::new()
            }
            None => {
                errors.push(FieldError::new(field, "required", format!("`{field}` is required.")));
                String::new()
            }
        }
    };
    let connect_code = required("connect_code", &body.connect_code);
    let verifier = required("code_verifier", &body.code_verifier);
    // Optional, as the SDKs send it; when present it must be this flow's.
    let raw_state = body.state.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
    if raw_state.as_ref().is_some_and(|v| v.len() > 256) {
        errors.push(FieldError::new("state", "invalid", "At most 256 characters."));
    }
    // RFC 7636 §4.1: 43-128 unreserved characters.
    if !verifier.is_empty()
        && (!(43..=128).contains(&verifier.len())
            || !verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')))
    {
        errors.push(FieldError::new("code_verifier", "invalid", "Must be 43-128 characters of [A-Za-z0-9-._~]."));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let (pending, provider_code) =
        match bound::redeem(&state, &connect_code, &verifier, raw_state.as_deref(), crate::time::now()).await? {
            Ok(found) => found,
            Err(rejection) => {
                tracing::info!(?rejection, "finish refused");
                return Err(ApiError::BadRequest { code: rejection.code(), message: rejection.message().to_owned() });
            }
        };
    let Some(integration) = integrations::by_id(&state.db, state.keyring(), &pending.integration_id).await? else {
        return Err(ApiError::BadRequest {
            code: FinishRejection::Unknown.code(),
            message: "The flow's integration no longer exists.".into(),
        });
    };
    let answer = ProviderAnswer { code: Some(provider_code), error: None, error_description: None };
    match connect::complete(&state, &integration, &pending, answer).await? {
        Outcome::Connected(account) => {
            Ok(Json(FinishResponse { connected_account: crate::api::connected_accounts::view(&account.summary()) }))
        }
        // 400 with the hosted product's finish codes; the connection_failed event is recorded.
        Outcome::Failed(f) => Err(ApiError::BadRequest {
            code: match f.error_code.as_str() {
                "connected_account_limit_reached" => "connected_account_limit_reached",
                "multiple_connections_unavailable" => "multiple_connections_unavailable",
                "connected_account_not_found" => "connected_account_not_found",
                _ => "authorization_code_exchange_error",
            },
            message: f.error_reason.clone(),
        }),
    }
}

#[utoipa::path(get, path = "/connect/{ticket}", tag = "connect", params(("ticket" = String, Path)),
    responses((status = 200, description = "The confirmation page: whose account the provider account joins", content_type = "text/html"),
        (status = 400, description = "Unknown, used or expired link: a page", content_type = "text/html")))]
pub async fn confirmation(State(state): State<AppState>, Path(ticket): Path<String>) -> Response {
    let shown = async {
        let found = match bound::confirming(&state, &ticket, crate::time::now()).await? {
            Ok(found) => found,
            Err(rejection) => return Ok(page(StatusCode::BAD_REQUEST, "Invalid connection link", rejection.message())),
        };
        let Some(integration) = integrations::by_id(&state.db, state.keyring(), &found.integration_id).await? else {
            return Ok(page(StatusCode::NOT_FOUND, "Unknown integration", "This integration does not exist."));
        };
        // The form's answer redirects to the provider, at the organization's own instance
        // where it has one: form-action allows that origin.
        let app = crate::store::organizations::app_for(
            &state.db,
            state.keyring(),
            &integration,
            found.organization_id.as_deref(),
        )
        .await?;
        let provider = app
            .client(&integration)
            .urls(&integration)
            .map(|u| u.authorization_url.origin().ascii_serialization())
            .unwrap_or_else(|_| "'none'".into());
        Ok::<_, ApiError>(confirmation_page(&state.config, &integration, &found, &ticket, &provider))
    };
    shown.await.unwrap_or_else(|err| {
        tracing::error!(error = ?err, "confirmation page failed");
        page(err.status(), "Something went wrong", "The page could not be shown. Try again.")
    })
}

#[utoipa::path(post, path = "/connect/{ticket}", tag = "connect", params(("ticket" = String, Path)),
    responses((status = 303, description = "On to the provider, with the browser cookie the callback requires"),
        (status = 400, description = "Unknown, used or expired link: a page", content_type = "text/html"),
        (status = 403, description = "Not submitted from the confirmation page itself", content_type = "text/html")))]
pub async fn confirm(State(state): State<AppState>, Path(ticket): Path<String>, headers: HeaderMap) -> Response {
    // Another site could post this form for a link its owner started: only the page itself may.
    if !browser::same_origin(&state.config, &headers) {
        return page(StatusCode::FORBIDDEN, "Not confirmed", "Continue from the confirmation page itself.");
    }
    let (browser, cookie) = browser::bind(&state.config, &headers);
    match bound::confirm(&state, &ticket, &browser, crate::time::now()).await {
        Ok(Ok(url)) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(url.as_str()) {
                h.insert(header::LOCATION, v);
            }
            h.insert(header::SET_COOKIE, cookie);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        Ok(Err(rejection)) => page(StatusCode::BAD_REQUEST, "Invalid connection link", rejection.message()),
        Err(err) => {
            tracing::error!(error = ?err, "confirmation failed");
            page(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Try again.")
        }
    }
}

/// The confirmation page: whose account this is, and one button. No script; the form
/// may only go to Pipes, which sends the browser on to the provider.
fn confirmation_page(
    config: &Config,
    integration: &Integration,
    found: &bound::Confirming,
    ticket: &str,
    provider: &str,
) -> Response {
    let name = escape(&integration.display_name());
    let app = escape(&config.app_name);
    let user = escape(&found.user_id);
    let owner = match (&found.organization_id, integration.ownership) {
        (Some(org), crate::owner::Ownership::Organization) => {
            format!("the organization <strong>{}</strong> (connected by user <strong>{user}</strong>)", escape(org))
        }
        (Some(org), _) => format!("user <strong>{user}</strong> in the organization <strong>{}</strong>", escape(org)),
        (None, _) => format!("user <strong>{user}</strong>"),
    };
    let what = match &found.intent {
        Intent::Connect => format!("your {name} account"),
        Intent::Add => format!("another {name} account"),
        Intent::Reauthorize(id) => format!("your {name} account <code>{}</code> again", escape(id.as_str())),
    };
    let minutes = connect::STATE_TTL.as_secs() / 60;
    let body = format!(
        "<h1>Connect {name}</h1><p>{app} will connect {what} to {owner}.</p>\
<p>Continue only if that is you. If someone sent you this link, close this page: continuing would give them your {name} account.</p>\
<form method=\"post\" action=\"/connect/{ticket}\"><button type=\"submit\">Continue to {name}</button></form>\
<p class=\"small\">This link works once, in this browser, for {minutes} minutes.</p>",
        ticket = escape(ticket),
    );
    // The form posts to Pipes, whose answer redirects to the provider: form-action allows both.
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {provider}; frame-ancestors 'none'; base-uri 'none'"
    );
    document(StatusCode::OK, &format!("Connect {}", integration.display_name()), &body, "#0f172a", &csp)
}

/// 302 to `to` with `extra` appended to its query.
fn redirect(to: &str, extra: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(to) else {
        return page(StatusCode::BAD_REQUEST, "Invalid return address", "The return address is not a URL.");
    };
    url.query_pairs_mut().extend_pairs(extra);
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A small page that needs nothing else: inline style, no scripts, no external resources.
pub fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let colour = if status.is_success() && title == "Connected" { "#15803d" } else { "#b91c1c" };
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message));
    document(status, title, &body, colour, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
}

/// A Pipes page around `body` (HTML), headed by a `colour`ed title, under `csp`.
fn document(status: StatusCode, title: &str, body: &str, colour: &str, csp: &str) -> Response {
    let title = escape(title);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;background:#f8fafc;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}}\
main{{background:#fff;border:1px solid #e2e8f0;border-radius:12px;padding:2rem 2.5rem;max-width:28rem}}h1{{margin:0 0 .75rem;font-size:1.25rem;color:{colour}}}\
p{{margin:0 0 .75rem;color:#334155;line-height:1.5}}.small{{font-size:.875rem;color:#64748b}}\
button{{font:inherit;padding:.6rem 1.2rem;border-radius:8px;border:0;background:#1d4ed8;color:#fff;cursor:pointer;margin:.5rem 0 1rem}}\
button:focus-visible{{outline:3px solid #93c5fd;outline-offset:2px}}</style></head><body><main>{body}</main></body></html>"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(v) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}
