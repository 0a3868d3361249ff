//! Commands a follower forwards to the leader, sent together.
//!
//! One HTTP request per forwarded command cost the follower path most of
//! its throughput under load: every command paid its own request, answer
//! and connection over the tailnet, and at most a few were in flight. Here
//! the commands waiting to go to one leader share a request
//! (`/v1/execute-batch`) whenever one is already on its way: a command
//! that finds nothing out goes at once, alone (one caller waits no longer
//! than before), and the ones that arrive while it is out
//! ([`BATCHES_IN_FLIGHT`]) go together in the next.
//!
//! Each command keeps everything it had alone: its own (client, seq), its
//! own attempt budget inside its caller's deadline (the leader gets it per
//! command), its own answer or error, and an unknown outcome when its batch
//! gets no answer, the leader loses its leadership while the batch is out,
//! or this node stops. A batch never exceeds the request-size limit nor
//! [`MAX_BATCH`] commands. Nobody waits on a batch that holds no caller's
//! command: a caller that leaves before its command was sent takes it out.
//!
//! Commands go alone (`/v1/execute`, the caller's own request) when they
//! are retries of an attempt whose outcome is unknown, would not fit a
//! batch, or the leader does not take batches (an older version answers
//! 404).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft_core::{NodeId, NodeInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::api::{BatchedAnswer, ExecuteBatchResponse, ExecuteRequest, ExecuteResponse, MAX_BATCH};
use crate::client::{Addressee, CommandClient};
use crate::error::RpcError;
use crate::route::Origin;
use crate::stats::CommandStats;

/// Batches (or commands alone) out to one leader at once. One: the next
/// batch gathers while it is out. Measured against 2 and 4 (in memory and
/// over TCP, 16 to 256 callers): fewer, larger batches cost less CPU per
/// command, and the leader batches their proposals into log entries
/// anyway (docs/benchmarks.md).
pub(crate) const BATCHES_IN_FLIGHT: usize = 1;

/// The endpoint batches go to.
pub(crate) const BATCH_PATH: &str = "/v1/execute-batch";

/// Bytes a batch adds around its commands: `{"commands":[` and `]}`.
const BATCH_OVERHEAD: usize = 16;
/// Bytes one command adds in a batch: `{"request":`, `,"within_ms":`, up
/// to 20 digits, `}` and a comma.
const ITEM_OVERHEAD: usize = 64;

/// What becomes of a command handed to [`Batches::submit`].
#[derive(Debug)]
pub(crate) enum Batched {
    /// The leader's answer, or why there is none.
    Answer(Result<ExecuteResponse, RpcError>),
    /// Send it alone (`/v1/execute`), holding the permit if one was taken
    /// for it (the commands that arrive meanwhile gather for the next
    /// batch).
    Alone(Option<OwnedSemaphorePermit>),
}

/// Ends a batch early with an unknown outcome for all its commands: the
/// leader lost its leadership or this node stopped. Yields why.
pub(crate) type Abandon = std::pin::Pin<Box<dyn Future<Output = String> + Send>>;

/// One command waiting for a batch.
struct Entry {
    ticket: u64,
    /// The encoded [`ExecuteRequest`].
    request: Vec<u8>,
    /// Its attempt's end.
    end: Instant,
    answer: oneshot::Sender<Batched>,
}

#[derive(Default)]
struct Pending {
    next_ticket: u64,
    entries: VecDeque<Entry>,
}

/// The commands waiting to go to one leader.
struct Queue {
    pending: Mutex<Pending>,
    /// A permit per batch out.
    senders: Arc<Semaphore>,
}

impl Queue {
    fn push(&self, request: Vec<u8>, end: Instant, answer: oneshot::Sender<Batched>) -> u64 {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = pending.next_ticket;
        pending.next_ticket += 1;
        pending.entries.push_back(Entry { ticket, request, end, answer });
        ticket
    }

