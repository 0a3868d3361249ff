//! Membership follows tags (decision 0003): the shell around
//! [`decide::membership::plan`]. On the leader, every `reconcile_every` and
//! on every discovery change, it gathers the configuration, the tagged
//! nodes of a fresh view and the probe answers of the tagged nodes
//! [`decide::membership::to_probe`] names (each at most every
//! [`PROBE_EVERY`]), asks the plan for one action, and carries it out
//! through the command service, which serializes it with joins and
//! removals. Members that are merely offline stay; the quorum guard and
//! the rules are the plan's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cmd_rpc::{Change, ProbeRequest, ProbeResponse, ProbeState};
use raft_core::{NodeId, NodeInfo, NodeMetrics};
use tokio::task::JoinSet;
use tokio::time::Instant;
use ts_discovery::{ClusterView, Discovery};

use crate::core::Core;
use crate::decide::membership::{
    Action, Inputs, Member, Probed, Tagged, keeps_quorum, plan, to_probe,
};
use crate::machine::StateMachine;
use crate::peers::{check_answer, join_ports};

/// Time a tagged node has to answer the leader's probe.
const PROBE: Duration = Duration::from_secs(1);
/// Least time between two probes of the same node.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Time adding a learner or replacing an incarnation may take, catching
/// up included.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Time any other change may take.
const CHANGE: Duration = Duration::from_secs(10);
/// How far behind the leader's log a learner may be and count as caught
/// up.
const MAX_LAG: u64 = 64;

/// The membership reconciler's part of a node: when each tagged node (by
/// stable id) may next be probed by the leader.
#[derive(Default)]
pub(crate) struct Membership {
    probes: Mutex<HashMap<String, Instant>>,
}

impl Membership {
    /// Of `names`, those not probed within [`PROBE_EVERY`] before `now`;
    /// they count as probed at `now`.
    fn due(&self, names: Vec<String>, now: Instant) -> Vec<String> {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.retain(|_, next| *next > now);
        names
            .into_iter()
            .filter(|name| {
                let due = !probes.contains_key(name);
                if due {
                    probes.insert(name.clone(), now + PROBE_EVERY);
                }
                due
            })
            .collect()
    }
}

/// Reconciles on every discovery change and every `reconcile_every`, until
/// the node is gone (`core` no longer upgrades) or its task is aborted.
pub(crate) async fn reconcile_loop<S: StateMachine>(
    core: Weak<Core<S>>,
    membership: Arc<Membership>,
) {
    let (mut events, every) = match core.upgrade() {
        Some(core) => (core.discovery.events(), core.config.timing.reconcile_every),
        None => return,
    };
    loop {
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let Some(core) = core.upgrade() else { return };
        reconcile(&core, &membership).await;
    }
}

async fn reconcile<S: StateMachine>(core: &Core<S>, membership: &Membership) {
    let raft = core.raft();
    let metrics = raft.metrics();
    if metrics.role != raft_core::Role::Leader {
        return;
    }
    // Never act on a view that might be out of date.
    let Some(view) = core.fresh_view() else { return };
    let last_index = metrics.last_log_index.unwrap_or(0);
    let members: Vec<Member<String>> = metrics
        .nodes
        .iter()
        .map(|(id, node)| Member {
            id: *id,
            name: node.stable_id.clone(),
            voter: metrics.voters.contains(id),
            matched: if *id == core.id {
                metrics.last_log_index
            } else {
                metrics.replication.as_ref().and_then(|r| r.get(id).copied().flatten())
            },
        })
        .collect();
    let mut tagged: Vec<Tagged<String>> =
        view.members.values().map(|n| Tagged { name: n.id.0.clone(), online: n.online }).collect();
    if view.self_tagged() {
        tagged.push(Tagged { name: view.self_node.id.0.clone(), online: true });
    }
    let answers = probe_due(core, membership, &view, to_probe(core.id, &members, &tagged)).await;
    let mut probed: Vec<Probed<String>> = answers.iter().map(|(p, _)| p.clone()).collect();
    probed.push(Probed { name: raft.info().stable_id.clone(), id: core.id, in_this_cluster: true });
    let inputs = Inputs {
        leader: core.id,
        members: &members,
        tagged: &tagged,
        probed: &probed,
        last_index,
        max_lag: MAX_LAG,
    };
    let Some(action) = plan(&inputs) else { return };
    let (change, timeout) = match &action {
        Action::Replace { old, new, name } => {
            tracing::info!(?old, new, %name, "replacing stale incarnations");
            (Change::Replace { old: old.clone(), new: *new }, CATCH_UP)
        }
        Action::Remove { id, name } => {
            tracing::info!(id, %name, tag = %core.tag, "member no longer carries the tag or left the tailnet; removing it");
            (Change::Remove { id: *id }, CHANGE)
        }
        Action::Promote { id, name } => {
            tracing::info!(id, %name, "promoting a caught-up learner");
            (Change::Promote { id: *id }, CHANGE)
        }
        Action::AddLearner { id, name } => {
            let Some(node) = answers.iter().find(|(p, _)| p.id == *id).map(|(_, n)| n.clone())
            else {
                return;
            };
            tracing::info!(id, %name, tag = %core.tag, "tagged node of this cluster is not a member; adding it back");
            (Change::AddLearner { id: *id, node }, CATCH_UP)
        }
    };
    match core.service.change(&change, Instant::now() + timeout).await {
        Ok(()) => tracing::info!(?action, "membership change done"),
        Err(err) => tracing::warn!(?action, error = %err, "membership change failed; will retry"),
    }
}

