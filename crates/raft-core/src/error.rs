//! What can go wrong, in this crate's own types (no openraft types leak).

use std::time::Duration;

use crate::types::{NodeId, NodeInfo};

/// An error underneath one of ours, boxed so that no lower layer's type
/// (openraft, redb) shows in this crate's signatures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a node could not start.
///
/// Where the failure came from an error value (an [`std::io::Error`] from
/// the state directory, the transport's error from the raft port, a storage
/// or openraft error), that value is kept as the
/// [`std::error::Error::source`]; the message also says it in words.
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
        /// openraft's error, boxed.
        #[source]
        source: BoxError,
    },
}

impl StartError {
    /// [`StartError::Storage`] without an error underneath (the storage
    /// backends report their failures as text).
    pub(crate) fn storage(message: impl Into<String>) -> StartError {
        StartError::Storage { message: message.into(), source: None }
    }

    /// [`StartError::Storage`] caused by `source`.
    pub(crate) fn storage_from(
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> StartError {
        StartError::Storage { message: message.into(), source: Some(source.into()) }
    }
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
