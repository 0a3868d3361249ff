//! The world: nodes running an abstract Raft (as openraft 0.9 runs it), the
//! tailnet (tags, online, each node's possibly stale view), a network that
//! loses, delays, duplicates and reorders messages, faults, clients, and the
//! bootstrap and reconciler steps, whose decisions a [`Protocol`] makes.
//!
//! Ghost state (never read by any node) records what the properties need:
//! the entries each cluster has committed (a leader saw them replicated on a
//! quorum: acknowledged), the leader of each (cluster, term), and the first
//! broken transition invariant.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::explorer::{Model, Property};
use super::protocol::{
    Answer, Bootstrap, Change, ClusterId, Config, Confirm, Decision, Granter, JoinRequest, Leader,
    Live, MAX_NODES, Node, Protocol, RaftId, Set, View,
};

/// Most clusters the ghost state keeps apart (formations beyond are not
/// explored).
const MAX_CLUSTERS: u8 = 3;

/// How a node starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Start {
    /// Up, tagged, no raft state: it bootstraps.
    Fresh,
    /// Up, tagged, a voter of cluster 0, formed before the run (every
    /// `Member` node has cluster 0's initial configuration at log index 0).
    Member,
    /// Not yet on the tailnet; a `Start` step brings it up, tagged and fresh.
    Late,
}

/// The world to explore and its bounds.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    /// How each node starts (at most [`MAX_NODES`]).
    pub(crate) nodes: Vec<Start>,
    /// `BootstrapOptions::expected_size`.
    pub(crate) expected_size: u8,
    /// Highest term any node may reach.
    pub(crate) max_term: u8,
    /// Longest log (client writes and membership changes stop there; a new
    /// leader's blank entry does not).
    pub(crate) max_log: u8,
    /// Client writes, in all.
    pub(crate) writes: u8,
    /// Crashes (a restart follows when it may), in all.
    pub(crate) crashes: u8,
    /// State wipes (crash, raft state lost, restart), in all.
    pub(crate) wipes: u8,
    /// Tag revocations or restorations, in all.
    pub(crate) tag_changes: u8,
    /// Whether the leaders' reconcilers run.
    pub(crate) reconcile: bool,
    /// The nodes faults (crashes, wipes, tag changes) may hit (bit `n` for
    /// node `n`).
    pub(crate) faulty: u8,
    /// Of those, the nodes whose tag may change (all faulty ones if
    /// `None`).
    pub(crate) taggable: Option<u8>,
    /// Whether cluster 0 starts settled: its lowest member leads term 1 and
    /// every member has its log, committed (else it starts in term 0, with
    /// no leader).
    pub(crate) settled: bool,
    /// Whether each node's view catches up on its own (else all views catch
    /// up together, in one step).
    pub(crate) skew: bool,
    /// Whether the tags settle before any node loses its state: a crash or
    /// wipe only while every started node is tagged, and no tag change
    /// after one. Keeps out the schedules in which the operator untags
    /// every live node of a cluster, which decision 0003 treats as
    /// starting over (the others may then form a new cluster).
    pub(crate) faults_after_tags: bool,
}

/// One log entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Entry {
    /// The term it was created in.
    pub(crate) term: u8,
    /// Ghost: the cluster whose leader created it.
    pub(crate) cluster: ClusterId,
    /// What it carries.
    pub(crate) kind: Kind,
}

/// What an entry carries.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// A new leader's first entry.
    Blank,
    /// A client write (its number).
    Write(u8),
    /// A membership configuration.
    Config(Config),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}:", self.term)?;
        match self.kind {
            Kind::Blank => write!(f, "blank"),
            Kind::Write(w) => write!(f, "w{w}"),
            Kind::Config(c) => write!(f, "{c:?}"),
        }
    }
}

/// A node's raft role (volatile).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Role {
    /// Follows (or waits).
    Follower,
    /// Campaigns; the votes it has.
    Candidate(Set),
    /// Leads.
    Leader {
        /// Highest index known replicated on each raft id.
        matched: [Option<u8>; 16],
        /// Highest committed index.
        commit: Option<u8>,
    },
}

/// One node.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct NodeState {
    /// On the tailnet at all (a late node before its start is not).
    pub(crate) started: bool,
    /// The process runs.
    pub(crate) up: bool,
    /// Its incarnation (its raft id is `RaftId::new(node, incarnation)`).
    pub(crate) incarnation: u8,
    /// Durable: current term.
    pub(crate) term: u8,
    /// Durable: vote in the current term.
    pub(crate) voted: Option<RaftId>,
    /// Durable: the log.
    pub(crate) log: Vec<Entry>,
    /// Durable: the stored cluster id.
    pub(crate) cluster: Option<ClusterId>,
    /// Durable: who forms that cluster, if this node bound itself to it
    /// (itself, if it forms it).
    pub(crate) former: Option<RaftId>,
    /// Durable: the former's raft id this node sealed its binding to.
    pub(crate) sealed: Option<RaftId>,
    /// Volatile: it is forming its cluster (collecting confirmations).
    pub(crate) forming: bool,
    /// Volatile: role.
    pub(crate) role: Role,
    /// Volatile: the leader it knows of.
    pub(crate) leader: Option<RaftId>,
    /// Volatile: its view of the tailnet.
    pub(crate) view: View,
    /// Volatile: the promise it holds for another node.
    pub(crate) promise: Option<Node>,
    /// Volatile: it grants promises and binds itself (a node that started
    /// with raft state or a cluster id is at once; see
    /// [`Protocol::looks_first`]).
    pub(crate) ready: bool,
}

impl NodeState {
    fn fresh(view: View) -> NodeState {
        NodeState {
            started: true,
            up: true,
            incarnation: 0,
            term: 0,
            voted: None,
            log: Vec::new(),
            cluster: None,
            former: None,
            sealed: None,
            forming: false,
            role: Role::Follower,
            leader: None,
            view,
            promise: None,
            ready: false,
        }
    }

    /// Whether it has raft state (openraft's `is_initialized`: a log or a
    /// vote).
    pub(crate) fn has_state(&self) -> bool {
        !self.log.is_empty() || self.term > 0 || self.voted.is_some()
    }

    /// The effective membership: the last configuration in the log, and its
    /// index.
    pub(crate) fn config(&self) -> Option<(u8, Config)> {
        self.log.iter().enumerate().rev().find_map(|(i, e)| match e.kind {
            Kind::Config(c) => Some((i as u8, c)),
            _ => None,
        })
    }

    fn last(&self) -> (u8, Option<u8>) {
        match self.log.last() {
            Some(e) => (e.term, Some(self.log.len() as u8 - 1)),
            None => (0, None),
        }
    }

    fn ghost_cluster(&self) -> Option<ClusterId> {
        self.log.first().map(|e| e.cluster)
    }

    fn forget_volatile(&mut self) {
        self.role = Role::Follower;
        self.leader = None;
        self.promise = None;
        self.forming = false;
        self.ready = false;
    }

    /// Whether it may grant promises and bind itself now.
    fn answers_fully(&self, protocol: &dyn Protocol) -> bool {
        self.ready || !protocol.looks_first()
    }
}

