//! Identity, bootstrap and membership safety (issue 12, decision 0003) on
//! the in-memory network with test-driven tailnet views:
//!
//! - a node that lost its raft state comes back under a new raft id and
//!   never votes in, or counts toward, the configuration it was part of, so
//!   an acknowledged write survives (durable storage wiped, and memory
//!   storage, where every restart is a wipe);
//! - a fresh node whose probes time out, are refused or get 403 never forms
//!   a second cluster next to a running one;
//! - fresh nodes started together form exactly one cluster (seeded);
//! - a stale incarnation is replaced in one change: the voter count never
//!   drops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::{Config, Consensus, Error, Role, StopMode, Timing};
use test_support::cluster::{MemCluster, Tailnet};
use test_support::kv::{KvCommand, KvStore, read_key};
use test_support::{Rng, fast_timing, seeds_from_env};
use ts_transport::{Faults, Transport};

const TAG: &str = "tag:id";
const WAIT: Duration = Duration::from_secs(30);
/// The command port of the nodes here (not the default 6271, so that a node
/// configured for another port finds nothing listening).
const CLUSTER_PORT: u16 = 7001;

fn timing(start_timeout: Duration) -> Timing {
    Timing { start_timeout, max_staleness: Duration::from_secs(60), ..fast_timing() }
}

/// A node's configuration: its state directory (none: memory storage) and
/// how long its start may take.
fn config(dir: Option<&Path>, start_timeout: Duration) -> Config {
    Config {
        monitor_port: None,
        state_dir: dir.map(Path::to_owned),
        command_port: CLUSTER_PORT,
        timing: timing(start_timeout),
        ..Config::default()
    }
}

/// Nodes named `names[i]` on subnet 4, each seeing every other one tagged
/// and online, optionally with durable state; all started at once, with a
/// leader.
async fn start_all(names: &[&str], durable: bool) -> MemCluster<KvStore> {
    let tailnet = Tailnet::named(TAG, 4, names);
    if durable {
        MemCluster::start_durable(tailnet, |_, dir| config(Some(dir), WAIT)).await
    } else {
        MemCluster::start(tailnet, |_| config(None, WAIT)).await
    }
}

/// Starts node `i` of `cluster` over `transport`, expecting `expected`
/// nodes to form the cluster (a future that owns what it needs, to spawn).
fn start_on(
    cluster: &MemCluster<KvStore>,
    i: usize,
    transport: Arc<dyn Transport>,
    expected: usize,
    config: Config,
) -> impl Future<Output = Result<Consensus<KvStore>, Error>> + 'static {
    Consensus::start_with(
        transport,
        cluster.discovery[i].clone(),
        KvStore::default(),
        cluster.tailnet.bootstrap(expected),
        config,
    )
}

/// [`start_on`] over node `i`'s own address, on its state directory.
fn start(
    cluster: &MemCluster<KvStore>,
    i: usize,
    expected: usize,
) -> impl Future<Output = Result<Consensus<KvStore>, Error>> + 'static {
    let config = config(cluster.dirs.get(i).map(PathBuf::as_path), WAIT);
    start_on(cluster, i, Arc::new(cluster.net.node(cluster.ip(i))), expected, config)
}

/// The node whose role is leader.
fn leader_of(cluster: &MemCluster<KvStore>) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.metrics().role == Role::Leader))
        .expect("a leader")
}

/// Stops every running node; a node may have stopped on its own.
async fn stop_all(cluster: MemCluster<KvStore>) {
    for node in cluster.nodes.into_iter().flatten() {
        let _ = node.stop(StopMode::Stay).await;
    }
}

