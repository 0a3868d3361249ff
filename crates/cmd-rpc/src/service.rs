//! What the command API does, wherever it is called from (HTTP or the
//! facade): run on the leader, or find the leader and forward to it.
//!
//! The node a caller talks to drives the whole call: it follows "not the
//! leader, the leader is X" hints, waits (within the deadline) while an
//! election is under way, and retries with backoff. A forwarded request is
//! never forwarded again, so there are no chains or loops. Every command
//! carries (client, seq), so a retry after a timeout or a leader change is
//! answered from the session, never applied twice.
//!
//! Joins and removals are different (decision 0003): the leader answers
//! them itself and never forwards them, and checks them against the
//! caller's identity, which it learns from the [`Peers`] hook by the
//! request's real address. A node that wants to join or leave calls the
//! leader directly.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft_core::{
    ClientId, MembershipError, NodeId, NodeInfo, Outcome, ProposeError, RaftNode, ReadError, Role,
    StateMachine, node_id,
};
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::{
    BatchedAnswer, CampaignRequest, ClusterInfo, Consistency, ExecuteBatchRequest,
    ExecuteBatchResponse, ExecuteRequest, ExecuteResponse, JoinRequest, LeaderHint, Member,
    ReadIndexResponse, ReadRequest, ReadResponse, RemoveRequest, SessionResponse,
};
use crate::batch::{Abandon, Batched, Batches, MIN_BUDGET, Route, answer_unless};
use crate::client::{Addressee, CommandClient};
use crate::code::ErrorCode;
use crate::config::CommandConfig;
use crate::error::RpcError;
use crate::peers::{Caller, Peers, check_node};
use crate::route::{self, Backoff, Next, Origin, Step, Target, keep_unknown};
use crate::stats::CommandStats;

/// The command API of one node.
pub struct CommandService<S: StateMachine> {
    node: Arc<RaftNode<S>>,
    client: CommandClient,
    config: CommandConfig,
    peers: Arc<dyn Peers>,
    /// Membership changes one at a time (openraft allows one in progress).
    membership: Mutex<()>,
    /// What it counts, for the facade's `/metrics`.
    stats: Arc<CommandStats>,
    /// Commands forwarded to the leader, sent together.
    batches: Batches,
    /// Commands of forwarded batches this node runs at once as the leader
    /// ([`BATCH_WORK`]).
    batch_work: tokio::sync::Semaphore,
}

/// Most commands of forwarded batches a leader runs at once, from all its
/// followers together: four full batches. The rest of a batch waits for a
/// slot within its own budget (the peers' connection bound alone would
/// allow 32 batches of 256 commands per peer).
pub(crate) const BATCH_WORK: usize = 4 * crate::api::MAX_BATCH;

/// A membership change the leader decided on by itself (the facade's
/// reconciler), not asked for by a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add a node as a learner and wait until it has caught up.
    AddLearner {
        /// Its raft id.
        id: NodeId,
        /// Its record.
        node: NodeInfo,
    },
    /// Make a learner a voter.
    Promote {
        /// Its raft id.
        id: NodeId,
    },
    /// Swap stale incarnations `old` for the learner `new` in one joint
    /// change.
    Replace {
        /// The stale incarnations.
        old: BTreeSet<NodeId>,
        /// The new incarnation.
        new: NodeId,
    },
    /// Remove a member.
    Remove {
        /// Its raft id.
        id: NodeId,
    },
}

fn hint(id: NodeId, node: NodeInfo) -> LeaderHint {
    LeaderHint { id, node }
}

fn parse_client(text: &str) -> Result<ClientId, RpcError> {
    if text.len() != 32 {
        return Err(RpcError::bad_request(format!(
            "client must be 32 hex digits, got {} characters",
            text.len()
        )));
    }
    u128::from_str_radix(text, 16)
        .map(ClientId)
        .map_err(|e| RpcError::bad_request_from(format!("client {text:?} is not hex"), e))
}

fn raw(bytes: Vec<u8>, what: &str) -> Result<Box<RawValue>, RpcError> {
    let text = String::from_utf8(bytes)
        .map_err(|e| RpcError::fatal_from(format!("{what} is not UTF-8 JSON"), e))?;
    RawValue::from_string(text)
        .map_err(|e| RpcError::fatal_from(format!("{what} is not JSON: {e}"), e))
}

impl<S: StateMachine> CommandService<S> {
    /// The command API of `node`, reaching other nodes through `client`,
    /// learning about callers from `peers`.
    pub fn new(
        node: Arc<RaftNode<S>>,
        client: CommandClient,
        config: CommandConfig,
        peers: Arc<dyn Peers>,
    ) -> CommandService<S> {
        CommandService {
            node,
            client,
            config,
            peers,
            membership: Mutex::new(()),
            stats: Arc::default(),
            batches: Batches::default(),
            batch_work: tokio::sync::Semaphore::new(BATCH_WORK),
        }
    }

    /// What this service counts (commands forwarded to the leader).
    pub fn stats(&self) -> &Arc<CommandStats> {
        &self.stats
    }

    /// The hook that answers about callers.
    pub fn peers(&self) -> &Arc<dyn Peers> {
        &self.peers
    }

    /// This node as a caller of its own API.
    fn own_caller(&self) -> Caller {
        let info = self.node.info();
        Caller { stable_id: info.stable_id.clone(), addrs: info.addrs.clone() }
    }

    /// The client this service forwards with, for other calls to peers.
    pub fn client(&self) -> &CommandClient {
        &self.client
    }

    /// The raft node behind the API.
    pub fn node(&self) -> &Arc<RaftNode<S>> {
        &self.node
    }

    /// Gives the raft node back (to shut it down).
    pub fn into_node(self) -> Arc<RaftNode<S>> {
        self.node
    }

    /// The deadline for a call that asked for `requested`.
    pub fn deadline(&self, requested: Option<Duration>) -> Instant {
        Instant::now()
            + requested.unwrap_or(self.config.default_deadline).min(self.config.max_deadline)
    }

