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
//! or this node stops. Only a command whose bytes may have been written
//! carries an unknown outcome: one still waiting in the queue when its
//! leader loses its leadership (the node's leader watch), when its attempt's
//! time runs out, or when its caller stops waiting was never sent, and goes
//! back to its caller as [`Batched::NotSent`] (not applied; routed again).
//!
//! A batch never exceeds the request-size limit nor [`MAX_BATCH`]
//! commands, and its answer is read up to `max_response` bytes per
//! command (what one command alone may answer), so the leader never
//! applies a batch whose answers this node then refuses to read. To keep
//! that limit within [`MAX_BATCH_ANSWER`], a batch holds at most as many
//! commands as that allows ([`commands_per_batch`]; 63 at the default
//! 4 MiB); when that is fewer than [`MIN_BATCH`], no command is batched
//! (all go alone). A command with less than [`MIN_BUDGET`] left is not sent. The
//! leader's answers are matched to the commands by position: an answer
//! with another number of entries leaves every command unknown.
//!
//! Commands go alone (`/v1/execute`, the caller's own request) when they
//! are retries of an attempt whose outcome is unknown, would not fit a
//! batch, or the leader refused their batch whole before running any of it
//! (an older version answers 404, a smaller size limit 413, a refusal 400,
//! 403 or 408). If an earlier address of the leader may have received the
//! batch before its exchange broke, no refusal from a later one says that
//! nothing ran: every command of it then has an unknown outcome, and its
//! retry goes alone with the same (client, seq), which the session answers
//! at most once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft_core::{NodeId, NodeInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::api::{BatchedAnswer, ExecuteBatchResponse, ExecuteRequest, ExecuteResponse, MAX_BATCH};
use crate::client::{Addressee, CommandClient, Sent};
use crate::code::ErrorCode;
use crate::error::RpcError;
use crate::route::{Origin, after_resend};
use crate::stats::CommandStats;

/// Batches (or commands alone) out to one leader at once. One: the next
/// batch gathers while it is out. Measured against 2 and 4 (in memory and
/// over TCP, 16 to 256 callers): fewer, larger batches cost less CPU per
/// command, and the leader batches their proposals into log entries
/// anyway (docs/benchmarks.md).
pub(crate) const BATCHES_IN_FLIGHT: usize = 1;

/// The endpoint batches go to.
pub(crate) const BATCH_PATH: &str = "/v1/execute-batch";

/// Most bytes of one batch's answer this node reads: 256 MiB. Each
/// command is allowed what it would be allowed alone (`max_response`), so
/// this bounds how many commands a batch holds ([`commands_per_batch`]; 63
/// at the default 4 MiB). With one batch out per leader
/// ([`BATCHES_IN_FLIGHT`]), this is the most a follower buffers for
/// batches, past what its lone requests may (`max_requests_per_peer ×
/// max_response`). Holding a batch to those slots instead (64 MiB, 15
/// commands) halved a follower's commands/s at 64 callers and more
/// (docs/benchmarks.md); reading a batch's answer one entry at a time would
/// keep both.
pub(crate) const MAX_BATCH_ANSWER: usize = 256 << 20;

/// Fewest commands worth a batch: when a batch's answer budget holds fewer
/// (a `max_response` of more than a third of it), commands go alone.
pub(crate) const MIN_BATCH: usize = 3;

/// Least time a command's attempt must have left to be sent in a batch:
/// the leader is given it in whole milliseconds, and less than one would
/// be a budget of 0. A command with less is handed back unsent. Nor is
/// an execute proposed on the leader itself with less
/// (`route::worth_attempting`).
pub(crate) const MIN_BUDGET: Duration = Duration::from_millis(1);

/// How long before its first caller stops waiting a batch not yet written
/// (no free request slot, no connection) gives up and hands its commands
/// back unsent, so that each caller hears "not sent" (not applied) rather
/// than "no answer in time" (unknown). A command taken into a batch has at
/// least this (and [`MIN_BUDGET`]) left to wait. 50 ms, not less: the
/// batch task must run between giving up and its callers' own timers, and
/// on a loaded machine (2 cores, a gate running) 5 ms was missed once.
const SEND_MARGIN: Duration = Duration::from_millis(50);