    /// The next batch, if `ticket` is still waiting (otherwise its command
    /// is out, and whoever holds the others' tickets sends them): oldest
    /// first, as many as fit in `max_request` bytes and [`MAX_BATCH`];
    /// commands whose callers left are dropped. With it, whether `ticket`
    /// is still waiting.
    fn take(&self, ticket: u64, max_request: usize) -> (Vec<Entry>, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.entries.iter().any(|e| e.ticket == ticket) {
            return (Vec::new(), false);
        }
        let mut batch = Vec::new();
        let mut size = BATCH_OVERHEAD;
        while let Some(entry) = pending.entries.front() {
            let item = entry.request.len() + ITEM_OVERHEAD;
            if !batch.is_empty() && (size + item > max_request || batch.len() == MAX_BATCH) {
                break;
            }
            let entry = pending.entries.pop_front().expect("front exists");
            if entry.answer.is_closed() {
                continue;
            }
            size += item;
            batch.push(entry);
        }
        let waiting = pending.entries.iter().any(|e| e.ticket == ticket);
        (batch, waiting)
    }

    /// Takes `ticket` out if it is still waiting.
    fn leave(&self, ticket: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entries.retain(|e| e.ticket != ticket);
    }
}

/// Takes a caller's command out of its queue when the caller leaves.
struct Ticket<'a> {
    queue: &'a Queue,
    ticket: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.ticket);
    }
}

/// The queues of commands forwarded to the leader, by the leader's raft id.
#[derive(Default)]
pub(crate) struct Batches {
    queues: Mutex<HashMap<NodeId, Arc<Queue>>>,
}

/// Where a batch goes, and what it may use.
pub(crate) struct Route<'a> {
    pub(crate) client: &'a CommandClient,
    pub(crate) to: Addressee,
    pub(crate) leader: &'a NodeInfo,
    pub(crate) max_request: usize,
    /// Time an answer has to travel back, past the attempt's budget.
    pub(crate) grace: Duration,
    pub(crate) stats: &'a Arc<CommandStats>,
}

impl Batches {
    fn queue(&self, leader: NodeId) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        // Queues of former leaders are kept only while something waits in them.
        queues.retain(|id, q| *id == leader || Arc::strong_count(q) > 1);
        queues
            .entry(leader)
            .or_insert_with(|| {
                Arc::new(Queue {
                    pending: Mutex::default(),
                    senders: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT)),
                })
            })
            .clone()
    }

    /// Sends `request` to the leader in a batch; its attempt ends at `end`
    /// (the leader's budget for it), and its caller waits for the answer
    /// until `wait_until`. `abandon` makes what ends a batch this caller
    /// sends with an unknown outcome.
    pub(crate) async fn submit(
        &self,
        route: Route<'_>,
        request: &ExecuteRequest,
        end: Instant,
        wait_until: Instant,
        abandon: impl Fn() -> Abandon,
    ) -> Batched {
        if request.retry {
            return Batched::Alone(None);
        }
        let Ok(encoded) = serde_json::to_vec(request) else { return Batched::Alone(None) };
        if encoded.len() + ITEM_OVERHEAD + BATCH_OVERHEAD > route.max_request {
            return Batched::Alone(None);
        }
        let queue = self.queue(route.to.node);
        let (tx, mut rx) = oneshot::channel();
        let ticket = Ticket { queue: &queue, ticket: queue.push(encoded, end, tx) };
        let mut waiting = true;
        let unknown = |why: &str| {
            Batched::Answer(Err(RpcError::Timeout {
                what: format!("execute at leader {} ({why}; outcome unknown)", route.to.node),
                after: end.saturating_duration_since(Instant::now()),
            }))
        };
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => {
                    return answer.unwrap_or_else(|_| unknown("its batch was dropped"));
                }
                () = tokio::time::sleep_until(wait_until) => {
                    drop(ticket);
                    return unknown("no answer in time");
                }
                permit = queue.senders.clone().acquire_owned(), if waiting => {
                    let Ok(permit) = permit else { return Batched::Alone(None) };
                    let (batch, still) = queue.take(ticket.ticket, route.max_request);
                    waiting = still;
                    match batch.as_slice() {
                        [] => {}
                        // Nobody else waits: as a request alone, which
                        // costs no task of its own.
                        [only] if only.ticket == ticket.ticket => {
                            return Batched::Alone(Some(permit));
                        }
                        _ => {
                            send(&route, batch, permit, abandon());
                        }
                    }
                }
            }
        }
    }
}

