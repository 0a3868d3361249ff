//! Decision 0003, transcribed from docs/decisions/0003-identity-bootstrap-membership.md
//! (the section each method follows is named in its doc).
//!
//! `fix` switches on the fix this model proposes (see docs/reliability.md):
//! a confirm round makes promises binding before a node forms, and the
//! binders are the new cluster's initial voters.

use super::protocol::{
    Answer, Bootstrap, Change, ClusterId, Decision, Granter, JoinRequest, Leader, Node, Protocol,
    RaftId, Set,
};

/// Decision 0003's rules.
pub(crate) struct Design0003 {
    /// The proposed fix: promises are confirmed (binding) before forming,
    /// and the binders are initial voters.
    pub(crate) fix: bool,
}

impl Design0003 {
    /// Decision 0003 as written.
    pub(crate) const AS_WRITTEN: Design0003 = Design0003 { fix: false };
    /// Decision 0003 with the proposed fix.
    pub(crate) const FIXED: Design0003 = Design0003 { fix: true };

    /// Under the fix, a fresh node with a stored cluster id is bound to it
    /// (it confirmed, or it is forming it): it answers as that cluster's
    /// member, grants no promise and never forms or joins another.
    fn bound(&self, cluster: Option<ClusterId>) -> bool {
        self.fix && cluster.is_some()
    }
}

impl Protocol for Design0003 {
    fn name(&self) -> &'static str {
        if self.fix { "0003+fix" } else { "0003" }
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
    fn answer_probe(&self, granter: &Granter, caller: Node) -> (Answer, Option<Node>) {
        if granter.has_state || self.bound(granter.cluster) {
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
        if granter.has_state || self.bound(granter.cluster) {
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
        if self.bound(input.cluster) {
            // The fix: a bound node only joins its own cluster.
            for peer in peers() {
                if let Some(Answer::Member { cluster, leader: Some(leader) }) = answer(peer)
                    && cluster == input.cluster
                {
                    return Decision::Join { cluster, leader };
                }
            }
            return Decision::Wait;
        }
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
        let config = leader.config;
        if request.cluster != leader.cluster || request.id.node() != request.from {
            return None;
        }
        // "Not another stable id's member": ids carry their node here, so
        // only the caller's own ids can match.
        if config.voters().has(request.id) {
            return None;
        }
        if !config.learners.has(request.id) {
            return Some(Change::AddLearner(request.id));
        }
        if !leader.caught_up(request.id) {
            return None;
        }
        let old = config.voters().iter().find(|v| v.node() == request.from);
        Some(match old {
            Some(old) => Change::Replace { old, new: request.id },
            None => Change::Promote(request.id),
        })
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
                return Some(Change::Replace { old, new: live.id });
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

    fn confirms(&self) -> bool {
        self.fix
    }

    /// The fix: a promiser binds itself to the caller's cluster only while
    /// it still holds the caller's promise, in one step.
    fn on_confirm(&self, granter: &Granter, caller: Node) -> bool {
        self.fix
            && !granter.has_state
            && granter.cluster.is_none()
            && self.keep_promise(granter) == Some(caller)
    }

    /// The fix: the binders are initial voters with the forming node, so a
    /// binder that loses its state leaves a voter behind that no new
    /// incarnation can stand in for.
    fn initial_voters(&self, me: RaftId, confirmed: Set) -> Set {
        let me = Set::default().with(me);
        if self.fix { me.union(confirmed) } else { me }
    }
}