/// Issue 12's sequence with durable storage: A, B, C; C cut off; a write
/// through A acknowledged by A and B; A killed; B's state deleted and B
/// restarted under the same tailnet identity; C healed. B must not vote C
/// in (C lacks the write); once A is back, the write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_its_state_never_votes_and_the_acknowledged_write_survives() {
    let mut cluster = start_all(&["id-a", "id-b", "id-c"], true).await;
    let a = leader_of(&cluster);
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    let old_b = cluster.node(b).id();
    cluster.net.isolate(cluster.ip(c));
    cluster.node(a).execute(KvCommand::put("k1", "v")).await.expect("write acknowledged by A+B");
    // kill A; kill B and delete its raft state.
    cluster.nodes[a].take().unwrap().stop(StopMode::Stay).await.unwrap();
    cluster.nodes[b].take().unwrap().stop(StopMode::Stay).await.unwrap();
    std::fs::remove_dir_all(&cluster.dirs[b]).unwrap();
    // B restarts with the same tailnet identity and empty state.
    let restarted_b = tokio::spawn(start(&cluster, b, 3));
    cluster.net.heal_all();
    // C is healed; B is back with an empty log. Without A nothing may be
    // elected: a leader now could only be C, voted in by an amnesiac B.
    let kv_c = cluster.node(c);
    let elected = kv_c.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader).await;
    assert!(
        elected.is_err(),
        "C (which lacks k1) became leader after B lost its state: {:?}",
        kv_c.metrics()
    );
    // A comes back with its state: the write is there.
    let kv_a = start(&cluster, a, 3).await.expect("A restarts from its state");
    kv_a.wait_for(WAIT, |m| m.leader.is_some()).await.unwrap();
    assert_eq!(read_key(&kv_a, "k1").await, serde_json::json!("v"), "acknowledged write lost");
    assert_eq!(read_key(kv_c, "k1").await, serde_json::json!("v"), "acknowledged write lost on C");
    // B joins as a new node and replaces its old incarnation.
    let kv_b = restarted_b.await.unwrap().expect("B rejoins");
    assert_ne!(kv_b.id(), old_b, "B came back under its old raft id");
    kv_a.wait_for(WAIT, |m| m.voters == 3 && m.learners == 0).await.unwrap();
    let members: BTreeSet<u64> = kv_a.members().iter().map(|m| m.id).collect();
    assert!(!members.contains(&old_b), "B's old incarnation is still a member: {members:?}");
    assert!(members.contains(&kv_b.id()), "B's new incarnation is not a member: {members:?}");
    assert_eq!(read_key(&kv_b, "k1").await, serde_json::json!("v"));
    cluster.nodes[a] = Some(kv_a);
    cluster.nodes[b] = Some(kv_b);
    stop_all(cluster).await;
}

/// The same with memory storage, where every restart loses the state: B
/// restarts while C, cut off, has campaigned to a higher term. C must not
/// win with B's vote; the write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_storage_a_restarted_node_never_votes_in_its_old_configuration() {
    let mut cluster = start_all(&["mem-a", "mem-b", "mem-c"], false).await;
    let a = leader_of(&cluster);
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    let old_b = cluster.node(b).id();
    cluster.net.isolate(cluster.ip(c));
    cluster.node(a).execute(KvCommand::put("k1", "v")).await.expect("write acknowledged by A+B");
    let term_a = cluster.node(a).metrics().term;
    // C campaigns alone, so its term passes A's.
    cluster.node(c).wait_for(WAIT, |m| m.term > term_a + 1).await.unwrap();
    cluster.nodes[b].take().unwrap().stop(StopMode::Stay).await.unwrap();
    let restarted_b = tokio::spawn(start(&cluster, b, 3));
    cluster.net.heal_all();
    let kv_b = restarted_b.await.unwrap().expect("B rejoins");
    cluster.nodes[b] = Some(kv_b);
    for (i, kv) in cluster.nodes.iter().enumerate() {
        let kv = kv.as_ref().unwrap();
        assert_eq!(
            read_key(kv, "k1").await,
            serde_json::json!("v"),
            "acknowledged write lost on {i}"
        );
    }
    assert_ne!(cluster.node(b).id(), old_b, "B came back under its old raft id");
    let leader = leader_of(&cluster);
    let kv = cluster.node(leader);
    kv.wait_for(WAIT, |m| m.voters == 3 && m.learners == 0).await.unwrap();
    assert!(kv.members().iter().all(|m| m.id != old_b), "B's old incarnation is still a member");
    stop_all(cluster).await;
}

