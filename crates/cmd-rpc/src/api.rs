//! The JSON bodies of the command API (version 1). Requests are strict:
//! unknown fields and trailing data are refused.

use raft_core::{ClusterId, NodeId, NodeInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::code::ErrorCode;

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
    /// `session_expired` (it was not applied); a command never sent ends
    /// as an unknown outcome rather than `not_started`; and the command is
    /// not batched. A caller that retries without it is told "not applied"
    /// where only this call's attempts are known.
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

/// Most commands in one [`ExecuteBatchRequest`]; a batch with more is
/// refused (400).
pub const MAX_BATCH: usize = 256;

/// `POST /v1/execute-batch`: commands a follower forwards to the leader
/// together, each still its own call. Only forwarded requests (with
/// `x-tsc-forwarded` and the addressee headers) are accepted. The leader
/// runs every command as if it had come alone on `/v1/execute`, each
/// within its own budget, and answers them in order once all are done.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBatchRequest {
    /// The commands, at most [`MAX_BATCH`].
    pub commands: Vec<BatchedCommand>,
}

/// One command of an [`ExecuteBatchRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchedCommand {
    /// The command, as `/v1/execute` takes it.
    pub request: ExecuteRequest,
    /// The time this command's attempt may take, in milliseconds; the
    /// leader uses the smaller of this and the request's deadline header.
    pub within_ms: u64,
}

/// Answer to [`ExecuteBatchRequest`]: one answer per command, in order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBatchResponse {
    /// The answers.
    pub answers: Vec<BatchedAnswer>,
}

/// What one command of a batch got: what `/v1/execute` would have
/// answered.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchedAnswer {
    /// The 200 answer.
    Done(ExecuteResponse),
    /// An error answer: its HTTP status and body.
    Failed {
        /// The status `/v1/execute` would have answered with.
        status: u16,
        /// The error body.
        error: ErrorBody,
    },
}

/// Answer to `POST /v1/session` (body `{}`): a new session, registered
/// through the log. Commands in it use sequence numbers from 1 upwards.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionResponse {
    /// The session's client id, 32 hex digits.
    pub client: String,
}

/// `POST /v1/join`: add the calling node to the cluster (learner, then
/// voter once it has caught up; a stale incarnation of the same node is
/// swapped out in the same change). Answered by the leader only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joining node's raft id: `node_id(node.stable_id, incarnation)`.
    pub id: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Where to reach it; the stable id and addresses must be the caller's
    /// own, as the leader's tailnet view shows them.
    pub node: NodeInfo,
    /// The cluster it decided to join; must be the leader's.
    pub cluster_id: ClusterId,
}

/// `POST /v1/remove`: remove a member. Answered by the leader only, for
/// the caller itself (leaving) or for a member the leader's tailnet view
/// shows offline or untagged; never for the leader through another node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// The member's raft id.
    pub id: NodeId,
}

/// `POST /v1/campaign`: the leader, handing its leadership over, asks this
/// node to start an election now. Refused unless the caller is the leader
/// this node follows, in this term, and this node is a voter whose log
/// reaches `last_log_index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// The leader's term.
    pub term: u64,
    /// The leader's last log index: this node must have it all.
    pub last_log_index: u64,
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
    /// Its stable tailnet id.
    pub stable_id: String,
    /// Its incarnation (its raft id is `node_id(stable_id, incarnation)`).
    pub incarnation: u64,
    /// The cluster it formed or decided to join, if any.
    pub cluster_id: Option<ClusterId>,
    /// Whether it has raft state (formed or joined a cluster).
    pub initialized: bool,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Every member.
    pub members: Vec<Member>,
    /// Where the answering node itself is reached.
    pub self_node: NodeInfo,
}

/// `POST /v1/probe`: who are you, and which cluster are you in? Asked by a
/// fresh node before it decides to join or form a cluster, and by a leader
/// about tagged nodes that are not (current) members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// The caller asks the callee to promise not to form a cluster before
    /// it, and not to promise that to anyone else (decision 0003). `false`
    /// also gives back a promise the callee holds for the caller.
    pub promise: bool,
}

/// Answer to [`ProbeRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResponse {
    /// The answering node's raft id.
    pub id: NodeId,
    /// Its incarnation: `id` is `node_id(node.stable_id, incarnation)`.
    pub incarnation: u64,
    /// Where it is reached (its stable id included).
    pub node: NodeInfo,
    /// What it is.
    pub state: ProbeState,
}