/// Bytes a batch adds around its commands: `{"commands":[` and `]}`.
const BATCH_OVERHEAD: usize = 16;
/// Bytes one command adds in a batch: `{"request":`, `,"within_ms":`, up
/// to 20 digits, `}` and a comma.
const ITEM_OVERHEAD: usize = 64;
/// Bytes a batch's answer adds around its answers: `{"answers":[` and `]}`,
/// with room to spare.
const ANSWER_FRAME: usize = 64;
/// Bytes one answer adds in a batch's answer, past what it would take
/// alone: `{"done":` or `{"failed":{"status":...,"error":` and the closing
/// braces, a comma, with room to spare.
const ANSWER_OVERHEAD: usize = 1024;

/// Most commands in one batch when one command alone may answer
/// `max_response` bytes: as many as [`MAX_BATCH_ANSWER`] holds at that
/// much each, at most [`MAX_BATCH`]. Below [`MIN_BATCH`], commands go
/// alone.
pub(crate) fn commands_per_batch(max_response: usize) -> usize {
    let budget = MAX_BATCH_ANSWER - ANSWER_FRAME;
    (budget / max_response.saturating_add(ANSWER_OVERHEAD)).min(MAX_BATCH)
}

/// Bytes of answer read for a batch of `commands`: each may answer what it
/// would alone.
fn answer_limit(commands: usize, max_response: usize) -> usize {
    max_response
        .saturating_add(ANSWER_OVERHEAD)
        .saturating_mul(commands)
        .saturating_add(ANSWER_FRAME)
}

/// What becomes of a command handed to [`Batches::submit`].
#[derive(Debug)]
pub(crate) enum Batched {
    /// The leader's answer, or why there is none.
    Answer(Result<ExecuteResponse, RpcError>),
    /// Send it alone (`/v1/execute`), holding the permit if one was taken
    /// for it (the commands that arrive meanwhile gather for the next
    /// batch). Nothing of it ran yet.
    Alone(Option<OwnedSemaphorePermit>),
    /// It was never written to the wire, so it was not applied: route it
    /// again. Why.
    NotSent(String),
}

/// Resolves once the leader a command was routed to in a term has lost
/// its leadership (or the node stops, or the time given passes). Yields
/// why.
pub(crate) type Abandon = std::pin::Pin<Box<dyn Future<Output = String> + Send>>;

/// One command waiting for a batch.
struct Entry {
    ticket: u64,
    /// The encoded [`ExecuteRequest`].
    request: Vec<u8>,
    /// The term in which its caller chose this leader.
    term: u64,
    /// Its attempt's end.
    end: Instant,
    /// When its caller stops waiting for an answer.
    wait_until: Instant,
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

/// How [`Queue::take`] fills a batch.
struct Fill<'a> {
    max_request: usize,
    max_commands: usize,
    now: Instant,
    /// Whether the leader lost its leadership since a term.
    moved: &'a (dyn Fn(u64) -> bool + Sync),
}

impl Queue {
    fn push(&self, entry: impl FnOnce(u64) -> Entry) -> u64 {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = pending.next_ticket;
        pending.next_ticket += 1;
        pending.entries.push_back(entry(ticket));
        ticket
    }