/// How a fresh node's probes of the running cluster fail.
#[derive(Clone, Copy, Debug)]
enum ProbeFault {
    /// Its dials hang until they time out.
    Timeout,
    /// Nothing listens where it probes: refused.
    Refused,
    /// The cluster's nodes do not see it tagged: 403.
    Forbidden,
}

async fn fresh_node_next_to_a_cluster(fault: ProbeFault) {
    // "aa" sorts before the others (by name, and by the old hash ids too).
    let mut cluster = MemCluster::<KvStore>::new(Tailnet::named(TAG, 4, &["n1", "n2", "n3", "aa"]));
    // The cluster's views do not show "aa" yet.
    let aa = cluster.tailnet.node(3);
    cluster.show(3, None);
    let starts: Vec<_> = (0..3).map(|i| tokio::spawn(start(&cluster, i, 3))).collect();
    for (i, start) in starts.into_iter().enumerate() {
        cluster.nodes[i] = Some(start.await.unwrap().unwrap());
    }
    for kv in cluster.running() {
        kv.wait_for(WAIT, |m| m.voters == 3 && m.leader.is_some()).await.unwrap();
    }
    cluster.node(0).execute(KvCommand::put("before", "1")).await.unwrap();
    if !matches!(fault, ProbeFault::Forbidden) {
        // Now the cluster sees "aa" tagged too.
        cluster.show_to(3, Some(aa), &[0, 1, 2]);
    }
    let faults = Faults::new(12);
    let transport: Arc<dyn Transport> = match fault {
        ProbeFault::Timeout => {
            for i in 0..3 {
                faults.block(cluster.ip(i));
            }
            Arc::new(faults.wrap(Arc::new(cluster.net.node(cluster.ip(3)))))
        }
        _ => Arc::new(cluster.net.node(cluster.ip(3))),
    };
    let mut config = config(None, Duration::from_secs(6));
    if matches!(fault, ProbeFault::Refused) {
        // The cluster listens on 7001; this node probes 7999 and 6271.
        config.command_port = 7999;
    }
    let started = Instant::now();
    let outcome = start_on(&cluster, 3, transport, 1, config).await;
    match outcome {
        Ok(kv) => {
            let metrics = kv.metrics();
            let _ = kv.stop(StopMode::Stay).await;
            panic!(
                "{fault:?}: a fresh node formed a second cluster next to a running one: {metrics:?}"
            )
        }
        Err(Error::JoinFailed { reason, .. }) => {
            eprintln!("{fault:?}: refused to form after {:?}: {reason}", started.elapsed());
            assert!(reason.contains("does not answer"), "{fault:?}: {reason}");
        }
        Err(other) => panic!("{fault:?}: unexpected error {other}"),
    }
    // The cluster is untouched.
    let leader = cluster.running().find(|n| n.metrics().role == Role::Leader).unwrap();
    assert_eq!(leader.metrics().voters, 3);
    assert_eq!(read_key(leader, "before").await, serde_json::json!("1"));
    stop_all(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_whose_probes_time_out_never_forms_a_second_cluster() {
    fresh_node_next_to_a_cluster(ProbeFault::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_whose_probes_are_refused_never_forms_a_second_cluster() {
    fresh_node_next_to_a_cluster(ProbeFault::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_whose_probes_get_403_never_forms_a_second_cluster() {
    fresh_node_next_to_a_cluster(ProbeFault::Forbidden).await;
}

/// Five fresh nodes started at seeded moments over links with seeded delays
/// form exactly one cluster. `IDENTITY_SEED` replays one seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_nodes_started_together_form_exactly_one_cluster() {
    // RUST_LOG=info shows what the nodes did (printed for a failing run).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    for seed in seeds_from_env("IDENTITY_SEED", &[1, 2, 3, 4]) {
        eprintln!("seed {seed} (replay with IDENTITY_SEED={seed})");
        let mut rng = Rng::new(seed);
        let mut cluster =
            MemCluster::<KvStore>::new(Tailnet::named(TAG, 4, &["s0", "s1", "s2", "s3", "s4"]));
        for i in 0..5 {
            for j in i + 1..5 {
                let delay = Duration::from_millis(rng.below(8));
                cluster.net.set_delay(cluster.ip(i), cluster.ip(j), delay);
            }
        }
        let expected = 3 + rng.below(3) as usize;
        let delays: Vec<u64> = (0..5).map(|_| rng.below(400)).collect();
        eprintln!("seed {seed}: expected_size {expected}, start delays {delays:?} ms");
        let starts: Vec<_> = (0..5)
            .map(|i| {
                let start = start(&cluster, i, expected);
                let delay = Duration::from_millis(delays[i]);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    start.await
                })
            })
            .collect();
        for (i, start) in starts.into_iter().enumerate() {
            let kv = start.await.unwrap().unwrap_or_else(|e| panic!("seed {seed}: node {i}: {e}"));
            cluster.nodes[i] = Some(kv);
        }
        for kv in cluster.running() {
            kv.wait_for(WAIT, |m| m.voters == 5 && m.learners == 0 && m.leader.is_some())
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        let leaders: BTreeSet<Option<u64>> =
            cluster.running().map(|kv| kv.metrics().leader).collect();
        assert_eq!(leaders.len(), 1, "seed {seed}: nodes disagree on the leader: {leaders:?}");
        let configurations: BTreeSet<Vec<u64>> =
            cluster.running().map(|kv| kv.members().iter().map(|m| m.id).collect()).collect();
        assert_eq!(
            configurations.len(),
            1,
            "seed {seed}: more than one cluster: {configurations:?}"
        );
        stop_all(cluster).await;
    }
}

/// A follower restarted with memory storage comes back as a new incarnation;
/// the leader swaps it for the old one in one joint change, so the leader
/// never sees fewer voters than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_incarnation_is_replaced_in_one_change() {
    let mut cluster = start_all(&["r-a", "r-b", "r-c"], false).await;
    let a = leader_of(&cluster);
    let b = (a + 1) % 3;
    let old_b = cluster.node(b).id();
    let leader = cluster.node(a).clone();
    // Every configuration the leader goes through, in order.
    let history: Arc<Mutex<Vec<BTreeMap<u64, bool>>>> = Arc::default();
    let recorder = {
        let history = history.clone();
        let mut watch = leader.watch();
        let leader = leader.clone();
        tokio::spawn(async move {
            loop {
                let members: BTreeMap<u64, bool> = leader
                    .members()
                    .iter()
                    .map(|m| (m.id, m.role == consensus::MemberRole::Voter))
                    .collect();
                {
                    let mut history = history.lock().unwrap();
                    if history.last() != Some(&members) {
                        history.push(members);
                    }
                }
                if watch.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    cluster.nodes[b].take().unwrap().stop(StopMode::Stay).await.unwrap();
    let kv_b = start(&cluster, b, 3).await.expect("B rejoins");
    let new_b = kv_b.id();
    assert_ne!(new_b, old_b, "a node without state came back under its old raft id");
    leader
        .wait_for(WAIT, |m| m.voters == 3 && m.learners == 0)
        .await
        .expect("B's new incarnation replaced the old one");
    let final_members: BTreeSet<u64> = leader.members().iter().map(|m| m.id).collect();
    assert!(final_members.contains(&new_b) && !final_members.contains(&old_b), "{final_members:?}");
    recorder.abort();
    let history = history.lock().unwrap().clone();
    for configuration in &history {
        let voters = configuration.values().filter(|v| **v).count();
        assert!(voters >= 3, "the voter count dropped to {voters}: {history:?}");
        assert!(
            !(configuration.get(&old_b) == Some(&true) && configuration.get(&new_b) == Some(&true))
                || configuration.len() == 4,
            "both incarnations voters outside the joint change: {history:?}"
        );
    }
    cluster.nodes[b] = Some(kv_b);
    stop_all(cluster).await;
}
