//! The multi-process chaos harness behind `cargo xtask chaos`.
//!
//! One run starts a local tailnet and a cluster of `chaos-node` processes
//! ([`crate::nodes`]: each with its own state directory and its transport
//! behind `ts_transport::Faults`), drives concurrent key-value clients
//! through their line interfaces while a seeded nemesis injects faults,
//! heals everything, and then checks:
//!
//! - the recorded history is linearizable ([`test_support::linearizability`]);
//! - every key's version (the writes applied to it) lies between the
//!   acknowledged writes and the acknowledged plus unknown ones: no
//!   acknowledged write was lost, none was applied twice;
//! - every replica reaches the same state digest at the same applied index,
//!   with every active node a voter of one cluster again;
//! - at no time did two nodes lead, each followed by a majority of its own
//!   voters ([`crate::nodes::LeaderWatch`], several samples a second).
//!
//! Faults ([`FaultKind`]): `kill -9` and restart, the raft state wiped and
//! the node restarted under the same tailnet identity, `SIGSTOP`/`SIGCONT`,
//! a node or the leader cut off, added delay, dropped writes, the tag
//! revoked and restored, a new node started mid-run (one whose stable id
//! sorts lowest, registered before the cluster, and one that sorts
//! highest), a node replaced by a new one, two faults at once (a node cut
//! off while another is killed or wiped), and storage faults. A client call
//! that times out or fails is recorded with an unknown outcome, never as
//! failed.
//!
//! Everything random comes from the run's seed, which the report prints;
//! the timing of processes is not replayable, so a seed replays the same
//! fault schedule and workload, not the same interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{Rng, poll_until};

use crate::nodes::{
    CALL_TIMEOUT, LeaderWatch, Line, Node, NodeSettings, Nodes, Status, lock, ok_of,
};
use crate::tailnet::LocalTailnet;
use test_support::linearizability::{Input, Operation, Output, check, write_bounds};
use test_support::workload::{Client, Outcome, Recorder};

/// The cluster's tag.
const TAG: &str = "tag:chaos";
/// How long the cluster may take to form, or to heal after the faults.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the leader watch samples every node.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Identities registered before the cluster, for `start-lowest`.
const LOWEST_RESERVES: usize = 2;
/// How many nodes beyond `--nodes` new-node faults may add before each
/// start also retires an old node.
const EXTRA_NODES: usize = 2;

