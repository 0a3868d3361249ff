//! How a node without raft state finds or forms its cluster, and how it
//! answers other such nodes (decision 0003).
//!
//! A node probes every tagged peer in its view. Each answer is a
//! [`Answer::Member`] of a cluster (with the leader it names), a
//! [`Answer::Fresh`] node with the promise it holds, or [`Answer::Silent`].
//! [`decide`] turns the answers, and what this node is already committed
//! to ([`Commitment`]), into one [`Decision`]. [`answer`] is the other
//! side of a probe (the promises), [`confirm`] the other side of the
//! confirm round.
//!
//! A promise (granted by node G to node X) means: G forms no cluster before
//! X does, and promises nobody else, for as long as G holds it. A promise is
//! released when its holder gives it back (it probes without asking for
//! one), is untagged or gone from the granter's view, or when the granter
//! gets a cluster. Not when the holder is merely offline: an offline tagged
//! node is silent to every prober, which blocks forming anyway.
//!
//! A released promise is worthless to its holder, who may still be acting
//! on an answer given before the release: so forming is two steps.
//! [`Decision::Form`] draws a cluster id; the former stores it, bound to
//! itself, and asks every tagged peer to confirm ([`Decision::Confirm`]).
//! A peer that still holds the former's promise binds itself to that
//! cluster in the same step ([`Confirmation::Bind`]); one that released it
//! refuses. Only when every tagged peer of its view is bound does the
//! former initialize the cluster, with every binder as an initial voter
//! ([`Decision::Initialize`]). A bound node (one with a cluster id and no
//! raft state) answers as a member of its cluster, grants no promise, never
//! forms and joins only that cluster: it never changes its cluster id.
//! Two nodes whose views share a node therefore never both initialize a
//! cluster, and a cluster never commits without a majority of the nodes
//! that bound themselves to it.

use std::fmt;

/// A leader hint: whether it names a node (by stable id), whatever its
/// incarnation.
pub(crate) trait Names<N> {
    /// Whether this hint names `node`.
    fn names(&self, node: &N) -> bool;
}

/// What one tagged peer answered a probe with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer<N, C, L> {
    /// It has a cluster id: it is a member of `cluster`, bound to it, joining
    /// it or forming it; `leader` is the leader it names (its former, while
    /// the cluster is being formed).
    Member {
        /// The cluster.
        cluster: C,
        /// Its leader, if the peer names one.
        leader: Option<L>,
    },
    /// It has no cluster; `promised_to` is the node it holds a promise to.
    Fresh {
        /// The holder of its promise, if any.
        promised_to: Option<N>,
    },
    /// No usable answer: a timeout, a refusal, 403, an unreachable or
    /// malformed answer, or the peer is offline in the view. A cluster may
    /// exist there.
    Silent,
}

/// One tagged peer of the prober's view and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer<N, C, L> {
    /// The peer.
    pub(crate) name: N,
    /// What it answered.
    pub(crate) answer: Answer<N, C, L>,
}

/// What the deciding node is already committed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Commitment<'a, N, C> {
    /// No cluster id: it may promise, form, or join any cluster.
    Free {
        /// The promise it holds, if any, and whether its holder is still
        /// tagged in its view.
        holding: Option<(&'a N, bool)>,
    },
    /// It stored cluster id `cluster` and has no raft state yet: it bound
    /// itself to the cluster `former` is forming (`former` is this node
    /// itself if it was forming it before a restart), or it decided to
    /// join the cluster (`former` unknown).
    Bound {
        /// The cluster.
        cluster: &'a C,
        /// Who forms it, if this node bound itself to it.
        former: Option<&'a N>,
    },
    /// It is forming `cluster`: it stored the id, bound to itself, and
    /// collects confirmations; `confirmed` are the peers bound so far, and
    /// `sealed` those that answered its last round before initializing
    /// (each bound to it for good: see [`confirm`]).
    Forming {
        /// The cluster.
        cluster: &'a C,
        /// The peers that confirmed (any order).
        confirmed: &'a [N],
        /// The peers that sealed their binding (any order).
        sealed: &'a [N],
    },
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub(crate) struct Situation<'a, N, C, L> {
    /// The deciding node.
    pub(crate) me: &'a N,
    /// It never forms a cluster.
    pub(crate) follow_only: bool,
    /// Tagged nodes (itself included) it must see before forming one.
    pub(crate) expected_size: usize,
    /// Every tagged peer in its view (online or not; offline ones answer
    /// [`Answer::Silent`]), itself excluded, in any order.
    pub(crate) peers: &'a [Peer<N, C, L>],
    /// What it is committed to.
    pub(crate) commitment: Commitment<'a, N, C>,
}

/// What a node without raft state does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision<N, C, L> {
    /// Join `cluster` by calling `leader` (learned from peer `via`),
    /// storing the cluster id first.
    Join {
        /// The cluster to join.
        cluster: C,
        /// Its leader.
        leader: L,
        /// The peer that named it.
        via: N,
    },
    /// Form a new cluster: draw its id, store it bound to this node, and
    /// ask every tagged peer to confirm.
    Form,
    /// Take up forming `cluster` again: this node read back its own binding
    /// to it (the same incarnation, restarted with its state). Store the id
    /// bound to this node and ask for confirmations. Never on a peer's word:
    /// a node names an earlier incarnation of this one as a former only of
    /// a cluster that incarnation may have initialized already
    /// ([`Wait::EarlierIncarnation`]).
    Resume {
        /// The cluster.
        cluster: C,
    },
    /// Ask these peers to confirm `cluster` (bind themselves to it).
    Confirm {
        /// The cluster being formed.
        cluster: C,
        /// The peers that have not confirmed yet, in order.
        ask: Vec<N>,
    },
    /// Every tagged peer confirmed: ask these (the ones that have not yet)
    /// to seal their binding, the last round before initializing. A peer
    /// that is no longer bound to `cluster` by this node (it restarted
    /// without its state, or unbound itself) refuses, and this node
    /// initializes only once every tagged peer sealed.
    Seal {
        /// The cluster being formed.
        cluster: C,
        /// The peers that have not sealed yet, in order.
        ask: Vec<N>,
    },
    /// Every tagged peer sealed its binding: initialize `cluster` with this
    /// node and `voters` (the binders) as its voters.
    Initialize {
        /// The cluster.
        cluster: C,
        /// The other initial voters, in order.
        voters: Vec<N>,
    },
    /// Probe again later, for this reason.
    Wait(Wait<N, C>),
}

/// Why a node waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wait<N, C> {
    /// A peer is a member of `cluster` and names an earlier incarnation of
    /// this node as its leader or former (rule 2): that incarnation may
    /// have initialized the cluster, so this node waits for the peer to
    /// give the binding up (it sees this node forgot) or to name another
    /// leader.
    EarlierIncarnation {
        /// The peer.
        peer: N,
        /// Its cluster.
        cluster: C,
    },
    /// A peer is a member of `cluster` but names no leader (rule 3).
    MemberWithoutLeader {
        /// The peer.
        peer: N,
        /// Its cluster.
        cluster: C,
    },
    /// A peer did not answer usefully: a cluster may exist there (rule 3).
    Silent {
        /// The peer.
        peer: N,
    },
    /// This node only joins (rule 4).
    FollowOnly,
    /// Fewer tagged nodes than expected (rule 4).
    TooFew {
        /// Tagged nodes in the view, this one included.
        tagged: usize,
        /// How many are expected.
        expected: usize,
    },
    /// Another tagged node sorts lower and forms the cluster (rule 4).
    NotLowest {
        /// The lowest one.
        lower: N,
    },
    /// A fresh peer has not promised this node (rule 5).
    NotPromised {
        /// The peer.
        peer: N,
        /// Whom it promised instead, if anyone.
        promised_to: Option<N>,
    },
    /// This node holds a promise to another tagged node (rule 5).
    Holding {
        /// The holder.
        to: N,
    },
    /// This node is bound to `cluster` (or decided to join it), and no peer
    /// names a leader of it yet.
    Bound {
        /// The cluster.
        cluster: C,
        /// Who forms it, if known.
        former: Option<N>,
    },
}

