//! Whether this node may start elections.
//!
//! A member whose tag is revoked is removed by the leader, which then stops
//! sending it anything (and refuses it); nobody tells the member. Left to
//! itself it would campaign again and again, raising its term, and when its
//! tag came back its higher term would make the leader step down and the
//! cluster elect anew. So a node that sees its own tag revoked, or learns
//! that it was removed from the configuration, holds its elections; once
//! it is back (tagged, in the configuration) it keeps holding them until it
//! has heard from a leader since its return (the leader has it in its
//! configuration again), or until [`REJOIN_GRACE`] has passed without one
//! (no leader wants it back, or it is alone). It votes and follows all
//! along.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::Core;
use crate::machine::StateMachine;

/// How long a node that is back waits for word from a leader before it
/// campaigns again anyway. A leader adds a returning member within a
/// reconcile round and a probe (seconds); a node nobody adds back (its
/// cluster lost it for good, or it is alone) must not stay mute forever.
pub(crate) const REJOIN_GRACE: Duration = Duration::from_secs(30);

/// The least silence from leaders after which a member back in its
/// configuration campaigns anyway.
const LEADERLESS_MIN: Duration = Duration::from_secs(10);

/// How often the decision is taken again without news.
const EVERY: Duration = Duration::from_secs(1);

/// What the decision needs to know about the node now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    /// Whether this node carries the tag; `None` with no fresh view.
    pub(crate) tagged: Option<bool>,
    /// Whether its own configuration has it (voter or learner).
    pub(crate) in_config: bool,
    /// When it last heard from a leader.
    pub(crate) contact: Option<Instant>,
    /// How long without word from a leader means there is none: a member
    /// back in its configuration that heard nothing that long campaigns
    /// (the cluster may need its log to elect anyone).
    pub(crate) leaderless: Duration,
}

/// The decision's memory.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    /// It has been in its configuration (so leaving it is news).
    was_member: bool,
    /// It is out (untagged, or removed), or back and waiting for a leader.
    held: bool,
    /// Since when it is back.
    back_since: Option<Instant>,
}

impl Guard {
    /// Whether elections are to be held now.
    pub(crate) fn decide(&mut self, now: Instant, seen: Seen) -> bool {
        self.was_member |= seen.in_config;
        let Some(tagged) = seen.tagged else {
            // No fresh view: change nothing.
            return self.held;
        };
        if !tagged || (self.was_member && !seen.in_config) {
            self.held = true;
            self.back_since = None;
            return true;
        }
        if self.held {
            let back = *self.back_since.get_or_insert(now);
            let heard = seen.contact.is_some_and(|at| at > back);
            // Silence since its return (or its last word from a leader,
            // if later) longer than a live leader's heartbeats allow.
            let silent_since = seen.contact.map_or(back, |at| at.max(back));
            let leaderless =
                seen.in_config && now.saturating_duration_since(silent_since) >= seen.leaderless;
            if heard || leaderless || now.saturating_duration_since(back) >= REJOIN_GRACE {
                self.held = false;
                self.back_since = None;
            }
        }
        self.held
    }
}

