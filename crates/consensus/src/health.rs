//! Health checks for supervisors, served by the monitor (and the
//! localhost monitor):
//!
//! - `/healthz`: the process serves. 200 `{"status":"ok"}`; 503 once the
//!   node stopped on a fatal error, since such a node serves nothing until
//!   it is restarted (a liveness probe should restart it).
//! - `/readyz`: the node is useful to talk to. 200 when it is a member of
//!   a cluster's configuration, knows a leader, has applied to within
//!   [`Config::ready_max_lag`](crate::Config::ready_max_lag) entries of
//!   the cluster's committed index, and is not fatal; a leader must also
//!   have heard from a quorum within the upper election timeout (a leader
//!   cut off from its followers keeps its role in openraft 0.9). 503
//!   otherwise, with every reason.
//!
//! A follower's own committed index is no measure: openraft clamps it to
//! the entries the follower has accepted, so a follower far behind looks
//! caught up. A follower compares with the **leader's** commit index
//! instead, learned through a read-index round (the monitor's refresher
//! asks about once a second, each round bounded by [`LEADER_ROUND`]); if
//! it has not learned one within [`LEADER_COMMIT_FRESH`], it is not
//! ready.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::time::Instant;

use crate::core::Core;
use crate::machine::StateMachine;
use crate::report::{Role, metrics_of};

/// What readiness is decided on.
#[derive(Clone, Debug)]
pub(crate) struct Inputs {
    pub(crate) fatal: Option<String>,
    pub(crate) has_cluster: bool,
    /// In the configuration (voter or learner).
    pub(crate) member: bool,
    pub(crate) role: Role,
    pub(crate) leader: Option<u64>,
    pub(crate) applied: Option<u64>,
    pub(crate) committed: Option<u64>,
    /// On a follower: the leader's commit index, if learned recently.
    pub(crate) leader_committed: Option<u64>,
    /// On the leader: time since a quorum last acknowledged it.
    pub(crate) millis_since_quorum_ack: Option<u64>,
    pub(crate) max_lag: u64,
    pub(crate) max_quorum_silence_ms: u64,
}

/// The answer of `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Readiness {
    /// Whether the node is ready.
    pub(crate) ready: bool,
    /// Why not, one sentence per failed check.
    pub(crate) reasons: Vec<String>,
    pub(crate) role: Role,
    pub(crate) leader: Option<u64>,
    pub(crate) applied_index: Option<u64>,
    pub(crate) committed_index: Option<u64>,
    /// On a follower: the leader's commit index it compared with.
    pub(crate) leader_committed_index: Option<u64>,
}