/// A message in flight.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Msg {
    /// Sending node (the receiver authorizes it by its tag).
    pub(crate) from: Node,
    /// Receiving node.
    pub(crate) to: Node,
    /// What it says.
    pub(crate) body: Body,
}

impl Msg {
    /// Messages with the same key supersede each other in flight: the
    /// newer one carries everything the older did (a leader's log only
    /// grows within its term, a candidate's newer term makes the older
    /// request moot), so the older one arriving late would be ignored
    /// (stale term, nothing new) or is the same as a lost message.
    fn key(&self) -> (Node, Node, u8) {
        let kind = match self.body {
            Body::Vote { .. } => 0,
            Body::VoteReply { .. } => 1,
            Body::Append { .. } => 2,
            Body::AppendReply { .. } => 3,
            Body::Probe(_) => 4,
            Body::Answer { .. } => 5,
            Body::Join(_) => 6,
            Body::Confirm { .. } => 7,
            Body::Confirmed { .. } => 8,
        };
        (self.from, self.to, kind)
    }

    /// Whether it belongs to a node's HTTP exchanges (probe, answer, join),
    /// which end with the process.
    fn is_http(&self) -> bool {
        !matches!(
            self.body,
            Body::Vote { .. }
                | Body::VoteReply { .. }
                | Body::Append { .. }
                | Body::AppendReply { .. }
        )
    }
}

/// A message's content.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) enum Body {
    /// Raft: a request for a vote.
    Vote {
        /// Sender's cluster id (the raft hello).
        cluster: Option<ClusterId>,
        /// Raft id it is for (the raft hello).
        target: RaftId,
        /// Candidate's term.
        term: u8,
        /// The candidate.
        candidate: RaftId,
        /// Its last log id: (term, index).
        last: (u8, Option<u8>),
    },
    /// Raft: the answer to `Vote`.
    VoteReply {
        /// Sender's cluster id.
        cluster: Option<ClusterId>,
        /// The candidate.
        target: RaftId,
        /// The voter's term.
        term: u8,
        /// The voter.
        voter: RaftId,
        /// Whether the vote is granted.
        granted: bool,
    },
    /// Raft: the leader's whole log (replication and heartbeat).
    Append {
        /// Sender's cluster id.
        cluster: Option<ClusterId>,
        /// The follower it is for.
        target: RaftId,
        /// Leader's term.
        term: u8,
        /// The leader.
        leader: RaftId,
        /// Its log.
        entries: Vec<Entry>,
    },
    /// Raft: the answer to `Append`.
    AppendReply {
        /// Sender's cluster id.
        cluster: Option<ClusterId>,
        /// The leader.
        target: RaftId,
        /// Follower's term.
        term: u8,
        /// The follower.
        follower: RaftId,
        /// The last index it now shares with the leader (`None`: refused).
        matched: Option<u8>,
    },
    /// Bootstrap: a node without raft state asks what the receiver is,
    /// asking for a promise or not.
    Probe(bool),
    /// Bootstrap: the answer to a probe.
    Answer {
        /// What it says.
        answer: Answer,
        /// The raft id of the node answering.
        id: RaftId,
    },
    /// A join request, to the leader.
    Join(JoinRequest),
    /// The confirm round: the forming node asks a peer to bind itself to
    /// its cluster, or (`seal`) to seal its binding.
    Confirm {
        /// The cluster being formed.
        cluster: ClusterId,
        /// The last round before initializing.
        seal: bool,
    },
    /// The confirm round: the peer is bound (and sealed its binding).
    Confirmed {
        /// The cluster it is bound to.
        cluster: ClusterId,
        /// Its raft id.
        id: RaftId,
        /// It sealed its binding.
        sealed: bool,
    },
}

/// Faults and writes still allowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Budget {
    writes: u8,
    crashes: u8,
    wipes: u8,
    tag_changes: u8,
}

/// A broken transition invariant (found when the step happens).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Broken {
    /// A committed entry was lost or changed (`write`: a client write).
    Lost {
        /// What happened.
        why: String,
        /// Whether a lost entry is a client write (acknowledged to a client).
        write: bool,
    },
    /// Two leaders in one term of one cluster.
    TwoLeaders(String),
}

/// The state of the whole world.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct World {
    /// The nodes.
    pub(crate) nodes: Vec<NodeState>,
    /// Which nodes carry the tag (the truth; views lag).
    pub(crate) tagged: u8,
    /// Messages in flight.
    pub(crate) net: BTreeSet<Msg>,
    /// What may still happen.
    pub(crate) budget: Budget,
    /// Ghost: per formed cluster, its committed log prefix, each entry with
    /// the term of the leader that first committed it.
    pub(crate) committed: Vec<Vec<(Entry, u8)>>,
    /// The node that drew each cluster id (the index into `committed`).
    pub(crate) formers: Vec<Node>,
    /// Ghost: (cluster, term, leader) for every election won.
    pub(crate) leaders: Vec<(ClusterId, u8, RaftId)>,
    /// Ghost: the first broken transition invariant.
    pub(crate) broken: Option<Broken>,
    /// Ghost: the clusters (bit `c` for cluster `c`) whose formation a
    /// restarted former took up again.
    pub(crate) resumed: u8,
    /// Ghost: the clusters a former initialized after taking their
    /// formation up again.
    pub(crate) resumed_formed: u8,
    /// Ghost: per cluster id, how it was initialized: the initializer's
    /// raft id and the index-0 configuration's voters (a cluster formed
    /// before the run: no initializer). A second initialization of one id
    /// with another pair is two histories under one cluster id, which the
    /// raft hello (cluster-id equality) lets meet.
    pub(crate) formations: [Option<(Option<RaftId>, Set)>; MAX_CLUSTERS as usize],
    /// Ghost: the first such second initialization.
    pub(crate) two_formations: Option<String>,
}

impl World {
    /// The tailnet as it is.
    pub(crate) fn truth(&self) -> View {
        let mut online = 0;
        for (n, node) in self.nodes.iter().enumerate() {
            if node.started && node.up {
                online |= 1 << n;
            }
        }
        View { tagged: self.tagged, online }
    }

    fn id(&self, node: Node) -> RaftId {
        RaftId::new(node, self.nodes[node as usize].incarnation)
    }
}

/// One step.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Action {
    /// A late node comes up, tagged.
    Start(Node),
    /// The process stops; volatile state is lost.
    Crash(Node),
    /// The process starts again from its durable state.
    Restart(Node),
    /// The process stops, loses all raft state, and starts again.
    Wipe(Node),
    /// The node's tag is revoked or restored.
    Tag(Node),
    /// The node's view catches up with the tailnet.
    Refresh(Node),
    /// Election timeout: the node campaigns.
    Timeout(Node),
    /// A client write on the leader.
    Write(Node),
    /// The leader sends its log to a member.
    Replicate(Node, RaftId),
    /// The leader runs one reconciler round.
    Reconcile(Node),
    /// A fresh node probes its tagged, online peers.
    Probe(Node),
    /// A node without raft state decides from its answers (and its
    /// confirmations): join, form, resume, ask for confirmations or seals,
    /// initialize.
    Decide(Node),
    /// A bound node without raft state gives its binding up, if the
    /// protocol says so (its former gone for good, or forgetful).
    Unbind(Node),
    /// A message arrives (and stays in flight: it may arrive again); the
    /// answer to a raft request reaches the sender at once.
    Deliver(Msg),
    /// A raft request arrives; its answer is lost.
    DeliverLosingReply(Msg),
}