impl<N: fmt::Display, C: fmt::Display> fmt::Display for Wait<N, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::EarlierIncarnation { peer, cluster } => write!(
                f,
                "{peer} names an earlier incarnation of this node as the leader or former of \
                 cluster {cluster}, which it may have initialized: this node never takes up a \
                 cluster id it did not draw; waiting for {peer} to give its binding up or to \
                 name another leader (a binding {peer} sealed is never given up: then only \
                 untagging {peer} or moving its state directory away ends the wait)"
            ),
            Wait::MemberWithoutLeader { peer, cluster } => {
                write!(f, "{peer} is a member of cluster {cluster} but knows no leader")
            }
            Wait::Silent { peer } => write!(
                f,
                "tagged node {peer} does not answer (offline, unreachable or refusing); a cluster \
                 may exist there (untag it to start without it)"
            ),
            Wait::FollowOnly => f.write_str("no cluster found, and this node only joins"),
            Wait::TooFew { tagged, expected } => {
                write!(f, "{tagged} of {expected} expected tagged nodes in view")
            }
            Wait::NotLowest { lower } => {
                write!(f, "waiting for {lower}, which sorts lower, to form the cluster")
            }
            Wait::NotPromised { peer, promised_to: Some(other) } => {
                write!(f, "{peer} has promised {other}, not this node")
            }
            Wait::NotPromised { peer, promised_to: None } => {
                write!(f, "{peer} has not promised this node yet")
            }
            Wait::Holding { to } => write!(f, "this node has promised {to} to wait for it"),
            Wait::Bound { cluster, former: Some(former) } => write!(
                f,
                "bound to cluster {cluster}, which {former} is forming; waiting for it to \
                 initialize the cluster (if {former} is gone for good, move this node's state \
                 directory away to start over)"
            ),
            Wait::Bound { cluster, former: None } => {
                write!(f, "joining cluster {cluster}; no peer names its leader yet")
            }
        }
    }
}

/// The lowest of `names`.
fn lowest<'a, N: Ord + 'a>(names: impl Iterator<Item = &'a N>) -> Option<&'a N> {
    names.min()
}

/// Whether the prober asks its peers for promises this round: a free node
/// that may form a cluster (not follow-only, enough tagged nodes, the
/// lowest of them), and a node forming one (a promise lets a fresh peer
/// bind itself). Asking otherwise would tie up promises the lowest node
/// needs; a probe that does not ask gives back a promise the peer holds
/// for the prober.
pub(crate) fn wants_promises<'a, N: Ord + 'a, C>(
    me: &N,
    peers: impl Iterator<Item = &'a N> + Clone,
    follow_only: bool,
    expected_size: usize,
    commitment: &Commitment<'_, N, C>,
) -> bool {
    match commitment {
        Commitment::Forming { .. } => true,
        Commitment::Bound { former, .. } => *former == Some(me),
        Commitment::Free { .. } => {
            let tagged = 1 + peers.clone().count();
            !follow_only && tagged >= expected_size && lowest(peers).is_none_or(|low| low > me)
        }
    }
}

/// The decision of a node without raft state, over its peers' answers.
///
/// A **free** node (no cluster id), the first rule that applies:
///
/// 1. Some peer is a member of a cluster and names a leader that is not
///    this node → join that cluster through that leader (the lowest such
///    peer's, to be deterministic).
/// 2. Some peer is a member of a cluster and names this node as its leader
///    (an earlier incarnation of this node, by stable id: this node has no
///    cluster id, so it is not the incarnation that drew that one) → wait.
///    That incarnation may have initialized the cluster with other voters
///    (the peer was bound to it but never sealed, so it was not counted):
///    taking the id up would initialize it a second time, with another
///    index-0 membership (docs/reliability.md finding 38). The peer gives
///    its binding up once it sees this node forgot (a new incarnation, not
///    forming), and this node then forms a cluster of its own; a member
///    whose stale hint names it names the new leader once one is elected.
/// 3. Some peer is a member without a leader → wait: a cluster exists.
/// 4. Some peer is silent → wait: a cluster may exist there.
/// 5. Follow-only, or fewer than `expected_size` tagged nodes (this one
///    included), or another tagged node sorts lower → wait.
/// 6. Some fresh peer holds no promise to this node, or this node holds a
///    promise to another node that is still tagged → wait.
/// 7. Otherwise (every peer fresh and promised to this node) → form.
///
/// A **bound** node joins its own cluster through a leader a peer names
/// (not itself), and otherwise waits; one bound to itself (it was forming
/// the cluster before a restart, with its state: the same incarnation)
/// resumes forming it. That is the only resume.
///
/// A **forming** node joins its cluster through a leader a peer names
/// other than itself (defensive: only the incarnation that drew the id
/// initializes it, so another leader of it means it exists already); else
/// it waits while fewer than
/// `expected_size` tagged nodes are in view; else it asks the tagged peers
/// of its view that have not confirmed to confirm, then, once all have,
/// those that have not sealed their binding to seal it, and initializes
/// once every tagged peer of its view sealed.
pub(crate) fn decide<N, C, L>(s: &Situation<'_, N, C, L>) -> Decision<N, C, L>
where
    N: Ord + Clone,
    C: Clone + PartialEq,
    L: Clone + Names<N>,
{
    let mut peers: Vec<&Peer<N, C, L>> = s.peers.iter().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    // A leader of `cluster` (any, if `None`) named by a peer, not this node.
    let leader_of = |cluster: Option<&C>| {
        peers.iter().find_map(|p| match &p.answer {
            Answer::Member { cluster: c, leader: Some(l) }
                if cluster.is_none_or(|want| want == c) && !l.names(s.me) =>
            {
                Some(Decision::Join { cluster: c.clone(), leader: l.clone(), via: p.name.clone() })
            }
            _ => None,
        })
    };
    let holding = match s.commitment {
        Commitment::Free { holding } => holding,
        Commitment::Bound { cluster, former } => {
            if former == Some(s.me) {
                return Decision::Resume { cluster: cluster.clone() };
            }
            return leader_of(Some(cluster)).unwrap_or_else(|| {
                Decision::Wait(Wait::Bound { cluster: cluster.clone(), former: former.cloned() })
            });
        }
        Commitment::Forming { cluster, confirmed, sealed } => {
            if let Some(join) = leader_of(Some(cluster)) {
                return join;
            }
            let tagged = 1 + peers.len();
            if tagged < s.expected_size {
                return Decision::Wait(Wait::TooFew { tagged, expected: s.expected_size });
            }
            let missing = |done: &[N]| -> Vec<N> {
                peers.iter().filter(|p| !done.contains(&p.name)).map(|p| p.name.clone()).collect()
            };
            let ask = missing(confirmed);
            if !ask.is_empty() {
                return Decision::Confirm { cluster: cluster.clone(), ask };
            }
            let ask = missing(sealed);
            if !ask.is_empty() {
                return Decision::Seal { cluster: cluster.clone(), ask };
            }
            let voters = peers.iter().map(|p| p.name.clone()).collect();
            return Decision::Initialize { cluster: cluster.clone(), voters };
        }
    };
    // Rule 1.
    if let Some(join) = leader_of(None) {
        return join;
    }
    // Rule 2.
    for peer in &peers {
        if let Answer::Member { cluster, leader: Some(leader) } = &peer.answer
            && leader.names(s.me)
        {
            return Decision::Wait(Wait::EarlierIncarnation {
                peer: peer.name.clone(),
                cluster: cluster.clone(),
            });
        }
    }
    // Rule 3.
    for peer in &peers {
        if let Answer::Member { cluster, leader: None } = &peer.answer {
            return Decision::Wait(Wait::MemberWithoutLeader {
                peer: peer.name.clone(),
                cluster: cluster.clone(),
            });
        }
    }
    // Rule 4.
    if let Some(peer) = peers.iter().find(|p| matches!(p.answer, Answer::Silent)) {
        return Decision::Wait(Wait::Silent { peer: peer.name.clone() });
    }
    // Rule 5.
    if s.follow_only {
        return Decision::Wait(Wait::FollowOnly);
    }
    let tagged = 1 + peers.len();
    if tagged < s.expected_size {
        return Decision::Wait(Wait::TooFew { tagged, expected: s.expected_size });
    }
    if let Some(low) = lowest(peers.iter().map(|p| &p.name))
        && low < s.me
    {
        return Decision::Wait(Wait::NotLowest { lower: low.clone() });
    }
    // Rule 6.
    for peer in &peers {
        if let Answer::Fresh { promised_to } = &peer.answer
            && promised_to.as_ref() != Some(s.me)
        {
            return Decision::Wait(Wait::NotPromised {
                peer: peer.name.clone(),
                promised_to: promised_to.clone(),
            });
        }
    }
    if let Some((to, true)) = holding
        && to != s.me
    {
        return Decision::Wait(Wait::Holding { to: to.clone() });
    }
    // Rule 7.
    Decision::Form
}

/// The promise a node still holds: none once it has a cluster id
/// (`member`), none whose holder is untagged or gone from its view; a
/// promise whose holder is merely offline is kept.
pub(crate) fn kept<N: Clone>(member: bool, holding: Option<&N>, holder_tagged: bool) -> Option<N> {
    if member {
        return None;
    }
    holding.filter(|_| holder_tagged).cloned()
}

/// A probe as the probed (granting) node sees it.
#[derive(Clone, Debug)]
pub(crate) struct Probe<'a, N> {
    /// The probed node.
    pub(crate) me: &'a N,
    /// It has a cluster id (a member, bound, joining or forming).
    pub(crate) member: bool,
    /// The promise it holds, if any.
    pub(crate) holding: Option<&'a N>,
    /// Whether that promise's holder is still tagged in its view (online
    /// or not).
    pub(crate) holder_tagged: bool,
    /// The prober.
    pub(crate) caller: &'a N,
    /// Whether the prober is tagged and online in its view.
    pub(crate) caller_live: bool,
    /// The prober asks for a promise.
    pub(crate) wants_promise: bool,
}

/// What the probed node answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply<N> {
    /// It is a member of its cluster (the shell adds which, and the
    /// leader it names).
    Member,
    /// It is fresh, holding a promise to `promised_to`.
    Fresh {
        /// The holder of its promise after this probe.
        promised_to: Option<N>,
    },
}

