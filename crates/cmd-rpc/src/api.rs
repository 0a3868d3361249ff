//! The JSON bodies of the command API (version 1). Requests are strict:
//! unknown fields and trailing data are refused.

use raft_core::{NodeId, NodeInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST /v1/execute`: run one command through the leader.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The caller's session id, 32 hex digits.
    pub client: String,
    /// The command's sequence number in the session (from 1).
    pub seq: u64,
    /// The command: a JSON document the state machine understands.
    pub command: Box<RawValue>,
    /// Set when an earlier call with this client and sequence number ended
    /// without a known outcome. If the session turns out to have expired,
    /// the answer is then `session_expired_outcome_unknown` (the command may
    /// have been applied before the session expired) rather than
    /// `session_expired` (it was not applied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// Answer to [`ExecuteRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteResponse {
    /// The state machine's answer (a JSON document).
    pub result: Box<RawValue>,
    /// Whether this was a retry answered from the session, not applied again.
    pub duplicate: bool,
}

/// Answer to `POST /v1/session` (body `{}`): a new session, registered
/// through the log. Commands in it use sequence numbers from 1 upwards.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionResponse {
    /// The session's client id, 32 hex digits.
    pub client: String,
}

/// `POST /v1/join`: add a node to the cluster (learner, then voter once it
/// has caught up).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joining node's raft id.
    pub id: NodeId,
    /// Where to reach it.
    pub node: NodeInfo,
    /// The node has no raft state (new, or it lost its state). If its id is
    /// already a member, the leader removes it first, so the cluster never
    /// sees a member's log go backwards.
    #[serde(default)]
    pub fresh: bool,
}

/// `POST /v1/remove`: remove a member.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// The member's raft id.
    pub id: NodeId,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began.
    Linearizable,
    /// Whatever the answering node has applied; may be stale.
    Local,
}

/// `POST /v1/read`: query the state machine.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The query: a JSON document the state machine understands.
    pub query: Box<RawValue>,
    /// How fresh the answer must be.
    pub consistency: Consistency,
}

/// Answer to [`ReadRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadResponse {
    /// The state machine's answer.
    pub result: Box<RawValue>,
    /// The log index the answer reflects (at least).
    pub index: u64,
}

/// Answer to `POST /v1/read-index` (leader only): the index a linearizable
/// read must wait for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadIndexResponse {
    /// The read index.
    pub index: u64,
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Raft id.
    pub id: NodeId,
    /// Where it is.
    pub node: NodeInfo,
    /// Whether it votes.
    pub voter: bool,
}

/// `GET /v1/cluster`: the configuration as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    /// The answering node.
    pub node: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Every member.
    pub members: Vec<Member>,
    /// Where the answering node itself is reached, so that a leader can add
    /// it back when it is not a member.
    #[serde(default)]
    pub self_node: Option<NodeInfo>,
}

/// The leader, as an error body names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderHint {
    /// Raft id.
    pub id: NodeId,
    /// Where it is.
    pub node: NodeInfo,
}

/// Every error answer: `{code, message, leader}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Machine-readable code, such as `not_leader` or `too_large`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// The leader, when the error is about leadership and it is known.
    pub leader: Option<LeaderHint>,
}