/// The world under a protocol and a scenario: the model to explore.
pub(crate) struct System<'p> {
    /// The decisions.
    pub(crate) protocol: &'p dyn Protocol,
    /// The world and its bounds.
    pub(crate) scenario: Scenario,
}

impl System<'_> {
    fn initial(&self) -> World {
        let s = &self.scenario;
        let mut tagged = 0u8;
        for (n, start) in s.nodes.iter().enumerate() {
            if *start != Start::Late {
                tagged |= 1 << n;
            }
        }
        let online = tagged;
        let view = View { tagged, online };
        let voters = s
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, st)| **st == Start::Member)
            .fold(Set::default(), |set, (n, _)| set.with(RaftId::new(n as Node, 0)));
        let mut committed = Vec::new();
        let nodes = s
            .nodes
            .iter()
            .map(|start| {
                let mut node = NodeState::fresh(view);
                match start {
                    Start::Fresh => {}
                    Start::Member => {
                        node.ready = true;
                        node.cluster = Some(0);
                        node.log.push(Entry {
                            term: 0,
                            cluster: 0,
                            kind: Kind::Config(Config::uniform(voters, Set::default())),
                        });
                    }
                    Start::Late => {
                        node.started = false;
                        node.up = false;
                        node.view = View::default();
                    }
                }
                node
            })
            .collect();
        let mut formers = Vec::new();
        if !voters.is_empty() {
            committed.push(Vec::new());
            formers.push(Node::MAX);
        }
        let mut nodes: Vec<NodeState> = nodes;
        let mut leaders = Vec::new();
        if s.settled && !voters.is_empty() {
            let leader = voters.iter().next().unwrap_or(RaftId(0));
            let mut matched = [None; 16];
            for (n, node) in nodes.iter_mut().enumerate() {
                if !voters.has(RaftId::new(n as Node, 0)) {
                    continue;
                }
                node.log.push(Entry { term: 1, cluster: 0, kind: Kind::Blank });
                node.term = 1;
                node.voted = Some(leader);
                node.leader = Some(leader);
                matched[RaftId::new(n as Node, 0).0 as usize] = Some(1);
            }
            nodes[leader.node() as usize].role = Role::Leader { matched, commit: Some(1) };
            committed[0] = nodes[leader.node() as usize].log.iter().map(|e| (*e, 1)).collect();
            leaders.push((0, 1, leader));
        }
        World {
            nodes,
            tagged,
            net: BTreeSet::new(),
            budget: Budget {
                writes: s.writes,
                crashes: s.crashes,
                wipes: s.wipes,
                tag_changes: s.tag_changes,
            },
            committed,
            formers,
            leaders,
            broken: None,
            resumed: 0,
            resumed_formed: 0,
            formations: std::array::from_fn(|c| {
                (c == 0 && !voters.is_empty()).then_some((None, voters))
            }),
            two_formations: None,
        }
    }

    /// Puts `msg` in flight, in place of the one of the same kind between
    /// the same nodes, which it supersedes.
    fn send(&self, w: &mut World, msg: Msg) {
        let key = msg.key();
        w.net.retain(|m| m.key() != key);
        w.net.insert(msg);
    }

    /// A node gained raft state or changed its view: the protocol may
    /// release its promise; a node with raft state no longer bootstraps.
    fn settle(&self, w: &mut World, n: Node) {
        let granter = granter(w, n);
        let node = &mut w.nodes[n as usize];
        node.promise = self.protocol.keep_promise(&granter);
        if node.has_state() {
            // It no longer probes.
            w.net.retain(|m| !(m.from == n && matches!(m.body, Body::Probe(_))));
        }
    }

    fn become_leader(&self, w: &mut World, n: Node) {
        let id = w.id(n);
        let node = &mut w.nodes[n as usize];
        let term = node.term;
        let cluster = node.ghost_cluster().unwrap_or(0);
        node.log.push(Entry { term, cluster, kind: Kind::Blank });
        let mut matched = [None; 16];
        matched[id.0 as usize] = Some(node.log.len() as u8 - 1);
        node.role = Role::Leader { matched, commit: None };
        node.leader = Some(id);
        let log = node.log.clone();
        // Leader completeness: the new leader has every entry its cluster
        // committed in an earlier term.
        let committed = &w.committed[cluster as usize];
        let missing: Vec<Entry> = committed
            .iter()
            .enumerate()
            .filter(|(i, (e, t))| *t < term && log.get(*i) != Some(e))
            .map(|(_, (e, _))| *e)
            .collect();
        if w.broken.is_none() && !missing.is_empty() {
            let write = missing.iter().any(|e| matches!(e.kind, Kind::Write(_)));
            w.broken = Some(Broken::Lost {
                why: format!(
                    "{id:?} leads cluster {cluster} in term {term} without committed {missing:?}; \
                     its log {log:?}"
                ),
                write,
            });
        }
        if let Some((_, _, other)) =
            w.leaders.iter().find(|(c, t, l)| *c == cluster && *t == term && *l != id)
        {
            if w.broken.is_none() {
                w.broken = Some(Broken::TwoLeaders(format!(
                    "{other:?} and {id:?} both lead cluster {cluster} in term {term}"
                )));
            }
        } else if !w.leaders.contains(&(cluster, term, id)) {
            w.leaders.push((cluster, term, id));
            w.leaders.sort();
        }
        self.advance(w, n);
    }

    /// The leader commits what a quorum has, then finishes a committed joint
    /// change (openraft's `change_membership` appends the uniform
    /// configuration once the joint one is committed).
    fn advance(&self, w: &mut World, n: Node) {
        loop {
            let id = w.id(n);
            let node = &w.nodes[n as usize];
            let Role::Leader { matched, commit } = node.role else { return };
            let Some((config_index, config)) = node.config() else { return };
            let mut new_commit = commit;
            for i in (0..node.log.len() as u8).rev() {
                if Some(i) <= commit {
                    break;
                }
                if node.log[i as usize].term != node.term {
                    continue;
                }
                let have = config
                    .voters()
                    .iter()
                    .filter(|v| matched[v.0 as usize].is_some_and(|m| m >= i))
                    .fold(Set::default(), Set::with);
                if config.quorum(have) {
                    new_commit = Some(i);
                    break;
                }
            }
            if new_commit == commit {
                return;
            }
            let upto = new_commit.map_or(0, |c| c as usize + 1);
            let prefix = node.log[..upto].to_vec();
            let cluster = node.ghost_cluster().unwrap_or(0);
            let finish = config.is_joint() && Some(config_index) <= new_commit;
            let term = node.term;
            let committed = &mut w.committed[cluster as usize];
            let conflict = prefix.iter().zip(committed.iter()).find(|(a, (b, _))| *a != b);
            if let (Some((_, (lost, _))), None) = (conflict, &w.broken) {
                w.broken = Some(Broken::Lost {
                    why: format!(
                        "{id:?} commits {prefix:?} in cluster {cluster}, which had committed {:?}",
                        committed.iter().map(|(e, _)| *e).collect::<Vec<_>>()
                    ),
                    write: matches!(lost.kind, Kind::Write(_)),
                });
            }
            for e in prefix.iter().skip(committed.len()) {
                committed.push((*e, term));
            }
            let node = &mut w.nodes[n as usize];
            if let Role::Leader { commit, .. } = &mut node.role {
                *commit = new_commit;
            }
            if !finish {
                return;
            }
            let uniform = Config::uniform(config.new, config.learners);
            node.log.push(Entry { term, cluster, kind: Kind::Config(uniform) });
            let last = node.log.len() as u8 - 1;
            if let Role::Leader { matched, .. } = &mut node.role {
                matched[id.0 as usize] = Some(last);
            }
        }
    }

    /// Applies a membership change on leader `n` (openraft refuses one while
    /// the last configuration is not committed).
    fn change(&self, w: &mut World, n: Node, change: Change) -> bool {
        let id = w.id(n);
        let node = &mut w.nodes[n as usize];
        let Some((index, config)) = node.config() else { return false };
        let Role::Leader { commit, .. } = node.role else { return false };
        if Some(index) > commit || node.log.len() >= self.scenario.max_log as usize {
            return false;
        }
        let voters = config.new;
        let next = match change {
            Change::AddLearner(x) if !config.members().has(x) => {
                Config::uniform(voters, config.learners.with(x))
            }
            Change::Promote(x) if config.learners.has(x) => {
                Config { old: voters, new: voters.with(x), learners: config.learners.without(x) }
            }
            Change::Remove(x) if voters.has(x) && voters.len() > 1 => {
                Config { old: voters, new: voters.without(x), learners: config.learners.without(x) }
            }
            Change::Remove(x) if config.learners.has(x) => {
                Config::uniform(voters, config.learners.without(x))
            }
            Change::Replace { old, new }
                if config.members().has(new)
                    && !old.has(new)
                    && old.iter().any(|o| config.members().has(o)) =>
            {
                let kept = old.iter().fold(voters, Set::without);
                let learners = old.iter().fold(config.learners.without(new), Set::without);
                Config { old: voters, new: kept.with(new), learners }
            }
            _ => return false,
        };
        let term = node.term;
        let cluster = node.ghost_cluster().unwrap_or(0);
        node.log.push(Entry { term, cluster, kind: Kind::Config(next) });
        let last = node.log.len() as u8 - 1;
        if let Role::Leader { matched, .. } = &mut node.role {
            matched[id.0 as usize] = Some(last);
        }
        self.advance(w, n);
        true
    }

    /// Node `n` initializes its stored cluster with `voters` (openraft
    /// `initialize`).
    fn initialize(&self, w: &mut World, n: Node, voters: Set) {
        let me = w.id(n);
        let node = &mut w.nodes[n as usize];
        node.forming = false;
        let Some(cluster) = node.cluster else { return };
        let formation = (Some(me), voters);
        match &w.formations[cluster as usize] {
            None => w.formations[cluster as usize] = Some(formation),
            Some(first) if *first == formation => {}
            Some((by, first)) => {
                let by = by.map_or_else(|| "before the run".to_owned(), |id| format!("by {id:?}"));
                w.two_formations.get_or_insert(format!(
                    "cluster {cluster} initialized again by {me:?} with voters {voters:?}, after \
                     {by} with {first:?}"
                ));
            }
        }
        let node = &mut w.nodes[n as usize];
        node.log.push(Entry {
            term: 0,
            cluster,
            kind: Kind::Config(Config::uniform(voters, Set::default())),
        });
        self.settle(w, n);
    }

    /// What node `n` decides from, with the probe answers `answers`.
    fn bootstrap<'a>(
        &self,
        w: &World,
        n: Node,
        answers: &'a [Option<Answer>; MAX_NODES],
    ) -> Bootstrap<'a> {
        let node = &w.nodes[n as usize];
        let mut confirmed = [None; MAX_NODES];
        let mut sealed = [None; MAX_NODES];
        for m in &w.net {
            if let Body::Confirmed { cluster, id, sealed: seal } = m.body
                && m.to == n
                && Some(cluster) == node.cluster
            {
                confirmed[m.from as usize] = Some(id);
                if seal {
                    sealed[m.from as usize] = Some(id);
                }
            }
        }
        Bootstrap {
            me: n,
            view: node.view,
            answers,
            promise: node.promise,
            cluster: node.cluster,
            former: node.former,
            forming: node.forming,
            confirmed,
            sealed,
            follow_only: false,
            expected_size: self.scenario.expected_size,
        }
    }

    fn leader_input<'a>(
        w: &World,
        n: Node,
        matched: &'a [Option<u8>; 16],
        live: &'a [Option<Live>; MAX_NODES],
    ) -> Option<Leader<'a>> {
        let node = &w.nodes[n as usize];
        let (_, config) = node.config()?;
        Some(Leader {
            me: w.id(n),
            cluster: node.cluster,
            config,
            last_index: node.log.len() as u8 - 1,
            matched,
            view: node.view,
            live,
        })
    }

    fn live(w: &World) -> [Option<Live>; MAX_NODES] {
        let mut live = [None; MAX_NODES];
        for (n, node) in w.nodes.iter().enumerate() {
            if node.started && node.up {
                live[n] = Some(Live {
                    id: w.id(n as Node),
                    cluster: node.cluster,
                    has_state: node.has_state(),
                });
            }
        }
        live
    }

    /// The answer to a raft request reaches its sender at once, or is lost
    /// (`lost`). A late answer is one whose request was late.
    fn reply(&self, w: &mut World, msg: Msg, lost: bool) {
        if !lost {
            self.deliver(w, &msg, false);
        }
    }

    fn deliver(&self, w: &mut World, msg: &Msg, lose_reply: bool) {
        let to = msg.to;
        let node = &w.nodes[to as usize];
        if !node.started || !node.up {
            return;
        }
        // Every port authorizes the caller by its tag in the receiver's view.
        let answer = matches!(
            msg.body,
            Body::Answer { .. }
                | Body::Confirmed { .. }
                | Body::VoteReply { .. }
                | Body::AppendReply { .. }
        );
        if !answer && !node.view.tagged(msg.from) {
            return;
        }
        let me = w.id(to);
        match &msg.body {
            Body::Vote { cluster, target, term, candidate, last } => {
                if *target != me || !self.protocol.accepts_raft(node.cluster, *cluster) {
                    return;
                }
                let node = &mut w.nodes[to as usize];
                if *term > node.term {
                    node.term = *term;
                    node.voted = None;
                    node.role = Role::Follower;
                    node.leader = None;
                }
                let log_ok = *last >= node.last();
                let granted = *term == node.term
                    && log_ok
                    && (node.voted.is_none() || node.voted == Some(*candidate));
                if granted {
                    node.voted = Some(*candidate);
                }
                let reply = Body::VoteReply {
                    cluster: node.cluster,
                    target: *candidate,
                    term: node.term,
                    voter: me,
                    granted,
                };
                self.settle(w, to);
                self.reply(w, Msg { from: to, to: candidate.node(), body: reply }, lose_reply);
            }
            Body::VoteReply { cluster, target, term, voter, granted } => {
                if *target != me || !self.protocol.accepts_raft(node.cluster, *cluster) {
                    return;
                }
                let node = &mut w.nodes[to as usize];
                if *term > node.term {
                    node.term = *term;
                    node.voted = None;
                    node.role = Role::Follower;
                    node.leader = None;
                    return;
                }
                if *term < node.term || !granted {
                    return;
                }
                let Role::Candidate(votes) = node.role else { return };
                let votes = votes.with(*voter);
                node.role = Role::Candidate(votes);
                if node.config().is_some_and(|(_, c)| c.quorum(votes)) {
                    self.become_leader(w, to);
                }
            }
            Body::Append { cluster, target, term, leader, entries } => {
                if *target != me || !self.protocol.accepts_raft(node.cluster, *cluster) {
                    return;
                }
                let node = &mut w.nodes[to as usize];
                if *term < node.term {
                    let reply = Body::AppendReply {
                        cluster: node.cluster,
                        target: *leader,
                        term: node.term,
                        follower: me,
                        matched: None,
                    };
                    self.reply(w, Msg { from: to, to: leader.node(), body: reply }, lose_reply);
                    return;
                }
                node.term = *term;
                node.voted = Some(*leader);
                node.role = Role::Follower;
                node.leader = Some(*leader);
                // Raft's rule: keep entries that match, cut the log at the
                // first conflict, append the rest. A stale message never cuts.
                let ghost = node.ghost_cluster();
                let mut log = node.log.clone();
                let mut erased = None;
                for (i, e) in entries.iter().enumerate() {
                    match log.get(i) {
                        Some(mine) if mine.term == e.term => {}
                        Some(mine) => {
                            let committed = ghost.and_then(|c| w.committed[c as usize].get(i));
                            if committed.is_some_and(|(c, _)| c == mine) && erased.is_none() {
                                erased = Some(Broken::Lost {
                                    why: format!(
                                        "{me:?} erases committed entry {i} ({mine:?}) for \
                                         {leader:?}'s {e:?}"
                                    ),
                                    write: matches!(mine.kind, Kind::Write(_)),
                                });
                            }
                            log.truncate(i);
                            log.push(*e);
                        }
                        None => log.push(*e),
                    }
                }
                if let Some(broken) = erased {
                    w.broken.get_or_insert(broken);
                }
                let node = &mut w.nodes[to as usize];
                node.log = log;
                let reply = Body::AppendReply {
                    cluster: node.cluster,
                    target: *leader,
                    term: node.term,
                    follower: me,
                    matched: Some(entries.len() as u8 - 1),
                };
                self.settle(w, to);
                self.reply(w, Msg { from: to, to: leader.node(), body: reply }, lose_reply);
            }
            Body::AppendReply { cluster, target, term, follower, matched } => {
                if *target != me || !self.protocol.accepts_raft(node.cluster, *cluster) {
                    return;
                }
                let node = &mut w.nodes[to as usize];
                if *term > node.term {
                    node.term = *term;
                    node.voted = None;
                    node.role = Role::Follower;
                    node.leader = None;
                    return;
                }
                if *term < node.term {
                    return;
                }
                let Role::Leader { matched: progress, .. } = &mut node.role else { return };
                if let Some(m) = matched {
                    let slot = &mut progress[follower.0 as usize];
                    if slot.is_none_or(|s| s < *m) {
                        *slot = Some(*m);
                    }
                    self.advance(w, to);
                }
            }
            Body::Probe(wants) => {
                let granter = granter(w, to);
                // A node that is not ready answers, and grants nothing.
                let wants = *wants && node.answers_fully(self.protocol);
                let (answer, promise) = self.protocol.answer_probe(&granter, msg.from, wants);
                w.nodes[to as usize].promise = promise;
                self.send(w, Msg { from: to, to: msg.from, body: Body::Answer { answer, id: me } });
            }
            // A fresh node decides from the answers that reached it, and
            // initializes once the confirmations have.
            Body::Answer { .. } | Body::Confirmed { .. } => {}
            Body::Confirm { cluster, seal } => {
                // A node that is not ready refuses, unless it decided to
                // join a cluster (it confirms that one's former).
                if !node.answers_fully(self.protocol) && node.cluster.is_none() {
                    return;
                }
                let granter = granter(w, to);
                let former = w.id(msg.from);
                let step = self.protocol.on_confirm(&granter, former, *cluster, *seal);
                match step {
                    Confirm::Refuse => {
                        // A refused seal: the former learns it at once and
                        // forgets the confirmation it had (it asks again).
                        if *seal {
                            w.net.retain(|m| {
                                !(m.from == to
                                    && m.to == msg.from
                                    && matches!(m.body, Body::Confirmed { .. }))
                            });
                        }
                        return;
                    }
                    Confirm::Bind | Confirm::Again | Confirm::Seal => {
                        let node = &mut w.nodes[to as usize];
                        if node.former != Some(former) {
                            node.sealed = None;
                        }
                        node.cluster = Some(*cluster);
                        node.former = Some(former);
                        node.promise = None;
                        if step == Confirm::Seal {
                            node.sealed = Some(former);
                        }
                    }
                }
                self.settle(w, to);
                let sealed = step == Confirm::Seal;
                let body = Body::Confirmed { cluster: *cluster, id: me, sealed };
                self.send(w, Msg { from: to, to: msg.from, body });
            }
            Body::Join(request) => {
                let Role::Leader { matched, .. } = node.role else { return };
                let live = Self::live(w);
                let Some(leader) = Self::leader_input(w, to, &matched, &live) else { return };
                if let Some(change) = self.protocol.on_join(&leader, request) {
                    self.change(w, to, change);
                }
            }
        }
    }
}

