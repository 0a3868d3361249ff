//! Errors of the command API, and how each maps to HTTP and `{code, message,
//! leader}`.

use std::time::Duration;

use crate::api::{ErrorBody, LeaderHint};
use crate::code::ErrorCode;

/// An error underneath a command-API error (the transport's, HTTP's),
/// boxed. HTTP's errors are kept only as their words (a
/// [`raft_core::Cause`]): no hyper type is found by walking `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a command-API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No leader was elected within the deadline.
    #[error("no leader elected within {waited:?}; the cluster may have lost its quorum")]
    NoLeader {
        /// How long we waited.
        waited: Duration,
    },
    /// This node is not the leader (only for requests that are not forwarded).
    #[error("not the leader")]
    NotLeader {
        /// The leader, if known.
        leader: Option<LeaderHint>,
    },
    /// No outcome within the deadline. For an execute, the command may still
    /// be applied; retrying with the same client and sequence is safe.
    #[error("{what}: no outcome within {after:?}")]
    Timeout {
        /// What timed out.
        what: String,
        /// The deadline that ran out.
        after: Duration,
    },
    /// The leader lost its leadership while the command's entry was out:
    /// the entry may have been copied to another node and may still commit
    /// there, so the outcome is unknown (code `timeout`); retrying with the
    /// same client and sequence is safe.
    #[error(
        "{what}: the leader lost its leadership before the entry committed; the command may \
         still be applied (retry with the same client and sequence)"
    )]
    LeaderLost {
        /// What was being done.
        what: String,
    },
    /// The caller may not do this (its address may not use this port, or
    /// the request does not match its identity); the message says why.
    #[error("{0}")]
    Forbidden(String),
    /// A body larger than allowed.
    #[error("body of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its size (or the part read before giving up).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request is malformed (or, on the way out, could not be built).
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong, in words (the cause's own included). The wire's
        /// `message` is this error's text.
        message: String,
        /// The error that found it, when there is one (the JSON parser's,
        /// the HTTP body's, raft-core's refusal of a membership change);
        /// for checks of this crate's own the message is all there is.
        #[source]
        source: Option<Cause>,
    },
    /// The body did not arrive in time.
    #[error("request body not received within {0:?}")]
    SlowBody(Duration),
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The endpoint exists, the method does not.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// The session has moved past this sequence number: the command was
    /// not applied now (whether an earlier attempt was, the session no
    /// longer says; sequence numbers may skip).
    #[error(
        "sequence number is older than the session's last ({last_seq}); the command was not applied now"
    )]
    StaleSequence {
        /// The session's last applied sequence number.
        last_seq: u64,
    },
    /// The session expired (or was evicted) before this command was applied:
    /// it was not applied, and nothing more can be applied in the session.
    /// Retrying the command in a new session is safe.
    #[error(
        "session {client} has expired; the command was not applied (retry it in a new session)"
    )]
    SessionExpired {
        /// The session.
        client: String,
    },
    /// The session expired after an earlier attempt whose outcome was
    /// unknown: the command may or may not have been applied, and the
    /// session can no longer tell.
    #[error(
        "session {client} expired after an attempt whose outcome is unknown: the command may or may not have been applied"
    )]
    SessionExpiredOutcomeUnknown {
        /// The session.
        client: String,
    },
    /// No session with this client id was ever registered in this cluster;
    /// the command was not applied.
    #[error("no session {client} was ever registered in this cluster; the command was not applied")]
    UnknownSession {
        /// The client id.
        client: String,
    },
    /// The sequence number was already used in the session for another
    /// command; this one was not applied.
    #[error(
        "sequence number {seq} was already used in this session for a different command; not applied"
    )]
    SequenceReused {
        /// The sequence number.
        seq: u64,
    },
    /// The command was applied once, earlier; its answer was too large to be
    /// kept for retries, so it cannot be given again.
    #[error("the command was applied, but its answer was too large to be kept for a retry")]
    AnswerNotKept,
    /// The leader applied the command (its `/v1/execute` answered 200),
    /// but the answer is larger than this node reads from another node
    /// (`max_response`), so it cannot be given here. Applied, once: its
    /// code is `answer_not_kept`, as for an answer too large to keep, since
    /// a retry would read the same answer (the session keeps it) and be
    /// refused it again.
    #[error(
        "the command was applied at {leader}, but its answer is larger than this node's \
         {limit}-byte limit (max_response) and cannot be read here"
    )]
    AnswerTooLarge {
        /// The leader that answered.
        leader: String,
        /// This node's limit, in bytes.
        limit: usize,
    },
    /// A node asked to confirm a cluster being formed refused (decision
    /// 0003): it holds no promise to the caller, is bound to another
    /// cluster, or is a member already. The message says which.
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    /// The command was never sent to the leader before the call's deadline
    /// (it was still waiting for a batch, had less than 1 ms left when a
    /// batch was built, its leader lost its leadership before it went,
    /// batched or alone, every dial to the leader failed or found no free
    /// request slot, no time was left for an attempt, or the leader had
    /// no room to start it within its budget), and no earlier
    /// attempt of the call may have been applied: it was not applied, and
    /// may be sent again.
    #[error("not started: {0}; the command was not applied")]
    NotStarted(String),
    /// No leader was known for the whole of the call's deadline (or none
    /// at its end, after attempts none of which may have been applied):
    /// nothing of the command was written to a leader, so it was not
    /// applied (code `not_started`), and may be sent again.
    #[error(
        "not started: no leader elected within {waited:?}; the cluster may have lost its quorum \
         {}(the command was not applied)",
        earlier.as_deref().map(|why| format!("(earlier: {why}) ")).unwrap_or_default()
    )]
    NoLeaderNotStarted {
        /// How long the call waited.
        waited: Duration,
        /// Why an earlier attempt was not sent (every dial to the leader
        /// then known failed, ...), if one was made.
        earlier: Option<String>,
    },
    /// The service runs but cannot do this now (another membership change
    /// is in progress, this node is still starting, the leader is running
    /// as many batched commands as it takes and this one is a retry);
    /// trying again later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This node is shutting down. Its wire code is `unavailable`, as it
    /// has always been (a code older nodes do not know would end their
    /// calls instead of retrying them elsewhere); only this node's own
    /// callers can tell it apart, as this variant.
    #[error("unavailable: node is shutting down")]
    ShuttingDown,
    /// The leader could not confirm its leadership with a quorum of voters
    /// (too many of them stopped or unreachable), so it cannot answer a
    /// linearizable read.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Another node could not be reached.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// Which node.
        target: String,
        /// Why.
        reason: String,
        /// The error underneath, when there is one: the transport's as it
        /// is, an HTTP exchange's as its words ([`raft_core::Cause`]).
        #[source]
        source: Option<Cause>,
    },
    /// The node stopped on a fatal error (or met something that cannot
    /// happen: a stored answer that is not JSON).
    #[error("fatal: {message}")]
    Fatal {
        /// What failed, in words. For a node stopped on a fatal error this
        /// is raft-core's record of it, which is text by design
        /// (docs/ARCHITECTURE.md): then there is no source.
        message: String,
        /// The error underneath, when there is one (raft-core's error for
        /// the call that met the failure, a decoding error).
        #[source]
        source: Option<Cause>,
    },
    /// An error another node answered with, passed on unchanged.
    #[error("{}: {}", .body.code, .body.message)]
    Remote {
        /// Its HTTP status.
        status: u16,
        /// Its body.
        body: ErrorBody,
    },
}

