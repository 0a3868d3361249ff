//! Exactly-once execution: pooled sessions, and [`Operation`], a command
//! bound to one session and sequence number until it is dropped.
//!
//! Sessions are registered through the cluster's log (the cluster assigns
//! their ids) and pooled: each in-flight command has a session of its own,
//! and a session goes back to the pool at the next sequence number when its
//! command is done with, whatever the outcome. A late copy of an earlier
//! command then finds the session past it and is not applied.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmd_rpc::{CommandService, ErrorCode, ExecuteRequest, Origin, RpcError};
use raft_core::ClientId;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::Instrument;

use crate::core::Core;
use crate::error::Error;
use crate::machine::{Adapter, StateMachine, decode_answer};

/// Idle sessions kept for reuse.
const MAX_IDLE_SESSIONS: usize = 1024;
/// Sessions an operation replaces (its session expired before anything of
/// it was applied) before it gives up.
const MAX_REPLACED_SESSIONS: usize = 8;

/// Idle sessions: (client id, next sequence number).
#[derive(Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<(ClientId, u64)>>,
}

impl SessionPool {
    /// An idle session, or a new one registered through the leader.
    async fn take<S: StateMachine>(
        &self,
        service: &CommandService<Adapter<S>>,
        deadline: Instant,
    ) -> Result<(ClientId, u64), Error> {
        if let Some(session) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(session);
        }
        let registered = service.register(deadline, Origin::Client).await.map_err(unregistered)?;
        let client = u128::from_str_radix(&registered.client, 16).map_err(|e| {
            let message =
                format!("the leader assigned a malformed session {:?}", registered.client);
            Error::network_from(message, e)
        })?;
        Ok((ClientId(client), 1))
    }

    /// Forgets every idle session: one of them expired, and the others were
    /// given back no later than it (sessions expire by age and by least
    /// recent use), so they are likely gone too.
    fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn give_back(&self, client: ClientId, next_seq: u64) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push((client, next_seq));
        }
    }
}

/// One command, bound to a session and sequence number so that it can be
/// executed again after any error and is still applied at most once.
///
/// Made by [`Consensus::prepare`](crate::Consensus::prepare). The first
/// [`execute`](Operation::execute) takes a session (from the pool, or
/// registered through the leader); every later call retries the same
/// `(session, sequence number, command)`, which the cluster answers from the
/// session if it was applied already. Dropping the operation gives the
/// session back for the next command.
///
/// If the session expires before the first attempt reaches it, the
/// operation moves to a new session by itself (nothing was applied). If it
/// expires after an attempt whose outcome is unknown, or moves past the
/// command's sequence number, the outcome can no longer be learned:
/// `execute` then answers [`Error::OutcomeUnknown`], now and on every later
/// call. Once the cluster answered the command, every later call answers
/// that again without sending it, whether or not its session still keeps
/// the answer. A call that only repeats an outcome settled that way is
/// not counted again in the node's metrics (`tsconsensus_commands_total`
/// counts a command's `ok` once, however often its answer is read).
///
/// Memory: an operation keeps the command and, once answered, the raw
/// bytes of the answer (as the leader sent them, before decoding) until it
/// is dropped; drop operations you are done with rather than keeping many
/// answered ones around.
pub struct Operation<S: StateMachine> {
    core: Arc<Core<S>>,
    sessions: Arc<SessionPool>,
    /// The rest of the node (its servers and background tasks), kept alive
    /// while the operation lives, as a handle keeps it.
    _node: Arc<dyn Send + Sync>,
    command: Box<RawValue>,
    /// The session and this command's sequence number in it, once taken.
    session: Option<(ClientId, u64)>,
    /// An earlier attempt ended without a known outcome.
    maybe_applied: bool,
    /// An attempt heard that the command was applied, its answer not
    /// kept: every later call says so without sending it again.
    applied: bool,
    /// Why the outcome can no longer be learned, once that is so.
    lost: Option<String>,
    /// The cluster's answer, once an attempt got it: every later call
    /// answers it again (the session that keeps it may expire).
    answered: Option<Box<RawValue>>,
}

