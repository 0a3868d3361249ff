//! A short nemesis run in-process: the facade on the in-memory network with
//! durable storage, concurrent key-value clients, and random faults (a node
//! isolated, the leader cut off, a node crashed and restarted from its state
//! directory). Afterwards the recorded history must be linearizable, every
//! key's applied writes must match the acknowledged ones (none lost, none
//! doubled), and every replica must hold the same state.
//!
//! Each node runs on a tokio runtime of its own, and every call to it runs
//! there. A crash shuts that runtime down without calling `stop`: every task
//! of the node (raft, its servers, calls in flight) is dropped wherever it
//! was, its listeners and connections go with them, and only what its
//! storage had committed survives, as when a process dies.
//!
//! The seed is printed; `NEMESIS_SEED=<n>` replays a run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::{Config, Consensus, Consistency, StopMode, Timing};
use test_support::cluster::{self, Tailnet};
use test_support::kv::{KvCommand, KvQuery, KvStore};
use test_support::linearizability::{Input, Output, check, write_bounds};
use test_support::workload::{Client, Outcome, Recorder};
use test_support::{Rng, eventually_every, fast_timing, seed_from_env};
use tokio::runtime::{Handle, Runtime};
use ts_transport::MemNetwork;

const NODES: usize = 3;
const CLIENTS: usize = 4;
const KEYS: usize = 3;
const RUN: Duration = Duration::from_secs(8);
const TAG: &str = "tag:nemesis";

/// A running node: the handle, and the runtime all of its tasks live on.
struct Running {
    node: Consensus<KvStore>,
    runtime: Runtime,
}

/// The nodes as processes: each on a runtime of its own, which a crash
/// shuts down. (test-support's `MemCluster` stops its nodes, and runs them
/// on the test's runtime; the nodes here start as it starts them.)
struct Cluster {
    net: MemNetwork,
    tailnet: Tailnet,
    dirs: tempfile::TempDir,
    nodes: Vec<Mutex<Option<Running>>>,
}

async fn start_node(
    net: MemNetwork,
    tailnet: Tailnet,
    dir: PathBuf,
    i: usize,
) -> Consensus<KvStore> {
    let config = Config {
        monitor_port: None,
        state_dir: Some(dir),
        timing: Timing {
            election: (Duration::from_millis(400), Duration::from_millis(800)),
            call_deadline: Duration::from_secs(3),
            start_timeout: Duration::from_secs(30),
            reconcile_every: Duration::from_secs(1),
            max_staleness: Duration::from_secs(60),
            ..fast_timing()
        },
        ..Config::default()
    };
    let discovery = tailnet.discovery(i);
    cluster::start_node(&net, &tailnet, i, discovery, KvStore::default(), NODES, config)
        .await
        .unwrap_or_else(|e| panic!("node {i} starts: {e}"))
}

impl Cluster {
    /// Starts node `i` from its state directory on a runtime of its own.
    async fn start(&self, i: usize) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("nemesis-node-{i}"))
            .enable_all()
            .build()
            .expect("a runtime for the node");
        let dir = self.dirs.path().join(format!("n{i}"));
        let starting = start_node(self.net.clone(), self.tailnet.clone(), dir, i);
        let node = runtime.spawn(starting).await.expect("node starts");
        *self.nodes[i].lock().unwrap() = Some(Running { node, runtime });
    }

    /// The handle of node `i` and its runtime, if it runs.
    fn node(&self, i: usize) -> Option<(Consensus<KvStore>, Handle)> {
        self.nodes[i].lock().unwrap().as_ref().map(|r| (r.node.clone(), r.runtime.handle().clone()))
    }

    /// Runs `call` on node `i`'s runtime, as a request handled by that
    /// process would; `None` if the node is down or crashed meanwhile.
    async fn on<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        i: usize,
        call: impl FnOnce(Consensus<KvStore>) -> F,
    ) -> Option<T> {
        let (node, handle) = self.node(i)?;
        handle.spawn(call(node)).await.ok()
    }

    /// Crashes node `i`: its runtime is shut down with every task on it,
    /// mid-flight; `stop` is never called.
    async fn crash(&self, i: usize) {
        let running = self.nodes[i].lock().unwrap().take();
        if let Some(Running { node, runtime }) = running {
            drop(node);
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
                .await
                .expect("runtime shuts down");
        }
    }

    fn metrics(&self, i: usize) -> Option<consensus::Metrics> {
        self.node(i).map(|(node, _)| node.metrics())
    }
}

