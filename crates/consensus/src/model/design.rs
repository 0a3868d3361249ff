//! Decision 0003 as the code makes it: every decision with a pure function
//! in `crate::decide` is made by that function, on the model's values
//! converted to its inputs (see the table in `model/mod.rs`). What is not
//! a pure function of the facade is transcribed, citing the code: the
//! incarnation drawn for empty storage (raft-core `identity.rs`), the raft
//! hello's cluster check (raft-core `network/gate.rs`, `server.rs`), and
//! the leader's join handling (cmd-rpc `service.rs`, `join_here`).

use super::protocol::{
    Answer, Bootstrap, Change, ClusterId, Confirm, Decision, Granter, JoinRequest, Leader,
    MAX_NODES, Node, Protocol, RaftId, Set,
};
use crate::decide::bootstrap as boot;
use crate::decide::membership as members;

/// A leader hint names the node whose raft id it is, whatever its
/// incarnation (as the facade compares stable ids).
impl boot::Names<Node> for RaftId {
    fn names(&self, node: &Node) -> bool {
        self.node() == *node
    }
}

/// Decision 0003 with its confirm round, as `crate::decide` makes it.
pub(crate) struct Design0003;

/// A bit set of nodes, from a list.
fn bits(nodes: &[Node]) -> u8 {
    nodes.iter().fold(0, |set, n| set | 1 << n)
}

/// The tagged peers of `input`'s view, each with its answer as the shell
/// gives it to `decide` (an offline peer is Silent without a dial).
fn peers(input: &Bootstrap<'_>) -> Vec<boot::Peer<Node, ClusterId, RaftId>> {
    input
        .view
        .peers(input.me)
        .map(|peer| {
            let answer = match input.answers[peer as usize].filter(|_| input.view.online(peer)) {
                Some(Answer::Member { cluster, leader }) => {
                    boot::Answer::Member { cluster: cluster.unwrap_or(ClusterId::MAX), leader }
                }
                Some(Answer::Fresh { promised_to }) => boot::Answer::Fresh { promised_to },
                None => boot::Answer::Silent,
            };
            boot::Peer { name: peer, answer }
        })
        .collect()
}

/// What the node is committed to, as the shell's `Owned` makes it: forming
/// (in memory), bound (a stored cluster id, with its former if it bound
/// itself), or free.
fn commitment<'a>(
    input: &Bootstrap<'_>,
    cluster: &'a Option<ClusterId>,
    former: &'a Option<Node>,
    promise: &'a Option<Node>,
    confirmed: &'a [Node],
    sealed: &'a [Node],
) -> boot::Commitment<'a, Node, ClusterId> {
    match cluster {
        Some(cluster) if input.forming => boot::Commitment::Forming { cluster, confirmed, sealed },
        Some(cluster) => boot::Commitment::Bound { cluster, former: former.as_ref() },
        None => {
            boot::Commitment::Free { holding: promise.as_ref().map(|h| (h, input.view.tagged(*h))) }
        }
    }
}

/// cmd-rpc `service.rs` `join_here` (after `check_join`): a join of
/// another cluster, or under another node's id, is refused; a voter is
/// done; otherwise the node is added as a learner (`replace` starts with
/// `add_learner`, which waits for the catch-up), then every other
/// incarnation of its stable id is swapped for it in one joint change, or
/// it is promoted.
pub(super) fn join_here(leader: &Leader<'_>, request: &JoinRequest) -> Option<Change> {
    let config = leader.config;
    if request.cluster != leader.cluster || request.id.node() != request.from {
        return None;
    }
    if config.voters().has(request.id) {
        return None;
    }
    if !config.learners.has(request.id) {
        return Some(Change::AddLearner(request.id));
    }
    if !leader.caught_up(request.id) {
        return None;
    }
    let old = config
        .members()
        .iter()
        .filter(|m| m.node() == request.from && *m != request.id)
        .fold(Set::default(), Set::with);
    Some(if old.is_empty() {
        Change::Promote(request.id)
    } else {
        Change::Replace { old, new: request.id }
    })
}

