//! The decisions the library makes around openraft, as a trait the world
//! calls, and the small value types they are made from.
//!
//! Nodes are numbered in the order of their stable ids (node 0 sorts
//! lowest). A raft id is a node and an incarnation; under the legacy logic
//! the incarnation never changes, so the raft id is a function of the
//! stable id alone, as `node_id_from_stable_id` is today.

use std::fmt;

/// A tailnet node (its stable id), numbered in stable-id order.
pub(crate) type Node = u8;

/// A formed cluster, numbered in the order of formation.
pub(crate) type ClusterId = u8;

/// The most nodes a world has.
pub(crate) const MAX_NODES: usize = 4;

/// A raft node id: a node and its incarnation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RaftId(pub(crate) u8);

impl RaftId {
    /// The raft id of `node` in `incarnation` (0..4).
    pub(crate) fn new(node: Node, incarnation: u8) -> RaftId {
        RaftId(node * 4 + incarnation)
    }
    /// The node (stable id) this raft id belongs to.
    pub(crate) fn node(self) -> Node {
        self.0 / 4
    }
    /// The incarnation.
    pub(crate) fn incarnation(self) -> u8 {
        self.0 % 4
    }
    /// This id as a member of a [`Set`].
    pub(crate) fn bit(self) -> Set {
        Set(1 << self.0)
    }
}

impl fmt::Debug for RaftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", (b'a' + self.node()) as char)?;
        if self.incarnation() > 0 {
            write!(f, "{}", self.incarnation() + 1)?;
        }
        Ok(())
    }
}

/// A set of raft ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Set(pub(crate) u16);

impl Set {
    /// Whether `id` is in the set.
    pub(crate) fn has(self, id: RaftId) -> bool {
        self.0 & id.bit().0 != 0
    }
    /// The set with `id` added.
    pub(crate) fn with(self, id: RaftId) -> Set {
        Set(self.0 | id.bit().0)
    }
    /// The set without `id`.
    pub(crate) fn without(self, id: RaftId) -> Set {
        Set(self.0 & !id.bit().0)
    }
    /// The union.
    pub(crate) fn union(self, other: Set) -> Set {
        Set(self.0 | other.0)
    }
    /// How many ids.
    pub(crate) fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether it has no id.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The ids, in order.
    pub(crate) fn iter(self) -> impl Iterator<Item = RaftId> {
        (0..16u8).filter(move |i| self.0 & (1 << i) != 0).map(RaftId)
    }
    /// Whether `votes` holds a majority of this set.
    pub(crate) fn majority(self, votes: Set) -> bool {
        Set(self.0 & votes.0).len() * 2 > self.len()
    }
}

impl fmt::Debug for Set {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{id:?}")?;
        }
        write!(f, "}}")
    }
}

/// A membership configuration as openraft keeps it: voters (two sets during
/// a joint change, `old == new` otherwise) and learners.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Config {
    /// The voters before the change (all voters when not joint).
    pub(crate) old: Set,
    /// The voters after the change (equal to `old` when not joint).
    pub(crate) new: Set,
    /// Members that replicate but do not vote.
    pub(crate) learners: Set,
}

impl Config {
    /// A uniform configuration.
    pub(crate) fn uniform(voters: Set, learners: Set) -> Config {
        Config { old: voters, new: voters, learners }
    }
    /// Whether this is a joint configuration.
    pub(crate) fn is_joint(self) -> bool {
        self.old != self.new
    }
    /// Every voter of either set.
    pub(crate) fn voters(self) -> Set {
        self.old.union(self.new)
    }
    /// Every member: voters and learners.
    pub(crate) fn members(self) -> Set {
        self.voters().union(self.learners)
    }
    /// Whether `votes` is a quorum: a majority of each voter set.
    pub(crate) fn quorum(self, votes: Set) -> bool {
        self.old.majority(votes) && self.new.majority(votes)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_joint() {
            write!(f, "joint[{:?}->{:?}]", self.old, self.new)?;
        } else {
            write!(f, "voters{:?}", self.old)?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners{:?}", self.learners)?;
        }
        Ok(())
    }
}

