//! The consumer runtime: bounded concurrency, manual acks, delayed retries, dead letters,
//! recovery after connection loss and a graceful drain on shutdown.
//!
//! Nothing is acked before its outcome is safe: a retry or dead letter is first
//! republished (confirmed) and only then is the original acked; if that republish fails
//! the original is requeued. A delivery whose ack is lost with its connection comes
//! again, so handlers must be idempotent. Acks of jobs finishing at about the same time
//! go to the broker together ([`crate::acks`]).
//!
//! Shutdown returns in bounded time even when the broker went silent (the socket open,
//! nothing answering): starting a session is abandoned, and every broker call made
//! after cancel (basic.cancel, acks, nacks, republishes) gets [`SHUTDOWN_GRACE`] at most.
//! In-flight handlers still run to the end; what could not be settled is redelivered.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use rand::RngCore;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::acks::{AckResult, Acks, Ticket};
use crate::broker::{Broker, BrokerError, Current};
use crate::publisher::{Headers, Publisher, REASON_HEADER, SOURCE_QUEUE_HEADER};
use crate::shutdown::{within_shutdown_grace, SHUTDOWN_GRACE};
use crate::topology::{short, QueueSpec, Topology, TopologyError};

/// Header carrying the 1-based attempt number of a job.
pub const ATTEMPT_HEADER: &str = "x-pipes-attempt";

/// Pause between attempts to (re)start consuming while the broker is unavailable.
const RESTART_DELAY: Duration = Duration::from_millis(500);
/// Limit for (re)starting a session (channel, topology, QoS, consume) on a broker that
/// accepts bytes but does not answer; it is tried again after [`RESTART_DELAY`].
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Handles one kind of job. Handlers must be idempotent: a job can arrive twice.
pub trait Handler: Send + Sync + 'static {
    /// The JSON payload of a job.
    type Job: DeserializeOwned + Send;

    /// Handles one job and says what should happen to it.
    fn handle(&self, job: Self::Job, ctx: JobContext) -> impl Future<Output = Outcome> + Send;
}

/// What the runtime knows about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    /// 1 on the first handling, +1 per delayed retry (from the `x-pipes-attempt` header).
    pub attempt: u32,
    /// The broker delivered this message before (a worker died or a channel dropped).
    pub redelivered: bool,
    /// The message id, kept across retries.
    pub message_id: Option<String>,
    /// The message's headers.
    pub headers: Headers,
}

/// What a handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: acknowledge.
    Done,
    /// Try again later: after the next backoff step, or at least `after` (Retry-After).
    Retry {
        /// Minimum wait the upstream asked for.
        after: Option<Duration>,
        /// Why, recorded on the message.
        reason: String,
    },
    /// Never going to work: move to the dead-letter queue.
    DeadLetter {
        /// Why, recorded on the message.
        reason: String,
    },
}

/// Errors that stop [`run_consumer`] before it starts; outages never do.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The queue is not described by the topology.
    #[error("queue `{0}` is not part of the topology")]
    UnknownQueue(String),
    /// A consumer that may run no job would never make progress.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("cannot start consuming")]
    Consume(#[source] lapin::Error),
    #[error("the broker did not answer within {SESSION_TIMEOUT:?}")]
    Timeout,
}

struct Runtime<H> {
    handler: H,
    /// Fires on shutdown: from then on, broker calls are bounded.
    cancel: CancellationToken,
    publisher: Publisher,
    topology: Topology,
    spec: QueueSpec,
    work_queue: String,
}

/// Why one consuming session ended.
enum End {
    Cancelled,
    Restart,
}

