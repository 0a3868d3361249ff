//! What can go wrong, in this crate's own types (no openraft types leak).

use std::time::Duration;

use crate::types::{NodeId, NodeInfo};

/// An error underneath one of ours, boxed so that no lower layer's type
/// (openraft, redb) shows in this crate's signatures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a node could not start.
///
/// Where the failure came from an error value (an [`std::io::Error`] from
/// the state directory, the transport's error from the raft port), that
/// value is kept as the [`std::error::Error::source`]; the message also
/// says it in words. An openraft error (the log store's, raft's refusal to
/// start) is kept as a [`Cause`], its words level by level: openraft's
/// types never leave this crate, not even through `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// Storage could not be opened or restored.
    #[error("raft storage: {message}")]
    Storage {
        /// What failed, in words (the cause's own included).
        message: String,
        /// The error underneath, when there is one (an [`std::io::Error`]
        /// from the state directory, say), for programs that look at it.
        #[source]
        source: Option<BoxError>,
    },
    /// The state directory belongs to another node, or was written before
    /// node identities existed or by a version that derived raft ids
    /// otherwise; the message says what to do.
    #[error("raft storage: {0}")]
    Identity(String),
    /// The raft port could not be opened.
    #[error("cannot listen on raft port {port}: {source}")]
    Listen {
        /// The port.
        port: u16,
        /// The transport's error (an [`std::io::Error`] underneath it
        /// for the operating system's sockets).
        #[source]
        source: ts_transport::TransportError,
    },
    /// openraft refused to start.
    #[error("raft: {source}")]
    Raft {
        /// openraft's error, in words.
        #[source]
        source: Cause,
    },
}

impl StartError {
    /// [`StartError::Storage`] without an error underneath (the storage
    /// backends report their failures as text).
    pub(crate) fn storage(message: impl Into<String>) -> StartError {
        StartError::Storage { message: message.into(), source: None }
    }

    /// [`StartError::Storage`] caused by `source`, kept as it is when its
    /// whole chain is of known types that are not openraft's (see
    /// [`owned`]), else as a [`Cause`].
    pub(crate) fn storage_from(
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> StartError {
        StartError::Storage { message: message.into(), source: Some(owned(source.into())) }
    }
}

/// An error underneath one of this crate's, kept as words: each level of
/// the original error's chain of sources becomes one `Cause` with that
/// level's text, so that `source()` still walks the whole chain. What
/// reaches callers this way is a lower layer's error whose type must stay
/// inside this crate (openraft's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    message: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    /// `err` and its chain of sources, in words.
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Cause {
        Cause { message: err.to_string(), source: err.source().map(|s| Box::new(Cause::of(s))) }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<openraft::error::Fatal<NodeId>> for Cause {
    fn from(err: openraft::error::Fatal<NodeId>) -> Cause {
        Cause::of(&err)
    }
}

/// `source` itself when every error in its chain (an [`std::io::Error`]'s
/// inner error included) is of a type known to be safe to hand out (the
/// standard library's IO error, the JSON decoder's, tokio's, this crate's
/// own), else its words as a [`Cause`]. An allow list, so that no
/// openraft type (the log store reports its failures as openraft's
/// `StorageError`) reaches a caller, whatever a later change passes here.
fn owned(source: BoxError) -> BoxError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*source);
    while let Some(err) = next {
        if !known(err) {
            return Box::new(Cause::of(&*source));
        }
        next = err.source();
    }
    source
}

/// Whether `err` is of a type [`owned`] hands out as it is. An
/// [`std::io::Error`] may wrap any error, the standard library's own
/// private message type included, so there the test is the other way
/// round: it must not wrap one of openraft's errors.
fn known(err: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        return io.get_ref().is_none_or(|inner| !openraft_error(inner));
    }
    err.is::<Cause>()
        || err.is::<StartError>()
        || err.is::<crate::backup::BackupError>()
        || err.is::<crate::codec::DecodeError>()
        || err.is::<serde_json::Error>()
        || err.is::<tokio::task::JoinError>()
}

/// Whether `err` is one of the openraft errors this crate meets (its log
/// store's, raft's fatal error).
fn openraft_error(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<openraft::StorageError<NodeId>>()
        || err.is::<openraft::StorageIOError<NodeId>>()
        || err.is::<openraft::AnyError>()
        || err.is::<openraft::error::Fatal<NodeId>>()
}