impl<S: StateMachine> std::fmt::Debug for Operation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("session", &self.session)
            .field("maybe_applied", &self.maybe_applied)
            .field("applied", &self.applied)
            .field("lost", &self.lost)
            .field("answered", &self.answered.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Operation<S> {
    pub(crate) fn new(
        core: Arc<Core<S>>,
        sessions: Arc<SessionPool>,
        node: Arc<dyn Send + Sync>,
        command: Box<RawValue>,
    ) -> Operation<S> {
        Operation {
            core,
            sessions,
            _node: node,
            command,
            session: None,
            maybe_applied: false,
            applied: false,
            lost: None,
            answered: None,
        }
    }

    /// Executes the command, or, after an earlier error, tries again to
    /// learn its outcome, applying it if it was not applied yet. After an
    /// answer, answers it again without sending anything. Uses the node's
    /// default deadline.
    pub async fn execute(&mut self) -> Result<S::Response, Error> {
        self.execute_within(self.core.config.timing.call_deadline).await
    }

    /// [`Operation::execute`] with its own deadline.
    pub async fn execute_within(&mut self, deadline: Duration) -> Result<S::Response, Error> {
        // An outcome an earlier call settled is given again uncounted: it
        // was counted when it was settled (issue 12: before, every call on
        // an answered operation counted one more `ok`).
        if let Some(settled) = self.settled() {
            self.core.check_running()?;
            return settled;
        }
        let started = Instant::now();
        let result = self.attempt_within(deadline).await;
        self.core.counters.command_done(&result, started.elapsed());
        result
    }

    /// The outcome an earlier call settled for good, if one did: the
    /// cluster's answer, which stands even once the session that keeps it
    /// expired (issue 12: before, a later call asked the session again,
    /// and an expired one made it `OutcomeUnknown`); an outcome that can no
    /// longer be learned; or applied, its answer not kept.
    fn settled(&self) -> Option<Result<S::Response, Error>> {
        if let Some(answer) = &self.answered {
            return Some(decode_answer(answer.get()));
        }
        if let Some(why) = &self.lost {
            return Some(Err(Error::OutcomeUnknown(why.clone())));
        }
        self.applied.then_some(Err(Error::AnswerNotKept))
    }

    async fn attempt_within(&mut self, deadline: Duration) -> Result<S::Response, Error> {
        self.core.check_running()?;
        let deadline = Instant::now() + deadline;
        let service = &self.core.service;
        let mut replaced = 0;
        loop {
            let (client, seq) = match self.session {
                Some(session) => session,
                None => {
                    let taken = self.sessions.take(service, deadline).await;
                    let session = taken.map_err(|err| known_error(err, self.maybe_applied))?;
                    self.session = Some(session);
                    session
                }
            };
            let earlier = self.maybe_applied;
            let request = ExecuteRequest {
                client: client.to_string(),
                seq,
                command: self.command.clone(),
                retry: earlier,
            };
            // Until this attempt answers, its outcome is unknown: if the
            // caller drops this future, the next call must know.
            self.maybe_applied = true;
            // The command's request id is its (client, seq).
            let span = tracing::debug_span!("execute", client = %client, seq);
            let err =
                match service.execute(&request, deadline, Origin::Client).instrument(span).await {
                    Ok(response) => {
                        let answer = decode_answer(response.result.get());
                        self.answered = Some(response.result);
                        return answer;
                    }
                    Err(err) => err,
                };
            match applied_after(&err, earlier) {
                Applied::Yes => {
                    self.applied = true;
                    return Err(Error::from(err));
                }
                Applied::Maybe => self.maybe_applied = true,
                Applied::No => self.maybe_applied = false,
            }
            match after_session(&err.code(), earlier) {
                // Nothing of this command was applied: a new session is
                // safe. The old one is not given back (expired, or out of
                // step with the numbers this node gives out).
                AfterSession::NewSession => {
                    self.session = None;
                    // The pool's other sessions are as old or older: without
                    // this, a pool of expired sessions used up the
                    // operation's replacements, each one a committed entry,
                    // and failed a command that was never applied (review
                    // finding).
                    if err.code() != ErrorCode::SequenceReused {
                        self.sessions.forget_idle();
                    }
                    replaced += 1;
                    if replaced >= MAX_REPLACED_SESSIONS || Instant::now() >= deadline {
                        return Err(Error::from(err));
                    }
                    tracing::debug!(%client, code = %err.code(), "the session cannot take the command; using a new one");
                }
                AfterSession::Lost => {
                    self.session = None;
                    let why = format!(
                        "the session can no longer say whether an earlier attempt was applied ({err})"
                    );
                    self.lost = Some(why.clone());
                    return Err(Error::OutcomeUnknown(why));
                }
                AfterSession::Pass => return Err(caller_error(err, self.maybe_applied)),
            }
        }
    }
}

impl<S: StateMachine> Drop for Operation<S> {
    fn drop(&mut self) {
        // Done with, whatever its outcome: the session moves past this
        // command, so a late copy of it is never applied.
        if let Some((client, seq)) = self.session.take() {
            self.sessions.give_back(client, seq + 1);
        }
    }
}

/// Whether a command may have been applied once an attempt of it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    /// No attempt of it was applied.
    No,
    /// An attempt may have been.
    Maybe,
    /// It was (its answer was not kept, or too large to read here).
    Yes,
}

