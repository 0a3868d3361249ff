//! docs/reliability.md finding 10 on the in-memory network: the node that
//! formed a running cluster comes back without its state while the
//! cluster knows no leader.
//!
//! The members that bound themselves to the cluster at its formation
//! remember who formed it. Before the fix, a member that knew no leader
//! named that former in its probe answers; the former, back as a new
//! incarnation, read its own stable id there and resumed forming the
//! running cluster, which every member refused (they have raft state, or
//! are sealed to its old incarnation), in a loop, instead of waiting for a
//! leader and joining as a new incarnation.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::ProbeState;
use consensus::{BootstrapOptions, Config, Consensus, Error, MemberRole, Role, StopMode, Timing};
use test_support::cluster;
use test_support::kv::{KvCommand, KvStore, read_key};
use test_support::{fast_timing, never};
use ts_discovery::{ClusterView, StaticDiscovery, TailnetNode};
use ts_transport::MemNetwork;

const TAG: &str = "tag:wiped";
const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 7201;
/// "wa" sorts lowest: it forms the cluster.
const NAMES: [&str; 3] = ["wa", "wb", "wc"];

fn ip(i: usize) -> IpAddr {
    cluster::ip(9, i)
}

fn node(i: usize) -> TailnetNode {
    cluster::tailnet_node(TAG, 9, i, NAMES[i], NAMES[i])
}

fn discovery(me: usize) -> Arc<StaticDiscovery> {
    let peers = (0..3).filter(|j| *j != me).map(node);
    Arc::new(StaticDiscovery::new(ClusterView::new(TAG, node(me), peers)))
}

fn config(start_timeout: Duration) -> Config {
    Config {
        monitor_port: None,
        command_port: PORT,
        // Memory storage: every restart is a wipe.
        state_dir: None,
        timing: Timing { start_timeout, max_staleness: Duration::from_secs(60), ..fast_timing() },
        ..Config::default()
    }
}

fn start(
    net: &MemNetwork,
    views: &[Arc<StaticDiscovery>],
    i: usize,
    start_timeout: Duration,
) -> tokio::task::JoinHandle<Result<Consensus<KvStore>, Error>> {
    let bootstrap = BootstrapOptions { tag: TAG.to_owned(), follow_only: false, expected_size: 3 };
    tokio::spawn(Consensus::start_with(
        Arc::new(net.node(ip(i))),
        views[i].clone(),
        KvStore::default(),
        bootstrap,
        config(start_timeout),
    ))
}