pub(crate) fn readiness(i: &Inputs) -> Readiness {
    let mut reasons = Vec::new();
    if let Some(why) = &i.fatal {
        reasons.push(format!("stopped on a fatal error: {why}"));
    }
    if !i.has_cluster {
        reasons.push("not in a cluster yet".to_owned());
    } else if !i.member {
        reasons.push("not in the cluster's configuration".to_owned());
    }
    match i.leader {
        None => reasons.push("no leader known".to_owned()),
        Some(_) if i.role == Role::Leader => match i.millis_since_quorum_ack {
            Some(ms) if ms <= i.max_quorum_silence_ms => {}
            Some(ms) => reasons.push(format!(
                "leads, but no quorum has acknowledged it for {ms} ms (more than {} ms)",
                i.max_quorum_silence_ms
            )),
            None => reasons.push("leads, but no quorum has acknowledged it yet".to_owned()),
        },
        Some(_) => {}
    }
    // A follower measures against the leader's commit index; its own is
    // clamped to what it has accepted.
    let committed = match i.role {
        Role::Leader => i.committed,
        _ => match i.leader_committed {
            Some(leader) => Some(leader.max(i.committed.unwrap_or(0))),
            None => {
                if i.leader.is_some() {
                    reasons.push(
                        "the leader's commit index is not known (no read-index answer lately)"
                            .to_owned(),
                    );
                }
                i.committed
            }
        },
    };
    match (i.applied, committed) {
        (_, None) => reasons.push("the committed index is not known yet".to_owned()),
        (applied, Some(committed)) => {
            let lag = committed.saturating_sub(applied.unwrap_or(0));
            if lag > i.max_lag {
                reasons.push(format!(
                    "applied index {} is {lag} entries behind the committed index {committed} \
                     (at most {} allowed)",
                    applied.unwrap_or(0),
                    i.max_lag
                ));
            }
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        role: i.role,
        leader: i.leader,
        applied_index: i.applied,
        committed_index: i.committed,
        leader_committed_index: i.leader_committed,
    }
}

/// What the monitor's refresher learns, for `/status`, `/metrics` and
/// readiness: part of the monitor's state (crate::monitor), defined here,
/// below it, because readiness reads it.
pub(crate) struct Learned {
    /// The committed index, refreshed by the monitor (u64::MAX: unknown).
    committed: AtomicU64,
    /// On a follower: the leader's commit index, learned through a
    /// read-index round by the monitor's refresher, and when.
    leader_committed: Mutex<Option<(u64, Instant)>>,
}

impl Default for Learned {
    fn default() -> Self {
        Learned { committed: AtomicU64::new(u64::MAX), leader_committed: Mutex::new(None) }
    }
}

impl Learned {
    /// The committed index last learned, if any.
    pub(crate) fn committed(&self) -> Option<u64> {
        let committed = self.committed.load(Ordering::Relaxed);
        (committed != u64::MAX).then_some(committed)
    }

    /// Learns the committed index.
    pub(crate) fn set_committed(&self, committed: u64) {
        self.committed.store(committed, Ordering::Relaxed);
    }

    /// On a follower: the leader's commit index last learned, and when.
    pub(crate) fn leader_committed(&self) -> Option<(u64, Instant)> {
        *self.leader_committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns the leader's commit index, as of `at`.
    pub(crate) fn set_leader_committed(&self, index: u64, at: Instant) {
        *self.leader_committed.lock().unwrap_or_else(|p| p.into_inner()) = Some((index, at));
    }
}

/// How long a leader's commit index learned by a follower counts.
pub(crate) const LEADER_COMMIT_FRESH: std::time::Duration = std::time::Duration::from_secs(3);
/// How often a follower asks, at most.
const LEADER_COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Time one read-index round may take.
pub(crate) const LEADER_ROUND: std::time::Duration = std::time::Duration::from_secs(1);

/// On a follower that knows a leader: learns the leader's commit index
/// through a read-index round (bounded by [`LEADER_ROUND`]), unless it
/// learned one less than [`LEADER_COMMIT_EVERY`] ago.
pub(crate) async fn refresh_leader_commit<S: StateMachine>(core: &Core<S>, learned: &Learned) {
    let raft = core.raft();
    let m = raft.metrics();
    let Some((id, leader)) = m
        .leader
        .filter(|id| *id != core.id)
        .and_then(|id| m.nodes.get(&id).map(|node| (id, node.clone())))
    else {
        return;
    };
    let last = learned.leader_committed();
    if last.is_some_and(|(_, at)| at.elapsed() < LEADER_COMMIT_EVERY) {
        return;
    }
    let to = cmd_rpc::Addressee { node: id, cluster: raft.cluster_id() };
    let deadline = Instant::now() + LEADER_ROUND;
    let body = serde_json::json!({});
    let answer: Result<cmd_rpc::ReadIndexResponse, _> = core
        .service
        .client()
        .post_to(to, &leader, "/v1/read-index", &body, deadline, cmd_rpc::Origin::Forwarded)
        .await;
    match answer {
        Ok(answer) => {
            learned.set_leader_committed(answer.index, Instant::now());
        }
        Err(err) => tracing::debug!(error = %err, "no read index from the leader for readiness"),
    }
}

/// This node's readiness now.
pub(crate) fn of<S: StateMachine>(core: &Core<S>, learned: &Learned) -> Readiness {
    let raft = core.raft();
    let m = raft.metrics();
    let metrics = metrics_of(&m);
    readiness(&Inputs {
        fatal: metrics.fatal.clone(),
        has_cluster: raft.cluster_id().is_some(),
        member: m.nodes.contains_key(&core.id),
        role: metrics.role,
        leader: metrics.leader,
        applied: metrics.applied_index,
        committed: learned.committed(),
        leader_committed: learned
            .leader_committed()
            .filter(|(_, at)| at.elapsed() < LEADER_COMMIT_FRESH)
            .map(|(index, _)| index),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        max_lag: core.config.ready_max_lag,
        max_quorum_silence_ms: core.config.timing.election.1.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_follower() -> Inputs {
        Inputs {
            fatal: None,
            has_cluster: true,
            member: true,
            role: Role::Follower,
            leader: Some(1),
            applied: Some(100),
            committed: Some(100),
            leader_committed: Some(100),
            millis_since_quorum_ack: None,
            max_lag: 10,
            max_quorum_silence_ms: 3000,
        }
    }

    #[test]
    fn each_check_fails_on_its_own_with_a_reason() {
        assert_eq!(readiness(&healthy_follower()).reasons, Vec::<String>::new());
        let leader =
            Inputs { role: Role::Leader, millis_since_quorum_ack: Some(120), ..healthy_follower() };
        assert!(readiness(&leader).ready);
        type Case = (&'static str, Inputs, &'static str);
        let cases: Vec<Case> = vec![
            (
                "fatal",
                Inputs { fatal: Some("disk".into()), ..healthy_follower() },
                "fatal error: disk",
            ),
            ("no cluster", Inputs { has_cluster: false, ..healthy_follower() }, "not in a cluster"),
            ("removed", Inputs { member: false, ..healthy_follower() }, "configuration"),
            ("no leader", Inputs { leader: None, ..healthy_follower() }, "no leader"),
            ("lagging", Inputs { applied: Some(89), ..healthy_follower() }, "11 entries behind"),
            (
                "nothing applied",
                Inputs {
                    applied: None,
                    committed: Some(11),
                    leader_committed: Some(11),
                    ..healthy_follower()
                },
                "11 entries behind",
            ),
            (
                "committed unknown",
                Inputs { committed: None, leader_committed: None, ..healthy_follower() },
                "committed index is not known",
            ),
            (
                "cut-off leader",
                Inputs { millis_since_quorum_ack: Some(5000), ..leader.clone() },
                "for 5000 ms",
            ),
            (
                "unacknowledged leader",
                Inputs { millis_since_quorum_ack: None, ..leader.clone() },
                "acknowledged it yet",
            ),
        ];
        for (what, inputs, says) in cases {
            let r = readiness(&inputs);
            assert!(!r.ready, "{what}");
            assert!(
                r.reasons.iter().any(|reason| reason.contains(says)),
                "{what}: {:?}",
                r.reasons
            );
        }
        // Within the lag bound.
        assert!(readiness(&Inputs { applied: Some(90), ..healthy_follower() }).ready);
    }

    #[test]
    fn a_follower_measures_against_the_leaders_commit_index() {
        // Its own committed index is clamped to what it accepted: it looks
        // caught up, the leader's says it is far behind.
        let behind = Inputs {
            applied: Some(100),
            committed: Some(100),
            leader_committed: Some(5000),
            ..healthy_follower()
        };
        let r = readiness(&behind);
        assert!(!r.ready);
        assert!(r.reasons.iter().any(|x| x.contains("4900 entries behind")), "{:?}", r.reasons);
        let unknown = Inputs { leader_committed: None, ..healthy_follower() };
        let r = readiness(&unknown);
        assert!(!r.ready);
        assert!(r.reasons.iter().any(|x| x.contains("leader's commit index")), "{:?}", r.reasons);
        // A leader uses its own.
        let leader = Inputs {
            role: Role::Leader,
            leader_committed: None,
            millis_since_quorum_ack: Some(10),
            ..healthy_follower()
        };
        assert!(readiness(&leader).ready);
    }
}