/// What a variant of decision 0003 may change, each with the code's rule
/// as its default: a variant overrides only what it changes, and makes
/// every other decision as [`Design0003`] does (the [`Protocol`] below).
pub(crate) trait Variant: Sync {
    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// [`Protocol::ready`]: `decide::bootstrap::waiting_for`, as
    /// `bootstrap::ready::become_ready` calls it: ready once every tagged
    /// peer of its view, online or not, answered a probe, and none's last
    /// answer is a member's.
    fn ready(&self, input: &Bootstrap<'_>) -> bool {
        let peers: Vec<Node> = input.view.peers(input.me).collect();
        let heard: Vec<boot::Heard<'_, Node>> = peers
            .iter()
            .map(|peer| boot::Heard {
                peer,
                answered: input.answers[*peer as usize].is_some(),
                member: matches!(input.answers[*peer as usize], Some(Answer::Member { .. })),
            })
            .collect();
        boot::waiting_for(&heard).is_empty()
    }

    /// [`Protocol::decide`]'s rules: `decide::bootstrap::decide`.
    fn decide_with(
        &self,
        situation: &boot::Situation<'_, Node, ClusterId, RaftId>,
    ) -> boot::Decision<Node, ClusterId, RaftId> {
        boot::decide(situation)
    }
}

impl Variant for Design0003 {
    fn name(&self) -> &'static str {
        "0003 (decide::)"
    }
}