/// One client: the workload's operations through one node, each run on
/// that node's runtime. A call the node did not answer (an error, or a
/// crash mid-call) has an unknown outcome: it may still take effect.
async fn client(cluster: Arc<Cluster>, id: usize, seed: u64, recorder: Arc<Recorder>) {
    let mut client = Client::new(id, seed, KEYS, recorder.clone());
    let target = id % NODES;
    while recorder.start().elapsed() < RUN {
        if cluster.node(target).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let invocation = client.invoke();
        let key = invocation.key.clone();
        // `None`: the node crashed during the call (or was down).
        let result: Option<Result<Output, consensus::Error>> =
            match &invocation.input {
                Input::Put(value) => {
                    let command = KvCommand::Put { key, value: value.clone() };
                    cluster
                        .on(target, move |node| async move {
                            node.execute(command).await.map(Output::from)
                        })
                        .await
                }
                Input::Cas { expected, new } => {
                    let command =
                        KvCommand::Cas { key, expected: expected.clone(), value: new.clone() };
                    cluster
                        .on(target, move |node| async move {
                            node.execute(command).await.map(Output::from)
                        })
                        .await
                }
                _ => {
                    let query = KvQuery::Get { key };
                    cluster
                        .on(target, move |node| async move {
                            node.read(query, Consistency::Linearizable)
                                .await
                                .map(|v| Output::Value(v.as_str().map(str::to_owned)))
                        })
                        .await
                }
            };
        let outcome = match result {
            Some(Ok(output)) => Outcome::Answered(output),
            // Known not applied: left out of the history, so one applied
            // after all is a value from nowhere to the checker.
            Some(Err(consensus::Error::NotApplied(_))) => Outcome::Failed,
            Some(Err(_)) | None => Outcome::Unknown,
        };
        let unknown = outcome == Outcome::Unknown;
        client.complete(invocation, outcome);
        if unknown {
            tokio::time::sleep(client.backoff()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_nemesis_run_stays_linearizable_and_replicas_converge() {
    let seed = seed_from_env("NEMESIS_SEED");
    let cluster = Arc::new(Cluster {
        net: MemNetwork::new(),
        tailnet: Tailnet::with_names(
            TAG,
            9,
            (0..NODES).map(|i| (format!("nemesis-{i}"), format!("nemesis-{i}"))),
        ),
        dirs: tempfile::tempdir().unwrap(),
        nodes: (0..NODES).map(|_| Mutex::new(None)).collect(),
    });
    let starts: Vec<_> = (0..NODES)
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.start(i).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap();
    }
    let recorder = Arc::new(Recorder::new());
    let start = recorder.start();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(cluster.clone(), id, seed, recorder.clone())))
        .collect();

    // The nemesis.
    let mut rng = Rng::new(seed);
    let mut faults = Vec::new();
    while start.elapsed() < RUN - Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
        let victim = rng.below(NODES as u64) as usize;
        match rng.below(3) {
            0 => {
                faults.push(format!("isolate {victim}"));
                cluster.net.isolate(cluster.tailnet.ip(victim));
                tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
                cluster.net.heal_all();
            }
            1 => {
                let leader = (0..NODES).find(|&i| {
                    cluster.metrics(i).is_some_and(|m| m.role == consensus::Role::Leader)
                });
                if let Some(leader) = leader {
                    faults.push(format!("cut off leader {leader}"));
                    cluster.net.isolate(cluster.tailnet.ip(leader));
                    tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
                    cluster.net.heal_all();
                }
            }
            _ => {
                faults.push(format!("crash and restart {victim}"));
                cluster.crash(victim).await;
                tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
                cluster.start(victim).await;
            }
        }
    }
    cluster.net.heal_all();
    for client in clients {
        client.await.unwrap();
    }
    eprintln!("faults: {faults:?}");

    // Final linearizable reads of every key join the history.
    for k in 0..KEYS {
        let key = format!("k{k}");
        let call = recorder.now();
        // Right after healing, node 0 may still be waiting for a leader or
        // catching up past one call's deadline: a read that fails changes
        // nothing, so it is tried again (a seed that failed the gate:
        // 1795996894352690673, "applying up to read index: no outcome").
        let what = format!("final read of {key}");
        let value = eventually_every(
            Duration::from_secs(30),
            Duration::from_millis(100),
            what,
            async || {
                let query = KvQuery::Get { key: key.clone() };
                cluster
                .on(0, move |node| async move { node.read(query, Consistency::Linearizable).await })
                .await
                .expect("node 0 runs")
                .inspect_err(|err| eprintln!("final read of {key} failed, trying again: {err}"))
            },
        )
        .await;
        let output = Output::Value(value.as_str().map(str::to_owned));
        recorder.record(99, key, Input::Get, call, Outcome::Answered(output));
    }
    let history = recorder.history();
    let completed = history.iter().filter(|op| op.outcome.is_some()).count();
    eprintln!("{} operations, {completed} with a known outcome", history.len());
    assert!(completed > 50, "the workload made too little progress: {completed} operations");
    if let Err(violation) = check(&history) {
        panic!("seed {seed}: not linearizable: {violation}");
    }
    // The history really constrains the checker: one read answered with a
    // value nobody wrote must make it fail.
    let mut corrupted = history.clone();
    let read = corrupted
        .iter_mut()
        .find(|op| op.input == Input::Get && op.outcome.is_some())
        .expect("a completed read");
    read.outcome =
        read.outcome.take().map(|(t, _)| (t, Output::Value(Some("never-written".to_owned()))));
    assert!(check(&corrupted).is_err(), "seed {seed}: the checker accepted a corrupted history");

    // Every replica converges to the same state.
    let leader = (0..NODES)
        .find(|&i| cluster.metrics(i).is_some_and(|m| m.role == consensus::Role::Leader))
        .expect("leader");
    let target = cluster.metrics(leader).and_then(|m| m.last_log_index).unwrap_or(0);
    for i in 0..NODES {
        cluster
            .on(i, move |node| async move {
                node.wait_for(Duration::from_secs(20), |m| m.applied_index >= Some(target)).await
            })
            .await
            .expect("node runs")
            .expect("replica catches up");
    }
    // Replicas at one applied index hold one state. The index is read
    // before and after each round of reads, and a round counts only if
    // every node was at the same index throughout: a write given up at its
    // deadline may still be appended after the workload ended, and a node
    // that applied it would differ from one that had not yet (seed
    // 1796031580222224849 compared values across a late entry).
    let (index, by_node) = eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "every replica at one applied index",
        async || {
            let applied = || -> Vec<Option<u64>> {
                (0..NODES).map(|i| cluster.metrics(i).and_then(|m| m.applied_index)).collect()
            };
            let before = applied();
            let mut by_node = Vec::new();
            for i in 0..NODES {
                let mut values = Vec::new();
                for k in 0..KEYS {
                    let query = KvQuery::Get { key: format!("k{k}") };
                    let value = cluster
                        .on(
                            i,
                            move |node| async move { node.read(query, Consistency::Local).await },
                        )
                        .await
                        .expect("node runs")
                        .unwrap();
                    values.push(value.to_string());
                }
                by_node.push(values);
            }
            let after = applied();
            let one = before == after && after.iter().all(|a| a.is_some() && *a == after[0]);
            if one {
                Ok((after[0], by_node))
            } else {
                Err(format!("applied {before:?}, then {after:?}"))
            }
        },
    )
    .await;
    for k in 0..KEYS {
        let values: BTreeSet<&String> = by_node.iter().map(|values| &values[k]).collect();
        assert_eq!(
            values.len(),
            1,
            "seed {seed}: replicas disagree on k{k} at applied index {index:?}: {values:?}"
        );
    }
    // Versions count the writes applied to each key: between the
    // acknowledged writes (none lost) and those plus the unknown ones (none
    // applied twice).
    for k in 0..KEYS {
        let key = format!("k{k}");
        let query = KvQuery::Version { key: key.clone() };
        let version = cluster
            .on(0, move |node| async move { node.read(query, Consistency::Linearizable).await })
            .await
            .expect("node 0 runs")
            .expect("version read")
            .as_u64()
            .expect("a number");
        let (acked, unknown) = write_bounds(&history, &key);
        assert!(
            (acked..=acked + unknown).contains(&version),
            "seed {seed}: {key} has {version} writes applied, {acked} acknowledged, {unknown} unknown"
        );
    }
    for i in 0..NODES {
        cluster
            .on(i, |node| async move { node.stop(StopMode::Stay).await })
            .await
            .expect("node runs")
            .unwrap();
        cluster.crash(i).await;
    }
}