/// What is known of the command after an attempt failed with `err`,
/// `earlier` saying whether an earlier attempt may have been applied.
/// `answer_not_kept` is a known outcome that says *applied*: taking it for
/// "not applied, as before" let a later call, after the session expired,
/// move the command to a new session and apply it again (review finding).
fn applied_after(err: &RpcError, earlier: bool) -> Applied {
    match err.code() {
        ErrorCode::AnswerNotKept => Applied::Yes,
        _ if err.outcome_unknown() || earlier => Applied::Maybe,
        _ => Applied::No,
    }
}

/// What an operation does after an attempt failed with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterSession {
    /// Nothing of the command was applied: it goes again in a new session.
    NewSession,
    /// Whether it was applied can no longer be learned: the caller hears
    /// [`Error::OutcomeUnknown`], now and on every later call.
    Lost,
    /// Not the session's answer: the error goes to the caller.
    Pass,
}

/// What the session's own answers mean for an operation, `earlier` saying
/// whether an earlier attempt of it may have been applied. The facade
/// gives out client ids and sequence numbers itself, and one operation
/// has its session to itself, so none of these is the caller's mistake:
///
/// - `session_expired`, `unknown_session`: the session is gone; this
///   attempt was not applied. With no earlier attempt that may have been,
///   nothing was; otherwise nobody can tell any more.
/// - `sequence_reused`: the session applied another command under this
///   number (the session is out of step with this node's numbering): this
///   command was not applied under it. Treated as an expired session,
///   since with an earlier unknown attempt the session was not the one
///   this node thought.
/// - `stale_sequence`: the session moved past this number; whether an
///   earlier attempt of this command was applied, it no longer says
///   (cmd-rpc counts it an unknown outcome).
/// - `session_expired_outcome_unknown`: said so already.
fn after_session(code: &ErrorCode, earlier: bool) -> AfterSession {
    match code {
        ErrorCode::SessionExpired | ErrorCode::UnknownSession | ErrorCode::SequenceReused
            if !earlier =>
        {
            AfterSession::NewSession
        }
        ErrorCode::SessionExpired
        | ErrorCode::UnknownSession
        | ErrorCode::SequenceReused
        | ErrorCode::StaleSequence
        | ErrorCode::SessionExpiredOutcomeUnknown => AfterSession::Lost,
        _ => AfterSession::Pass,
    }
}

