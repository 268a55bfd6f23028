//! Group commit: single-row writes that many tasks make at once, coalesced into one
//! statement.
//!
//! A worker runs dozens of refreshes at a time, and each takes a lease and stores its
//! result: two statements, two round trips and two commits per account. A [`Group`]
//! queues such requests and one task executes them: it waits for the first, takes every
//! other request already waiting (up to a limit), runs them as one statement, answers
//! each caller and starts over. An idle group adds no delay (a lone request runs at
//! once); a busy one turns N statements into one, and the commits with them. Nothing
//! waits for a batch to fill.
//!
//! A batch that fails answers every caller with the error ([`Answer::Failed`]), as its
//! own statement would have failed: PostgreSQL unreachable is reported at once, not
//! after a second wait on the pool.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::{mpsc, oneshot};

/// One kind of batched statement.
pub trait Batch: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// Runs `requests` as one statement; the answer has one response per request, in order.
    fn run(&self, requests: &[Self::Request]) -> impl Future<Output = Result<Vec<Self::Response>, sqlx::Error>> + Send;
}

/// What a caller gets back.
#[derive(Debug)]
pub enum Answer<T> {
    /// The batch ran; this is the request's own result.
    Done(T),
    /// The statement failed.
    Failed(sqlx::Error),
    /// The group is gone (its runtime shut down): run the single-row statement.
    Alone,
}

struct Item<B: Batch> {
    request: B::Request,
    reply: oneshot::Sender<Result<B::Response, sqlx::Error>>,
}

/// A queue of requests for one kind of batch, executed by a task of its own. The task is
/// started by the first request (inside the runtime that makes it) and ends when the
/// group is dropped.
pub struct Group<B: Batch> {
    /// Moved into the task when it starts.
    batch: Mutex<Option<B>>,
    limit: usize,
    queue: OnceLock<mpsc::UnboundedSender<Item<B>>>,
    counts: Arc<Counts>,
}

/// How much grouping happened: statements run and requests they answered.
#[derive(Debug, Default)]
pub struct Counts {
    pub statements: AtomicU64,
    pub requests: AtomicU64,
}

impl<B: Batch> Group<B> {
    /// A group running up to `limit` requests per statement.
    pub fn new(batch: B, limit: usize) -> Self {
        Group { batch: Mutex::new(Some(batch)), limit: limit.max(1), queue: OnceLock::new(), counts: Arc::default() }
    }

    /// Statements run and requests they answered so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.statements.load(Ordering::Relaxed), self.counts.requests.load(Ordering::Relaxed))
    }

    /// Submits `request` and waits for its answer.
    pub async fn submit(&self, request: B::Request) -> Answer<B::Response> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            if let Some(batch) = self.batch.lock().unwrap_or_else(PoisonError::into_inner).take() {
                // Not a process task: it ends with its group (the channel closes when the
                // group drops) and holds no work but the requests waiting on it.
                tokio::spawn(execute(batch, rx, self.limit, self.counts.clone()));
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send(Item { request, reply }).is_err() {
            return Answer::Alone;
        }
        match answer.await {
            Ok(Ok(response)) => Answer::Done(response),
            Ok(Err(err)) => Answer::Failed(err),
            Err(_) => Answer::Alone,
        }
    }
}

async fn execute<B: Batch>(batch: B, mut queue: mpsc::UnboundedReceiver<Item<B>>, limit: usize, counts: Arc<Counts>) {
    let mut items: Vec<Item<B>> = Vec::with_capacity(limit);
    while queue.recv_many(&mut items, limit).await > 0 {
        let (requests, replies): (Vec<_>, Vec<_>) = items.drain(..).map(|i| (i.request, i.reply)).unzip();
        match batch.run(&requests).await {
            Ok(responses) if responses.len() == replies.len() => {
                counts.statements.fetch_add(1, Ordering::Relaxed);
                counts.requests.fetch_add(responses.len() as u64, Ordering::Relaxed);
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            // Dropping the replies sends every caller down its single-row path.
            Ok(_) => tracing::error!("a batched statement answered the wrong number of requests"),
            Err(err) => {
                tracing::debug!(error = %err, requests = requests.len(), "batched statement failed");
                for reply in replies {
                    let _ = reply.send(Err(copy_error(&err)));
                }
            }
        }
    }
}

/// The batch's error for each of its callers (`sqlx::Error` does not clone): the kinds
/// callers tell apart keep their variant, anything else keeps its message.
fn copy_error(err: &sqlx::Error) -> sqlx::Error {
    match err {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Protocol(format!("batched statement failed: {other}")),
    }
}
