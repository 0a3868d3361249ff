//! The multi-process chaos harness behind `cargo xtask chaos`.
//!
//! One run starts a local tailnet and a cluster of `kv` example processes
//! (each with its own state directory and its transport behind
//! `ts_transport::Faults`), drives concurrent key-value clients through
//! their line interfaces while a seeded nemesis injects one fault at a time,
//! heals everything, and then checks:
//!
//! - the recorded history is linearizable ([`crate::linearizability`]);
//! - every key's version (the writes applied to it) lies between the
//!   acknowledged writes and the acknowledged plus unknown ones: no
//!   acknowledged write was lost, none was applied twice;
//! - every replica reaches the same state digest at the same applied index,
//!   with every node a voter again.
//!
//! Faults: `kill -9` and restart, `SIGSTOP`/`SIGCONT`, a node or the leader
//! cut off from the others, added delay, dropped writes, and the tag revoked
//! and restored through the tailnet's admin API. A client call that times
//! out or fails is recorded with an unknown outcome, never as failed.
//!
//! Everything random comes from the run's seed, which the report prints;
//! the timing of processes is not replayable, so a seed replays the same
//! fault schedule and workload, not the same interleaving.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

use crate::linearizability::{Input, Operation, Output, check, write_bounds};
use crate::tailnet::LocalTailnet;

/// The cluster's tag.
const TAG: &str = "tag:chaos";
/// How long a client waits for one answer before it records the outcome as
/// unknown and reconnects.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a control call (status, fault) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the cluster may take to form, or to heal after the faults.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest answer line read from a node.
const MAX_LINE: usize = 1 << 20;

