//! How a fresh node (one without a cluster) finds or forms its cluster,
//! and how it answers other fresh nodes (decision 0003).
//!
//! A fresh node probes every tagged peer in its view. Each answer is a
//! [`Answer::Member`] of a cluster, [`Answer::Fresh`] with the promise the
//! peer holds, or [`Answer::Silent`]. [`decide`] turns the answers into one
//! [`Decision`]; [`answer`] is the other side: how a fresh node answers a
//! probe, and which promise it holds afterwards.
//!
//! A promise (granted by node G to node X) means: G forms no cluster before
//! X does, and promises nobody else, for as long as G holds it. A node forms
//! a cluster only while every tagged peer in its view holds a promise to it
//! and it holds none to another tagged node; so two nodes whose views share
//! a node can never both form one.
//!
//! A promise is released when its holder gives it back (it probes without
//! asking for one), is untagged or gone from the granter's view, or when
//! the granter gets a cluster. Not when the holder is merely offline: an
//! offline tagged node is silent to every prober, which blocks forming
//! anyway, and releasing on a view that flapped could let two nodes whose
//! views differ both form.

use std::fmt;

/// What one tagged peer answered a probe with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer<N, C, L> {
    /// It formed, joined or decided to join cluster `cluster`; `leader` is
    /// the leader it knows of.
    Member {
        /// The cluster.
        cluster: C,
        /// Its leader, if the peer knows one.
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
    /// The promise this node holds, if any, and whether its holder is
    /// still tagged in this node's view.
    pub(crate) holding: Option<(&'a N, bool)>,
}

/// What a fresh node does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision<N, C, L> {
    /// Join `cluster` by calling `leader` (learned from peer `via`).
    Join {
        /// The cluster to join.
        cluster: C,
        /// Its leader.
        leader: L,
        /// The peer that named it.
        via: N,
    },
    /// Form a new cluster now.
    Form,
    /// Probe again later, for this reason.
    Wait(Wait<N, C>),
}

/// Why a fresh node waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wait<N, C> {
    /// A peer is a member of `cluster` but knows no leader (rule 2).
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
}

impl<N: fmt::Display, C: fmt::Display> fmt::Display for Wait<N, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
        }
    }
}

/// The lowest of `names`.
fn lowest<'a, N: Ord + 'a>(names: impl Iterator<Item = &'a N>) -> Option<&'a N> {
    names.min()
}

/// Whether the prober should ask its peers for promises this round: only
/// a node that may form a cluster (not follow-only, enough tagged nodes,
/// the lowest of them) asks. Asking otherwise would tie up promises the
/// lowest node needs; a probe that does not ask gives back a promise the
/// peer holds for the prober.
pub(crate) fn wants_promises<'a, N: Ord + 'a>(
    me: &N,
    peers: impl Iterator<Item = &'a N> + Clone,
    follow_only: bool,
    expected_size: usize,
) -> bool {
    let tagged = 1 + peers.clone().count();
    !follow_only && tagged >= expected_size && lowest(peers).is_none_or(|low| low > me)
}

/// The decision of a fresh node over its peers' answers. The first rule
/// that applies wins:
///
/// 1. Some peer is a member of a cluster whose leader it knows → join that
///    cluster through that leader (the lowest such peer's, to be
///    deterministic).
/// 2. Some peer is a member without a known leader → wait: a cluster
///    exists.
/// 3. Some peer is silent → wait: a cluster may exist there.
/// 4. Follow-only, or fewer than `expected_size` tagged nodes (this one
///    included), or another tagged node sorts lower → wait.
/// 5. Some fresh peer holds no promise to this node, or this node holds a
///    promise to another node that is still tagged → wait.
/// 6. Otherwise (every peer fresh and promised to this node) → form.
pub(crate) fn decide<N: Ord + Clone, C: Clone, L: Clone>(
    s: &Situation<'_, N, C, L>,
) -> Decision<N, C, L> {
    let mut peers: Vec<&Peer<N, C, L>> = s.peers.iter().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    // Rule 1.
    for peer in &peers {
        if let Answer::Member { cluster, leader: Some(leader) } = &peer.answer {
            return Decision::Join {
                cluster: cluster.clone(),
                leader: leader.clone(),
                via: peer.name.clone(),
            };
        }
    }
    // Rule 2.
    for peer in &peers {
        if let Answer::Member { cluster, leader: None } = &peer.answer {
            return Decision::Wait(Wait::MemberWithoutLeader {
                peer: peer.name.clone(),
                cluster: cluster.clone(),
            });
        }
    }
    // Rule 3.
    if let Some(peer) = peers.iter().find(|p| matches!(p.answer, Answer::Silent)) {
        return Decision::Wait(Wait::Silent { peer: peer.name.clone() });
    }
    // Rule 4.
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
    // Rule 5.
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
    if let Some((to, true)) = s.holding
        && to != s.me
    {
        return Decision::Wait(Wait::Holding { to: to.clone() });
    }
    // Rule 6.
    Decision::Form
}

/// A probe as the probed (granting) node sees it.
#[derive(Clone, Debug)]
pub(crate) struct Probe<'a, N> {
    /// The probed node.
    pub(crate) me: &'a N,
    /// It has a cluster (formed, joined, or decided to join one).
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
    /// leader).
    Member,
    /// It is fresh, holding a promise to `promised_to`.
    Fresh {
        /// The holder of its promise after this probe.
        promised_to: Option<N>,
    },
}

