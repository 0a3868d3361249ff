//! Exactly-once execution: pooled sessions, and [`Operation`], a command
//! bound to one session and sequence number until it is dropped.
//!
//! Sessions are registered through the cluster's log (the cluster assigns
//! their ids) and pooled: each in-flight command has a session of its own,
//! and a session goes back to the pool at the next sequence number when its
//! command is done with, whatever the outcome. A late copy of an earlier
//! command then finds the session past it and is not applied.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmd_rpc::{CommandService, ErrorCode, ExecuteRequest, Origin, RpcError};
use raft_core::ClientId;
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::error::Error;
use crate::machine::{Adapter, StateMachine, decode_answer};
use crate::node::Inner;

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
        let registered = service.register(deadline, Origin::Client).await?;
        let client = u128::from_str_radix(&registered.client, 16).map_err(|e| {
            let message =
                format!("the leader assigned a malformed session {:?}", registered.client);
            Error::network_from(message, e)
        })?;
        Ok((ClientId(client), 1))
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
/// expires after an attempt whose outcome is unknown, the outcome can no
/// longer be learned: `execute` then answers [`Error::OutcomeUnknown`], now
/// and on every later call.
pub struct Operation<S: StateMachine> {
    inner: Arc<Inner<S>>,
    command: Box<RawValue>,
    /// The session and this command's sequence number in it, once taken.
    session: Option<(ClientId, u64)>,
    /// An earlier attempt ended without a known outcome.
    maybe_applied: bool,
    /// Why the outcome can no longer be learned, once that is so.
    lost: Option<String>,
}

impl<S: StateMachine> std::fmt::Debug for Operation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("session", &self.session)
            .field("maybe_applied", &self.maybe_applied)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Operation<S> {
    pub(crate) fn new(inner: Arc<Inner<S>>, command: Box<RawValue>) -> Operation<S> {
        Operation { inner, command, session: None, maybe_applied: false, lost: None }
    }

    /// Executes the command, or, after an earlier error, tries again to
    /// learn its outcome, applying it if it was not applied yet. Uses the
    /// node's default deadline.
    pub async fn execute(&mut self) -> Result<S::Response, Error> {
        self.execute_within(self.inner.config.timing.call_deadline).await
    }

    /// [`Operation::execute`] with its own deadline.
    pub async fn execute_within(&mut self, deadline: Duration) -> Result<S::Response, Error> {
        let started = Instant::now();
        let result = self.attempt_within(deadline).await;
        self.inner.counters.command_done(&result, started.elapsed());
        result
    }

    async fn attempt_within(&mut self, deadline: Duration) -> Result<S::Response, Error> {
        self.inner.check_running()?;
        if let Some(why) = &self.lost {
            return Err(Error::OutcomeUnknown(why.clone()));
        }
        let deadline = Instant::now() + deadline;
        let service = &self.inner.service;
        let mut replaced = 0;
        loop {
            let (client, seq) = match self.session {
                Some(session) => session,
                None => {
                    let session = self.inner.sessions.take(service, deadline).await?;
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
                    Ok(response) => return decode_answer(response.result.get()),
                    Err(err) => err,
                };
            if !err.outcome_unknown() {
                self.maybe_applied = earlier;
            }
            match err.code() {
                // Nothing of this command was applied: a new session is safe.
                ErrorCode::SessionExpired | ErrorCode::UnknownSession if !earlier => {
                    self.session = None;
                    replaced += 1;
                    if replaced >= MAX_REPLACED_SESSIONS || Instant::now() >= deadline {
                        return Err(Error::from(err));
                    }
                    tracing::debug!(%client, "session expired before the command; using a new one");
                }
                ErrorCode::SessionExpired
                | ErrorCode::UnknownSession
                | ErrorCode::SessionExpiredOutcomeUnknown => {
                    self.session = None;
                    let why = format!(
                        "the session of an earlier attempt expired before its outcome was known ({err})"
                    );
                    self.lost = Some(why.clone());
                    return Err(Error::OutcomeUnknown(why));
                }
                _ => return Err(Error::from(err)),
            }
        }
    }
}

impl<S: StateMachine> Drop for Operation<S> {
    fn drop(&mut self) {
        // Done with, whatever its outcome: the session moves past this
        // command, so a late copy of it is never applied.
        if let Some((client, seq)) = self.session.take() {
            self.inner.sessions.give_back(client, seq + 1);
        }
    }
}

impl From<RpcError> for Error {
    fn from(err: RpcError) -> Error {
        use cmd_rpc::RpcError as E;
        let message = err.to_string();
        match err {
            E::NoLeader { waited } => return Error::NoLeader { waited },
            E::TooLarge { .. } | E::BadRequest(_) => return Error::Invalid(message),
            E::Unavailable(_) => return Error::Stopped,
            E::NoQuorum(why) => return Error::QuorumUnavailable(why),
            E::Fatal(why) => return Error::Fatal(why),
            _ => {}
        }
        // Local or passed on from another node: the code says what it was.
        match err.code() {
            ErrorCode::Timeout | ErrorCode::Fatal => Error::Timeout(message),
            ErrorCode::SessionExpiredOutcomeUnknown => Error::OutcomeUnknown(message),
            ErrorCode::AnswerNotKept => Error::AnswerNotKept,
            // The leader's own read index, asked for by this node.
            ErrorCode::NoQuorum => Error::QuorumUnavailable(message),
            ErrorCode::SequenceReused
            | ErrorCode::StaleSequence
            | ErrorCode::SessionExpired
            | ErrorCode::UnknownSession => Error::Invalid(message),
            _ => Error::network_from(message, err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use cmd_rpc::{ErrorBody, RpcError};

    use super::*;

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
}