    /// The next batch, if `ticket` is still waiting (otherwise its command
    /// is out, and whoever holds the others' tickets sends them): oldest
    /// first, as many as fit in the request-size limit and the batch's
    /// command limit. Commands whose callers left are dropped; those whose
    /// attempt's time ran out, or whose leader lost its leadership since
    /// their caller chose it, are handed back unsent. With it, whether
    /// `ticket` is still waiting.
    fn take(&self, ticket: u64, fill: &Fill<'_>) -> (Vec<Entry>, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.entries.iter().any(|e| e.ticket == ticket) {
            return (Vec::new(), false);
        }
        let mut batch = Vec::new();
        let mut size = BATCH_OVERHEAD;
        while let Some(entry) = pending.entries.front() {
            let item = entry.request.len() + ITEM_OVERHEAD;
            let usable = !entry.answer.is_closed() && !out_of_time(entry, fill.now);
            if usable
                && !batch.is_empty()
                && (size + item > fill.max_request || batch.len() >= fill.max_commands)
            {
                break;
            }
            let entry = pending.entries.pop_front().expect("front exists");
            if entry.answer.is_closed() {
                continue;
            }
            if out_of_time(&entry, fill.now) {
                let why = "its attempt's time ran out before a batch took it";
                let _ = entry.answer.send(Batched::NotSent(why.to_owned()));
                continue;
            }
            if (fill.moved)(entry.term) {
                let why = "the leader it was meant for lost its leadership before it was sent";
                let _ = entry.answer.send(Batched::NotSent(why.to_owned()));
                continue;
            }
            size += item;
            batch.push(entry);
        }
        let waiting = pending.entries.iter().any(|e| e.ticket == ticket);
        (batch, waiting)
    }

    /// Takes `ticket` out if it is still waiting; whether it was.
    fn leave(&self, ticket: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let before = pending.entries.len();
        pending.entries.retain(|e| e.ticket != ticket);
        pending.entries.len() < before
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

/// Whether `entry` has too little time left at `now` to go in a batch:
/// less than [`MIN_BUDGET`] for its attempt, or less than that and
/// [`SEND_MARGIN`] before its caller stops waiting.
fn out_of_time(entry: &Entry, now: Instant) -> bool {
    entry.end < now + MIN_BUDGET || entry.wait_until < now + MIN_BUDGET + SEND_MARGIN
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
    /// The term in which the caller chose this leader.
    pub(crate) term: u64,
    pub(crate) max_request: usize,
    /// What one command's answer may take alone.
    pub(crate) max_response: usize,
    /// Time an answer has to travel back, past the attempt's budget.
    pub(crate) grace: Duration,
    pub(crate) stats: &'a Arc<CommandStats>,
    /// Whether the leader lost its leadership since a term.
    pub(crate) moved: &'a (dyn Fn(u64) -> bool + Sync),
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
    /// until `wait_until`. `abandon(term, until)` resolves once the leader
    /// lost its leadership since `term` (or at `until`): it ends a batch
    /// this caller sends with an unknown outcome. A command still waiting
    /// when its leader lost its leadership is handed back unsent by the
    /// next [`Queue::take`], which follows at once: what held the permit
    /// ended on the same change.
    pub(crate) async fn submit(
        &self,
        route: Route<'_>,
        request: &ExecuteRequest,
        end: Instant,
        wait_until: Instant,
        abandon: impl Fn(u64, Instant) -> Abandon,
    ) -> Batched {
        let per_batch = commands_per_batch(route.max_response);
        if request.retry || per_batch < MIN_BATCH {
            return Batched::Alone(None);
        }
        let Ok(encoded) = serde_json::to_vec(request) else { return Batched::Alone(None) };
        if encoded.len() + ITEM_OVERHEAD + BATCH_OVERHEAD > route.max_request {
            return Batched::Alone(None);
        }
        let queue = self.queue(route.to.node);
        let (tx, mut rx) = oneshot::channel();
        let term = route.term;
        let ticket = Ticket {
            queue: &queue,
            ticket: queue.push(|ticket| Entry {
                ticket,
                request: encoded,
                term,
                end,
                wait_until,
                answer: tx,
            }),
        };
        let mut waiting = true;
        let unknown = |why: &str| {
            Batched::Answer(Err(RpcError::Timeout {
                what: format!("execute at leader {} ({why}; outcome unknown)", route.to.node),
                after: end.saturating_duration_since(Instant::now()),
            }))
        };
        // A waiting caller does not watch the leader itself (that would
        // wake every waiting caller at every commit): whatever holds the
        // permit it waits for ends when the leader loses its leadership
        // (a batch's watch, or the lone request's), and the next take()
        // hands back the commands whose leader moved.
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => {
                    return answer.unwrap_or_else(|_| unknown("its batch was dropped"));
                }
                () = tokio::time::sleep_until(wait_until) => {
                    if queue.leave(ticket.ticket) {
                        return Batched::NotSent("no batch took it in time".to_owned());
                    }
                    // Taken: handed back, answered, or out in a batch.
                    return rx.try_recv().unwrap_or_else(|_| unknown("no answer in time"));
                }
                permit = queue.senders.clone().acquire_owned(), if waiting => {
                    let Ok(permit) = permit else { return Batched::Alone(None) };
                    let fill = Fill {
                        max_request: route.max_request,
                        max_commands: per_batch,
                        now: Instant::now(),
                        moved: route.moved,
                    };
                    let (batch, still) = queue.take(ticket.ticket, &fill);
                    waiting = still;
                    match batch.as_slice() {
                        [] => {}
                        // Nobody else waits: as a request alone, which
                        // costs no task of its own.
                        [only] if only.ticket == ticket.ticket => {
                            return Batched::Alone(Some(permit));
                        }
                        _ => {
                            // Watched from the oldest term among them: any
                            // loss of leadership since one of them chose
                            // this leader ends it.
                            let since = batch.iter().map(|e| e.term).min().unwrap_or(term);
                            let until = batch.iter().map(|e| e.end).max().unwrap_or(end)
                                + route.grace * 2;
                            send(&route, batch, permit, abandon(since, until), fill.now);
                        }
                    }
                }
            }
        }
    }
}

