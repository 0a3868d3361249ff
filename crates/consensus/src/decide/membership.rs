//! The leader's membership plan (decision 0003): membership follows the
//! tailnet's tags, one change per round.
//!
//! [`plan`] looks at the configuration (members, voters, how far each has
//! replicated), the tagged nodes of the leader's view and their liveness,
//! and the probe answers of the tagged nodes [`to_probe`] names, and picks
//! at most one [`Action`]. Raft ids are `u64`; node names (stable ids) are
//! generic.

use std::collections::BTreeSet;

/// A member of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member<N> {
    /// Raft id.
    pub(crate) id: u64,
    /// The node (stable id) it is an incarnation of.
    pub(crate) name: N,
    /// Whether it votes.
    pub(crate) voter: bool,
    /// The last index replicated to it, as the leader knows.
    pub(crate) matched: Option<u64>,
}

/// A node of the leader's view that carries the tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tagged<N> {
    /// Its stable id.
    pub(crate) name: N,
    /// Whether it is online.
    pub(crate) online: bool,
}

/// What a tagged, online node answered the leader's probe with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probed<N> {
    /// The node.
    pub(crate) name: N,
    /// The raft id of its running incarnation.
    pub(crate) id: u64,
    /// Whether it is a member of (or decided to join) this leader's
    /// cluster.
    pub(crate) in_this_cluster: bool,
}

/// Everything [`plan`] looks at.
#[derive(Clone, Debug)]
pub(crate) struct Inputs<'a, N> {
    /// The leader's raft id.
    pub(crate) leader: u64,
    /// The configuration.
    pub(crate) members: &'a [Member<N>],
    /// Every tagged node of the leader's view, the leader included.
    pub(crate) tagged: &'a [Tagged<N>],
    /// Probe answers (the leader's own included, as its own node).
    pub(crate) probed: &'a [Probed<N>],
    /// The leader's last log index.
    pub(crate) last_index: u64,
    /// How far behind it a learner may be and still count as caught up.
    pub(crate) max_lag: u64,
}

/// The one membership change to make this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action<N> {
    /// Swap the stale incarnations `old` for the live one `new` (a
    /// caught-up learner or a voter) in one joint change.
    Replace {
        /// Stale incarnations of `name`.
        old: BTreeSet<u64>,
        /// Its live incarnation.
        new: u64,
        /// The node.
        name: N,
    },
    /// Remove a member whose tag was revoked or that left the tailnet.
    Remove {
        /// The member.
        id: u64,
        /// Its node.
        name: N,
    },
    /// Make a caught-up, tagged, online learner a voter.
    Promote {
        /// The learner.
        id: u64,
        /// Its node.
        name: N,
    },
    /// Add a tagged, online non-member that answers as this cluster's node
    /// back, as a learner (promoted in a later round).
    AddLearner {
        /// Its raft id.
        id: u64,
        /// Its node.
        name: N,
    },
}

fn caught_up<N>(member: &Member<N>, inputs: &Inputs<'_, N>) -> bool {
    member.matched.is_some_and(|m| m.saturating_add(inputs.max_lag) >= inputs.last_index)
}

/// Whether the quorum guard may count `voter` as reachable: the leader, or
/// a voter whose node is tagged and online and that is that node's live
/// incarnation. A node that restarted empty comes back under a new raft id;
/// its old voter is dead however online the node is, so it counts only if
/// a probe names it, or it is the node's only member and no probe names
/// another.
fn live<N: PartialEq>(
    voter: &Member<N>,
    members: &[&Member<N>],
    probed: &[&Probed<N>],
    inputs: &Inputs<'_, N>,
) -> bool {
    if voter.id == inputs.leader {
        return true;
    }
    if !tagged_online(&voter.name, inputs) {
        return false;
    }
    let mut answers = probed.iter().filter(|p| p.name == voter.name);
    let named = answers.clone().any(|p| p.id == voter.id);
    let other = answers.any(|p| p.id != voter.id);
    let alone = members.iter().filter(|m| m.name == voter.name).count() == 1;
    named || (alone && !other)
}

/// The quorum guard: whether the voters left once voter `id` is removed
/// keep a reachable majority (the leader, and voters [`live`] counts: a
/// dead incarnation of a node that came back does not count). `Err`
/// carries how many voters would remain and how many of them are
/// reachable.
pub(crate) fn keeps_quorum<N: PartialEq>(
    inputs: &Inputs<'_, N>,
    id: u64,
) -> Result<(), (usize, usize)> {
    let (remaining, reachable) = voters_after_removal(inputs, id);
    if quorum_kept(remaining, reachable) { Ok(()) } else { Err((remaining, reachable)) }
}

