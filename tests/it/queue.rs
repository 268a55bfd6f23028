//! The RabbitMQ job runtime against a real broker: confirmed publishing, delayed retries,
//! dead letters, redelivery, recovery after a connection cut and graceful shutdown.
//! Every test uses its own queue prefix and deletes its queues at the end.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use pipes_workers::lapin::message::BasicGetMessage;
use pipes_workers::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueDeleteOptions};
use pipes_workers::lapin::types::{AMQPValue, FieldTable};
use pipes_workers::{
    run_consumer, Broker, CancellationToken, Handler, Headers, JobContext, Outcome, PublishError, Publisher, QueueSpec,
    Topology, ATTEMPT_HEADER, REASON_HEADER,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::support::proxy::TcpProxy;

const AMQP_ADDR: &str = "127.0.0.1:5672";
const QUEUE: &str = "jobs";

fn amqp_url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    id: u32,
}

/// One handling of a job, as the handler saw it.
#[derive(Debug, Clone)]
struct Seen {
    job: Job,
    ctx: JobContext,
    at: Instant,
    finished: bool,
}

/// A handler that records every call, optionally works for a while, and answers with
/// scripted outcomes (then `Done`).
#[derive(Clone, Default)]
struct Script {
    outcomes: Arc<Mutex<VecDeque<Outcome>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    work: Duration,
    /// Extra work for one job id.
    slow: Option<(u32, Duration)>,
    /// Up to this much more work per job, at random: jobs finish out of order.
    jitter: Duration,
}

impl Script {
    fn answering(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        Self { outcomes: Arc::new(Mutex::new(outcomes.into_iter().collect())), ..Self::default() }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    async fn wait_for_calls(&self, n: usize, within: Duration) -> Result<Vec<Seen>> {
        eventually(within, || self.seen().len() >= n)
            .await
            .with_context(|| format!("expected {n} handler calls, saw {}", self.seen().len()))?;
        Ok(self.seen())
    }
}

impl Handler for Script {
    type Job = Job;

