//! Membership follows tags: the leader removes members whose tag was
//! revoked or that left the tailnet. Members that are merely offline stay.
//! One change at a time (cmd-rpc serializes them), each logged, and never
//! one that would leave the remaining voters without a reachable quorum.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use cmd_rpc::RemoveRequest;

use crate::machine::StateMachine;
use crate::node::Inner;

pub(crate) async fn reconcile_loop<S: StateMachine>(inner: Weak<Inner<S>>) {
    let (mut events, every) = match inner.upgrade() {
        Some(inner) => (inner.discovery.events(), inner.config.timing.reconcile_every),
        None => return,
    };
    loop {
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        reconcile(&inner).await;
    }
}

async fn reconcile<S: StateMachine>(inner: &Inner<S>) {
    let raft = inner.raft();
    let metrics = raft.metrics();
    if metrics.role != raft_core::Role::Leader {
        return;
    }
    let state = inner.discovery.state().borrow().clone();
    // Never act on a view that might be out of date.
    if state.is_stale(inner.config.timing.max_staleness) {
        return;
    }
    let Some(view) = state.view else { return };
    let tagged: HashSet<&str> = view.members.values().map(|n| n.id.0.as_str()).collect();
    let online: HashSet<&str> = view.online_members().map(|n| n.id.0.as_str()).collect();
    for (&id, node) in &metrics.nodes {
        if id == inner.id || tagged.contains(node.stable_id.as_str()) {
            continue;
        }
        if metrics.voters.contains(&id) {
            let remaining: Vec<u64> = metrics.voters.iter().copied().filter(|v| *v != id).collect();
            let reachable = remaining
                .iter()
                .filter(|v| {
                    **v == inner.id
                        || metrics
                            .nodes
                            .get(v)
                            .is_some_and(|n| online.contains(n.stable_id.as_str()))
                })
                .count();
            if remaining.is_empty() || reachable < remaining.len() / 2 + 1 {
                tracing::warn!(
                    id,
                    stable_id = %node.stable_id,
                    reachable,
                    voters = remaining.len(),
                    "member lost the tag, but removing it would leave no reachable quorum; keeping it for now"
                );
                continue;
            }
        }
        tracing::info!(id, stable_id = %node.stable_id, tag = %inner.tag, "member no longer carries the tag; removing it");
        let deadline = Instant::now() + Duration::from_secs(10);
        match inner.service.remove(&RemoveRequest { id }, deadline, false).await {
            Ok(()) => tracing::info!(id, stable_id = %node.stable_id, "member removed"),
            Err(err) => tracing::warn!(id, error = %err, "removing the member failed; will retry"),
        }
        // One change per round; the next round sees the new configuration.
        return;
    }
}