/// What one node sees of the tailnet: which nodes carry the tag and which
/// are online (bit `n` for node `n`; the node itself included).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct View {
    /// Nodes with the cluster tag.
    pub(crate) tagged: u8,
    /// Nodes online.
    pub(crate) online: u8,
}

impl View {
    /// Whether `node` carries the tag.
    pub(crate) fn tagged(self, node: Node) -> bool {
        self.tagged & (1 << node) != 0
    }
    /// Whether `node` is online.
    pub(crate) fn online(self, node: Node) -> bool {
        self.online & (1 << node) != 0
    }
    /// The tagged nodes other than `me`, in stable-id order (the view's
    /// `members`).
    pub(crate) fn peers(self, me: Node) -> impl Iterator<Item = Node> {
        (0..MAX_NODES as u8).filter(move |&n| n != me && self.tagged(n))
    }
    /// The tagged, online nodes other than `me` (`online_members`).
    pub(crate) fn online_peers(self, me: Node) -> impl Iterator<Item = Node> {
        self.peers(me).filter(move |&n| self.online(n))
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        write!(f, "[")?;
        for n in 0..MAX_NODES as u8 {
            if self.tagged(n) {
                if !first {
                    write!(f, " ")?;
                }
                first = false;
                write!(f, "{}", (b'a' + n) as char)?;
                if !self.online(n) {
                    write!(f, "(off)")?;
                }
            }
        }
        write!(f, "]")
    }
}

/// A node's answer to a fresh node's probe.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) enum Answer {
    /// It has raft state in a cluster (the cluster id is `None` under the
    /// legacy logic, which has none), and knows this leader, if any.
    Member {
        /// Its cluster.
        cluster: Option<ClusterId>,
        /// The leader it knows of.
        leader: Option<RaftId>,
    },
    /// It has no raft state, and has promised this node not to form a
    /// cluster before it (decision 0003).
    Fresh {
        /// The holder of its promise.
        promised_to: Option<Node>,
    },
}

/// What a node answering a probe or a confirm knows of itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Granter {
    /// The answering node.
    pub(crate) me: Node,
    /// Whether it has raft state (a log or a vote).
    pub(crate) has_state: bool,
    /// Its stored cluster id.
    pub(crate) cluster: Option<ClusterId>,
    /// The leader it names: the one raft knows, else the former of the
    /// cluster it is bound to.
    pub(crate) leader: Option<RaftId>,
    /// Who forms its cluster, if it bound itself to it (durable).
    pub(crate) former: Option<RaftId>,
    /// The former's raft id its binding is sealed to, if it is (durable).
    pub(crate) sealed: Option<RaftId>,
    /// The node it holds a promise for.
    pub(crate) promise: Option<Node>,
    /// Its view of the tailnet.
    pub(crate) view: View,
}

/// A node's decision while it has no raft state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Decision {
    /// Join through this leader (storing this cluster id first, if any).
    Join {
        /// The cluster to join.
        cluster: Option<ClusterId>,
        /// Its leader.
        leader: RaftId,
    },
    /// Form a cluster: without a confirm round, initialize it with this
    /// node as its only voter; with one, draw its id and bind to it.
    Form,
    /// Take up forming `cluster` again (the confirm round).
    Resume {
        /// The cluster.
        cluster: ClusterId,
    },
    /// Ask the nodes in `ask` (bit `n` for node `n`) to confirm `cluster`.
    Confirm {
        /// The cluster being formed.
        cluster: ClusterId,
        /// The nodes asked.
        ask: u8,
    },
    /// Ask the nodes in `ask` to seal their binding to `cluster`.
    Seal {
        /// The cluster being formed.
        cluster: ClusterId,
        /// The nodes asked.
        ask: u8,
    },
    /// Initialize `cluster` with this node and the binders `voters` (bit
    /// `n` for node `n`) as its voters.
    Initialize {
        /// The cluster.
        cluster: ClusterId,
        /// The binders.
        voters: u8,
    },
    /// Keep probing.
    Wait,
}

