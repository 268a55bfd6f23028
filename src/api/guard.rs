//! A guard in front of every route for URLs no handler can use: a path or
//! query that decodes to a NUL character (PostgreSQL refuses NUL in text, so
//! it would surface as a 5xx deep in a query) or a path that is not UTF-8
//! (axum's own rejection is plain text). Both get a JSON 400 here, before any
//! handler runs; the OAuth callback, a browser route, gets its error page.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Rejects unusable URLs (see the module header); passes everything else on.
pub async fn reject_unusable_url(request: Request, next: Next) -> Response {
    let uri = request.uri();
    // A parsed URI is UTF-8 without NUL (the `http` crate checks); only percent-encoding
    // can smuggle either in.
    if !uri.path().contains('%') && !uri.query().is_some_and(|q| q.contains('%')) {
        return next.run(request).await;
    }
    let path = percent_decode(uri.path().as_bytes());
    let query = uri.query().map(|q| percent_decode(q.as_bytes())).unwrap_or_default();
    let problem = if path.contains(&0) {
        Some(("invalid_path", "The URL path must not contain NUL characters."))
    } else if std::str::from_utf8(&path).is_err() {
        Some(("invalid_path", "The URL path must be UTF-8 text."))
    } else if query.contains(&0) {
        Some(("invalid_query", "Query parameters must not contain NUL characters."))
    } else {
        None
    };
    let Some((code, message)) = problem else { return next.run(request).await };
    if is_browser_route(uri.path()) {
        return super::connect::page(StatusCode::BAD_REQUEST, "Invalid sign-in link", message);
    }
    ApiError::BadRequest { code, message: message.to_owned() }.into_response()
}

/// The OAuth callback answers pages, not JSON.
fn is_browser_route(path: &str) -> bool {
    path.starts_with("/data-integrations/") && path.ends_with("/callback")
}

/// `%XX` → the byte; anything else as is (a stray `%` stays a `%`).
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        if byte == b'%' {
            let hex = |at: usize| input.get(at).and_then(|b| (*b as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    out
}