/// What the caller of an operation hears for `err`, `maybe_applied`
/// saying whether an attempt of it (this call's or an earlier one's) may
/// have been applied: a `not_started` says "not applied" of this call
/// only, so after an attempt that may have been it is a timeout (the
/// command may still be applied), never [`Error::NotApplied`]. A timeout
/// says that it is the command's.
fn caller_error(err: RpcError, maybe_applied: bool) -> Error {
    known_error(Error::from(err), maybe_applied)
}

/// [`caller_error`] for an error already the caller's.
fn known_error(err: Error, maybe_applied: bool) -> Error {
    match err {
        Error::NotApplied(why) if maybe_applied => Error::command_timeout(format!(
            "{why} (this call's attempts were not applied; an earlier one's outcome is still \
             unknown)"
        )),
        Error::Timeout(why) => Error::command_timeout(why),
        other => other,
    }
}

/// What the caller of an operation hears when no session could be
/// registered for its command (`err`, the registration's error): the
/// command was never proposed, so an error that says the registration may
/// still be applied (a timeout, a leader lost while its entry was out)
/// says of the command that it was not applied (issue 12: before, the
/// caller heard `Error::Timeout`, "the command may still be applied").
/// Other errors keep their kind ([`Error::NoLeader`] says as much already).
fn unregistered(err: RpcError) -> Error {
    match Error::from(err) {
        Error::Timeout(why) | Error::OutcomeUnknown(why) => Error::NotApplied(format!(
            "no session could be registered for the command, so it was never proposed ({why})"
        )),
        other => other,
    }
}