/// How a node answers a probe, and the promise it holds afterwards:
///
/// - a node with a cluster id answers [`Reply::Member`] and holds no
///   promise;
/// - a promise is released as [`kept`] says;
/// - a probe that does not ask for a promise gives back the one the node
///   holds for the prober (the prober no longer means to form);
/// - a promise is granted to a prober that asks for one, sorts lower than
///   this node, is tagged and online, while this node holds none;
/// - never two promises at once; no timer releases one.
///
/// The shell calls this and stores the result in one step under the
/// node's bootstrap lock, the same lock under which it forms, binds and
/// joins.
pub(crate) fn answer<N: Ord + Clone>(p: &Probe<'_, N>) -> (Option<N>, Reply<N>) {
    if p.member {
        return (None, Reply::Member);
    }
    let mut holding = kept(false, p.holding, p.holder_tagged);
    if !p.wants_promise && holding.as_ref() == Some(p.caller) {
        holding = None;
    }
    if p.wants_promise && holding.is_none() && p.caller < p.me && p.caller_live {
        holding = Some(p.caller.clone());
    }
    (holding.clone(), Reply::Fresh { promised_to: holding })
}

/// A request to confirm a cluster being formed, as the asked node sees it.
#[derive(Clone, Debug)]
pub(crate) struct ConfirmCall<'a, N, C> {
    /// It has raft state.
    pub(crate) has_state: bool,
    /// Its cluster id, if it has one, and who forms that cluster, if it
    /// bound itself to it.
    pub(crate) stored: Option<(&'a C, Option<&'a N>)>,
    /// The promise it holds, if any.
    pub(crate) holding: Option<&'a N>,
    /// Whether that promise's holder is still tagged in its view.
    pub(crate) holder_tagged: bool,
    /// Whether its binding is sealed, and to whom ([`Sealed`]).
    pub(crate) sealed: Sealed,
    /// Whether it is ready: every tagged peer of its view has answered one
    /// of its probes since it started, and none's last answer is a
    /// member's of a cluster other than its own ([`waiting_for`]).
    pub(crate) ready: bool,
    /// The caller, which forms `cluster`.
    pub(crate) caller: &'a N,
    /// The cluster the caller forms.
    pub(crate) cluster: &'a C,
    /// The caller's last round before it initializes: seal the binding.
    pub(crate) seal: bool,
}

/// Whether a binding is sealed: the node answered its former's last round
/// before initializing, so the former may have counted it as an initial
/// voter. Sealed is for good (durable), and to one raft id of the former.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sealed {
    /// Not sealed.
    No,
    /// Sealed to the caller, as the incarnation it is now.
    ToCaller,
    /// Sealed to another incarnation of the former.
    ToOther,
}

/// The asked node's step on a confirm request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Confirmation<N, C> {
    /// Bind to the caller's cluster now: store its id with the caller as
    /// the former, drop the promise, and confirm.
    Bind,
    /// Already bound to (or joining) that cluster: confirm again, recording
    /// the caller (perhaps a new incarnation of the former) as its former.
    Again,
    /// Bound to that cluster by the caller: seal the binding (durably,
    /// before answering), and never unbind from then on.
    Seal,
    /// Refuse, for this reason.
    Refuse(Refusal<N, C>),
}

/// Why a node refuses to confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal<N, C> {
    /// It has raft state (of `cluster`, if it knows its id): it is a member
    /// already, not a node in waiting.
    HasState {
        /// Its cluster.
        cluster: Option<C>,
    },
    /// It is bound to, joining or forming another cluster.
    OtherCluster {
        /// That cluster.
        cluster: C,
    },
    /// It is bound to the same cluster id, formed by another node.
    OtherFormer {
        /// Who forms it, as this node knows.
        former: N,
    },
    /// It does not hold the caller's promise (it released it, or never
    /// granted it).
    NotPromised {
        /// The promise it holds.
        promised_to: Option<N>,
    },
    /// Asked to seal, it is not bound to the caller's cluster by the
    /// caller (it lost its state, unbound itself, or only decided to join).
    NotBound,
    /// Its binding to that cluster is sealed to another incarnation of the
    /// former, which may have initialized the cluster with it.
    SealedToOther,
    /// It is not ready: a tagged peer of its view has not answered yet, or
    /// answers as a member of another cluster (which this node may have
    /// been a voter of). It binds itself to nothing while free, and seals
    /// nothing, until it is.
    NotReady,
}

impl<N: fmt::Display, C: fmt::Display> fmt::Display for Refusal<N, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::HasState { cluster: Some(cluster) } => {
                write!(f, "already a member of cluster {cluster}")
            }
            Refusal::HasState { cluster: None } => f.write_str("already has raft state"),
            Refusal::OtherCluster { cluster } => write!(f, "bound to cluster {cluster}"),
            Refusal::OtherFormer { former } => write!(f, "bound to that cluster as {former}'s"),
            Refusal::NotPromised { promised_to: Some(to) } => {
                write!(f, "holds a promise to {to}, not to the caller")
            }
            Refusal::NotPromised { promised_to: None } => {
                f.write_str("holds no promise to the caller (released or never granted)")
            }
            Refusal::NotBound => f.write_str("is not bound to that cluster by the caller"),
            Refusal::SealedToOther => {
                f.write_str("sealed its binding to another incarnation of the caller")
            }
            Refusal::NotReady => f.write_str(
                "has not heard from every tagged peer yet, or hears from a member of another \
                 cluster",
            ),
        }
    }
}

/// How a node answers a request to confirm `cluster` from its former, in
/// one step under its bootstrap lock:
///
/// 1. with raft state → refuse (it is a member already);
/// 2. with this cluster id stored, and another node as its former →
///    refuse; sealed to another incarnation of the caller → refuse (that
///    incarnation may have initialized the cluster with this node, and a
///    second initialization would be a second cluster under one id);
/// 3. with this cluster id stored, asked to seal → seal, if the caller is
///    its former and this node is ready; refuse if it only decided to
///    join, or is not ready (it may have bound itself by following a
///    peer's hint while a peer that could tell it of its own earlier
///    cluster was silent: sealed, it would be counted as an initial voter
///    of a second cluster; docs/reliability.md finding 56);
/// 4. with this cluster id stored → confirm again, if it bound itself to
///    the caller (by stable id: a former back under a new incarnation is
///    the same node) or decided to join this cluster;
/// 5. with another cluster id → refuse;
/// 6. asked to seal without a cluster id → refuse (not bound: a node that
///    lost its state or unbound itself answers so to the last round);
/// 7. not ready → refuse;
/// 8. holding the caller's promise (still [`kept`]) → bind;
/// 9. otherwise → refuse.
pub(crate) fn confirm<N: Ord + Clone, C: Clone + PartialEq>(
    c: &ConfirmCall<'_, N, C>,
) -> Confirmation<N, C> {
    if c.has_state {
        return Confirmation::Refuse(Refusal::HasState {
            cluster: c.stored.map(|(cluster, _)| cluster.clone()),
        });
    }
    match c.stored {
        Some((cluster, former)) if cluster == c.cluster => match former {
            Some(former) if former != c.caller => {
                Confirmation::Refuse(Refusal::OtherFormer { former: former.clone() })
            }
            _ if c.sealed == Sealed::ToOther => Confirmation::Refuse(Refusal::SealedToOther),
            // Sealed to the caller already (durably): sealing again adds no
            // promise, so readiness does not hold it back (a former that
            // restarted asks its sealed binders again).
            Some(_) if c.seal && !c.ready && c.sealed != Sealed::ToCaller => {
                Confirmation::Refuse(Refusal::NotReady)
            }
            Some(_) if c.seal => Confirmation::Seal,
            None if c.seal => Confirmation::Refuse(Refusal::NotBound),
            _ => Confirmation::Again,
        },
        Some((cluster, _)) => {
            Confirmation::Refuse(Refusal::OtherCluster { cluster: cluster.clone() })
        }
        None if c.seal => Confirmation::Refuse(Refusal::NotBound),
        None if !c.ready => Confirmation::Refuse(Refusal::NotReady),
        None => match kept(false, c.holding, c.holder_tagged) {
            Some(holder) if holder == *c.caller => Confirmation::Bind,
            promised_to => Confirmation::Refuse(Refusal::NotPromised { promised_to }),
        },
    }
}

/// What a bound node knows of its former now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FormerNow {
    /// Tagged in its (fresh) view, and not known to have forgotten.
    Present,
    /// Untagged or absent from its view, for less than the grace period.
    Gone,
    /// Untagged or absent from its view for the whole grace period.
    GoneForGood,
    /// It answered a probe as another incarnation (it lost its state), and
    /// not as the former of this node's cluster (it did not resume it).
    Forgot,
}

