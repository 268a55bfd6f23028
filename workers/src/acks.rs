//! Acks of one consuming channel, sent together.
//!
//! Acking every delivery on its own costs the broker a frame and, on a quorum queue, a
//! Raft command per message; under load that is a good part of its work per job. So a
//! finished job's ack is handed to [`Acks`], whose flusher (one task per channel) sends,
//! every [`GATHER`] or so, one `basic.ack` with `multiple` set for the run of finished
//! jobs at the start of the channel's delivery tags. A job finished behind one still
//! running (a slow provider) is not held back by it for long: after [`LINGER`] it is acked
//! on its own. Jobs wait for their ack to be sent, as they did when each sent its own.
//!
//! A `multiple` ack settles every unsettled tag up to the one named, so it must never
//! cover a job that has not finished or one being requeued:
//! * the run starts at the lowest tag still registered, and every delivery is registered
//!   ([`Acks::delivered`]) before its job starts; one consumer per channel receives its
//!   deliveries in tag order, so the tags not yet registered are all higher;
//! * a job being requeued stays registered, and so blocks the run, until its `basic.nack`
//!   has been handed to lapin ([`Acks::settled`]); lapin sends a channel's acks and nacks
//!   in the order they were made, so the broker sees that nack first;
//! * single acks and the `multiple` ones are all made by the flusher, one after the
//!   other, so a single ack never reaches the broker after a `multiple` one covering it
//!   (which would be an unknown tag, and close the channel).
//!
//! After lapin recovers the channel, delivery tags start again at 1: the registered jobs
//! belong to the old channel and their acks cannot be sent (the broker redelivers them),
//! so a new generation starts and the old tickets ack on their own acker, which lapin has
//! poisoned. The consumer says so ([`Acks::recovered`]) when its stream reports the
//! failure; in any case, the first delivery registered after the recovery finds the
//! registered jobs' ackers poisoned (lapin poisons them before it recovers) and starts the
//! new generation itself, so an old job's ack can never land on a new job's tag.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lapin::options::BasicAckOptions;
use lapin::Acker;
use tokio::sync::{oneshot, Notify};

/// How long the flusher gathers finished jobs after the first one before sending.
const GATHER: Duration = Duration::from_millis(1);
/// How long a finished job waits for the jobs before it to finish before it is acked on
/// its own.
const LINGER: Duration = Duration::from_millis(20);

/// What became of an ack: sent (`true`), not sent because the channel is gone (`false`),
/// or failed.
pub(crate) type AckResult = Result<bool, Arc<lapin::Error>>;

/// A registered delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    tag: u64,
}

enum Slot {
    Running { acker: Acker },
    Finished { acker: Acker, since: Instant, reply: oneshot::Sender<AckResult> },
}

impl Slot {
    fn acker(&self) -> &Acker {
        match self {
            Slot::Running { acker } | Slot::Finished { acker, .. } => acker,
        }
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    /// The registered, unsettled deliveries of the current generation, by tag.
    slots: BTreeMap<u64, Slot>,
}

impl State {
    /// Forgets the deliveries of the channel before a recovery; their messages come again.
    fn new_generation(&mut self) {
        self.generation += 1;
        for slot in std::mem::take(&mut self.slots).into_values() {
            if let Slot::Finished { reply, .. } = slot {
                let _ = reply.send(Ok(false));
            }
        }
    }
}

/// The acks of one channel (see the module docs).
#[derive(Default)]
pub(crate) struct Acks {
    state: Mutex<State>,
    wake: Notify,
}

/// What one pass of the flusher sends.
struct Flush {
    /// Finished jobs at the start of the tags: one ack with `multiple` (plain when alone).
    run: Vec<(Acker, oneshot::Sender<AckResult>)>,
    /// Finished jobs behind a running one that waited [`LINGER`]: one ack each.
    singles: Vec<(Acker, oneshot::Sender<AckResult>)>,
    /// When the next job left waiting reaches [`LINGER`].
    next: Option<Instant>,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a delivery before its job starts.
    pub(crate) fn delivered(&self, tag: u64, acker: &Acker) -> Ticket {
        let mut state = self.lock();
        // Every registered delivery came on the same incarnation of the channel, so one
        // poisoned acker means they all belong to the channel before a recovery.
        if state.slots.first_key_value().is_some_and(|(_, slot)| slot.acker().poisoned()) {
            state.new_generation();
        }
        state.slots.insert(tag, Slot::Running { acker: acker.clone() });
        Ticket { generation: state.generation, tag }
    }

