//! One node per process: three `kv` example processes (or three
//! `xtask/gobench node` processes running Go's tsconsensus) on the local
//! tailnet, with durable state, driven through their line interfaces on
//! 127.0.0.1 the way a client of the example would.
//!
//! Measures sequential puts through the leader (one client, then many):
//! ops/s, latency, and CPU per put summed over the three node processes
//! (from `/proc/<pid>/stat`); idle CPU per node; failover (`kill -9` of the
//! leader until a survivor accepts a put); and elections that happen under a
//! steady load without any fault.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::tailnet::{LocalTailnet, OFFLINE_ENV};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

/// How long a client waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long status and connection set-up may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the cluster may take to form or to heal.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one failover may take before the round counts as failed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest answer line read.
const MAX_LINE: usize = 1 << 20;

/// Which program the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// The `kv` example (this library).
    Kv,
    /// `xtask/gobench node` (Go tsconsensus).
    Go,
}

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct ProcOptions {
    pub(crate) flavor: Flavor,
    /// The node binary.
    pub(crate) bin: PathBuf,
    /// Where state directories and node logs go.
    pub(crate) work: PathBuf,
    /// How long each load runs.
    pub(crate) load: Duration,
    /// How long idle CPU is sampled.
    pub(crate) idle: Duration,
    /// Concurrent clients of the "many" load.
    pub(crate) many: usize,
    /// Failover rounds (0: none).
    pub(crate) failover_rounds: usize,
    /// How long the fault-free steady load runs (zero: not at all).
    pub(crate) steady: Duration,
}

/// One load: sequential puts by `clients` clients through the leader.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) clients: usize,
    pub(crate) ops: usize,
    pub(crate) errors: usize,
    pub(crate) ops_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// CPU time of the three node processes together, per put.
    pub(crate) cpu_per_op: Duration,
    /// Context switches of every thread of the three node processes, per put.
    pub(crate) switches_per_op: f64,
}

/// Failover rounds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failover {
    /// Time from `kill -9` of the leader to the first put a survivor
    /// accepted, per successful round, sorted.
    pub(crate) samples: Vec<Duration>,
    /// Rounds where no put succeeded within [`FAILOVER_TIMEOUT`].
    pub(crate) failed: usize,
    /// Time from the kill to the answer of the puts sent at the kill, per
    /// round where one was answered, sorted.
    pub(crate) in_flight: Vec<Duration>,
}

impl Failover {
    pub(crate) fn median(&self) -> Option<Duration> {
        self.samples.get(self.samples.len() / 2).copied()
    }
    pub(crate) fn max(&self) -> Option<Duration> {
        self.samples.last().copied()
    }
}

/// Elections under a steady load without faults.
#[derive(Clone, Debug)]
pub(crate) struct Steady {
    pub(crate) duration: Duration,
    pub(crate) clients: usize,
    pub(crate) ops: usize,
    /// Raft term increase over the run (every election raises it).
    pub(crate) term_changes: u64,
    /// Times the leader seen by the poller changed.
    pub(crate) leader_changes: usize,
}

/// Everything one flavor measured.
#[derive(Clone, Debug)]
pub(crate) struct ProcReport {
    pub(crate) flavor: Flavor,
    /// CPU milliseconds per second of each idle node.
    pub(crate) idle_ms_per_s: Vec<f64>,
    pub(crate) one: Load,
    pub(crate) many: Load,
    pub(crate) failover: Option<Failover>,
    pub(crate) steady: Option<Steady>,
}

struct Node {
    hostname: String,
    local_port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster<'a> {
    options: &'a ProcOptions,
    tailnet: &'a LocalTailnet,
    tag: String,
    nodes: Vec<Node>,
}

