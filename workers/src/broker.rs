//! The supervised broker connection.
//!
//! lapin's auto-recovery reconnects and replays channels, queues, QoS and consumers after
//! a network blip. It is not enough on its own: it gives up after its retry budget, and
//! a recovery attempt can stall in the handshake for many seconds. So when the
//! connection has been down for longer than a short grace period, a supervisor task
//! also tries a fresh connection and, if that works first, swaps it in under a new
//! generation number; publishers and consumers notice and open new channels. Either way
//! a working channel is available again a second or two after the broker comes back.
//!
//! A connection that dies silently (a partition: no reset, no close, nothing arrives) is
//! only noticed by missed heartbeats. RabbitMQ proposes 60 s and peers give up after two
//! missed ones, so unless the URL sets `heartbeat=` we ask for [`DEFAULT_HEARTBEAT`]: the
//! dead connection is found in about 20 s instead of 2 minutes, and the broker hands the
//! jobs a partitioned worker held to other workers as soon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the supervisor looks at the connection.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// How long lapin's own recovery has before the supervisor races it with a fresh connection.
const RECOVERY_GRACE: Duration = Duration::from_secs(2);
/// Limit for one fresh connection attempt (lapin retries inside it), so a handshake that
/// stalls cannot stall the supervisor.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat interval (seconds) asked for when the URL does not set one.
pub const DEFAULT_HEARTBEAT: u16 = 10;

/// Errors from the connection layer.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The initial connection (or opening a channel) failed.
    #[error("cannot reach the message broker")]
    Connect(#[source] lapin::Error),
    /// The connection is down and being re-established; try again shortly.
    #[error("the message broker connection is down (reconnecting)")]
    Unavailable,
}

/// One live connection and its generation number (bumped on every replacement).
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) generation: u64,
    pub(crate) connection: Arc<Connection>,
}

struct Shared {
    url: String,
    name: String,
    current: watch::Sender<Current>,
}

/// Stops the supervisor when the last [`Broker`] clone goes away.
struct SupervisorGuard(CancellationToken);

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A cheap, clone-able handle to the supervised connection.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    _guard: Arc<SupervisorGuard>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("Broker").field("name", &self.shared.name).field("connected", &self.is_connected()).finish()
    }
}

impl Broker {
    /// Connects to `url` (an `amqp://` URI) and starts the reconnect supervisor.
    /// `name` shows up as the connection name in the broker's management UI.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BrokerError> {
        let connection = open(url, name).await.map_err(BrokerError::Connect)?;
        let (current, _) = watch::channel(Current { generation: 0, connection: Arc::new(connection) });
        let shared = Arc::new(Shared { url: url.to_owned(), name: name.to_owned(), current });
        let stop = CancellationToken::new();
        tokio::spawn(supervise(shared.clone(), stop.clone()));
        Ok(Self { shared, _guard: Arc::new(SupervisorGuard(stop)) })
    }

    /// True while the connection is up (false during an outage and recovery).
    pub fn is_connected(&self) -> bool {
        self.shared.current.borrow().connection.status().connected()
    }

    /// The heartbeat interval negotiated with the broker for the current connection (zero:
    /// none).
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(u64::from(self.shared.current.borrow().connection.configuration().heartbeat()))
    }

    /// Opens a new channel on the current connection; fails fast when it is down.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.channel_with_generation().await?.0)
    }

    /// Waits until the connection is up, for at most `timeout`. Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_connected() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn channel_with_generation(&self) -> Result<(Channel, u64), BrokerError> {
        let current = self.shared.current.borrow().clone();
        if !current.connection.status().connected() {
            return Err(BrokerError::Unavailable);
        }
        let channel = current.connection.create_channel().await.map_err(BrokerError::Connect)?;
        Ok((channel, current.generation))
    }

    pub(crate) fn generation(&self) -> u64 {
        self.shared.current.borrow().generation
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Current> {
        self.shared.current.subscribe()
    }
}

async fn open(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover()
        // lapin's default backoff grows to a minute between attempts; a short, capped
        // one keeps "broker is back" → "jobs flow again" within a couple of seconds.
        // After the attempts run out the supervisor below takes over.
        .configure_backoff(|backoff| {
            backoff
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(20)
                .with_jitter()
        });
    match url.parse::<AMQPUri>() {
        Ok(mut uri) => {
            uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT);
            Connection::connect_uri(uri, properties).await
        }
        // Let lapin report the malformed URL as it always does.
        Err(_) => Connection::connect(url, properties).await,
    }
}

async fn supervise(shared: Arc<Shared>, stop: CancellationToken) {
    let mut down_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
        let current = shared.current.borrow().clone();
        if current.connection.status().connected() {
            down_since = None;
            continue;
        }
        if down_since.get_or_insert_with(Instant::now).elapsed() < RECOVERY_GRACE {
            continue;
        }
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, open(&shared.url, &shared.name)) => attempt,
        };
        match attempt {
            // lapin recovered the old one meanwhile: keep it (channels and consumers on
            // it are intact) and let the new one close on drop.
            Ok(Ok(_)) if current.connection.status().connected() => down_since = None,
            Ok(Ok(connection)) => {
                // Publishers and consumers drop their channels when they see the new
                // generation; the old connection itself must be closed explicitly.
                tokio::spawn(retire(current.connection.clone(), stop.clone()));
                shared
                    .current
                    .send_replace(Current { generation: current.generation + 1, connection: Arc::new(connection) });
                down_since = None;
                tracing::info!(connection = %shared.name, "broker connection re-established");
            }
            Ok(Err(error)) => tracing::debug!(connection = %shared.name, %error, "broker still unreachable"),
            Err(_) => tracing::debug!(connection = %shared.name, "connecting to the broker timed out"),
        }
    }
}

/// How long a replaced connection is watched for a late recovery.
const RETIRE_WATCH: Duration = Duration::from_secs(600);

/// Closes a replaced connection now, or as soon as lapin recovers it. lapin keeps
/// recovering a connection in the background after every channel handle on it is dropped,
/// and replays its consumers when it succeeds: a consumer nobody reads, holding its
/// prefetch of jobs unacknowledged for as long as the process lives. Closing the connection makes the
/// broker requeue whatever it delivered there.
async fn retire(old: Arc<Connection>, stop: CancellationToken) {
    let deadline = Instant::now() + RETIRE_WATCH;
    while Instant::now() < deadline {
        let status = old.status();
        if status.closed() {
            return;
        }
        if status.connected() {
            if let Err(error) = old.close(200, "replaced by a new connection".into()).await {
                tracing::debug!(%error, "closing a replaced broker connection failed");
            }
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}
