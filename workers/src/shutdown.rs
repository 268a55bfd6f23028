//! Bounded waits on the broker once shutdown has begun.
//!
//! A broker that went silent (a network partition: the socket stays open, nothing comes
//! back) answers no call, and lapin notices a dead peer only after two missed heartbeats.
//! A process told to stop must not wait for it: once the cancellation token has fired, a
//! broker call gets at most [`SHUTDOWN_GRACE`] more, then it is given up. That is safe:
//! whatever was not acknowledged is redelivered by the broker, and handlers are
//! idempotent.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long one broker call may still take after shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs `call` to completion, unless `cancel` fires and [`SHUTDOWN_GRACE`] passes after
/// that (or after the call started, if it started later) first: then `None`.
pub async fn within_shutdown_grace<F: Future>(cancel: &CancellationToken, call: F) -> Option<F::Output> {
    let give_up = async {
        cancel.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        output = call => Some(output),
        () = give_up => None,
    }
}
