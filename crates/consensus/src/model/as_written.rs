//! Decision 0003 **as first written** (before its confirm round),
//! transcribed from the version of
//! docs/decisions/0003-identity-bootstrap-membership.md merged with it: a
//! node forms a cluster on its probe answers alone. Kept as a documented
//! regression of the design: the checker finds two clusters with it
//! (docs/reliability.md, "The hole in decision 0003"). The code follows
//! [`super::design::Design0003`], which calls the real `decide::`
//! functions.

use super::protocol::{
    Answer, Bootstrap, Change, ClusterId, Decision, Granter, JoinRequest, Leader, Node, Protocol,
    Set,
};

/// Decision 0003's rules as first written: no confirm round.
pub(crate) struct AsWritten0003;

impl Protocol for AsWritten0003 {
    fn name(&self) -> &'static str {
        "0003 as written"
    }

    /// "Incarnations": a node with empty raft storage draws a new
    /// incarnation, so a new raft id.
    fn incarnation_after_wipe(&self, old: u8) -> u8 {
        old + 1
    }

    /// "Cluster ids": a node refuses a raft connection whose cluster id
    /// differs from its own, and every one while it has none.
    fn accepts_raft(&self, mine: Option<ClusterId>, theirs: Option<ClusterId>) -> bool {
        mine.is_some() && mine == theirs
    }

    /// "Bootstrap": Member with the leader if it has raft state; else Fresh,
    /// granting the caller a promise if the caller sorts lower and no
    /// promise to another tagged, online node is held.
    fn answer_probe(
        &self,
        granter: &Granter,
        caller: Node,
        _wants: bool,
    ) -> (Answer, Option<Node>) {
        if granter.has_state {
            let answer = Answer::Member { cluster: granter.cluster, leader: granter.leader };
            return (answer, None);
        }
        let held = self.keep_promise(granter);
        let promise = match held {
            None if caller < granter.me => Some(caller),
            other => other,
        };
        (Answer::Fresh { promised_to: promise }, promise)
    }

    /// "Bootstrap": a promise is released when its holder is offline or
    /// untagged in the granter's view, or when the granter gets raft state.
    fn keep_promise(&self, granter: &Granter) -> Option<Node> {
        if granter.has_state {
            return None;
        }
        granter.promise.filter(|&h| granter.view.tagged(h) && granter.view.online(h))
    }

    /// "Bootstrap", the decision, rules 1-6 in order.
    fn decide(&self, input: &Bootstrap<'_>) -> Decision {
        let view = input.view;
        // An offline peer is Silent, whatever it answered before.
        let answer = |peer: Node| {
            if view.online(peer) { input.answers[peer as usize] } else { None }
        };
        let peers = || view.peers(input.me);
        // 1. A Member whose leader is known: join.
        for peer in peers() {
            if let Some(Answer::Member { cluster, leader: Some(leader) }) = answer(peer) {
                return Decision::Join { cluster, leader };
            }
        }
        // 2. A Member without a known leader: wait.
        if peers().any(|p| matches!(answer(p), Some(Answer::Member { .. }))) {
            return Decision::Wait;
        }
        // 3. A Silent peer: wait.
        if peers().any(|p| answer(p).is_none()) {
            return Decision::Wait;
        }
        // 4. Follow-only, too few tagged nodes, or not the lowest: wait.
        let tagged = 1 + peers().count();
        if input.follow_only
            || tagged < input.expected_size as usize
            || peers().any(|p| p < input.me)
        {
            return Decision::Wait;
        }
        // 5. A peer promised another node (or nobody), or this node holds a
        // promise to another tagged, online node: wait.
        let promised_elsewhere = peers().any(
            |p| !matches!(answer(p), Some(Answer::Fresh { promised_to: Some(h) }) if h == input.me),
        );
        let holds =
            input.promise.is_some_and(|h| h != input.me && view.tagged(h) && view.online(h));
        if promised_elsewhere || holds {
            return Decision::Wait;
        }
        // 6. Form.
        Decision::Form
    }

    /// "Join and remove are bound to the caller's identity", and
    /// "Incarnations" (the new incarnation replaces the old one in one joint
    /// change once it has caught up).
    fn on_join(&self, leader: &Leader<'_>, request: &JoinRequest) -> Option<Change> {
        super::design::join_here(leader, request)
    }

    /// "Membership plan", rules 1-4, at most one action.
    fn plan(&self, leader: &Leader<'_>) -> Option<Change> {
        let config = leader.config;
        let view = leader.view;
        // 1. Replace a stale incarnation by its caught-up learner.
        for old in config.voters().iter().filter(|v| *v != leader.me) {
            if let Some(live) = leader.live[old.node() as usize]
                && live.id != old
                && config.learners.has(live.id)
                && leader.caught_up(live.id)
            {
                return Some(Change::Replace { old: Set::default().with(old), new: live.id });
            }
        }
        // 2. Remove a member whose tag was revoked or that left the tailnet,
        // unless the remaining voters would lack a reachable majority.
        for member in config.members().iter().filter(|m| *m != leader.me) {
            if view.tagged(member.node()) {
                continue;
            }
            let voters = config.voters();
            if voters.has(member) {
                let remaining = voters.without(member);
                let reachable = remaining
                    .iter()
                    .filter(|v| *v == leader.me || view.online(v.node()))
                    .fold(Set::default(), Set::with);
                if remaining.is_empty() || !remaining.majority(reachable) {
                    continue;
                }
            }
            return Some(Change::Remove(member));
        }
        // 3. Promote a caught-up, tagged, online learner.
        for learner in config.learners.iter() {
            let node = learner.node();
            if view.tagged(node) && view.online(node) && leader.caught_up(learner) {
                return Some(Change::Promote(learner));
            }
        }
        // 4. Add back a tagged, online non-member that answers as a member of
        // this cluster with its own raft id.
        for node in view.online_peers(leader.me.node()) {
            if let Some(live) = leader.live[node as usize]
                && live.has_state
                && live.cluster == leader.cluster
                && !config.members().has(live.id)
            {
                return Some(Change::AddLearner(live.id));
            }
        }
        None
    }
}
