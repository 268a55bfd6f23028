//! The connect routes (DESIGN §3.2): `POST /data-integrations/{slug}/authorize`
//! (admin) answers the provider's authorization URL; `GET
//! /data-integrations/{slug}/callback` is where the browser comes back. The
//! callback redirects to `return_to`, or shows a small self-contained page.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::AdminKey;
use crate::api::extract::ApiJson;
use crate::api::integrations::find;
use crate::config::Config;
use crate::connect::{self, ConnectRequest, Intent, Outcome, ProviderAnswer};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::ids::IdKind;
use crate::owner::Owner;
use crate::state::AppState;
use crate::store::accounts::{self, AccountError, Selector};
use crate::store::integrations::{self, Integration};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(authorize)).routes(routes!(callback))
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
    /// Not supported yet: refused.
    pub code_challenge: Option<String>,
    /// Not supported yet: refused.
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthorizeResponse {
    /// Send the user's browser here.
    pub url: String,
    /// The flow's state: also on the redirect to `return_to`, to match the two.
    pub state: String,
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
        Some(r) => check_return_to(&state.config, r).map_err(|e| errors.push(e)).ok(),
    };
    let intent = intent(body.connection_intent.as_deref(), body.connected_account_id.as_deref(), &mut errors);
    if let Some(Some(label)) = &body.account_display_name {
        check_id_or_label("account_display_name", label, &mut errors);
    }
    for (field, value) in
        [("code_challenge", &body.code_challenge), ("code_challenge_method", &body.code_challenge_method)]
    {
        if value.is_some() {
            errors.push(FieldError::new(field, "unsupported", format!("`{field}` is not supported yet; omit it.")));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let integration = find(&state, &slug, owner.ownership()).await?;
    if !integration.enabled {
        return Err(ApiError::not_found("integration_not_found", format!("The integration `{slug}` is disabled.")));
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
    let req =
        ConnectRequest { user_id, organization_id, return_to, intent, account_display_name: body.account_display_name };
    let begun = connect::begin(&state, &integration, &req, crate::time::now()).await?;
    Ok(Json(AuthorizeResponse { url: begun.url.to_string(), state: begun.state }))
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
pub async fn callback(State(state): State<AppState>, Path(slug): Path<String>, RawQuery(query): RawQuery) -> Response {
    // First value of each parameter; a browser request never gets a JSON error here.
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    match run_callback(&state, &slug, params).await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = ?err, integration = %slug, "callback failed");
            let status = if err.status().is_server_error() { err.status() } else { StatusCode::BAD_REQUEST };
            page(status, "Something went wrong", &err.to_string())
        }
    }
}

async fn run_callback(state: &AppState, slug: &str, mut params: HashMap<String, String>) -> ApiResult<Response> {
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
    let outcome = connect::complete(state, &integration, &pending, answer).await?;
    let name = integration.display_name();
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
    let (title, message) = (escape(title), escape(message));
    let colour = if status.is_success() && title == "Connected" { "#15803d" } else { "#b91c1c" };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>body{{font-family:system-ui,sans-serif;background:#f8fafc;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}}\
main{{background:#fff;border:1px solid #e2e8f0;border-radius:12px;padding:2rem 2.5rem;max-width:28rem}}h1{{margin:0 0 .75rem;font-size:1.25rem;color:{colour}}}\
p{{margin:0;color:#334155;line-height:1.5}}</style></head><body><main><h1>{title}</h1><p>{message}</p></main></body></html>"
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}
