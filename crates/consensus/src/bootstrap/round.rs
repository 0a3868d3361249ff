//! One round of a start: what this node is committed to ([`Owned`], a
//! snapshot under the bootstrap lock), the decision on the peers' answers
//! ([`crate::decide::bootstrap::decide`]), and acting on it: joining,
//! forming, the confirm and seal rounds, initializing, or waiting.

use std::collections::BTreeMap;

use cmd_rpc::LeaderHint;
use raft_core::{ClusterId, NodeId};
use tokio::time::Instant;
use ts_discovery::ClusterView;

use super::form::{confirm_round, initialize, start_forming};
use super::join::{current_hint, join};
use super::{Boot, BootState, PeerAnswer};
use crate::config::BootstrapOptions;
use crate::core::Core;
use crate::decide::bootstrap::{Commitment, Decision, Situation, decide};
use crate::error::Error;
use crate::machine::StateMachine;
use crate::view::tagged;

/// What this node is committed to, owned (a snapshot of [`BootState`] and
/// of the raft node's stored cluster id and former).
#[derive(Clone, Debug)]
pub(super) enum Owned {
    Free { holding: Option<String> },
    Bound { cluster: ClusterId, former: Option<String> },
    Forming { cluster: ClusterId, confirmed: Vec<String>, sealed: Vec<String> },
}

impl Owned {
    pub(super) fn of<S: StateMachine>(core: &Core<S>, state: &BootState) -> Owned {
        let raft = core.raft();
        if let Some(forming) = &state.forming {
            return Owned::Forming {
                cluster: forming.cluster,
                confirmed: forming.confirmed.keys().cloned().collect(),
                sealed: forming.sealed.keys().cloned().collect(),
            };
        }
        match raft.cluster_id() {
            Some(cluster) => {
                Owned::Bound { cluster, former: raft.former().map(|(_, node)| node.stable_id) }
            }
            None => Owned::Free { holding: state.promise.clone() },
        }
    }

    pub(super) fn commitment<'a>(
        &'a self,
        view: &ClusterView,
    ) -> Commitment<'a, String, ClusterId> {
        match self {
            Owned::Free { holding } => {
                Commitment::Free { holding: holding.as_ref().map(|h| (h, tagged(view, h))) }
            }
            Owned::Bound { cluster, former } => {
                Commitment::Bound { cluster, former: former.as_ref() }
            }
            Owned::Forming { cluster, confirmed, sealed } => {
                Commitment::Forming { cluster, confirmed, sealed }
            }
        }
    }
}

/// What a round ended with.
pub(super) enum Round {
    /// This node has raft state now (it joined, or initialized a cluster).
    Done,
    /// Not yet, for this reason.
    Again(String),
}

/// Decides on this round's answers and acts: forming (or resuming) goes on
/// to the confirm round at once, and a confirm round that binds every peer
/// to initializing.
pub(super) async fn round<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    options: &BootstrapOptions,
    view: &ClusterView,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
    deadline: Instant,
) -> Result<Round, Error> {
    let me = core.raft().info().stable_id.clone();
    // Form, resume, one confirm round, one seal round, initialize: at most
    // five steps.
    let mut why = String::new();
    for _ in 0..5 {
        let decision = {
            let state = boot.lock().await;
            let owned = Owned::of(core, &state);
            let situation = situation(&me, options, answers, owned.commitment(view));
            decide(&situation)
        };
        match decision {
            Decision::Join { cluster, leader, via } => {
                let leader = match current_hint(cluster, leader, answers, ids) {
                    Ok(leader) => leader,
                    Err(why) => {
                        return Ok(Round::Again(format!(
                            "joining cluster {cluster} (named by {via}): {why}"
                        )));
                    }
                };
                return match join(core, boot, cluster, leader, view, deadline).await {
                    Ok(()) => {
                        tracing::info!(id = core.id, %cluster, %via, "joined the cluster");
                        Ok(Round::Done)
                    }
                    Err(why) => Ok(Round::Again(format!(
                        "joining cluster {cluster} (named by {via}): {why}"
                    ))),
                };
            }
            Decision::Form | Decision::Resume { .. } => {
                if let Some(why) =
                    start_forming(core, boot, options, view, answers, &decision).await?
                {
                    return Ok(Round::Again(why));
                }
            }
            Decision::Confirm { cluster, ask } => {
                why = confirm_round(core, boot, view, cluster, &ask, false, deadline).await;
                if why.is_empty() {
                    continue;
                }
                // The peers asked may have confirmed meanwhile (a view that
                // changed), but one round is enough: probe again first.
                return Ok(Round::Again(why));
            }
            Decision::Seal { cluster, ask } => {
                why = confirm_round(core, boot, view, cluster, &ask, true, deadline).await;
                if why.is_empty() {
                    continue;
                }
                return Ok(Round::Again(why));
            }
            Decision::Initialize { cluster, voters } => {
                return initialize(core, boot, options, answers, cluster, &voters).await;
            }
            Decision::Wait(wait) => return Ok(Round::Again(wait.to_string())),
        }
    }
    Ok(Round::Again(why))
}

pub(super) fn situation<'a>(
    me: &'a String,
    options: &BootstrapOptions,
    answers: &'a [PeerAnswer],
    commitment: Commitment<'a, String, ClusterId>,
) -> Situation<'a, String, ClusterId, LeaderHint> {
    Situation {
        me,
        follow_only: options.follow_only,
        expected_size: options.expected_size,
        peers: answers,
        commitment,
    }
}