/// Sends `batch`, taken at `now`, in a task of its own (its callers wait on
/// their answers, each within its own deadline), holding `permit` until it
/// is answered. Each command's budget is counted from `now`, when the take
/// saw at least [`MIN_BUDGET`] left for it.
fn send(
    route: &Route<'_>,
    batch: Vec<Entry>,
    permit: OwnedSemaphorePermit,
    abandon: Abandon,
    now: Instant,
) {
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
    // Not written by then (no free request slot, no connection): handed
    // back unsent before its first caller stops waiting (review of issue
    // 12, F1: the callers gave up first and heard an unknown outcome).
    let send_by = batch.iter().map(|e| e.wait_until).min().unwrap_or(now) - SEND_MARGIN;
    let limit = answer_limit(batch.len(), route.max_response);
    tokio::spawn(async move {
        let _permit = permit;
        stats.batches.inc();
        let written = AtomicBool::new(false);
        let exchange = client.post_attempt_sent_by::<ExecuteBatchResponse>(
            Some(to),
            &leader,
            BATCH_PATH,
            Bytes::from(body),
            wait_until,
            budget,
            Origin::Forwarded,
            limit,
            Some(send_by),
            &written,
        );
        let sent = match answer_unless(exchange, abandon).await {
            Ok(sent) => sent,
            // Abandoned (its leader lost its leadership): unknown if any
            // of it may have been written; otherwise (still waiting for a
            // request slot or a connection) nothing of it left this node,
            // and each command is handed back unsent (issue 12: before,
            // every abandoned batch was reported written).
            Err(why) => {
                let written = written.load(Ordering::SeqCst);
                let result = Err(if written {
                    RpcError::Timeout {
                        what: format!("execute at leader {} ({why}; outcome unknown)", to.node),
                        after: now.elapsed(),
                    }
                } else {
                    RpcError::NotStarted(format!(
                        "execute at leader {} ({why}) before its batch was written",
                        to.node
                    ))
                });
                Sent { result, sent_before: written, written }
            }
        };
        deliver(to.node, batch, sent, &stats);
    });
}

/// Awaits an attempt's `answer` unless `other` (its leader lost its
/// leadership, or its time ran out) ends first, which gives `Err` with
/// what `other` said. An answer ready at the same poll as `other` wins: it
/// is what happened (issue 12: an unbiased select picked one of the two at
/// random, and reported an answer that had arrived as an unknown outcome).
pub(crate) async fn answer_unless<A, O>(
    answer: impl Future<Output = A>,
    other: impl Future<Output = O>,
) -> Result<A, O> {
    tokio::select! {
        biased;
        answer = answer => Ok(answer),
        other = other => Err(other),
    }
}

