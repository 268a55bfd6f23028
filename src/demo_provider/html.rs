//! The demo provider's HTML: self-contained pages (inline CSS, no scripts, no external assets)
//! that follow the system's light or dark scheme. Every interpolated value goes through [`esc`].

use axum::http::{header, HeaderName, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::state::Grant;

pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
:root{color-scheme:light dark;--bg:#f5f6f8;--fg:#1b1f24;--card:#fff;--muted:#59606b;\
--accent:#2c55c9;--accent-fg:#fff;--border:#cfd4dc;--danger:#b42318}\
@media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e7e9ee;--card:#1b2028;\
--muted:#a0a8b4;--accent:#86a8ff;--accent-fg:#0b1020;--border:#3a414d;--danger:#ff8a80}}\
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);\
font:16px/1.5 system-ui,sans-serif}main{max-width:34rem;margin:3rem auto;padding:1.5rem 2rem;\
background:var(--card);border:1px solid var(--border);border-radius:12px}\
h1{font-size:1.35rem;margin-top:0}.muted{color:var(--muted);font-size:.9rem}\
label{display:block;font-weight:600;margin:.75rem 0 .25rem}\
input[type=text]{width:100%;padding:.55rem .7rem;font:inherit;color:inherit;\
background:transparent;border:1px solid var(--border);border-radius:8px}\
button{font:inherit;padding:.5rem 1.1rem;border-radius:8px;border:1px solid var(--accent);\
background:var(--accent);color:var(--accent-fg);cursor:pointer;margin:.75rem .5rem 0 0}\
button.secondary{background:transparent;color:var(--fg);border-color:var(--border)}\
button:focus-visible,input:focus-visible{outline:3px solid var(--accent);outline-offset:2px}\
.error{color:var(--danger);font-weight:600}ul.scopes li{font-family:ui-monospace,monospace}\
table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:.4rem;\
border-bottom:1px solid var(--border);vertical-align:top}td button{margin:0}";

/// A complete page with the headers every page carries: no framing (clickjacking of the
/// consent page), nothing loaded from elsewhere, no caching of the per-session CSRF token.
pub(super) fn page(status: StatusCode, title: &str, body: &str, set_cookie: Option<String>) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Demo provider</title><style>{CSS}</style></head>\
         <body><main>{body}</main></body></html>",
        esc(title)
    );
    let headers: [(HeaderName, String); 4] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".to_owned(),
        ),
        (header::X_FRAME_OPTIONS, "DENY".to_owned()),
        (header::CACHE_CONTROL, "no-store".to_owned()),
        (header::REFERRER_POLICY, "no-referrer".to_owned()),
    ];
    let mut response = (status, headers, Html(html)).into_response();
    if let Some(cookie) = set_cookie.and_then(|c| c.parse().ok()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub(super) fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", esc(title), esc(message));
    page(status, title, &body, None)
}

fn hidden(request: &str, csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"request\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(request),
        esc(csrf)
    )
}

pub(super) fn login(client_id: &str, request: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"username-error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<h1>Sign in to the demo provider</h1>\
         <p><strong>{client}</strong> wants to connect to your demo account.</p>\
         <p class=\"muted\">This is a pretend provider: any name works and there is no password.</p>\
         <form method=\"post\" action=\"login\">{hidden}{error}\
         <label for=\"username\">Username</label>\
         <input type=\"text\" id=\"username\" name=\"username\" required maxlength=\"64\" \
          autocomplete=\"username\" autofocus aria-describedby=\"username-error\">\
         <button type=\"submit\">Continue</button></form>",
        client = esc(client_id),
        hidden = hidden(request, csrf),
    )
}

pub(super) fn consent(client_id: &str, user: &str, scopes: &[String], request: &str, csrf: &str) -> String {
    let items: String = scopes.iter().map(|s| format!("<li>{}</li>", esc(s))).collect();
    format!(
        "<h1>Allow access?</h1>\
         <p>Signed in as <strong>{user}</strong>.</p>\
         <p><strong>{client}</strong> asks for:</p><ul class=\"scopes\">{items}</ul>\
         <form method=\"post\" action=\"consent\">{hidden}\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button>\
         </form>",
        user = esc(user),
        client = esc(client_id),
        hidden = hidden(request, csrf),
    )
}

pub(super) fn grants<'a>(grants: impl Iterator<Item = (u64, &'a Grant)>, csrf: &str) -> String {
    let rows: String = grants
        .map(|(id, g)| {
            format!(
                "<tr><td>{user}</td><td>{client}</td><td>{scopes}</td><td>{created}</td><td>\
                 <form method=\"post\" action=\"grants/{id}/revoke\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" class=\"secondary\" aria-label=\"Revoke access of {client} for {user}\">\
                 Revoke</button></form></td></tr>",
                user = esc(&g.user),
                client = esc(&g.client_id),
                scopes = esc(&g.scopes.join(" ")),
                created = g.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                csrf = esc(csrf),
            )
        })
        .collect();
    let table = if rows.is_empty() {
        "<p>No application has access right now.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">User</th><th scope=\"col\">Application</th>\
             <th scope=\"col\">Scopes</th><th scope=\"col\">Since</th><th scope=\"col\">\
             <span class=\"muted\">Action</span></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    format!(
        "<h1>Connected applications</h1>\
         <p class=\"muted\">Revoking a grant invalidates its access and refresh tokens at once, \
         as when a user removes an app from their account settings.</p>{table}"
    )
}
