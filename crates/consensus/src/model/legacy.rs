//! Today's decisions, transcribed (main at b846ca4).
//!
//! Each method cites the lines it transcribes. What the code does that a
//! decision does not depend on (timeouts, backoff, logging, the probe
//! throttle) is left out.

use super::protocol::{
    Answer, Bootstrap, Change, ClusterId, Decision, Granter, JoinRequest, Leader, Node, Protocol,
};

/// The legacy logic: raft id = hash of the stable id, forming on failed
/// probes, "already a voter" joins.
pub(crate) struct Legacy;

impl Protocol for Legacy {
    fn name(&self) -> &'static str {
        "legacy"
    }

    /// `crates/consensus/src/node.rs:303`: `let id =
    /// raft_core::node_id_from_stable_id(&view.self_node.id.0);` — the same
    /// id whatever happened to the state.
    fn incarnation_after_wipe(&self, old: u8) -> u8 {
        old
    }

    /// `crates/raft-core/src/network/server.rs:65`: the hello names a
    /// cluster that is the same static name on every node; no cluster id
    /// tells two clusters apart, and a node answers raft RPCs from the
    /// moment `RaftNode::start` opens the raft port
    /// (`crates/consensus/src/node.rs:318`), before bootstrap.
    fn accepts_raft(&self, _mine: Option<ClusterId>, _theirs: Option<ClusterId>) -> bool {
        true
    }

    /// `crates/cmd-rpc/src/service.rs:431-445`: `/v1/cluster` answers the
    /// leader this node knows of; there are no promises.
    fn answer_probe(
        &self,
        granter: &Granter,
        _caller: Node,
        _wants: bool,
    ) -> (Answer, Option<Node>) {
        (Answer::Member { cluster: None, leader: granter.leader }, None)
    }

    fn keep_promise(&self, _granter: &Granter) -> Option<Node> {
        None
    }

    /// `crates/consensus/src/bootstrap.rs:52-110`.
    fn decide(&self, input: &Bootstrap<'_>) -> Decision {
        // 52-56: the online tagged peers, by raft id (raft ids sort as stable
        // ids do in this model).
        let peers: Vec<Node> = input.view.online_peers(input.me).collect();
        // 59-91: join through the first peer that knows a leader.
        for &peer in &peers {
            if let Some(Answer::Member { leader: Some(leader), .. }) = input.answers[peer as usize]
            {
                return Decision::Join { cluster: None, leader };
            }
        }
        // 93-110: form if at least `expected_size` tagged nodes are online
        // and this node has the lowest id among them, whatever the probes
        // answered (or failed to).
        if !input.follow_only {
            let online = 1 + peers.len();
            let lowest = peers.iter().all(|&p| p > input.me);
            if online >= input.expected_size as usize && lowest {
                return Decision::Form;
            }
        }
        Decision::Wait
    }

    /// `crates/cmd-rpc/src/service.rs:287-312` (`join_here`): a voter with
    /// the same record is done ("already a voter"); otherwise add it as a
    /// learner, then (once caught up) promote it.
    fn on_join(&self, leader: &Leader<'_>, request: &JoinRequest) -> Option<Change> {
        // 294-298: `metrics.voters.contains(&request.id) && nodes[id] == node`
        // (the record, addresses and ports, is the same in this model).
        if leader.config.voters().has(request.id) {
            return None;
        }
        // 301: `add_learner` (re-proposing for a learner is harmless).
        if !leader.config.learners.has(request.id) {
            return Some(Change::AddLearner(request.id));
        }
        // 305: `promote` after `add_learner` waited for the catch-up.
        leader.caught_up(request.id).then_some(Change::Promote(request.id))
    }

    /// `crates/consensus/src/membership.rs:41-135` (`reconcile`, `add_back`).
    fn plan(&self, leader: &Leader<'_>) -> Option<Change> {
        let view = leader.view;
        // 55-90: a member whose stable id is not tagged is removed, unless
        // the remaining voters lack a reachable majority.
        for member in leader.config.members().iter() {
            if member == leader.me || view.tagged(member.node()) {
                continue;
            }
            let voters = leader.config.voters();
            if voters.has(member) {
                let remaining = voters.without(member);
                let reachable =
                    remaining.iter().filter(|v| *v == leader.me || view.online(v.node())).count();
                if remaining.is_empty() || reachable < remaining.len() / 2 + 1 {
                    continue;
                }
            }
            return Some(Change::Remove(member));
        }
        // 100-134: the first online tagged peer (by stable id) that is not a
        // voter is joined: a learner (106-121) or a node that answers
        // `/v1/cluster` with its own id (122-125, 154-157).
        for node in view.online_peers(leader.me.node()) {
            // 107: the id is the hash of the stable id.
            let id = super::protocol::RaftId::new(node, 0);
            if leader.config.voters().has(id) {
                continue;
            }
            if leader.config.learners.has(id) {
                // `join` -> `join_here`: add_learner, wait for the catch-up,
                // promote.
                return leader.caught_up(id).then_some(Change::Promote(id));
            }
            match leader.live[node as usize] {
                Some(live) if live.id == id => return Some(Change::AddLearner(id)),
                _ => continue,
            }
        }
        None
    }
}