/// Hands each command of `batch`, sent to `leader`, its answer.
fn deliver(
    leader: NodeId,
    batch: Vec<Entry>,
    sent: Sent<ExecuteBatchResponse>,
    stats: &CommandStats,
) {
    let unknown = |batch: Vec<Entry>, why: String| {
        let err = RpcError::Unreachable {
            target: format!("leader {leader}"),
            reason: format!("{why} (outcome unknown)"),
            source: None,
        };
        for entry in batch {
            let _ = entry.answer.send(Batched::Answer(Err(copy(&err))));
        }
    };
    let sent_before = sent.sent_before;
    let err = match sent.result {
        Ok(response) if response.answers.len() == batch.len() => {
            stats.batched.add(batch.len() as u64);
            for (entry, answer) in batch.into_iter().zip(response.answers) {
                let answer = match answer {
                    BatchedAnswer::Done(done) => Ok(done),
                    BatchedAnswer::Failed { status, error } => {
                        let err = RpcError::from_remote(status, error);
                        Err(if sent_before { after_resend(err, leader) } else { err })
                    }
                };
                let _ = entry.answer.send(Batched::Answer(answer));
            }
            return;
        }
        Ok(response) => {
            let why = format!(
                "it answered a batch of {} commands with {} answers",
                batch.len(),
                response.answers.len()
            );
            return unknown(batch, why);
        }
        Err(err) => err,
    };
    // Never written to any address (every dial failed, no free request
    // slot): none of it ran, and each command is routed again.
    if !sent.written {
        for entry in batch {
            let _ = entry.answer.send(Batched::NotSent(format!("its batch was not sent: {err}")));
        }
        return;
    }
    // An earlier address may have received the batch and run it: whatever
    // a later one says, nothing is known of its commands.
    if sent.sent_before {
        let why = format!("its batch failed ({err}) after an earlier address may have received it");
        return unknown(batch, why);
    }
    match &err {
        // Not the member this node meant, or no longer the leader: a
        // routing answer, the same for each command (none ran).
        RpcError::Remote { body, .. } if body.code == ErrorCode::NotLeader => {
            for entry in batch {
                let _ = entry.answer.send(Batched::Answer(Err(copy(&err))));
            }
        }
        // Refused whole before any of it ran (an older leader without the
        // endpoint, a smaller size limit, a malformed, forbidden or slow
        // request): no answer for any one command, so each goes alone.
        RpcError::Remote { body, .. } if body.code.refused_before_applying() => {
            stats.batches_refused.inc();
            for entry in batch {
                let _ = entry.answer.send(Batched::Alone(None));
            }
        }
        // Timed out, unreachable, an answer too large or an error with no
        // meaning for one command: the outcome is unknown, and the retry
        // goes alone.
        _ => {
            let why = format!("its batch failed: {err}");
            match err {
                RpcError::Timeout { .. } => {
                    for entry in batch {
                        let _ = entry.answer.send(Batched::Answer(Err(copy(&err))));
                    }
                }
                _ => unknown(batch, why),
            }
        }
    }
}

