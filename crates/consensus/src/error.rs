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
        /// What the last attempt said.
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
    /// No outcome within the deadline. The command may still be applied;
    /// nothing is applied twice, and executing the same operation again
    /// learns its outcome (or, if its session expired meanwhile, that it
    /// can no longer be learned: [`Error::OutcomeUnknown`]). A command known
    /// not applied is [`Error::NotApplied`] instead.
    #[error("no outcome within the deadline; the command may still be applied: {0}")]
    Timeout(String),
    /// The command was not applied, and the deadline passed: nothing of
    /// this call was written to a leader or proposed in time (no free
    /// request slot, every dial failed, no time left for an attempt, a
    /// busy leader that did not start it), or the sessions it moved
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
    #[error("rejected by the state machine: {0}")]
    Rejected(String),
    /// Configuration or argument error: the caller's own (a session's
    /// answers about sequence numbers never are; the facade numbers
    /// commands itself).
    #[error("invalid: {0}")]
    Invalid(String),
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
    #[error("no quorum: {0}")]
    QuorumUnavailable(String),
    /// This node runs, but cannot do this now: another membership change
    /// is in progress, or it is still starting. Trying again later may
    /// work. Like [`Error::Timeout`], it does not say that an earlier
    /// attempt of the same call changed nothing.
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
    #[error("fatal: {0}")]
    Fatal(String),
}

impl Error {
    /// [`Error::Storage`] without an error underneath.
    pub(crate) fn storage(message: impl Into<String>) -> Error {
        Error::Storage { message: message.into(), source: None }
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