/// What one run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `chaos-node` binary.
    pub node_bin: PathBuf,
    /// Nodes in the cluster at the start.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys they share.
    pub keys: usize,
    /// How long the workload and the nemesis run.
    pub duration: Duration,
    /// The seed of everything random.
    pub seed: u64,
    /// Where node logs and the history are kept (else a temporary
    /// directory).
    pub keep_dir: Option<PathBuf>,
    /// The kinds of fault the nemesis picks from (at random, evenly).
    pub faults: Vec<FaultKind>,
    /// Kinds the schedule must contain: each is placed, by the seed, among
    /// the first faults of the run.
    pub require: Vec<FaultKind>,
    /// Nodes build a snapshot after this many log entries (`None`: the
    /// library's default), so that nodes that fall behind, fresh and wiped
    /// ones first of all, catch up by snapshot.
    pub snapshot_every: Option<u64>,
    /// Read with `get-local` instead of linearizable `get`: not
    /// linearizable by design, so the checker should catch stale reads
    /// (a test of the harness itself).
    pub local_reads: bool,
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` a node, restart it from its state directory.
    Kill,
    /// `kill -9` a node, delete its raft state, restart it under the same
    /// tailnet identity.
    Wipe,
    /// `SIGSTOP` a node, later `SIGCONT`.
    Pause,
    /// Cut one node off from the others.
    Partition,
    /// Cut the leader off from the others.
    PartitionLeader,
    /// Hold every write on every node.
    Delay,
    /// Reset a share of every node's writes.
    Drop,
    /// Revoke a node's tag through the tailnet admin API, later restore it.
    Untag,
    /// Start a new node whose stable id sorts below every other (its
    /// identity was registered before the cluster's).
    StartLowest,
    /// Start a new node whose stable id sorts above every other.
    StartHighest,
    /// A new node joins; the old one is untagged and stopped.
    Replace,
    /// Two at once: a node cut off while another is killed (or wiped) and
    /// restarted.
    Double,
    /// The next fsync of a node's raft storage fails: the node must stop
    /// with a fatal error; it is then restarted from its state directory.
    FsyncFail,
    /// Every write of a node's raft storage fails from now on: the node
    /// must stop with a fatal error; it is then restarted.
    WriteFail,
}

impl FaultKind {
    /// The kinds the nemesis picks from by default: every kind.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Kill,
        FaultKind::Wipe,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::PartitionLeader,
        FaultKind::Delay,
        FaultKind::Drop,
        FaultKind::Untag,
        FaultKind::StartLowest,
        FaultKind::StartHighest,
        FaultKind::Replace,
        FaultKind::Double,
        FaultKind::FsyncFail,
        FaultKind::WriteFail,
    ];

    /// Every kind there is, with its name.
    pub const NAMES: [(&'static str, FaultKind); 14] = [
        ("kill", FaultKind::Kill),
        ("wipe", FaultKind::Wipe),
        ("pause", FaultKind::Pause),
        ("partition", FaultKind::Partition),
        ("partition-leader", FaultKind::PartitionLeader),
        ("delay", FaultKind::Delay),
        ("drop", FaultKind::Drop),
        ("untag", FaultKind::Untag),
        ("start-lowest", FaultKind::StartLowest),
        ("start-highest", FaultKind::StartHighest),
        ("replace", FaultKind::Replace),
        ("double", FaultKind::Double),
        ("fsync-fail", FaultKind::FsyncFail),
        ("write-fail", FaultKind::WriteFail),
    ];

    /// The kind called `name` (see [`FaultKind::NAMES`]).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::NAMES.iter().find(|(n, _)| *n == name).map(|(_, kind)| *kind)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        FaultKind::NAMES.iter().find(|(_, k)| *k == self).map_or("?", |(name, _)| name)
    }
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    /// The run's seed.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Operations recorded.
    pub operations: usize,
    /// Of which completed with a known outcome.
    pub completed: usize,
    /// Of which writes with an unknown outcome.
    pub unknown: usize,
    /// Faults injected, in order, each starting with its kind's name.
    pub faults: Vec<String>,
    /// Time from the end of the faults until the active nodes were one
    /// cluster again (`None`: they never were).
    pub heal: Option<Duration>,
    /// The raft term at the end (1 + elections, roughly: faults that bite
    /// make it grow).
    pub term: u64,
    /// Active nodes at the end.
    pub active_at_end: usize,
    /// The index each active node's last snapshot covers, at the end.
    pub snapshot_indexes: Vec<Option<u64>>,
    /// Rounds of the leader watch.
    pub watch_rounds: u64,
    /// The problems found; empty if the run passed.
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many faults of each kind were injected.
    pub fn fault_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for fault in &self.faults {
            let kind = fault.split_whitespace().next().unwrap_or_default().to_owned();
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }

    /// One line: seed, operations, faults, result.
    pub fn summary(&self) -> String {
        let counts = self.fault_counts();
        let faults: Vec<String> = counts.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        format!(
            "seed {} | {} nodes | {} ops ({} ok, {} unknown writes) | faults {} | term {} | {} | {}",
            self.seed,
            self.nodes,
            self.operations,
            self.completed,
            self.unknown,
            faults.join(" "),
            self.term,
            self.heal.map_or("never healed".to_owned(), |h| format!(
                "healed in {:.1} s",
                h.as_secs_f64()
            )),
            if self.passed() { "PASS".to_owned() } else { self.violations.join("; ") },
        )
    }

    /// The report as one JSON object (a line of `--report`).
    pub fn to_json(&self, seconds: f64) -> Value {
        serde_json::json!({
            "seed": self.seed,
            "nodes": self.nodes,
            "passed": self.passed(),
            "operations": self.operations,
            "completed": self.completed,
            "unknown": self.unknown,
            "faults": self.fault_counts(),
            "fault_log": self.faults,
            "heal_s": self.heal.map(|h| h.as_secs_f64()),
            "term": self.term,
            "active_at_end": self.active_at_end,
            "snapshot_indexes": self.snapshot_indexes,
            "watch_rounds": self.watch_rounds,
            "violations": self.violations,
            "seconds": seconds,
        })
    }
}

/// Which fault comes at which position: the required kinds at seeded
/// places among the first ones, the others drawn from `kinds`.
fn forced_slots(require: &[FaultKind], rng: &mut Rng) -> BTreeMap<usize, FaultKind> {
    let mut required = require.to_vec();
    required.sort();
    required.dedup();
    // Seeded shuffle, then slot 2i or 2i + 1 for the i-th.
    for i in (1..required.len()).rev() {
        required.swap(i, rng.below(i as u64 + 1) as usize);
    }
    required
        .into_iter()
        .enumerate()
        .map(|(i, kind)| (2 * i + rng.below(2) as usize, kind))
        .collect()
}

/// One run's moving parts.
struct Run<'a> {
    options: ChaosOptions,
    tailnet: &'a LocalTailnet,
    nodes: Arc<Nodes>,
    /// Registered identities that sort lowest, not started yet.
    reserves: Mutex<Vec<Arc<Node>>>,
    /// Faults injected so far, for the report (also of a run that fails).
    faults: Mutex<Vec<String>>,
    /// Problems the nemesis itself saw (a node that did not go fatal).
    violations: Mutex<Vec<String>>,
}

impl Run<'_> {
    fn random_active(&self, rng: &mut Rng) -> Option<Arc<Node>> {
        rng.pick(&self.nodes.active())
    }

    /// A new node, registered now (so it sorts above every node so far),
    /// started and tagged.
    async fn start_new(&self) -> Result<Arc<Node>, String> {
        let node = self.nodes.add(&format!("chaos-{}", self.nodes.all().len()))?;
        self.nodes.start(self.tailnet, &node).await?;
        Ok(node)
    }

    /// Waits (at most `limit`) until `node` is a voter in the leader's
    /// configuration.
    async fn wait_voter(&self, node: &Node, limit: Duration) -> bool {
        poll_until(limit, Duration::from_millis(250), async || {
            let id = node.status().await.and_then(|s| s.id);
            match (id, self.nodes.leader().await) {
                (Some(id), Some(leader)) => {
                    leader.status().await.is_some_and(|s| s.voters.contains(&id))
                }
                _ => false,
            }
        })
        .await
        .is_ok()
    }

    /// Waits (at most `limit`) until wiping `victim` would leave a majority
    /// of the leader's voters with their state: voters that are the current
    /// incarnation of a running node other than `victim`. The library
    /// promises no acknowledged write is lost while a majority keeps its
    /// state; a wipe that takes the last such majority (the voters after an
    /// untag are two; an earlier wipe's old incarnation is not replaced yet)
    /// is the loss of a quorum, which only a restore repairs
    /// (docs/operations.md), so the nemesis does not schedule it.
    async fn wipe_leaves_majority(&self, victim: &Node, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.nodes.leader().await
                && let Some(status) = leader.status().await
            {
                let mut intact = BTreeSet::new();
                for node in self.nodes.running() {
                    if node.index != victim.index
                        && let Some(id) = node.status().await.and_then(|s| s.id)
                    {
                        intact.insert(id);
                    }
                }
                let kept = status.voters.iter().filter(|id| intact.contains(id)).count();
                if kept * 2 > status.voters.len() {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Keeps the cluster from growing without bound: once new-node faults
    /// have added [`EXTRA_NODES`], each further one retires an old node
    /// (not `keep`, not the leader).
    async fn trim(&self, keep: &Node, rng: &mut Rng) -> Result<Option<String>, String> {
        let active = self.nodes.active();
        if active.len() <= self.options.nodes + EXTRA_NODES {
            return Ok(None);
        }
        let leader = self.nodes.leader().await.map(|n| n.index);
        let candidates: Vec<Arc<Node>> = active
            .into_iter()
            .filter(|n| n.index != keep.index && Some(n.index) != leader)
            .collect();
        let Some(old) = rng.pick(&candidates) else { return Ok(None) };
        self.nodes.retire(self.tailnet, &old).await?;
        Ok(Some(old.hostname.clone()))
    }

    /// Injects one fault of `kind` and heals it; returns its description
    /// (starting with the kind's name), or `None` if it did not apply.
    async fn inject(&self, kind: FaultKind, rng: &mut Rng) -> Result<Option<String>, String> {
        let nodes = &self.nodes;
        // Half the time the victim is the leader, whose faults bite hardest.
        let Some(random_victim) = self.random_active(rng) else { return Ok(None) };
        let victim = match rng.below(2) {
            0 => nodes.leader().await.unwrap_or(random_victim),
            _ => random_victim,
        };
        let v = victim.hostname.clone();
        let hold = rng.millis(1500, 6000);
        let name = kind.name();
        Ok(Some(match kind {
            FaultKind::Kill => {
                nodes.kill(&victim).await;
                tokio::time::sleep(rng.millis(500, 5000)).await;
                nodes.spawn(&victim)?;
                format!("{name} -9 {v}, restart")
            }
            FaultKind::Wipe => {
                if !self.wipe_leaves_majority(&victim, Duration::from_secs(30)).await {
                    return Ok(None);
                }
                nodes.kill(&victim).await;
                nodes.wipe_raft(&victim)?;
                tokio::time::sleep(rng.millis(500, 5000)).await;
                nodes.spawn(&victim)?;
                format!("{name} {v}: kill -9, delete its raft state, restart")
            }
            FaultKind::Pause => {
                nodes.signal(&victim, libc::SIGSTOP);
                tokio::time::sleep(hold).await;
                nodes.signal(&victim, libc::SIGCONT);
                format!("{name} {v} (SIGSTOP/SIGCONT)")
            }
            FaultKind::Partition => {
                nodes.isolate(&victim).await?;
                tokio::time::sleep(hold).await;
                nodes.on_running("fault heal").await?;
                format!("{name} {v} from the others")
            }
            FaultKind::PartitionLeader => {
                let Some(leader) = nodes.leader().await else { return Ok(None) };
                nodes.isolate(&leader).await?;
                tokio::time::sleep(hold).await;
                nodes.on_running("fault heal").await?;
                format!("{name} ({})", leader.hostname)
            }
            FaultKind::Delay => {
                let ms = 20 + rng.below(180);
                nodes.on_running(&format!("fault delay {ms}")).await?;
                tokio::time::sleep(hold).await;
                nodes.on_running("fault heal").await?;
                format!("{name} {ms} ms on every write")
            }
            FaultKind::Drop => {
                let per_mille = 20 + rng.below(130);
                nodes.on_running(&format!("fault drop {per_mille}")).await?;
                tokio::time::sleep(hold).await;
                nodes.on_running("fault heal").await?;
                format!("{name} {per_mille}‰ of writes")
            }
            FaultKind::Untag => {
                nodes.untag(self.tailnet, &victim).await?;
                tokio::time::sleep(hold).await;
                nodes.tag(self.tailnet, &victim).await?;
                format!("{name} {v}, retag")
            }
            FaultKind::StartLowest | FaultKind::StartHighest => {
                let reserve = match kind {
                    FaultKind::StartLowest => lock(&self.reserves).pop(),
                    _ => None,
                };
                let (new, how) = match reserve {
                    Some(node) => {
                        nodes.start(self.tailnet, &node).await?;
                        (node, "sorting lowest")
                    }
                    None if kind == FaultKind::StartLowest => {
                        (self.start_new().await?, "sorting highest: no lowest identity left")
                    }
                    None => (self.start_new().await?, "sorting highest"),
                };
                tokio::time::sleep(hold).await;
                let trimmed = match self.trim(&new, rng).await? {
                    Some(old) => format!(", retire {old} (cluster at its size limit)"),
                    None => String::new(),
                };
                format!("{name} {} ({how}){trimmed}", new.hostname)
            }
            FaultKind::Replace => {
                let new = self.start_new().await?;
                let joined = self.wait_voter(&new, Duration::from_secs(30)).await;
                nodes.retire(self.tailnet, &victim).await?;
                format!(
                    "{name} {v} by {}{}",
                    new.hostname,
                    if joined { "" } else { " (not a voter after 30 s)" }
                )
            }
            FaultKind::Double => {
                let others: Vec<Arc<Node>> =
                    nodes.active().into_iter().filter(|n| n.index != victim.index).collect();
                let Some(cut) = rng.pick(&others) else { return Ok(None) };
                let wipe = rng.below(2) == 0
                    && self.wipe_leaves_majority(&victim, Duration::from_secs(30)).await;
                nodes.isolate(&cut).await?;
                tokio::time::sleep(rng.millis(300, 1500)).await;
                nodes.kill(&victim).await;
                if wipe {
                    nodes.wipe_raft(&victim)?;
                }
                tokio::time::sleep(rng.millis(500, 3000)).await;
                nodes.spawn(&victim)?;
                // The new process starts with no faults: cut it off from
                // the isolated node again, before it looks for its cluster.
                nodes.block_pair(&victim, &cut).await?;
                tokio::time::sleep(hold).await;
                nodes.on_running("fault heal").await?;
                format!(
                    "{name} fault: {} cut off, meanwhile {v} killed{} and restarted",
                    cut.hostname,
                    if wipe { ", its raft state wiped," } else { "" }
                )
            }
            FaultKind::FsyncFail | FaultKind::WriteFail => {
                victim
                    .control(&format!("fault {name}"))
                    .await
                    .map_err(|e| format!("cannot inject {name}: {e}"))?;
                // The fault bites at the node's next log write; one that
                // writes nothing meanwhile (cut off, still joining) cannot
                // fail, but one whose log grew must have.
                let before = victim.status().await.and_then(|s| s.applied_index);
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut fatal = None;
                while fatal.is_none() && Instant::now() < deadline {
                    fatal = victim.status().await.and_then(|s| s.fatal);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let after = victim.status().await.and_then(|s| s.applied_index);
                if fatal.is_none() && after > before {
                    lock(&self.violations).push(format!(
                        "{v} applied {before:?} → {after:?} after `fault {name}` and reported no \
                         fatal error within 15 s"
                    ));
                }
                nodes.kill(&victim).await;
                nodes.spawn(&victim)?;
                format!(
                    "{name} on {v}: {}, restart",
                    fatal.map_or("not fatal".to_owned(), |f| format!("fatal ({f})"))
                )
            }
        }))
    }
}

/// The nemesis: faults one after another (a double fault is two at once),
/// each healed before the next.
async fn nemesis(
    run: &Run<'_>,
    rng: &mut Rng,
    start: Instant,
    until: Instant,
) -> Result<(), String> {
    let forced = forced_slots(&run.options.require, rng);
    let mut slot = 0;
    while Instant::now() + Duration::from_secs(4) < until {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        let kind = match forced.get(&slot) {
            Some(kind) => *kind,
            None => rng.pick(&run.options.faults).ok_or("no fault kinds")?,
        };
        let started = Instant::now();
        if let Some(name) = run.inject(kind, rng).await? {
            let at = (started - start).as_secs_f64();
            lock(&run.faults).push(format!("{name} at {at:.1} s"));
            slot += 1;
        }
    }
    let injected = lock(&run.faults).clone();
    for kind in forced.values() {
        if !injected.iter().any(|f| f.split_whitespace().next() == Some(kind.name())) {
            return Err(format!(
                "the run ended before the required fault {} was injected (run longer)",
                kind.name()
            ));
        }
    }
    Ok(())
}

/// One client: the workload's operations through one active node,
/// reconnecting (maybe to another) after every failure.
async fn client(
    nodes: Arc<Nodes>,
    options: ChaosOptions,
    id: usize,
    until: Instant,
    recorder: Arc<Recorder>,
) {
    let mut client = Client::new(id, options.seed, options.keys, recorder);
    let mut conn: Option<Line> = None;
    while Instant::now() < until {
        let line = match conn.as_mut() {
            Some(line) => line,
            None => {
                let active = nodes.active();
                let Some(node) = active.get(id % active.len().max(1)) else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                match Line::connect(node.local_port).await {
                    Ok(line) => conn.insert(line),
                    Err(_) => {
                        // The node is down; nothing was invoked.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let invocation = client.invoke();
        let key = &invocation.key;
        let request = match &invocation.input {
            Input::Put(value) => format!("put {key} {value}"),
            Input::Cas { expected, new } => {
                format!("cas {key} {} {new}", expected.as_deref().unwrap_or("-"))
            }
            _ if options.local_reads => format!("get-local {key}"),
            _ => format!("get {key}"),
        };
        let outcome = match line.call(&request, CALL_TIMEOUT).await {
            Ok(answer) => Outcome::of_answer(ok_of(answer), &invocation.input),
            // Timed out or the connection broke: the answer, if one comes,
            // can no longer be matched to this call.
            Err(_) => Outcome::Unknown,
        };
        let failed = outcome == Outcome::Failed;
        let unknown = outcome == Outcome::Unknown;
        client.complete(invocation, outcome);
        if failed {
            // Consensus was not running there: nothing happened.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else if unknown {
            // As a real client would, back off a little after a failure,
            // and try another node next time.
            conn = None;
            tokio::time::sleep(client.backoff()).await;
        }
    }
}

/// One run, start to finish; cleans up after itself whatever happens.
pub async fn run(options: ChaosOptions) -> Result<ChaosReport, String> {
    let tailnet = LocalTailnet::start().await.map_err(|e| format!("local tailnet: {e}"))?;
    let work = match &options.keep_dir {
        Some(dir) => {
            let dir = dir.join(format!("seed-{}", options.seed));
            let _ = std::fs::remove_dir_all(&dir);
            dir
        }
        None => tailnet.dir().join("chaos"),
    };
    let settings = NodeSettings {
        bin: options.node_bin.clone(),
        tag: TAG.to_owned(),
        expected_size: options.nodes,
        snapshot_every: options.snapshot_every,
        fault_seed: options.seed,
    };
    let nodes = match Nodes::new(settings, &tailnet, &work) {
        Ok(nodes) => Arc::new(nodes),
        Err(err) => {
            tailnet.stop().await;
            return Err(err);
        }
    };
    let run = Run {
        options,
        tailnet: &tailnet,
        nodes: nodes.clone(),
        reserves: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    };
    let result = drive(&run, &work).await.map_err(|why| {
        let faults = lock(&run.faults);
        format!("{why} (faults: {}; logs in {})", faults.join(", "), work.display())
    });
    nodes.shutdown().await;
    drop(run);
    tailnet.stop().await;
    result
}

async fn drive(run: &Run<'_>, work: &std::path::Path) -> Result<ChaosReport, String> {
    let options = run.options.clone();
    let nodes = &run.nodes;
    // Identities for `start-lowest` register first: control hands out
    // stable ids in registration order. The last one registered is used
    // first, so each start sorts below every node running.
    if options.faults.contains(&FaultKind::StartLowest)
        || options.require.contains(&FaultKind::StartLowest)
    {
        let mut reserves = Vec::new();
        for i in 0..LOWEST_RESERVES {
            let node = nodes.add(&format!("chaos-low-{i}"))?;
            nodes.register(run.tailnet, &node).await?;
            reserves.push(node);
        }
        *lock(&run.reserves) = reserves;
    }
    let first: Vec<Arc<Node>> =
        (0..options.nodes).map(|i| nodes.add(&format!("chaos-{i}"))).collect::<Result<_, _>>()?;
    for node in &first {
        nodes.spawn(node)?;
    }
    for node in &first {
        nodes.tag(run.tailnet, node).await?;
    }
    nodes.settled(SETTLE_TIMEOUT).await?;

    let recorder = Arc::new(Recorder::new());
    let watch = LeaderWatch::start(nodes.clone(), WATCH_EVERY, recorder.start());
    let until = Instant::now() + options.duration;
    let clients: Vec<_> = (0..options.clients)
        .map(|id| tokio::spawn(client(nodes.clone(), options.clone(), id, until, recorder.clone())))
        .collect();
    let mut rng = Rng::new(options.seed);
    let faults = nemesis(run, &mut rng, recorder.start(), until).await;
    // Heal everything, whatever the nemesis was doing.
    for node in nodes.active() {
        nodes.signal(&node, libc::SIGCONT);
        if !node.running() {
            nodes.kill(&node).await;
            nodes.spawn(&node)?;
        }
        nodes.tag(run.tailnet, &node).await?;
    }
    let faults_log = lock(&run.faults).clone();
    for client in clients {
        client.await.map_err(|e| format!("client task: {e}"))?;
    }
    let healing = Instant::now();
    let _ = nodes.on_running("fault heal").await;
    let mut violations = lock(&run.violations).clone();
    // A fault that could not be injected or healed (a node that stopped
    // answering its control lines) is a finding too; the checks still run.
    if let Err(why) = faults {
        violations.push(format!("the nemesis could not go on: {why}"));
    }
    let faults = faults_log;
    let settled = nodes.settled(SETTLE_TIMEOUT).await;
    let heal = settled.is_ok().then(|| healing.elapsed());
    if let Err(why) = &settled {
        violations.push(format!("after the faults: {why}"));
    }

    // Without one cluster the checks still run where a majority answers,
    // with less patience.
    let patience = if settled.is_ok() { SETTLE_TIMEOUT } else { Duration::from_secs(20) };
    let history =
        match final_checks(nodes, &recorder, &options, work, patience, &mut violations).await {
            Ok(history) => history,
            Err(why) => {
                violations.push(format!("the final reads failed: {why}"));
                recorder.history()
            }
        };
    let (watch_rounds, split) = watch.finish().await;
    if let Some(split) = split {
        violations.push(format!("two clusters at once {split}"));
    }
    let mut term = 0;
    let mut snapshot_indexes = Vec::new();
    for node in nodes.active() {
        let status = node.status().await.unwrap_or_else(Status::default);
        term = term.max(status.term);
        snapshot_indexes.push(status.snapshot_index);
    }
    let completed = history.iter().filter(|op| op.outcome.is_some()).count();
    let unknown = history.iter().filter(|op| op.outcome.is_none()).count();
    if completed < 50 {
        violations.push(format!("the workload made too little progress: {completed} operations"));
    }
    if !violations.is_empty() {
        // The tailnet's directory goes when the run ends; a failed run's
        // history and logs must outlive it.
        let kept =
            if options.keep_dir.is_some() { Ok(work.to_owned()) } else { keep(work, options.seed) };
        match kept {
            Ok(dir) => violations.push(format!("history and logs in {}", dir.display())),
            Err(err) => violations.push(format!("history and logs lost: {err}")),
        }
    }
    Ok(ChaosReport {
        seed: options.seed,
        nodes: options.nodes,
        operations: history.len(),
        completed,
        unknown,
        faults,
        heal,
        term,
        active_at_end: nodes.active().len(),
        snapshot_indexes,
        watch_rounds,
        violations,
    })
}

/// Moves a failed run's directory out of the tailnet's (which is deleted when
/// the run ends) to `<temp>/chaos-failed-seed-<seed>-<pid>`; the nodes may
/// still be writing their logs, which a rename does not disturb.
fn keep(work: &std::path::Path, seed: u64) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("chaos-failed-seed-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(work, &dir)?;
    Ok(dir)
}

/// Final reads, then the history, write-count and replica checks.
async fn final_checks(
    nodes: &Nodes,
    recorder: &Recorder,
    options: &ChaosOptions,
    work: &std::path::Path,
    patience: Duration,
    violations: &mut Vec<String>,
) -> Result<Vec<Operation>, String> {
    let mut versions = BTreeMap::new();
    for k in 0..options.keys {
        let key = format!("k{k}");
        let call = recorder.now();
        let value = nodes.settled_call(&format!("get {key}"), patience).await?;
        let output = Output::Value(value.as_str().map(str::to_owned));
        recorder.record(usize::MAX, key.clone(), Input::Get, call, Outcome::Answered(output));
        let version = nodes.settled_call(&format!("version {key}"), patience).await?;
        versions.insert(key, version.as_u64().unwrap_or(0));
    }
    let history = recorder.history();
    let history_file = work.join("history.txt");
    let text: String = history.iter().map(|op| format!("{op:?}\n")).collect();
    std::fs::write(&history_file, text)
        .map_err(|e| format!("write {}: {e}", history_file.display()))?;
    if let Err(violation) = check(&history) {
        // The first line names the key; the history file has the rest.
        let text = violation.to_string();
        violations.push(format!("not linearizable: {}", text.lines().next().unwrap_or_default()));
    }
    // The history must constrain the checker: a read answered with a value
    // nobody wrote has to fail it.
    let mut corrupted = history.clone();
    if let Some(read) =
        corrupted.iter_mut().find(|op| op.input == Input::Get && op.outcome.is_some())
    {
        read.outcome =
            read.outcome.take().map(|(t, _)| (t, Output::Value(Some("never-written".to_owned()))));
        if check(&corrupted).is_ok() {
            violations.push("the checker accepted a corrupted history".to_owned());
        }
    }
    // Versions: acknowledged writes ≤ applied writes ≤ acknowledged + unknown.
    for (key, version) in &versions {
        let (acked, unknown) = write_bounds(&history, key);
        if *version < acked {
            violations.push(format!(
                "{key}: {acked} acknowledged writes but only {version} applied (a write was lost)"
            ));
        }
        if *version > acked + unknown {
            violations.push(format!(
                "{key}: {version} writes applied but only {acked} acknowledged and {unknown} unknown (a write was applied twice)"
            ));
        }
    }
    // Replicas: the same digest at the same applied index.
    if let Err(why) = nodes.same_state(patience.min(Duration::from_secs(30))).await {
        violations.push(why);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_parse_by_name_and_the_schedule_follows_the_seed() {
        for (name, kind) in FaultKind::NAMES {
            assert_eq!(FaultKind::from_name(name), Some(kind), "{name}");
            assert_eq!(kind.name(), name);
        }
        assert_eq!(FaultKind::from_name("meteor"), None);
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..32).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn required_faults_take_early_slots_chosen_by_the_seed() {
        let require = [FaultKind::Wipe, FaultKind::StartLowest, FaultKind::Wipe];
        let slots = |seed| forced_slots(&require, &mut Rng::new(seed));
        for seed in 0..50 {
            let forced = slots(seed);
            assert_eq!(forced, slots(seed), "seed {seed} replays");
            let mut kinds: Vec<FaultKind> = forced.values().copied().collect();
            kinds.sort();
            assert_eq!(kinds, vec![FaultKind::Wipe, FaultKind::StartLowest]);
            assert!(forced.keys().all(|slot| *slot < 4), "{forced:?}");
        }
        assert!((0..50).map(slots).collect::<std::collections::BTreeSet<_>>().len() > 1);
    }
}