/// Removes the messages whose arrival could change nothing any more (or
/// only as their loss would): to a process that is down (its connections
/// died with it), for a raft id the receiver no longer has, of a term older
/// than the receiver's, answers a candidate or leader has no use for, and
/// answers to a node that no longer probes. States that differ only in dead
/// messages are one state.
fn collect_garbage(w: &mut World) {
    let ids: Vec<RaftId> = (0..w.nodes.len() as Node).map(|n| w.id(n)).collect();
    let nodes = &w.nodes;
    w.net.retain(|m| {
        let r = &nodes[m.to as usize];
        if !r.started || !r.up {
            return false;
        }
        let me = ids[m.to as usize];
        match &m.body {
            Body::Vote { target, term, .. } | Body::Append { target, term, .. } => {
                *target == me && *term >= r.term
            }
            Body::VoteReply { target, term, voter, granted, .. } => {
                *target == me
                    && (*term > r.term
                        || (*term == r.term
                            && *granted
                            && matches!(r.role, Role::Candidate(v) if !v.has(*voter))))
            }
            Body::AppendReply { target, term, follower, matched, .. } => {
                *target == me
                    && (*term > r.term
                        || (*term == r.term
                            && matches!((r.role, matched), (Role::Leader { matched: known, .. }, Some(m))
                                if known[follower.0 as usize].is_none_or(|k| k < *m))))
            }
            Body::Answer { .. } | Body::Confirmed { .. } => !r.has_state(),
            Body::Probe(_) | Body::Join(_) | Body::Confirm { .. } => true,
        }
    });
}

