//! The one error type of the facade: the cases a caller acts on.

use std::time::Duration;

/// An error underneath one of ours, boxed so that no lower layer's type
/// (openraft, hyper, the transport) shows in this API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node does not carry the cluster tag, so it may not join.
    #[error("this node is not tagged {tag}; tag it in the tailnet's ACLs to let it join")]
    NotTagged {
        /// The cluster tag.
        tag: String,
    },
    /// Could not join or form a cluster in time.
    #[error("could not join a cluster within {waited:?}: {reason}")]
    JoinFailed {
        /// How long we tried.
        waited: Duration,
        /// What the last attempt said (text only: each attempt's answers,
        /// often other nodes', summed up in words).
        reason: String,
    },
    /// No leader was elected within the deadline (no quorum?). For a
    /// command, no attempt of this call may have been applied (a call with
    /// one that may have been reports that instead); an earlier call of the
    /// same [`Operation`](crate::Operation) that ended without a known
    /// outcome still may have been.
    #[error("no leader elected within {waited:?}; the cluster may have lost its quorum")]
    NoLeader {
        /// How long we waited.
        waited: Duration,
    },
    /// No outcome within the deadline; the text names what timed out.
    ///
    /// For a command ([`Consensus::execute`](crate::Consensus::execute),
    /// [`Operation::execute`](crate::Operation::execute)), the command may
    /// still be applied, and the text says so; nothing is applied twice,
    /// and executing the same operation again learns its outcome (or, if
    /// its session expired meanwhile, that it can no longer be learned:
    /// [`Error::OutcomeUnknown`]). A command known not applied is
    /// [`Error::NotApplied`] instead. For anything else (a read, a
    /// membership change, [`Consensus::wait_for`](crate::Consensus::wait_for),
    /// a leadership transfer) the text says which it was.
    ///
    /// Text only: it is the command API's answer (often another node's,
    /// which arrives as text) or a deadline of the facade's own, and says
    /// all there is.
    #[error("{0}")]
    Timeout(String),
    /// The command was not applied, and the deadline passed: nothing of
    /// this call was written to a leader or proposed in time (no free
    /// request slot, every dial failed, no time left for an attempt, a
    /// busy leader that did not start it), no session could be registered
    /// for it (so it was never proposed), or the sessions it moved
    /// through kept expiring before it reached them; and no earlier call
    /// of the same [`Operation`](crate::Operation) may have been applied
    /// (one that may have been makes this [`Error::Timeout`]). Executing
    /// the operation again tries again, still at most once.
    #[error("not applied within the deadline: {0}")]
    NotApplied(String),
    /// The command may or may not have been applied, and this can no longer
    /// be found out: an attempt ended without a known outcome, and its
    /// session expired before a retry could ask, or the session moved past
    /// the command's sequence number and no longer answers for it. It was
    /// applied at most once.
    ///
    /// Text only: an operation keeps it and answers it again on every
    /// later call, and it is what a node answered (often another node's
    /// text).
    #[error("outcome unknown: the command may or may not have been applied ({0})")]
    OutcomeUnknown(String),
    /// The command was applied, once, but its answer cannot be given: it
    /// was too large to be kept for a retry (an earlier attempt applied
    /// it), or too large for this node to read from the leader.
    #[error(
        "the command was applied, but its answer cannot be given (too large to be kept for a \
         retry, or to be read from the leader)"
    )]
    AnswerNotKept,
    /// The state machine could not decode the command or query (nodes with
    /// different versions of the state machine's types?).
    #[error("rejected by the state machine: {message}")]
    Rejected {
        /// What failed, in words (the cause's own included). When the
        /// state machine refused a command, its answer in the log says why
        /// as text, and this is all there is.
        message: String,
        /// The JSON error, when this node could not decode the state
        /// machine's answer.
        #[source]
        source: Option<BoxError>,
    },
    /// Configuration or argument error: the caller's own (a session's
    /// answers about sequence numbers never are; the facade numbers
    /// commands itself).
    #[error("invalid: {message}")]
    Invalid {
        /// What is wrong, in words (the cause's own included).
        message: String,
        /// The error that found it, when there is one (the JSON encoder's
        /// for a command that does not encode, the command API's for a
        /// request it refused, a leadership transfer's); for the facade's
        /// own checks the message is all there is.
        #[source]
        source: Option<BoxError>,
    },
    /// Storage could not be opened or written.
    #[error("storage: {message}")]
    Storage {
        /// What failed, in words (the cause's own included).
        message: String,
        /// The error underneath, when there is one (an `std::io::Error`,
        /// say), for programs that look at its kind.
        #[source]
        source: Option<BoxError>,
    },
    /// The tailnet or the network failed.
    #[error("network: {message}")]
    Network {
        /// What failed, in words (the cause's own included).
        message: String,
        /// The error underneath, when there is one (an `std::io::Error`,
        /// or the command API's error), for programs that look at it.
        #[source]
        source: Option<BoxError>,
    },
    /// The leader could not confirm with a quorum of voters that it still
    /// leads (too many of them stopped or unreachable), so a linearizable
    /// read cannot be answered. The node itself runs; the read may succeed
    /// once enough voters are back.
    ///
    /// Text only: raft-core says so as text (docs/ARCHITECTURE.md, on its
    /// run-time errors), and the leader's answer reaches another node as
    /// text.
    #[error("no quorum: {0}")]
    QuorumUnavailable(String),
    /// This node runs, but cannot do this now: another membership change
    /// is in progress, or it is still starting. Trying again later may
    /// work. Like [`Error::Timeout`], it does not say that an earlier
    /// attempt of the same call changed nothing.
    ///
    /// Text only: the command API's answer, which says all there is.
    #[error("unavailable for now: {0}")]
    Unavailable(String),
    /// The node is stopped or stopping. For a command this says nothing of
    /// its outcome: a command already handed to raft when the node began
    /// stopping may still be applied (by this node's cluster, once another
    /// node leads), so sending it again through another node, other than
    /// with the same [`Operation`](crate::Operation), may apply it twice.
    #[error("the node is stopped")]
    Stopped,
    /// The node stopped on a fatal error (for example, the state machine
    /// panicked).
    #[error("fatal: {message}")]
    Fatal {
        /// What failed, in words. A node's fatal error is recorded once,
        /// as text (docs/ARCHITECTURE.md), so for a node that stopped this
        /// is all there is.
        message: String,
        /// The error underneath, when the failure was met as one: the
        /// command API's (and under it raft-core's, for the call that met
        /// it) or raft-core's refusal to initialize a cluster.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// [`Error::Invalid`] found by the facade's own checks.
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid { message: message.into(), source: None }
    }

    /// [`Error::Invalid`] caused by `source`.
    pub(crate) fn invalid_from(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Invalid { message: message.into(), source: Some(source.into()) }
    }

    /// [`Error::Rejected`] as the state machine's answer says it.
    pub(crate) fn rejected(message: impl Into<String>) -> Error {
        Error::Rejected { message: message.into(), source: None }
    }

    /// [`Error::Rejected`] caused by `source`.
    pub(crate) fn rejected_from(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Rejected { message: message.into(), source: Some(source.into()) }
    }

    /// [`Error::Timeout`] of a command: `why` (what timed out, in the
    /// command API's words), and that the command may still be applied.
    pub(crate) fn command_timeout(why: impl std::fmt::Display) -> Error {
        Error::Timeout(format!(
            "no outcome within the deadline; the command may still be applied: {why}"
        ))
    }

    /// [`Error::Fatal`] from a node's recorded fatal error (text).
    pub(crate) fn fatal(message: impl Into<String>) -> Error {
        Error::Fatal { message: message.into(), source: None }
    }

    /// [`Error::Fatal`] caused by `source`.
    pub(crate) fn fatal_from(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Fatal { message: message.into(), source: Some(source.into()) }
    }

    /// [`Error::Storage`] caused by `source`.
    pub(crate) fn storage_from(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Storage { message: message.into(), source: Some(source.into()) }
    }

    /// [`Error::Network`] without an error underneath.
    pub(crate) fn network(message: impl Into<String>) -> Error {
        Error::Network { message: message.into(), source: None }
    }

    /// [`Error::Network`] caused by `source`.
    pub(crate) fn network_from(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Network { message: message.into(), source: Some(source.into()) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cmd_rpc::RpcError;

    use super::*;
    use crate::transfer::TransferError;

    fn timeout_text(err: Error) -> String {
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        err.to_string()
    }

    /// Before: every `Error::Timeout` said "the command may still be
    /// applied", a read's, a membership change's and a leadership
    /// transfer's too. Now the text names what timed out, and only a
    /// command's speaks of a command.
    #[test]
    fn a_timeout_names_what_timed_out() {
        let after = Duration::from_secs(2);
        let cases = [
            (Error::from(RpcError::Timeout { what: "read index".to_owned(), after }), "read index"),
            (
                Error::from(RpcError::Timeout { what: "membership change".to_owned(), after }),
                "membership change",
            ),
            (
                Error::from(TransferError::Failed("node 7 did not catch up".to_owned())),
                "leadership transfer not done: node 7 did not catch up",
            ),
        ];
        for (err, names) in cases {
            let text = timeout_text(err);
            assert!(text.contains(names), "{text}");
            assert!(!text.contains("command"), "{text}");
        }
        let text = timeout_text(Error::command_timeout("execute: no outcome within 2s"));
        assert!(text.contains("the command may still be applied"), "{text}");
        assert!(text.contains("execute: no outcome within 2s"), "{text}");
    }
}
