//! The widget's pages and assets: `GET /widget` (the hosted page), `GET
//! /widget.js` and `/widget.css` (the `<pipes-widget>` custom element, plain
//! JS and CSS compiled into the binary: no CDN, no build step), `GET
//! /widget/connect`, where every widget flow starts, and `GET /widget/done`,
//! where the OAuth callback sends the browser back: it tells the page that
//! opened the popup (`postMessage` to a checked origin) and closes, or, without a
//! popup, goes back to the widget's page.
//!
//! Widget tokens never travel in a URL's query or in server-rendered HTML: the
//! hosted page takes its token from the fragment (`/widget#token=…`, read by script
//! and removed from the address bar), and the connect page from the widget that
//! opened it, by `postMessage`, whose sender's origin the browser vouches for; opened
//! any other way (a link someone sent), it reads the fragment and asks first.
//!
//! Every page carries a strict Content-Security-Policy: scripts and styles
//! from Pipes' own origin only, nothing inline, no framing.

use axum::extract::RawQuery;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::state::AppState;

const WIDGET_JS: &str = include_str!("../../assets/widget/widget.js");
const WIDGET_CSS: &str = include_str!("../../assets/widget/widget.css");
const DONE_JS: &str = include_str!("../../assets/widget/done.js");
const CONNECT_JS: &str = include_str!("../../assets/widget/connect.js");

/// The hosted page: the element, its script and stylesheet, and the API, all on this origin.
const PAGE_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The connect page talks to the widget API on this origin and then leaves for the provider.
const CONNECT_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The completion page runs one script and loads one stylesheet.
const DONE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/widget", get(hosted))
        .route("/widget/done", get(done))
        .route("/widget/connect", get(connect_page))
        .route("/widget/connect.js", get(|| async { asset("text/javascript; charset=utf-8", CONNECT_JS) }))
        .route("/widget.js", get(|| async { asset("text/javascript; charset=utf-8", WIDGET_JS) }))
        .route("/widget.css", get(|| async { asset("text/css; charset=utf-8", WIDGET_CSS) }))
        .route("/widget/done.js", get(|| async { asset("text/javascript; charset=utf-8", DONE_JS) }))
}

/// A static asset any origin may load (the element is embedded in the application's pages).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin")),
    ];
    (headers, body).into_response()
}

fn html(csp: &'static str, body: String) -> Response {
    html_with(StatusCode::OK, csp, body)
}

fn html_with(status: StatusCode, csp: &'static str, body: String) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        // A page's URL may carry a widget token in its fragment for a moment: never send it anywhere.
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    (status, headers, body).into_response()
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn params(query: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// `origin` (serialized) when it is Pipes' own or one in `PIPES_ALLOWED_RETURN_TO`.
pub fn allowed_origin(config: &Config, origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    let own = config.public_url.origin().ascii_serialization();
    (origin == own || config.allowed_return_to.contains(&origin)).then_some(origin)
}

/// `back` (normalized) when it is an http(s) URL on an allowed origin.
pub fn allowed_back(config: &Config, back: &str) -> Option<String> {
    let url = url::Url::parse(back).ok()?;
    allowed_origin(config, &url.origin().ascii_serialization())?;
    Some(url.to_string())
}

/// Where the OAuth callback sends the browser for a widget connection.
pub fn done_url(config: &Config, opener_origin: Option<&str>, back: Option<&str>) -> String {
    let base = config.public_url.as_str().trim_end_matches('/');
    let mut url = format!("{base}/widget/done");
    let pairs: Vec<(&str, &str)> =
        [("opener_origin", opener_origin), ("back", back)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
    if !pairs.is_empty() {
        url.push('?');
        url.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish());
    }
    url
}

/// The hosted widget. Its script takes the token from the URL's fragment (`#token=…`) or,
/// back from a connection without a popup, from this tab's storage. A token in the query
/// string is refused: it would reach the server's and proxies' logs and the history.
pub async fn hosted(RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let head = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\">\
<title>Connected accounts</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/widget.css\"></head>";
    if params.iter().any(|(k, _)| k == "token") {
        return html_with(
            StatusCode::BAD_REQUEST,
            PAGE_CSP,
            format!(
                "{head}<body class=\"pipes-hosted\"><main><h1>Connected accounts</h1>\
<p>This link carries its widget token in the query string, where it would be logged. \
Open the widget with the token after <code>#</code> (<code>/widget#token=…</code>), and ask the application for a new token: \
this one may have been recorded.</p></main></body></html>"
            ),
        );
    }
    let mode = if param(&params, "mode") == Some("redirect") { " mode=\"redirect\"" } else { "" };
    html(
        PAGE_CSP,
        format!(
            "{head}<body class=\"pipes-hosted\"><main><h1>Connected accounts</h1>\
<pipes-widget hosted{mode}><p>Loading…</p><noscript>This page needs JavaScript.</noscript></pipes-widget></main>\
<script src=\"/widget.js\"></script></body></html>"
        ),
    )
}

/// Where every widget flow starts: its script gets the request from the widget that opened
/// it, starts the flow on this origin (so the browser cookie is set here), and goes on to
/// the provider. Opened without a widget, it says whose account would be connected and asks.
pub async fn connect_page() -> Response {
    html(
        CONNECT_CSP,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\">\
<title>Connecting…</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/widget.css\"></head>\
<body class=\"pipes-hosted\"><main id=\"pipes-connect\"><h1 id=\"pipes-connect-title\">Connecting…</h1>\
<p id=\"pipes-connect-status\" role=\"status\">Starting the connection.</p>\
<p><button type=\"button\" id=\"pipes-connect-continue\" hidden>Continue</button></p>\
<noscript><p>This page needs JavaScript.</p></noscript></main>\
<script src=\"/widget/connect.js\"></script></body></html>"
            .to_owned(),
    )
}

/// Plain words for a failed connection (the callback's `error` codes).
pub fn failure_message(code: Option<&str>) -> &'static str {
    match code {
        Some("access_denied") => "Access was not allowed, so the account was not connected.",
        Some("provider_error") => "The provider refused the request. Try again later.",
        Some("exchange_failed") => "The provider could not finish connecting the account. Try again.",
        _ => "Something went wrong while connecting the account. Try again.",
    }
}

/// The completion page: its script reads the result from the data attributes.
pub async fn done(axum::extract::State(state): axum::extract::State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let provider = param(&params, "provider").unwrap_or_default();
    let status = if param(&params, "status") == Some("connected") { "connected" } else { "error" };
    let error = param(&params, "error").unwrap_or_default();
    // Checked again here: this page is reachable by anyone, and must not redirect or post anywhere else.
    let opener = param(&params, "opener_origin").and_then(|o| allowed_origin(&state.config, o)).unwrap_or_default();
    let back = param(&params, "back").and_then(|b| allowed_back(&state.config, b)).unwrap_or_default();
    let (title, message) = match status {
        "connected" => ("Connected", "The account is connected. You can close this window."),
        _ => ("Not connected", failure_message(Some(error).filter(|e| !e.is_empty()))),
    };
    html(
        DONE_CSP,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\">\
<title>{title}</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/widget.css\"></head><body class=\"pipes-hosted\">\
<main id=\"pipes-done\" data-provider=\"{provider}\" data-status=\"{status}\" data-error=\"{error}\" data-opener-origin=\"{opener}\" data-back=\"{back}\">\
<h1>{title}</h1><p>{message}</p></main><script src=\"/widget/done.js\"></script></body></html>",
            provider = escape(provider),
            error = escape(error),
            opener = escape(&opener),
            back = escape(&back),
        ),
    )
}