/// Probes the nodes named (those not probed within [`PROBE_EVERY`]), at
/// once. Each answer that checks out gives what the plan needs and the
/// node's record, its addresses limited to those the view gives it.
async fn probe_due<S: StateMachine>(
    core: &Core<S>,
    membership: &Membership,
    view: &ClusterView,
    names: Vec<String>,
) -> Vec<(Probed<String>, NodeInfo)> {
    let now = Instant::now();
    let due = membership.due(names, now);
    let cluster_id = core.raft().cluster_id();
    let mut tasks = JoinSet::new();
    for name in due {
        let Some(node) = view.members.values().find(|n| n.id.0 == name) else { continue };
        let addrs: BTreeSet<_> = node.addrs().collect();
        let client = core.service.client().clone();
        let ports = join_ports(&core.config);
        tasks.spawn(async move {
            for port in ports {
                let target = NodeInfo {
                    stable_id: name.clone(),
                    addrs: addrs.iter().copied().collect(),
                    raft_port: 0,
                    command_port: port,
                };
                let request = ProbeRequest { promise: false };
                let answer: Result<ProbeResponse, _> = client
                    .post(
                        &target,
                        "/v1/probe",
                        &request,
                        Instant::now() + PROBE,
                        cmd_rpc::Origin::Client,
                    )
                    .await;
                let Ok(answer) = answer else { continue };
                if let Err(why) = check_answer(&answer, &name) {
                    tracing::warn!(node = %name, %why, "ignoring a malformed probe answer");
                    return None;
                }
                let in_this_cluster = matches!(
                    answer.state,
                    ProbeState::Member { cluster_id: theirs, .. } if Some(theirs) == cluster_id
                );
                let record = NodeInfo {
                    addrs: answer
                        .node
                        .addrs
                        .iter()
                        .copied()
                        .filter(|a| addrs.contains(a))
                        .collect(),
                    ..answer.node
                };
                if record.addrs.is_empty() {
                    return None;
                }
                return Some((Probed { name, id: answer.id, in_this_cluster }, record));
            }
            None
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(answer)) = done {
            out.push(answer);
        }
    }
    out
}

/// The quorum guard of a removal asked for through the command API:
/// whether removing `id` leaves a majority of the remaining voters
/// reachable ([`decide::membership::keeps_quorum`]), judged from this
/// node's raft metrics and a fresh tailnet view. `me` and `my_name` are
/// this node's (the leader's) raft id and stable id.
pub(crate) fn removal_keeps_quorum(
    me: NodeId,
    my_name: &str,
    discovery: &dyn Discovery,
    max_staleness: Duration,
    id: NodeId,
    metrics: &NodeMetrics,
) -> Result<(), String> {
    let members: Vec<Member<String>> = metrics
        .nodes
        .iter()
        .map(|(id, node)| Member {
            id: *id,
            name: node.stable_id.clone(),
            voter: metrics.voters.contains(id),
            matched: None,
        })
        .collect();
    // Only a fresh view says who is reachable; without one only this node
    // counts (the guard must not pass for want of information).
    let state = discovery.state().borrow().clone();
    let mut tagged: Vec<Tagged<String>> = Vec::new();
    let stale = state.is_stale(max_staleness);
    if let Some(view) = state.view.filter(|_| !stale) {
        tagged.extend(
            view.members.values().map(|n| Tagged { name: n.id.0.clone(), online: n.online }),
        );
        if view.self_tagged() {
            tagged.push(Tagged { name: view.self_node.id.0.clone(), online: true });
        }
    }
    let probed = [Probed { name: my_name.to_owned(), id: me, in_this_cluster: true }];
    let inputs = Inputs {
        leader: me,
        members: &members,
        tagged: &tagged,
        probed: &probed,
        last_index: metrics.last_log_index.unwrap_or(0),
        max_lag: 0,
    };
    keeps_quorum(&inputs, id).map_err(|(remaining, reachable)| {
        format!(
            "removing it leaves {remaining} voters of which only {reachable} are reachable, not \
             a majority"
        )
    })
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
            has_path: true,
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
                    heartbeat: test_support::HEARTBEAT,
                    election: test_support::ELECTION,
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
        // A join that stopped half way: the node is a learner, not a voter.
        // (On a loaded machine leadership may move, or the cluster's own
        // reconciler may have a change in progress: the leader of the
        // moment tries again until both changes are in.)
        let deadline = Instant::now() + WAIT;
        let leader = loop {
            let leader = nodes.iter().find(|n| n.metrics().role == crate::Role::Leader);
            if let Some(leader) = leader {
                let other = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
                let raft = leader.inner.core.raft();
                let info = other.inner.core.raft().info().clone();
                let removed = raft.remove(other.id(), WAIT).await;
                let added = match removed {
                    Ok(()) => raft.add_learner(other.id(), info, WAIT).await,
                    Err(err) => Err(err),
                };
                match added {
                    Ok(()) => break leader,
                    Err(err) => eprintln!("the learner set-up failed once: {err}"),
                }
            }
            assert!(Instant::now() < deadline, "no leader took the learner set-up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        leader.wait_for(WAIT, |m| m.voters == 2 && m.learners == 1).await.unwrap();
        reconcile(&leader.inner.core, &leader.inner.membership).await;
        leader.wait_for(WAIT, |m| m.voters == 3 && m.learners == 0).await.expect("promoted");
        for node in nodes {
            node.stop(StopMode::Stay).await.unwrap();
        }
    }
}