impl Cluster<'_> {
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let options = self.options;
        let control_url = self.tailnet.control_url.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("open {}: {e}", node.log.display()))?;
        let mut command = Command::new(&options.bin);
        match options.flavor {
            Flavor::Kv => {
                command
                    .args(["--hostname", &node.hostname, "--control-url", &control_url])
                    .args(["--tag", &self.tag, "--expected-size", "3"])
                    .arg("--state-dir")
                    .arg(&node.state_dir)
                    .args(["--local-port", &node.local_port.to_string()])
                    .arg("--exit-on-stdin-eof")
                    .env("RUST_LOG", kv_log().unwrap_or_else(|| "warn".to_owned()));
            }
            Flavor::Go => {
                // Each node waits to see the two others tagged, then for
                // the driver's start line (see `drive`).
                command
                    .args(["node", "-hostname", &node.hostname, "-control-url", &control_url])
                    .args(["-tag", &self.tag, "-peers", "2", "-wait-start"])
                    .arg("-state-dir")
                    .arg(&node.state_dir)
                    .args(["-local-port", &node.local_port.to_string()]);
            }
        }
        let child = command
            .envs(OFFLINE_ENV.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", options.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Tags node `i` once control knows it. (The admin API refuses a
    /// hostname it does not know yet. Listing the nodes instead breaks once
    /// the list is long enough for a chunked answer, which the harness's
    /// admin client does not decode.)
    async fn tag(&self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let hostname = &self.nodes[i].hostname;
        loop {
            match self.tailnet.set_tags(hostname, &[&self.tag]).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{hostname} could not be tagged: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Go: lets node `i` start tsconsensus (it waits for a line on stdin).
    async fn go_start(&mut self, i: usize) -> Result<(), String> {
        let Some(stdin) = self.nodes[i].child.as_mut().and_then(|c| c.stdin.as_mut()) else {
            return Err(format!("node {i} is not running"));
        };
        stdin.write_all(b"start\n").await.map_err(|e| format!("node {i} stdin: {e}"))?;
        stdin.flush().await.map_err(|e| format!("node {i} stdin: {e}"))
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().and_then(Child::id)
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    async fn metrics(&self, i: usize) -> Option<Value> {
        let answer = call_once(self.nodes[i].local_port, "status", CONTROL_TIMEOUT).await.ok()?;
        Some(answer["metrics"].clone())
    }

    /// The node that says it leads in the highest term.
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

    /// The highest term any node reports.
    async fn term(&self) -> u64 {
        let mut term = 0;
        for i in 0..self.nodes.len() {
            if let Some(m) = self.metrics(i).await {
                term = term.max(m["term"].as_u64().unwrap_or(0));
            }
        }
        term
    }

    /// Waits until every node answers as a voter of one cluster of three
    /// with the same leader, and every node's log reaches as far as the
    /// others' (a restarted node has caught up: until then only the nodes
    /// with the whole log can win an election, and a failover measured then
    /// measures a cluster still recovering from the previous round).
    async fn settled(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut logs = Vec::new();
            let mut ok = true;
            let mut last = String::new();
            for i in 0..self.nodes.len() {
                match self.metrics(i).await {
                    Some(m) => {
                        last.push_str(&format!(
                            "[{i}: {} leader {} log {}] ",
                            m["role"], m["leader"], m["last_log_index"]
                        ));
                        ok &= m["voters"] == self.nodes.len()
                            && !m["leader"].is_null()
                            && m["role"] != "learner";
                        leaders.push(m["leader"].clone());
                        logs.push(m["last_log_index"].as_u64());
                    }
                    None => {
                        last.push_str(&format!("[{i}: no answer] "));
                        ok = false;
                    }
                }
            }
            leaders.dedup();
            logs.dedup();
            let caught_up = logs.len() == 1 && logs[0].is_some();
            if ok && leaders.len() == 1 && caught_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("cluster not settled after {timeout:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shutdown(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }

    /// CPU time so far of each node process.
    fn cpu(&self) -> Vec<Duration> {
        (0..self.nodes.len()).map(|i| self.pid(i).map_or(Duration::ZERO, process_cpu)).collect()
    }

    /// Context switches so far of all node processes together.
    fn switches(&self) -> u64 {
        (0..self.nodes.len()).filter_map(|i| self.pid(i)).map(process_switches).sum()
    }
}

/// Voluntary and involuntary context switches of every thread of `pid`.
fn process_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// User plus system CPU time of process `pid` (all its threads), from
/// `/proc/<pid>/stat`; zero if it cannot be read.
pub(crate) fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces and parentheses; fields after the
    // last ')' start with field 3 (state). utime and stime are fields 14, 15.
    let Some((_, rest)) = stat.rsplit_once(')') else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let total = ticks(14) + ticks(15);
    Duration::from_micros(total * 1_000_000 / per_second)
}

/// `BENCH_KV_LOG`: the kv nodes' `RUST_LOG` (`warn` without it); with it
/// their logs are kept after the run, for tracing a failover.
fn kv_log() -> Option<String> {
    std::env::var("BENCH_KV_LOG").ok().filter(|v| !v.is_empty())
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
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, write) = stream.into_split();
        Ok(Line { read: BufReader::new(read), write })
    }

    /// Sends one line and reads the answer; `{"ok": v}` gives `v`. After an
    /// error other than an `{"error": ...}` answer the connection is
    /// unusable.
    async fn call(&mut self, line: &str, timeout: Duration) -> Result<Value, CallError> {
        let exchange = async {
            self.write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            loop {
                let buf = self.read.fill_buf().await.map_err(|e| e.to_string())?;
                if buf.is_empty() {
                    return Err("connection closed".to_owned());
                }
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    answer.extend_from_slice(&buf[..end]);
                    self.read.consume(end + 1);
                    break;
                }
                let n = buf.len();
                answer.extend_from_slice(buf);
                self.read.consume(n);
                if answer.len() > MAX_LINE {
                    return Err("answer line too long".to_owned());
                }
            }
            serde_json::from_slice::<Value>(&answer).map_err(|e| format!("bad answer: {e}"))
        };
        let mut answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Broken(format!("no answer to {line:?} within {timeout:?}")))?
            .map_err(CallError::Broken)?;
        match answer.get_mut("ok") {
            Some(value) => Ok(value.take()),
            None => Err(CallError::Refused(
                answer["error"].as_str().unwrap_or("malformed answer").to_owned(),
            )),
        }
    }
}

