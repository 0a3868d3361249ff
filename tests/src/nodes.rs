//! `chaos-node` processes on a local tailnet, as the chaos harness
//! ([`crate::chaos`]) and the end-to-end scenarios (`tests/scenarios.rs`)
//! drive them: start, `kill -9`, `SIGSTOP`, wipe the raft state, cut off,
//! tag and untag, and ask over their line interfaces.
//!
//! A node is one tailnet identity (hostname, state directory) and the
//! processes that run it over time: a restart from the same state directory
//! is the same tailnet node (same stable id), whatever became of its raft
//! state. A node is *reserved* (registered with control, not running),
//! *active* (a cluster member the checks expect), or *retired* (untagged and
//! stopped, replaced by another).
//!
//! [`LeaderWatch`] samples every running node's status several times a
//! second and reports the first moment two nodes lead, each followed by a
//! majority of its own voters: two clusters that can both commit.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::poll_until;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

use crate::tailnet::LocalTailnet;

/// How long a control call (status, fault) may take.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a control line is retried in all.
pub const CONTROL_DEADLINE: Duration = Duration::from_secs(12);
/// How long a client call may take before its outcome counts as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a node may take to register with control.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a started node may take to show up at control before its
/// process is started once more (see [`Nodes::start`]).
const FIRST_SIGHTING: Duration = Duration::from_secs(60);
/// Longest answer line read from a node.
const MAX_LINE: usize = 1 << 20;

/// How every node of a set runs.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The `chaos-node` binary.
    pub bin: PathBuf,
    /// The cluster's tag.
    pub tag: String,
    /// `--expected-size` of every node.
    pub expected_size: usize,
    /// `--snapshot-every`, if not the library's default.
    pub snapshot_every: Option<u64>,
    /// Seeds the nodes' random write drops (with the node's index).
    pub fault_seed: u64,
}

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Registered with control (its stable id is fixed), not started.
    Reserved,
    /// A member the checks expect.
    Active,
    /// Replaced: untagged and stopped for good.
    Retired,
}

/// One tailnet identity and its current process.
#[derive(Debug)]
pub struct Node {
    /// Position in the set (order of creation).
    pub index: usize,
    /// Tailnet hostname.
    pub hostname: String,
    /// State directory: `tailscale/` (the tailnet identity) and `raft/`.
    pub state_dir: PathBuf,
    /// Where its processes' logs go (appended).
    pub log: PathBuf,
    /// Port of its line interface on 127.0.0.1.
    pub local_port: u16,
    state: Mutex<NodeState>,
}

#[derive(Debug)]
struct NodeState {
    child: Option<Child>,
    paused: bool,
    ips: Vec<IpAddr>,
    stable_id: Option<String>,
    lifecycle: Lifecycle,
}

