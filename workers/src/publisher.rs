//! Confirmed publishing.
//!
//! Every message is persistent, `mandatory` and waits for the broker's confirm: only then
//! is it safe on disk in a queue. An ack that carries a returned message means no queue
//! took it (the broker acks unroutable messages too), so that is an error as well.
//!
//! A publish never waits for long: opening the channel, sending and the confirm together
//! get 10 s (a broker gone silent answers nothing), and a publisher told about shutdown
//! ([`Publisher::with_shutdown`]) gives up [`crate::SHUTDOWN_GRACE`] after it began.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use rand::Rng;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::consumer::ATTEMPT_HEADER;
use crate::shutdown::within_shutdown_grace;

/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-pipes-reason";
/// Header naming the work queue a dead-lettered message came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-pipes-source-queue";

/// How long a publish (opening the channel if needed, sending, and the broker's confirm)
/// may take before it counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from [`Publisher::publish`]. Nothing is retried here: callers decide.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The job could not be turned into JSON.
    #[error("cannot serialize the job")]
    Serialize(#[from] serde_json::Error),
    /// The connection is down or a channel could not be opened.
    #[error("message broker unavailable")]
    Unavailable(#[from] BrokerError),
    /// The channel or connection failed while publishing.
    #[error("publishing to `{queue}` failed")]
    Broker {
        /// Target queue.
        queue: String,
        /// The broker or connection error.
        #[source]
        source: lapin::Error,
    },
    /// No queue took the message (typically: the queue does not exist).
    #[error("message to `{queue}` was unroutable: {reply_code} {reply_text}")]
    Unroutable {
        /// Target queue.
        queue: String,
        /// AMQP reply code (312 NO_ROUTE).
        reply_code: u16,
        /// Broker's explanation.
        reply_text: String,
    },
    /// The broker refused to take responsibility for the message.
    #[error("broker rejected the message to `{queue}`")]
    Nacked {
        /// Target queue.
        queue: String,
    },
    /// No confirm arrived in time; the message may or may not be queued.
    #[error("no confirm for the message to `{queue}` within {timeout:?}")]
    Timeout {
        /// Target queue.
        queue: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// Shutdown began and the broker did not confirm within the grace period; the message
    /// may or may not be queued.
    #[error("gave up on the message to `{queue}`: shutting down and the broker did not answer")]
    ShuttingDown {
        /// Target queue.
        queue: String,
    },
    /// The publishing channel could not be put into confirm mode.
    #[error("cannot open a confirmed publishing channel")]
    Channel(#[source] lapin::Error),
    /// A queue name or header key exceeds AMQP's 255-byte limit.
    #[error("name `{0}` is longer than 255 bytes")]
    NameTooLong(String),
}

/// String headers sent with a message, plus the delivery attempt counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    attempt: Option<u32>,
    values: BTreeMap<String, String>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a string header.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(key.into(), value.into());
        self
    }

    /// Sets the attempt counter read back as [`crate::JobContext::attempt`].
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// A string header's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The attempt counter, if set.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// Reads headers from a delivery: string values are kept, the attempt counter is
    /// accepted as any integer type or a decimal string (other clients may write it).
    pub(crate) fn from_table(table: Option<&FieldTable>) -> Self {
        let mut headers = Self::default();
        let Some(table) = table else { return headers };
        for (key, value) in table.inner() {
            if key.as_str() == ATTEMPT_HEADER {
                headers.attempt = integer(value);
            } else if let Some(text) = text(value) {
                headers.values.insert(key.as_str().to_owned(), text);
            }
        }
        headers
    }

    fn to_table(&self) -> Result<FieldTable, PublishError> {
        let mut table = FieldTable::default();
        if let Some(attempt) = self.attempt {
            table.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        }
        for (key, value) in &self.values {
            let key = ShortString::try_new(key.as_str()).map_err(|_| PublishError::NameTooLong(key.clone()))?;
            table.insert(key, AMQPValue::LongString(value.as_str().into()));
        }
        Ok(table)
    }
}

fn integer(value: &AMQPValue) -> Option<u32> {
    let wide: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        other => text(other)?.trim().parse().ok()?,
    };
    u32::try_from(wide).ok()
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// A clone-able publishing handle sharing one confirm-mode channel.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    channel: Arc<Mutex<Option<(Channel, u64)>>>,
    shutdown: Option<CancellationToken>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("broker", &self.broker).finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on `broker`. The channel is opened on first use and reopened after
    /// the connection is replaced, so a publisher outlives broker outages.
    pub fn new(broker: &Broker) -> Self {
        Self { broker: broker.clone(), channel: Arc::new(Mutex::new(None)), shutdown: None }
    }

    /// The same publisher, giving up on a publish [`crate::SHUTDOWN_GRACE`] after `cancel`
    /// fired ([`PublishError::ShuttingDown`]) instead of waiting for a silent broker.
    pub fn with_shutdown(mut self, cancel: CancellationToken) -> Self {
        self.shutdown = Some(cancel);
        self
    }

    /// Publishes `job` as JSON to `queue` and waits for the broker's confirm.
    pub async fn publish<T: Serialize>(&self, queue: &str, job: &T, headers: Headers) -> Result<(), PublishError> {
        let body = serde_json::to_vec(job)?;
        self.publish_bytes(queue, &body, headers, None).await.map(|_| ())
    }

    /// Publishes an already encoded JSON body, keeping `message_id` when given (a retried
    /// job keeps its id) or generating one. Returns the message id.
    pub async fn publish_bytes(
        &self,
        queue: &str,
        body: &[u8],
        headers: Headers,
        message_id: Option<&str>,
    ) -> Result<String, PublishError> {
        let routing_key = ShortString::try_new(queue).map_err(|_| PublishError::NameTooLong(queue.to_owned()))?;
        let message_id = message_id.map_or_else(new_message_id, str::to_owned);
        let id =
            ShortString::try_new(message_id.as_str()).map_err(|_| PublishError::NameTooLong(message_id.clone()))?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type("application/json".into())
            .with_message_id(id)
            .with_timestamp(unix_now())
            .with_headers(headers.to_table()?);
        let broker_error = |source| PublishError::Broker { queue: queue.to_owned(), source };
        // Boxed: lapin's publish future is large, and every layer around it (the timeout,
        // the shutdown grace, the caller's set of publishes in flight) would copy it.
        let confirm = Box::pin(async {
            let channel = self.channel().await?;
            let options = BasicPublishOptions { mandatory: true, immediate: false };
            let pending =
                channel.basic_publish("".into(), routing_key, options, body, properties).await.map_err(broker_error)?;
            pending.await.map_err(broker_error)
        });
        let timed_out = || PublishError::Timeout { queue: queue.to_owned(), timeout: CONFIRM_TIMEOUT };
        let bounded =
            async { tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await.unwrap_or_else(|_| Err(timed_out())) };
        let confirmation = match &self.shutdown {
            None => bounded.await?,
            Some(cancel) => within_shutdown_grace(cancel, bounded)
                .await
                .ok_or_else(|| PublishError::ShuttingDown { queue: queue.to_owned() })??,
        };

        match confirmation {
            Confirmation::Ack(None) => Ok(message_id),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
                queue: queue.to_owned(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.as_str().to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked { queue: queue.to_owned() }),
            // Only possible if confirm mode were off, which `channel()` guarantees it is not;
            // refuse rather than claim a delivery nobody confirmed.
            Confirmation::NotRequested => Err(PublishError::Nacked { queue: queue.to_owned() }),
        }
    }

    /// The shared channel: reused while healthy, replaced when closed or when the
    /// supervisor replaced the connection. A channel lapin is still recovering fails
    /// fast rather than blocking callers for the length of an outage.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some((channel, generation)) = slot.as_ref() {
            let same_connection = *generation == self.broker.generation();
            if same_connection && channel.status().connected() {
                return Ok(channel.clone());
            }
            if same_connection && channel.status().reconnecting() {
                return Err(BrokerError::Unavailable.into());
            }
        }
        *slot = None;
        let (channel, generation) = self.broker.channel_with_generation().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(PublishError::Channel)?;
        *slot = Some((channel.clone(), generation));
        Ok(channel)
    }
}

/// 128 random bits as 32 hex digits, in one allocation.
fn new_message_id() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
