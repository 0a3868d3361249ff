//! Joining an existing cluster: checking the leader a peer names (a
//! tagged, online node of this node's own view, and not an earlier
//! incarnation), storing the cluster's id, then calling the leader's
//! `POST /v1/join`, following "not the leader" answers.

use std::collections::BTreeMap;

use cmd_rpc::{JoinRequest, LeaderHint, RpcError};
use raft_core::{ClusterId, NodeId, NodeInfo};
use tokio::time::Instant;
use ts_discovery::ClusterView;

use super::{Boot, JOIN, JOIN_MARGIN, PeerAnswer};
use crate::core::Core;
use crate::decide::bootstrap::Answer;
use crate::machine::StateMachine;

/// Leader changes a join follows before it gives up for this round.
const MAX_HOPS: usize = 4;

/// The leader `hint` names, reached at the addresses `view` gives its node:
/// a hint from a peer never makes this node dial elsewhere.
fn resolve(view: &ClusterView, hint: &LeaderHint) -> Result<NodeInfo, String> {
    let node = view
        .members
        .values()
        .find(|n| n.id.0 == hint.node.stable_id)
        .ok_or_else(|| format!("leader {:?} is not a tagged peer here", hint.node.stable_id))?;
    Ok(NodeInfo { addrs: node.addrs().collect(), ..hint.node.clone() })
}

/// The leader to join `cluster` through, for a `hint` a peer gave: the
/// hint itself, unless the node it names answered this round as another
/// raft id (the hint names an earlier incarnation: a binder naming a
/// former that lost its state, which never takes that cluster up again).
/// Then that node's own answer decides: the leader it names for the same
/// cluster (its new incarnation may have joined it, and lead it), else
/// none (following the stale hint would bind this node to a dead
/// incarnation again and again).
pub(super) fn current_hint(
    cluster: ClusterId,
    hint: LeaderHint,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
) -> Result<LeaderHint, String> {
    let named = &hint.node.stable_id;
    let Some(now) = ids.get(named).filter(|now| **now != hint.id) else { return Ok(hint) };
    let own = answers.iter().find(|a| a.name == *named).map(|a| &a.answer);
    match own {
        Some(Answer::Member { cluster: c, leader: Some(l) }) if *c == cluster => Ok(l.clone()),
        _ => Err(format!(
            "{named:?} answers as raft id {now}, not as the {} named, and names no leader of \
             that cluster: a stale hint",
            hint.id
        )),
    }
}

/// Stores `cluster` as this node's cluster (under the bootstrap lock: from
/// now on it answers probes as a member; refused if this node is bound to
/// another cluster meanwhile), then asks its leader to add it.
pub(super) async fn join<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    cluster: ClusterId,
    leader: LeaderHint,
    view: &ClusterView,
    deadline: Instant,
) -> Result<(), String> {
    let raft = core.raft();
    // Never store a cluster id on hearsay: the leader a peer names must be
    // a tagged, online node of this node's own view.
    let first = resolve(view, &leader)?;
    if !view.members.values().any(|n| n.id.0 == first.stable_id && n.online) {
        return Err(format!("leader {:?} is offline here", first.stable_id));
    }
    {
        let mut state = boot.lock().await;
        match raft.cluster_id() {
            Some(own) if own != cluster => {
                return Err(format!("this node is bound to cluster {own} meanwhile"));
            }
            // Already its cluster (bound to it, or a join before a
            // restart).
            Some(_) => {}
            // A free node binds itself to the cluster by the node it
            // follows, as a binder is bound by its former, so that it
            // gives the id up as a binder does if that node forgets it or
            // is gone for good before the join happens (a former that
            // died before initializing: otherwise the node would answer
            // as a member that knows no leader for ever and every peer
            // would wait on it). Its former confirms it as its binder.
            None => raft
                .bind(cluster, leader.id, first.clone())
                .await
                .map_err(|err| format!("storing cluster {cluster}: {err}"))?,
        }
        state.promise = None;
        state.forming = None;
    }
    let request = JoinRequest {
        id: raft.id(),
        incarnation: raft.incarnation(),
        node: raft.info().clone(),
        cluster_id: cluster,
    };
    // Every join call, in every round, ends this much before the start
    // deadline (finding 62).
    let margin = JOIN_MARGIN.min(core.config.timing.start_timeout / 2);
    let join_by = deadline.checked_sub(margin).unwrap_or(deadline);
    let mut hint = leader;
    for _ in 0..MAX_HOPS {
        let target = resolve(view, &hint)?;
        let now = Instant::now();
        if now >= join_by {
            return Err(format!(
                "no join starts within {margin:?} of the start deadline (the leader may still \
                 be finishing an earlier one)"
            ));
        }
        let until = (now + JOIN).min(join_by);
        let joined: Result<serde_json::Value, RpcError> = core
            .service
            .client()
            .post(&target, "/v1/join", &request, until, cmd_rpc::Origin::Client)
            .await;
        match joined {
            Ok(_) => return Ok(()),
            Err(RpcError::Remote { body, .. }) if body.code == cmd_rpc::ErrorCode::NotLeader => {
                match body.leader {
                    Some(next) if next.id != hint.id => hint = next,
                    _ => return Err(format!("{} is not the leader and knows no other", target)),
                }
            }
            Err(err) => return Err(format!("{target}: {err}")),
        }
    }
    Err("the leader kept changing".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::bootstrap::Peer;

    #[test]
    fn a_hint_naming_an_earlier_incarnation_is_followed_only_through_its_new_one() {
        let (c, other) = (ClusterId(1), ClusterId(2));
        let hint = |id, name: &str| LeaderHint {
            id,
            node: NodeInfo {
                stable_id: name.to_owned(),
                addrs: Vec::new(),
                raft_port: 0,
                command_port: 0,
            },
        };
        let answer = |answer| vec![Peer { name: "a".to_owned(), answer }];
        let ids = BTreeMap::from([("a".to_owned(), 7)]);
        // The named node answered as the raft id named: the hint holds.
        assert_eq!(current_hint(c, hint(7, "a"), &[], &ids), Ok(hint(7, "a")));
        // Not heard this round: nothing to say it is stale.
        assert_eq!(current_hint(c, hint(5, "b"), &[], &ids), Ok(hint(5, "b")));
        // Another incarnation: its own answer decides.
        let led = answer(Answer::Member { cluster: c, leader: Some(hint(7, "a")) });
        assert_eq!(current_hint(c, hint(5, "a"), &led, &ids), Ok(hint(7, "a")));
        let elsewhere = answer(Answer::Member { cluster: c, leader: Some(hint(9, "d")) });
        assert_eq!(current_hint(c, hint(5, "a"), &elsewhere, &ids), Ok(hint(9, "d")));
        for stale in [
            answer(Answer::Fresh { promised_to: None }),
            answer(Answer::Member { cluster: c, leader: None }),
            answer(Answer::Member { cluster: other, leader: Some(hint(7, "a")) }),
        ] {
            let refused = current_hint(c, hint(5, "a"), &stale, &ids);
            assert!(refused.as_ref().is_err_and(|e| e.contains("stale hint")), "{refused:?}");
        }
    }
}
