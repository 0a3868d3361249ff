//! Membership follows tags: the leader removes members whose tag was
//! revoked or that left the tailnet, and adds back tagged nodes that run
//! this cluster's consensus but are not members (a node whose tag was
//! restored, or one removed while it was away). Members that are merely
//! offline stay. One change at a time (cmd-rpc serializes them), each
//! logged, and never one that would leave the remaining voters without a
//! reachable quorum.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use cmd_rpc::{ClusterInfo, JoinRequest, RemoveRequest};
use raft_core::{NodeInfo, node_id_from_stable_id};

use crate::machine::StateMachine;
use crate::node::{Inner, join_ports};

/// Time a tagged non-member has to answer the leader's probe.
const PROBE: Duration = Duration::from_secs(1);
/// Least time between two probes of the same non-member.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Time adding a node back may take, catching up included.
const ADD_BACK: Duration = Duration::from_secs(30);

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
    add_back(inner, &metrics, &view).await;
}

/// Adds back one tagged, online node that is not a voter: a learner left
/// behind by a join that never finished (its leader died between adding
/// and promoting it), or a node that is not a member at all but answers as
/// this cluster's node with its own id (restored tag, or removed while it
/// was away). A fresh node that is still bootstrapping is added the same
/// way, which is what its own join would do.
async fn add_back<S: StateMachine>(
    inner: &Inner<S>,
    metrics: &raft_core::NodeMetrics,
    view: &ts_discovery::ClusterView,
) {
    let now = Instant::now();
    for node in view.online_members() {
        let id = node_id_from_stable_id(&node.id.0);
        if metrics.voters.contains(&id) {
            continue;
        }
        {
            let mut probes = inner.add_back_probes.lock().unwrap_or_else(|p| p.into_inner());
            probes.retain(|_, next| *next > now);
            if probes.contains_key(&id) {
                continue;
            }
            probes.insert(id, now + PROBE_EVERY);
        }
        let found = match metrics.nodes.get(&id) {
            // A learner: its record is in the configuration already.
            Some(known) => known.clone(),
            None => match probe(inner, node, id).await {
                Some(found) => found,
                None => continue,
            },
        };
        tracing::info!(id, stable_id = %node.id.0, tag = %inner.tag, "tagged node is not a voter; adding it back");
        let request = JoinRequest { id, node: found, fresh: false };
        match inner.service.join(&request, Instant::now() + ADD_BACK, false).await {
            Ok(()) => tracing::info!(id, stable_id = %node.id.0, "node added back"),
            Err(err) => tracing::warn!(id, error = %err, "adding the node back failed; will retry"),
        }
        return;
    }
}

/// Asks `node` who it is; its record if it answers as raft node `id`.
async fn probe<S: StateMachine>(
    inner: &Inner<S>,
    node: &ts_discovery::TailnetNode,
    id: raft_core::NodeId,
) -> Option<NodeInfo> {
    let addrs: Vec<_> = node.addrs().collect();
    for port in join_ports(&inner.config) {
        let target = NodeInfo {
            stable_id: node.id.0.clone(),
            addrs: addrs.clone(),
            raft_port: 0,
            command_port: port,
        };
        let answer: Result<ClusterInfo, _> =
            inner.service.client().get(&target, "/v1/cluster", Instant::now() + PROBE).await;
        match answer {
            Ok(ClusterInfo { node: answered, self_node: Some(found), .. })
                if answered == id && found.stable_id == node.id.0 =>
            {
                return Some(found);
            }
            Ok(_) => {
                tracing::debug!(id, port, "tagged node answered as another node; not adding it");
                return None;
            }
            Err(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{self, Read, Write};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use ts_discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
    use ts_transport::MemNetwork;

    use super::*;
    use crate::{BootstrapOptions, Config, Consensus, StopMode, Timing};

    const TAG: &str = "tag:m";
    const WAIT: Duration = Duration::from_secs(20);

    struct Nothing;

    impl StateMachine for Nothing {
        type Command = ();
        type Response = ();
        type Query = ();
        type QueryResponse = ();
        fn apply(&mut self, (): ()) {}
        fn query(&self, (): &()) {}
        fn snapshot(&self, _: &mut dyn Write) -> io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, _: &mut dyn Read) -> io::Result<()> {
            Ok(())
        }
    }

    fn tailnet_node(i: u8) -> TailnetNode {
        TailnetNode {
            id: StableNodeId(format!("m{i}")),
            hostname: format!("m{i}"),
            dns_name: String::new(),
            ipv4: Some(Ipv4Addr::new(10, 3, 0, i + 1)),
            ipv6: None,
            tags: BTreeSet::from([TAG.to_owned()]),
            online: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_learner_left_behind_by_an_unfinished_join_is_promoted() {
        let net = MemNetwork::new();
        let all: Vec<TailnetNode> = (0..3).map(tailnet_node).collect();
        let start = |i: usize| {
            let peers = all.iter().filter(|n| n.id != all[i].id).cloned();
            let view = ClusterView::new(TAG, all[i].clone(), peers);
            let transport = Arc::new(net.node(IpAddr::V4(all[i].ipv4.unwrap())));
            let config = Config {
                monitor_port: None,
                timing: Timing {
                    heartbeat: Duration::from_millis(100),
                    election: (Duration::from_millis(500), Duration::from_millis(1000)),
                    // Reconciliation runs only when the test calls it.
                    reconcile_every: Duration::from_secs(3600),
                    ..Timing::default()
                },
                ..Config::default()
            };
            let bootstrap =
                BootstrapOptions { tag: TAG.to_owned(), follow_only: false, expected_size: 3 };
            Consensus::start_with(
                transport,
                Arc::new(StaticDiscovery::new(view)),
                Nothing,
                bootstrap,
                config,
            )
        };
        let (a, b, c) = tokio::join!(start(0), start(1), start(2));
        let nodes = [a.unwrap(), b.unwrap(), c.unwrap()];
        nodes[0].wait_for(WAIT, |m| m.voters == 3 && m.leader.is_some()).await.unwrap();
        let leader = nodes.iter().find(|n| n.metrics().role == crate::Role::Leader).unwrap();
        let other = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
        // A join that stopped half way: the node is a learner, not a voter.
        let raft = leader.inner.raft();
        raft.remove(other.id(), WAIT).await.unwrap();
        raft.add_learner(other.id(), other.inner.raft().info().clone(), WAIT).await.unwrap();
        leader.wait_for(WAIT, |m| m.voters == 2 && m.learners == 1).await.unwrap();
        reconcile(&leader.inner).await;
        leader.wait_for(WAIT, |m| m.voters == 3 && m.learners == 0).await.expect("promoted");
        for node in nodes {
            node.stop(StopMode::Stay).await.unwrap();
        }
    }
}