/// What a node without raft state decides from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bootstrap<'a> {
    /// This node.
    pub(crate) me: Node,
    /// Its view of the tailnet.
    pub(crate) view: View,
    /// The answer of each node to this node's probes (`None`: no answer,
    /// which is Silent).
    pub(crate) answers: &'a [Option<Answer>; MAX_NODES],
    /// The promise this node holds for another node.
    pub(crate) promise: Option<Node>,
    /// Its stored cluster id (it decided to join, is bound to one, or
    /// forms one).
    pub(crate) cluster: Option<ClusterId>,
    /// Who forms that cluster, if it bound itself to it (itself, if it
    /// forms it).
    pub(crate) former: Option<RaftId>,
    /// Whether it is forming its cluster now (volatile: lost in a crash).
    pub(crate) forming: bool,
    /// The raft id each node confirmed this node's cluster with, if it
    /// did (the confirmations that reached it).
    pub(crate) confirmed: [Option<RaftId>; MAX_NODES],
    /// The raft id each node sealed its binding to this node's cluster
    /// with, if it did.
    pub(crate) sealed: [Option<RaftId>; MAX_NODES],
    /// `BootstrapOptions::follow_only`.
    pub(crate) follow_only: bool,
    /// `BootstrapOptions::expected_size`.
    pub(crate) expected_size: u8,
}

/// A node's step on a confirm request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Confirm {
    /// Bind to the caller's cluster (store it, with the caller as former)
    /// and confirm.
    Bind,
    /// Already bound to (or joining) that cluster: record the caller as its
    /// former and confirm again.
    Again,
    /// Bound to that cluster by the caller: seal the binding (durably) and
    /// confirm.
    Seal,
    /// Refuse.
    Refuse,
}

/// What a live node answers to the leader's probe (`/v1/cluster`, or the
/// probe of decision 0003): who it is now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    /// Its raft id now.
    pub(crate) id: RaftId,
    /// Its stored cluster id.
    pub(crate) cluster: Option<ClusterId>,
    /// Whether it has raft state.
    pub(crate) has_state: bool,
}

/// What the leader decides membership changes from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Leader<'a> {
    /// The leader's raft id.
    pub(crate) me: RaftId,
    /// Its cluster id.
    pub(crate) cluster: Option<ClusterId>,
    /// Its effective configuration (the last one in its log).
    pub(crate) config: Config,
    /// Index of its last log entry.
    pub(crate) last_index: u8,
    /// The highest log index known replicated to each raft id.
    pub(crate) matched: &'a [Option<u8>; 16],
    /// Its view of the tailnet.
    pub(crate) view: View,
    /// What each node (by stable id) answers to a probe now, if it is up
    /// and reachable.
    pub(crate) live: &'a [Option<Live>; MAX_NODES],
}

impl Leader<'_> {
    /// Whether `id` has replicated the leader's whole log (openraft's
    /// `add_learner` waits for the log index of the change; a learner that
    /// has all of the leader's log has that too).
    pub(crate) fn caught_up(&self, id: RaftId) -> bool {
        self.matched[id.0 as usize].is_some_and(|m| m >= self.last_index)
    }
}

/// A join request as the leader receives it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct JoinRequest {
    /// The caller (its stable id, as the leader learns it from the
    /// connection).
    pub(crate) from: Node,
    /// The raft id it asks to join as.
    pub(crate) id: RaftId,
    /// The cluster id it asks to join (decision 0003).
    pub(crate) cluster: Option<ClusterId>,
}

