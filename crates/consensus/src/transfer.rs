//! Handing leadership over before maintenance
//! ([`Consensus::transfer_leadership`](crate::Consensus::transfer_leadership),
//! `tsconsensus transfer-leader`).
//!
//! openraft 0.9.25 has no leadership transfer (0.10 adds one). This is the
//! closest safe equivalent built from what 0.9 offers, run on the leader:
//!
//! 1. **Hold.** The leader stops its heartbeats and takes nothing new into
//!    its log: proposals and read-index rounds are answered "not the
//!    leader" inside the node, and the command service retries them (within
//!    each call's deadline) until the new leader is known, then forwards
//!    them there. Membership changes on this node (the reconciler's, joins,
//!    removals) wait for the hold to end, within their own deadlines, and
//!    the hold does not begin while one runs (`Busy`): each would append
//!    entries and could change the voters under the transfer. Nothing is
//!    refused to a caller for this.
//! 2. **Catch up.** It waits until the target has every entry of its log:
//!    at most two upper election timeouts, and gives up sooner if the
//!    target's matched index does not move for one.
//! 3. **Let leases run out.** A voter refuses another candidate while its
//!    leader lease runs (the upper election timeout since it last heard
//!    from the leader), so the leader waits one lease plus one heartbeat
//!    after the last entry reached the followers, and until its own lease
//!    since its election has run out too.
//! 4. **Campaign.** It asks the target (`POST /v1/campaign`) to start an
//!    election now. The target's log is as long as anyone's, so the old
//!    leader and every other voter whose lease ran out grant it their
//!    vote; the old leader steps down when it sees the higher term.
//! 5. **Release.** Whatever happened, the hold ends (heartbeats resume):
//!    when the new leader is known, at the deadline, on an error, or if the
//!    call is dropped.
//!
//! Safety is raft's: votes and the log check decide who leads, so nothing
//! committed is lost and no term has two leaders. What is not guaranteed:
//! that the target wins (another voter whose election timer fires first
//! can; its timer needs at least the lower election timeout after its
//! lease ran out, which is the target's head start), nor that the cluster
//! is never without a leader (for about a lease, commands wait).

use std::time::Duration;

use cmd_rpc::CampaignRequest;
use raft_core::{NodeInfo, RaftNode};
use tokio::time::Instant;

use crate::core::Core;
use crate::error::Error;
use crate::machine::{Adapter, StateMachine};
use crate::view::tagged_online;

/// Time the target has to answer the campaign request.
const CAMPAIGN_CALL: Duration = Duration::from_secs(5);

/// What a transfer did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TransferReport {
    /// The leader it started on (this node).
    pub(crate) from: u64,
    /// The voter chosen.
    pub(crate) target: u64,
    /// Who leads now.
    pub(crate) leader: u64,
    /// Whether the target won.
    pub(crate) target_won: bool,
    /// How long it took, in milliseconds.
    pub(crate) took_ms: u64,
}

/// Why a transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// Only the leader hands its leadership over.
    #[error("this node is not the leader{}", match leader {
        Some((id, node)) => format!("; the leader is {id} ({})", node.stable_id),
        None => "; no leader is known".to_owned(),
    })]
    NotLeader { leader: Option<(u64, NodeInfo)> },
    /// The request cannot be met (no such voter, no other voter).
    #[error("{0}")]
    Invalid(String),
    /// Another transfer, or a membership change, is under way.
    #[error("another leadership transfer or a membership change is under way on this node")]
    Busy,
    /// It was tried and did not complete; the hold has ended.
    #[error("{0}")]
    Failed(String),
}

impl From<TransferError> for Error {
    fn from(err: TransferError) -> Error {
        match err {
            TransferError::Failed(why) => {
                Error::Timeout(format!("leadership transfer not done: {why}"))
            }
            other => Error::invalid_from(other.to_string(), other),
        }
    }
}

/// Ends the hold whatever happens, the caller dropping the call included.
struct Hold<'a, S: StateMachine>(&'a RaftNode<Adapter<S>>);

