//! The fast lane in front of the router for the hottest request there is: a
//! token read (`POST /data-integrations/{slug}/token` or `/credentials`) whose
//! answer is already in the in-process answer cache.
//!
//! Such a read does no I/O at all, so the router's part of the stack — routing,
//! boxed route services, the URL guard, the request timeout's timer, extractors
//! — would cost several times the read itself. The lane sits inside the same
//! stack as every route (request id, trace span and rate limits are outside it,
//! `api::rate_limit`) and answers such a read directly, with the same bytes and
//! headers the router would send. Anything it is not sure about
//! (a key not verified in the last seconds, an integration or answer not
//! loaded, a body that does not parse, an encoded path, a missing
//! `Content-Length`, ...) goes to the router unchanged, which applies every
//! rule and answers every error: the lane only ever shortcuts a success.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::FutureExt;
use tower::Service;

use crate::api::REQUEST_TIMEOUT;
use crate::error::ApiError;
use crate::read::answer::Shape;
use crate::state::AppState;

/// Bodies longer than this (by `Content-Length`) go to the router: a token
/// read's body is a few dozen bytes.
const MAX_FAST_BODY: u64 = 4 * 1024;

/// The HTTP service of `pipes serve`: the fast lane, then the router.
#[derive(Clone)]
pub struct FastLane {
    state: Arc<AppState>,
    router: Router,
}

impl FastLane {
    pub fn new(state: AppState, router: Router) -> Self {
        FastLane { state: Arc::new(state), router }
    }
}

impl Service<Request> for FastLane {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(shape) = candidate(&request) else {
            return Box::pin(self.router.call(request));
        };
        let state = self.state.clone();
        let mut router = self.router.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Small and announced (checked in `candidate`), so usually already here.
            let mut read = std::pin::pin!(axum::body::to_bytes(body, MAX_FAST_BODY as usize));
            let read = match (&mut read).now_or_never() {
                Some(read) => read,
                // Still on its way: wait as long as the router would, and no longer.
                None => match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                    Ok(read) => read,
                    Err(_) => return Ok(body_timed_out()),
                },
            };
            // On an error (the client went away, or sent less than announced) the
            // router reads an empty body and answers that.
            let bytes = read.unwrap_or_default();
            if let Some(response) = answer(&state, &parts, &bytes, shape) {
                return Ok(response);
            }
            router.call(Request::from_parts(parts, Body::from(bytes))).await
        })
    }
}

/// `Some(shape)` when `request` looks like a token read the lane may answer.
fn candidate(request: &Request) -> Option<Shape> {
    if request.method() != Method::POST {
        return None;
    }
    let uri = request.uri();
    // Percent-encoded paths and queries are decoded and checked by the router.
    if uri.path().contains('%') || uri.query().is_some_and(|q| q.contains('%')) {
        return None;
    }
    let length = request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    if length > MAX_FAST_BODY {
        return None;
    }
    route(uri.path()).map(|(_, shape)| shape)
}

/// The slug and shape of a token read's path.
fn route(path: &str) -> Option<(&str, Shape)> {
    let rest = path.strip_prefix("/data-integrations/")?;
    let (slug, tail) = rest.split_once('/')?;
    let shape = match tail {
        "token" => Shape::Token,
        "credentials" => Shape::Credential,
        _ => return None,
    };
    (!slug.is_empty()).then_some((slug, shape))
}

/// The response for a cached answer, or `None` to let the router handle it.
fn answer(state: &AppState, parts: &axum::http::request::Parts, body: &[u8], shape: Shape) -> Option<Response> {
    let (slug, _) = route(parts.uri.path())?;
    let key = crate::api::extract::bearer_key(&parts.headers).ok()?;
    state.keys.recently_verified(key).filter(|role| role.reads_tokens())?;
    let target = super::tokens::parse_target(body).ok()?;
    let ready = state.reads.hit(slug, &target)?;
    let body = match shape {
        Shape::Token => ready.token_body.clone(),
        Shape::Credential => ready.credential_body.clone(),
    };
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

fn body_timed_out() -> Response {
    ApiError::BadRequest { code: "request_timeout", message: "The request body did not arrive in time.".into() }
        .into_response()
}