    /// Acks a finished job: waits until the flusher has sent the ack covering it.
    pub(crate) async fn ack(&self, ticket: Ticket, acker: Acker) -> AckResult {
        let reply = {
            let mut state = self.lock();
            if ticket.generation == state.generation && !acker.poisoned() {
                let (reply, answer) = oneshot::channel();
                state.slots.insert(ticket.tag, Slot::Finished { acker, since: Instant::now(), reply });
                Ok(answer)
            } else {
                Err(acker)
            }
        };
        let reply = match reply {
            Ok(reply) => reply,
            // Delivered on the channel before its recovery: lapin has poisoned its acker.
            Err(acker) => return acker.ack(BasicAckOptions::default()).await.map_err(Arc::new),
        };
        self.wake.notify_one();
        // The flusher stopped with the channel: the broker redelivers.
        reply.await.unwrap_or(Ok(false))
    }

    /// Forgets a delivery that was settled otherwise (requeued by a nack): call it once
    /// the nack has been handed to lapin.
    pub(crate) fn settled(&self, ticket: Ticket) {
        let mut state = self.lock();
        if ticket.generation == state.generation {
            state.slots.remove(&ticket.tag);
        }
        drop(state);
        // The run may continue past it now.
        self.wake.notify_one();
    }

    /// The channel was recovered: delivery tags start again, and the registered jobs'
    /// acks cannot be sent any more (their messages come again).
    pub(crate) fn recovered(&self) {
        self.lock().new_generation();
    }

    fn take(&self, now: Instant) -> Flush {
        let mut state = self.lock();
        let mut run = Vec::new();
        while let Some(entry) = state.slots.first_entry() {
            if !matches!(entry.get(), Slot::Finished { .. }) {
                break;
            }
            if let Slot::Finished { acker, reply, .. } = entry.remove() {
                run.push((acker, reply));
            }
        }
        let overdue: Vec<u64> = state
            .slots
            .iter()
            .filter_map(|(tag, slot)| match slot {
                Slot::Finished { since, .. } if now.duration_since(*since) >= LINGER => Some(*tag),
                _ => None,
            })
            .collect();
        let mut singles = Vec::with_capacity(overdue.len());
        for tag in overdue {
            if let Some(Slot::Finished { acker, reply, .. }) = state.slots.remove(&tag) {
                singles.push((acker, reply));
            }
        }
        let next = state
            .slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Finished { since, .. } => Some(*since + LINGER),
                Slot::Running { .. } => None,
            })
            .min();
        Flush { run, singles, next }
    }

    /// The flusher: runs until aborted, after the channel's jobs have all settled.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let flush = self.take(Instant::now());
            if let Some((last, _)) = flush.run.last() {
                let multiple = flush.run.len() > 1;
                let result = last.ack(BasicAckOptions { multiple }).await.map_err(Arc::new);
                for (_, reply) in flush.run {
                    let _ = reply.send(result.clone());
                }
            }
            for (acker, reply) in flush.singles {
                let _ = reply.send(acker.ack(BasicAckOptions::default()).await.map_err(Arc::new));
            }
            match flush.next {
                None => self.wake.notified().await,
                Some(at) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
            tokio::time::sleep(GATHER).await;
        }
    }
}
