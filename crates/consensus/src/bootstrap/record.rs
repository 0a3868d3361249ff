//! Updating this node's own address record at a resume: if the
//! membership records it at other ports or addresses than it runs on now,
//! it has the leader replace the record (through the join path, or its
//! own command service if it leads) before the start returns.

use std::time::Duration;

use raft_core::{ClusterId, NodeId, NodeInfo, NodeMetrics};
use tokio::time::Instant;

use super::answer::leader_hint;
use super::join::join;
use super::probe::probe_all;
use super::{Boot, JOIN, MAX_BACKOFF, jitter};
use crate::core::Core;
use crate::decide::bootstrap::Answer;
use crate::error::Error;
use crate::machine::StateMachine;

/// After a restart with raft state: if the membership records this node
/// elsewhere than it now runs (other ports or addresses than at its first
/// join), asks the leader to replace its record, through the join path
/// (the leader replaces only the caller's own record), and returns once
/// the leader committed the new record. Without it the leader would go on dialing
/// the old raft port for good. The start fails at `deadline` if no leader
/// takes the new record (none elected, or none reachable: every member
/// changed its ports at once), naming both records.
pub(super) async fn update_record<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    let raft = core.raft();
    let (id, mine) = (raft.id(), raft.info().clone());
    let Some(cluster) = raft.cluster_id() else { return Ok(()) };
    let mut backoff = Duration::from_millis(100);
    loop {
        let metrics = raft.metrics();
        let Some(recorded) = stale_record(&metrics, id, &mine) else { return Ok(()) };
        tracing::info!(id, %recorded, configured = %mine, "asking the leader to update this member's record");
        let why = match ask_to_update(core, boot, cluster, &metrics, deadline).await {
            // The leader committed the new record: it dials this node where
            // it listens now. Not waiting for the record to reach this
            // node's own log: a member far behind catches up (a snapshot,
            // perhaps) after its start, as any member resuming does; a
            // start that waited for it could run out and be restarted
            // before the catch-up ends, again and again.
            Ok(()) => {
                tracing::info!(id, record = %mine, "the leader took this member's new record");
                return Ok(());
            }
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            // The leader may have committed the record after the call gave
            // up (finding 62); only a record this node applied counts (one
            // still in its log may be truncated).
            let now = raft.metrics();
            if now.membership_applied() && stale_record(&now, id, &mine).is_none() {
                return Ok(());
            }
            return Err(Error::JoinFailed {
                waited: started.elapsed(),
                reason: format!(
                    "the membership records this node with raft port {} and command port {} \
                     (addresses {:?}), but it is configured with raft port {} and command port \
                     {} (addresses {:?}), and no leader updated the record: {why}. A leader \
                     must run for the update (change one node's ports at a time), or start this \
                     node with the recorded ports",
                    recorded.raft_port,
                    recorded.command_port,
                    recorded.addrs,
                    mine.raft_port,
                    mine.command_port,
                    mine.addrs,
                ),
            });
        }
        tracing::debug!(%why, "member record not updated yet");
        let pause = jitter(backoff).min(deadline.saturating_duration_since(Instant::now()));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }
}

/// This node's record in the membership `metrics` shows, if it differs
/// from `mine`; `None` if it is `mine`, or if this node is not a member
/// (removed while away: the leader adds it back with the record its probe
/// answer carries, so there is nothing to update).
fn stale_record(metrics: &NodeMetrics, id: NodeId, mine: &NodeInfo) -> Option<NodeInfo> {
    metrics.nodes.get(&id).filter(|recorded| *recorded != mine).cloned()
}

/// One attempt to have this node's record replaced by the leader: if this
/// node leads, by its own command service (serialized with the other
/// membership changes); else a join with its record now, sent to the leader
/// it knows or, if it knows none (the leader cannot reach it at the old
/// record), the one a peer of its cluster names.
async fn ask_to_update<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    cluster: ClusterId,
    metrics: &NodeMetrics,
    deadline: Instant,
) -> Result<(), String> {
    let raft = core.raft();
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Through the service, under its membership lock: beside it, the
    // update could land in the middle of a join, a removal or a
    // replacement the service is running (finding 58).
    if metrics.leader == Some(raft.id()) {
        let until = Instant::now() + remaining.min(JOIN);
        return core.service.update_own_record(until).await.map_err(|err| err.to_string());
    }
    let view = core.fresh_view().ok_or("the tailnet view is missing or out of date")?;
    let hint = match leader_hint(metrics).filter(|h| h.id != raft.id()) {
        Some(hint) => hint,
        None => {
            let (answers, _) = probe_all(core, &view, &[], false, deadline).await;
            answers
                .into_iter()
                .find_map(|p| match p.answer {
                    Answer::Member { cluster: c, leader: Some(l) }
                        if c == cluster && l.id != raft.id() =>
                    {
                        Some(l)
                    }
                    _ => None,
                })
                .ok_or("no peer names a leader of this node's cluster")?
        }
    };
    join(core, boot, cluster, hint, &view, deadline).await
}