/// Whether `m` dies with node `n`'s process: its HTTP exchanges, except
/// the confirmations it sent (its former holds them in memory once they
/// arrived; in flight, they may or may not have).
fn dies_with(m: &Msg, n: Node) -> bool {
    m.is_http() && (m.to == n || (m.from == n && !matches!(m.body, Body::Confirmed { .. })))
}

/// Whether every started node carries the tag.
fn all_tagged(w: &World) -> bool {
    w.nodes.iter().enumerate().all(|(n, node)| !node.started || w.tagged & (1 << n) != 0)
}

/// What node `n` knows of itself, as the protocol sees it.
fn granter(w: &World, n: Node) -> Granter {
    let node = &w.nodes[n as usize];
    Granter {
        me: n,
        has_state: node.has_state(),
        cluster: node.cluster,
        leader: node.leader.or(node.former),
        former: node.former,
        sealed: node.sealed,
        promise: node.promise,
        view: node.view,
    }
}

impl Model for System<'_> {
    type State = World;
    type Action = Action;

    fn init(&self) -> Vec<World> {
        vec![self.initial()]
    }

    fn actions(&self, w: &World, out: &mut Vec<Action>) {
        for (i, node) in w.nodes.iter().enumerate() {
            let n = i as Node;
            if !node.started {
                out.push(Action::Start(n));
                continue;
            }
            out.push(Action::Restart(n));
            if self.scenario.faulty & (1 << n) != 0 {
                out.extend([Action::Crash(n), Action::Wipe(n)]);
            }
            if self.scenario.taggable.unwrap_or(self.scenario.faulty) & (1 << n) != 0 {
                out.push(Action::Tag(n));
            }
            if !node.up {
                continue;
            }
            out.extend([
                Action::Refresh(n),
                Action::Timeout(n),
                Action::Probe(n),
                Action::Decide(n),
                Action::Unbind(n),
            ]);
            if let (Role::Leader { .. }, Some((_, config))) = (node.role, node.config()) {
                out.push(Action::Write(n));
                out.push(Action::Reconcile(n));
                let me = w.id(n);
                for member in config.members().iter().filter(|m| *m != me) {
                    out.push(Action::Replicate(n, member));
                }
            }
        }
        for msg in &w.net {
            if !matches!(msg.body, Body::Answer { .. }) {
                out.push(Action::Deliver(msg.clone()));
                if matches!(msg.body, Body::Vote { .. } | Body::Append { .. }) {
                    out.push(Action::DeliverLosingReply(msg.clone()));
                }
            }
        }
    }

    fn next(&self, before: &World, action: &Action) -> Option<World> {
        let s = &self.scenario;
        let mut w = before.clone();
        match action {
            Action::Start(n) => {
                let truth = w.truth();
                let node = &mut w.nodes[*n as usize];
                node.started = true;
                node.up = true;
                w.tagged |= 1 << n;
                let truth = View { tagged: truth.tagged | 1 << n, online: truth.online | 1 << n };
                w.nodes[*n as usize].view = truth;
            }
            Action::Crash(n) => {
                let settled = !s.faults_after_tags || all_tagged(&w);
                let node = &mut w.nodes[*n as usize];
                if !node.up || w.budget.crashes == 0 || !settled {
                    return None;
                }
                w.budget.crashes -= 1;
                node.up = false;
                node.forget_volatile();
                w.net.retain(|m| !dies_with(m, *n));
            }
            Action::Restart(n) => {
                if w.nodes[*n as usize].up {
                    return None;
                }
                let node = &mut w.nodes[*n as usize];
                node.up = true;
                node.ready =
                    self.protocol.looks_first() && (node.has_state() || node.cluster.is_some());
                w.nodes[*n as usize].view = w.truth();
            }
            Action::Wipe(n) => {
                if w.budget.wipes == 0 || (s.faults_after_tags && !all_tagged(&w)) {
                    return None;
                }
                w.budget.wipes -= 1;
                let truth = w.truth();
                let node = &mut w.nodes[*n as usize];
                let incarnation = self.protocol.incarnation_after_wipe(node.incarnation).min(3);
                *node = NodeState::fresh(truth);
                node.incarnation = incarnation;
                node.view = View { online: truth.online | 1 << n, ..truth };
                w.net.retain(|m| !dies_with(m, *n));
            }
            Action::Tag(n) => {
                let faulted = w.budget.wipes < s.wipes || w.budget.crashes < s.crashes;
                if w.budget.tag_changes == 0 || (s.faults_after_tags && faulted) {
                    return None;
                }
                w.budget.tag_changes -= 1;
                w.tagged ^= 1 << n;
            }
            Action::Refresh(n) => {
                let truth = w.truth();
                let all: Vec<Node> = if s.skew {
                    vec![*n]
                } else {
                    (0..w.nodes.len() as Node).filter(|&m| w.nodes[m as usize].up).collect()
                };
                for m in all {
                    w.nodes[m as usize].view = truth;
                    self.settle(&mut w, m);
                }
            }
            Action::Timeout(n) => {
                let me = w.id(*n);
                let node = &mut w.nodes[*n as usize];
                let (_, config) = node.config()?;
                if !config.voters().has(me)
                    || matches!(node.role, Role::Leader { .. })
                    || node.term >= s.max_term
                {
                    return None;
                }
                node.term += 1;
                node.voted = Some(me);
                node.leader = None;
                let votes = Set::default().with(me);
                node.role = Role::Candidate(votes);
                let (term, last, cluster) = (node.term, node.last(), node.cluster);
                if config.quorum(votes) {
                    self.become_leader(&mut w, *n);
                } else {
                    for voter in config.voters().iter().filter(|v| *v != me) {
                        let body = Body::Vote { cluster, target: voter, term, candidate: me, last };
                        self.send(&mut w, Msg { from: *n, to: voter.node(), body });
                    }
                }
            }
            Action::Write(n) => {
                let me = w.id(*n);
                let node = &mut w.nodes[*n as usize];
                if w.budget.writes == 0 || node.log.len() >= s.max_log as usize {
                    return None;
                }
                let Role::Leader { matched, .. } = &mut node.role else { return None };
                let number = s.writes - w.budget.writes;
                w.budget.writes -= 1;
                let cluster = node.log[0].cluster;
                node.log.push(Entry { term: node.term, cluster, kind: Kind::Write(number) });
                matched[me.0 as usize] = Some(node.log.len() as u8 - 1);
                self.advance(&mut w, *n);
            }
            Action::Replicate(n, target) => {
                let node = &w.nodes[*n as usize];
                // A follower known to have the whole log gets no heartbeat:
                // it could only learn what it knows (or, with a newer term,
                // depose a leader, which no schedule needs).
                let last = node.log.len() as u8 - 1;
                if let Role::Leader { matched, .. } = node.role
                    && matched[target.0 as usize] == Some(last)
                {
                    return None;
                }
                let body = Body::Append {
                    cluster: node.cluster,
                    target: *target,
                    term: node.term,
                    leader: w.id(*n),
                    entries: node.log.clone(),
                };
                self.send(&mut w, Msg { from: *n, to: target.node(), body });
            }
            Action::Reconcile(n) => {
                if !s.reconcile {
                    return None;
                }
                let Role::Leader { matched, .. } = w.nodes[*n as usize].role else {
                    return None;
                };
                let live = Self::live(&w);
                let leader = Self::leader_input(&w, *n, &matched, &live)?;
                let change = self.protocol.plan(&leader)?;
                if !self.change(&mut w, *n, change) {
                    return None;
                }
            }
            Action::Probe(n) => {
                let node = &w.nodes[*n as usize];
                if node.has_state() {
                    return None;
                }
                let answers = [None; MAX_NODES];
                let wants = self.protocol.wants_promise(&self.bootstrap(&w, *n, &answers));
                let peers: Vec<Node> = node.view.online_peers(*n).collect();
                for peer in peers {
                    self.send(&mut w, Msg { from: *n, to: peer, body: Body::Probe(wants) });
                }
            }
            Action::Decide(n) => {
                let node = &w.nodes[*n as usize];
                if node.has_state() {
                    return None;
                }
                let mut answers = [None; MAX_NODES];
                for m in &w.net {
                    if let (true, Body::Answer { answer, .. }) = (m.to == *n, &m.body) {
                        answers[m.from as usize] = Some(*answer);
                    }
                }
                let input = self.bootstrap(&w, *n, &answers);
                let me = w.id(*n);
                // The shell's round: readiness first, on the answers in.
                if self.protocol.looks_first() && !w.nodes[*n as usize].ready {
                    w.nodes[*n as usize].ready = self.protocol.ready(&input);
                }
                let decision = self.protocol.decide(&input);
                match decision {
                    Decision::Wait => {}
                    Decision::Join { cluster: _, leader }
                        if self.protocol.confirms()
                            && !(input.view.tagged(leader.node())
                                && input.view.online(leader.node())) =>
                    {
                        // The shell resolves the leader to a tagged, online
                        // node of its view before it stores anything.
                    }
                    Decision::Join { cluster, leader } => {
                        let request = JoinRequest { from: *n, id: me, cluster };
                        let node = &mut w.nodes[*n as usize];
                        if cluster.is_some() {
                            node.cluster = cluster;
                        }
                        node.forming = false;
                        self.settle(&mut w, *n);
                        self.send(
                            &mut w,
                            Msg { from: *n, to: leader.node(), body: Body::Join(request) },
                        );
                    }
                    Decision::Form => {
                        let drawn = w.committed.len() as u8;
                        if drawn >= MAX_CLUSTERS {
                            return None;
                        }
                        w.committed.push(Vec::new());
                        w.formers.push(*n);
                        let node = &mut w.nodes[*n as usize];
                        node.cluster = Some(drawn);
                        if self.protocol.confirms() {
                            node.former = Some(me);
                            node.forming = true;
                            node.promise = None;
                        } else {
                            self.initialize(&mut w, *n, Set::default().with(me));
                        }
                    }
                    Decision::Resume { cluster } => {
                        w.resumed |= 1 << cluster;
                        let node = &mut w.nodes[*n as usize];
                        node.cluster = Some(cluster);
                        node.former = Some(me);
                        node.forming = true;
                        node.promise = None;
                    }
                    Decision::Confirm { cluster, ask } | Decision::Seal { cluster, ask } => {
                        let seal = matches!(decision, Decision::Seal { .. });
                        let view = w.nodes[*n as usize].view;
                        for peer in (0..MAX_NODES as Node).filter(|p| ask & (1 << p) != 0) {
                            if view.online(peer) {
                                let body = Body::Confirm { cluster, seal };
                                self.send(&mut w, Msg { from: *n, to: peer, body });
                            }
                        }
                    }
                    Decision::Initialize { cluster, voters } => {
                        if w.nodes[*n as usize].cluster != Some(cluster) {
                            return None;
                        }
                        // The binders' raft ids as they sealed (as they
                        // confirmed, without a seal round).
                        let ids =
                            if self.protocol.seals() { input.sealed } else { input.confirmed };
                        let mut set = Set::default().with(me);
                        for peer in (0..MAX_NODES as Node).filter(|p| voters & (1 << p) != 0) {
                            set = set.with(ids[peer as usize]?);
                        }
                        w.resumed_formed |= w.resumed & (1 << cluster);
                        self.initialize(&mut w, *n, set);
                    }
                }
            }
            Action::Unbind(n) => {
                let node = &w.nodes[*n as usize];
                let (Some(cluster), Some(former)) = (node.cluster, node.former) else {
                    return None;
                };
                if node.has_state() || former.node() == *n {
                    return None;
                }
                let gone = !node.view.tagged(former.node());
                // The former answered as another incarnation, and not as
                // the former of this cluster.
                let forgot = w.net.iter().any(|m| match m.body {
                    Body::Answer { answer, id } => {
                        m.to == *n
                            && m.from == former.node()
                            && id != former
                            && !matches!(answer, Answer::Member { cluster: Some(c), leader: Some(l) }
                                if c == cluster && l.node() == former.node())
                    }
                    _ => false,
                });
                if !self.protocol.unbind(&granter(&w, *n), gone, forgot) {
                    return None;
                }
                let node = &mut w.nodes[*n as usize];
                node.cluster = None;
                node.former = None;
                node.sealed = None;
            }
            Action::Deliver(msg) => self.deliver(&mut w, msg, false),
            Action::DeliverLosingReply(msg) => self.deliver(&mut w, msg, true),
        }
        collect_garbage(&mut w);
        (w != *before).then_some(w)
    }

    fn describe(&self, before: &World, action: &Action) -> String {
        let name = |n: &Node| (b'a' + n) as char;
        let mut line = match action {
            Action::Start(n) => format!("{} starts (tagged, fresh)", name(n)),
            Action::Crash(n) => format!("{} crashes", name(n)),
            Action::Restart(n) => format!("{} restarts from its stored state", name(n)),
            Action::Wipe(n) => format!("{} loses its raft state and restarts", name(n)),
            Action::Tag(n) => {
                let on = before.tagged & (1 << n) == 0;
                format!("{}'s tag is {}", name(n), if on { "restored" } else { "revoked" })
            }
            Action::Refresh(n) => format!("{}'s view catches up", name(n)),
            Action::Timeout(n) => format!("{} times out and campaigns", name(n)),
            Action::Write(n) => format!("client write on {}", name(n)),
            Action::Replicate(n, t) => format!("{} sends its log to {t:?}", name(n)),
            Action::Reconcile(n) => format!("{} runs the membership reconciler", name(n)),
            Action::Probe(n) => format!("{} probes its online tagged peers", name(n)),
            Action::Decide(n) => format!("{} decides", name(n)),
            Action::Unbind(n) => format!("{} gives up its binding", name(n)),
            Action::Deliver(m) => format!("deliver {}", show_msg(m)),
            Action::DeliverLosingReply(m) => format!("deliver {}, lose the answer", show_msg(m)),
        };
        if let Some(after) = self.next(before, action) {
            let notes = changes(before, &after);
            if !notes.is_empty() {
                let _ = write!(line, "  => {notes}");
            }
        }
        line
    }

    fn properties(&self) -> Vec<Property<World>> {
        vec![
            Property { name: SINGLE_CLUSTER, check: single_cluster },
            Property { name: NO_LOST_COMMIT, check: no_lost_commit },
            Property { name: NO_LOST_WRITE, check: no_lost_write },
            Property { name: ONE_LEADER_PER_TERM, check: one_leader_per_term },
            Property { name: ONE_FORMATION_PER_CLUSTER, check: one_formation_per_cluster },
            Property { name: RESUMED_COMMITS, check: resumed_commits },
        ]
    }
}