/// A node with a cluster id and no raft state (or not), as [`unbind`]
/// sees it, under its bootstrap lock.
#[derive(Clone, Debug)]
pub(crate) struct Bond<'a, N> {
    /// The node.
    pub(crate) me: &'a N,
    /// It has raft state: a member, never unbound.
    pub(crate) has_state: bool,
    /// Who forms its cluster, if it bound itself to it (`None`: it decided
    /// to join that cluster through a leader).
    pub(crate) former: Option<&'a N>,
    /// Its binding is sealed (to any incarnation of the former).
    pub(crate) sealed: bool,
    /// What it knows of the former now.
    pub(crate) former_now: FormerNow,
}

/// Whether a bound node gives its binding up (stores no cluster id again,
/// free to promise, bind or form), in one step under its bootstrap lock,
/// the lock it answers confirms under:
///
/// - never with raft state, never a node that decided to join (no
///   former), never the former itself (it forms the cluster);
/// - never once sealed: the former asks for seals last, and initializes
///   only once every tagged peer of its view sealed, so a sealed node may
///   be an initial voter of the cluster, and must not be counted by
///   another;
/// - otherwise when the former is gone for good (untagged or absent from
///   its view for the grace period) or forgot the formation (answered as
///   another incarnation, not resuming it). The former cannot have
///   initialized with this node (it was not sealed), and cannot any more:
///   this node answers "not bound" to its seal from now on.
///
/// Time only decides when a node that may unbind does; it may at any
/// moment, so safety does not depend on the grace period.
pub(crate) fn unbind<N: PartialEq>(b: &Bond<'_, N>) -> bool {
    let Some(former) = b.former else { return false };
    if b.has_state || b.sealed || former == b.me {
        return false;
    }
    matches!(b.former_now, FormerNow::GoneForGood | FormerNow::Forgot)
}

/// One tagged peer of a starting node's view, as [`waiting_for`] sees it.
#[derive(Clone, Debug)]
pub(crate) struct Heard<'a, N> {
    /// The peer.
    pub(crate) peer: &'a N,
    /// Whether it has answered one of this node's probes since this node
    /// started (or last gave a binding up), with any answer (a member, bound, forming or fresh node,
    /// or one that is itself still starting).
    pub(crate) answered: bool,
    /// Whether the last answer it gave says it has a cluster id (a
    /// member, a binder, a joiner or a former) other than the starting
    /// node's own ([`other_cluster`]): any, while the node has none.
    pub(crate) member: bool,
}

/// Whether a peer whose last answer named `answered` (its cluster id, if
/// it has one) is a member of a cluster other than `own` (the starting
/// node's stored cluster id, if any), for [`Heard::member`]: a node that
/// bound itself to a cluster by following a peer's hint hears that
/// cluster's members, and is held back only by another cluster's.
pub(crate) fn other_cluster<C: PartialEq>(answered: Option<&C>, own: Option<&C>) -> bool {
    answered.is_some() && answered != own
}