/// Decision 0003 as the code makes it, but for what the variant `V`
/// overrides.
impl<V: Variant> Protocol for V {
    fn name(&self) -> &'static str {
        Variant::name(self)
    }

    /// raft-core `identity.rs` `establish`: storage without an identity
    /// record draws a new random incarnation.
    fn incarnation_after_wipe(&self, old: u8) -> u8 {
        old + 1
    }

    /// raft-core `network/server.rs` with `gate.rs`: a hello must carry the
    /// node's own cluster id, and a node without one refuses all.
    fn accepts_raft(&self, mine: Option<ClusterId>, theirs: Option<ClusterId>) -> bool {
        mine.is_some() && mine == theirs
    }

    /// `decide::bootstrap::wants_promises`, as `bootstrap::run` calls it.
    fn wants_promise(&self, input: &Bootstrap<'_>) -> bool {
        let names: Vec<Node> = input.view.peers(input.me).collect();
        let (confirmed, sealed) = confirmed(input);
        let former = input.former.map(RaftId::node);
        let c = commitment(input, &input.cluster, &former, &input.promise, &confirmed, &sealed);
        boot::wants_promises(
            &input.me,
            names.iter(),
            input.follow_only,
            input.expected_size as usize,
            &c,
        )
    }

    /// `decide::bootstrap::answer`, as `FacadePeers::probe` calls it: a
    /// node with a cluster id answers as a member and names its leader (or
    /// its former).
    fn answer_probe(&self, granter: &Granter, caller: Node, wants: bool) -> (Answer, Option<Node>) {
        let view = granter.view;
        let (holding, reply) = boot::answer(&boot::Probe {
            me: &granter.me,
            member: granter.cluster.is_some(),
            holding: granter.promise.as_ref(),
            holder_tagged: granter.promise.is_some_and(|h| view.tagged(h)),
            caller: &caller,
            caller_live: view.tagged(caller) && view.online(caller),
            wants_promise: wants,
        });
        let answer = match (granter.cluster, reply) {
            (Some(cluster), _) => Answer::Member { cluster: Some(cluster), leader: granter.leader },
            (None, boot::Reply::Fresh { promised_to }) => Answer::Fresh { promised_to },
            (None, boot::Reply::Member) => Answer::Fresh { promised_to: None },
        };
        (answer, holding)
    }

    /// `decide::bootstrap::kept`: the facade releases a promise when it
    /// uses it (answering a probe or a confirm, deciding), with the view of
    /// that moment; it never releases one on a view change alone. So here
    /// only a cluster id releases it.
    fn keep_promise(&self, granter: &Granter) -> Option<Node> {
        boot::kept(granter.cluster.is_some(), granter.promise.as_ref(), true)
    }

    /// A node without raft state or a cluster id at start grants nothing
    /// until it is ready (`BootState::ready`).
    fn looks_first(&self) -> bool {
        true
    }

    fn ready(&self, input: &Bootstrap<'_>) -> bool {
        Variant::ready(self, input)
    }

    /// `decide::bootstrap::decide`, as `bootstrap::round` calls it.
    fn decide(&self, input: &Bootstrap<'_>) -> Decision {
        let peers = peers(input);
        let (confirmed, sealed) = confirmed(input);
        let former = input.former.map(RaftId::node);
        let situation = boot::Situation {
            me: &input.me,
            follow_only: input.follow_only,
            expected_size: input.expected_size as usize,
            peers: &peers,
            commitment: commitment(
                input,
                &input.cluster,
                &former,
                &input.promise,
                &confirmed,
                &sealed,
            ),
        };
        match self.decide_with(&situation) {
            boot::Decision::Join { cluster, leader, .. } => {
                Decision::Join { cluster: Some(cluster), leader }
            }
            boot::Decision::Form => Decision::Form,
            boot::Decision::Resume { cluster } => Decision::Resume { cluster },
            boot::Decision::Confirm { cluster, ask } => {
                Decision::Confirm { cluster, ask: bits(&ask) }
            }
            boot::Decision::Seal { cluster, ask } => Decision::Seal { cluster, ask: bits(&ask) },
            boot::Decision::Initialize { cluster, voters } => {
                Decision::Initialize { cluster, voters: bits(&voters) }
            }
            boot::Decision::Wait(_) => Decision::Wait,
        }
    }

    fn on_join(&self, leader: &Leader<'_>, request: &JoinRequest) -> Option<Change> {
        join_here(leader, request)
    }

    /// `decide::membership::to_probe` and `plan`, as `membership::reconcile`
    /// calls them: the configuration and replication progress, the tagged
    /// nodes of the leader's view (the leader itself online), and the
    /// answers of the nodes `to_probe` names that are up.
    fn plan(&self, leader: &Leader<'_>) -> Option<Change> {
        let config = leader.config;
        let me = u64::from(leader.me.0);
        let last_index = u64::from(leader.last_index);
        let members: Vec<members::Member<Node>> = config
            .members()
            .iter()
            .map(|id| members::Member {
                id: u64::from(id.0),
                name: id.node(),
                voter: config.voters().has(id),
                matched: if id == leader.me {
                    Some(last_index)
                } else {
                    leader.matched[id.0 as usize].map(u64::from)
                },
            })
            .collect();
        let tagged: Vec<members::Tagged<Node>> = (0..MAX_NODES as Node)
            .filter(|&n| leader.view.tagged(n))
            .map(|n| members::Tagged {
                name: n,
                online: leader.view.online(n) || n == leader.me.node(),
            })
            .collect();
        let mut probed: Vec<members::Probed<Node>> = members::to_probe(me, &members, &tagged)
            .into_iter()
            .filter_map(|name| {
                let live = leader.live[name as usize]?;
                Some(members::Probed {
                    name,
                    id: u64::from(live.id.0),
                    in_this_cluster: live.cluster.is_some() && live.cluster == leader.cluster,
                })
            })
            .collect();
        probed.push(members::Probed { name: leader.me.node(), id: me, in_this_cluster: true });
        let inputs = members::Inputs {
            leader: me,
            members: &members,
            tagged: &tagged,
            probed: &probed,
            last_index,
            max_lag: 0,
        };
        let id = |raw: u64| RaftId(raw as u8);
        Some(match members::plan(&inputs)? {
            members::Action::Replace { old, new, .. } => Change::Replace {
                old: old.into_iter().map(id).fold(Set::default(), Set::with),
                new: id(new),
            },
            members::Action::Remove { id: x, .. } => Change::Remove(id(x)),
            members::Action::Promote { id: x, .. } => Change::Promote(id(x)),
            members::Action::AddLearner { id: x, .. } => Change::AddLearner(id(x)),
        })
    }

    fn confirms(&self) -> bool {
        true
    }

    fn seals(&self) -> bool {
        true
    }

    /// `decide::bootstrap::confirm`, as `FacadePeers::confirm` calls it:
    /// the seal is compared by raft id (the incarnation of the former).
    fn on_confirm(
        &self,
        granter: &Granter,
        caller: RaftId,
        cluster: ClusterId,
        seal: bool,
    ) -> Confirm {
        let former = granter.former.map(RaftId::node);
        let sealed = match granter.sealed {
            None => boot::Sealed::No,
            Some(id) if id == caller => boot::Sealed::ToCaller,
            Some(_) => boot::Sealed::ToOther,
        };
        let step = boot::confirm(&boot::ConfirmCall {
            has_state: granter.has_state,
            stored: granter.cluster.as_ref().map(|c| (c, former.as_ref())),
            holding: granter.promise.as_ref(),
            holder_tagged: granter.promise.is_some_and(|h| granter.view.tagged(h)),
            sealed,
            // The world applies readiness before this call (a node that is
            // not ready drops confirms unless it has a cluster id). That a
            // bound node which is not ready refuses to seal (finding 56) is
            // left out: it only refuses, as a lost message does, so the
            // model without it covers the code with it.
            ready: true,
            caller: &caller.node(),
            cluster: &cluster,
            seal,
        });
        match step {
            boot::Confirmation::Bind => Confirm::Bind,
            boot::Confirmation::Again => Confirm::Again,
            boot::Confirmation::Seal => Confirm::Seal,
            boot::Confirmation::Refuse(_) => Confirm::Refuse,
        }
    }

    /// `decide::bootstrap::unbind`, as `bootstrap::run` calls it (the grace
    /// period is time, which the model leaves out: a node whose former is
    /// untagged in its view may unbind at any moment).
    fn unbind(&self, granter: &Granter, gone: bool, forgot: bool) -> bool {
        let former = granter.former.map(RaftId::node);
        let former_now = if forgot {
            boot::FormerNow::Forgot
        } else if gone {
            boot::FormerNow::GoneForGood
        } else {
            boot::FormerNow::Present
        };
        boot::unbind(&boot::Bond {
            me: &granter.me,
            has_state: granter.has_state,
            former: former.as_ref(),
            sealed: granter.sealed.is_some(),
            former_now,
        })
    }
}

