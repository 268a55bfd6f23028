//! Queue topology: per job kind a quorum work queue, one delay queue per retry step and
//! a dead-letter queue, all on the default exchange.
//!
//! Delay queues hold a message for a fixed TTL and then dead-letter it back to the work
//! queue. A queue's arguments cannot change once declared, so each delay queue's name
//! carries its delay (`….retry.500ms`): changing the backoff declares new queues instead
//! of failing with PRECONDITION_FAILED on the old ones.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Channel;

/// Errors while declaring or inspecting queues.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A queue name is longer than AMQP allows (255 bytes).
    #[error("queue name `{0}` is longer than 255 bytes")]
    NameTooLong(String),
    /// The broker refused a declaration or the connection failed.
    #[error("declaring queue `{queue}` failed")]
    Declare {
        /// The queue being declared.
        queue: String,
        /// The broker or connection error.
        #[source]
        source: lapin::Error,
    },
}

/// One kind of job and its retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Short name, e.g. `refresh`; the work queue is `{prefix}.{name}`.
    pub name: String,
    /// Delay before each retry; a job is handled at most `retry_delays.len() + 1` times.
    pub retry_delays: Vec<Duration>,
    /// Redeliveries (crashes, nacks) after which the broker dead-letters a message on
    /// its own. Set explicitly: recent brokers default it and would otherwise drop
    /// messages silently.
    pub delivery_limit: u32,
}

impl QueueSpec {
    /// The delay before the retry that follows handling attempt `attempt` (1-based), or
    /// `None` when the attempts are used up and the job belongs in the dead-letter queue.
    ///
    /// Step `attempt - 1` is the default; a `Retry-After` style `after` moves it to the
    /// first step at least that long (the longest step if none is), never to an earlier one.
    pub fn retry_delay(&self, attempt: u32, after: Option<Duration>) -> Option<Duration> {
        let index = usize::try_from(attempt.max(1) - 1).ok()?;
        let last = self.retry_delays.len().checked_sub(1)?;
        if index > last {
            return None;
        }
        let floor =
            after.map_or(index, |after| self.retry_delays.iter().position(|delay| *delay >= after).unwrap_or(last));
        self.retry_delays.get(index.max(floor)).copied()
    }
}

/// All queues of one deployment, isolated by `prefix` (tests and tenants share a broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Prefix of every queue name.
    pub prefix: String,
    /// The job kinds.
    pub queues: Vec<QueueSpec>,
}

impl Topology {
    /// The spec called `name`, if any.
    pub fn spec(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|spec| spec.name == name)
    }

    /// Name of the work queue of `name`.
    pub fn work_queue(&self, name: &str) -> String {
        format!("{}.{}", self.prefix, name)
    }

    /// Name of the delay queue that holds messages of `name` for `delay`.
    pub fn retry_queue(&self, name: &str, delay: Duration) -> String {
        format!("{}.{}.retry.{}ms", self.prefix, name, delay.as_millis())
    }

    /// Name of the dead-letter queue of `name`.
    pub fn dead_queue(&self, name: &str) -> String {
        format!("{}.{}.dead", self.prefix, name)
    }

    /// Every queue name this topology declares (work, delay steps, dead), deduplicated.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for spec in &self.queues {
            names.push(self.work_queue(&spec.name));
            for delay in &spec.retry_delays {
                let name = self.retry_queue(&spec.name, *delay);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names.push(self.dead_queue(&spec.name));
        }
        names
    }

    /// Declares every queue. Idempotent: re-declaring with the same arguments is a no-op.
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        for spec in &self.queues {
            let work = self.work_queue(&spec.name);
            let dead = self.dead_queue(&spec.name);

            let mut args = quorum();
            // Beyond the delivery limit (a job that keeps crashing workers) the broker
            // moves the message to the dead-letter queue rather than dropping it.
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(spec.delivery_limit)));
            dead_letter_to(&mut args, &dead);
            declare_queue(channel, &work, args).await?;

            for delay in &spec.retry_delays {
                let mut args = quorum();
                let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
                dead_letter_to(&mut args, &work);
                // At-least-once dead-lettering keeps a retry that expires while the work
                // queue is briefly unavailable; the broker requires reject-publish for it.
                args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
                args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
                declare_queue(channel, &self.retry_queue(&spec.name, *delay), args).await?;
            }

            declare_queue(channel, &dead, quorum()).await?;
        }
        Ok(())
    }

    /// Current depth of every queue, for the `pipes_queue_messages` gauge and `pipes status`.
    pub async fn passive_depths(&self, channel: &Channel) -> Result<Vec<(String, u32)>, TopologyError> {
        let mut depths = Vec::new();
        for name in self.queue_names() {
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            let queue = channel
                .queue_declare(short(&name)?, options, FieldTable::default())
                .await
                .map_err(|source| TopologyError::Declare { queue: name.clone(), source })?;
            depths.push((name, queue.message_count()));
        }
        Ok(depths)
    }
}

pub(crate) fn short(name: &str) -> Result<ShortString, TopologyError> {
    ShortString::try_new(name).map_err(|_| TopologyError::NameTooLong(name.to_owned()))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    // The default exchange ("") routes by queue name, so no exchange or binding is needed.
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), TopologyError> {
    channel
        .queue_declare(short(name)?, QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(|source| TopologyError::Declare { queue: name.to_owned(), source })
}
