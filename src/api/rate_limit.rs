//! The outermost service of `pipes serve`: the client's address from the
//! connection, then the rate limits (`crate::limits`), in front of the token
//! fast lane and the router, so no route escapes them.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower::Service;

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

impl<S: Clone> Service<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for MakeLimited<S> {
    type Response = Limited<S>;
    type Error = Infallible;
    type Future = Ready<Result<Limited<S>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self::Future {
        let peer: SocketAddr = *stream.remote_addr();
        ready(Ok(Limited {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
            keys: self.keys.clone(),
            peer: peer.ip(),
        }))
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
                    let response = super::fast_lane::with_request_id(request.headers(), refused.into_response());
                    return Either::Right(ready(Ok(response)));
                }
            }
        }
        // Only a key that will be looked up needs the address (`auth.rs`); a token read
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
        // limited by its look-ups (`auth.rs`), and cannot grow this limiter's memory.
        let Ok(key) = crate::auth::bearer_key(request.headers()) else { return Ok(false) };
        match self.keys.verified_digest(key) {
            Some(digest) => self.limits.check_key(group, &digest).map(|()| false),
            None => Ok(true),
        }
    }
}