/// What a probed node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeState {
    /// It formed or decided to join cluster `cluster_id`.
    Member {
        /// The cluster.
        cluster_id: ClusterId,
        /// The leader it knows of.
        leader: Option<LeaderHint>,
    },
    /// It has no cluster yet.
    Fresh {
        /// The node it has promised not to form a cluster before (and not
        /// to promise anyone else), by stable id.
        promised_to: Option<String>,
    },
}

/// `POST /v1/confirm`: the caller is forming cluster `cluster_id` and asks
/// the callee, which promised to wait for it, to bind itself to that
/// cluster (decision 0003): to store its id, answer as its member from
/// now on, and be one of its initial voters. The callee binds itself only
/// while it still holds the caller's promise (or is already bound to, or
/// joining, that cluster); otherwise it answers `not_confirmed` (409).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The cluster being formed.
    pub cluster_id: ClusterId,
    /// The former's raft id: `node_id(node.stable_id, incarnation)`.
    pub id: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Where it is reached; the stable id and addresses must be the
    /// caller's own, as the callee's tailnet view shows them.
    pub node: NodeInfo,
    /// The former's last round before it initializes the cluster: the
    /// callee answers only if it is bound to this cluster by the caller
    /// already (never binding itself now), and seals that binding
    /// (durably, before it answers): it never unbinds from then on.
    pub seal: bool,
}

/// Answer to [`ConfirmRequest`]: the callee is bound to the cluster, and
/// joins it as this raft id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmResponse {
    /// The cluster it is bound to.
    pub cluster_id: ClusterId,
    /// Its raft id: `node_id(node.stable_id, incarnation)`.
    pub id: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Where it is reached (its stable id included).
    pub node: NodeInfo,
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
    /// Machine-readable code, such as `not_leader` or `too_large`; a code
    /// this version does not know decodes as [`ErrorCode::Other`].
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
    /// The leader, when the error is about leadership and it is known.
    pub leader: Option<LeaderHint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_are_strict() {
        let answer = ProbeResponse {
            id: 7,
            incarnation: 9,
            node: NodeInfo {
                stable_id: "n1".to_owned(),
                addrs: vec!["10.0.0.1".parse().unwrap()],
                raft_port: 6270,
                command_port: 6271,
            },
            state: ProbeState::Member { cluster_id: ClusterId(0xabc), leader: None },
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert!(
            json.contains(
                r#""state":{"state":"member","cluster_id":"00000000000000000000000000000abc""#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ProbeResponse>(&json).unwrap(), answer);
        let fresh = r#"{"state":"fresh","promised_to":"n0"}"#;
        assert_eq!(
            serde_json::from_str::<ProbeState>(fresh).unwrap(),
            ProbeState::Fresh { promised_to: Some("n0".to_owned()) }
        );
        for bad in [
            r#"{"state":"fresh","promised_to":null,"extra":1}"#,
            r#"{"state":"leader"}"#,
            r#"{"state":"member","cluster_id":"12","leader":null}"#,
        ] {
            assert!(serde_json::from_str::<ProbeState>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ProbeRequest>(r#"{"promise":true,"x":0}"#).is_err());
    }

    #[test]
    fn confirm_bodies_are_strict() {
        let request = ConfirmRequest {
            cluster_id: ClusterId(0xabc),
            id: 7,
            incarnation: 9,
            node: NodeInfo {
                stable_id: "n1".to_owned(),
                addrs: vec!["10.0.0.1".parse().unwrap()],
                raft_port: 6270,
                command_port: 6271,
            },
            seal: true,
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<ConfirmRequest>(&json).unwrap(), request);
        // The seal flag is required: a former that does not say is refused.
        let unsaid = json.replace(r#","seal":true"#, "");
        assert!(serde_json::from_str::<ConfirmRequest>(&unsaid).is_err(), "{unsaid}");
        let extra = json.replacen('{', r#"{"x":1,"#, 1);
        assert!(serde_json::from_str::<ConfirmRequest>(&extra).is_err(), "{extra}");
        let short = r#"{"cluster_id":"00000000000000000000000000000abc","id":7,"incarnation":9}"#;
        assert!(serde_json::from_str::<ConfirmRequest>(short).is_err());
    }
}