/// One membership change on the leader.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Change {
    /// `add_learner`.
    AddLearner(RaftId),
    /// `AddVoterIds`: a learner becomes a voter (joint, then uniform).
    Promote(RaftId),
    /// `RemoveVoters` / `RemoveNodes`: the member leaves (joint for a voter).
    Remove(RaftId),
    /// `ReplaceAllVoters`: `new` (a learner or a voter) replaces the stale
    /// incarnations `old` (voters or learners) in one joint change.
    Replace {
        /// The members that go.
        old: Set,
        /// The member that is (or becomes) a voter.
        new: RaftId,
    },
}

/// The decisions around openraft. `Legacy` transcribes the code before
/// decision 0003, `AsWritten0003` transcribes decision 0003 as first
/// written, `Design0003` calls the real `decide::` functions.
pub(crate) trait Protocol: Sync {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// The incarnation of a node that lost its raft state (a wipe, or a
    /// restart with memory storage).
    fn incarnation_after_wipe(&self, old: u8) -> u8;
    /// Whether a node whose stored cluster id is `mine` handles a raft
    /// message from a node of cluster `theirs` (the raft hello).
    fn accepts_raft(&self, mine: Option<ClusterId>, theirs: Option<ClusterId>) -> bool;
    /// Whether a node without raft state asks for promises in its probes.
    fn wants_promise(&self, _input: &Bootstrap<'_>) -> bool {
        true
    }
    /// The answer to a probe by `caller` (asking for a promise or not), and
    /// the promise the answering node holds afterwards (one step under its
    /// bootstrap lock).
    fn answer_probe(&self, granter: &Granter, caller: Node, wants: bool) -> (Answer, Option<Node>);
    /// The promise a node still holds after its view or raft state changed.
    fn keep_promise(&self, granter: &Granter) -> Option<Node>;
    /// A node's decision from its probe answers, while it has no raft
    /// state.
    fn decide(&self, input: &Bootstrap<'_>) -> Decision;
    /// The leader's change for a join request (`None`: nothing to do or
    /// refused).
    fn on_join(&self, leader: &Leader<'_>, request: &JoinRequest) -> Option<Change>;
    /// One reconciler round on the leader: at most one change.
    fn plan(&self, leader: &Leader<'_>) -> Option<Change>;
    /// Whether forming goes through a confirm round: [`Decision::Form`]
    /// draws and stores a cluster id, and the node initializes only on
    /// [`Decision::Initialize`].
    fn confirms(&self) -> bool {
        false
    }
    /// Whether the confirm round ends with a seal round:
    /// [`Decision::Initialize`] counts the binders' seals.
    fn seals(&self) -> bool {
        false
    }
    /// A node's step on the request of `caller` (as raft id `caller_id`)
    /// to confirm `cluster`, or to seal its binding to it (`seal`).
    fn on_confirm(
        &self,
        _granter: &Granter,
        _caller: RaftId,
        _cluster: ClusterId,
        _seal: bool,
    ) -> Confirm {
        Confirm::Refuse
    }
    /// Whether a node that starts without raft state or a cluster id
    /// grants no promise and binds itself to nothing until it is ready
    /// (decision 0003's "look before answering"); if not, every node is
    /// ready at all times.
    fn looks_first(&self) -> bool {
        false
    }
    /// Whether such a node is ready after deciding on `input` (its probe
    /// answers in `input.answers`: every answer that reached it since it
    /// started, as the model keeps answers until the node stops).
    fn ready(&self, _input: &Bootstrap<'_>) -> bool {
        true
    }
    /// Whether a bound node gives its binding up, its former being gone
    /// for good (`gone`: untagged in its view, the grace period passed) or
    /// having forgotten the formation (`forgot`: it answered as another
    /// incarnation, not as the former of this cluster).
    fn unbind(&self, _granter: &Granter, _gone: bool, _forgot: bool) -> bool {
        false
    }
}