/// Property (a): no two clusters both commit entries.
pub(crate) const SINGLE_CLUSTER: &str = "single cluster";
/// Property (b): no committed (acknowledged) entry is ever lost.
pub(crate) const NO_LOST_COMMIT: &str = "no lost commit";
/// Property (b) for client writes alone: no acknowledged write is lost.
pub(crate) const NO_LOST_WRITE: &str = "no lost write";
/// Sanity: at most one leader per term per cluster.
pub(crate) const ONE_LEADER_PER_TERM: &str = "one leader per term";

/// Ghost: a cluster id is initialized once (one initializer raft id, one
/// index-0 configuration): docs/reliability.md finding 38.
pub(crate) const ONE_FORMATION_PER_CLUSTER: &str = "one formation per cluster id";

fn one_formation_per_cluster(w: &World) -> Option<String> {
    w.two_formations.clone()
}

/// Not a property but a witness that the checks reach what they are for:
/// "violated" when a cluster that a restarted former took up again and
/// initialized commits an entry.
pub(crate) const RESUMED_COMMITS: &str = "witness: a resumed formation commits";

fn resumed_commits(w: &World) -> Option<String> {
    (0..w.committed.len())
        .find(|&c| w.resumed_formed & (1 << c) != 0 && !w.committed[c].is_empty())
        .map(|c| format!("cluster {c}, initialized by a restarted former, committed"))
}