    /// Member `id` of this node's cluster, as the addressee of a call.
    fn member(&self, id: NodeId) -> Addressee {
        Addressee { node: id, cluster: self.node.cluster_id() }
    }

    fn leader_hint(&self, leader: Option<(NodeId, NodeInfo)>) -> Option<LeaderHint> {
        leader.map(|(id, node)| hint(id, node)).or_else(|| {
            let m = self.node.metrics();
            m.leader.and_then(|id| m.nodes.get(&id).cloned().map(|node| hint(id, node)))
        })
    }

    /// Runs `attempt` against the leader until it gives a final answer or
    /// the deadline passes. `attempt` returns `Ok(Retry::Done(answer))`,
    /// `Ok(Retry::Again { .. })` to try again (leadership moved), or an
    /// error that ends the call. Where each attempt goes, and what the call reports at its deadline,
    /// is decided in `route`.
    async fn with_leader<T, F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        origin: Origin,
        attempt: F,
    ) -> Result<T, RpcError>
    where
        F: FnMut(Target) -> Fut,
        Fut: Future<Output = Result<Retry<T>, RpcError>>,
    {
        let settle = route::Deadline::into_error;
        self.with_leader_settled(what, deadline, origin, Duration::ZERO, settle, attempt).await
    }

    /// [`CommandService::with_leader`], an attempt here made only with at
    /// least `local_floor` left (an execute's proposal needs some time,
    /// `route::worth_attempting`), and the call's end at its deadline told
    /// by `settle` (an execute tells what it knows of its attempts).
    async fn with_leader_settled<T, F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        origin: Origin,
        local_floor: Duration,
        settle: impl Fn(route::Deadline) -> RpcError,
        mut attempt: F,
    ) -> Result<T, RpcError>
    where
        F: FnMut(Target) -> Fut,
        Fut: Future<Output = Result<Retry<T>, RpcError>>,
    {
        let started = Instant::now();
        let me = self.node.id();
        let mut backoff = Backoff::new(self.config.min_backoff, self.config.max_backoff);
        let mut hinted: Option<LeaderHint> = None;
        let mut last_error: Option<RpcError> = None;
        // Whether an attempt was made: `last_error` is no sign of one (a
        // known outcome after it is not kept).
        let mut attempted = false;
        let report = |waiting_for_leader: bool, last_error: Option<RpcError>| {
            let known = self.node.metrics().leader;
            settle(route::at_deadline(
                what,
                waiting_for_leader,
                last_error,
                known,
                started.elapsed(),
            ))
        };
        loop {
            // This node may stop on a fatal error mid-call: it serves no more.
            self.check_fatal()?;
            let step = route::step(origin, &self.node.metrics(), me, hinted.as_ref());
            let waiting_for_leader = step == Step::Wait;
            match step {
                // Forwarded requests are answered here or bounced back. After
                // an attempt here that left its outcome unknown, the caller
                // must hear that rather than a plain "not the leader".
                Step::Bounce => {
                    return Err(last_error
                        .unwrap_or(RpcError::NotLeader { leader: self.leader_hint(None) }));
                }
                Step::Wait => {
                    // Until a leader this node can route to is known: none
                    // yet, or one its configuration does not hold (during
                    // an incarnation change). The wait ends early only when
                    // the route changes; whatever else ends it (raft
                    // stopping), the slot is slept out, so this never spins.
                    let slot = backoff.pause(Instant::now(), deadline);
                    let slot_end = Instant::now() + slot;
                    let routable = self
                        .node
                        .wait_for_leadership(slot, |m| route::target(m, me, None).is_some())
                        .await
                        .is_ok();
                    if !routable {
                        tokio::time::sleep_until(slot_end).await;
                    }
                }
                // Too little time left for an attempt (the pause before
                // this turn may have run to the deadline, or nearly): the
                // call reports what it has. An attempt now could only
                // time out, replacing what the last one said, and an
                // execute proposed with no time (or less than 1 ms) could
                // still be applied while its caller hears "no outcome".
                Step::Attempt(ref target)
                    if !route::worth_attempting(
                        attempted,
                        deadline.saturating_duration_since(Instant::now()),
                        self.config.min_backoff,
                        if *target == Target::Local { local_floor } else { Duration::ZERO },
                    ) =>
                {
                    return Err(report(false, last_error));
                }
                Step::Attempt(target) => {
                    attempted = true;
                    match attempt(target).await {
                        Ok(Retry::Done(answer)) => return Ok(answer),
                        Ok(Retry::Again { leader, error }) => {
                            hinted = leader;
                            last_error = keep_unknown(last_error, error);
                        }
                        // A refusal that ends the call says nothing of an
                        // earlier attempt that may still commit.
                        Err(error) => return Err(route::final_error(last_error, error)),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(report(waiting_for_leader, last_error));
            }
            if !waiting_for_leader {
                tokio::time::sleep(backoff.pause(Instant::now(), deadline)).await;
            }
            backoff.grow();
        }
    }

    /// Why this node cannot serve, if it stopped on a fatal error.
    pub fn fatal(&self) -> Option<String> {
        self.node.fatal()
    }

    fn check_fatal(&self) -> Result<(), RpcError> {
        match self.node.fatal() {
            Some(why) => Err(RpcError::fatal(why)),
            None => Ok(()),
        }
    }

    /// Registers a new session through the leader; its client id. A
    /// registration whose outcome is unknown is simply tried again: a
    /// session nobody uses expires.
    pub async fn register(
        &self,
        deadline: impl Into<Instant>,
        origin: Origin,
    ) -> Result<SessionResponse, RpcError> {
        let deadline: Instant = deadline.into();
        self.check_fatal()?;
        self.with_leader("register a session", deadline, origin, |target| async move {
            match target {
                Target::Local => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let registered =
                        tokio::time::timeout(remaining, self.node.register_session()).await;
                    match registered {
                        Ok(Ok(client)) => {
                            Ok(Retry::Done(SessionResponse { client: client.to_string() }))
                        }
                        Ok(Err(err)) => self.propose_error("register a session", err),
                        Err(_) => Ok(Retry::Again {
                            leader: None,
                            error: Some(RpcError::Timeout {
                                what: "register a session".to_owned(),
                                after: remaining,
                            }),
                        }),
                    }
                }
                Target::Leader(id, leader) => {
                    let body = serde_json::json!({});
                    let result = self.forward(id, &leader, "/v1/session", &body, deadline).await;
                    self.remote_result(result)
                }
            }
        })
        .await
    }

    /// What a failed proposal means for the call: try again (elsewhere, or
    /// once a leader is known) or give up.
    fn propose_error<T>(&self, what: &str, err: ProposeError) -> Result<Retry<T>, RpcError> {
        match err {
            ProposeError::NotLeader { leader } => {
                Ok(Retry::Again { leader: self.leader_hint(leader), error: None })
            }
            // Unknown outcome (the entry may commit under another leader): a
            // retry with the same seq is safe, and the call reports this if
            // nothing better is learnt.
            ProposeError::LeaderLost { leader } => Ok(Retry::Again {
                leader: self.leader_hint(leader),
                error: Some(RpcError::LeaderLost { what: what.to_owned() }),
            }),
            // Unknown outcome: a retry with the same seq is safe.
            ProposeError::Timeout(after) => Ok(Retry::Again {
                leader: None,
                error: Some(RpcError::Timeout { what: format!("{what} (outcome unknown)"), after }),
            }),
            ProposeError::TooLarge { size, limit } => Err(RpcError::TooLarge { size, limit }),
            ProposeError::ShuttingDown => Err(RpcError::ShuttingDown),
            err => Err(RpcError::fatal_from(err.to_string(), err)),
        }
    }

    /// Executes one command on the leader.
    ///
    /// Every attempt carries the request's (client, seq), so a retry is
    /// answered from the session and never applied twice. The call keeps
    /// track of whether an attempt may have been applied without this node
    /// learning of it (an attempt that timed out, a leader lost on the way);
    /// if the session then turns out to have expired, the answer is
    /// [`RpcError::SessionExpiredOutcomeUnknown`], otherwise
    /// [`RpcError::SessionExpired`] (not applied; safe to retry in a new
    /// session). `request.retry` says an earlier call left it unknown.
    pub async fn execute(
        &self,
        request: &ExecuteRequest,
        deadline: impl Into<Instant>,
        origin: Origin,
    ) -> Result<ExecuteResponse, RpcError> {
        let deadline: Instant = deadline.into();
        self.check_fatal()?;
        let client = parse_client(&request.client)?;
        if request.seq == 0 {
            return Err(RpcError::bad_request("seq starts at 1".to_owned()));
        }
        let maybe_applied = AtomicBool::new(request.retry);
        let expired = |maybe_applied: bool| {
            let client = client.to_string();
            if maybe_applied {
                RpcError::SessionExpiredOutcomeUnknown { client }
            } else {
                RpcError::SessionExpired { client }
            }
        };
        let maybe_applied = &maybe_applied;
        // Nothing of it proposed here or written to a leader, and no
        // answer by the deadline: "not applied" (`not_started`).
        let settle =
            |deadline| route::unless_unsent(deadline, maybe_applied.load(Ordering::Relaxed));
        let result = self
            .with_leader_settled("execute", deadline, origin, MIN_BUDGET, settle, |target| async move {
                match target {
                    Target::Local => {
                        let command = request.command.get().as_bytes().to_vec();
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        let proposed = tokio::time::timeout(
                            remaining,
                            self.node.propose(client, request.seq, command),
                        )
                        .await;
                        let outcome = match proposed {
                            Ok(outcome) => outcome,
                            // The proposal may still be committed.
                            Err(_) => Err(ProposeError::Timeout(remaining)),
                        };
                        if outcome.as_ref().is_err_and(|err| {
                            !matches!(
                                err,
                                ProposeError::NotLeader { .. } | ProposeError::TooLarge { .. }
                            )
                        }) {
                            maybe_applied.store(true, Ordering::Relaxed);
                        }
                        match outcome {
                            Ok(Outcome::Applied(bytes)) => Ok(Retry::Done(ExecuteResponse {
                                result: raw(bytes, "state machine answer")?,
                                duplicate: false,
                            })),
                            Ok(Outcome::Duplicate(bytes)) => Ok(Retry::Done(ExecuteResponse {
                                result: raw(bytes, "state machine answer")?,
                                duplicate: true,
                            })),
                            Ok(Outcome::DuplicateAnswerNotKept) => Err(RpcError::AnswerNotKept),
                            Ok(Outcome::Stale { last_seq }) => {
                                Err(RpcError::StaleSequence { last_seq })
                            }
                            Ok(Outcome::SessionExpired) => {
                                Err(expired(maybe_applied.load(Ordering::Relaxed)))
                            }
                            Ok(Outcome::UnknownSession) => {
                                Err(RpcError::UnknownSession { client: client.to_string() })
                            }
                            Ok(Outcome::SequenceReused { seq }) => {
                                Err(RpcError::SequenceReused { seq })
                            }
                            Ok(other @ Outcome::Registered(_)) => {
                                Err(RpcError::fatal(format!("a command was answered {other:?}")))
                            }
                            Err(err) => self.propose_error("execute", err),
                        }
                    }
                    Target::Leader(id, leader) => {
                        // The term this leader was chosen in (the route
                        // read the metrics just before).
                        let term = self.node.metrics().term;
                        let forward = ExecuteRequest {
                            client: request.client.clone(),
                            seq: request.seq,
                            command: request.command.clone(),
                            retry: maybe_applied.load(Ordering::Relaxed),
                        };
                        self.stats.forwarded.inc();
                        // The command's request id is its (client, seq).
                        let span = tracing::debug_span!(
                            "forward",
                            client = %request.client,
                            seq = request.seq,
                            leader = %leader.stable_id
                        );
                        let forwarded = self
                            .forward_execute(id, &leader, term, &forward, deadline)
                            .instrument(span)
                            .await;
                        let result = match forwarded {
                            Forwarded::Sent(result) => result,
                            // Never written: not applied, so nothing is
                            // unknown; routed again by the node's view. At
                            // the deadline the call says so (`not_started`),
                            // unless an earlier attempt may have been applied.
                            Forwarded::NotSent(why) => {
                                tracing::debug!(client = %request.client, seq = request.seq, %why, "forward not sent");
                                self.stats.not_sent.inc();
                                let error = (!maybe_applied.load(Ordering::Relaxed)).then(|| {
                                    RpcError::NotStarted(format!("execute at leader {id}: {why}"))
                                });
                                return Ok(Retry::Again { leader: None, error });
                            }
                        };
                        if result.as_ref().is_err_and(RpcError::outcome_unknown) {
                            maybe_applied.store(true, Ordering::Relaxed);
                        }
                        // "Not started" there says nothing of an earlier
                        // attempt that may have been applied: retried, and
                        // never this call's answer then (review finding).
                        if maybe_applied.load(Ordering::Relaxed)
                            && result.as_ref().is_err_and(|e| e.code() == ErrorCode::NotStarted)
                        {
                            return Ok(Retry::Again { leader: None, error: None });
                        }
                        self.remote_result(result)
                    }
                }
            })
            .await;
        match result {
            // The leader could not know of this node's earlier attempts: a
            // session it no longer has (expired, or never known to it) after
            // an attempt whose outcome is unknown says nothing of that
            // attempt.
            Err(err)
                if matches!(err.code(), ErrorCode::SessionExpired | ErrorCode::UnknownSession)
                    && maybe_applied.load(Ordering::Relaxed) =>
            {
                Err(expired(true))
            }
            Err(err) if err.code() == ErrorCode::SessionExpired => Err(expired(false)),
            other => other,
        }
    }

    /// Runs the commands of a batch a follower forwarded
    /// (`/v1/execute-batch`) as if each had come alone from it: each within
    /// the smaller of `deadline` and its own budget, all at once; answers
    /// them in order.
    pub async fn execute_batch(
        &self,
        batch: &ExecuteBatchRequest,
        deadline: impl Into<Instant>,
    ) -> ExecuteBatchResponse {
        let deadline: Instant = deadline.into();
        let now = Instant::now();
        let calls = batch.commands.iter().map(|command| async move {
            let own = deadline.min(now + Duration::from_millis(command.within_ms));
            let result = match tokio::time::timeout_at(own, self.batch_work.acquire()).await {
                Ok(Ok(_running)) => {
                    self.stats.batch_started.inc();
                    self.execute(&command.request, own, Origin::Forwarded).await
                }
                // Not started here: nothing of it was proposed in this
                // call, so `not_started` (not applied), as `execute` would
                // answer with no time left. Unless the follower says an
                // earlier attempt may have been applied (`retry`: batches
                // never carry it, but the leader does not count on that),
                // which this leader cannot know of: then unknown. The
                // follower drops a `not_started` after its own attempt that
                // may have been applied (finding 24).
                _ => Err({
                    self.stats.batch_not_started.inc();
                    let why = format!(
                        "the leader is running {BATCH_WORK} batched commands; this one was not \
                         started within its budget"
                    );
                    if command.request.retry {
                        RpcError::Unavailable(why)
                    } else {
                        RpcError::NotStarted(why)
                    }
                }),
            };
            match result {
                Ok(done) => BatchedAnswer::Done(done),
                Err(err) => BatchedAnswer::Failed { status: err.status(), error: err.body() },
            }
        });
        ExecuteBatchResponse { answers: futures_util::future::join_all(calls).await }
    }

    /// Forwards one attempt of an execute to the leader `id` at `leader`,
    /// chosen in `term`, together with other callers' commands when some
    /// are waiting (`batch.rs`), or alone. Either way the attempt has the
    /// budget it would have alone, and its outcome is unknown if the leader
    /// loses its leadership after it was sent and before it is answered;
    /// one never sent comes back as [`Forwarded::NotSent`].
    async fn forward_execute(
        &self,
        id: NodeId,
        leader: &NodeInfo,
        term: u64,
        request: &ExecuteRequest,
        deadline: Instant,
    ) -> Forwarded {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        let (attempt, grace) = (self.config.attempt_timeout, self.config.connect_timeout);
        // As `CommandClient::post_attempt` budgets one attempt.
        let (end, wait_until) = if attempt < remaining {
            (now + attempt, (now + attempt + grace).min(deadline))
        } else {
            (deadline, deadline)
        };
        let node = self.node.clone();
        let moved = move |since: u64| leader_moved(&node.metrics(), since, id);
        let route = Route {
            client: &self.client,
            to: self.member(id),
            leader,
            term,
            max_request: self.config.max_request,
            max_response: self.config.max_response,
            grace,
            stats: &self.stats,
            moved: &moved,
        };
        let node = self.node.clone();
        let abandon = |since: u64, until: Instant| -> Abandon {
            let node = node.clone();
            Box::pin(async move {
                let budget = until.saturating_duration_since(Instant::now());
                match node.wait_for_leadership(budget, |m| leader_moved(m, since, id)).await {
                    Ok(m) => format!("it lost its leadership to {}", m.leader.unwrap_or_default()),
                    Err(_) => "no answer in time, or this node stopped".to_owned(),
                }
            })
        };
        match self.batches.submit(route, request, end, wait_until, abandon).await {
            Batched::Answer(result) => Forwarded::Sent(result),
            Batched::NotSent(why) => Forwarded::NotSent(why),
            Batched::Alone(_permit) => {
                if leader_moved(&self.node.metrics(), term, id) {
                    let why = "the leader it was meant for lost its leadership before it was sent";
                    return Forwarded::NotSent(why.to_owned());
                }
                self.execute_alone(id, leader, term, request, deadline).await
            }
        }
    }

    /// Forwards one attempt of an execute to the leader `id`, chosen in
    /// `term`, on its own (`/v1/execute`). A refusal before the state
    /// machine from one of the leader's addresses after an earlier one's
    /// exchange broke (so that one may have received it) says nothing of
    /// the command: its outcome is unknown. One never written to any of
    /// the leader's addresses (every dial failed, no free request slot)
    /// is [`Forwarded::NotSent`].
    async fn execute_alone(
        &self,
        id: NodeId,
        leader: &NodeInfo,
        term: u64,
        request: &ExecuteRequest,
        deadline: Instant,
    ) -> Forwarded {
        let body = match serde_json::to_vec(request) {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                return Forwarded::Sent(Err(RpcError::bad_request_from(
                    format!("encode request: {e}"),
                    e,
                )));
            }
        };
        let written = AtomicBool::new(false);
        let send = async {
            let sent = self
                .client
                .post_attempt_encoded(
                    Some(self.member(id)),
                    leader,
                    "/v1/execute",
                    body,
                    deadline,
                    self.config.attempt_timeout,
                    Origin::Forwarded,
                    self.config.execute_answer_limit(&self.node.session_limits()),
                    &written,
                )
                .await;
            match sent.result.map_err(|err| route::after_execute(err, id)) {
                Err(err) if !sent.written => Ok(Forwarded::NotSent(err.to_string())),
                Err(err) if sent.sent_before => Err(route::after_resend(err, id)),
                other => other.map(|answer| Forwarded::Sent(Ok(answer))),
            }
        };
        // A leader that moved meanwhile leaves the outcome unknown if any
        // of the request may have been written; one still waiting for a
        // request slot or a connection was not sent (issue 12: before, it
        // was unknown too). An error `send` returned itself was written.
        self.unless_leader_moves_since(id, term, "/v1/execute", send, deadline)
            .await
            .unwrap_or_else(|err| {
                if written.load(Ordering::SeqCst) {
                    Forwarded::Sent(Err(err))
                } else {
                    let why = "the leader it was meant for lost its leadership before it was \
                               written";
                    Forwarded::NotSent(why.to_owned())
                }
            })
    }

    /// Forwards one attempt to the leader `id` at `leader`, addressed to
    /// that member of this cluster (another node there refuses it): each address
    /// gets its own connect budget, the answer is awaited for at most
    /// `attempt_timeout`, and the attempt is abandoned (outcome unknown) as
    /// soon as this node learns of a newer leader. Every attempt of a call
    /// carries the same (client, seq), so trying again never applies twice.
    async fn forward<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        id: NodeId,
        leader: &NodeInfo,
        path: &str,
        body: &B,
        deadline: Instant,
    ) -> Result<R, RpcError> {
        let attempt = self.config.attempt_timeout;
        let to = Some(self.member(id));
        let send =
            self.client.post_attempt(to, leader, path, body, deadline, attempt, Origin::Forwarded);
        self.unless_leader_moves(id, path, send, deadline).await
    }

    /// Runs `send`, an attempt at the leader `id`, unless this node learns
    /// first of a leader of a newer term that is not `id`: a leader that
    /// died (its connections silent, as behind tsnet) answers nothing, and
    /// the call should go to its successor without waiting any longer.
    async fn unless_leader_moves<R>(
        &self,
        id: NodeId,
        what: &str,
        send: impl Future<Output = Result<R, RpcError>>,
        deadline: Instant,
    ) -> Result<R, RpcError> {
        let term = self.node.metrics().term;
        self.unless_leader_moves_since(id, term, what, send, deadline).await
    }

    /// [`CommandService::unless_leader_moves`], watching for a newer leader
    /// than the one of `term`.
    async fn unless_leader_moves_since<R>(
        &self,
        id: NodeId,
        term: u64,
        what: &str,
        send: impl Future<Output = Result<R, RpcError>>,
        deadline: Instant,
    ) -> Result<R, RpcError> {
        let started = Instant::now();
        let moved = async {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let moved =
                self.node.wait_for_leadership(remaining, |m| leader_moved(m, term, id)).await;
            match moved {
                Ok(m) => m.leader.unwrap_or_default(),
                // Raft stopped or the deadline passed: the attempt decides.
                Err(_) => std::future::pending().await,
            }
        };
        // An answer that arrived as the leader moved is the answer.
        answer_unless(send, moved).await.unwrap_or_else(|new| {
            Err(RpcError::Timeout {
                what: format!(
                    "{what} at leader {id}, which lost its leadership to {new} (outcome unknown)"
                ),
                after: started.elapsed(),
            })
        })
    }

    /// Turns another node's answer into done, retry, or a final error
    /// (`route::after_forward`).
    fn remote_result<T>(&self, result: Result<T, RpcError>) -> Result<Retry<T>, RpcError> {
        match result {
            Ok(answer) => Ok(Retry::Done(answer)),
            Err(err) => Retry::after(route::after_forward(&err), err),
        }
    }

    /// An error unless this node is the leader: joins and removals are
    /// answered by the leader only, never forwarded.
    fn leader_only(&self) -> Result<(), RpcError> {
        if self.node.metrics().role == Role::Leader {
            Ok(())
        } else {
            Err(RpcError::NotLeader { leader: self.leader_hint(None) })
        }
    }

    /// Runs a membership change on this node while it leads, one at a
    /// time, retrying while another change is in progress or one timed
    /// out, until `deadline`. `attempt` gets the time left, and waits for
    /// the membership lock within it ([`CommandService::membership_lock`]).
    async fn on_leader<F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<(), RpcError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<(), Failed>>,
    {
        let mut backoff = Backoff::new(self.config.min_backoff, self.config.max_backoff);
        loop {
            self.check_fatal()?;
            self.leader_only()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last = match attempt(remaining).await {
                Ok(()) => return Ok(()),
                Err(Failed::Finally(err)) => return Err(err),
                Err(Failed::ForNow(err)) => err,
            };
            let now = Instant::now();
            if !backoff.fits(now, deadline) {
                return Err(last);
            }
            tokio::time::sleep(backoff.pause(now, deadline)).await;
            backoff.grow();
        }
    }

    /// Adds the calling node (on the leader only): as a learner, then as a
    /// voter once it has caught up. If another incarnation of the same
    /// stable id is a member, the new one takes its place in one joint
    /// change, so the number of voters never drops. Joining again is
    /// harmless, and replaces the caller's record if it changed (a member
    /// restarted with its state on other ports).
    ///
    /// Refused unless the request's stable id and addresses are `caller`'s,
    /// its cluster id is this node's, and its raft id is `node_id(stable
    /// id, incarnation)` and not another node's member id.
    pub async fn join(
        &self,
        request: &JoinRequest,
        caller: &Caller,
        deadline: impl Into<Instant>,
    ) -> Result<(), RpcError> {
        let deadline: Instant = deadline.into();
        self.check_fatal()?;
        self.leader_only()?;
        self.check_join(request, caller)?;
        self.on_leader(deadline, |remaining| self.join_here(request, remaining)).await
    }

    fn check_join(&self, request: &JoinRequest, caller: &Caller) -> Result<(), RpcError> {
        check_node(&request.node).map_err(RpcError::bad_request)?;
        let stable_id = &request.node.stable_id;
        if *stable_id != caller.stable_id {
            return Err(RpcError::Forbidden(format!(
                "node {:?} cannot join as {stable_id:?}",
                caller.stable_id
            )));
        }
        if let Some(foreign) = request.node.addrs.iter().find(|ip| !caller.owns(**ip)) {
            return Err(RpcError::Forbidden(format!(
                "address {foreign} is not one of node {stable_id:?}'s tailnet addresses {:?}",
                caller.addrs
            )));
        }
        match self.node.cluster_id() {
            Some(own) if own == request.cluster_id => {}
            own => {
                return Err(RpcError::Forbidden(format!(
                    "this is cluster {}, not {}",
                    own.map(|id| id.to_string()).unwrap_or_else(|| "(none)".to_owned()),
                    request.cluster_id
                )));
            }
        }
        if request.incarnation == 0 || request.id != node_id(stable_id, request.incarnation) {
            return Err(RpcError::bad_request(format!(
                "raft id {} is not the id of {stable_id:?} incarnation {:016x}",
                request.id, request.incarnation
            )));
        }
        Ok(())
    }

    /// Takes the membership lock (changes one at a time), waiting for it
    /// at most `remaining`, the time left to the attempt: another change
    /// may hold it for long (an `AddLearner` waiting for a slow learner, a
    /// change that cannot commit), and a call must end by its caller's
    /// deadline (finding 57). Once it has the lock, checks again that this
    /// node leads (`NotLeader` naming the leader otherwise). Gives the lock
    /// and the time left after the wait; at the end of the wait, a timeout
    /// the caller may retry: this change was not started.
    async fn membership_lock(
        &self,
        remaining: Duration,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Duration), Failed> {
        let until = Instant::now() + remaining;
        match tokio::time::timeout_at(until, self.membership.lock()).await {
            Ok(serial) => {
                // The wait may have lasted long enough for this node to
                // stop leading: the change then goes to the leader.
                self.leader_only().map_err(Failed::Finally)?;
                Ok((serial, until.saturating_duration_since(Instant::now())))
            }
            Err(_) => Err(Failed::ForNow(RpcError::Timeout {
                what: "waiting for another membership change to end (this one was not started)"
                    .to_owned(),
                after: remaining,
            })),
        }
    }

    async fn join_here(&self, request: &JoinRequest, remaining: Duration) -> Result<(), Failed> {
        let (_serial, remaining) = self.membership_lock(remaining).await?;
        let metrics = self.node.metrics();
        let stable_id = &request.node.stable_id;
        if let Some(known) = metrics.nodes.get(&request.id)
            && known.stable_id != *stable_id
        {
            return Err(Failed::Finally(RpcError::Forbidden(format!(
                "raft id {} belongs to member {:?}",
                request.id, known.stable_id
            ))));
        }
        // A member that restarted with its state on other ports (or
        // addresses) is reached only at its record: replace the record.
        // The raft id is the caller's own (checked above and in
        // `check_join`), so a node only ever moves its own record.
        if let Some(known) = metrics.nodes.get(&request.id)
            && *known != request.node
        {
            let timeout = remaining.min(self.config.catch_up_timeout);
            self.node
                .set_node(request.id, request.node.clone(), timeout)
                .await
                .map_err(|err| self.membership_error(err))?;
            tracing::info!(id = request.id, from = %known, to = %request.node, "member record updated");
        }
        if metrics.voters.contains(&request.id) {
            // Only once committed: a configuration still in the log may be
            // truncated by a later leader, and the caller would believe it
            // is a member when it is not (hostile review of finding 57).
            if metrics.membership_applied() {
                return Ok(());
            }
            return Err(Failed::ForNow(RpcError::Unavailable(format!(
                "raft id {} is a voter only in a configuration not committed yet",
                request.id
            ))));
        }
        let stale: BTreeSet<NodeId> = metrics
            .nodes
            .iter()
            .filter(|(id, node)| node.stable_id == *stable_id && **id != request.id)
            .map(|(id, _)| *id)
            .collect();
        let timeout = remaining.min(self.config.catch_up_timeout);
        self.node
            .replace(&stale, request.id, request.node.clone(), timeout)
            .await
            .map_err(|err| self.membership_error(err))?;
        if stale.is_empty() {
            tracing::info!(id = request.id, node = %request.node, "node joined as a voter");
        } else {
            tracing::info!(id = request.id, node = %request.node, ?stale, "new incarnation replaced the old one");
        }
        Ok(())
    }

    fn membership_error(&self, err: MembershipError) -> Failed {
        match err {
            MembershipError::NotLeader { leader } => {
                Failed::Finally(RpcError::NotLeader { leader: self.leader_hint(leader) })
            }
            MembershipError::InProgress => Failed::ForNow(RpcError::Unavailable(
                "another membership change is in progress".to_owned(),
            )),
            MembershipError::NotCaughtUp { id, waited } => Failed::Finally(RpcError::Timeout {
                what: format!("node {id} catching up"),
                after: waited,
            }),
            MembershipError::Timeout(after) => {
                Failed::ForNow(RpcError::Timeout { what: "membership change".to_owned(), after })
            }
            MembershipError::Fatal(ref why) => {
                Failed::Finally(RpcError::fatal_from(why.clone(), err))
            }
            other => Failed::Finally(RpcError::bad_request_from(other.to_string(), other)),
        }
    }

    /// Removes a member (on the leader only), if `caller` may: a node may
    /// remove itself (or an old incarnation of itself); a voter of this
    /// configuration may remove a member this node's view shows offline or
    /// untagged, if the remaining voters keep a reachable majority (the
    /// quorum guard, [`Peers::removal_keeps_quorum`]); nobody removes the
    /// leader through another node. Removing a non-member does nothing.
    pub async fn remove(
        &self,
        request: &RemoveRequest,
        caller: &Caller,
        deadline: impl Into<Instant>,
    ) -> Result<(), RpcError> {
        let deadline: Instant = deadline.into();
        self.on_leader(deadline, |remaining| async move {
            let (_serial, remaining) = self.membership_lock(remaining).await?;
            let metrics = self.node.metrics();
            let Some(target) = metrics.nodes.get(&request.id) else { return Ok(()) };
            if target.stable_id != caller.stable_id {
                let votes = metrics
                    .voters
                    .iter()
                    .any(|v| metrics.nodes.get(v).is_some_and(|n| n.stable_id == caller.stable_id));
                if !votes {
                    return Err(Failed::Finally(RpcError::Forbidden(format!(
                        "node {:?} is not a voter of this cluster: only members remove others",
                        caller.stable_id
                    ))));
                }
                if request.id == self.node.id() {
                    return Err(Failed::Finally(RpcError::Forbidden(format!(
                        "node {:?} cannot remove the leader",
                        caller.stable_id
                    ))));
                }
                if self.peers.tagged_online(&target.stable_id) {
                    return Err(Failed::Finally(RpcError::Forbidden(format!(
                        "node {:?} cannot remove {:?}: it is tagged and online (membership \
                         follows tags; revoke its tag, or let it leave)",
                        caller.stable_id, target.stable_id
                    ))));
                }
                if metrics.voters.contains(&request.id)
                    && let Err(why) = self.peers.removal_keeps_quorum(request.id, &metrics)
                {
                    return Err(Failed::Finally(RpcError::Forbidden(format!(
                        "node {:?} cannot remove voter {:?}: {why}",
                        caller.stable_id, target.stable_id
                    ))));
                }
            }
            self.node.remove(request.id, remaining).await.map_err(|err| self.membership_error(err))
        })
        .await
    }

    /// Asks the leader, wherever it is, to remove `request.id` on this
    /// node's behalf (see [`CommandService::remove`] for who may remove
    /// whom).
    pub async fn remove_via_leader(
        &self,
        request: &RemoveRequest,
        deadline: impl Into<Instant>,
    ) -> Result<(), RpcError> {
        let deadline: Instant = deadline.into();
        let caller = self.own_caller();
        self.with_leader("remove", deadline, Origin::Client, |target| {
            let caller = caller.clone();
            async move {
                match target {
                    Target::Local => match self.remove(request, &caller, deadline).await {
                        Ok(()) => Ok(Retry::Done(())),
                        Err(RpcError::NotLeader { leader }) => {
                            Ok(Retry::Again { leader, error: None })
                        }
                        Err(err) => Err(err),
                    },
                    Target::Leader(id, leader) => {
                        // A removal is answered by the leader itself, after
                        // its membership change: no shorter attempt budget.
                        let send = self.client.post_to(
                            self.member(id),
                            &leader,
                            "/v1/remove",
                            request,
                            deadline,
                            Origin::Client,
                        );
                        let result: Result<serde_json::Value, RpcError> =
                            self.unless_leader_moves(id, "/v1/remove", send, deadline).await;
                        self.remote_result(result.map(|_| ()))
                    }
                }
            }
        })
        .await
    }

    /// Records this node, while it leads, where it runs now: its own
    /// record, never another's (the raft id and record are this node's
    /// own). For a member restarted on other ports or addresses that leads
    /// when it looks (the facade's start; finding 55); serialized with
    /// joins, removals and [`Change`]s under the same lock, which it waits
    /// for only within `deadline` (finding 58). Nothing to do if the
    /// membership already records this node so, or no longer holds it.
    pub async fn update_own_record(&self, deadline: impl Into<Instant>) -> Result<(), RpcError> {
        let deadline: Instant = deadline.into();
        let (id, node) = (self.node.id(), self.node.info());
        self.on_leader(deadline, |remaining| async move {
            let (_serial, remaining) = self.membership_lock(remaining).await?;
            match self.node.metrics().nodes.get(&id) {
                Some(recorded) if recorded != node => self
                    .node
                    .set_node(id, node.clone(), remaining)
                    .await
                    .map_err(|err| self.membership_error(err)),
                // Recorded so already, or removed meanwhile (the leader
                // that adds it back takes the record it answers with).
                _ => Ok(()),
            }
        })
        .await
    }

    /// Makes a membership change this node decided on as the leader (the
    /// facade's reconciler), serialized with joins and removals.
    pub async fn change(
        &self,
        change: &Change,
        deadline: impl Into<Instant>,
    ) -> Result<(), RpcError> {
        let deadline: Instant = deadline.into();
        self.on_leader(deadline, |remaining| async move {
            let (_serial, remaining) = self.membership_lock(remaining).await?;
            let result = match change {
                Change::AddLearner { id, node } => {
                    let timeout = remaining.min(self.config.catch_up_timeout);
                    self.node.add_learner(*id, node.clone(), timeout).await
                }
                Change::Promote { id } => self.node.promote(BTreeSet::from([*id]), remaining).await,
                Change::Replace { old, new } => match self.node.metrics().nodes.get(new) {
                    Some(node) => self.node.replace(old, *new, node.clone(), remaining).await,
                    None => Err(MembershipError::Other(format!("{new} is not a member"))),
                },
                Change::Remove { id } => self.node.remove(*id, remaining).await,
            };
            result.map_err(|err| self.membership_error(err))
        })
        .await
    }

    /// The read index, answered by the leader only.
    pub async fn read_index(
        &self,
        deadline: impl Into<Instant>,
    ) -> Result<ReadIndexResponse, RpcError> {
        let deadline: Instant = deadline.into();
        self.check_fatal()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self.node.read_index(remaining).await {
            Ok(index) => Ok(ReadIndexResponse { index }),
            Err(ReadError::NotLeader { leader }) => {
                Err(RpcError::NotLeader { leader: self.leader_hint(leader) })
            }
            Err(ReadError::QuorumNotReached(why)) => Err(RpcError::NoQuorum(why)),
            Err(ReadError::Timeout(after)) => {
                Err(RpcError::Timeout { what: "read index".to_owned(), after })
            }
            Err(err) => Err(RpcError::fatal_from(err.to_string(), err)),
        }
    }

    /// Answers a query, linearizable or local. A linearizable read on a
    /// follower asks the leader for its read index and waits until this node
    /// has applied it.
    pub async fn read(
        &self,
        request: &ReadRequest,
        deadline: impl Into<Instant>,
    ) -> Result<ReadResponse, RpcError> {
        let deadline: Instant = deadline.into();
        self.check_fatal()?;
        let query = request.query.get().as_bytes();
        if request.consistency == Consistency::Local {
            let index = self.node.metrics().last_applied.unwrap_or(0);
            return Ok(ReadResponse {
                result: raw(self.node.query_local(query), "query answer")?,
                index,
            });
        }
        let index = self
            .with_leader("linearizable read", deadline, Origin::Client, |target| async move {
                match target {
                    Target::Local => match self.read_index(deadline).await {
                        Ok(r) => Ok(Retry::Done(r.index)),
                        Err(err) => Retry::after(route::after_read_index(&err), err),
                    },
                    Target::Leader(id, leader) => {
                        let body = serde_json::json!({});
                        let result: Result<ReadIndexResponse, RpcError> =
                            self.forward(id, &leader, "/v1/read-index", &body, deadline).await;
                        self.remote_result(result.map(|r| r.index))
                    }
                }
            })
            .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.node.wait_applied(index, remaining).await.map_err(|err| match err {
            ReadError::Timeout(after) => {
                RpcError::Timeout { what: format!("applying up to read index {index}"), after }
            }
            other => RpcError::fatal_from(other.to_string(), other),
        })?;
        // The state must not have been poisoned while we waited.
        self.check_fatal()?;
        Ok(ReadResponse { result: raw(self.node.query_local(query), "query answer")?, index })
    }

    /// Starts an election on this node at the request of the leader it
    /// follows, which is handing its leadership over (`/v1/campaign`).
    /// Refused unless `caller` is that leader, the request's term is this
    /// node's, this node votes, and its log reaches the leader's last
    /// index. Raft's rules decide whether the election succeeds.
    pub async fn campaign(
        &self,
        request: &CampaignRequest,
        caller: &Caller,
    ) -> Result<(), RpcError> {
        self.check_fatal()?;
        let m = self.node.metrics();
        let leader = m.leader.and_then(|id| m.nodes.get(&id));
        if leader.is_none_or(|node| node.stable_id != caller.stable_id) {
            return Err(RpcError::Forbidden(format!(
                "node {:?} is not the leader this node follows; only that leader may ask it to \
                 campaign",
                caller.stable_id
            )));
        }
        if request.term != m.term {
            return Err(RpcError::bad_request(format!(
                "the request is for term {}, this node is in term {}",
                request.term, m.term
            )));
        }
        if !m.voters.contains(&m.id) {
            return Err(RpcError::bad_request("this node is not a voter".to_owned()));
        }
        let have = m.last_log_index.unwrap_or(0);
        if have < request.last_log_index {
            return Err(RpcError::Unavailable(format!(
                "this node's log reaches index {have}, not yet the leader's {}",
                request.last_log_index
            )));
        }
        self.node.campaign().await.map_err(|e| RpcError::fatal_from(e.to_string(), e))
    }

    /// The configuration as this node knows it, and who this node is.
    pub async fn cluster(&self) -> ClusterInfo {
        let m = self.node.metrics();
        let members = m
            .nodes
            .iter()
            .map(|(id, node)| Member { id: *id, node: node.clone(), voter: m.voters.contains(id) })
            .collect();
        ClusterInfo {
            node: m.id,
            stable_id: self.node.info().stable_id.clone(),
            incarnation: self.node.incarnation(),
            cluster_id: self.node.cluster_id(),
            initialized: self.node.is_initialized().await,
            leader: m.leader,
            term: m.term,
            members,
            self_node: self.node.info().clone(),
        }
    }
}