impl From<RpcError> for Error {
    fn from(err: RpcError) -> Error {
        use cmd_rpc::RpcError as E;
        let message = err.to_string();
        match err {
            // Not applied, when it says so (code `not_started`); the
            // operation knows that from the code.
            E::NoLeader { waited } | E::NoLeaderNotStarted { waited, .. } => {
                return Error::NoLeader { waited };
            }
            E::TooLarge { .. } | E::BadRequest { .. } => return Error::invalid_from(message, err),
            // Only this node shutting down is `Stopped`; a running node
            // that cannot do this now (another membership change in
            // progress, still starting) says so.
            E::ShuttingDown => return Error::Stopped,
            E::Unavailable(why) => return Error::Unavailable(why),
            E::NoQuorum(why) => return Error::QuorumUnavailable(why),
            E::Fatal { message: ref why, .. } => return Error::fatal_from(why.clone(), err),
            // Its reason; the variant says it was not applied.
            E::NotStarted(why) => return Error::NotApplied(why),
            _ => {}
        }
        // Local or passed on from another node: the code says what it was.
        match err.code() {
            ErrorCode::Timeout | ErrorCode::Fatal => Error::Timeout(message),
            ErrorCode::SessionExpiredOutcomeUnknown | ErrorCode::StaleSequence => {
                Error::OutcomeUnknown(message)
            }
            ErrorCode::AnswerNotKept => Error::AnswerNotKept,
            // The leader's own read index, asked for by this node.
            ErrorCode::NoQuorum => Error::QuorumUnavailable(message),
            // Not applied, and an operation gave up moving to a new session
            // (its deadline passed, or too many in a row could not take
            // it); `execute` again tries once more. Never the caller's
            // mistake (the facade numbers commands). An operation reaches
            // this only when no earlier attempt may have been applied
            // (`after_session`); before, it was `Error::Timeout`, which says
            // the command may still be applied (issue 12).
            ErrorCode::SequenceReused | ErrorCode::SessionExpired | ErrorCode::UnknownSession => {
                Error::NotApplied(message)
            }
            // Never sent to the leader by the deadline (another node's
            // `not_started`): not applied, and the deadline passed;
            // `execute` again tries once more. An operation whose earlier
            // attempt may have been applied makes it `Error::Timeout`
            // (`caller_error`).
            ErrorCode::NotStarted => Error::NotApplied(message),
            _ => Error::network_from(message, err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use cmd_rpc::{ErrorBody, RpcError};

    use super::*;

    /// The session's own answers, for an operation with and without an
    /// earlier attempt that may have been applied: what it does next, and
    /// what its caller hears if it ends there. Before, all four of
    /// `stale_sequence`, `session_expired`, `unknown_session` and
    /// `sequence_reused` reached the caller as `Error::Invalid`, an input
    /// error, though the facade numbers commands itself, and
    /// `stale_sequence` says nothing of whether the command was applied.
    #[test]
    fn what_the_sessions_answers_mean_for_a_caller() {
        use AfterSession::{Lost, NewSession, Pass};
        let kind = |err: Error| match err {
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::Timeout(_) => "timeout",
            Error::NotApplied(_) => "not_applied",
            Error::AnswerNotKept => "answer_not_kept",
            Error::Invalid { .. } => "invalid",
            Error::Network { .. } => "network",
            other => panic!("{other:?}"),
        };
        // (code, next without / with an earlier unknown attempt, the
        // caller's error when the operation ends on it without `Lost`).
        let cases: [(&str, AfterSession, AfterSession, &str); 9] = [
            ("session_expired", NewSession, Lost, "not_applied"),
            ("unknown_session", NewSession, Lost, "not_applied"),
            ("sequence_reused", NewSession, Lost, "not_applied"),
            ("stale_sequence", Lost, Lost, "outcome_unknown"),
            ("session_expired_outcome_unknown", Lost, Lost, "outcome_unknown"),
            ("answer_not_kept", Pass, Pass, "answer_not_kept"),
            ("not_leader", Pass, Pass, "network"),
            ("bad_request", Pass, Pass, "network"),
            ("not_started", Pass, Pass, "not_applied"),
        ];
        for (wire, fresh, after_unknown, caller) in cases {
            let code = ErrorCode::from_wire(wire);
            assert_eq!(after_session(&code, false), fresh, "{wire}, no earlier attempt");
            assert_eq!(after_session(&code, true), after_unknown, "{wire}, after an unknown one");
            let body = ErrorBody { code, message: "m".to_owned(), leader: None };
            let err = Error::from(RpcError::from_remote(409, body));
            assert_eq!(kind(err), caller, "{wire}");
        }
    }

    /// A remote refusal with the wire code `wire`.
    fn remote(wire: &str) -> RpcError {
        let body =
            ErrorBody { code: ErrorCode::from_wire(wire), message: "m".to_owned(), leader: None };
        RpcError::from_remote(409, body)
    }

    /// Review finding: an attempt that heard `answer_not_kept` (applied)
    /// left the operation believing nothing was applied, so a later call
    /// whose session had expired moved the command to a new session and
    /// applied it a second time.
    #[test]
    fn an_answer_not_kept_means_applied_for_every_later_call() {
        let cases = [
            (remote("answer_not_kept"), false, Applied::Yes),
            (remote("answer_not_kept"), true, Applied::Yes),
            (RpcError::AnswerNotKept, false, Applied::Yes),
            (RpcError::AnswerTooLarge { leader: "l".to_owned(), limit: 1 }, false, Applied::Yes),
            (remote("session_expired"), false, Applied::No),
            (remote("session_expired"), true, Applied::Maybe),
            (remote("not_leader"), false, Applied::No),
            (remote("timeout"), false, Applied::Maybe),
            (remote("stale_sequence"), false, Applied::Maybe),
            // Issue 12: cmd-rpc answers `not_started` for a call nothing of
            // which was written to a leader (no leader for its deadline,
            // every dial failed): not applied, so not "maybe" for good.
            (remote("not_started"), false, Applied::No),
            (RpcError::NotStarted("no answer in time".to_owned()), false, Applied::No),
            (
                RpcError::NoLeaderNotStarted { waited: Duration::ZERO, earlier: None },
                false,
                Applied::No,
            ),
            (
                RpcError::NoLeaderNotStarted { waited: Duration::ZERO, earlier: None },
                true,
                Applied::Maybe,
            ),
            (remote("not_started"), true, Applied::Maybe),
        ];
        for (err, earlier, want) in cases {
            assert_eq!(applied_after(&err, earlier), want, "{err}, earlier {earlier}");
        }
        // A call that found no leader is still `Error::NoLeader` to the
        // caller, not applied.
        let err = Error::from(RpcError::NoLeaderNotStarted {
            waited: Duration::from_secs(3),
            earlier: None,
        });
        assert!(matches!(err, Error::NoLeader { waited } if waited.as_secs() == 3), "{err:?}");
    }

    /// This node's own command-API errors, as its caller hears them. Before,
    /// every local `unavailable` was `Error::Stopped`, so a running leader
    /// whose removal met another membership change in progress until its
    /// deadline reported itself stopped; only shutting down is.
    #[test]
    fn what_this_nodes_own_errors_mean_for_a_caller() {
        let kind = |err: &Error| match err {
            Error::Stopped => "stopped",
            Error::Unavailable(_) => "unavailable",
            Error::Timeout(_) => "timeout",
            Error::NotApplied(_) => "not_applied",
            Error::NoLeader { .. } => "no_leader",
            Error::QuorumUnavailable(_) => "quorum_unavailable",
            Error::Fatal { .. } => "fatal",
            Error::Invalid { .. } => "invalid",
            Error::Network { .. } => "network",
            other => panic!("{other:?}"),
        };
        let in_progress = "another membership change is in progress";
        let starting = "starting: this node has not heard from every tagged peer yet";
        let remote_unavailable = RpcError::from_remote(
            503,
            ErrorBody {
                code: ErrorCode::Unavailable,
                message: "node is shutting down".to_owned(),
                leader: None,
            },
        );
        let cases: Vec<(RpcError, &str)> = vec![
            (RpcError::ShuttingDown, "stopped"),
            (RpcError::Unavailable(in_progress.to_owned()), "unavailable"),
            (RpcError::Unavailable(starting.to_owned()), "unavailable"),
            // Another node shutting down is not this node stopped.
            (remote_unavailable, "network"),
            (RpcError::NoLeader { waited: Duration::from_secs(1) }, "no_leader"),
            (
                RpcError::Timeout { what: "membership change".to_owned(), after: Duration::ZERO },
                "timeout",
            ),
            (RpcError::LeaderLost { what: "execute".to_owned() }, "timeout"),
            (RpcError::NotStarted("no batch".to_owned()), "not_applied"),
            (RpcError::NoQuorum("2 of 5".to_owned()), "quorum_unavailable"),
            (RpcError::fatal("disk"), "fatal"),
            (RpcError::bad_request("x"), "invalid"),
        ];
        for (rpc, want) in cases {
            let shown = rpc.to_string();
            let err = Error::from(rpc);
            assert_eq!(kind(&err), want, "{shown}");
            if want == "unavailable" {
                assert!(err.to_string().contains(&shown["unavailable: ".len()..]), "{err}");
            }
        }
    }

    /// Issue 12: a command known not applied (cmd-rpc's `not_started`:
    /// nothing of the call was written to a leader or proposed in time; or
    /// an operation that gave up moving to a new session before anything
    /// of it was applied) reached its caller as `Error::Timeout`, whose
    /// text says the command "may still be applied". The caller hears that
    /// it was not applied, under its own outcome label (`not_applied`).
    #[test]
    fn a_command_known_not_applied_is_not_reported_as_maybe_applied() {
        let why = "execute: nothing of it was proposed here or written to a leader within 3ms";
        for rpc in [
            RpcError::NotStarted(why.to_owned()),
            remote("not_started"),
            remote("session_expired"),
            remote("unknown_session"),
            remote("sequence_reused"),
        ] {
            let shown = rpc.to_string();
            let err = Error::from(rpc);
            let text = err.to_string();
            assert!(!text.contains("may still be applied"), "{shown}: {text}");
            assert!(text.contains("not applied"), "{shown}: {text}");
        }
        let err = Error::from(RpcError::NotStarted(why.to_owned()));
        assert_eq!(err.to_string(), format!("not applied within the deadline: {why}"));
    }

    /// `not_started` speaks of this call only: after an attempt that may
    /// have been applied (an earlier call's, or this one's), the caller
    /// still hears that the command may be applied.
    #[test]
    fn not_started_after_an_attempt_that_may_have_been_applied_is_a_timeout() {
        let not_started = || RpcError::NotStarted("no free request slot".to_owned());
        assert!(matches!(caller_error(not_started(), false), Error::NotApplied(_)));
        let err = caller_error(not_started(), true);
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert!(err.to_string().contains("may still be applied"), "{err}");
        // Other errors are as `From` makes them, whatever the flag.
        let no_leader = RpcError::NoLeaderNotStarted { waited: Duration::ZERO, earlier: None };
        assert!(matches!(caller_error(no_leader, true), Error::NoLeader { .. }));
    }

    /// Before: the command API's error became `Error::Network(String)`,
    /// its kind lost. Now it is the error's source.
    #[test]
    fn a_network_error_keeps_the_command_apis_error_underneath() {
        let unreachable = RpcError::unreachable("10.0.0.2:6271", std::io::Error::other("reset"));
        let body = ErrorBody {
            code: ErrorCode::from_wire("leader_on_vacation"),
            message: "back soon".to_owned(),
            leader: None,
        };
        for rpc in [unreachable, RpcError::from_remote(418, body)] {
            let code = rpc.code();
            let err = Error::from(rpc);
            assert!(matches!(err, Error::Network { .. }), "{err:?}");
            let source = err.source().and_then(|s| s.downcast_ref::<RpcError>());
            assert_eq!(source.map(RpcError::code), Some(code), "{err:?}");
        }
    }

    /// Before: `Error::Invalid(String)` and `Error::Fatal(String)`, the
    /// command API's error (and what it kept underneath) flattened to
    /// text. Now the chain reaches the JSON error of a request that did
    /// not encode, and raft-core's error for a call that met a fatal one.
    #[test]
    fn invalid_and_fatal_errors_keep_what_they_came_from() {
        fn find<'a, T: std::error::Error + 'static>(
            err: &'a (dyn std::error::Error + 'static),
        ) -> Option<&'a T> {
            std::iter::successors(err.source(), |&e| e.source()).find_map(|e| e.downcast_ref::<T>())
        }
        let json = serde_json::from_str::<u64>("x").unwrap_err();
        let err = Error::from(RpcError::bad_request_from(format!("encode request: {json}"), json));
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
        assert!(find::<RpcError>(&err).is_some(), "{err:?}");
        assert!(find::<serde_json::Error>(&err).is_some(), "{err:?}");
        assert!(err.to_string().starts_with("invalid: bad request: encode request: "), "{err}");

        let proposed = raft_core::ProposeError::Fatal("disk full".to_owned());
        let err = Error::from(RpcError::fatal_from("disk full", proposed));
        assert!(matches!(&err, Error::Fatal { message, .. } if message == "disk full"), "{err:?}");
        assert_eq!(err.to_string(), "fatal: disk full");
        let under = find::<raft_core::ProposeError>(&err);
        assert!(matches!(under, Some(raft_core::ProposeError::Fatal(_))), "{err:?}");
    }
}