/// What one run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `kv` example binary.
    pub kv_bin: PathBuf,
    /// Nodes in the cluster.
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
    /// Read with `get-local` instead of linearizable `get`: not
    /// linearizable by design, so the checker should catch stale reads
    /// (a test of the harness itself).
    pub local_reads: bool,
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` a node, restart it from its state directory.
    Kill,
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
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::PartitionLeader,
        FaultKind::Delay,
        FaultKind::Drop,
        FaultKind::Untag,
    ];

    /// The kind called `name` (`kill`, `pause`, `partition`,
    /// `partition-leader`, `delay`, `drop`, `untag`).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        Some(match name {
            "kill" => FaultKind::Kill,
            "pause" => FaultKind::Pause,
            "partition" => FaultKind::Partition,
            "partition-leader" => FaultKind::PartitionLeader,
            "delay" => FaultKind::Delay,
            "drop" => FaultKind::Drop,
            "untag" => FaultKind::Untag,
            _ => return None,
        })
    }
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct ChaosReport {
    /// The run's seed.
    pub seed: u64,
    /// Operations recorded.
    pub operations: usize,
    /// Of which completed with a known outcome.
    pub completed: usize,
    /// Of which writes with an unknown outcome.
    pub unknown: usize,
    /// Faults injected, in order.
    pub faults: Vec<String>,
    /// Time from the end of the faults until every node was a voter again.
    pub heal: Duration,
    /// The raft term at the end (1 + elections, roughly: faults that bite
    /// make it grow).
    pub term: u64,
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
            "seed {} | {} ops ({} ok, {} unknown writes) | faults {} | term {} | healed in {:.1} s | {}",
            self.seed,
            self.operations,
            self.completed,
            self.unknown,
            faults.join(" "),
            self.term,
            self.heal.as_secs_f64(),
            if self.passed() { "PASS".to_owned() } else { self.violations.join("; ") },
        )
    }
}

/// xorshift64*, seeded per use.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// One kv process.
struct Node {
    hostname: String,
    local_port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    ips: Vec<IpAddr>,
    paused: bool,
}

/// The processes of one run, behind a lock the clients share.
struct Cluster {
    options: ChaosOptions,
    control_url: String,
    nodes: Vec<Mutex<Node>>,
    /// Faults injected so far, for the report (also of a run that fails).
    faults: Mutex<Vec<String>>,
}

impl Cluster {
    fn spawn(&self, i: usize) -> Result<(), String> {
        let mut node = lock(&self.nodes[i]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("open {}: {e}", node.log.display()))?;
        let child = Command::new(&self.options.kv_bin)
            .args(["--hostname", &node.hostname, "--control-url", &self.control_url])
            .args(["--tag", TAG, "--expected-size", &self.options.nodes.to_string()])
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(["--local-port", &node.local_port.to_string()])
            .args(["--fault-injection", &(self.options.seed ^ i as u64).to_string()])
            .arg("--exit-on-stdin-eof")
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_DISABLE_PORTMAPPER", "1")
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".to_owned()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.options.kv_bin.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `kill -9`, and reaps the process.
    async fn kill(&self, i: usize) {
        let child = lock(&self.nodes[i]).child.take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        lock(&self.nodes[i]).paused = false;
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let mut node = lock(&self.nodes[i]);
        if let Some(pid) = node.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) with a pid this process spawned and has not
            // reaped, so the pid cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
            node.paused = signal == libc::SIGSTOP;
        }
    }

    fn port(&self, i: usize) -> u16 {
        lock(&self.nodes[i]).local_port
    }

    async fn control(&self, i: usize, line: &str) -> Result<Value, String> {
        call_once(self.port(i), line, CONTROL_TIMEOUT).await
    }

    /// A call that must succeed eventually (the final reads): retried on
    /// any node until `timeout` runs out.
    async fn settled_call(&self, line: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        loop {
            match call_once(self.port(i % self.nodes.len()), line, CALL_TIMEOUT).await {
                Ok(value) => return Ok(value),
                Err(err) if Instant::now() >= deadline => {
                    return Err(format!("{line:?} failed for {timeout:?}: {err}"));
                }
                Err(_) => {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Node `i`'s metrics, if it answers.
    async fn metrics(&self, i: usize) -> Option<Value> {
        self.control(i, "status").await.ok().map(|status| status["metrics"].clone())
    }

    /// The node that says it leads in the highest term (a cut-off former
    /// leader may still say so in an older one), if any answers so.
    async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.nodes.len() {
            if let Some(m) = self.metrics(i).await.filter(|m| m["role"] == "leader") {
                let term = m["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Cuts node `v` off from every other node, on both sides.
    async fn isolate(&self, v: usize) -> Result<(), String> {
        for j in (0..self.nodes.len()).filter(|&j| j != v) {
            let (vi, ji) = (lock(&self.nodes[v]).ips.clone(), lock(&self.nodes[j]).ips.clone());
            for ip in &ji {
                self.control(v, &format!("fault block {ip}")).await?;
            }
            for ip in &vi {
                self.control(j, &format!("fault block {ip}")).await?;
            }
        }
        Ok(())
    }

    async fn on_all(&self, line: &str) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.control(i, line).await?;
        }
        Ok(())
    }

    /// Waits until every node answers as a voter of one cluster with one
    /// leader.
    async fn settled(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut leaders = Vec::new();
            let mut ok = true;
            last.clear();
            for i in 0..self.nodes.len() {
                match self.metrics(i).await {
                    Some(m) => {
                        let _ = write!(
                            last,
                            "[{i}: {} leader {} voters {}] ",
                            m["role"], m["leader"], m["voters"]
                        );
                        ok &= m["voters"] == self.nodes.len()
                            && m["leader"].is_u64()
                            && m["role"] != "learner";
                        leaders.push(m["leader"].clone());
                    }
                    None => {
                        let _ = write!(last, "[{i}: no answer] ");
                        ok = false;
                    }
                }
            }
            leaders.dedup();
            if ok && leaders.len() == 1 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("cluster not settled after {timeout:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes every node's stdin (they stop), then kills what is left.
    async fn shutdown(&self) {
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGCONT);
            let child = lock(&self.nodes[i]).child.take();
            if let Some(mut child) = child {
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A line connection to one node.
struct Line {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Line {
    async fn connect(port: u16) -> Result<Line, String> {
        let stream = tokio::time::timeout(CONTROL_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| format!("connect to 127.0.0.1:{port} timed out"))?
            .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
        let (read, write) = stream.into_split();
        Ok(Line { read: BufReader::new(read), write })
    }

    /// Sends one line and reads the answer, or fails: the connection is
    /// then unusable.
    async fn call(&mut self, line: &str, timeout: Duration) -> Result<Value, String> {
        let exchange = async {
            self.write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            loop {
                let buf = self.read.fill_buf().await.map_err(|e| e.to_string())?;
                if buf.is_empty() {
                    return Err("connection closed".to_owned());
                }
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    answer.push_str(&String::from_utf8_lossy(&buf[..end]));
                    self.read.consume(end + 1);
                    break;
                }
                let n = buf.len();
                answer.push_str(&String::from_utf8_lossy(buf));
                self.read.consume(n);
                if answer.len() > MAX_LINE {
                    return Err("answer line too long".to_owned());
                }
            }
            serde_json::from_str::<Value>(&answer)
                .map_err(|e| format!("bad answer {answer:?}: {e}"))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer to {line:?} within {timeout:?}"))?
    }
}

/// One call on a fresh connection; `{"ok": v}` gives `v`.
async fn call_once(port: u16, line: &str, timeout: Duration) -> Result<Value, String> {
    let mut conn = Line::connect(port).await?;
    let answer = conn.call(line, timeout).await?;
    ok_of(answer)
}

fn ok_of(mut answer: Value) -> Result<Value, String> {
    match answer.get_mut("ok") {
        Some(value) => Ok(value.take()),
        None => Err(answer["error"].as_str().unwrap_or("malformed answer").to_owned()),
    }
}

/// A write's answer as the checker sees it.
fn write_output(value: &Value) -> Option<Output> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    if let Some(prev) = value.get("previous") {
        return Some(Output::Previous(text(prev)));
    }
    value.get("mismatch").map(|cur| Output::Mismatch(text(cur)))
}

struct Recorder {
    start: Instant,
    history: Mutex<Vec<Operation>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// One client: random puts, compare-and-sets and reads through one node,
/// reconnecting after every failure. Values are unique (`c<client>-<n>`).
async fn client(cluster: Arc<Cluster>, id: usize, until: Instant, recorder: Arc<Recorder>) {
    let mut rng = Rng::new(cluster.options.seed ^ (0x5eed_0000 + id as u64));
    let node = id % cluster.nodes.len();
    let keys = cluster.options.keys as u64;
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut conn: Option<Line> = None;
    let mut n = 0u64;
    while Instant::now() < until {
        if conn.is_none() {
            match Line::connect(cluster.port(node)).await {
                Ok(line) => conn = Some(line),
                Err(_) => {
                    // The node is down; nothing was invoked.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let key = format!("k{}", rng.below(keys));
        n += 1;
        let value = format!("c{id}-{n}");
        let (line, input) = match rng.below(10) {
            0..=3 => (format!("put {key} {value}"), Input::Put(value)),
            4..=6 => {
                let expected = match rng.below(3) {
                    0 => None,
                    _ => last_seen.get(&key).cloned().flatten(),
                };
                let old = expected.clone().unwrap_or_else(|| "-".to_owned());
                (format!("cas {key} {old} {value}"), Input::Cas { expected, new: value })
            }
            _ if cluster.options.local_reads => (format!("get-local {key}"), Input::Get),
            _ => (format!("get {key}"), Input::Get),
        };
        let call = recorder.now();
        let answer = match conn.as_mut() {
            Some(c) => c.call(&line, CALL_TIMEOUT).await,
            None => continue,
        };
        let ret = recorder.now();
        let output = match answer {
            Ok(answer) => match (ok_of(answer), &input) {
                (Ok(value), Input::Get) => Some(Output::Value(value.as_str().map(str::to_owned))),
                (Ok(value), _) => write_output(&value),
                (Err(_), _) => None,
            },
            Err(_) => {
                // Timed out or the connection broke: the answer, if one
                // comes, can no longer be matched to this call.
                conn = None;
                None
            }
        };
        match &output {
            Some(Output::Value(v) | Output::Previous(v) | Output::Mismatch(v)) => {
                let after = match (&input, &output) {
                    (Input::Put(w), _) => Some(w.clone()),
                    (Input::Cas { new, .. }, Some(Output::Previous(_))) => Some(new.clone()),
                    _ => v.clone(),
                };
                last_seen.insert(key.clone(), after);
            }
            None => {}
        }
        if output.is_none() {
            // As a real client would, back off a little after a failure.
            tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
        }
        let operation = match output {
            Some(output) => {
                Operation { client: id, key, call, outcome: Some((ret, output)), input }
            }
            // A read that failed constrains nothing.
            None if input == Input::Get => continue,
            None => Operation { client: id, key, call, outcome: None, input },
        };
        lock(&recorder.history).push(operation);
    }
}

/// The nemesis: one fault at a time, each healed before the next.
async fn nemesis(
    cluster: &Cluster,
    tailnet: &LocalTailnet,
    rng: &mut Rng,
    start: Instant,
    until: Instant,
) -> Result<(), String> {
    let n = cluster.nodes.len();
    while Instant::now() + Duration::from_secs(4) < until {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        // Half the time the victim is the leader, whose faults bite hardest.
        let random_victim = rng.below(n as u64) as usize;
        let victim = match rng.below(2) {
            0 => cluster.leader().await.unwrap_or(random_victim),
            _ => random_victim,
        };
        let hold = rng.millis(1500, 6000);
        let started = Instant::now();
        let kinds = &cluster.options.faults;
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let name = match kind {
            FaultKind::Kill => {
                cluster.kill(victim).await;
                tokio::time::sleep(rng.millis(500, 5000)).await;
                cluster.spawn(victim)?;
                format!("kill -9 node {victim}, restart")
            }
            FaultKind::Pause => {
                cluster.signal(victim, libc::SIGSTOP);
                tokio::time::sleep(hold).await;
                cluster.signal(victim, libc::SIGCONT);
                format!("pause node {victim} (SIGSTOP/SIGCONT)")
            }
            FaultKind::Partition => {
                cluster.isolate(victim).await?;
                tokio::time::sleep(hold).await;
                cluster.on_all("fault heal").await?;
                format!("partition node {victim} from the others")
            }
            FaultKind::PartitionLeader => {
                let Some(leader) = cluster.leader().await else { continue };
                cluster.isolate(leader).await?;
                tokio::time::sleep(hold).await;
                cluster.on_all("fault heal").await?;
                format!("partition the leader (node {leader})")
            }
            FaultKind::Delay => {
                let ms = 20 + rng.below(180);
                cluster.on_all(&format!("fault delay {ms}")).await?;
                tokio::time::sleep(hold).await;
                cluster.on_all("fault heal").await?;
                format!("delay {ms} ms on every write")
            }
            FaultKind::Drop => {
                let per_mille = 20 + rng.below(130);
                cluster.on_all(&format!("fault drop {per_mille}")).await?;
                tokio::time::sleep(hold).await;
                cluster.on_all("fault heal").await?;
                format!("drop {per_mille}‰ of writes")
            }
            FaultKind::Untag => {
                let hostname = lock(&cluster.nodes[victim]).hostname.clone();
                tailnet.set_tags(&hostname, &[]).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                tailnet.set_tags(&hostname, &[TAG]).await.map_err(|e| e.to_string())?;
                format!("untag node {victim}, retag")
            }
        };
        let at = (started - start).as_secs_f64();
        lock(&cluster.faults).push(format!("{name} at {at:.1} s"));
    }
    Ok(())
}

/// A free port on 127.0.0.1 (another process could take it before the
/// node binds it; the node then fails to start and the run says so).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// One run, start to finish; cleans up after itself whatever happens.
pub async fn run(options: ChaosOptions) -> Result<ChaosReport, String> {
    let tailnet = LocalTailnet::start().await.map_err(|e| format!("local tailnet: {e}"))?;
    let work = match &options.keep_dir {
        Some(dir) => {
            let dir = dir.join(format!("seed-{}", options.seed));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            dir
        }
        None => tailnet.dir().join("chaos"),
    };
    let mut nodes = Vec::new();
    for i in 0..options.nodes {
        nodes.push(Mutex::new(Node {
            hostname: format!("chaos-{i}"),
            local_port: free_port()?,
            state_dir: work.join(format!("node-{i}")),
            log: work.join(format!("node-{i}.log")),
            child: None,
            ips: Vec::new(),
            paused: false,
        }));
    }
    let cluster = Arc::new(Cluster {
        options,
        control_url: tailnet.control_url.clone(),
        nodes,
        faults: Mutex::new(Vec::new()),
    });
    let result = drive(&cluster, &tailnet, &work).await.map_err(|why| {
        let faults = lock(&cluster.faults);
        format!("{why} (faults: {}; logs in {})", faults.join(", "), work.display())
    });
    cluster.shutdown().await;
    tailnet.stop().await;
    result
}

async fn drive(
    cluster: &Arc<Cluster>,
    tailnet: &LocalTailnet,
    work: &Path,
) -> Result<ChaosReport, String> {
    let options = cluster.options.clone();
    std::fs::create_dir_all(work).map_err(|e| format!("create {}: {e}", work.display()))?;
    for i in 0..options.nodes {
        cluster.spawn(i)?;
    }
    // Tag each node once control knows it, and learn its addresses.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut tagged = vec![false; options.nodes];
    while tagged.iter().any(|t| !t) {
        if Instant::now() >= deadline {
            return Err("nodes did not register with control".to_owned());
        }
        for admin in tailnet.nodes().await.map_err(|e| e.to_string())? {
            let Some(i) =
                (0..options.nodes).find(|&i| lock(&cluster.nodes[i]).hostname == admin.hostname)
            else {
                continue;
            };
            if !tagged[i] {
                tailnet.set_tags(&admin.hostname, &[TAG]).await.map_err(|e| e.to_string())?;
                lock(&cluster.nodes[i]).ips =
                    admin.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                tagged[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.settled(SETTLE_TIMEOUT).await?;

    let recorder = Arc::new(Recorder { start: Instant::now(), history: Mutex::new(Vec::new()) });
    let until = Instant::now() + options.duration;
    let clients: Vec<_> = (0..options.clients)
        .map(|id| tokio::spawn(client(cluster.clone(), id, until, recorder.clone())))
        .collect();
    let mut rng = Rng::new(options.seed);
    let faults = nemesis(cluster, tailnet, &mut rng, recorder.start, until).await;
    // Heal everything, whatever the nemesis was doing.
    for i in 0..options.nodes {
        cluster.signal(i, libc::SIGCONT);
        let dead = lock(&cluster.nodes[i])
            .child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if dead {
            cluster.kill(i).await;
            cluster.spawn(i)?;
        }
        let hostname = lock(&cluster.nodes[i]).hostname.clone();
        tailnet.set_tags(&hostname, &[TAG]).await.map_err(|e| e.to_string())?;
    }
    faults?;
    let faults = lock(&cluster.faults).clone();
    for client in clients {
        client.await.map_err(|e| format!("client task: {e}"))?;
    }
    let healing = Instant::now();
    let _ = cluster.on_all("fault heal").await;
    cluster.settled(SETTLE_TIMEOUT).await.map_err(|e| format!("after the faults: {e}"))?;
    let heal = healing.elapsed();

    let mut violations = Vec::new();
    // Final linearizable reads and versions of every key.
    let mut versions = BTreeMap::new();
    for k in 0..options.keys {
        let key = format!("k{k}");
        let call = recorder.now();
        let value = cluster.settled_call(&format!("get {key}"), SETTLE_TIMEOUT).await?;
        lock(&recorder.history).push(Operation {
            client: usize::MAX,
            key: key.clone(),
            call,
            outcome: Some((recorder.now(), Output::Value(value.as_str().map(str::to_owned)))),
            input: Input::Get,
        });
        let version = cluster.settled_call(&format!("version {key}"), SETTLE_TIMEOUT).await?;
        versions.insert(key, version.as_u64().unwrap_or(0));
    }
    let history = lock(&recorder.history).clone();
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
    if let Err(why) = same_state(cluster).await {
        violations.push(why);
    }
    let term = cluster.metrics(0).await.and_then(|m| m["term"].as_u64()).unwrap_or(0);
    let completed = history.iter().filter(|op| op.outcome.is_some()).count();
    let unknown = history.iter().filter(|op| op.outcome.is_none()).count();
    if completed < 50 {
        violations.push(format!("the workload made too little progress: {completed} operations"));
    }
    if !violations.is_empty() {
        violations.push(format!("history in {}", history_file.display()));
    }
    Ok(ChaosReport {
        seed: options.seed,
        operations: history.len(),
        completed,
        unknown,
        faults,
        heal,
        term,
        violations,
    })
}

/// Waits until every node reports the same applied index, then compares
/// their digests.
async fn same_state(cluster: &Cluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut answers = Vec::new();
        for i in 0..cluster.nodes.len() {
            let digest = cluster.control(i, "digest").await.unwrap_or(Value::Null);
            answers.push((digest["applied_index"].clone(), digest["digest"].clone()));
        }
        let index_agrees = answers.windows(2).all(|w| w[0].0 == w[1].0) && answers[0].0.is_u64();
        if index_agrees {
            return if answers.windows(2).all(|w| w[0].1 == w[1].1) {
                Ok(())
            } else {
                Err(format!("replicas differ at the same applied index: {answers:?}"))
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("replicas did not reach the same applied index: {answers:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reads the kv example's answers in the shapes the store
    /// writes them (pinned on the store's side in `tests/nemesis.rs`): a
    /// misread would corrupt every history it checks.
    #[test]
    fn kv_answers_map_to_checker_outputs() {
        let some = |v: &str| Some(v.to_owned());
        for (line, expected) in [
            (r#"{"ok":{"previous":"a"}}"#, Output::Previous(some("a"))),
            (r#"{"ok":{"previous":null}}"#, Output::Previous(None)),
            (r#"{"ok":{"mismatch":"b"}}"#, Output::Mismatch(some("b"))),
            (r#"{"ok":{"mismatch":null}}"#, Output::Mismatch(None)),
        ] {
            let answer = ok_of(serde_json::from_str(line).unwrap()).unwrap();
            assert_eq!(write_output(&answer), Some(expected), "{line}");
        }
        assert_eq!(write_output(&serde_json::json!({"other": 1})), None);
        let error = serde_json::json!({ "error": "no leader" });
        assert_eq!(ok_of(error), Err("no leader".to_owned()));
    }

    #[test]
    fn fault_kinds_parse_by_name_and_the_schedule_follows_the_seed() {
        for (name, kind) in [
            ("kill", FaultKind::Kill),
            ("pause", FaultKind::Pause),
            ("partition", FaultKind::Partition),
            ("partition-leader", FaultKind::PartitionLeader),
            ("delay", FaultKind::Delay),
            ("drop", FaultKind::Drop),
            ("untag", FaultKind::Untag),
        ] {
            assert_eq!(FaultKind::from_name(name), Some(kind), "{name}");
        }
        assert_eq!(FaultKind::from_name("meteor"), None);
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..32).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }
}