impl RpcError {
    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::NoLeader { .. } => ErrorCode::NoLeader,
            RpcError::NotLeader { .. } => ErrorCode::NotLeader,
            RpcError::Timeout { .. } | RpcError::LeaderLost { .. } => ErrorCode::Timeout,
            RpcError::Forbidden(_) => ErrorCode::Forbidden,
            RpcError::TooLarge { .. } => ErrorCode::TooLarge,
            RpcError::BadRequest { .. } => ErrorCode::BadRequest,
            RpcError::SlowBody(_) => ErrorCode::SlowBody,
            RpcError::NotFound(_) => ErrorCode::NotFound,
            RpcError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            RpcError::StaleSequence { .. } => ErrorCode::StaleSequence,
            RpcError::SessionExpired { .. } => ErrorCode::SessionExpired,
            RpcError::SessionExpiredOutcomeUnknown { .. } => {
                ErrorCode::SessionExpiredOutcomeUnknown
            }
            RpcError::UnknownSession { .. } => ErrorCode::UnknownSession,
            RpcError::SequenceReused { .. } => ErrorCode::SequenceReused,
            RpcError::AnswerNotKept | RpcError::AnswerTooLarge { .. } => ErrorCode::AnswerNotKept,
            RpcError::NotConfirmed(_) => ErrorCode::NotConfirmed,
            RpcError::NotStarted(_) | RpcError::NoLeaderNotStarted { .. } => ErrorCode::NotStarted,
            RpcError::Unavailable(_) | RpcError::ShuttingDown => ErrorCode::Unavailable,
            RpcError::NoQuorum(_) => ErrorCode::NoQuorum,
            RpcError::Unreachable { .. } => ErrorCode::Unreachable,
            RpcError::Fatal { .. } => ErrorCode::Fatal,
            RpcError::Remote { body, .. } => body.code.clone(),
        }
    }

    /// The HTTP status it is answered with (a three-digit number).
    pub fn status(&self) -> u16 {
        match self {
            RpcError::NoLeader { .. }
            | RpcError::NotStarted(_)
            | RpcError::NoLeaderNotStarted { .. }
            | RpcError::Unavailable(_)
            | RpcError::ShuttingDown
            | RpcError::NoQuorum(_) => 503,
            RpcError::NotLeader { .. }
            | RpcError::StaleSequence { .. }
            | RpcError::SessionExpired { .. }
            | RpcError::SessionExpiredOutcomeUnknown { .. }
            | RpcError::UnknownSession { .. }
            | RpcError::SequenceReused { .. }
            | RpcError::AnswerNotKept
            | RpcError::AnswerTooLarge { .. }
            | RpcError::NotConfirmed(_) => 409,
            RpcError::Timeout { .. } | RpcError::LeaderLost { .. } => 504,
            RpcError::Forbidden(_) => 403,
            RpcError::TooLarge { .. } => 413,
            RpcError::BadRequest { .. } => 400,
            RpcError::SlowBody(_) => 408,
            RpcError::NotFound(_) => 404,
            RpcError::MethodNotAllowed { .. } => 405,
            RpcError::Unreachable { .. } => 502,
            RpcError::Fatal { .. } => 500,
            // Passed on as received, unless it is no HTTP status at all.
            RpcError::Remote { status, .. } if (100..=999).contains(status) => *status,
            RpcError::Remote { .. } => 502,
        }
    }

    /// The JSON body it is answered with.
    pub fn body(&self) -> ErrorBody {
        match self {
            RpcError::Remote { body, .. } => body.clone(),
            RpcError::NotLeader { leader } => {
                ErrorBody { code: self.code(), message: self.to_string(), leader: leader.clone() }
            }
            _ => ErrorBody { code: self.code(), message: self.to_string(), leader: None },
        }
    }

    /// Whether a command that failed with this error may still be applied
    /// (no outcome known): timeouts, unreachable nodes, lost leaders and
    /// fatal errors on the way. Errors that say the command was refused or
    /// answered are not.
    pub fn outcome_unknown(&self) -> bool {
        !self.code().outcome_known()
    }

    /// [`RpcError::Unreachable`]: `target` could not be reached because of
    /// `source`, which stays the error's source.
    pub fn unreachable(
        target: impl ToString,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> RpcError {
        RpcError::Unreachable {
            target: target.to_string(),
            reason: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// [`RpcError::BadRequest`] found by this crate's own checks: the
    /// message is all there is.
    pub fn bad_request(message: impl Into<String>) -> RpcError {
        RpcError::BadRequest { message: message.into(), source: None }
    }

    /// [`RpcError::BadRequest`] caused by `source`, which stays the
    /// error's source (`message` should say it in words too).
    pub fn bad_request_from(message: impl Into<String>, source: impl Into<Cause>) -> RpcError {
        RpcError::BadRequest { message: message.into(), source: Some(source.into()) }
    }

    /// [`RpcError::Fatal`] with no error underneath (a node's recorded
    /// fatal error, which is text).
    pub fn fatal(message: impl Into<String>) -> RpcError {
        RpcError::Fatal { message: message.into(), source: None }
    }

    /// [`RpcError::Fatal`] caused by `source`, which stays the error's
    /// source (`message` should say it in words too).
    pub fn fatal_from(message: impl Into<String>, source: impl Into<Cause>) -> RpcError {
        RpcError::Fatal { message: message.into(), source: Some(source.into()) }
    }

    /// Rebuilds an error from another node's answer.
    pub fn from_remote(status: u16, body: ErrorBody) -> RpcError {
        RpcError::Remote { status, body }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A fatal error met as raft-core's error keeps it as the source; one
    /// recorded as text has none. Both answer the same code, status and
    /// text on the wire as before.
    #[test]
    fn a_fatal_error_keeps_raft_cores_error_underneath_and_its_wire_text() {
        let proposed = raft_core::ProposeError::Fatal("disk full".to_owned());
        let met = RpcError::fatal_from("disk full", proposed);
        let under = met.source().and_then(|s| s.downcast_ref::<raft_core::ProposeError>());
        assert!(matches!(under, Some(raft_core::ProposeError::Fatal(why)) if why == "disk full"));
        let recorded = RpcError::fatal("disk full");
        assert!(recorded.source().is_none());
        for err in [met, recorded] {
            assert_eq!(err.code(), ErrorCode::Fatal);
            assert_eq!(err.status(), 500);
            assert_eq!(err.body().message, "fatal: disk full");
        }
    }
}
