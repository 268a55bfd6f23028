//! The stack of `pipes serve`, made once per connection (so it knows the peer):
//! the request id (set, and echoed on the answer), a trace span carrying it, the
//! rate limits (`crate::limits`), then the token fast lane and the router. Every
//! route, the fast lane's included, passes every layer.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower::Service;
use tower_http::classify::{NeverClassifyEos, ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::map_response_body::{MapResponseBody, MapResponseBodyLayer};
use tower_http::request_id::{PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer};
use tower_http::trace::{MakeSpan, ResponseBody, Trace, TraceLayer};

use crate::api::{MakeUlidRequestId, X_REQUEST_ID};
use crate::auth::KeyVerifier;
use crate::limits::{Group, Limits};

/// The client's address, for handlers that limit further (API key look-ups).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Makes one [`Limited`] service per connection, knowing its peer address.
#[derive(Clone)]
pub struct MakeLimited<S> {
    pub inner: S,
    pub limits: Limits,
    pub keys: KeyVerifier,
}

/// One connection's stack (the trace layer's response body boxed back into axum's,
/// which `axum::serve` takes).
pub type Connection<S> =
    SetRequestId<PropagateRequestId<MapResponseBody<Traced<S>, fn(TracedBody) -> Body>>, MakeUlidRequestId>;

type Traced<S> = Trace<Limited<S>, SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), (), (), (), ()>;
type TracedBody = ResponseBody<Body, NeverClassifyEos<ServerErrorsFailureClass>, (), (), ()>;

impl<S: Clone> Service<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for MakeLimited<S> {
    type Response = Connection<S>;
    type Error = Infallible;
    type Future = Ready<Result<Connection<S>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self::Future {
        let peer: SocketAddr = *stream.remote_addr();
        let limited = Limited {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
            keys: self.keys.clone(),
            peer: peer.ip(),
        };
        // Failures are the handlers' to log (with their cause); the span and the
        // request's line are at DEBUG, so they cost nothing unless asked for.
        let traced = TraceLayer::new_for_http()
            .make_span_with(RequestSpan)
            .on_request(())
            .on_response(())
            .on_body_chunk(())
            .on_eos(())
            .on_failure(());
        let unbox: fn(TracedBody) -> Body = Body::new;
        ready(Ok(tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeUlidRequestId))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
            .layer(MapResponseBodyLayer::new(unbox))
            .layer(traced)
            .service(limited)))
    }
}

/// A span per request, carrying its id (set by the layer outside it).
#[derive(Clone, Copy, Debug)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> tracing::Span {
        let id = request.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
        tracing::debug_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
    }
}

/// One connection's service: limits, then `inner`.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Limits,
    keys: KeyVerifier,
    peer: IpAddr,
}

impl<S> Service<Request> for Limited<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let mut unverified_key = false;
        if let Some(group) = Group::of(request.uri().path()) {
            match self.check(group, &request) {
                Ok(unverified) => unverified_key = unverified,
                Err(refused) => {
                    return Either::Right(ready(Ok(refused.into_response())));
                }
            }
        }
        // Only a key that will be looked up needs the address (`api/extract.rs`); a token read
        // with a verified key is spared the allocation.
        if unverified_key {
            request.extensions_mut().insert(ClientAddr(self.peer));
        }
        Either::Left(self.inner.call(request))
    }
}

impl<S> Limited<S> {
    /// Counts the request; `Ok(true)` when it carries a key not verified recently.
    fn check(&self, group: Group, request: &Request) -> Result<bool, crate::error::ApiError> {
        self.limits.check_address(group, self.peer)?;
        // Only keys verified recently have a limit of their own: an unknown key is
        // limited by its look-ups (`api/extract.rs`), and cannot grow this limiter's memory.
        let Ok(key) = crate::api::extract::bearer_key(request.headers()) else { return Ok(false) };
        match self.keys.verified_digest(key) {
            Some(digest) => Ok(self.limits.check_key(group, &digest).map(|()| false)?),
            None => Ok(true),
        }
    }
}