/// What node `i` answers a probe (asking for no promise) from the node at
/// `from`; `None` if it does not answer (not started, or not ready yet).
async fn probe(net: &MemNetwork, from: usize, i: usize) -> Option<ProbeState> {
    common::probe(net, ip(from), NAMES[i], ip(i), PORT, Duration::from_secs(2)).await
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Finding 10: wa forms a cluster of wa, wb, wc and leads it; wb and wc
/// are cut off from each other, a write is acknowledged (wa and one of
/// them), then wa is killed: the cluster has no leader. wa restarts
/// without its state (memory storage: a new incarnation) while wb and wc
/// still know no leader. With a short start timeout it gives up, saying
/// that its peers know no leader. Restarted again, it must not resume
/// forming the running cluster
/// (before the fix, wb and wc named wa as the leader, wa read its own
/// name there and resumed: its probe answer said "member, leader: wa", and
/// its confirms were refused in a loop); it waits. Once wb and wc are
/// healed and elect a leader, wa joins as a new incarnation that replaces
/// its old one, and every acknowledged write is read back everywhere.
#[tokio::test(start_paused = true)]
async fn a_wiped_former_waits_for_a_leader_and_joins_as_a_new_incarnation() {
    logs();
    let net = MemNetwork::new();
    let views: Vec<Arc<StaticDiscovery>> = (0..3).map(discovery).collect();
    let starts: Vec<_> = (0..3).map(|i| start(&net, &views, i, WAIT)).collect();
    let mut nodes = Vec::new();
    for (i, s) in starts.into_iter().enumerate() {
        nodes.push(s.await.unwrap().unwrap_or_else(|e| panic!("{}: {e}", NAMES[i])));
    }
    cluster::wait_for_leader(&nodes, 3).await;
    let old_a = nodes[0].id();
    // wa formed the cluster; make it the leader if it is not.
    let leader = nodes[0].metrics().leader.expect("a leader");
    if leader != old_a {
        let at = nodes.iter().position(|n| n.id() == leader).unwrap();
        nodes[at].transfer_leadership(Some(old_a)).await.expect("leadership to wa");
    }
    nodes[0].wait_for(WAIT, |m| m.role == Role::Leader).await.expect("wa leads");
    nodes[0].execute(KvCommand::put("k1", "1")).await.expect("k1 acknowledged");
    // wb and wc are cut off from each other; wa still reaches both.
    net.partition(ip(1), ip(2));
    nodes[0].execute(KvCommand::put("k2", "2")).await.expect("k2 acknowledged by wa and wb or wc");
    // wa is killed: wb and wc know no leader, and cannot elect one.
    let mut nodes: Vec<Option<Consensus<KvStore>>> = nodes.into_iter().map(Some).collect();
    nodes[0].take().unwrap().stop(StopMode::Stay).await.unwrap();
    for i in 1..3 {
        let kv = nodes[i].as_ref().unwrap();
        kv.wait_for(WAIT, |m| m.leader.is_none() && m.role != Role::Leader)
            .await
            .unwrap_or_else(|m| panic!("{} still knows a leader: {m:?}", NAMES[i]));
    }
    // wa comes back without its state, with a short start timeout: a
    // node that hears "member, no leader" from every peer waits (it never
    // forms), and gives up at its deadline, saying why.
    let short = Duration::from_secs(3);
    match start(&net, &views, 0, short).await.unwrap() {
        // (The reason is its last round's: a probe cut short by the
        // deadline reads as silence.)
        Err(Error::JoinFailed { reason, .. }) => assert!(
            reason.contains("knows no leader") || reason.contains("does not answer"),
            "the wiped former gave up for another reason than a leaderless cluster: {reason}"
        ),
        Err(other) => panic!("the wiped former failed otherwise: {other}"),
        Ok(kv) => panic!("the wiped former started in a leaderless cluster: {:?}", kv.metrics()),
    }
    // Again, with a long one.
    let restarted = start(&net, &views, 0, WAIT);
    // For a while (wb and wc still leaderless), wa must not take up
    // forming the running cluster.
    let mut answered = false;
    never(Duration::from_secs(3), "wa took up forming the running cluster", async || {
        if restarted.is_finished() {
            return Some("wa's start ended while the cluster had no leader".to_owned());
        }
        let a_now = probe(&net, 1, 0).await;
        if matches!(a_now, Some(ProbeState::Member { .. })) {
            return Some(format!("it answers {a_now:?}"));
        }
        answered |= a_now.is_some();
        // What wb and wc name (asked from wa's address: they do not reach
        // each other).
        for (i, name) in NAMES.iter().enumerate().skip(1) {
            let member = probe(&net, 0, i).await;
            if !matches!(member, Some(ProbeState::Member { leader: None, .. })) {
                return Some(format!(
                    "a member that knows no leader names one: {name}: {member:?}"
                ));
            }
        }
        None
    })
    .await;
    assert!(answered, "the wiped former never answered a probe");
    // wb and wc are healed: they elect a leader, and wa joins.
    net.heal_all();
    let a = restarted.await.unwrap().expect("the wiped former joins the cluster");
    assert_ne!(a.id(), old_a, "wa came back under its old raft id");
    nodes[0] = Some(a);
    let running: Vec<&Consensus<KvStore>> = nodes.iter().flatten().collect();
    for kv in &running {
        kv.wait_for(WAIT, |m| m.voters == 3 && m.learners == 0 && m.leader.is_some())
            .await
            .unwrap_or_else(|m| panic!("{}: not 3 voters with a leader: {m:?}", kv.id()));
    }
    let voters: BTreeSet<u64> =
        running[1].members().iter().filter(|m| m.role == MemberRole::Voter).map(|m| m.id).collect();
    let expected: BTreeSet<u64> = running.iter().map(|kv| kv.id()).collect();
    assert_eq!(voters, expected, "the voters are not the three running nodes (old wa {old_a})");
    running[0]
        .execute(KvCommand::put("k3", "3"))
        .await
        .expect("k3 acknowledged through the new wa");
    for kv in &running {
        for (key, value) in [("k1", "1"), ("k2", "2"), ("k3", "3")] {
            assert_eq!(read_key(kv, key).await, serde_json::json!(value), "{key} on {}", kv.id());
        }
    }
    for kv in nodes.into_iter().flatten() {
        kv.stop(StopMode::Stay).await.unwrap();
    }
}
