//! The browser-facing endpoints: `GET /authorize` (RFC 6749 §4.1.1, §4.1.2), the login and
//! consent forms, and the grants page with its revoke buttons. Forms are bound to the browser
//! by a session cookie plus a per-session CSRF token; actions and redirects are relative so the
//! router works under any prefix.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use url::Url;

use super::browser::Pending;
use super::html::{self, error_page};
use super::state::PENDING_TTL;
use super::DemoProvider;

const SESSION_COOKIE: &str = "demo_provider_session";
const DEFAULT_USER: &str = "demo-user";
const DEFAULT_SCOPE: &str = "profile";

pub(super) async fn authorize(
    State(provider): State<DemoProvider>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let param = |name: &str| query.get(name).map(String::as_str);
    let mut state = provider.lock();
    // §4.1.2.1: with an unknown client or redirect URI the user must not be sent anywhere.
    let Some(client) = param("client_id").and_then(|id| state.client(id)) else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown application", "client_id is missing or not registered.");
    };
    let client_id = client.client_id.clone();
    let Some(redirect_uri) = param("redirect_uri")
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
        .filter(|uri| Url::parse(uri).is_ok())
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect URI",
            "redirect_uri is missing or not registered for this application.",
        );
    };
    let client_state = param("state").map(str::to_owned);
    let back = |params: &[(&str, &str)]| redirect_to(StatusCode::FOUND, redirect_uri, client_state.as_deref(), params);

    if param("response_type") != Some("code") {
        return back(&[
            ("error", "unsupported_response_type"),
            ("error_description", "only response_type=code is supported"),
        ]);
    }
    let challenge = match (param("code_challenge"), param("code_challenge_method")) {
        (None, _) => None,
        (Some(c), Some("S256"))
            if c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(c.to_owned())
        }
        (Some(_), Some("S256")) => {
            return back(&[
                ("error", "invalid_request"),
                ("error_description", "code_challenge must be 43 base64url characters"),
            ]);
        }
        // RFC 7636 §4.4.1: an unsupported (or defaulted `plain`) transform is refused.
        (Some(_), _) => {
            return back(&[("error", "invalid_request"), ("error_description", "code_challenge_method must be S256")]);
        }
    };
    let scope = param("scope").unwrap_or(DEFAULT_SCOPE);
    let mut scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
    // §3.3 scope-token: printable ASCII except space, `"` and `\`.
    if scopes.iter().any(|s| s.bytes().any(|b| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'\\')) {
        return back(&[("error", "invalid_scope"), ("error_description", "malformed scope")]);
    }
    if scopes.is_empty() {
        scopes.push(DEFAULT_SCOPE.to_owned());
    }

    let now = state.now();
    let mut pending = Pending {
        client_id,
        redirect_uri: redirect_uri.to_owned(),
        state: client_state.clone(),
        scopes,
        challenge,
        session: String::new(),
        user: None,
        expires_at: now + PENDING_TTL,
    };
    if state.auto_consent {
        let user = param("login_hint").filter(|u| valid_username(u)).unwrap_or(DEFAULT_USER);
        if std::mem::take(&mut state.deny_next) {
            return back(&[("error", "access_denied"), ("error_description", "the user denied access")]);
        }
        let code = state.new_code(&pending, user);
        return back(&[("code", &code)]);
    }
    let (session, csrf, new_session) = state.ensure_session(session_cookie(&headers).as_deref());
    pending.session = session.clone();
    let client_id = pending.client_id.clone();
    let request = state.add_pending(pending);
    let cookie = new_session.then(|| format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax"));
    html::page(StatusCode::OK, "Sign in", &html::login(&client_id, &request, &csrf, None), cookie)
}

pub(super) async fn login(
    State(provider): State<DemoProvider>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str);
    let session = session_cookie(&headers);
    let mut state = provider.lock();
    if !state.csrf_ok(session.as_deref(), field("csrf")) {
        return csrf_failure();
    }
    let request = field("request").unwrap_or_default();
    let Some(pending) = state.pending_mut(request, session.as_deref()) else {
        return expired();
    };
    let username = field("username").unwrap_or_default().trim();
    let csrf = field("csrf").unwrap_or_default();
    if !valid_username(username) {
        let body = html::login(&pending.client_id, request, csrf, Some("Enter a username of 1 to 64 characters."));
        return html::page(StatusCode::BAD_REQUEST, "Sign in", &body, None);
    }
    pending.user = Some(username.to_owned());
    let body = html::consent(&pending.client_id, username, &pending.scopes, request, csrf);
    html::page(StatusCode::OK, "Allow access?", &body, None)
}

pub(super) async fn consent(
    State(provider): State<DemoProvider>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str);
    let session = session_cookie(&headers);
    let mut state = provider.lock();
    if !state.csrf_ok(session.as_deref(), field("csrf")) {
        return csrf_failure();
    }
    let request = field("request").unwrap_or_default();
    let Some(user) = state.pending_mut(request, session.as_deref()).and_then(|p| p.user.clone()) else {
        return expired();
    };
    let approve = match field("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return error_page(StatusCode::BAD_REQUEST, "No decision", "Choose Approve or Deny."),
    };
    let Some(pending) = state.take_pending(request) else {
        return expired();
    };
    let denied = std::mem::take(&mut state.deny_next) || !approve;
    let client_state = pending.state.as_deref();
    if denied {
        let params = [("error", "access_denied"), ("error_description", "the user denied access")];
        return redirect_to(StatusCode::SEE_OTHER, &pending.redirect_uri, client_state, &params);
    }
    let code = state.new_code(&pending, &user);
    redirect_to(StatusCode::SEE_OTHER, &pending.redirect_uri, client_state, &[("code", &code)])
}

pub(super) async fn grants(State(provider): State<DemoProvider>, headers: HeaderMap) -> Response {
    let mut state = provider.lock();
    let (session, csrf, new_session) = state.ensure_session(session_cookie(&headers).as_deref());
    let body = html::grants(state.live_grants(), &csrf);
    let cookie = new_session.then(|| format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax"));
    html::page(StatusCode::OK, "Connected applications", &body, cookie)
}

pub(super) async fn revoke_grant(
    State(provider): State<DemoProvider>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut state = provider.lock();
    if !state.csrf_ok(session_cookie(&headers).as_deref(), form.get("csrf").map(String::as_str)) {
        return csrf_failure();
    }
    if !state.revoke_grant_by_id(id) {
        return error_page(StatusCode::NOT_FOUND, "No such grant", "This grant does not exist or is already revoked.");
    }
    // Relative to `…/grants/{id}/revoke`, so it lands on the grants page under any prefix.
    Redirect::to("../../grants").into_response()
}

fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    crate::api::browser::cookie(headers, SESSION_COOKIE).map(str::to_owned)
}

/// §4.1.2: the code (or error) and the client's `state` are added to the redirect URI's query,
/// keeping any query it already has. 303 so a POSTed form becomes a GET (302 for the GET).
fn redirect_to(status: StatusCode, redirect_uri: &str, state: Option<&str>, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "Invalid redirect URI", "The redirect URI is not a URL.");
    };
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    (status, [(header::LOCATION, url.to_string())]).into_response()
}

fn csrf_failure() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Form expired",
        "The form's security token is missing or does not match this browser. Reload and try again.",
    )
}

fn expired() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Sign-in request expired",
        "This authorization request is unknown or has expired. Go back to the application and start again.",
    )
}