/// Holds or resumes this node's elections as its tag, its configuration
/// and news from leaders change. Ends with the node.
///
/// It wakes on a new view, on a change of leadership or configuration, and
/// every [`EVERY`] for the time since a leader's last contact; not on every
/// entry, which cost each command a wake-up and a copy of the metrics on
/// every node (docs/benchmarks.md, "The per-command CPU regression").
pub(crate) async fn guard_loop<S: StateMachine>(core: Weak<Core<S>>) {
    let (mut views, mut metrics) = match core.upgrade() {
        Some(core) => (core.discovery.state(), core.raft().subscribe_leadership()),
        None => return,
    };
    let mut guard = Guard::default();
    loop {
        {
            let Some(core) = core.upgrade() else { return };
            let raft = core.raft();
            let m = raft.metrics();
            let seen = Seen {
                tagged: core.fresh_view().map(|view| view.self_tagged()),
                in_config: m.voters.contains(&core.id) || m.learners.contains(&core.id),
                contact: raft.last_leader_contact(),
                // Well past a live leader's heartbeats, and past the time
                // its view takes to see this node tagged again (until then
                // the leader refuses to replicate to it).
                leaderless: (core.config.timing.election.1 * 4).max(LEADERLESS_MIN),
            };
            let hold = guard.decide(Instant::now(), seen);
            if hold != raft.elections_held() {
                raft.hold_elections(hold);
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(tagged: bool, in_config: bool, contact: Option<Instant>) -> Seen {
        Seen { tagged: Some(tagged), in_config, contact, leaderless: Duration::from_secs(3) }
    }

    #[test]
    fn a_member_back_in_its_configuration_campaigns_when_no_leader_speaks() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut guard = Guard::default();
        assert!(!guard.decide(at(0), seen(true, true, Some(at(0)))));
        // Its tag flaps; the leader dies meanwhile and nobody else may win
        // (its log is the longest).
        assert!(guard.decide(at(10), seen(false, true, Some(at(5)))));
        assert!(guard.decide(at(20), seen(true, true, Some(at(5)))));
        assert!(guard.decide(at(2_000), seen(true, true, Some(at(5)))));
        // Three seconds of silence since its return: no leader; it campaigns.
        assert!(!guard.decide(at(3_100), seen(true, true, Some(at(5)))));
        // Out of its configuration, silence alone does not release it.
        let mut removed = Guard::default();
        assert!(!removed.decide(at(0), seen(true, true, Some(at(0)))));
        assert!(removed.decide(at(10), seen(true, false, Some(at(0)))));
        assert!(removed.decide(at(5_000), seen(true, false, Some(at(0)))));
    }

    #[test]
    fn an_untagged_member_holds_until_a_leader_is_heard_after_its_return() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut guard = Guard::default();
        assert!(!guard.decide(at(0), seen(true, true, Some(at(0)))));
        // Untagged: held, whatever it hears.
        assert!(guard.decide(at(10), seen(false, true, Some(at(5)))));
        assert!(guard.decide(at(20), seen(false, false, Some(at(15)))));
        // Tagged again, still held: nothing heard since.
        assert!(guard.decide(at(30), seen(true, false, Some(at(15)))));
        // Added back as a learner by a leader that then sends it entries.
        assert!(guard.decide(at(40), seen(true, true, Some(at(30)))));
        assert!(!guard.decide(at(50), seen(true, true, Some(at(45)))));
    }

    #[test]
    fn a_removed_member_holds_and_a_fresh_node_does_not() {
        let t0 = Instant::now();
        let mut fresh = Guard::default();
        // Not yet in any configuration (joining): nothing to hold.
        assert!(!fresh.decide(t0, seen(true, false, None)));
        let mut member = Guard::default();
        assert!(!member.decide(t0, seen(true, true, None)));
        assert!(member.decide(t0, seen(true, false, None)), "removed while tagged");
    }

    #[test]
    fn a_node_nobody_takes_back_campaigns_after_the_grace() {
        let t0 = Instant::now();
        let mut guard = Guard::default();
        // Leaders fall silent only past the grace here.
        let seen = |tagged, in_config| Seen {
            tagged: Some(tagged),
            in_config,
            contact: None,
            leaderless: REJOIN_GRACE * 2,
        };
        guard.decide(t0, seen(true, true));
        assert!(guard.decide(t0, seen(false, true)));
        assert!(guard.decide(t0 + Duration::from_secs(1), seen(true, true)));
        assert!(guard.decide(t0 + REJOIN_GRACE, seen(true, true)));
        assert!(!guard.decide(t0 + Duration::from_secs(1) + REJOIN_GRACE, seen(true, true)));
    }

    #[test]
    fn a_stale_view_changes_nothing() {
        let t0 = Instant::now();
        let mut guard = Guard::default();
        guard.decide(t0, seen(true, true, None));
        assert!(guard.decide(t0, seen(false, true, None)));
        let stale = Seen {
            tagged: None,
            in_config: true,
            contact: Some(t0),
            leaderless: Duration::from_secs(3),
        };
        assert!(guard.decide(t0 + Duration::from_secs(60), stale));
    }
}