/// `err`, once per command of a batch.
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
            reason: format!("batch failed: {other} (outcome unknown)"),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ErrorBody, LeaderHint};
    use crate::route::{Next, after_forward};

    fn entry(ticket: u64, term: u64, end: Instant) -> (Entry, oneshot::Receiver<Batched>) {
        let (answer, rx) = oneshot::channel();
        (Entry { ticket, request: b"{}".to_vec(), term, end, wait_until: end, answer }, rx)
    }

    fn entries(n: u64) -> (Vec<Entry>, Vec<oneshot::Receiver<Batched>>) {
        let later = Instant::now() + Duration::from_secs(10);
        (0..n).map(|t| entry(t, 3, later)).unzip()
    }

    fn remote(status: u16, code: &str) -> RpcError {
        let body = ErrorBody {
            code: ErrorCode::from_wire(code),
            message: "m".to_owned(),
            leader: None::<LeaderHint>,
        };
        RpcError::from_remote(status, body)
    }

    fn outcome(rx: &mut oneshot::Receiver<Batched>) -> Batched {
        rx.try_recv().expect("an answer")
    }

    /// Review finding: a whole-batch refusal (400, 403, 408, and the 404,
    /// 405, 413 of an older or smaller leader) was copied to every command
    /// as its final answer. Refused before any of it ran, each command goes
    /// alone; the leader's routing answer (not the leader) stays each
    /// command's own.
    #[test]
    fn a_batch_refused_whole_sends_its_commands_alone() {
        for (status, code) in [
            (400, "bad_request"),
            (403, "forbidden"),
            (408, "slow_body"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (413, "too_large"),
        ] {
            let stats = CommandStats::default();
            let (batch, mut rxs) = entries(3);
            let sent =
                Sent { result: Err(remote(status, code)), sent_before: false, written: true };
            deliver(7, batch, sent, &stats);
            for rx in &mut rxs {
                let got = outcome(rx);
                assert!(matches!(got, Batched::Alone(None)), "{code}: {got:?}");
            }
            assert_eq!(stats.batches_refused.get(), 1, "{code}");
        }
        let (batch, mut rxs) = entries(2);
        let sent =
            Sent { result: Err(remote(409, "not_leader")), sent_before: false, written: true };
        deliver(7, batch, sent, &CommandStats::default());
        for rx in &mut rxs {
            match outcome(rx) {
                Batched::Answer(Err(err)) => {
                    assert_eq!(err.code(), ErrorCode::NotLeader);
                    assert!(matches!(after_forward(&err), Next::Retry { .. }), "{err}");
                }
                other => panic!("not_leader gave {other:?}"),
            }
        }
    }

    /// Review finding: the fallback for a batch refused whole could follow
    /// a batch the client had already sent to another address of the
    /// leader, and resend its commands as not applied. Once an earlier
    /// address may have received the batch, every answer leaves each
    /// command's outcome unknown, to be retried (alone, same client and
    /// sequence number), never a final answer and never "not applied".
    #[test]
    fn a_refusal_after_the_batch_may_have_reached_another_address_leaves_it_unknown() {
        for (status, code) in [
            (400, "bad_request"),
            (403, "forbidden"),
            (404, "not_found"),
            (409, "not_leader"),
            (413, "too_large"),
            (502, "http_error"),
        ] {
            let stats = CommandStats::default();
            let (batch, mut rxs) = entries(3);
            let sent = Sent { result: Err(remote(status, code)), sent_before: true, written: true };
            deliver(7, batch, sent, &stats);
            for rx in &mut rxs {
                match outcome(rx) {
                    Batched::Answer(Err(err)) => {
                        assert!(err.outcome_unknown(), "{code}: {err}");
                        let retried = matches!(after_forward(&err), Next::Retry { .. });
                        assert!(retried, "{code}: {err} ends the call");
                    }
                    other => panic!("{code} gave {other:?}"),
                }
            }
            assert_eq!(stats.batches_refused.get(), 0, "{code}");
        }
    }

    /// Review finding (of the re-landed batching): the rule above covered
    /// only whole-batch errors. A batch an earlier address of the leader
    /// may have received, answered 200 by the next address with
    /// per-command refusals ("not the leader", "session expired"), handed
    /// those on as "not applied". They are unknown outcomes now; what the
    /// leader answered as applied or as a duplicate passes on.
    #[test]
    fn per_command_refusals_after_an_earlier_address_may_have_the_batch_are_unknown() {
        let failed = |status: u16, code: &str| BatchedAnswer::Failed {
            status,
            error: ErrorBody {
                code: ErrorCode::from_wire(code),
                message: "m".to_owned(),
                leader: None::<LeaderHint>,
            },
        };
        let done = || {
            BatchedAnswer::Done(ExecuteResponse {
                result: serde_json::value::RawValue::from_string("1".to_owned()).unwrap(),
                duplicate: true,
            })
        };
        for sent_before in [true, false] {
            let answers = vec![
                failed(409, "not_leader"),
                failed(409, "session_expired"),
                failed(403, "forbidden"),
                done(),
            ];
            let (batch, mut rxs) = entries(4);
            let sent =
                Sent { result: Ok(ExecuteBatchResponse { answers }), sent_before, written: true };
            deliver(7, batch, sent, &CommandStats::default());
            for (i, rx) in rxs.iter_mut().enumerate() {
                match (i, outcome(rx)) {
                    (3, Batched::Answer(Ok(done))) => assert!(done.duplicate),
                    (_, Batched::Answer(Err(err))) => {
                        assert_eq!(err.outcome_unknown(), sent_before, "command {i}: {err}");
                    }
                    (_, other) => panic!("command {i} gave {other:?}"),
                }
            }
        }
    }

    /// An answer with no meaning for one command (a code this version does
    /// not know, an HTTP error, an answer over the read limit) ends no call:
    /// each command's outcome is unknown and it is tried again.
    #[test]
    fn a_batch_error_without_meaning_for_one_command_is_retried_as_unknown() {
        let too_large = RpcError::TooLarge { size: 10, limit: 5 };
        for err in [remote(502, "http_error"), remote(418, "leader_on_vacation"), too_large] {
            let (batch, mut rxs) = entries(2);
            let text = err.to_string();
            deliver(
                7,
                batch,
                Sent { result: Err(err), sent_before: false, written: true },
                &Default::default(),
            );
            for rx in &mut rxs {
                match outcome(rx) {
                    Batched::Answer(Err(err)) => {
                        assert!(err.outcome_unknown(), "{text}: {err}");
                        assert!(matches!(after_forward(&err), Next::Retry { .. }), "{text}");
                    }
                    other => panic!("{text} gave {other:?}"),
                }
            }
        }
    }

    /// Issue 12: a batch that no address ever received (every dial
    /// refused, no free request slot) ran nowhere: each command comes
    /// back not sent (not applied), not with an unknown outcome. Written
    /// even in part, the same failures leave every command unknown.
    #[test]
    fn a_batch_never_written_hands_its_commands_back_unsent() {
        let refused = || RpcError::Unreachable {
            target: "10.0.0.2:6271".to_owned(),
            reason: "connection refused".to_owned(),
            source: None,
        };
        let no_slot =
            || RpcError::Timeout { what: "a request slot".to_owned(), after: Duration::ZERO };
        for (err, written) in
            [(refused(), false), (no_slot(), false), (refused(), true), (no_slot(), true)]
        {
            let (batch, mut rxs) = entries(2);
            let text = err.to_string();
            let sent = Sent { result: Err(err), sent_before: false, written };
            deliver(7, batch, sent, &Default::default());
            for rx in &mut rxs {
                match (written, outcome(rx)) {
                    (false, Batched::NotSent(why)) => assert!(why.contains(&text), "{why}"),
                    (true, Batched::Answer(Err(err))) => assert!(err.outcome_unknown(), "{err}"),
                    (_, other) => panic!("{text}, written {written}: {other:?}"),
                }
            }
        }
    }

    fn queue() -> Queue {
        Queue { pending: Mutex::default(), senders: Arc::new(Semaphore::new(1)) }
    }

    /// A command whose attempt's time ran out while it waited, or whose
    /// leader lost its leadership since its caller chose it, is not sent:
    /// it goes back to its caller as not sent. A caller that left is
    /// dropped.
    #[test]
    fn take_hands_back_expired_and_moved_commands_unsent() {
        let queue = queue();
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut rxs = Vec::new();
        // (term, end): expired, good, moved (term 2), good, caller gone.
        for (term, end) in [(3, now), (3, later), (2, later), (3, later), (3, later)] {
            let (tx, rx) = oneshot::channel();
            queue.push(|ticket| Entry {
                ticket,
                request: b"{}".to_vec(),
                term,
                end,
                wait_until: end,
                answer: tx,
            });
            rxs.push(rx);
        }
        drop(rxs.pop());
        let moved = |since: u64| since < 3;
        let fill = Fill { max_request: 1 << 20, max_commands: 256, now, moved: &moved };
        let (batch, waiting) = queue.take(1, &fill);
        let tickets: Vec<u64> = batch.iter().map(|e| e.ticket).collect();
        assert_eq!(tickets, [1, 3]);
        assert!(!waiting);
        assert!(matches!(outcome(&mut rxs[0]), Batched::NotSent(why) if why.contains("time")));
        assert!(matches!(outcome(&mut rxs[2]), Batched::NotSent(why) if why.contains("leader")));
        assert!(queue.pending.lock().unwrap().entries.is_empty());
    }

    /// A batch holds as many commands as [`MAX_BATCH_ANSWER`] allows at
    /// what each may answer alone, at most [`MAX_BATCH`]; fewer than
    /// [`MIN_BATCH`] go alone.
    #[test]
    fn a_batch_answer_limit_covers_each_commands_own_limit() {
        let cases = [
            (4 << 20, 63),
            (1 << 20, 255),
            (64 << 10, MAX_BATCH),
            (64 << 20, 3),
            (100 << 20, 2),
            (1 << 30, 0),
        ];
        for (max_response, want) in cases {
            let n = commands_per_batch(max_response);
            assert_eq!(n, want, "{max_response}");
            let limit = answer_limit(n, max_response);
            assert!(limit >= n * max_response, "{max_response}: {limit}");
            assert!(limit <= MAX_BATCH_ANSWER, "{max_response}: {limit}");
        }
        // Filled no further than that.
        let queue = queue();
        let later = Instant::now() + Duration::from_secs(10);
        let mut rxs = Vec::new();
        for _ in 0..10 {
            let (tx, rx) = oneshot::channel();
            let make = |ticket| Entry {
                ticket,
                request: b"{}".to_vec(),
                term: 3,
                end: later,
                wait_until: later,
                answer: tx,
            };
            queue.push(make);
            rxs.push(rx);
        }
        let never = |_: u64| false;
        let fill =
            Fill { max_request: 1 << 20, max_commands: 4, now: Instant::now(), moved: &never };
        let (batch, waiting) = queue.take(9, &fill);
        assert_eq!(batch.len(), 4);
        assert!(waiting);
    }

    /// Review finding: a command with less than a millisecond left when a
    /// batch took it went out with `"within_ms":0`, a budget the leader
    /// cannot use. It is handed back unsent, as one whose time ran out.
    #[test]
    fn take_hands_back_a_command_with_less_than_a_millisecond_left() {
        let queue = queue();
        let now = Instant::now();
        let mut rxs = Vec::new();
        for end in [now + Duration::from_micros(500), now + Duration::from_secs(10)] {
            let (tx, rx) = oneshot::channel();
            queue.push(|ticket| Entry {
                ticket,
                request: b"{}".to_vec(),
                term: 3,
                end,
                wait_until: end,
                answer: tx,
            });
            rxs.push(rx);
        }
        let never = |_: u64| false;
        let fill = Fill { max_request: 1 << 20, max_commands: 256, now, moved: &never };
        let (batch, _) = queue.take(1, &fill);
        let tickets: Vec<u64> = batch.iter().map(|e| e.ticket).collect();
        assert_eq!(tickets, [1]);
        assert!(matches!(outcome(&mut rxs[0]), Batched::NotSent(why) if why.contains("time")));
    }

    /// Answers are matched to commands by position: an answer with fewer
    /// or more entries than the batch had commands is a protocol error,
    /// and every command of it gets an unknown outcome (retried alone),
    /// never another command's answer and never a panic.
    #[test]
    fn an_answer_with_the_wrong_number_of_entries_leaves_every_command_unknown() {
        let done = || {
            BatchedAnswer::Done(ExecuteResponse {
                result: serde_json::value::RawValue::from_string("1".to_owned()).unwrap(),
                duplicate: false,
            })
        };
        for answers in [0, 2, 4, 300] {
            let stats = CommandStats::default();
            let (batch, mut rxs) = entries(3);
            let response = ExecuteBatchResponse { answers: (0..answers).map(|_| done()).collect() };
            deliver(
                7,
                batch,
                Sent { result: Ok(response), sent_before: false, written: true },
                &stats,
            );
            for rx in &mut rxs {
                match outcome(rx) {
                    Batched::Answer(Err(err)) => {
                        assert!(err.outcome_unknown(), "{answers}: {err}");
                        assert!(err.to_string().contains("answers"), "{answers}: {err}");
                        assert!(matches!(after_forward(&err), Next::Retry { .. }), "{answers}");
                    }
                    other => panic!("{answers} answers gave {other:?}"),
                }
            }
            assert_eq!(stats.batched.get(), 0);
        }
    }

    /// Issue 12: an attempt's answer and its abandon (the leader moved,
    /// its time ran out) ready at the same poll. The unbiased selects of
    /// `batch::send` and `unless_leader_moves_since` picked one at random,
    /// so an answer that had arrived was reported as an unknown outcome
    /// about every other time; the answer now always wins. (Both futures
    /// are ready at the first poll, so each round is that race.)
    #[tokio::test]
    async fn an_answer_ready_with_its_abandon_is_the_answer() {
        for round in 0..128 {
            let got = answer_unless(std::future::ready("answer"), std::future::ready("moved"));
            assert_eq!(got.await, Ok("answer"), "round {round}");
        }
    }
}