impl<'a, S: StateMachine> Hold<'a, S> {
    /// The hold, unless another transfer has it or a membership change
    /// runs (checked and taken in one atomic step).
    fn try_start(raft: &'a RaftNode<Adapter<S>>) -> Option<Hold<'a, S>> {
        raft.try_hold_for_transfer().then_some(Hold(raft))
    }
}

impl<S: StateMachine> Drop for Hold<'_, S> {
    fn drop(&mut self) {
        self.0.hold_for_transfer(false);
    }
}

/// How long a transfer waits for a membership change on this node to end
/// (and its entry to be applied) before it answers that one is under way.
const SETTLE: Duration = Duration::from_secs(5);

/// The hold, once no other transfer holds it and no membership change is
/// running or waiting in the log (raft-core refuses the hold until then):
/// waits for that up to [`SETTLE`], within `deadline`.
async fn start_hold<S: StateMachine>(
    raft: &RaftNode<Adapter<S>>,
    deadline: Instant,
) -> Result<Hold<'_, S>, TransferError> {
    let give_up = deadline.min(Instant::now() + SETTLE);
    loop {
        if let Some(hold) = Hold::<S>::try_start(raft) {
            return Ok(hold);
        }
        if Instant::now() >= give_up {
            return Err(TransferError::Busy);
        }
        // Polled: nothing signals the end of another transfer's hold or
        // a change's entry being applied in one place.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The voter to hand over to when none is named ([`choose`], with this
/// node's view telling who is tagged and online).
fn pick<S: StateMachine>(core: &Core<S>, m: &raft_core::NodeMetrics) -> Option<u64> {
    let view = core.view();
    let online = |node: &NodeInfo| view.as_ref().is_some_and(|v| tagged_online(v, &node.stable_id));
    choose(m, core.id, online)
}

/// Whether leadership may go to `id`: a voter of the configuration's
/// final half. In a joint configuration a voter only the old half holds
/// is removed by the step that ends it, and would cost one more election.
fn may_lead(m: &raft_core::NodeMetrics, id: u64) -> bool {
    m.final_voters.contains(&id)
}

/// The voter other than `me` to hand over to, among those that
/// [`may_lead`]: one whose record is `online` if any, the furthest
/// replicated, the lowest id.
fn choose(m: &raft_core::NodeMetrics, me: u64, online: impl Fn(&NodeInfo) -> bool) -> Option<u64> {
    let mut best: Option<(bool, u64, std::cmp::Reverse<u64>)> = None;
    for id in m.voters.iter().filter(|id| **id != me && may_lead(m, **id)) {
        let online = m.nodes.get(id).is_some_and(&online);
        let matched = m.replication.as_ref().and_then(|r| r.get(id).copied().flatten());
        let key = (online, matched.unwrap_or(0), std::cmp::Reverse(*id));
        if best.is_none_or(|b| key > b) {
            best = Some(key);
        }
    }
    best.map(|(_, _, std::cmp::Reverse(id))| id)
}

/// Waits (the hold on) until `target` has every entry of this leader's
/// log: at most two upper election timeouts, and no longer than one upper
/// election timeout without its matched index moving, so that a target
/// that is down or far behind does not keep the cluster without commits
/// until the call's deadline.
async fn catch_up<S: StateMachine>(
    core: &Core<S>,
    target: u64,
    deadline: Instant,
) -> Result<raft_core::NodeMetrics, TransferError> {
    let raft = core.raft();
    let timing = &core.config.timing;
    let until = deadline.min(Instant::now() + timing.election.1 * 2);
    let stall = timing.election.1;
    let matched_of = |m: &raft_core::NodeMetrics| {
        m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten())
    };
    let mut last = (matched_of(&raft.metrics()), Instant::now());
    loop {
        let step = timing.heartbeat.min(until.saturating_duration_since(Instant::now()));
        let done = |m: &raft_core::NodeMetrics| {
            m.role != raft_core::Role::Leader
                || matched_of(m).is_some_and(|matched| Some(matched) >= m.last_log_index)
        };
        let m = match raft.wait_for(step, done).await {
            Ok(m) => return Ok(m),
            Err(m) => m,
        };
        let now = Instant::now();
        let matched = matched_of(&m);
        if matched > last.0 {
            last = (matched, now);
        }
        let why = if now >= until {
            Some(format!("within {:?}", timing.election.1 * 2))
        } else if now.duration_since(last.1) >= stall {
            Some(format!("its matched index stayed at {:?} for {stall:?}", last.0))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(TransferError::Failed(format!(
                "node {target} did not catch up with this leader's log (index {:?}): {why}",
                m.last_log_index
            )));
        }
    }
}