impl Node {
    fn state(&self) -> std::sync::MutexGuard<'_, NodeState> {
        lock(&self.state)
    }

    /// Its tailnet addresses, once control has shown them.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.state().ips.clone()
    }

    /// Its stable id, once control has shown it.
    pub fn stable_id(&self) -> Option<String> {
        self.state().stable_id.clone()
    }

    /// Where it is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        self.state().lifecycle
    }

    /// Whether a process runs for it (paused or not).
    pub fn running(&self) -> bool {
        self.state().child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Whether its process is stopped with `SIGSTOP`.
    pub fn paused(&self) -> bool {
        self.state().paused
    }

    /// One line on a fresh connection; `{"ok": v}` gives `v`.
    pub async fn call(&self, line: &str, timeout: Duration) -> Result<Value, String> {
        call_once(self.local_port, line, timeout).await
    }

    /// A control line (a fault, a digest): idempotent, so retried, each
    /// attempt within the control timeout, for up to [`CONTROL_DEADLINE`]
    /// (a loaded machine, a process still binding its port).
    pub async fn control(&self, line: &str) -> Result<Value, String> {
        let deadline = Instant::now() + CONTROL_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = match Line::connect(self.local_port).await {
                Ok(mut conn) => conn.call(line, CONTROL_TIMEOUT.min(left)).await,
                Err(err) => Err(err),
            };
            match answer {
                // An answer, even an error, will not change on a retry.
                Ok(answer) => return ok_of(answer).map_err(|e| format!("{}: {e}", self.hostname)),
                Err(err) if Instant::now() >= deadline => {
                    return Err(format!("{}: {err}", self.hostname));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Its status, if it answers within `timeout`.
    pub async fn status_within(&self, timeout: Duration) -> Option<Status> {
        self.call("status", timeout).await.ok().map(Status::parse)
    }

    /// Its status, if it answers.
    pub async fn status(&self) -> Option<Status> {
        self.status_within(CONTROL_TIMEOUT).await
    }
}

/// A node's status line, parsed.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// `starting` (consensus not running yet) or `running`.
    pub phase: String,
    /// Its raft id.
    pub id: Option<u64>,
    /// `leader`, `follower`, `candidate`, `learner`, `stopped`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// The voters of its configuration.
    pub voters: BTreeSet<u64>,
    /// Its applied index.
    pub applied_index: Option<u64>,
    /// The index its last snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Why it stopped, if a fatal error stopped it.
    pub fatal: Option<String>,
}

impl Status {
    /// Parses the `ok` value of a `status` line. Fields that are missing
    /// or of the wrong type are left empty.
    pub fn parse(value: Value) -> Status {
        let m = &value["metrics"];
        let voters = value["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter(|member| member["role"] == "voter")
                    .filter_map(|member| member["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        Status {
            phase: value["phase"].as_str().unwrap_or_default().to_owned(),
            id: m["id"].as_u64(),
            role: m["role"].as_str().unwrap_or_default().to_owned(),
            term: m["term"].as_u64().unwrap_or(0),
            leader: m["leader"].as_u64(),
            voters,
            applied_index: m["applied_index"].as_u64(),
            snapshot_index: m["snapshot_index"].as_u64(),
            fatal: m["fatal"].as_str().map(str::to_owned),
        }
    }

    /// Whether it says it leads.
    pub fn leads(&self) -> bool {
        self.role == "leader"
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        if self.phase != "running" {
            return format!("phase {}", if self.phase.is_empty() { "?" } else { &self.phase });
        }
        format!(
            "id {} {} term {} leader {} voters {:?} applied {} snapshot {}{}",
            self.id.map_or("?".to_owned(), |id| format!("{id:016x}")),
            self.role,
            self.term,
            self.leader.map_or("none".to_owned(), |id| format!("{id:016x}")),
            self.voters.iter().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
            self.applied_index.map_or("-".to_owned(), |i| i.to_string()),
            self.snapshot_index.map_or("-".to_owned(), |i| i.to_string()),
            self.fatal.as_ref().map(|f| format!(" FATAL {f}")).unwrap_or_default(),
        )
    }
}

/// Two leaders at once, each followed by a majority of its own voters (in
/// its term, naming it leader): two clusters that can both commit. A
/// leader left behind by an election (cut off, paused) is not followed by
/// a majority, since every node is counted once and in one term, so it is
/// not reported. `samples` pairs a node's name with its status, all taken
/// in one round.
pub fn two_leaders(samples: &[(String, Status)]) -> Option<String> {
    let followed = |leader: &Status| {
        let Some(id) = leader.id else { return false };
        let support = samples
            .iter()
            .filter(|(_, s)| {
                s.phase == "running"
                    && s.term == leader.term
                    && s.leader == Some(id)
                    && s.id.is_some_and(|sid| leader.voters.contains(&sid))
            })
            .count();
        support * 2 > leader.voters.len()
    };
    let leaders: Vec<&(String, Status)> =
        samples.iter().filter(|(_, s)| s.phase == "running" && s.leads() && followed(s)).collect();
    let (first, second) = (leaders.first()?, leaders.get(1)?);
    let mut text = format!(
        "two leaders, each followed by a majority of its voters: {}: {}; {}: {}",
        first.0,
        first.1.describe(),
        second.0,
        second.1.describe()
    );
    let others: Vec<String> = samples
        .iter()
        .filter(|(name, _)| *name != first.0 && *name != second.0)
        .map(|(name, s)| format!("{name}: {}", s.describe()))
        .collect();
    if !others.is_empty() {
        let _ = write!(text, " (others: {})", others.join("; "));
    }
    Some(text)
}

/// The nodes of one run or scenario.
#[derive(Debug)]
pub struct Nodes {
    settings: NodeSettings,
    control_url: String,
    work: PathBuf,
    list: Mutex<Vec<Arc<Node>>>,
}

impl Nodes {
    /// A set with no node yet; node state and logs go under `work`. Fails
    /// if the node binary is missing.
    pub fn new(
        settings: NodeSettings,
        tailnet: &LocalTailnet,
        work: &Path,
    ) -> Result<Nodes, String> {
        if !settings.bin.is_file() {
            return Err(format!(
                "the chaos-node binary {} does not exist (build it with `cargo build -p tests --features tailnet --bin chaos-node`)",
                settings.bin.display()
            ));
        }
        std::fs::create_dir_all(work).map_err(|e| format!("create {}: {e}", work.display()))?;
        Ok(Nodes {
            settings,
            control_url: tailnet.control_url.clone(),
            work: work.to_owned(),
            list: Mutex::new(Vec::new()),
        })
    }

    /// The settings every node runs with.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Adds a node called `hostname` (not started, not registered).
    pub fn add(&self, hostname: &str) -> Result<Arc<Node>, String> {
        let mut list = lock(&self.list);
        // Ports are drawn when a node is added, long before a reserved node
        // binds its own, so the kernel may hand out one a node added later
        // already holds: two nodes then answer on one port (campaign seed
        // 2021 read one node's status for another's). Never repeat one.
        let taken: BTreeSet<u16> = list.iter().map(|n| n.local_port).collect();
        let local_port = (0..100)
            .map(|_| free_port())
            .find(|port| port.as_ref().map_or(true, |p| !taken.contains(p)))
            .unwrap_or_else(|| Err("no free port unlike every node's".to_owned()))?;
        let node = Arc::new(Node {
            index: list.len(),
            hostname: hostname.to_owned(),
            state_dir: self.work.join(hostname),
            log: self.work.join(format!("{hostname}.log")),
            local_port,
            state: Mutex::new(NodeState {
                child: None,
                paused: false,
                ips: Vec::new(),
                stable_id: None,
                lifecycle: Lifecycle::Reserved,
            }),
        });
        list.push(node.clone());
        Ok(node)
    }

    /// Every node, in order of creation.
    pub fn all(&self) -> Vec<Arc<Node>> {
        lock(&self.list).clone()
    }

    /// The active nodes.
    pub fn active(&self) -> Vec<Arc<Node>> {
        self.all().into_iter().filter(|n| n.lifecycle() == Lifecycle::Active).collect()
    }

    /// Nodes with a process.
    pub fn running(&self) -> Vec<Arc<Node>> {
        self.all().into_iter().filter(|n| n.running()).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> Arc<Node> {
        self.all()[i].clone()
    }

    /// Registers `node` with control without starting it (so its stable id
    /// is fixed now, in registration order), and learns its addresses.
    pub async fn register(&self, tailnet: &LocalTailnet, node: &Node) -> Result<(), String> {
        let log = self.open_log(node)?;
        let mut child = Command::new(&self.settings.bin)
            .args(["--hostname", &node.hostname, "--control-url", &self.control_url])
            .arg("--state-dir")
            .arg(&node.state_dir)
            .arg("--register-only")
            .envs(node_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.settings.bin.display()))?;
        let status = tokio::time::timeout(REGISTER_TIMEOUT, child.wait())
            .await
            .map_err(|_| format!("{} did not register within {REGISTER_TIMEOUT:?}", node.hostname))?
            .map_err(|e| format!("{}: {e}", node.hostname))?;
        if !status.success() {
            return Err(format!(
                "registering {} failed ({status}); see {}",
                node.hostname,
                node.log.display()
            ));
        }
        self.learn(tailnet, node, REGISTER_TIMEOUT).await
    }

    /// Starts a process for `node` from its state directory; the node is
    /// active from now on.
    pub fn spawn(&self, node: &Node) -> Result<(), String> {
        let log = self.open_log(node)?;
        let mut command = Command::new(&self.settings.bin);
        command
            .args(["--hostname", &node.hostname, "--control-url", &self.control_url])
            .args(["--tag", &self.settings.tag])
            .args(["--expected-size", &self.settings.expected_size.to_string()])
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(["--local-port", &node.local_port.to_string()])
            .args(["--fault-seed", &(self.settings.fault_seed ^ node.index as u64).to_string()])
            .arg("--exit-on-stdin-eof");
        if let Some(every) = self.settings.snapshot_every {
            command.args(["--snapshot-every", &every.to_string()]);
        }
        let child = command
            .envs(node_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.settings.bin.display()))?;
        let mut state = node.state();
        state.child = Some(child);
        state.paused = false;
        state.lifecycle = Lifecycle::Active;
        Ok(())
    }

    fn open_log(&self, node: &Node) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("open {}: {e}", node.log.display()))
    }

    /// Waits until control knows `node`, then records its stable id and
    /// addresses.
    async fn learn(
        &self,
        tailnet: &LocalTailnet,
        node: &Node,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let known = tailnet.nodes().await.map_err(|e| format!("admin API: {e}"))?;
            if let Some(admin) = known.iter().find(|a| a.hostname == node.hostname) {
                let mut state = node.state();
                state.ips = admin.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                state.stable_id = Some(admin.stable_id.clone());
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("control never saw {}", node.hostname));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Gives `node` the cluster tag once control knows it (it waits for the
    /// tag before it starts consensus).
    pub async fn tag(&self, tailnet: &LocalTailnet, node: &Node) -> Result<(), String> {
        self.learn(tailnet, node, REGISTER_TIMEOUT).await?;
        tailnet
            .set_tags(&node.hostname, &[&self.settings.tag])
            .await
            .map(|_| ())
            .map_err(|e| format!("tag {}: {e}", node.hostname))
    }

    /// Takes the cluster tag away from `node`.
    pub async fn untag(&self, tailnet: &LocalTailnet, node: &Node) -> Result<(), String> {
        tailnet
            .set_tags(&node.hostname, &[])
            .await
            .map(|_| ())
            .map_err(|e| format!("untag {}: {e}", node.hostname))
    }

    /// Starts `node` and tags it.
    ///
    /// A node process that control has not seen within `FIRST_SIGHTING`
    /// is killed and started once more, after printing the end of its log:
    /// the gate saw a tsnet node never reach the local control server
    /// (in two of its recent runs, before any consensus code ran), which says
    /// nothing about the scenario under test.
    pub async fn start(&self, tailnet: &LocalTailnet, node: &Node) -> Result<(), String> {
        self.spawn(node)?;
        if let Err(why) = self.learn(tailnet, node, FIRST_SIGHTING).await {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "{why} within {FIRST_SIGHTING:?}; its log ends:\n{}\nstarting it again",
                tail.join("\n")
            );
            self.kill(node).await;
            self.spawn(node)?;
        }
        self.tag(tailnet, node).await
    }

    /// `kill -9`, and reaps the process.
    pub async fn kill(&self, node: &Node) {
        let child = node.state().child.take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        node.state().paused = false;
    }

    /// Deletes `node`'s raft state (its log, vote and snapshots), keeping
    /// its tailnet identity. The node must not be running.
    pub fn wipe_raft(&self, node: &Node) -> Result<(), String> {
        if node.running() {
            return Err(format!("{} is running; kill it before wiping its state", node.hostname));
        }
        let raft = node.state_dir.join("raft");
        match std::fs::remove_dir_all(&raft) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("remove {}: {e}", raft.display())),
        }
    }

    /// Replaces `node` for good: untagged, then stopped.
    pub async fn retire(&self, tailnet: &LocalTailnet, node: &Node) -> Result<(), String> {
        self.untag(tailnet, node).await?;
        self.kill(node).await;
        node.state().lifecycle = Lifecycle::Retired;
        Ok(())
    }

    /// Sends `signal` to `node`'s process.
    pub fn signal(&self, node: &Node, signal: libc::c_int) {
        let mut state = node.state();
        if let Some(pid) = state.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) with a pid this process spawned and has not
            // reaped, so the pid cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
            state.paused = signal == libc::SIGSTOP;
        }
    }

    /// Cuts `victim` off from every other running node, on both sides.
    pub async fn isolate(&self, victim: &Node) -> Result<(), String> {
        for other in self.running().iter().filter(|n| n.index != victim.index) {
            self.block_pair(victim, other).await?;
        }
        Ok(())
    }

    /// Blocks `a` and `b` from each other, on both sides.
    pub async fn block_pair(&self, a: &Node, b: &Node) -> Result<(), String> {
        for ip in b.ips() {
            a.control(&format!("fault block {ip}")).await?;
        }
        for ip in a.ips() {
            b.control(&format!("fault block {ip}")).await?;
        }
        Ok(())
    }

    /// Runs `line` on every running node; tries them all, then reports the
    /// first failure.
    pub async fn on_running(&self, line: &str) -> Result<(), String> {
        let mut first = Ok(());
        for node in self.running() {
            if let Err(err) = node.control(line).await {
                first = first.and(Err(err));
            }
        }
        first
    }

    /// The running node that says it leads in the highest term (a cut-off
    /// former leader may still say so in an older one).
    pub async fn leader(&self) -> Option<Arc<Node>> {
        let mut best: Option<(u64, Arc<Node>)> = None;
        for node in self.running() {
            if let Some(status) = node.status().await.filter(Status::leads)
                && best.as_ref().is_none_or(|(term, _)| status.term > *term)
            {
                best = Some((status.term, node));
            }
        }
        best.map(|(_, node)| node)
    }

    /// Whether the active nodes form one cluster now: each runs, none is
    /// fatal, each is a voter (or the leader) of the same voter set with as
    /// many voters as there are active nodes, under one leader that is one
    /// of them. `Err` describes what does not hold.
    pub async fn one_cluster(&self) -> Result<(), String> {
        let active = self.active();
        let mut text = String::new();
        let mut ok = true;
        let mut views = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for node in &active {
            match node.status().await {
                Some(s) => {
                    let _ = write!(text, "[{}: {}] ", node.hostname, s.describe());
                    ok &= s.phase == "running"
                        && s.fatal.is_none()
                        && (s.role == "leader" || s.role == "follower")
                        && s.voters.len() == active.len()
                        && s.leader.is_some();
                    views.insert((s.leader, s.voters.clone()));
                    ids.extend(s.id);
                }
                None => {
                    let _ = write!(text, "[{}: no answer] ", node.hostname);
                    ok = false;
                }
            }
        }
        let agreed = views.len() == 1
            && views
                .iter()
                .all(|(leader, voters)| leader.is_some_and(|l| ids.contains(&l)) && *voters == ids);
        if ok && agreed { Ok(()) } else { Err(text) }
    }

    /// Waits until the active nodes form one cluster ([`Nodes::one_cluster`]).
    pub async fn settled(&self, timeout: Duration) -> Result<(), String> {
        poll_until(timeout, Duration::from_millis(200), async || self.one_cluster().await)
            .await
            .map_err(|last| {
                format!("not one cluster after {timeout:?}: {}", last.unwrap_or_default())
            })
    }

    /// A call that must succeed eventually (the final reads): retried on
    /// the active nodes in turn until `timeout` runs out.
    pub async fn settled_call(&self, line: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        loop {
            let active = self.active();
            let node = active.get(i % active.len().max(1)).ok_or("no active node")?;
            match node.call(line, CALL_TIMEOUT).await {
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

    /// Waits until every active node reports the same applied index, then
    /// compares their digests.
    pub async fn same_state(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut answers = Vec::new();
            for node in self.active() {
                let digest = node.control("digest").await.unwrap_or(Value::Null);
                answers.push((
                    node.hostname.clone(),
                    digest["applied_index"].clone(),
                    digest["digest"].clone(),
                ));
            }
            let index_agrees = answers.windows(2).all(|w| w[0].1 == w[1].1)
                && answers.first().is_some_and(|a| a.1.is_u64());
            if index_agrees {
                return if answers.windows(2).all(|w| w[0].2 == w[1].2) {
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

    /// Stops every process: continued, stdin closed (they stop), killed
    /// if they linger.
    pub async fn shutdown(&self) {
        for node in self.all() {
            self.signal(&node, libc::SIGCONT);
            let child = node.state().child.take();
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

/// Environment of node processes: Go reads it at start.
fn node_env() -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = crate::tailnet::OFFLINE_ENV
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    env.push((
        "RUST_LOG",
        std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".to_owned()),
    ));
    env
}

/// Samples the status of every running node several times a second, in
/// the background, and keeps the first moment two clusters could commit
/// ([`two_leaders`]).
#[derive(Debug)]
pub struct LeaderWatch {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    first: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderWatch {
    /// Starts sampling every `every`; times in reports count from `start`.
    pub fn start(nodes: Arc<Nodes>, every: Duration, start: Instant) -> LeaderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let first = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (stop, rounds, first) = (stop.clone(), rounds.clone(), first.clone());
            async move {
                while !stop.load(Ordering::Acquire) {
                    let round = Instant::now();
                    let mut set = tokio::task::JoinSet::new();
                    for node in nodes.running().into_iter().filter(|n| !n.paused()) {
                        set.spawn(async move {
                            let status = node.status_within(every.max(Duration::from_millis(500)));
                            (node.hostname.clone(), status.await)
                        });
                    }
                    let mut samples = Vec::new();
                    while let Some(joined) = set.join_next().await {
                        if let Ok((name, Some(status))) = joined {
                            samples.push((name, status));
                        }
                    }
                    samples.sort_by(|a, b| a.0.cmp(&b.0));
                    rounds.fetch_add(1, Ordering::Relaxed);
                    if let Some(found) = two_leaders(&samples) {
                        let mut first = lock(&first);
                        if first.is_none() {
                            let at = (round - start).as_secs_f64();
                            *first = Some(format!("at {at:.1} s: {found}"));
                        }
                    }
                    tokio::time::sleep(every.saturating_sub(round.elapsed())).await;
                }
            }
        });
        LeaderWatch { stop, rounds, first, task }
    }

    /// The first two-cluster moment seen so far, if any.
    pub fn first(&self) -> Option<String> {
        lock(&self.first).clone()
    }

    /// Stops sampling; returns how many rounds it took and the first
    /// two-cluster moment, if any.
    pub async fn finish(self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        (self.rounds.load(Ordering::Relaxed), lock(&self.first).clone())
    }
}

/// Locks a mutex, recovering from poisoning.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A line connection to one node.
#[derive(Debug)]
pub struct Line {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Line {
    /// Connects to the line interface on `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Result<Line, String> {
        let stream = tokio::time::timeout(CONTROL_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| format!("connect to 127.0.0.1:{port} timed out"))?
            .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
        let (read, write) = stream.into_split();
        Ok(Line { read: BufReader::new(read), write })
    }

    /// Sends one line and reads the answer, or fails: the connection is
    /// then unusable.
    pub async fn call(&mut self, line: &str, timeout: Duration) -> Result<Value, String> {
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
pub async fn call_once(port: u16, line: &str, timeout: Duration) -> Result<Value, String> {
    let mut conn = Line::connect(port).await?;
    let answer = conn.call(line, timeout).await?;
    ok_of(answer)
}

/// `{"ok": v}` gives `v`, `{"error": e}` gives `e`.
pub fn ok_of(mut answer: Value) -> Result<Value, String> {
    match answer.get_mut("ok") {
        Some(value) => Ok(value.take()),
        None => Err(answer["error"].as_str().unwrap_or("malformed answer").to_owned()),
    }
}

/// A free port on 127.0.0.1 (another process could take it before the
/// node binds it; the node then fails to start and says so in its log).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, term: u64, leader: Option<u64>, voters: &[u64]) -> Status {
        Status {
            phase: "running".to_owned(),
            id: Some(id),
            role: role.to_owned(),
            term,
            leader,
            voters: voters.iter().copied().collect(),
            ..Status::default()
        }
    }

    #[test]
    fn a_second_cluster_next_to_the_first_is_reported() {
        // The issue-12 picture: node 1 formed {1} alone, nodes 2 and 3 run
        // the real cluster {1, 2, 3}.
        let samples = vec![
            ("a".to_owned(), status(1, "leader", 1, Some(1), &[1])),
            ("b".to_owned(), status(2, "leader", 3, Some(2), &[1, 2, 3])),
            ("c".to_owned(), status(3, "follower", 3, Some(2), &[1, 2, 3])),
        ];
        let found = two_leaders(&samples).expect("two clusters");
        assert!(found.contains("a: id 0000000000000001 leader term 1"), "{found}");
        assert!(found.contains("b: id 0000000000000002 leader term 3"), "{found}");
    }

    #[test]
    fn a_leader_left_behind_by_an_election_is_not_reported() {
        // Node 1 was cut off while leading term 2; 2 and 3 moved on.
        let samples = vec![
            ("a".to_owned(), status(1, "leader", 2, Some(1), &[1, 2, 3])),
            ("b".to_owned(), status(2, "leader", 3, Some(2), &[1, 2, 3])),
            ("c".to_owned(), status(3, "follower", 3, Some(2), &[1, 2, 3])),
        ];
        assert_eq!(two_leaders(&samples), None);
        // Even when the new leader has since removed it.
        let samples = vec![
            ("a".to_owned(), status(1, "leader", 2, Some(1), &[1, 2, 3])),
            ("b".to_owned(), status(2, "leader", 3, Some(2), &[2, 3])),
            ("c".to_owned(), status(3, "follower", 3, Some(2), &[2, 3])),
        ];
        assert_eq!(two_leaders(&samples), None);
    }

    #[test]
    fn statuses_parse_from_the_node_answer() {
        let answer = serde_json::json!({
            "phase": "running",
            "metrics": { "id": 7, "role": "leader", "term": 4, "leader": 7,
                         "applied_index": 12, "snapshot_index": null, "fatal": null },
            "members": [ { "id": 7, "role": "voter" }, { "id": 9, "role": "learner" } ],
        });
        let s = Status::parse(answer);
        assert_eq!((s.id, s.term, s.leader, s.applied_index), (Some(7), 4, Some(7), Some(12)));
        assert!(s.leads());
        assert_eq!(s.voters, BTreeSet::from([7]));
        assert_eq!(Status::parse(serde_json::json!({ "phase": "starting" })).phase, "starting");
    }
}