fn single_cluster(w: &World) -> Option<String> {
    let with: Vec<usize> = (0..w.committed.len()).filter(|&c| !w.committed[c].is_empty()).collect();
    (with.len() > 1).then(|| {
        let each: Vec<String> = with
            .iter()
            .map(|&c| {
                format!(
                    "cluster {c} committed {:?}",
                    w.committed[c].iter().map(|(e, _)| *e).collect::<Vec<_>>()
                )
            })
            .collect();
        each.join("; ")
    })
}

fn no_lost_commit(w: &World) -> Option<String> {
    match &w.broken {
        Some(Broken::Lost { why, .. }) => Some(why.clone()),
        _ => None,
    }
}

fn no_lost_write(w: &World) -> Option<String> {
    match &w.broken {
        Some(Broken::Lost { why, write: true }) => Some(why.clone()),
        _ => None,
    }
}

fn one_leader_per_term(w: &World) -> Option<String> {
    match &w.broken {
        Some(Broken::TwoLeaders(why)) => Some(why.clone()),
        _ => None,
    }
}

fn show_msg(m: &Msg) -> String {
    let (from, to) = ((b'a' + m.from) as char, (b'a' + m.to) as char);
    let body = match &m.body {
        Body::Vote { term, candidate, last, .. } => {
            format!("vote request ({candidate:?}, term {term}, last log {last:?})")
        }
        Body::VoteReply { term, granted, .. } => {
            format!("vote {} (term {term})", if *granted { "granted" } else { "refused" })
        }
        Body::Append { term, entries, .. } => format!("append (term {term}) {entries:?}"),
        Body::AppendReply { term, matched, .. } => match matched {
            Some(m) => format!("append ok up to {m} (term {term})"),
            None => format!("append refused (term {term})"),
        },
        Body::Probe(true) => "probe (asks for a promise)".to_owned(),
        Body::Probe(false) => "probe".to_owned(),
        Body::Answer { answer, id } => format!("answer {answer:?} (as {id:?})"),
        Body::Join(r) => format!("join as {:?} (cluster {:?})", r.id, r.cluster),
        Body::Confirm { cluster, seal: false } => format!("confirm cluster {cluster}"),
        Body::Confirm { cluster, seal: true } => format!("seal cluster {cluster}"),
        Body::Confirmed { cluster, id, sealed } => {
            let what = if *sealed { "sealed" } else { "confirmed" };
            format!("{what} cluster {cluster} ({id:?})")
        }
    };
    format!("{from}->{to} {body}")
}

