//! Answering other nodes' bootstrap calls under the bootstrap lock:
//! `POST /v1/probe` ([`Boot::probe`]: what this node is, and whether it
//! grants its promise) and `POST /v1/confirm` ([`Boot::confirm`]: binding
//! itself to a cluster being formed, sealing that binding, or refusing).

use std::time::Duration;

use cmd_rpc::{
    Caller, ConfirmRequest, ConfirmResponse, LeaderHint, ProbeRequest, ProbeResponse, ProbeState,
    RpcError,
};
use raft_core::RaftNode;
use ts_discovery::Discovery;

use super::Boot;
use crate::machine::{Adapter, StateMachine};
use crate::view::{tagged, tagged_online};

impl Boot {
    /// Answers `POST /v1/probe` from `caller` under the bootstrap lock
    /// ([`crate::decide::bootstrap::answer`]).
    pub(crate) async fn probe<S: StateMachine>(
        &self,
        raft: &RaftNode<Adapter<S>>,
        discovery: &dyn Discovery,
        max_staleness: Duration,
        caller: &Caller,
        request: &ProbeRequest,
    ) -> Result<ProbeResponse, RpcError> {
        let mut boot = self.lock().await;
        // A node that is not ready answers what it is (fresh, holding
        // no promise, or a member once it stored a cluster id) and
        // grants nothing: its answer lets a peer starting with it
        // become ready.
        let ready = boot.ready;
        let state = discovery.state().borrow().clone();
        let stale = state.is_stale(max_staleness);
        let live = |name: &str| state.view.as_ref().is_some_and(|v| tagged_online(v, name));
        let me = raft.info().stable_id.clone();
        let cluster_id = raft.cluster_id();
        let (holding, reply) = crate::decide::bootstrap::answer(&crate::decide::bootstrap::Probe {
            me: &me,
            member: cluster_id.is_some(),
            holding: boot.promise.as_ref(),
            holder_tagged: holder_tagged(discovery, max_staleness, boot.promise.as_deref()),
            caller: &caller.stable_id,
            caller_live: !stale && live(&caller.stable_id),
            wants_promise: request.promise && ready,
        });
        if holding != boot.promise {
            tracing::info!(from = ?boot.promise, to = ?holding, caller = %caller.stable_id, "bootstrap promise changed");
        }
        boot.promise = holding;
        let state = match (cluster_id, reply) {
            (Some(cluster_id), _) => ProbeState::Member { cluster_id, leader: named_leader(raft) },
            (None, crate::decide::bootstrap::Reply::Fresh { promised_to }) => {
                ProbeState::Fresh { promised_to }
            }
            (None, crate::decide::bootstrap::Reply::Member) => {
                ProbeState::Fresh { promised_to: None }
            }
        };
        Ok(ProbeResponse {
            id: raft.id(),
            incarnation: raft.incarnation(),
            node: raft.info().clone(),
            state,
        })
    }