/// The peers a node that started without raft state or a stored cluster
/// id waits for before it is *ready* (grants promises, binds itself to a
/// cluster being formed), in order: the tagged peers of its view it has
/// not heard from yet, online or not, and the peers whose last answer says
/// they have a cluster id. Ready once there are none.
///
/// A node that lost its state may be the only one that could tell another
/// node of a cluster (it was one of its binders or voters), and a peer of
/// the cluster may be reachable only later (no path yet, a lower peer
/// yielded to, a probe timeout, down for a restart). A round in which such
/// a peer was silent tells the node nothing, so readiness waits for an
/// answer from each, not for one round. An offline peer is waited for
/// too: "offline" is this node's view, and another node's view may lack
/// that peer altogether (its tag flapped while that node started), so its
/// silence keeps nobody else from forming next to its cluster
/// (docs/decisions/0003, "an offline peer is silent only to probers that
/// see it"). A tagged peer that is gone for good holds every fresh start
/// back until the operator removes its tag or deletes it from the tailnet;
/// the shell fails the start at its deadline naming it. And a peer that
/// answers as a member of a cluster tells it that a cluster exists among
/// its peers: it joins that cluster if the peer names a leader it can
/// reach (then it has a cluster id, and answers as that cluster's);
/// otherwise (no leader known, or one that is no node of its view) it
/// waits, and promises no prober whose view may lack that cluster. Any
/// answer counts as heard, a starting peer's included: a node that is not
/// ready answers as fresh, holding no promise and granting none, which is
/// true, so that nodes starting together do not all wait for each other.
pub(crate) fn waiting_for<N: Ord + Clone>(peers: &[Heard<'_, N>]) -> Vec<N> {
    let mut waiting: Vec<N> =
        peers.iter().filter(|h| !h.answered || h.member).map(|h| h.peer.clone()).collect();
    waiting.sort();
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In these tables a leader hint is the node it names.
    impl Names<u8> for u8 {
        fn names(&self, node: &u8) -> bool {
            self == node
        }
    }

    type A = Answer<u8, char, u8>;

    /// Every answer a peer can give, over two clusters, with a leader that
    /// is another node, with the prober `me` named as the leader, without a
    /// leader, and every promise (to `me`, to another node, to nobody).
    fn all_answers(me: u8) -> Vec<A> {
        vec![
            Answer::Member { cluster: 'x', leader: Some(90) },
            Answer::Member { cluster: 'y', leader: Some(91) },
            Answer::Member { cluster: 'x', leader: Some(me) },
            Answer::Member { cluster: 'x', leader: None },
            Answer::Fresh { promised_to: None },
            Answer::Fresh { promised_to: Some(me) },
            Answer::Fresh { promised_to: Some(77) },
            Answer::Silent,
        ]
    }

    /// Every list of answers for `n` peers.
    fn combinations(n: usize, me: u8) -> Vec<Vec<A>> {
        let mut out = vec![Vec::new()];
        for _ in 0..n {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    all_answers(me).into_iter().map(move |a| {
                        let mut next = prefix.clone();
                        next.push(a);
                        next
                    })
                })
                .collect();
        }
        out
    }

    /// Every commitment the prober may have: free (holding nothing, a
    /// promise to a tagged or to an untagged node), bound to cluster 'x' or
    /// 'y' (formed by nobody known, by itself, by another node), forming
    /// 'x' with no, the first, or every peer confirmed, and (every peer
    /// confirmed) no, the first or every peer sealed.
    fn commitments<'a>(
        me: &'a u8,
        names: &'a [u8],
        other: &'a u8,
    ) -> Vec<Commitment<'a, u8, char>> {
        let mut all = vec![
            Commitment::Free { holding: None },
            Commitment::Free { holding: Some((other, true)) },
            Commitment::Free { holding: Some((other, false)) },
        ];
        for cluster in [&'x', &'y'] {
            for former in [None, Some(me), Some(other)] {
                all.push(Commitment::Bound { cluster, former });
            }
        }
        let some = [&names[..0], &names[..names.len().min(1)]];
        for confirmed in some {
            all.push(Commitment::Forming { cluster: &'x', confirmed, sealed: &names[..0] });
        }
        for sealed in [some[0], some[1], names] {
            all.push(Commitment::Forming { cluster: &'x', confirmed: names, sealed });
        }
        all
    }

    /// The rules restated as properties of the whole answer set.
    fn expected(s: &Situation<'_, u8, char, u8>) -> Decision<u8, char, u8> {
        let mut peers = s.peers.to_vec();
        peers.sort_by_key(|p| p.name);
        let names: Vec<u8> = peers.iter().map(|p| p.name).collect();
        let tagged = peers.len() + 1;
        // (peer, cluster, leader) of every member answer naming a leader.
        let led: Vec<(u8, char, u8)> = peers
            .iter()
            .filter_map(|p| match &p.answer {
                Answer::Member { cluster, leader: Some(l) } => Some((p.name, *cluster, *l)),
                _ => None,
            })
            .collect();
        let join = |only: Option<char>| {
            led.iter()
                .find(|(_, c, l)| *l != *s.me && only.is_none_or(|o| o == *c))
                .map(|&(via, cluster, leader)| Decision::Join { cluster, leader, via })
        };
        let holding = match s.commitment {
            Commitment::Bound { cluster, former } => {
                if former == Some(s.me) {
                    return Decision::Resume { cluster: *cluster };
                }
                return join(Some(*cluster)).unwrap_or(Decision::Wait(Wait::Bound {
                    cluster: *cluster,
                    former: former.copied(),
                }));
            }
            Commitment::Forming { cluster, confirmed, sealed } => {
                if let Some(join) = join(Some(*cluster)) {
                    return join;
                }
                if tagged < s.expected_size {
                    return Decision::Wait(Wait::TooFew { tagged, expected: s.expected_size });
                }
                let ask: Vec<u8> =
                    names.iter().copied().filter(|n| !confirmed.contains(n)).collect();
                if !ask.is_empty() {
                    return Decision::Confirm { cluster: *cluster, ask };
                }
                let ask: Vec<u8> = names.iter().copied().filter(|n| !sealed.contains(n)).collect();
                return if ask.is_empty() {
                    Decision::Initialize { cluster: *cluster, voters: names }
                } else {
                    Decision::Seal { cluster: *cluster, ask }
                };
            }
            Commitment::Free { holding } => holding,
        };
        if let Some(join) = join(None) {
            return join;
        }
        // A free node never resumes: a hint naming it names an earlier
        // incarnation (finding 38).
        if let Some(&(peer, cluster, _)) = led.iter().find(|(_, _, l)| *l == *s.me) {
            return Decision::Wait(Wait::EarlierIncarnation { peer, cluster });
        }
        let leaderless = peers.iter().find_map(|p| match &p.answer {
            Answer::Member { cluster, leader: None } => Some((p.name, *cluster)),
            _ => None,
        });
        if let Some((peer, cluster)) = leaderless {
            return Decision::Wait(Wait::MemberWithoutLeader { peer, cluster });
        }
        if let Some(peer) = peers.iter().find(|p| p.answer == Answer::Silent) {
            return Decision::Wait(Wait::Silent { peer: peer.name });
        }
        if s.follow_only {
            return Decision::Wait(Wait::FollowOnly);
        }
        if tagged < s.expected_size {
            return Decision::Wait(Wait::TooFew { tagged, expected: s.expected_size });
        }
        if let Some(&low) = names.iter().min().filter(|low| **low < *s.me) {
            return Decision::Wait(Wait::NotLowest { lower: low });
        }
        let unpromised = peers.iter().find_map(|p| match &p.answer {
            Answer::Fresh { promised_to } if *promised_to != Some(*s.me) => {
                Some((p.name, *promised_to))
            }
            _ => None,
        });
        if let Some((peer, promised_to)) = unpromised {
            return Decision::Wait(Wait::NotPromised { peer, promised_to });
        }
        match holding {
            Some((to, true)) if to != s.me => Decision::Wait(Wait::Holding { to: *to }),
            _ => Decision::Form,
        }
    }

    #[test]
    fn every_combination_of_answers_and_commitments_with_up_to_three_peers() {
        let mut cases = 0;
        let mut counts = std::collections::BTreeMap::new();
        // The prober is the lowest (1), in the middle (25) or the highest
        // (99) of the names; peers are 10, 20, 30.
        for me in [1u8, 25, 99] {
            for n in 0..=3usize {
                let names: Vec<u8> = (1..=n as u8).map(|i| 10 * i).collect();
                for answers in combinations(n, me) {
                    let peers: Vec<Peer<u8, char, u8>> = answers
                        .into_iter()
                        .zip(&names)
                        .map(|(answer, name)| Peer { name: *name, answer })
                        .collect();
                    for commitment in commitments(&me, &names, &77) {
                        for follow_only in [false, true] {
                            for expected_size in 1..=5 {
                                let s = Situation {
                                    me: &me,
                                    follow_only,
                                    expected_size,
                                    peers: &peers,
                                    commitment,
                                };
                                let decision = decide(&s);
                                assert_eq!(decision, expected(&s), "{s:?}");
                                check_safety(&s, &decision);
                                // The order of the answers does not matter.
                                let mut reversed = peers.clone();
                                reversed.reverse();
                                assert_eq!(
                                    decide(&Situation { peers: &reversed, ..s.clone() }),
                                    decision
                                );
                                cases += 1;
                                let kind = match decision {
                                    Decision::Join { .. } => "join",
                                    Decision::Form => "form",
                                    Decision::Resume { .. } => "resume",
                                    Decision::Confirm { .. } => "confirm",
                                    Decision::Seal { .. } => "seal",
                                    Decision::Initialize { .. } => "initialize",
                                    Decision::Wait(_) => "wait",
                                };
                                *counts.entry(kind).or_insert(0) += 1;
                            }
                        }
                    }
                }
            }
        }
        // 3 provers × (1 + 8 + 64 + 512) answer sets × 14 commitments × 2 × 5.
        assert_eq!(cases, 3 * 585 * 14 * 10);
        for kind in ["join", "form", "resume", "confirm", "seal", "initialize", "wait"] {
            assert!(counts.get(kind).is_some_and(|c| *c > 0), "no case decided {kind}: {counts:?}");
        }
    }

    /// What must hold whatever the rules say in detail.
    fn check_safety(s: &Situation<'_, u8, char, u8>, decision: &Decision<u8, char, u8>) {
        match decision {
            Decision::Form => {
                let Commitment::Free { holding } = s.commitment else {
                    panic!("a node with a cluster id formed another: {s:?}")
                };
                assert!(!s.follow_only, "a follow-only node formed: {s:?}");
                assert!(s.peers.len() + 1 >= s.expected_size, "formed with too few: {s:?}");
                for peer in s.peers {
                    assert!(peer.name > *s.me, "formed while {} sorts lower: {s:?}", peer.name);
                    assert_eq!(
                        peer.answer,
                        Answer::Fresh { promised_to: Some(*s.me) },
                        "formed without {}'s promise: {s:?}",
                        peer.name
                    );
                }
                assert!(!matches!(holding, Some((_, true))), "formed holding a promise: {s:?}");
            }
            Decision::Initialize { cluster, voters } => {
                let Commitment::Forming { cluster: forming, confirmed, sealed } = s.commitment
                else {
                    panic!("initialized a cluster it was not forming: {s:?}")
                };
                assert_eq!(cluster, forming);
                assert!(s.peers.len() + 1 >= s.expected_size, "initialized with too few: {s:?}");
                for peer in s.peers {
                    assert!(confirmed.contains(&peer.name), "{} did not confirm: {s:?}", peer.name);
                    assert!(sealed.contains(&peer.name), "{} did not seal: {s:?}", peer.name);
                    assert!(voters.contains(&peer.name), "{} is no initial voter", peer.name);
                }
            }
            Decision::Join { cluster, leader, via } => {
                let peer = s.peers.iter().find(|p| p.name == *via).expect("joins through a peer");
                assert_eq!(
                    peer.answer,
                    Answer::Member { cluster: *cluster, leader: Some(*leader) },
                    "{s:?}"
                );
                assert_ne!(leader, s.me, "joins through itself: {s:?}");
                match s.commitment {
                    Commitment::Bound { cluster: own, .. }
                    | Commitment::Forming { cluster: own, .. } => {
                        assert_eq!(cluster, own, "a bound node joins another cluster: {s:?}")
                    }
                    Commitment::Free { .. } => {}
                }
            }
            Decision::Resume { cluster } => {
                match s.commitment {
                    Commitment::Bound { cluster: own, former } => {
                        assert_eq!((cluster, former), (own, Some(s.me)), "{s:?}")
                    }
                    // Only a node that reads back its own binding resumes:
                    // a free one never takes up a cluster id it did not
                    // draw, whoever names it (finding 38).
                    Commitment::Free { .. } => {
                        panic!("a free node resumed a cluster on a peer's word: {s:?}")
                    }
                    Commitment::Forming { .. } => panic!("resumed while forming: {s:?}"),
                }
            }
            Decision::Confirm { cluster, ask } => {
                assert!(
                    matches!(s.commitment, Commitment::Forming { cluster: c, .. } if c == cluster)
                );
                assert!(!ask.is_empty());
            }
            Decision::Seal { cluster, ask } => {
                let Commitment::Forming { cluster: c, confirmed, .. } = s.commitment else {
                    panic!("asked for seals while not forming: {s:?}")
                };
                assert_eq!(c, cluster);
                assert!(!ask.is_empty());
                for peer in s.peers {
                    assert!(confirmed.contains(&peer.name), "sealing before {} bound", peer.name);
                }
            }
            Decision::Wait(_) => {}
        }
        let free = matches!(s.commitment, Commitment::Free { .. });
        if free
            && s.peers.iter().any(|p| matches!(p.answer, Answer::Member { .. } | Answer::Silent))
        {
            assert_ne!(*decision, Decision::Form, "formed next to a possible cluster: {s:?}");
        }
    }

    fn situation<'a>(
        me: &'a u8,
        peers: &'a [Peer<u8, char, u8>],
        expected_size: usize,
    ) -> Situation<'a, u8, char, u8> {
        Situation {
            me,
            follow_only: false,
            expected_size,
            peers,
            commitment: Commitment::Free { holding: None },
        }
    }

    fn peer(name: u8, answer: A) -> Peer<u8, char, u8> {
        Peer { name, answer }
    }

    #[test]
    fn rule_1_a_member_with_a_leader_is_joined_even_next_to_silent_peers() {
        let peers = [
            peer(3, Answer::Silent),
            peer(8, Answer::Member { cluster: 'c', leader: Some(5) }),
            peer(4, Answer::Member { cluster: 'c', leader: None }),
        ];
        assert_eq!(
            decide(&situation(&9, &peers, 1)),
            Decision::Join { cluster: 'c', leader: 5, via: 8 }
        );
        // Two peers name leaders: the lowest peer's is taken.
        let peers = [
            peer(6, Answer::Member { cluster: 'd', leader: Some(1) }),
            peer(2, Answer::Member { cluster: 'c', leader: Some(5) }),
        ];
        assert_eq!(
            decide(&situation(&9, &peers, 1)),
            Decision::Join { cluster: 'c', leader: 5, via: 2 }
        );
    }

    #[test]
    fn rule_2_a_peer_naming_this_node_as_former_makes_it_wait_never_resume() {
        // 9 formed 'c' in an earlier incarnation; 4 is bound to it. That
        // incarnation may have initialized 'c' without 4 (finding 38): 9,
        // free now, never takes 'c' up; 4 gives its binding up once it sees
        // 9 forgot.
        let peers = [peer(4, Answer::Member { cluster: 'c', leader: Some(9) }), peer(3, A::Silent)];
        assert_eq!(
            decide(&situation(&9, &peers, 3)),
            Decision::Wait(Wait::EarlierIncarnation { peer: 4, cluster: 'c' })
        );
        // Even next to a fresh peer holding its promise.
        let peers = [
            peer(4, Answer::Member { cluster: 'c', leader: Some(9) }),
            peer(10, Answer::Fresh { promised_to: Some(9) }),
        ];
        assert_eq!(
            decide(&situation(&9, &peers, 2)),
            Decision::Wait(Wait::EarlierIncarnation { peer: 4, cluster: 'c' })
        );
        // Only its own binding read back (the same incarnation) resumes.
        let s = Situation {
            commitment: Commitment::Bound { cluster: &'c', former: Some(&9) },
            ..situation(&9, &peers, 2)
        };
        assert_eq!(decide(&s), Decision::Resume { cluster: 'c' });
        // Another leader of 'c' exists: join it instead.
        let peers = [
            peer(4, Answer::Member { cluster: 'c', leader: Some(9) }),
            peer(5, Answer::Member { cluster: 'c', leader: Some(4) }),
        ];
        assert_eq!(
            decide(&situation(&9, &peers, 3)),
            Decision::Join { cluster: 'c', leader: 4, via: 5 }
        );
    }

    #[test]
    fn rule_3_a_member_without_a_leader_means_wait() {
        let peers = [
            peer(5, Answer::Fresh { promised_to: Some(1) }),
            peer(7, Answer::Member { cluster: 'c', leader: None }),
        ];
        assert_eq!(
            decide(&situation(&1, &peers, 1)),
            Decision::Wait(Wait::MemberWithoutLeader { peer: 7, cluster: 'c' })
        );
    }

    #[test]
    fn rule_4_a_silent_peer_blocks_forming_even_for_the_lowest() {
        let peers = [peer(5, Answer::Fresh { promised_to: Some(1) }), peer(7, Answer::Silent)];
        assert_eq!(decide(&situation(&1, &peers, 1)), Decision::Wait(Wait::Silent { peer: 7 }));
    }

    #[test]
    fn rule_5_follow_only_too_few_and_not_lowest_wait() {
        let promised = [peer(5, Answer::Fresh { promised_to: Some(1) })];
        let mut s = situation(&1, &promised, 2);
        s.follow_only = true;
        assert_eq!(decide(&s), Decision::Wait(Wait::FollowOnly));
        assert_eq!(
            decide(&situation(&1, &promised, 3)),
            Decision::Wait(Wait::TooFew { tagged: 2, expected: 3 })
        );
        let lower = [peer(0, Answer::Fresh { promised_to: None })];
        assert_eq!(decide(&situation(&1, &lower, 1)), Decision::Wait(Wait::NotLowest { lower: 0 }));
        // Alone and expecting one: form.
        assert_eq!(decide(&situation(&1, &[], 1)), Decision::Form);
    }

    #[test]
    fn rule_6_every_fresh_peer_must_have_promised_and_no_live_promise_held() {
        let peers = [
            peer(5, Answer::Fresh { promised_to: Some(1) }),
            peer(6, Answer::Fresh { promised_to: Some(3) }),
        ];
        assert_eq!(
            decide(&situation(&1, &peers, 1)),
            Decision::Wait(Wait::NotPromised { peer: 6, promised_to: Some(3) })
        );
        let peers = [peer(5, Answer::Fresh { promised_to: None })];
        assert_eq!(
            decide(&situation(&1, &peers, 1)),
            Decision::Wait(Wait::NotPromised { peer: 5, promised_to: None })
        );
        let peers = [peer(5, Answer::Fresh { promised_to: Some(1) })];
        let mut s = situation(&1, &peers, 1);
        s.commitment = Commitment::Free { holding: Some((&0, true)) };
        assert_eq!(decide(&s), Decision::Wait(Wait::Holding { to: 0 }));
        // A promise whose holder is untagged or gone does not count.
        s.commitment = Commitment::Free { holding: Some((&0, false)) };
        assert_eq!(decide(&s), Decision::Form);
    }

    #[test]
    fn rule_7_every_peer_promised_forms() {
        let peers = [
            peer(5, Answer::Fresh { promised_to: Some(1) }),
            peer(6, Answer::Fresh { promised_to: Some(1) }),
        ];
        assert_eq!(decide(&situation(&1, &peers, 3)), Decision::Form);
    }

    #[test]
    fn a_forming_node_initializes_only_once_every_tagged_peer_confirmed() {
        let peers = [
            peer(5, Answer::Fresh { promised_to: None }),
            peer(6, Answer::Member { cluster: 'c', leader: Some(1) }),
        ];
        let mut s = situation(&1, &peers, 3);
        s.commitment = Commitment::Forming { cluster: &'c', confirmed: &[6], sealed: &[6] };
        assert_eq!(decide(&s), Decision::Confirm { cluster: 'c', ask: vec![5] });
        // Every peer confirmed: the last round seals the bindings.
        s.commitment = Commitment::Forming { cluster: &'c', confirmed: &[5, 6], sealed: &[6] };
        assert_eq!(decide(&s), Decision::Seal { cluster: 'c', ask: vec![5] });
        // A node confirmed once, no longer in view, is not needed (nor a
        // voter); a view that shrank below the expected size waits.
        s.commitment =
            Commitment::Forming { cluster: &'c', confirmed: &[5, 6, 7], sealed: &[5, 6, 7] };
        assert_eq!(decide(&s), Decision::Initialize { cluster: 'c', voters: vec![5, 6] });
        let one = [peer(5, Answer::Silent)];
        let s = Situation { peers: &one, ..s };
        assert_eq!(decide(&s), Decision::Wait(Wait::TooFew { tagged: 2, expected: 3 }));
    }

    #[test]
    fn a_bound_node_only_ever_joins_its_own_cluster() {
        let peers = [
            peer(2, Answer::Member { cluster: 'd', leader: Some(2) }),
            peer(5, Answer::Fresh { promised_to: Some(1) }),
            peer(6, Answer::Member { cluster: 'c', leader: Some(6) }),
        ];
        let mut s = situation(&1, &peers, 3);
        s.commitment = Commitment::Bound { cluster: &'c', former: Some(&6) };
        assert_eq!(decide(&s), Decision::Join { cluster: 'c', leader: 6, via: 6 });
        s.commitment = Commitment::Bound { cluster: &'e', former: Some(&6) };
        assert_eq!(decide(&s), Decision::Wait(Wait::Bound { cluster: 'e', former: Some(6) }));
        // Bound to itself: it was forming 'e' before a restart.
        s.commitment = Commitment::Bound { cluster: &'e', former: Some(&1) };
        assert_eq!(decide(&s), Decision::Resume { cluster: 'e' });
    }

    #[test]
    fn only_a_node_that_may_form_asks_for_promises() {
        let free: Commitment<'_, u8, char> = Commitment::Free { holding: None };
        assert!(wants_promises(&1, [5u8, 6].iter(), false, 3, &free));
        assert!(!wants_promises(&1, [5u8, 6].iter(), true, 3, &free));
        assert!(!wants_promises(&1, [5u8, 6].iter(), false, 4, &free));
        assert!(!wants_promises(&5, [1u8, 6].iter(), false, 1, &free));
        assert!(wants_promises(&5, [].iter(), false, 1, &free));
        // A forming node asks; a bound one gives back what it holds.
        let forming = Commitment::Forming { cluster: &'c', confirmed: &[], sealed: &[] };
        assert!(wants_promises(&5, [1u8, 6].iter(), true, 9, &forming));
        let bound = Commitment::Bound { cluster: &'c', former: Some(&6) };
        assert!(!wants_promises(&1, [5u8, 6].iter(), false, 3, &bound));
        let resuming = Commitment::Bound { cluster: &'c', former: Some(&1) };
        assert!(wants_promises(&1, [5u8, 6].iter(), false, 3, &resuming));
    }

    #[test]
    fn the_granter_over_every_case() {
        let me = 50u8;
        for member in [false, true] {
            for holding in [None, Some(10u8), Some(70u8)] {
                for holder_tagged in [false, true] {
                    for caller in [10u8, 20, 70] {
                        for caller_live in [false, true] {
                            for wants_promise in [false, true] {
                                let p = Probe {
                                    me: &me,
                                    member,
                                    holding: holding.as_ref(),
                                    holder_tagged,
                                    caller: &caller,
                                    caller_live,
                                    wants_promise,
                                };
                                let (after, reply) = answer(&p);
                                let kept = holding.filter(|_| holder_tagged);
                                if member {
                                    assert_eq!((after, reply), (None, Reply::Member), "{p:?}");
                                    continue;
                                }
                                assert_eq!(reply, Reply::Fresh { promised_to: after }, "{p:?}");
                                // Never granted to a higher or dead caller.
                                if after == Some(caller) && kept != Some(caller) {
                                    assert!(caller < me && caller_live && wants_promise, "{p:?}");
                                    assert_eq!(kept, None, "two promises at once: {p:?}");
                                }
                                // A promise to another tagged node is kept.
                                if let Some(other) = kept.filter(|h| *h != caller) {
                                    assert_eq!(after, Some(other), "{p:?}");
                                }
                                // A promise given back by its holder is released.
                                if kept == Some(caller) && !wants_promise {
                                    assert_eq!(after, None, "{p:?}");
                                }
                                // An untagged holder's promise never survives.
                                if let Some(h) = holding.filter(|_| !holder_tagged) {
                                    assert!(
                                        after != Some(h)
                                            || (h == caller
                                                && wants_promise
                                                && caller_live
                                                && caller < me),
                                        "{p:?}"
                                    );
                                }
                                // A free granter grants a lower live asking caller.
                                if kept.is_none() && wants_promise && caller < me && caller_live {
                                    assert_eq!(after, Some(caller), "{p:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn two_lower_nodes_cannot_both_hold_one_granters_promise() {
        // G (50) grants 10, then 20 asks: refused while 10 is tagged.
        let (held, _) = answer(&Probe {
            me: &50u8,
            member: false,
            holding: None,
            holder_tagged: false,
            caller: &10,
            caller_live: true,
            wants_promise: true,
        });
        assert_eq!(held, Some(10));
        let (held, reply) = answer(&Probe {
            me: &50u8,
            member: false,
            holding: held.as_ref(),
            holder_tagged: true,
            caller: &20,
            caller_live: true,
            wants_promise: true,
        });
        assert_eq!((held, reply), (Some(10), Reply::Fresh { promised_to: Some(10) }));
        // 10 gives it back (it no longer means to form): 20 may have it.
        let (held, _) = answer(&Probe {
            me: &50u8,
            member: false,
            holding: Some(&10),
            holder_tagged: true,
            caller: &10,
            caller_live: true,
            wants_promise: false,
        });
        assert_eq!(held, None);
    }

    /// The confirm step over every case: whether the node has raft state,
    /// its stored cluster (none, the caller's, another) and that cluster's
    /// former (unknown, the caller, the node itself, another), whether its
    /// binding is sealed (no, to the caller, to another incarnation of the
    /// caller), the promise it holds (none, the caller's, another's),
    /// whether its holder is tagged, and whether the caller asks it to
    /// seal.
    #[test]
    fn the_confirm_step_over_every_case() {
        let (me, caller, other) = (50u8, 10u8, 20u8);
        let (mut binds, mut seals) = (0, 0);
        for has_state in [false, true] {
            for stored in [None, Some('c'), Some('d')] {
                for former in [None, Some(caller), Some(me), Some(other)] {
                    if stored.is_none() && former.is_some() {
                        continue;
                    }
                    for sealed in [Sealed::No, Sealed::ToCaller, Sealed::ToOther] {
                        if sealed != Sealed::No && former.is_none() {
                            continue;
                        }
                        for holding in [None, Some(caller), Some(other)] {
                            for holder_tagged in [false, true] {
                                for (seal, ready) in
                                    [(false, false), (false, true), (true, false), (true, true)]
                                {
                                    let call = ConfirmCall {
                                        has_state,
                                        stored: stored.as_ref().map(|c| (c, former.as_ref())),
                                        holding: holding.as_ref(),
                                        holder_tagged,
                                        sealed,
                                        ready,
                                        caller: &caller,
                                        cluster: &'c',
                                        seal,
                                    };
                                    let step = confirm(&call);
                                    assert_eq!(step, want_confirm(&call), "{call:?}");
                                    // Never bound while a member, bound
                                    // elsewhere, or without the caller's
                                    // live promise; never on a seal.
                                    if step == Confirmation::Bind {
                                        binds += 1;
                                        assert!(!has_state && stored.is_none() && !seal && ready);
                                        assert!(holding == Some(caller) && holder_tagged);
                                    }
                                    if step == Confirmation::Again {
                                        assert!(!has_state && stored == Some('c') && !seal);
                                        assert!(former.is_none_or(|f| f == caller), "{call:?}");
                                        assert_ne!(sealed, Sealed::ToOther, "{call:?}");
                                    }
                                    // Sealed only by its own former, bound,
                                    // never over another incarnation's seal.
                                    if step == Confirmation::Seal {
                                        seals += 1;
                                        assert!(seal && !has_state && stored == Some('c'));
                                        assert!(ready || sealed == Sealed::ToCaller, "{call:?}");
                                        assert_eq!(former, Some(caller), "{call:?}");
                                        assert_ne!(sealed, Sealed::ToOther, "{call:?}");
                                    }
                                    // A seal request never binds a free node.
                                    if seal && stored.is_none() {
                                        assert!(matches!(step, Confirmation::Refuse(_)));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(binds, 1);
        // Former the caller, sealed no or to the caller, 3 × 2 promises,
        // ready; and sealed to the caller, not ready.
        assert_eq!(seals, 3 * 6);
    }

    /// The confirm rules restated.
    fn want_confirm(c: &ConfirmCall<'_, u8, char>) -> Confirmation<u8, char> {
        if c.has_state {
            return Confirmation::Refuse(Refusal::HasState { cluster: c.stored.map(|(c, _)| *c) });
        }
        match c.stored {
            Some((&'c', Some(&f))) if f != *c.caller => {
                Confirmation::Refuse(Refusal::OtherFormer { former: f })
            }
            Some((&'c', _)) if c.sealed == Sealed::ToOther => {
                Confirmation::Refuse(Refusal::SealedToOther)
            }
            Some((&'c', Some(_))) if c.seal && !c.ready && c.sealed != Sealed::ToCaller => {
                Confirmation::Refuse(Refusal::NotReady)
            }
            Some((&'c', Some(_))) if c.seal => Confirmation::Seal,
            Some((&'c', None)) if c.seal => Confirmation::Refuse(Refusal::NotBound),
            Some((&'c', _)) => Confirmation::Again,
            Some((&d, _)) => Confirmation::Refuse(Refusal::OtherCluster { cluster: d }),
            None if c.seal => Confirmation::Refuse(Refusal::NotBound),
            None if !c.ready => Confirmation::Refuse(Refusal::NotReady),
            None if c.holding == Some(c.caller) && c.holder_tagged => Confirmation::Bind,
            None => Confirmation::Refuse(Refusal::NotPromised {
                promised_to: c.holding.copied().filter(|_| c.holder_tagged),
            }),
        }
    }

    /// The unbind decision over every case, and what it protects: a sealed
    /// node, a member, a joiner and the former itself never unbind; an
    /// unsealed binder unbinds exactly when its former is gone for good or
    /// forgot the formation.
    #[test]
    fn the_unbind_decision_over_every_case() {
        let (me, former) = (50u8, 10u8);
        let mut unbinds = 0;
        for has_state in [false, true] {
            for who in [None, Some(former), Some(me)] {
                for sealed in [false, true] {
                    for former_now in [
                        FormerNow::Present,
                        FormerNow::Gone,
                        FormerNow::GoneForGood,
                        FormerNow::Forgot,
                    ] {
                        let b =
                            Bond { me: &me, has_state, former: who.as_ref(), sealed, former_now };
                        let gone = matches!(former_now, FormerNow::GoneForGood | FormerNow::Forgot);
                        let want = !has_state && !sealed && who == Some(former) && gone;
                        assert_eq!(unbind(&b), want, "{b:?}");
                        unbinds += usize::from(want);
                    }
                }
            }
        }
        assert_eq!(unbinds, 2);
    }

    /// The race the seal closes: a binder unbinds only before it sealed,
    /// and a binder that unbound refuses the seal, so its former cannot
    /// initialize with it; one that sealed first never unbinds.
    #[test]
    fn a_binder_either_seals_or_unbinds_never_both() {
        let (former, me) = (1u8, 2u8);
        let bound = |sealed: Sealed, seal: bool| ConfirmCall {
            has_state: false,
            stored: Some((&'x', Some(&former))),
            holding: None,
            holder_tagged: false,
            sealed,
            ready: true,
            caller: &former,
            cluster: &'x',
            seal,
        };
        // Unbind first (the former untagged for the grace period): the seal
        // finds the node free and is refused.
        let gone = Bond {
            me: &me,
            has_state: false,
            former: Some(&former),
            sealed: false,
            former_now: FormerNow::GoneForGood,
        };
        assert!(unbind(&gone));
        let free = ConfirmCall { stored: None, ..bound(Sealed::No, true) };
        assert_eq!(confirm(&free), Confirmation::Refuse(Refusal::NotBound));
        // Seal first: the node never unbinds afterwards.
        assert_eq!(confirm(&bound(Sealed::No, true)), Confirmation::Seal);
        assert!(!unbind(&Bond { sealed: true, ..gone.clone() }));
        assert!(!unbind(&Bond { sealed: true, former_now: FormerNow::Forgot, ..gone }));
        // A new incarnation of the former cannot take the sealed binding
        // over (its old incarnation may have initialized the cluster).
        assert_eq!(
            confirm(&bound(Sealed::ToOther, false)),
            Confirmation::Refuse(Refusal::SealedToOther)
        );
        assert_eq!(
            confirm(&bound(Sealed::ToOther, true)),
            Confirmation::Refuse(Refusal::SealedToOther)
        );
    }

    /// The model checker's schedule (docs/reliability.md) on the pure
    /// functions: the promise `b` released behind `a`'s back makes `b`
    /// refuse `a`'s confirm, so `a` never initializes; `c`, bound to `a`'s
    /// cluster, answers `b` as a member and confirms nobody else.
    #[test]
    fn a_released_promise_refuses_the_confirm() {
        let (a, b, c) = (1u8, 2u8, 3u8);
        // b promised a, then its view dropped a: released.
        let step = confirm(&ConfirmCall {
            has_state: false,
            stored: None,
            holding: Some(&a),
            holder_tagged: false,
            sealed: Sealed::No,
            ready: true,
            caller: &a,
            cluster: &'x',
            seal: false,
        });
        assert_eq!(step, Confirmation::Refuse(Refusal::NotPromised { promised_to: None }));
        // c still holds a's promise: it binds.
        let step = confirm(&ConfirmCall {
            has_state: false,
            stored: None,
            holding: Some(&a),
            holder_tagged: true,
            sealed: Sealed::No,
            ready: true,
            caller: &a,
            cluster: &'x',
            seal: false,
        });
        assert_eq!(step, Confirmation::Bind);
        // a cannot initialize: b did not confirm.
        let peers = [
            peer(b, Answer::Fresh { promised_to: None }),
            peer(c, Answer::Member { cluster: 'x', leader: Some(a) }),
        ];
        let s = Situation {
            commitment: Commitment::Forming { cluster: &'x', confirmed: &[c], sealed: &[] },
            ..situation(&a, &peers, 2)
        };
        assert_eq!(decide(&s), Decision::Confirm { cluster: 'x', ask: vec![b] });
        // c's view dropped a; b asks c for a promise: c, bound, answers as
        // a member of a's cluster and promises nothing, and refuses b's
        // confirm of another cluster.
        let (held, reply) = answer(&Probe {
            me: &c,
            member: true,
            holding: None,
            holder_tagged: false,
            caller: &b,
            caller_live: true,
            wants_promise: true,
        });
        assert_eq!((held, reply), (None, Reply::Member));
        let step = confirm(&ConfirmCall {
            has_state: false,
            stored: Some((&'x', Some(&a))),
            holding: None,
            holder_tagged: false,
            sealed: Sealed::No,
            ready: true,
            caller: &b,
            cluster: &'y',
            seal: false,
        });
        assert_eq!(step, Confirmation::Refuse(Refusal::OtherCluster { cluster: 'x' }));
        // And b, seeing c a member of 'x' led by a, never forms.
        let peers = [peer(c, Answer::Member { cluster: 'x', leader: Some(a) })];
        assert_eq!(
            decide(&situation(&b, &peers, 2)),
            Decision::Join { cluster: 'x', leader: a, via: c }
        );
    }
    /// Readiness over every combination of three peers, each answered or
    /// not, a member or not by its last answer: ready exactly when every
    /// peer answered and none is a member, and the peers waited for are
    /// named in order.
    #[test]
    fn a_starting_node_is_ready_once_every_peer_answered_and_none_is_a_member() {
        let names = [3u8, 1, 2];
        for bits in 0..64u16 {
            let bit = |i: usize| bits & (1 << i) != 0;
            let peers: Vec<Heard<'_, u8>> = names
                .iter()
                .enumerate()
                .map(|(i, peer)| Heard {
                    peer,
                    answered: bit(i),
                    // Only a peer that answered can have answered as a member.
                    member: bit(i) && bit(i + 3),
                })
                .collect();
            let ready = (0..3).all(|i| bit(i) && !bit(i + 3));
            assert_eq!(waiting_for(&peers).is_empty(), ready, "{peers:?}");
            let mut named: Vec<u8> =
                (0..3).filter(|&i| !bit(i) || bit(i + 3)).map(|i| names[i]).collect();
            named.sort();
            assert_eq!(waiting_for(&peers), named, "{peers:?}");
        }
    }

    /// Finding 71 on the pure functions. Cluster '0' = {x, z} runs; f forms
    /// '1' with binder b; z lost its state and starts again as z′ (9),
    /// while x has no path in its view yet (silent). Rule 1 comes before
    /// the silent peer, so z′ follows b's hint and binds itself to '1' by
    /// f; it confirms f again (a joiner and its former must not wait for
    /// each other), but refuses f's seal while x has not answered, and
    /// still once x answers as a member of '0': f cannot count it as an
    /// initial voter. Answers from members of its own cluster '1' do not
    /// hold it back, so with no other cluster around it seals.
    #[test]
    fn a_node_that_followed_a_hint_seals_only_once_ready() {
        let (x, b, f, z) = (1u8, 2u8, 5u8, 9u8);
        let member = |cluster, leader| Answer::Member { cluster, leader: Some(leader) };
        let peers = [peer(x, Answer::Silent), peer(b, member('1', f)), peer(f, member('1', f))];
        assert_eq!(
            decide(&situation(&z, &peers, 3)),
            Decision::Join { cluster: '1', leader: f, via: b }
        );
        // Bound to '1' now: b's and f's answers are its own cluster's.
        let own = Some(&'1');
        assert!(!other_cluster(Some(&'1'), own));
        assert!(other_cluster(Some(&'0'), own));
        assert!(!other_cluster(None, own));
        // A free node is held back by any member's answer.
        assert!(other_cluster(Some(&'1'), None));
        let heard = |peer, answered: Option<Option<char>>| Heard {
            peer,
            answered: answered.is_some(),
            member: answered.is_some_and(|c| other_cluster(c.as_ref(), own)),
        };
        let bound = ConfirmCall {
            has_state: false,
            stored: Some((&'1', Some(&f))),
            holding: None,
            holder_tagged: false,
            sealed: Sealed::No,
            ready: false,
            caller: &f,
            cluster: &'1',
            seal: false,
        };
        let seal = ConfirmCall { seal: true, ..bound.clone() };
        for x_answered in [None, Some(Some('0'))] {
            let waiting = waiting_for(&[
                heard(&x, x_answered),
                heard(&b, Some(Some('1'))),
                heard(&f, Some(Some('1'))),
            ]);
            assert_eq!(waiting, [x], "x answered {x_answered:?}");
            assert_eq!(confirm(&bound), Confirmation::Again);
            assert_eq!(confirm(&seal), Confirmation::Refuse(Refusal::NotReady));
            // Sealed to f already, before a restart: asked again, it seals.
            let resealed = ConfirmCall { sealed: Sealed::ToCaller, ..seal.clone() };
            assert_eq!(confirm(&resealed), Confirmation::Seal);
        }
        // Every peer answered, none for another cluster: ready, it seals.
        let waiting = waiting_for(&[
            heard(&x, Some(None)),
            heard(&b, Some(Some('1'))),
            heard(&f, Some(Some('1'))),
        ]);
        assert!(waiting.is_empty(), "{waiting:?}");
        assert_eq!(confirm(&ConfirmCall { ready: true, ..seal }), Confirmation::Seal);
    }

    #[test]
    fn readiness_cases() {
        let (a, b) = (1u8, 2u8);
        let heard = |peer, answered, member| Heard { peer, answered, member };
        // Nobody to hear from: ready at once.
        assert!(waiting_for::<u8>(&[]).is_empty());
        // A silent first round (no path yet, a timeout, a peer offline in
        // the view): not ready.
        assert_eq!(waiting_for(&[heard(&a, false, false), heard(&b, true, false)]), [a]);
        // Every peer answered as fresh (or starting): ready.
        assert!(waiting_for(&[heard(&a, true, false), heard(&b, true, false)]).is_empty());
        // A peer answered as a member of a cluster this node did not join
        // (it knows no leader, or one this node cannot reach): not ready.
        assert_eq!(waiting_for(&[heard(&a, true, true), heard(&b, true, false)]), [a]);
    }
}
