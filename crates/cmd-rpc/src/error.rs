//! Errors of the command API, and how each maps to HTTP and `{code, message,
//! leader}`.

use std::time::Duration;

use hyper::StatusCode;

use crate::api::{ErrorBody, LeaderHint};

/// Why a command-API call failed.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
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
    /// A node asked to confirm a cluster being formed refused (decision
    /// 0003): it holds no promise to the caller, is bound to another
    /// cluster, or is a member already. The message says which.
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    /// The service cannot answer now (no quorum, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another node could not be reached.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// Which node.
        target: String,
        /// Why.
        reason: String,
    },
    /// The node stopped on a fatal error.
    #[error("fatal: {0}")]
    Fatal(String),
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
    pub fn code(&self) -> &str {
        match self {
            RpcError::NoLeader { .. } => "no_leader",
            RpcError::NotLeader { .. } => "not_leader",
            RpcError::Timeout { .. } => "timeout",
            RpcError::Forbidden(_) => "forbidden",
            RpcError::TooLarge { .. } => "too_large",
            RpcError::BadRequest(_) => "bad_request",
            RpcError::SlowBody(_) => "slow_body",
            RpcError::NotFound(_) => "not_found",
            RpcError::MethodNotAllowed { .. } => "method_not_allowed",
            RpcError::StaleSequence { .. } => "stale_sequence",
            RpcError::SessionExpired { .. } => "session_expired",
            RpcError::SessionExpiredOutcomeUnknown { .. } => "session_expired_outcome_unknown",
            RpcError::UnknownSession { .. } => "unknown_session",
            RpcError::SequenceReused { .. } => "sequence_reused",
            RpcError::AnswerNotKept => "answer_not_kept",
            RpcError::NotConfirmed(_) => "not_confirmed",
            RpcError::Unavailable(_) => "unavailable",
            RpcError::Unreachable { .. } => "unreachable",
            RpcError::Fatal(_) => "fatal",
            RpcError::Remote { body, .. } => &body.code,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RpcError::NoLeader { .. } | RpcError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RpcError::NotLeader { .. }
            | RpcError::StaleSequence { .. }
            | RpcError::SessionExpired { .. }
            | RpcError::SessionExpiredOutcomeUnknown { .. }
            | RpcError::UnknownSession { .. }
            | RpcError::SequenceReused { .. }
            | RpcError::AnswerNotKept
            | RpcError::NotConfirmed(_) => StatusCode::CONFLICT,
            RpcError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RpcError::Forbidden(_) => StatusCode::FORBIDDEN,
            RpcError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RpcError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RpcError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            RpcError::NotFound(_) => StatusCode::NOT_FOUND,
            RpcError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RpcError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            RpcError::Fatal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RpcError::Remote { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }

    /// The JSON body it is answered with.
    pub fn body(&self) -> ErrorBody {
        match self {
            RpcError::Remote { body, .. } => body.clone(),
            RpcError::NotLeader { leader } => ErrorBody {
                code: self.code().to_owned(),
                message: self.to_string(),
                leader: leader.clone(),
            },
            _ => {
                ErrorBody { code: self.code().to_owned(), message: self.to_string(), leader: None }
            }
        }
    }

    /// Whether a command that failed with this error may still be applied
    /// (no outcome known): timeouts, unreachable nodes, lost leaders and
    /// fatal errors on the way. Errors that say the command was refused or
    /// answered are not.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(
            self.code(),
            "not_leader"
                | "forbidden"
                | "too_large"
                | "bad_request"
                | "slow_body"
                | "not_found"
                | "method_not_allowed"
                | "stale_sequence"
                | "session_expired"
                | "unknown_session"
                | "sequence_reused"
                | "answer_not_kept"
                | "not_confirmed"
        )
    }

    /// Rebuilds an error from another node's answer.
    pub fn from_remote(status: u16, body: ErrorBody) -> RpcError {
        RpcError::Remote { status, body }
    }
}