    /// Answers `POST /v1/confirm` from `caller` under the bootstrap lock
    /// ([`crate::decide::bootstrap::confirm`]): binds this node to the
    /// caller's cluster, seals that binding, or refuses.
    pub(crate) async fn confirm<S: StateMachine>(
        &self,
        raft: &RaftNode<Adapter<S>>,
        discovery: &dyn Discovery,
        max_staleness: Duration,
        caller: &Caller,
        request: &ConfirmRequest,
    ) -> Result<ConfirmResponse, RpcError> {
        let mut boot = self.lock().await;
        let stored = raft.cluster_id();
        let me = raft.info().stable_id.clone();
        let former = raft.former().map(|(_, node)| node.stable_id);
        let has_state = raft.is_initialized().await;
        let sealed = match raft.sealed_to() {
            None => crate::decide::bootstrap::Sealed::No,
            Some(id) if id == request.id => crate::decide::bootstrap::Sealed::ToCaller,
            Some(_) => crate::decide::bootstrap::Sealed::ToOther,
        };
        let step = crate::decide::bootstrap::confirm(&crate::decide::bootstrap::ConfirmCall {
            has_state,
            stored: stored.as_ref().map(|c| (c, former.as_ref())),
            holding: boot.promise.as_ref(),
            holder_tagged: holder_tagged(discovery, max_staleness, boot.promise.as_deref()),
            sealed,
            // A node that decided to join a cluster confirms its former
            // whether it is ready or not (they would wait for each other);
            // a free one binds itself, and a bound one seals, only once
            // ready (docs/reliability.md finding 56).
            ready: boot.ready,
            caller: &caller.stable_id,
            cluster: &request.cluster_id,
            seal: request.seal,
        });
        match step {
            crate::decide::bootstrap::Confirmation::Refuse(
                crate::decide::bootstrap::Refusal::NotReady,
            ) => {
                tracing::info!(caller = %caller.stable_id, cluster = %request.cluster_id, seal = request.seal, "not ready: refused to confirm a cluster being formed");
                Err(not_ready())
            }
            crate::decide::bootstrap::Confirmation::Refuse(why) => {
                tracing::info!(caller = %caller.stable_id, cluster = %request.cluster_id, seal = request.seal, %why, "refused to confirm a cluster being formed");
                Err(RpcError::NotConfirmed(format!("{me} {why}")))
            }
            crate::decide::bootstrap::Confirmation::Bind
            | crate::decide::bootstrap::Confirmation::Again
            | crate::decide::bootstrap::Confirmation::Seal => {
                let (cluster, id, node) = (request.cluster_id, request.id, request.node.clone());
                let stored = if step == crate::decide::bootstrap::Confirmation::Seal {
                    raft.seal(cluster, id, node).await
                } else {
                    raft.bind(cluster, id, node).await
                };
                stored.map_err(|err| RpcError::NotConfirmed(format!("{me}: {err}")))?;
                boot.promise = None;
                Ok(ConfirmResponse {
                    cluster_id: request.cluster_id,
                    id: raft.id(),
                    incarnation: raft.incarnation(),
                    node: raft.info().clone(),
                })
            }
        }
    }
}

/// Whether the holder of this node's promise is still tagged in its view;
/// with a stale view, yes (a promise is kept, failing closed).
fn holder_tagged(discovery: &dyn Discovery, max_staleness: Duration, holder: Option<&str>) -> bool {
    let state = discovery.state().borrow().clone();
    let stale = state.is_stale(max_staleness);
    holder.is_some_and(|h| stale || state.view.as_ref().is_some_and(|v| tagged(v, h)))
}

/// The leader a probe's answer names: the known leader; for a binder (a
/// cluster id, no configuration yet) the cluster's former. A member with a
/// configuration that knows no leader names none: naming the former there
/// would let a former that lost its state read its own name and resume
/// forming the running cluster, instead of joining it as a new incarnation
/// once a leader is elected.
fn named_leader<S: StateMachine>(raft: &RaftNode<Adapter<S>>) -> Option<LeaderHint> {
    let metrics = raft.metrics();
    leader_hint(&metrics).or_else(|| {
        if metrics.voters.is_empty() {
            raft.former().map(|(id, node)| LeaderHint { id, node })
        } else {
            None
        }
    })
}

/// The refusal of a confirm (or a seal) by a node that is not ready: it has
/// not heard from every tagged peer of its view yet, or hears from a member
/// of another cluster (it may be about to learn of a cluster it must join,
/// and must not bind or seal itself to anything before).
fn not_ready() -> RpcError {
    RpcError::Unavailable(
        "starting: this node has not heard from every tagged peer yet, or hears from a member \
         of another cluster"
            .to_owned(),
    )
}

/// The leader this node knows, as a hint for others.
pub(super) fn leader_hint(metrics: &raft_core::NodeMetrics) -> Option<LeaderHint> {
    let id = metrics.leader?;
    metrics.nodes.get(&id).map(|node| LeaderHint { id, node: node.clone() })
}
