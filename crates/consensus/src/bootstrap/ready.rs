//! Readiness, under the bootstrap lock: when a node without raft state
//! becomes ready (it grants promises, binds itself and seals a binding
//! only once every tagged peer of its view has answered and none is a
//! member of another cluster: [`crate::decide::bootstrap::waiting_for`]),
//! what a start that is not ready tells the operator, and giving up a
//! binding whose former is gone or forgot the formation
//! ([`crate::decide::bootstrap::unbind`]), after which the node must
//! become ready again.

use std::collections::BTreeMap;
use std::time::Duration;

use raft_core::{ClusterId, NodeId};
use tokio::time::Instant;
use ts_discovery::ClusterView;

use super::{Boot, PeerAnswer};
use crate::core::Core;
use crate::decide::bootstrap::{
    Answer, Bond, FormerNow, Heard, Names, other_cluster, unbind, waiting_for,
};
use crate::machine::StateMachine;
use crate::view::tagged;

/// How long the former of the cluster a node bound itself to may be
/// untagged or absent from the node's view before the node gives the
/// binding up (if it has not sealed it): long enough that a view that
/// flaps does not undo a formation in progress. Safety does not depend on
/// it (decision 0003, "Amendment: bound for good").
const UNBIND_GRACE: Duration = Duration::from_secs(10);

/// Makes this node ready (it grants promises, binds itself and seals its
/// binding from now on) if every tagged peer of `view`, online or not, is
/// in `heard` (with the cluster its last answer named, if any) and none's
/// last answer there was a member's of a cluster other than this node's
/// own ([`decide::bootstrap::waiting_for`], [`other_cluster`]), under the
/// bootstrap lock. The peers it is still waiting for (none once ready).
pub(super) async fn become_ready<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    view: &ClusterView,
    heard: &BTreeMap<String, Option<ClusterId>>,
) -> Vec<String> {
    let mut state = boot.lock().await;
    if state.ready {
        return Vec::new();
    }
    let own = core.raft().cluster_id();
    let peers: Vec<Heard<'_, String>> = view
        .members
        .values()
        .map(|n| Heard {
            peer: &n.id.0,
            answered: heard.contains_key(&n.id.0),
            member: heard
                .get(&n.id.0)
                .is_some_and(|answered| other_cluster(answered.as_ref(), own.as_ref())),
        })
        .collect();
    let waiting = waiting_for(&peers);
    if waiting.is_empty() {
        state.ready = true;
        tracing::info!(id = core.id, "every tagged peer answered, none a member: ready");
    } else {
        tracing::debug!(peers = ?waiting, "not ready: waiting for these peers");
    }
    waiting
}

/// The peers of `peers` that are offline in `view`.
pub(super) fn offline_of(view: &ClusterView, peers: &[String]) -> Vec<String> {
    let offline = |p: &String| view.members.values().any(|n| n.id.0 == *p && !n.online);
    peers.iter().filter(|p| offline(p)).cloned().collect()
}

/// What the operator can do about peers a start waited for that are
/// offline: empty if there are none.
pub(super) fn offline_advice(offline: &[String]) -> String {
    if offline.is_empty() {
        return String::new();
    }
    format!(
        "; offline: {} (a tagged peer may hold a cluster's data: start it, or, if it is gone \
         for good, remove its tag or delete it from the tailnet)",
        offline.join(", ")
    )
}

/// Gives this node's binding up if [`decide::bootstrap::unbind`] says so
/// (its former gone for [`UNBIND_GRACE`], or answering as another
/// incarnation that does not resume the formation), under the bootstrap
/// lock, the lock confirms and seals are answered under: a seal answered
/// before keeps it bound for good, and a seal asked after is refused.
/// `gone_since` tracks when the former was last seen missing. Why it gave
/// the binding up, if it did.
pub(super) async fn give_up_binding<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    view: &ClusterView,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
    gone_since: &mut Option<Instant>,
) -> Option<String> {
    let raft = core.raft();
    let mut state = boot.lock().await;
    let (Some(cluster), Some((former_id, former))) = (raft.cluster_id(), raft.former()) else {
        *gone_since = None;
        return None;
    };
    let me = &raft.info().stable_id;
    if state.forming.is_some() || former.stable_id == *me {
        return None;
    }
    let name = &former.stable_id;
    let former_now = if !tagged(view, name) {
        let since = *gone_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= UNBIND_GRACE { FormerNow::GoneForGood } else { FormerNow::Gone }
    } else {
        *gone_since = None;
        let resumed = answers.iter().any(|p| {
            p.name == *name
                && matches!(&p.answer, Answer::Member { cluster: c, leader: Some(l) }
                    if *c == cluster && l.names(name))
        });
        match ids.get(name) {
            Some(id) if *id != former_id && !resumed => FormerNow::Forgot,
            _ => FormerNow::Present,
        }
    };
    let bond = Bond {
        me,
        has_state: raft.is_initialized().await,
        former: Some(name),
        sealed: raft.sealed_to().is_some(),
        former_now,
    };
    if !unbind(&bond) {
        return None;
    }
    let why = match former_now {
        FormerNow::Forgot => format!("{name} answers as another incarnation"),
        _ => format!("{name} has been gone from the view for {UNBIND_GRACE:?}"),
    };
    match raft.unbind(cluster, former_id).await {
        Ok(()) => {
            *gone_since = None;
            // Free now: ready only once every tagged peer, online or
            // not, has answered since (a binder is made ready at start for
            // its binding, without that).
            state.ready = false;
            Some(format!("cluster {cluster}: {why}"))
        }
        Err(err) => {
            tracing::info!(%cluster, error = %err, "kept the binding");
            None
        }
    }
}