/// Hands leadership from this node (the leader) to `to`, or to the voter
/// [`pick`] chooses, by `deadline`.
pub(crate) async fn transfer<S: StateMachine>(
    core: &Core<S>,
    to: Option<u64>,
    deadline: Instant,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let raft = core.raft();
    let me = core.id;
    let m = raft.metrics();
    if m.role != raft_core::Role::Leader {
        return Err(TransferError::NotLeader {
            leader: m.leader.and_then(|id| m.nodes.get(&id).map(|n| (id, n.clone()))),
        });
    }
    let target = match to {
        Some(id) if id == me => {
            return Ok(TransferReport {
                from: me,
                target: me,
                leader: me,
                target_won: true,
                took_ms: 0,
            });
        }
        Some(id) if may_lead(&m, id) => id,
        Some(id) if m.voters.contains(&id) => {
            return Err(TransferError::Invalid(format!(
                "voter {id} is only in the old half of a joint configuration, which the next \
                 membership change removes"
            )));
        }
        Some(id) if m.nodes.contains_key(&id) => {
            return Err(TransferError::Invalid(format!(
                "member {id} is a learner; only a voter can lead"
            )));
        }
        Some(id) => return Err(TransferError::Invalid(format!("{id} is not a member"))),
        None => pick(core, &m).ok_or_else(|| {
            TransferError::Invalid("there is no other voter to hand leadership to".to_owned())
        })?,
    };
    if !m.nodes.contains_key(&target) {
        return Err(TransferError::Invalid(format!("{target} is not a member")));
    }
    let hold = start_hold(raft, deadline).await?;
    // The wait for the hold let running membership changes end: one may
    // have demoted or removed the target, or moved its record.
    let m = raft.metrics();
    let Some(node) = m.nodes.get(&target).filter(|_| may_lead(&m, target)).cloned() else {
        return Err(TransferError::Invalid(format!(
            "{target} stopped being a voter while the transfer waited for a membership change"
        )));
    };
    tracing::info!(from = me, target, "handing leadership over");
    let remaining = || deadline.saturating_duration_since(Instant::now());

    // The target has every entry of the log (new ones are held out).
    let caught_up = catch_up(core, target, deadline).await?;
    if caught_up.role != raft_core::Role::Leader {
        return Err(TransferError::Failed(
            "this node stopped leading while the target caught up".to_owned(),
        ));
    }
    // Every voter's lease, and this leader's own, has run out.
    let quiet = Instant::now();
    let lease = raft.leader_lease();
    let own = raft.own_lease_remaining().await;
    let until = (quiet + lease + core.config.timing.heartbeat).max(Instant::now() + own);
    if until >= deadline {
        return Err(TransferError::Failed(format!(
            "not enough time left: the voters' leader leases ({lease:?}) run out after the deadline"
        )));
    }
    tokio::time::sleep_until(until).await;

    let request = CampaignRequest {
        term: caught_up.term,
        last_log_index: caught_up.last_log_index.unwrap_or(0),
    };
    let call_deadline = deadline.min(Instant::now() + CAMPAIGN_CALL);
    let to = cmd_rpc::Addressee { node: target, cluster: raft.cluster_id() };
    let answer: Result<serde_json::Value, _> = core
        .service
        .client()
        .post_to(to, &node, "/v1/campaign", &request, call_deadline, cmd_rpc::Origin::Client)
        .await;
    if let Err(err) = answer {
        return Err(TransferError::Failed(format!("node {target} did not campaign: {err}")));
    }
    let after = raft
        .wait_for_leadership(remaining(), |m| m.leader.is_some_and(|leader| leader != me))
        .await
        .map_err(|m| {
            TransferError::Failed(format!(
                "no other node took over by the deadline; the leader is {:?}",
                m.leader
            ))
        })?;
    drop(hold);
    let leader = after.leader.unwrap_or(target);
    let report = TransferReport {
        from: me,
        target,
        leader,
        target_won: leader == target,
        took_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(?report, "leadership handed over");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use raft_core::{NodeInfo, NodeMetrics, Role};

    use super::{choose, may_lead};

    const ME: u64 = 1;

    fn info(id: u64) -> NodeInfo {
        NodeInfo {
            stable_id: format!("n{id}"),
            addrs: vec![format!("100.64.0.{id}").parse().unwrap()],
            raft_port: 6270,
            command_port: 6271,
        }
    }

    /// The leader's metrics over the configuration `halves` (one: a single
    /// configuration; two: a joint one, old half first), with each other
    /// voter's matched index.
    fn leader(halves: &[&[u64]], matched: &[(u64, u64)]) -> NodeMetrics {
        let voters: BTreeSet<u64> = halves.iter().flat_map(|h| h.iter().copied()).collect();
        NodeMetrics {
            id: ME,
            role: Role::Leader,
            term: 2,
            leader: Some(ME),
            last_log_index: Some(10),
            last_applied: Some(10),
            snapshot: None,
            purged: None,
            nodes: voters.iter().map(|id| (*id, info(*id))).collect(),
            final_voters: halves.last().map(|h| h.iter().copied().collect()).unwrap_or_default(),
            voters,
            learners: BTreeSet::new(),
            membership_index: Some(8),
            replication: Some(matched.iter().map(|(id, m)| (*id, Some(*m))).collect()),
            millis_since_quorum_ack: Some(0),
            fatal: None,
        }
    }

    /// The transfer's choice when no target is named (docs/reliability.md
    /// finding 60 f): tagged and online first, then the furthest replicated,
    /// then the lowest id; and in a joint configuration never a voter only
    /// the old half holds, which the step that ends it removes (one more
    /// election). `offline` lists the nodes the view shows offline.
    #[test]
    fn the_transfer_target_is_a_voter_of_the_final_half() {
        type Case<'a> = (&'a str, &'a [&'a [u64]], &'a [(u64, u64)], &'a [u64], Option<u64>);
        let cases: &[Case<'_>] = &[
            ("furthest replicated", &[&[1, 2, 3]], &[(2, 5), (3, 7)], &[], Some(3)),
            ("online before replicated", &[&[1, 2, 3]], &[(2, 5), (3, 7)], &[3], Some(2)),
            ("lowest id on a tie", &[&[1, 2, 3]], &[(2, 7), (3, 7)], &[], Some(2)),
            ("no other voter", &[&[1]], &[], &[], None),
            (
                "joint: the old half's best-matched node is not chosen",
                &[&[1, 2, 3], &[1, 2, 4]],
                &[(2, 5), (3, 10), (4, 6)],
                &[],
                Some(4),
            ),
            (
                "joint: not the old half's online node over an offline new one",
                &[&[1, 3], &[1, 4]],
                &[(3, 10), (4, 6)],
                &[4],
                Some(4),
            ),
            ("joint: the old half's other node only", &[&[1, 2], &[1]], &[(2, 10)], &[], None),
        ];
        for (name, halves, matched, offline, want) in cases {
            let m = leader(halves, matched);
            let online = |node: &NodeInfo| !offline.iter().any(|id| info(*id) == *node);
            assert_eq!(choose(&m, ME, online), *want, "{name}");
        }
    }

    /// A named target, and the target read again once the hold is taken,
    /// must be a voter of the final half too.
    #[test]
    fn only_a_voter_of_the_final_half_may_lead() {
        let joint = leader(&[&[1, 2, 3], &[1, 2, 4]], &[]);
        assert!(may_lead(&joint, 2), "in both halves");
        assert!(may_lead(&joint, 4), "in the new half");
        assert!(!may_lead(&joint, 3), "only in the old half");
        assert!(!may_lead(&joint, 5), "not a member");
        let single = leader(&[&[1, 2, 3]], &[]);
        assert!(may_lead(&single, 3));
    }
}
