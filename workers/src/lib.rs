//! `pipes-workers`: the RabbitMQ job runtime of Pipes, free of any domain logic.
//!
//! * [`Broker`] — one supervised AMQP connection that comes back on its own after an outage.
//! * [`Topology`] — quorum work queues, one delay queue per retry step, a dead-letter queue.
//! * [`Publisher`] — persistent, mandatory, confirmed publishing from many tasks.
//! * [`run_consumer`] — a bounded-concurrency consumer that turns a handler's [`Outcome`]
//!   into ack, delayed retry or dead letter, and drains in-flight jobs on shutdown.
//! * [`within_shutdown_grace`] — after shutdown began, no broker call waits for long: a
//!   silent broker cannot keep a process from exiting.
//!
//! The refresh and webhook handlers live in the `pipes` crate, which depends on this one;
//! this crate never depends on `pipes`, so the package graph stays acyclic.

mod acks;
mod broker;
mod consumer;
mod publisher;
mod shutdown;
mod topology;

pub use broker::{Broker, BrokerError, DEFAULT_HEARTBEAT};
pub use consumer::{run_consumer, ConsumerError, Handler, JobContext, Outcome, ATTEMPT_HEADER};
pub use publisher::{Headers, PublishError, Publisher, REASON_HEADER, SOURCE_QUEUE_HEADER};
pub use shutdown::{within_shutdown_grace, SHUTDOWN_GRACE};
pub use topology::{QueueSpec, Topology, TopologyError};

/// Re-exported so callers can name channels and errors without a direct `lapin` dependency.
pub use lapin;
pub use tokio_util::sync::CancellationToken;
