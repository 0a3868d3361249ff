//! What a node reports about itself and its cluster: [`Metrics`] and
//! [`Role`], built from raft-core's metrics, and [`Member`]s, the
//! configuration joined with the tailnet view. The handle, the monitor,
//! readiness and the admin endpoint all read these.

use std::net::IpAddr;

use raft_core::NodeId;
use ts_discovery::ClusterView;

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Votes and may lead.
    Voter,
    /// Receives the log; becomes a voter once caught up.
    Learner,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Raft id: derived from the stable tailnet id and the incarnation (a
    /// node that lost its state comes back under a new one).
    pub id: u64,
    /// The stable tailnet id.
    pub stable_id: String,
    /// Its hostname, if the tailnet view knows it.
    pub hostname: Option<String>,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Raft port.
    pub raft_port: u16,
    /// Command port.
    pub command_port: u16,
    /// Voter or learner.
    pub role: MemberRole,
    /// Whether it leads.
    pub leader: bool,
    /// Its tags, as the tailnet view shows them.
    pub tags: Vec<String>,
    /// Whether the tailnet shows it online.
    pub online: bool,
    /// On the leader: the last index replicated to it.
    pub matched_index: Option<u64>,
}

/// This node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Leads.
    Leader,
    /// Follows.
    Follower,
    /// Campaigning.
    Candidate,
    /// Not (yet) a voter.
    Learner,
    /// Stopped.
    Stopped,
}

/// A point-in-time view of this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Metrics {
    /// This node's raft id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader: Option<u64>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Index covered by the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Voters.
    pub voters: usize,
    /// Learners.
    pub learners: usize,
    /// Why the node stopped, if a fatal error stopped it (its state machine
    /// panicked or refused a snapshot, its storage failed, raft's core
    /// died). Such a node serves nothing until it is restarted.
    pub fatal: Option<String>,
}

/// The facade's view of raft-core's metrics.
pub(crate) fn metrics_of(m: &raft_core::NodeMetrics) -> Metrics {
    Metrics {
        id: m.id,
        role: match m.role {
            raft_core::Role::Leader => Role::Leader,
            raft_core::Role::Follower => Role::Follower,
            raft_core::Role::Candidate => Role::Candidate,
            raft_core::Role::Learner => Role::Learner,
            raft_core::Role::Shutdown => Role::Stopped,
        },
        term: m.term,
        leader: m.leader,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied,
        snapshot_index: m.snapshot,
        voters: m.voters.len(),
        learners: m.learners.len(),
        fatal: m.fatal.clone(),
    }
}

/// The configuration in `m`, each member joined with what `view` shows of
/// it; `me` (this node) counts as online.
pub(crate) fn members_of(
    m: &raft_core::NodeMetrics,
    view: Option<&ClusterView>,
    me: NodeId,
) -> Vec<Member> {
    m.nodes
        .iter()
        .map(|(id, node)| {
            let seen = view.and_then(|v| {
                if v.self_node.id.0 == node.stable_id {
                    Some(v.self_node.clone())
                } else {
                    v.members.values().find(|n| n.id.0 == node.stable_id).cloned()
                }
            });
            let is_self = *id == me;
            Member {
                id: *id,
                stable_id: node.stable_id.clone(),
                hostname: seen.as_ref().map(|n| n.hostname.clone()),
                addrs: node.addrs.clone(),
                raft_port: node.raft_port,
                command_port: node.command_port,
                role: if m.voters.contains(id) { MemberRole::Voter } else { MemberRole::Learner },
                leader: m.leader == Some(*id),
                tags: seen.as_ref().map(|n| n.tags.iter().cloned().collect()).unwrap_or_default(),
                online: is_self || seen.as_ref().is_some_and(|n| n.online),
                matched_index: m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()),
            }
        })
        .collect()
}