/// How a node answers a probe, and the promise it holds afterwards:
///
/// - a node with a cluster answers [`Reply::Member`] and holds no promise
///   (a promise is released when the granter gets a cluster);
/// - a promise whose holder is untagged or gone from the view is released
///   (one whose holder is merely offline is kept);
/// - a probe that does not ask for a promise gives back the one the node
///   holds for the prober (the prober no longer means to form);
/// - a promise is granted to a prober that asks for one, sorts lower than
///   this node, is tagged and online, while this node holds none;
/// - never two promises at once; no timer releases one.
///
/// The shell calls this and stores the result in one step under the
/// node's bootstrap lock, the same lock under which it forms a cluster.
pub(crate) fn answer<N: Ord + Clone>(p: &Probe<'_, N>) -> (Option<N>, Reply<N>) {
    if p.member {
        return (None, Reply::Member);
    }
    let mut holding = p.holding.filter(|_| p.holder_tagged).cloned();
    if !p.wants_promise && holding.as_ref() == Some(p.caller) {
        holding = None;
    }
    if p.wants_promise && holding.is_none() && p.caller < p.me && p.caller_live {
        holding = Some(p.caller.clone());
    }
    (holding.clone(), Reply::Fresh { promised_to: holding })
}

#[cfg(test)]
mod tests {
    use super::*;

    type A = Answer<u8, char, u8>;