/// Consumes `queue_name` of `topology` until `cancel` fires, with up to `concurrency`
/// jobs in flight. Declares the topology (idempotently) each time it (re)starts, survives
/// broker outages, and on cancel stops taking deliveries, lets in-flight jobs finish and
/// settle, then returns.
pub async fn run_consumer<H: Handler>(
    broker: Broker,
    topology: Topology,
    queue_name: impl Into<String>,
    handler: H,
    concurrency: u16,
    cancel: CancellationToken,
) -> Result<(), ConsumerError> {
    let queue_name = queue_name.into();
    let spec = topology.spec(&queue_name).cloned().ok_or(ConsumerError::UnknownQueue(queue_name))?;
    if concurrency == 0 {
        return Err(ConsumerError::ZeroConcurrency);
    }
    let runtime = Arc::new(Runtime {
        handler,
        publisher: Publisher::new(&broker).with_shutdown(cancel.clone()),
        cancel: cancel.clone(),
        work_queue: topology.work_queue(&spec.name),
        topology,
        spec,
    });
    let permits = Arc::new(Semaphore::new(usize::from(concurrency)));
    let mut tasks = JoinSet::new();

    while !cancel.is_cancelled() {
        let mut connections = broker.subscribe();
        let session = tokio::time::timeout(SESSION_TIMEOUT, start_session(&broker, &runtime, concurrency));
        let session = tokio::select! {
            () = cancel.cancelled() => break,
            session = session => session.unwrap_or(Err(SessionError::Timeout)),
        };
        let (channel, consumer) = match session {
            Ok(session) => session,
            Err(error) => {
                // An outage is expected and brief; anything else (a queue declared with
                // other arguments, missing permissions) needs an operator, so say so loudly.
                if let SessionError::Broker(BrokerError::Unavailable) = error {
                    tracing::debug!(queue = %runtime.work_queue, "broker unavailable, consumer waiting");
                } else {
                    tracing::warn!(queue = %runtime.work_queue, error = %error, "cannot start consuming, retrying");
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(RESTART_DELAY) => continue,
                }
            }
        };
        tracing::info!(queue = %runtime.work_queue, concurrency, "consuming");
        let tag = consumer.tag();
        let acks = Arc::new(Acks::default());
        let flusher = AbortOnDropHandle::new(tokio::spawn(acks.clone().run()));
        let end = consume(&runtime, &channel, consumer, &acks, &mut connections, &permits, &mut tasks, &cancel).await;
        if let End::Cancelled = end {
            // Stop new deliveries first; prefetched but unstarted ones are requeued when the
            // channel closes below, after every started job has been acked or requeued.
            match within_shutdown_grace(&cancel, channel.basic_cancel(tag, BasicCancelOptions::default())).await {
                Some(Ok(())) => {}
                Some(Err(error)) => tracing::debug!(%error, "basic.cancel failed; the channel close will cancel"),
                None => tracing::warn!(
                    queue = %runtime.work_queue,
                    grace = ?SHUTDOWN_GRACE,
                    "the broker did not answer basic.cancel; stopping without it"
                ),
            }
        }
        // Jobs started on this channel settle on it, so it and its acks' flusher stay
        // until they finish.
        drain(&mut tasks).await;
        drop(flusher);
        drop(channel);
        if let End::Restart = end {
            tracing::warn!(queue = %runtime.work_queue, "consumer interrupted, restarting");
        }
    }
    drain(&mut tasks).await;
    Ok(())
}

async fn start_session<H: Handler>(
    broker: &Broker,
    runtime: &Runtime<H>,
    concurrency: u16,
) -> Result<(Channel, Consumer), SessionError> {
    let (channel, _generation) = broker.channel_with_generation().await?;
    runtime.topology.declare(&channel).await?;
    channel.basic_qos(concurrency, BasicQosOptions { global: false }).await.map_err(SessionError::Consume)?;
    let consumer = channel
        .basic_consume(
            short(&runtime.work_queue)?,
            consumer_tag(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(SessionError::Consume)?;
    Ok((channel, consumer))
}

#[allow(clippy::too_many_arguments)]
async fn consume<H: Handler>(
    runtime: &Arc<Runtime<H>>,
    channel: &Channel,
    mut consumer: Consumer,
    acks: &Arc<Acks>,
    connections: &mut watch::Receiver<Current>,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> End {
    loop {
        while let Some(finished) = tasks.try_join_next() {
            log_join(finished);
        }
        // Take a slot before the next delivery so at most `concurrency` jobs run.
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return End::Cancelled,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return End::Cancelled, // the semaphore is never closed
            },
        };
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return End::Cancelled,
            // The supervisor replaced a dead connection: this channel is gone for good.
            _ = connections.changed() => return End::Restart,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                let ticket = acks.delivered(delivery.delivery_tag, &delivery.acker);
                tasks.spawn(process(runtime.clone(), delivery, ticket, acks.clone(), permit));
            }
            Some(Err(error)) => {
                drop(permit);
                tracing::warn!(queue = %runtime.work_queue, %error, "consumer interrupted, waiting for recovery");
                let recovered = tokio::select! {
                    result = channel.wait_for_recovery(error) => result.is_ok(),
                    _ = connections.changed() => false,
                    () = cancel.cancelled() => return End::Cancelled,
                };
                if !recovered {
                    return End::Restart;
                }
                acks.recovered();
                // lapin replays basic.qos and basic.consume: this stream carries on.
                tracing::info!(queue = %runtime.work_queue, "consumer recovered");
            }
            // The broker cancelled the consumer (e.g. the queue was deleted).
            None => return End::Restart,
        }
    }
}