/// The nodes whose confirmation, and whose seal, reached the node.
fn confirmed(input: &Bootstrap<'_>) -> (Vec<Node>, Vec<Node>) {
    let which = |of: &[Option<RaftId>; MAX_NODES]| {
        (0..MAX_NODES as Node).filter(|&n| of[n as usize].is_some()).collect()
    };
    (which(&input.confirmed), which(&input.sealed))
}

/// Decision 0003 with an earlier, weaker readiness rule; everything else
/// is [`Design0003`].
pub(crate) enum EarlierReadiness {
    /// As the code made it before: a node that started without raft state
    /// or a cluster id became ready once it had decided on one probe round
    /// of its own, whatever answered, so a round in which its peers were
    /// silent (no path yet, a lower peer yielded to, a probe timeout) made
    /// it ready.
    AfterAnyRound,
    /// As first planned: ready once every tagged, online peer of its view
    /// answered, whatever it answered (a member of a cluster that names no
    /// leader included).
    OnceAnswered,
    /// As the code made it before the offline fix: ready once every tagged,
    /// *online* peer of its view answered and none's last answer is a
    /// member's; a peer offline in the view was not waited for.
    OnlineOnly,
}

impl Variant for EarlierReadiness {
    fn name(&self) -> &'static str {
        match self {
            EarlierReadiness::AfterAnyRound => "0003 (decide::), ready after any first round",
            EarlierReadiness::OnceAnswered => "0003 (decide::), ready once every peer answered",
            EarlierReadiness::OnlineOnly => {
                "0003 (decide::), ready once every online peer answered, none a member"
            }
        }
    }

    fn ready(&self, input: &Bootstrap<'_>) -> bool {
        match self {
            // `round` set `ready` before deciding, on any answers.
            EarlierReadiness::AfterAnyRound => true,
            EarlierReadiness::OnceAnswered => {
                input.view.online_peers(input.me).all(|peer| input.answers[peer as usize].is_some())
            }
            EarlierReadiness::OnlineOnly => input.view.online_peers(input.me).all(|peer| {
                matches!(input.answers[peer as usize], Some(a) if !matches!(a, Answer::Member { .. }))
            }),
        }
    }
}

/// Decision 0003 as the code made it before docs/reliability.md finding
/// 38: a free node that a peer names (by stable id) as its leader or
/// former, an earlier incarnation of it, resumed forming that cluster id
/// (decide's rule 2 was `Resume` where it now waits, in the same place).
pub(crate) struct ResumeOnHint;

impl Variant for ResumeOnHint {
    fn name(&self) -> &'static str {
        "0003 (decide::), resuming an earlier incarnation's cluster id"
    }

    fn decide_with(
        &self,
        situation: &boot::Situation<'_, Node, ClusterId, RaftId>,
    ) -> boot::Decision<Node, ClusterId, RaftId> {
        match boot::decide(situation) {
            boot::Decision::Wait(boot::Wait::EarlierIncarnation { cluster, .. }) => {
                boot::Decision::Resume { cluster }
            }
            other => other,
        }
    }
}