    /// Every answer a peer can give, over two clusters, with and without a
    /// leader, and every promise (to the prober `me`, to another node, to
    /// nobody).
    fn all_answers(me: u8) -> Vec<A> {
        vec![
            Answer::Member { cluster: 'x', leader: Some(90) },
            Answer::Member { cluster: 'y', leader: Some(91) },
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

    /// The rules restated as properties of the whole answer set: who could
    /// the node join, must it wait, may it form.
    fn expected(s: &Situation<'_, u8, char, u8>) -> Decision<u8, char, u8> {
        let mut peers = s.peers.to_vec();
        peers.sort_by_key(|p| p.name);
        let with_leader = peers.iter().find_map(|p| match &p.answer {
            Answer::Member { cluster, leader: Some(l) } => Some((p.name, *cluster, *l)),
            _ => None,
        });
        if let Some((via, cluster, leader)) = with_leader {
            return Decision::Join { cluster, leader, via };
        }
        let members: Vec<_> = peers
            .iter()
            .filter_map(|p| match &p.answer {
                Answer::Member { cluster, .. } => Some((p.name, *cluster)),
                _ => None,
            })
            .collect();
        if let Some(&(peer, cluster)) = members.first() {
            return Decision::Wait(Wait::MemberWithoutLeader { peer, cluster });
        }
        let silent: Vec<u8> =
            peers.iter().filter(|p| p.answer == Answer::Silent).map(|p| p.name).collect();
        if let Some(&peer) = silent.first() {
            return Decision::Wait(Wait::Silent { peer });
        }
        if s.follow_only {
            return Decision::Wait(Wait::FollowOnly);
        }
        if peers.len() + 1 < s.expected_size {
            return Decision::Wait(Wait::TooFew {
                tagged: peers.len() + 1,
                expected: s.expected_size,
            });
        }
        let names: Vec<u8> = peers.iter().map(|p| p.name).collect();
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
        match s.holding {
            Some((to, true)) if to != s.me => Decision::Wait(Wait::Holding { to: *to }),
            _ => Decision::Form,
        }
    }

    #[test]
    fn every_combination_of_answers_from_up_to_three_peers() {
        let mut cases = 0;
        let mut formed = 0;
        // The prober is the lowest (1), in the middle (25) or the highest
        // (99) of the names; peers are 10, 20, 30.
        for me in [1u8, 25, 99] {
            for n in 0..=3usize {
                for answers in combinations(n, me) {
                    let peers: Vec<Peer<u8, char, u8>> = answers
                        .into_iter()
                        .enumerate()
                        .map(|(i, answer)| Peer { name: 10 * (i as u8 + 1), answer })
                        .collect();
                    for follow_only in [false, true] {
                        for expected_size in 1..=5 {
                            for holding in [None, Some((&77, true)), Some((&77, false))] {
                                let s = Situation {
                                    me: &me,
                                    follow_only,
                                    expected_size,
                                    peers: &peers,
                                    holding,
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
                                formed += usize::from(decision == Decision::Form);
                            }
                        }
                    }
                }
            }
        }
        // 3 provers × (1 + 7 + 49 + 343) answer sets × 2 × 5 × 3.
        assert_eq!(cases, 3 * 400 * 30);
        assert!(formed > 0, "no combination formed a cluster");
    }

    /// What must hold whatever the rules say in detail.
    fn check_safety(s: &Situation<'_, u8, char, u8>, decision: &Decision<u8, char, u8>) {
        if *decision == Decision::Form {
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
            assert!(!matches!(s.holding, Some((_, true))), "formed holding a promise: {s:?}");
        }
        if let Decision::Join { via, .. } = decision {
            let peer = s.peers.iter().find(|p| p.name == *via).expect("joins through a peer");
            assert!(matches!(peer.answer, Answer::Member { leader: Some(_), .. }));
        }
        if s.peers.iter().any(|p| matches!(p.answer, Answer::Member { .. } | Answer::Silent)) {
            assert_ne!(*decision, Decision::Form, "formed next to a possible cluster: {s:?}");
        }
    }

    fn situation<'a>(
        me: &'a u8,
        peers: &'a [Peer<u8, char, u8>],
        expected_size: usize,
    ) -> Situation<'a, u8, char, u8> {
        Situation { me, follow_only: false, expected_size, peers, holding: None }
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
    fn rule_2_a_member_without_a_leader_means_wait() {
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
    fn rule_3_a_silent_peer_blocks_forming_even_for_the_lowest() {
        let peers = [peer(5, Answer::Fresh { promised_to: Some(1) }), peer(7, Answer::Silent)];
        assert_eq!(decide(&situation(&1, &peers, 1)), Decision::Wait(Wait::Silent { peer: 7 }));
    }

    #[test]
    fn rule_4_follow_only_too_few_and_not_lowest_wait() {
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
    fn rule_5_every_fresh_peer_must_have_promised_and_no_live_promise_held() {
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
        s.holding = Some((&0, true));
        assert_eq!(decide(&s), Decision::Wait(Wait::Holding { to: 0 }));
        // A promise whose holder is untagged or gone does not count.
        s.holding = Some((&0, false));
        assert_eq!(decide(&s), Decision::Form);
    }

    #[test]
    fn rule_6_every_peer_promised_forms() {
        let peers = [
            peer(5, Answer::Fresh { promised_to: Some(1) }),
            peer(6, Answer::Fresh { promised_to: Some(1) }),
        ];
        assert_eq!(decide(&situation(&1, &peers, 3)), Decision::Form);
    }

    #[test]
    fn only_a_node_that_may_form_asks_for_promises() {
        assert!(wants_promises(&1, [5u8, 6].iter(), false, 3));
        assert!(!wants_promises(&1, [5u8, 6].iter(), true, 3));
        assert!(!wants_promises(&1, [5u8, 6].iter(), false, 4));
        assert!(!wants_promises(&5, [1u8, 6].iter(), false, 1));
        assert!(wants_promises(&5, [].iter(), false, 1));
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
}