async fn process<H: Handler>(
    runtime: Arc<Runtime<H>>,
    delivery: Delivery,
    ticket: Ticket,
    acks: Arc<Acks>,
    _permit: OwnedSemaphorePermit,
) {
    let headers = Headers::from_table(delivery.properties.headers().as_ref());
    let attempt = headers.attempt().unwrap_or(1).max(1);
    let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
    let ctx = JobContext {
        attempt,
        redelivered: delivery.redelivered,
        message_id: message_id.clone(),
        headers: headers.clone(),
    };

    let outcome = match serde_json::from_slice::<H::Job>(&delivery.data) {
        // Only the error's position goes into the reason: serde's message can quote
        // payload values, and the payload is not ours to log.
        Err(error) => Outcome::DeadLetter {
            reason: format!(
                "undecodable payload ({:?} error at line {} column {})",
                error.classify(),
                error.line(),
                error.column()
            ),
        },
        Ok(job) => AssertUnwindSafe(runtime.handler.handle(job, ctx))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Outcome::Retry { after: None, reason: "handler panicked".to_owned() }),
    };

    let work = runtime.work_queue.as_str();
    let dead = || runtime.topology.dead_queue(&runtime.spec.name);
    let (target, headers) = match outcome {
        Outcome::Done => return settle_ack(&acks, ticket, &delivery, work, &runtime.cancel).await,
        Outcome::Retry { after, reason } => match runtime.spec.retry_delay(attempt, after) {
            Some(delay) => {
                tracing::debug!(queue = work, attempt, ?delay, %reason, "retrying later");
                let target = runtime.topology.retry_queue(&runtime.spec.name, delay);
                (target, headers.with_attempt(attempt + 1).with(REASON_HEADER, reason))
            }
            None => {
                tracing::warn!(queue = work, attempt, %reason, "retries exhausted, dead-lettering");
                let reason = format!("retries exhausted after {attempt} attempts: {reason}");
                (dead(), headers.with_attempt(attempt).with(REASON_HEADER, reason).with(SOURCE_QUEUE_HEADER, work))
            }
        },
        Outcome::DeadLetter { reason } => {
            tracing::warn!(queue = work, attempt, %reason, "dead-lettering");
            (dead(), headers.with_attempt(attempt).with(REASON_HEADER, reason).with(SOURCE_QUEUE_HEADER, work))
        }
    };

    match runtime.publisher.publish_bytes(&target, &delivery.data, headers, message_id.as_deref()).await {
        Ok(_) => settle_ack(&acks, ticket, &delivery, work, &runtime.cancel).await,
        Err(error) => {
            // Keep the job: back into the work queue, to be handled again.
            tracing::warn!(queue = work, target = %target, error = %error, "republish failed, requeueing");
            let nack = delivery.nack(BasicNackOptions { multiple: false, requeue: true });
            let nacked = within_shutdown_grace(&runtime.cancel, nack).await;
            // Handed to lapin (the first poll did that), so no later ack can overtake it.
            acks.settled(ticket);
            match nacked {
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(queue = work, %error, "nack lost with the channel; the broker redelivers")
                }
                None => tracing::debug!(queue = work, "nack unanswered at shutdown; the broker redelivers"),
            }
        }
    }
}

async fn settle_ack(acks: &Acks, ticket: Ticket, delivery: &Delivery, queue: &str, cancel: &CancellationToken) {
    let acked: Option<AckResult> = within_shutdown_grace(cancel, acks.ack(ticket, delivery.acker.clone())).await;
    match acked {
        Some(Ok(true)) => {}
        // The channel died while the job ran: the broker redelivers it.
        Some(Ok(false)) => tracing::debug!(queue, "ack not sent: channel closed, job will be redelivered"),
        Some(Err(error)) => tracing::debug!(queue, %error, "ack lost with the channel; job will be redelivered"),
        None => tracing::debug!(queue, "ack unanswered at shutdown; job will be redelivered"),
    }
}

async fn drain(tasks: &mut JoinSet<()>) {
    while let Some(finished) = tasks.join_next().await {
        log_join(finished);
    }
}

fn log_join(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        tracing::error!(%error, "job task failed");
    }
}

fn consumer_tag() -> ShortString {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("pipes-{suffix}").into()
}