/// What became of one forwarded attempt of an execute.
enum Forwarded {
    /// Written to the leader (or maybe): its answer or error.
    Sent(Result<ExecuteResponse, RpcError>),
    /// Never written to the wire, so not applied: why.
    NotSent(String),
}

/// Whether this node's view `m` shows that the leader `id`, chosen in
/// `term`, has lost its leadership: a newer term has another leader.
fn leader_moved(m: &raft_core::NodeMetrics, term: u64, id: NodeId) -> bool {
    m.term > term && m.leader.is_some_and(|l| l != id)
}

/// Why a membership attempt on the leader failed.
enum Failed {
    /// It may succeed if tried again (another change in progress, a
    /// timeout).
    ForNow(RpcError),
    /// It will not.
    Finally(RpcError),
}

/// One attempt's result.
enum Retry<T> {
    /// Final answer.
    Done(T),
    /// Try again, at the hinted leader if any; `error` is what to report if
    /// the deadline passes first.
    Again { leader: Option<LeaderHint>, error: Option<RpcError> },
}

impl<T> Retry<T> {
    /// What `err` becomes after `next`, the decision about it.
    fn after(next: Next, err: RpcError) -> Result<Retry<T>, RpcError> {
        match next {
            Next::Retry { leader, report } => {
                Ok(Retry::Again { leader, error: report.then_some(err) })
            }
            Next::Fail => Err(err),
        }
    }
}

impl<T> std::fmt::Debug for Retry<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retry::Done(_) => f.write_str("Done"),
            Retry::Again { leader, .. } => write!(f, "Again({:?})", leader.as_ref().map(|l| l.id)),
        }
    }
}