/// A readable summary of what a step changed.
fn changes(before: &World, after: &World) -> String {
    let mut notes = Vec::new();
    for (i, (b, a)) in before.nodes.iter().zip(&after.nodes).enumerate() {
        let name = (b'a' + i as u8) as char;
        let was_leader = matches!(b.role, Role::Leader { .. });
        if let Role::Leader { commit, .. } = a.role {
            if !was_leader {
                notes.push(format!("{name} leads term {}", a.term));
            }
            let old = match b.role {
                Role::Leader { commit, .. } => commit,
                _ => None,
            };
            if commit > old {
                notes.push(format!("{name} commits up to {}", commit.unwrap_or(0)));
            }
        } else if was_leader && a.up {
            notes.push(format!("{name} steps down"));
        }
        if a.log != b.log {
            notes.push(format!("{name} log {:?}", a.log));
        }
        if a.cluster != b.cluster {
            notes.push(format!("{name} stores cluster {:?}", a.cluster));
        }
        if a.former != b.former
            && let Some(former) = a.former
        {
            notes.push(format!("{name} bound to {former:?}'s cluster"));
        }
        if a.sealed != b.sealed
            && let Some(former) = a.sealed
        {
            notes.push(format!("{name} sealed to {former:?}"));
        }
        if a.promise != b.promise {
            let holder = a.promise.map(|p| (b'a' + p) as char);
            notes.push(format!("{name} promise {holder:?}"));
        }
        if a.voted != b.voted && a.voted.is_some() && a.term == b.term {
            notes.push(format!("{name} votes {:?}", a.voted.unwrap_or(RaftId(0))));
        }
        if a.incarnation != b.incarnation {
            notes.push(format!("{name} is now {:?}", RaftId::new(i as u8, a.incarnation)));
        }
        if a.view != b.view && a.up && b.up {
            notes.push(format!("{name} sees {:?}", a.view));
        }
    }
    if let (Some(broken), None) = (&after.broken, &before.broken) {
        notes.push(format!("BROKEN: {broken:?}"));
    }
    notes.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::design::Design0003;

    /// The ghost property fires: one cluster id initialized a second time
    /// by another node with other voters is a violation; the same
    /// initialization repeated (a former asked again) is not.
    #[test]
    fn a_second_initialization_of_one_cluster_id_is_a_violation() {
        let scenario = Scenario { tag_changes: 0, ..crate::model::tests::fresh_three() };
        let system = System { protocol: &Design0003, scenario };
        let mut w = system.initial();
        for n in 0..3 {
            w.nodes[n].cluster = Some(1);
        }
        let first = Set::default().with(w.id(0)).with(w.id(2));
        system.initialize(&mut w, 0, first);
        system.initialize(&mut w, 0, first);
        assert_eq!(one_formation_per_cluster(&w), None);
        let second = Set::default().with(w.id(1)).with(w.id(2));
        system.initialize(&mut w, 1, second);
        let found = one_formation_per_cluster(&w).expect("a second formation of cluster 1");
        assert!(found.contains("cluster 1 initialized again"), "{found}");
    }
}