/// Sends `batch` in a task of its own (its callers wait on their answers,
/// each within its own deadline), holding `permit` until it is answered.
fn send(route: &Route<'_>, batch: Vec<Entry>, permit: OwnedSemaphorePermit, abandon: Abandon) {
    let now = Instant::now();
    let end = batch.iter().map(|e| e.end).max().unwrap_or(now);
    let mut body = Vec::with_capacity(
        BATCH_OVERHEAD + batch.iter().map(|e| e.request.len() + ITEM_OVERHEAD).sum::<usize>(),
    );
    body.extend_from_slice(b"{\"commands\":[");
    for (i, entry) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let within = entry.end.saturating_duration_since(now).as_millis();
        body.extend_from_slice(b"{\"request\":");
        body.extend_from_slice(&entry.request);
        body.extend_from_slice(format!(",\"within_ms\":{within}}}").as_bytes());
    }
    body.extend_from_slice(b"]}");
    let client = route.client.clone();
    let (to, leader, stats) = (route.to, route.leader.clone(), route.stats.clone());
    let budget = end.saturating_duration_since(now);
    let wait_until = end + route.grace;
    tokio::spawn(async move {
        let _permit = permit;
        stats.batches.inc();
        let exchange = client.post_attempt_encoded::<ExecuteBatchResponse>(
            Some(to),
            &leader,
            BATCH_PATH,
            Bytes::from(body),
            wait_until,
            budget,
            Origin::Forwarded,
        );
        let result = tokio::select! {
            result = exchange => result,
            why = abandon => Err(RpcError::Timeout {
                what: format!("execute at leader {} ({why}; outcome unknown)", to.node),
                after: now.elapsed(),
            }),
        };
        deliver(batch, result, &stats);
    });
}

/// Hands each command of `batch` its answer.
fn deliver(
    batch: Vec<Entry>,
    result: Result<ExecuteBatchResponse, RpcError>,
    stats: &CommandStats,
) {
    match result {
        Ok(response) if response.answers.len() == batch.len() => {
            stats.batched.add(batch.len() as u64);
            for (entry, answer) in batch.into_iter().zip(response.answers) {
                let answer = match answer {
                    BatchedAnswer::Done(done) => Ok(done),
                    BatchedAnswer::Failed { status, error } => {
                        Err(RpcError::from_remote(status, error))
                    }
                };
                let _ = entry.answer.send(Batched::Answer(answer));
            }
        }
        Ok(response) => {
            let err = RpcError::Unreachable {
                target: "the leader".to_owned(),
                reason: format!(
                    "answered {} commands' batch with {} answers",
                    batch.len(),
                    response.answers.len()
                ),
                source: None,
            };
            for entry in batch {
                let _ = entry.answer.send(Batched::Answer(Err(copy(&err))));
            }
        }
        // Not taken there (an older leader, a smaller size limit): nothing
        // of it ran, so each goes alone.
        Err(RpcError::Remote { status: 404 | 405 | 413, .. }) => {
            stats.batches_refused.inc();
            for entry in batch {
                let _ = entry.answer.send(Batched::Alone(None));
            }
        }
        Err(err) => {
            for entry in batch {
                let _ = entry.answer.send(Batched::Answer(Err(copy(&err))));
            }
        }
    }
}

/// `err`, once per command of a batch. An error with no meaning for one
/// command (a batch's answer too large) becomes an unreachable leader: the
/// outcome is unknown, and the retry goes alone.
fn copy(err: &RpcError) -> RpcError {
    match err {
        RpcError::Timeout { what, after } => {
            RpcError::Timeout { what: what.clone(), after: *after }
        }
        RpcError::Remote { status, body } => {
            RpcError::Remote { status: *status, body: body.clone() }
        }
        RpcError::Unreachable { target, reason, .. } => {
            RpcError::Unreachable { target: target.clone(), reason: reason.clone(), source: None }
        }
        other => RpcError::Unreachable {
            target: "the leader".to_owned(),
            reason: format!("batch failed: {other}"),
            source: None,
        },
    }
}