/// How many voters remain once voter `id` is removed, and how many of
/// them [`live`] counts as reachable.
pub(crate) fn voters_after_removal<N: PartialEq>(
    inputs: &Inputs<'_, N>,
    id: u64,
) -> (usize, usize) {
    let members: Vec<&Member<N>> = inputs.members.iter().collect();
    let probed: Vec<&Probed<N>> = inputs.probed.iter().collect();
    let remaining: Vec<&Member<N>> =
        inputs.members.iter().filter(|m| m.voter && m.id != id).collect();
    let reachable = remaining.iter().filter(|v| live(v, &members, &probed, inputs)).count();
    (remaining.len(), reachable)
}

/// Whether `reachable` of `remaining` voters are a majority (and there
/// are any).
pub(crate) fn quorum_kept(remaining: usize, reachable: usize) -> bool {
    remaining > 0 && reachable > remaining / 2
}

fn tagged_online<N: PartialEq>(name: &N, inputs: &Inputs<'_, N>) -> bool {
    inputs.tagged.iter().any(|t| t.name == *name && t.online)
}

/// The tagged, online nodes worth probing this round: those whose stable
/// id is not exactly one voter of the configuration (not a member, a
/// learner, or several incarnations). The leader's own node is never
/// probed (its answer is its own id).
pub(crate) fn to_probe<N: Ord + Clone>(
    leader: u64,
    members: &[Member<N>],
    tagged: &[Tagged<N>],
) -> Vec<N> {
    let leader_name = members.iter().find(|m| m.id == leader).map(|m| &m.name);
    let mut names: Vec<N> = tagged
        .iter()
        .filter(|t| t.online && Some(&t.name) != leader_name)
        .filter(|t| {
            let mine: Vec<&Member<N>> = members.iter().filter(|m| m.name == t.name).collect();
            !matches!(mine.as_slice(), [only] if only.voter)
        })
        .map(|t| t.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The one action for this round, the first rule that applies:
///
/// 1. **Replace a stale incarnation.** A node whose probe names its live
///    raft id, which is a caught-up learner or a voter, while other
///    incarnations of the same node are members → swap them all for the
///    live one in one joint change (the number of voters never drops, and
///    the change never needs the dead incarnations).
/// 2. **Remove** a member (not the leader) whose node is no longer tagged
///    in the view (tag revoked, or gone from the tailnet). Never one that
///    is merely offline. A voter only if the remaining voters keep a
///    reachable majority (the leader, plus voters whose nodes are tagged
///    and online): the quorum guard.
/// 3. **Promote** a caught-up learner whose node is tagged and online and
///    has no other voting incarnation.
/// 4. **Add back** a tagged, online node that is not a member but answers
///    as a node of this cluster, with a raft id that is not a member: as a
///    learner.
///
/// Otherwise nothing.
pub(crate) fn plan<N: Ord + Clone>(inputs: &Inputs<'_, N>) -> Option<Action<N>> {
    let mut members: Vec<&Member<N>> = inputs.members.iter().collect();
    members.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    let mut probed: Vec<&Probed<N>> = inputs.probed.iter().collect();
    probed.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));

    // Rule 1.
    for probe in &probed {
        let Some(live) = members.iter().find(|m| m.id == probe.id && m.name == probe.name) else {
            continue;
        };
        if !live.voter && !caught_up(live, inputs) {
            continue;
        }
        let old: BTreeSet<u64> = members
            .iter()
            .filter(|m| m.name == probe.name && m.id != probe.id && m.id != inputs.leader)
            .map(|m| m.id)
            .collect();
        if !old.is_empty() {
            return Some(Action::Replace { old, new: probe.id, name: probe.name.clone() });
        }
    }

    // Rule 2.
    for member in &members {
        if member.id == inputs.leader || inputs.tagged.iter().any(|t| t.name == member.name) {
            continue;
        }
        if member.voter && keeps_quorum(inputs, member.id).is_err() {
            continue;
        }
        return Some(Action::Remove { id: member.id, name: member.name.clone() });
    }

    // Rule 3.
    let voters: Vec<&Member<N>> = members.iter().copied().filter(|m| m.voter).collect();
    for member in &members {
        if member.voter || !caught_up(member, inputs) || !tagged_online(&member.name, inputs) {
            continue;
        }
        if voters.iter().any(|v| v.name == member.name) {
            continue;
        }
        return Some(Action::Promote { id: member.id, name: member.name.clone() });
    }

    // Rule 4.
    for probe in &probed {
        if !probe.in_this_cluster || !tagged_online(&probe.name, inputs) {
            continue;
        }
        if members.iter().any(|m| m.id == probe.id) {
            continue;
        }
        return Some(Action::AddLearner { id: probe.id, name: probe.name.clone() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64, name: char) -> Member<char> {
        Member { id, name, voter: true, matched: Some(100) }
    }

    fn learner(id: u64, name: char, matched: Option<u64>) -> Member<char> {
        Member { id, name, voter: false, matched }
    }

    fn online(name: char) -> Tagged<char> {
        Tagged { name, online: true }
    }

    fn offline(name: char) -> Tagged<char> {
        Tagged { name, online: false }
    }

    fn probe(name: char, id: u64) -> Probed<char> {
        Probed { name, id, in_this_cluster: true }
    }

    fn run(
        members: &[Member<char>],
        tagged: &[Tagged<char>],
        probed: &[Probed<char>],
    ) -> Option<Action<char>> {
        plan(&Inputs { leader: 1, members, tagged, probed, last_index: 100, max_lag: 10 })
    }

    /// Leader 1 ('a'), voters 2 ('b') and 3 ('c').
    fn three() -> Vec<Member<char>> {
        vec![voter(1, 'a'), voter(2, 'b'), voter(3, 'c')]
    }

    fn all_online() -> Vec<Tagged<char>> {
        vec![online('a'), online('b'), online('c')]
    }

    #[test]
    fn a_steady_cluster_needs_nothing_and_probes_nobody() {
        assert_eq!(run(&three(), &all_online(), &[]), None);
        assert!(to_probe(1, &three(), &all_online()).is_empty());
    }

    /// What a case is about, the configuration, the view, the probe
    /// answers, and the action expected.
    type Case = (
        &'static str,
        Vec<Member<char>>,
        Vec<Tagged<char>>,
        Vec<Probed<char>>,
        Option<Action<char>>,
    );

    #[test]
    fn table() {
        let stale_b = || {
            let mut m = three();
            m.push(learner(22, 'b', Some(95)));
            m
        };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("rule 1: caught-up new incarnation replaces the old one",
             stale_b(), all_online(), vec![probe('b', 22)],
             Some(Action::Replace { old: BTreeSet::from([2]), new: 22, name: 'b' })),
            ("rule 1: not before the new incarnation caught up",
             { let mut m = three(); m.push(learner(22, 'b', Some(50))); m },
             all_online(), vec![probe('b', 22)], None),
            ("rule 1: not without a probe naming the live incarnation",
             stale_b(), all_online(), vec![], None),
            ("rule 1: the probe names the old one: the learner is not promoted beside it",
             stale_b(), all_online(), vec![probe('b', 2)],
             Some(Action::Replace { old: BTreeSet::from([22]), new: 2, name: 'b' })),
            ("rule 1: a stale learner of a live voter is dropped too",
             { let mut m = three(); m.push(learner(23, 'c', None)); m },
             all_online(), vec![probe('c', 3)],
             Some(Action::Replace { old: BTreeSet::from([23]), new: 3, name: 'c' })),
            ("rule 1: two stale incarnations go at once",
             { let mut m = stale_b(); m.push(learner(222, 'b', None)); m },
             all_online(), vec![probe('b', 22)],
             Some(Action::Replace { old: BTreeSet::from([2, 222]), new: 22, name: 'b' })),
            ("rule 1 before rule 2",
             stale_b(), vec![online('a'), online('b')], vec![probe('b', 22)],
             Some(Action::Replace { old: BTreeSet::from([2]), new: 22, name: 'b' })),
            ("rule 2: an untagged voter goes when a quorum stays reachable",
             three(), vec![online('a'), online('b')], vec![],
             Some(Action::Remove { id: 3, name: 'c' })),
            ("rule 2: an offline but tagged member stays",
             three(), vec![online('a'), online('b'), offline('c')], vec![], None),
            ("rule 2: quorum guard: untagged b, offline c: b stays",
             three(), vec![online('a'), offline('c')], vec![], None),
            ("rule 2: quorum guard lifted once c is back",
             three(), vec![online('a'), online('c')], vec![],
             Some(Action::Remove { id: 2, name: 'b' })),
            ("rule 2: quorum guard: a voter whose node came back as a new incarnation is not reachable",
             { let mut m = three(); m.push(learner(22, 'b', Some(50))); m },
             vec![online('a'), online('b')], vec![probe('b', 22)], None),
            ("rule 2: quorum guard: nor one beside another member of its node that no probe settles",
             { let mut m = three(); m.push(learner(22, 'b', Some(50))); m },
             vec![online('a'), online('b')], vec![], None),
            ("rule 2: the leader never removes itself",
             three(), vec![online('b'), online('c')], vec![], None),
            ("rule 2: in a two-voter cluster an untagged follower goes (the leader alone is the rest's majority)",
             vec![voter(1, 'a'), voter(2, 'b')], vec![online('a')], vec![],
             Some(Action::Remove { id: 2, name: 'b' })),
            ("rule 2: an untagged learner goes without a guard",
             { let mut m = three(); m.push(learner(4, 'd', None)); m },
             vec![online('a'), offline('b'), offline('c')], vec![],
             Some(Action::Remove { id: 4, name: 'd' })),
            ("rule 3: a caught-up tagged online learner is promoted",
             { let mut m = three(); m.push(learner(4, 'd', Some(91))); m },
             vec![online('a'), online('b'), online('c'), online('d')], vec![],
             Some(Action::Promote { id: 4, name: 'd' })),
            ("rule 3: not a lagging one",
             { let mut m = three(); m.push(learner(4, 'd', Some(89))); m },
             vec![online('a'), online('b'), online('c'), online('d')], vec![], None),
            ("rule 3: not an offline one",
             { let mut m = three(); m.push(learner(4, 'd', Some(100))); m },
             vec![online('a'), online('b'), online('c'), offline('d')], vec![], None),
            ("rule 3: not beside another voting incarnation of its node",
             stale_b(), all_online(), vec![], None),
            ("rule 4: a tagged node answering as this cluster's is added back as a learner",
             three(), vec![online('a'), online('b'), online('c'), online('d')], vec![probe('d', 4)],
             Some(Action::AddLearner { id: 4, name: 'd' })),
            ("rule 4: not one of another cluster",
             three(), vec![online('a'), online('b'), online('c'), online('d')],
             vec![Probed { name: 'd', id: 4, in_this_cluster: false }], None),
            ("rule 4: not an untagged one",
             three(), all_online(), vec![probe('d', 4)], None),
            ("rule 4: a new incarnation that decided to join is added beside its stale voter",
             three(), all_online(), vec![probe('b', 22)],
             Some(Action::AddLearner { id: 22, name: 'b' })),
        ];
        for (what, members, tagged, probed, expected) in cases {
            assert_eq!(run(&members, &tagged, &probed), expected, "{what}");
        }
    }

    #[test]
    fn the_quorum_guard_over_five_voters() {
        let members: Vec<Member<char>> = ['a', 'b', 'c', 'd', 'e']
            .iter()
            .enumerate()
            .map(|(i, n)| voter(i as u64 + 1, *n))
            .collect();
        // 'e' untagged. Remaining a..d need 3 reachable.
        for (online_set, removed) in [("abcd", true), ("abc", true), ("ab", false), ("a", false)] {
            let tagged: Vec<Tagged<char>> = "abcd"
                .chars()
                .map(|n| Tagged { name: n, online: online_set.contains(n) })
                .collect();
            let action = run(&members, &tagged, &[]);
            assert_eq!(action.is_some(), removed, "online {online_set}: {action:?}");
        }
    }

    #[test]
    fn who_is_probed() {
        let mut members = three();
        members.push(learner(4, 'd', None));
        members.push(learner(22, 'b', None));
        let tagged =
            vec![online('a'), online('b'), offline('c'), online('d'), online('e'), offline('f')];
        assert_eq!(to_probe(1, &members, &tagged), vec!['b', 'd', 'e']);
    }

    #[test]
    fn the_quorum_guard_for_a_removal_asked_over_the_network() {
        // Voters a (leader), b, c; c offline. Removing c leaves a and b,
        // both reachable.
        let members = vec![voter(1, 'a'), voter(2, 'b'), voter(3, 'c')];
        let tagged = vec![online('a'), online('b'), offline('c')];
        let probed = vec![probe('a', 1)];
        let inputs = Inputs {
            leader: 1,
            members: &members,
            tagged: &tagged,
            probed: &probed,
            last_index: 100,
            max_lag: 0,
        };
        assert_eq!(keeps_quorum(&inputs, 3), Ok(()));
        // b offline too: a alone of two.
        let tagged = vec![online('a'), offline('b'), offline('c')];
        assert_eq!(keeps_quorum(&Inputs { tagged: &tagged, ..inputs.clone() }, 3), Err((2, 1)));
        // b online, but it came back as a new incarnation (20, a learner)
        // and no probe names voter 2: its old voter is dead.
        let members = vec![voter(1, 'a'), voter(2, 'b'), voter(3, 'c'), learner(20, 'b', None)];
        let tagged = vec![online('a'), online('b'), offline('c')];
        let dead = Inputs { members: &members, tagged: &tagged, ..inputs.clone() };
        assert_eq!(keeps_quorum(&dead, 3), Err((2, 1)));
        // Removing the only other voter of two leaves the leader, a
        // majority of itself; removing the only voter leaves nobody.
        let members = vec![voter(1, 'a'), voter(2, 'b')];
        assert_eq!(keeps_quorum(&Inputs { members: &members, ..inputs.clone() }, 2), Ok(()));
        let alone = vec![voter(1, 'a')];
        assert_eq!(keeps_quorum(&Inputs { members: &alone, ..inputs }, 1), Err((0, 0)));
    }
}