    async fn handle(&self, job: Job, ctx: JobContext) -> Outcome {
        let id = job.id;
        let index = {
            let mut seen = self.seen.lock().expect("seen lock");
            seen.push(Seen { job, ctx, at: Instant::now(), finished: false });
            seen.len() - 1
        };
        let mut work = self.work;
        if let Some((slow_id, extra)) = self.slow {
            if slow_id == id {
                work += extra;
            }
        }
        if !self.jitter.is_zero() {
            work += self.jitter.mul_f64(rand::random::<f64>());
        }
        if !work.is_zero() {
            tokio::time::sleep(work).await;
        }
        self.seen.lock().expect("seen lock")[index].finished = true;
        self.outcomes.lock().expect("outcomes lock").pop_front().unwrap_or(Outcome::Done)
    }
}

fn retry(reason: &str) -> Outcome {
    Outcome::Retry { after: None, reason: reason.to_owned() }
}

async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            bail!("condition not met within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A broker, a declared topology with a unique prefix, and a publisher.
struct Rig {
    broker: Broker,
    topology: Topology,
    publisher: Publisher,
    cancel: CancellationToken,
}

impl Rig {
    async fn new(delays_ms: &[u64]) -> Result<Self> {
        Self::via(AMQP_ADDR, delays_ms).await
    }

    async fn via(addr: &str, delays_ms: &[u64]) -> Result<Self> {
        let broker = Broker::connect(&amqp_url(addr), "pipes-tests").await?;
        let topology = Topology {
            prefix: format!("pipes-test.{}", ulid::Ulid::new()),
            queues: vec![QueueSpec {
                name: QUEUE.to_owned(),
                retry_delays: delays_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
                delivery_limit: 10,
            }],
        };
        topology.declare(&broker.channel().await?).await?;
        let publisher = Publisher::new(&broker);
        Ok(Self { broker, topology, publisher, cancel: CancellationToken::new() })
    }

    fn work(&self) -> String {
        self.topology.work_queue(QUEUE)
    }

    fn dead(&self) -> String {
        self.topology.dead_queue(QUEUE)
    }

    fn spawn(&self, handler: Script, concurrency: u16) -> JoinHandle<Result<(), pipes_workers::ConsumerError>> {
        tokio::spawn(run_consumer(
            self.broker.clone(),
            self.topology.clone(),
            QUEUE,
            handler,
            concurrency,
            self.cancel.clone(),
        ))
    }

    async fn publish(&self, id: u32) -> Result<(), PublishError> {
        self.publisher.publish(&self.work(), &Job { id }, Headers::new()).await
    }

    async fn depth(&self, queue: &str) -> Result<u32> {
        let depths = self.topology.passive_depths(&self.broker.channel().await?).await?;
        depths.into_iter().find(|(name, _)| name == queue).map(|(_, n)| n).context("queue missing")
    }

    /// Waits for a message on `queue` and takes it off (acked).
    async fn take(&self, queue: &str, within: Duration) -> Result<BasicGetMessage> {
        let channel = self.broker.channel().await?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await? {
                message.ack(BasicAckOptions::default()).await?;
                return Ok(message);
            }
            if Instant::now() > deadline {
                bail!("no message on {queue} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the consumer, waits for it, and deletes the queues (see `Drop`).
    async fn finish(self, consumer: Option<JoinHandle<Result<(), pipes_workers::ConsumerError>>>) -> Result<()> {
        self.cancel.cancel();
        if let Some(consumer) = consumer {
            tokio::time::timeout(Duration::from_secs(15), consumer).await.context("consumer did not stop")???;
        }
        Ok(())
    }
}

impl Drop for Rig {
    /// Deletes this test's queues even when an assertion failed, over a direct connection
    /// (the rig's own may run through a cut proxy) on a thread of its own, because the
    /// test's runtime may be unwinding.
    fn drop(&mut self) {
        self.cancel.cancel();
        let names = self.topology.queue_names();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let direct = Broker::connect(&amqp_url(AMQP_ADDR), "pipes-tests-cleanup").await?;
                let channel = direct.channel().await?;
                for name in names {
                    channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
                }
                anyhow::Ok(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("queue cleanup failed: {error:#}");
        }
    }
}

fn header<'a>(message: &'a BasicGetMessage, key: &str) -> Option<&'a AMQPValue> {
    message.delivery.properties.headers().as_ref()?.inner().get(key)
}

fn header_text(message: &BasicGetMessage, key: &str) -> String {
    match header(message, key) {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn published_job_is_consumed_and_acked() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    let script = Script::default();
    let consumer = rig.spawn(script.clone(), 4);

    rig.publish(7).await?;
    let seen = script.wait_for_calls(1, Duration::from_secs(10)).await?;
    assert_eq!(seen[0].job, Job { id: 7 });
    assert_eq!(seen[0].ctx.attempt, 1);
    assert!(!seen[0].ctx.redelivered);
    assert!(seen[0].ctx.message_id.is_some(), "every message carries an id");

    // After shutdown an unacked job would be back in the queue; an acked one is gone.
    rig.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer).await???;
    assert_eq!(rig.depth(&rig.work()).await?, 0);
    assert_eq!(script.seen().len(), 1);
    rig.finish(None).await
}

#[tokio::test]
async fn publishing_to_a_missing_queue_is_unroutable() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    let missing = format!("{}.does-not-exist", rig.topology.prefix);
    let result = rig.publisher.publish(&missing, &Job { id: 1 }, Headers::new()).await;
    assert!(matches!(result, Err(PublishError::Unroutable { reply_code: 312, .. })), "{result:?}");
    // The channel stays usable after a returned message.
    rig.publish(2).await?;
    rig.finish(None).await
}

#[tokio::test]
async fn retry_twice_then_done_handles_three_times_with_rising_attempts() -> Result<()> {
    let rig = Rig::new(&[200, 500, 1000]).await?;
    let script = Script::answering([retry("busy"), retry("still busy")]);
    let consumer = rig.spawn(script.clone(), 2);

    rig.publish(1).await?;
    let seen = script.wait_for_calls(3, Duration::from_secs(15)).await?;
    let attempts: Vec<u32> = seen.iter().map(|s| s.ctx.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(seen.iter().all(|s| s.job == Job { id: 1 }));
    assert!(seen.iter().all(|s| s.ctx.message_id == seen[0].ctx.message_id), "a retry keeps its message id");
    // The second wait used the second step (500 ms), not the first.
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(450), "{:?}", seen[2].at - seen[1].at);
    assert_eq!(seen[1].ctx.headers.get(REASON_HEADER), Some("busy"));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(script.seen().len(), 3, "a finished job is not handled again");
    assert_eq!(rig.depth(&rig.dead()).await?, 0);
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn retry_beyond_the_last_step_lands_in_the_dead_letter_queue() -> Result<()> {
    let rig = Rig::new(&[200, 300]).await?;
    let script = Script::answering((0..10).map(|_| retry("provider down")));
    let consumer = rig.spawn(script.clone(), 2);

    rig.publish(9).await?;
    let dead = rig.take(&rig.dead(), Duration::from_secs(15)).await?;
    let attempts: Vec<u32> = script.seen().iter().map(|s| s.ctx.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "one handling plus one per retry step");
    assert_eq!(serde_json::from_slice::<Job>(&dead.delivery.data)?, Job { id: 9 });
    let reason = header_text(&dead, REASON_HEADER);
    assert!(reason.contains("retries exhausted") && reason.contains("provider down"), "{reason}");
    assert_eq!(header(&dead, ATTEMPT_HEADER), Some(&AMQPValue::LongLongInt(3)));
    assert_eq!(rig.depth(&rig.work()).await?, 0);
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn retry_after_picks_a_step_at_least_that_long() -> Result<()> {
    let rig = Rig::new(&[200, 1500, 3000]).await?;
    let spec = rig.topology.spec(QUEUE).context("spec")?.clone();
    assert_eq!(spec.retry_delay(1, Some(Duration::from_secs(1))), Some(Duration::from_millis(1500)));
    assert_eq!(spec.retry_delay(1, Some(Duration::from_secs(60))), Some(Duration::from_millis(3000)));
    assert_eq!(spec.retry_delay(2, Some(Duration::from_millis(10))), Some(Duration::from_millis(1500)));
    assert_eq!(spec.retry_delay(4, None), None);

    let script = Script::answering([Outcome::Retry { after: Some(Duration::from_secs(1)), reason: "429".into() }]);
    let consumer = rig.spawn(script.clone(), 2);
    rig.publish(3).await?;
    let seen = script.wait_for_calls(2, Duration::from_secs(15)).await?;
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_millis(1400), "Retry-After of 1 s honoured, waited {waited:?}");
    assert!(waited < Duration::from_millis(2900), "the 1.5 s step, not a longer one: {waited:?}");
    assert_eq!(seen[1].ctx.attempt, 2);
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn undecodable_payload_goes_to_the_dead_letter_queue() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    let script = Script::default();
    let consumer = rig.spawn(script.clone(), 2);

    rig.publisher.publish_bytes(&rig.work(), b"{\"id\": \"not a number\"}", Headers::new(), None).await?;
    let dead = rig.take(&rig.dead(), Duration::from_secs(10)).await?;
    assert_eq!(dead.delivery.data, b"{\"id\": \"not a number\"}");
    let reason = header_text(&dead, REASON_HEADER);
    assert!(reason.contains("undecodable"), "{reason}");
    assert!(!reason.contains("not a number"), "payload values stay out of the reason: {reason}");
    assert!(script.seen().is_empty(), "the handler never sees it");
    assert_eq!(rig.depth(&rig.work()).await?, 0, "acked, not looping");
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn job_dropped_mid_handling_is_redelivered_and_completed_once() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    rig.publish(5).await?;

    // A worker takes the job and dies (its channel goes away) without acking.
    let doomed = rig.broker.channel().await?;
    let mut deliveries = doomed
        .basic_consume(
            rig.work().as_str().into(),
            "doomed".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(10), deliveries.next()).await?.context("stream ended")??;
    assert_eq!(serde_json::from_slice::<Job>(&first.data)?, Job { id: 5 });
    drop(deliveries);
    drop(doomed);

    let script = Script::default();
    let consumer = rig.spawn(script.clone(), 2);
    let seen = script.wait_for_calls(1, Duration::from_secs(10)).await?;
    assert!(seen[0].ctx.redelivered, "the broker flags the second delivery");
    assert_eq!(seen[0].ctx.attempt, 1, "a redelivery is not a retry");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(script.seen().len(), 1, "completed exactly once");
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn publisher_and_consumer_recover_after_the_connection_is_cut() -> Result<()> {
    let upstream: SocketAddr = AMQP_ADDR.parse()?;
    let proxy = TcpProxy::start(upstream).await;
    let rig = Rig::via(&proxy.addr().to_string(), &[200]).await?;
    let script = Script::default();
    let consumer = rig.spawn(script.clone(), 2);

    rig.publish(1).await?;
    script.wait_for_calls(1, Duration::from_secs(10)).await?;

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!rig.broker.is_connected());
    assert!(rig.publish(2).await.is_err(), "a publish during the outage fails instead of hanging");

    proxy.restore();
    let restored = Instant::now();
    loop {
        match rig.publish(3).await {
            Ok(()) => break,
            Err(error) if restored.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%error, "not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error).context("publisher did not recover within 10 s"),
        }
    }
    eventually(Duration::from_secs(15), || script.seen().iter().any(|s| s.job.id == 3))
        .await
        .context("consumer did not resume after the restore")?;
    assert!(rig.broker.is_connected());
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn jobs_finishing_out_of_order_are_each_acked_once() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    let script = Script { jitter: Duration::from_millis(30), ..Script::default() };
    let consumer = rig.spawn(script.clone(), 32);

    for id in 0..300 {
        rig.publish(id).await?;
    }
    script.wait_for_calls(300, Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(10), || script.seen().iter().all(|s| s.finished)).await?;
    // Stopping returns every unacked delivery to the queue.
    rig.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer).await???;
    assert_eq!(rig.depth(&rig.work()).await?, 0, "every job was acked");
    let mut ids: Vec<u32> = script.seen().iter().map(|s| s.job.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..300).collect::<Vec<_>>(), "each handled once, none redelivered");
    rig.finish(None).await
}

/// Acks go out together for runs of finished jobs; a job still running must neither hold
/// back the acks of the jobs after it nor be covered by them.
#[tokio::test]
async fn a_slow_job_neither_holds_back_the_acks_after_it_nor_is_acked_with_them() -> Result<()> {
    let upstream: SocketAddr = AMQP_ADDR.parse()?;
    let proxy = TcpProxy::start(upstream).await;
    let rig = Rig::via(&proxy.addr().to_string(), &[200]).await?;
    let script = Script { slow: Some((0, Duration::from_secs(3))), ..Script::default() };
    let consumer = rig.spawn(script.clone(), 8);

    for id in 0..8 {
        rig.publish(id).await?;
    }
    eventually(Duration::from_secs(10), || script.seen().iter().filter(|s| s.finished).count() == 7).await?;
    assert!(!script.seen().iter().any(|s| s.job.id == 0 && s.finished), "job 0 is still running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The connection dies: the broker requeues whatever was not acked.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    eventually(Duration::from_secs(20), || script.seen().iter().filter(|s| s.job.id == 0 && s.finished).count() == 2)
        .await
        .context("job 0 was not redelivered: an ack covered it while it ran")?;
    let seen = script.seen();
    let again = seen.iter().filter(|s| s.job.id == 0).nth(1).context("second handling")?;
    assert!(again.ctx.redelivered);
    for id in 1..8 {
        let count = seen.iter().filter(|s| s.job.id == id).count();
        assert_eq!(count, 1, "job {id} was acked while job 0 ran, so it is not redelivered");
    }
    rig.finish(Some(consumer)).await
}

#[tokio::test]
async fn cancel_waits_for_the_in_flight_job() -> Result<()> {
    let rig = Rig::new(&[200]).await?;
    let script = Script { work: Duration::from_millis(1500), ..Script::default() };
    let consumer = rig.spawn(script.clone(), 2);

    rig.publish(4).await?;
    script.wait_for_calls(1, Duration::from_secs(10)).await?;
    rig.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer).await???;
    let seen = script.seen();
    assert!(seen[0].finished, "run_consumer returned before its job finished");
    assert_eq!(rig.depth(&rig.work()).await?, 0, "the finished job was acked, not requeued");
    rig.finish(None).await
}