/// Why a proposal has no outcome.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; the leader, if known. Refused before
    /// anything was proposed: the proposal was not applied (a retry
    /// elsewhere is safe).
    #[error("not the leader{}", match leader { Some((id, node)) => format!("; the leader is {id} ({node})"), None => "; no leader is known".to_owned() })]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// This node lost its leadership while the proposal was out; the new
    /// leader, if known. Its entry may have been appended here and copied
    /// to another node before a new leader's log replaced it, and that copy
    /// may still commit: the outcome is unknown. Retry with the same client
    /// and sequence number to find out.
    #[error("lost the leadership before the proposal committed{}; the command may still be applied (retry with the same sequence number)", match leader { Some((id, node)) => format!(" (the leader is {id} ({node}))"), None => String::new() })]
    LeaderLost {
        /// The new leader's id and address, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// No outcome within the timeout: the command may or may not be applied.
    /// Retry with the same client and sequence number to find out.
    #[error(
        "no outcome within {0:?}; the command may still be applied (retry with the same sequence number)"
    )]
    Timeout(Duration),
    /// The command is larger than allowed.
    #[error("command of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The node is shutting down. If the proposal was handed to the
    /// batcher already, its entry may have been appended: the outcome is
    /// unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node stopped on a fatal error; the outcome is unknown (the
    /// entry may have been appended, and may commit on other nodes).
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Why a linearizable read could not be served here.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node is not the leader; the leader, if known.
    #[error("not the leader")]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The leader could not confirm its leadership with a quorum.
    #[error("leadership not confirmed by a quorum: {0}")]
    QuorumNotReached(String),
    /// Not confirmed within the timeout.
    #[error("read not confirmed within {0:?}")]
    Timeout(Duration),
    /// The node stopped on a fatal error.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Why a membership change failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// This node is not the leader; the leader, if known.
    #[error("not the leader")]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// Another membership change is still being committed; retry later.
    #[error("another membership change is in progress")]
    InProgress,
    /// The learner did not catch up in time.
    #[error("learner {id} did not catch up within {waited:?}")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// How long we waited.
        waited: Duration,
    },
    /// Not done within the timeout.
    #[error("membership change not done within {0:?}")]
    Timeout(Duration),
    /// The node stopped on a fatal error.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The node belongs to a cluster already; its cluster id cannot
    /// change.
    #[error(
        "this node belongs to cluster {current} and has raft state; it cannot join cluster {wanted}"
    )]
    ClusterIdFixed {
        /// The node's cluster id.
        current: crate::types::ClusterId,
        /// The one asked for.
        wanted: crate::types::ClusterId,
    },
    /// The node is bound to (or decided to join) another cluster that it
    /// has no raft state of yet; it changes that only by giving the
    /// binding up ([`crate::RaftNode::unbind`], decision 0003).
    #[error("this node is bound to cluster {current}; it cannot bind itself to cluster {wanted}")]
    Bound {
        /// The node's cluster id.
        current: crate::types::ClusterId,
        /// The one asked for.
        wanted: crate::types::ClusterId,
    },
    /// The node's binding is sealed to raft id `former` (it answered that
    /// former's last round before initializing): it is never given up nor
    /// moved to another raft id (decision 0003).
    #[error("this node's binding is sealed to node {former}")]
    Sealed {
        /// The former's raft id it is sealed to.
        former: crate::types::NodeId,
    },
    /// This incarnation did not draw cluster `cluster` (it is not bound to
    /// it by itself, [`crate::RaftNode::form`]): it neither forms nor
    /// initializes it. An earlier incarnation may have initialized that id
    /// with other voters already (docs/reliability.md finding 38).
    #[error("this incarnation did not draw cluster {cluster}: it neither forms nor initializes it")]
    NotFormer {
        /// The cluster asked for.
        cluster: crate::types::ClusterId,
    },
    /// The identity record could not be written.
    #[error("storing the cluster id: {0}")]
    Storage(String),
    /// Refused for another reason.
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use openraft::{AnyError, StorageError, StorageIOError};

    use super::*;

    fn log_store_error() -> StorageError<NodeId> {
        let under = io::Error::new(io::ErrorKind::IsADirectory, "raft.redb is a directory");
        StorageIOError::<NodeId>::write_logs(AnyError::error(under)).into()
    }

    fn words(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(err), |&e| e.source()).map(|e| e.to_string()).collect()
    }

    /// An openraft error given as a storage error's source is kept as its
    /// words, level by level; before, as the openraft value itself.
    #[test]
    fn a_storage_errors_openraft_source_is_kept_as_words() {
        let openraft = log_store_error();
        let expected = words(&openraft);
        let err = StartError::storage_from("open the log", openraft);
        let source = err.source().expect("a source");
        assert!(source.is::<Cause>(), "{source:?}");
        assert_eq!(words(source), expected);
        let mut chain = std::iter::successors(Some(source), |&e| e.source());
        assert!(chain.all(|e| e.is::<Cause>()), "{err:?}");
    }

    /// One wrapped in an IO error too (`io::Error::other`).
    #[test]
    fn an_openraft_error_inside_an_io_error_is_kept_as_words() {
        let err = StartError::storage_from("open the log", io::Error::other(log_store_error()));
        assert!(err.source().is_some_and(|s| s.is::<Cause>()), "{err:?}");
    }

    /// The standard library's and this crate's own errors stay what they
    /// are, for programs that look at them.
    #[test]
    fn an_io_error_stays_an_io_error() {
        let err = StartError::storage_from(
            "create the state directory",
            io::Error::new(io::ErrorKind::AlreadyExists, "a file"),
        );
        let io = err.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::AlreadyExists), "{err:?}");
    }

    /// openraft refusing to start: its words, as a [`Cause`].
    #[test]
    fn a_fatal_raft_error_is_kept_as_words() {
        let fatal = openraft::error::Fatal::<NodeId>::StorageError(log_store_error());
        let expected = words(&fatal);
        let err = StartError::Raft { source: fatal.into() };
        let source = err.source().expect("a source");
        assert!(source.is::<Cause>(), "{source:?}");
        assert_eq!(words(source), expected);
    }
}