enum CallError {
    /// The node answered with an error; the connection is still good.
    Refused(String),
    /// No usable answer; reconnect.
    Broken(String),
}

impl CallError {
    fn text(&self) -> &str {
        match self {
            CallError::Refused(t) | CallError::Broken(t) => t,
        }
    }
}

async fn call_once(port: u16, line: &str, timeout: Duration) -> Result<Value, String> {
    let mut conn = Line::connect(port).await?;
    conn.call(line, timeout).await.map_err(|e| e.text().to_owned())
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `clients` clients doing sequential puts to `port` until `until`; the
/// latencies of the puts that succeeded, and how many failed.
async fn put_load(port: u16, clients: usize, until: Instant, key: &str) -> (Vec<Duration>, usize) {
    let value = "x".repeat(100);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (value, key) = (value.clone(), format!("{key}{c}"));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut conn: Option<Line> = None;
                while Instant::now() < until {
                    if conn.is_none() {
                        match Line::connect(port).await {
                            Ok(line) => conn = Some(line),
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let Some(line) = conn.as_mut() else { continue };
                    let started = Instant::now();
                    match line.call(&format!("put {key} {value}"), CALL_TIMEOUT).await {
                        Ok(_) => latencies.push(started.elapsed()),
                        Err(CallError::Refused(_)) => errors += 1,
                        Err(CallError::Broken(_)) => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies.extend(l);
            errors += e;
        }
    }
    (latencies, errors)
}

async fn load(cluster: &Cluster<'_>, clients: usize, duration: Duration) -> Result<Load, String> {
    let leader = cluster.leader().await.ok_or("no leader")?;
    let port = cluster.nodes[leader].local_port;
    // BENCH_PROFILE=1: perf samples the node processes during the
    // one-client load (`perf report -i <out>` afterwards).
    let perf = match std::env::var_os("BENCH_PROFILE") {
        Some(_) if clients == 1 => {
            let pids: Vec<String> = (0..cluster.nodes.len())
                .filter_map(|i| cluster.pid(i))
                .map(|p| p.to_string())
                .collect();
            let out = cluster.options.work.join(format!("perf-{:?}.data", cluster.options.flavor));
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "2000",
                    "-g",
                    "-p",
                    &pids.join(","),
                ])
                .arg("-o")
                .arg(&out)
                .args(["--", "sleep", &duration.as_secs().max(1).to_string()])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .inspect(|_| eprintln!("perf: recording into {}", out.display()))
                .ok()
        }
        _ => None,
    };
    let before = cluster.cpu();
    let switches_before = cluster.switches();
    let started = Instant::now();
    let (mut latencies, errors) = put_load(port, clients, started + duration, "load").await;
    let elapsed = started.elapsed();
    let cpu: Duration = cluster
        .cpu()
        .iter()
        .zip(&before)
        .map(|(after, before)| after.saturating_sub(*before))
        .sum();
    let switches = cluster.switches().saturating_sub(switches_before);
    if let Some(mut perf) = perf {
        let _ = tokio::time::timeout(Duration::from_secs(30), perf.wait()).await;
    }
    if latencies.is_empty() {
        return Err(format!("no put succeeded with {clients} clients ({errors} failed)"));
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Load {
        clients,
        ops: latencies.len(),
        errors,
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        cpu_per_op: cpu / latencies.len() as u32,
        switches_per_op: switches as f64 / latencies.len() as f64,
    })
}

/// One failover round.
struct Round {
    /// Kill to the first put a survivor accepted.
    first_accepted: Option<Duration>,
    /// Kill to the first answer (accepted or refused) to a put sent to a
    /// survivor right at the kill, if it came before the cluster settled
    /// again.
    first_answered: Option<Duration>,
}

/// `kill -9` the leader; from then on a put goes to each survivor every
/// 100 ms (each on a connection of its own, each waiting as long as the
/// node holds it), until one is accepted.
async fn failover_round(cluster: &mut Cluster<'_>, round: usize) -> Result<Round, String> {
    let leader = cluster.leader().await.ok_or("no leader before the kill")?;
    let survivors: Vec<(usize, u16)> = (0..cluster.nodes.len())
        .filter(|&i| i != leader)
        .map(|i| (i, cluster.nodes[i].local_port))
        .collect();
    let killed = Instant::now();
    let killed_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    cluster.kill(leader).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Attempt>();
    let mut attempts = tokio::task::JoinSet::new();
    let put = |node: usize, port: u16, n: usize, tx: tokio::sync::mpsc::UnboundedSender<_>| async move {
        let sent = killed.elapsed();
        let line = format!("put failover{round}-{n} x");
        let accepted = match Line::connect(port).await {
            Ok(mut conn) => conn.call(&line, FAILOVER_TIMEOUT).await.is_ok(),
            Err(_) => false,
        };
        let _ = tx.send(Attempt { n, node, sent, answered: killed.elapsed(), accepted });
    };
    let mut n = 0;
    let mut first_accepted: Option<Attempt> = None;
    let mut first_answered = None;
    let mut note = |attempt: Attempt| {
        if attempt.accepted && first_accepted.is_none() {
            first_accepted = Some(attempt);
        }
        if attempt.n < survivors.len() && first_answered.is_none() {
            first_answered = Some(attempt.answered);
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if killed.elapsed() >= FAILOVER_TIMEOUT {
                    break;
                }
                for &(node, port) in &survivors {
                    attempts.spawn(put(node, port, n, tx.clone()));
                    n += 1;
                }
            }
            Some(attempt) = rx.recv() => {
                let accepted = attempt.accepted;
                note(attempt);
                if accepted {
                    break;
                }
            }
        }
    }
    let new_leader = cluster.leader().await;
    cluster.spawn(leader)?;
    if cluster.options.flavor == Flavor::Go {
        cluster.go_start(leader).await?;
    }
    let restarted = Instant::now();
    cluster.settled(SETTLE_TIMEOUT).await?;
    let settle = restarted.elapsed();
    while let Ok(attempt) = rx.try_recv() {
        note(attempt);
    }
    attempts.abort_all();
    match &first_accepted {
        Some(a) => eprintln!(
            "failover round {round}: killed node {leader} at {killed_wall:.3} (unix s); first put \
             accepted {:.3} s after (#{} sent at {:.3} s to node {}); new leader node {new_leader:?}; \
             restarted and settled in {:.3} s",
            a.answered.as_secs_f64(),
            a.n,
            a.sent.as_secs_f64(),
            a.node,
            settle.as_secs_f64(),
        ),
        None => eprintln!("failover round {round}: killed node {leader}; no put accepted"),
    }
    Ok(Round { first_accepted: first_accepted.map(|a| a.answered), first_answered })
}

/// One put of a failover round.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    /// Its number in the round.
    n: usize,
    /// The survivor it was sent to.
    node: usize,
    /// Sent, and answered, this long after the kill.
    sent: Duration,
    answered: Duration,
    accepted: bool,
}

/// A steady load of `clients` clients for `duration` on a healthy cluster,
/// with the leader polled all along: elections nobody caused.
async fn steady(
    cluster: &Cluster<'_>,
    clients: usize,
    duration: Duration,
) -> Result<Steady, String> {
    let leader = cluster.leader().await.ok_or("no leader")?;
    let port = cluster.nodes[leader].local_port;
    let term_before = cluster.term().await;
    let until = Instant::now() + duration;
    let load = tokio::spawn(put_load(port, clients, until, "steady"));
    let mut leader_changes = 0;
    let mut last = Some(leader);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cluster.leader().await;
        if now.is_some() && now != last {
            leader_changes += 1;
            last = now;
        }
    }
    let (latencies, _) = load.await.map_err(|e| format!("load task: {e}"))?;
    let term_after = cluster.term().await;
    Ok(Steady {
        duration,
        clients,
        ops: latencies.len(),
        term_changes: term_after.saturating_sub(term_before),
        leader_changes,
    })
}

/// Starts three nodes of `options.flavor`, measures, stops them.
pub(crate) async fn run(
    tailnet: &LocalTailnet,
    options: &ProcOptions,
    serial: usize,
) -> Result<ProcReport, String> {
    let name = match options.flavor {
        Flavor::Kv => "kv",
        Flavor::Go => "gonode",
    };
    let work = options.work.join(format!("{name}{serial}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Node {
            hostname: format!("{name}{serial}-{i}"),
            local_port: free_port()?,
            state_dir: work.join(format!("node-{i}")),
            log: work.join(format!("node-{i}.log")),
            child: None,
        });
    }
    let mut cluster = Cluster { options, tailnet, tag: format!("tag:{name}{serial}"), nodes };
    let result = drive(&mut cluster).await.map_err(|e| format!("{e} (logs in {})", work.display()));
    cluster.shutdown().await;
    if result.is_ok() && kv_log().is_none() {
        // State and logs are kept only when something failed (or asked for).
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn drive(cluster: &mut Cluster<'_>) -> Result<ProcReport, String> {
    let options = cluster.options.clone();
    match options.flavor {
        Flavor::Kv => {
            for i in 0..3 {
                cluster.spawn(i)?;
            }
            for i in 0..3 {
                cluster.tag(i).await?;
            }
        }
        Flavor::Go => {
            // tsconsensus forms a cluster by letting one node bootstrap and
            // the others join it (its own tests do the same); every node
            // first waits until it sees the other two tagged.
            for i in 0..3 {
                cluster.spawn(i)?;
            }
            for i in 0..3 {
                cluster.tag(i).await?;
            }
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            for i in 0..3 {
                cluster.go_start(i).await?;
                // The first node must lead (not just have bootstrapped)
                // before another can join it.
                let ready = |m: &Value| {
                    if i == 0 { m["role"] == "leader" } else { m["voters"] == i + 1 }
                };
                while cluster.metrics(i).await.is_none_or(|m| !ready(&m)) {
                    if Instant::now() >= deadline {
                        return Err(format!("Go node {i} did not form or join the cluster"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    cluster.settled(SETTLE_TIMEOUT).await?;
    // Warm up every connection on the way.
    let leader = cluster.leader().await.ok_or("no leader")?;
    let port = cluster.nodes[leader].local_port;
    put_load(port, 4, Instant::now() + Duration::from_millis(500), "warm").await;

    let before = cluster.cpu();
    tokio::time::sleep(options.idle).await;
    let idle_ms_per_s = cluster
        .cpu()
        .iter()
        .zip(&before)
        .map(|(after, before)| {
            after.saturating_sub(*before).as_secs_f64() * 1e3 / options.idle.as_secs_f64()
        })
        .collect();
    let one = load(cluster, 1, options.load).await?;
    let many = load(cluster, options.many, options.load).await?;
    let steady = if options.steady.is_zero() {
        None
    } else {
        Some(steady(cluster, options.many, options.steady).await?)
    };
    let mut failover = None;
    if options.failover_rounds > 0 {
        let mut f = Failover::default();
        for round in 0..options.failover_rounds {
            let r = failover_round(cluster, round).await?;
            match r.first_accepted {
                Some(took) => f.samples.push(took),
                None => f.failed += 1,
            }
            f.in_flight.extend(r.first_answered);
        }
        f.samples.sort();
        f.in_flight.sort();
        failover = Some(f);
    }
    Ok(ProcReport { flavor: options.flavor, idle_ms_per_s, one, many, failover, steady })
}
