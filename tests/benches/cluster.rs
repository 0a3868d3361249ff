//! The consensus facade end to end: throughput, latency percentiles and CPU
//! time per operation across transports (in-memory, TCP loopback, the local
//! tailnet), cluster sizes, concurrency, command sizes, storage, the node a
//! command is sent to, and linearizable reads; plus resident memory over a
//! million commands.
//!
//! With `--go-bin` (the `xtask/gobench` program) it also runs Tailscale's Go
//! tsconsensus in the same shapes, each Go scenario right before ours, and
//! Go's tsnet next to ours; with `--kv-bin` (the `kv` example, release) it
//! measures three node processes, failover and elections under load. The
//! side-by-side report goes to `<out-dir>/versus.md` (and every number to
//! `versus.jsonl`).
//!
//! Run through `cargo xtask bench`, which builds both programs, writes the
//! results into docs/benchmarks.md and the chart into docs/img/. Standalone:
//! `cargo bench -p tests --features tailnet --bench cluster -- [<out-dir>] [--quick] [--go-bin PATH]
//! [--kv-bin PATH]`.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{BootstrapOptions, Config, Consensus, Consistency, StateMachine, StopMode, Timing};
use serde::{Deserialize, Serialize};
use tests::rawnet;
use tests::tailnet::LocalTailnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
use ts_transport::{Listener, MemNetwork, TcpTransport, Transport};

use crate::support::{gobench, processes, tap, versus};

/// A register file: commands write a slot, queries read one.
#[derive(Default)]
struct Registers {
    slots: Vec<String>,
    applied: u64,
}

#[derive(Serialize, Deserialize)]
struct SetSlot {
    slot: u16,
    value: String,
}

impl StateMachine for Registers {
    type Command = SetSlot;
    type Response = u64;
    type Query = u16;
    type QueryResponse = usize;

    fn apply(&mut self, command: SetSlot) -> u64 {
        let slot = usize::from(command.slot) % 1024;
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, String::new());
        }
        self.slots[slot] = command.value;
        self.applied += 1;
        self.applied
    }
    fn query(&self, slot: &u16) -> usize {
        self.slots.get(usize::from(*slot) % 1024).map_or(0, String::len)
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &(&self.slots, self.applied)).map_err(io::Error::other)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        (self.slots, self.applied) = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Net {
    Mem,
    Tcp,
    Tailnet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    net: Net,
    nodes: usize,
    callers: usize,
    size: usize,
    durable: bool,
    to_follower: bool,
    op: Op,
}

struct Row {
    scenario: Scenario,
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    cpu_per_op: Duration,
    entries_per_s: f64,
    switches_per_op: f64,
    /// The share of the machine's CPU time the host took meanwhile.
    stolen: Option<f64>,
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The tailnet tests' profile (`tests::tailnet::timing`), with the call
/// deadline, reconciliation period and staleness bound this benchmark's
/// published numbers were measured with.
fn timing() -> Timing {
    Timing {
        call_deadline: Duration::from_secs(30),
        reconcile_every: Duration::from_secs(2),
        max_staleness: Duration::from_secs(60),
        ..tests::tailnet::timing()
    }
}

struct Cluster {
    nodes: Vec<Consensus<Registers>>,
    _tailnet_nodes: Vec<ts_transport::tsnet::TsnetTransport>,
    _dirs: tempfile::TempDir,
}

fn static_node(i: usize, tag: &str) -> TailnetNode {
    TailnetNode {
        id: StableNodeId(format!("bench-{i}")),
        hostname: format!("bench-{i}"),
        dns_name: String::new(),
        ipv4: Some(Ipv4Addr::new(127, 0, 0, i as u8 + 1)),
        ipv6: None,
        tags: BTreeSet::from([tag.to_owned()]),
        online: true,
        has_path: true,
    }
}

async fn cluster(s: &Scenario, tailnet: Option<&LocalTailnet>, serial: usize) -> Cluster {
    let dirs = tempfile::tempdir().expect("temp dir");
    let tag = format!("tag:bench{serial}");
    let config = |i: usize| Config {
        monitor_port: None,
        state_dir: s.durable.then(|| dirs.path().join(format!("n{i}"))),
        timing: timing(),
        ..Config::default()
    };
    let bootstrap =
        BootstrapOptions { tag: tag.clone(), follow_only: false, expected_size: s.nodes };
    let mut tailnet_nodes = Vec::new();
    let mut starts = Vec::new();
    match s.net {
        Net::Mem | Net::Tcp => {
            let net = MemNetwork::new();
            let all: Vec<TailnetNode> = (0..s.nodes).map(|i| static_node(i, &tag)).collect();
            for i in 0..s.nodes {
                let view = ClusterView::new(
                    &tag,
                    all[i].clone(),
                    all.iter().filter(|n| n.id != all[i].id).cloned(),
                );
                let discovery = Arc::new(StaticDiscovery::new(view));
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1));
                let transport: Arc<dyn Transport> = match s.net {
                    Net::Mem => Arc::new(net.node(ip)),
                    _ => Arc::new(TcpTransport::new(ip)),
                };
                let (config, bootstrap) = (config(i), bootstrap.clone());
                starts.push(tokio::spawn(async move {
                    Consensus::start_with(
                        transport,
                        discovery,
                        Registers::default(),
                        bootstrap,
                        config,
                    )
                    .await
                }));
            }
        }
        Net::Tailnet => {
            let tailnet = tailnet.expect("tailnet scenarios need the local tailnet");
            tailnet_nodes = tagged_nodes(tailnet, &format!("b{serial}"), s.nodes, &tag).await;
            for (i, node) in tailnet_nodes.iter().enumerate() {
                let (node, config, bootstrap) = (node.clone(), config(i), bootstrap.clone());
                starts.push(tokio::spawn(async move {
                    Consensus::start_on_tailnet(&node, Registers::default(), bootstrap, config)
                        .await
                }));
            }
        }
    }
    let mut nodes = Vec::new();
    for start in starts {
        nodes.push(start.await.expect("start task").expect("node starts"));
    }
    for node in &nodes {
        node.wait_for(Duration::from_secs(60), |m| m.voters == s.nodes && m.leader.is_some())
            .await
            .expect("cluster formed");
    }
    Cluster { nodes, _tailnet_nodes: tailnet_nodes, _dirs: dirs }
}

async fn measure(s: Scenario, run: Duration, tailnet: &LocalTailnet, serial: usize) -> Row {
    let cluster = cluster(&s, Some(tailnet), serial).await;
    let leader = cluster
        .nodes
        .iter()
        .position(|n| n.metrics().role == consensus::Role::Leader)
        .expect("leader");
    let target = if s.to_follower { (leader + 1) % s.nodes } else { leader };
    let node = cluster.nodes[target].clone();
    let value = "x".repeat(s.size);
    let log_before = cluster.nodes[leader].metrics().last_log_index.unwrap_or(0);
    // Warm up connections and sessions.
    for _ in 0..s.callers.min(16) {
        node.execute(SetSlot { slot: 0, value: value.clone() }).await.expect("warm-up");
    }
    let cpu_before = cpu_time();
    let switches_before = context_switches();
    let machine_before = versus::machine_cpu();
    let started = Instant::now();
    let deadline = started + run;
    let mut tasks = Vec::new();
    for c in 0..s.callers {
        let (node, value) = (node.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                match s.op {
                    Op::Write => {
                        node.execute(SetSlot { slot: c as u16, value: value.clone() })
                            .await
                            .expect("execute");
                    }
                    Op::Read => {
                        node.read(c as u16, Consistency::Linearizable).await.expect("read");
                    }
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let switches = context_switches().saturating_sub(switches_before);
    let stolen = versus::stolen(machine_before, versus::machine_cpu());
    let entries = cluster.nodes[leader].metrics().last_log_index.unwrap_or(0) - log_before;
    latencies.sort();
    if std::env::var_os("BENCH_HISTOGRAM").is_some() {
        eprintln!("{s:?} latencies: {}", histogram(&latencies));
    }
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let row = Row {
        scenario: s,
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        cpu_per_op: cpu / latencies.len().max(1) as u32,
        entries_per_s: entries as f64 / elapsed.as_secs_f64(),
        switches_per_op: switches as f64 / latencies.len().max(1) as f64,
        stolen,
    };
    for node in cluster.nodes {
        node.stop(StopMode::Stay).await.expect("stop");
    }
    for node in &cluster._tailnet_nodes {
        node.close().await;
    }
    row
}

/// The raw tsnet request/response ceiling: 64 streams of 64-byte echoes.
async fn raw_ceiling(tailnet: &LocalTailnet) -> f64 {
    let (a, _) = tailnet.node("ceiling-a").await.expect("node");
    let (b, b_addrs) = tailnet.node("ceiling-b").await.expect("node");
    let listener: Arc<dyn Listener> = Arc::from(b.listen(19000).await.expect("listen"));
    let echo = tokio::spawn({
        let listener = listener.clone();
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while stream.read_exact(&mut buf).await.is_ok()
                        && stream.write_all(&buf).await.is_ok()
                    {}
                });
            }
        }
    });
    let ip = IpAddr::V4(b_addrs.v4.expect("IPv4"));
    let mut streams = Vec::new();
    for _ in 0..64 {
        streams.push(a.dial(ip, 19000, Duration::from_secs(10)).await.expect("dial"));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(2);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [1u8; 64];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    s.write_all(&buf).await.expect("ping");
                    s.read_exact(&mut buf).await.expect("pong");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("pinger");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    listener.close();
    echo.abort();
    a.close().await;
    b.close().await;
    rate
}

/// `BENCH_HISTOGRAM=1` prints each shape's latencies in buckets: how many
/// calls took up to 1, 2, 5, 10, 15, 20, 50, 100 and 250 ms, and longer,
/// with the time the calls over 5 ms spent (to tell a few long stalls from
/// a slow common case).
fn histogram(sorted: &[Duration]) -> String {
    const BOUNDS_MS: [u64; 9] = [1, 2, 5, 10, 15, 20, 50, 100, 250];
    let mut counts = [0usize; BOUNDS_MS.len() + 1];
    for latency in sorted {
        let i = BOUNDS_MS
            .iter()
            .position(|&b| *latency <= Duration::from_millis(b))
            .unwrap_or(BOUNDS_MS.len());
        counts[i] += 1;
    }
    let slow: Duration = sorted.iter().filter(|l| **l > Duration::from_millis(5)).sum();
    let mut out = String::new();
    for (i, count) in counts.iter().enumerate() {
        match BOUNDS_MS.get(i) {
            Some(b) => {
                let _ = write!(out, "<={b}ms {count}, ");
            }
            None => {
                let _ = write!(out, ">250ms {count}; ");
            }
        }
    }
    let _ = write!(out, "calls over 5 ms took {:.0} ms in all", slow.as_secs_f64() * 1e3);
    out
}

/// Whole seconds from the environment variable `name`, or `default` when it
/// is unset or not a number.
fn secs_from_env(name: &str, default: Duration) -> Duration {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).map_or(default, Duration::from_secs)
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let base = Scenario {
        net: Net::Tailnet,
        nodes: 3,
        callers: 1,
        size: 100,
        durable: false,
        to_follower: false,
        op: Op::Write,
    };
    let callers: &[usize] = if quick { &[1, 64] } else { &[1, 16, 64, 256] };
    let mut out = Vec::new();
    for net in [Net::Tailnet, Net::Tcp, Net::Mem] {
        for durable in [false, true] {
            // To a follower too: on the tailnet, the shapes compared with
            // Go's tsconsensus; in memory and over TCP (memory storage), the
            // cheap runs of the forwarding path.
            let targets: &[bool] =
                if net == Net::Tailnet || !durable { &[false, true] } else { &[false] };
            for &to_follower in targets {
                for &c in callers {
                    out.push(Scenario { net, durable, callers: c, to_follower, ..base });
                }
            }
        }
    }
    for nodes in [1, 5] {
        out.push(Scenario { nodes, callers: 64, ..base });
    }
    out.push(Scenario { size: 4096, callers: 1, ..base });
    out.push(Scenario { size: 4096, callers: 64, ..base });
    out.push(Scenario { size: 4096, callers: 64, durable: true, ..base });
    for to_follower in [false, true] {
        out.push(Scenario { op: Op::Read, callers: 1, to_follower, ..base });
        out.push(Scenario { op: Op::Read, callers: 64, to_follower, ..base });
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| Transport | Nodes | Storage | Command | Sent to | Op | Callers | Ops/s | p50 ms | p99 ms | p999 ms | CPU µs/op | Entries/s |\n\
         |---|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let s = r.scenario;
        let _ = writeln!(
            out,
            "| {:?} | {} | {} | {} B | {} | {:?} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} |",
            s.net,
            s.nodes,
            storage(s.durable),
            s.size,
            if s.to_follower { "follower" } else { "leader" },
            s.op,
            s.callers,
            r.ops_per_s,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            r.cpu_per_op.as_secs_f64() * 1e6,
            r.entries_per_s
        );
    }
    out
}

fn find(rows: &[Row], f: impl Fn(&Scenario) -> bool) -> Option<&Row> {
    rows.iter().find(|r| f(&r.scenario))
}

fn targets(rows: &[Row], ceiling: f64) -> String {
    let core = |callers: usize, durable: bool| {
        find(rows, |s| {
            s.net == Net::Tailnet
                && s.nodes == 3
                && s.size == 100
                && !s.to_follower
                && s.op == Op::Write
                && s.callers == callers
                && s.durable == durable
        })
    };
    let mut out = String::new();
    let mut line = |name: &str, value: f64, goal: f64, unit: &str, higher_is_better: bool| {
        let met = if higher_is_better { value >= goal } else { value <= goal };
        let _ = writeln!(
            out,
            "| {name} | {value:.2}{unit} | {} {goal:.2}{unit} | {} |",
            if higher_is_better { "≥" } else { "≤" },
            if met { "met" } else { "**missed**" }
        );
    };
    if let (Some(one), Some(many), Some(durable)) =
        (core(1, false), core(64, false), core(64, true))
    {
        line("64 callers ÷ 1 caller (memory)", many.ops_per_s / one.ops_per_s, 20.0, "×", true);
        line("memory ÷ durable at 64 callers", many.ops_per_s / durable.ops_per_s, 2.0, "×", false);
        line("64 callers ÷ raw tsnet req/resp rate", many.ops_per_s / ceiling, 0.30, "", true);
        line(
            "p99 ÷ p50 at 64 callers (memory)",
            many.p99.as_secs_f64() / many.p50.as_secs_f64(),
            10.0,
            "×",
            false,
        );
        line(
            "p99 ÷ p50 at 64 callers (durable)",
            durable.p99.as_secs_f64() / durable.p50.as_secs_f64(),
            10.0,
            "×",
            false,
        );
    }
    format!(
        "| Target (3 nodes, local tailnet, 100 B) | Measured | Goal | |\n|---|---:|---:|---|\n{out}"
    )
}

fn chart(rows: &[Row], ceiling: f64, path: &std::path::Path) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let max = rows.iter().map(|r| r.ops_per_s).fold(ceiling, f64::max) * 1.3;
    let Ok(mut plot) = ChartBuilder::on(&root)
        .caption("Commands/s against concurrent callers (3 nodes, 100 B)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..300f64).log_scale(), (10f64..max).log_scale())
    else {
        return;
    };
    let _ = plot.configure_mesh().x_desc("concurrent callers").y_desc("commands per second").draw();
    let series = [
        (Net::Tailnet, false, "tailnet, memory", RGBColor(31, 119, 180)),
        (Net::Tailnet, true, "tailnet, durable", RGBColor(255, 127, 14)),
        (Net::Tcp, false, "TCP, memory", RGBColor(44, 160, 44)),
        (Net::Tcp, true, "TCP, durable", RGBColor(214, 39, 40)),
        (Net::Mem, false, "in-process, memory", RGBColor(148, 103, 189)),
        (Net::Mem, true, "in-process, durable", RGBColor(140, 86, 75)),
    ];
    for (net, durable, label, color) in series {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| {
                let s = r.scenario;
                s.net == net
                    && s.durable == durable
                    && s.nodes == 3
                    && s.size == 100
                    && !s.to_follower
                    && s.op == Op::Write
            })
            .map(|r| (r.scenario.callers as f64, r.ops_per_s))
            .collect();
        if let Ok(drawn) = plot.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        {
            drawn.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        let _ = plot.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())));
    }
    if let Ok(drawn) = plot
        .draw_series(LineSeries::new(vec![(1.0, ceiling), (300.0, ceiling)], BLACK.stroke_width(1)))
    {
        drawn
            .label("raw tsnet ceiling (64 streams, 64 B echo)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    }
    let _ = plot
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw();
    let _ = root.present();
}

/// A million commands through a 3-node in-process cluster (memory storage,
/// so the log lives in RAM until snapshots let it be purged), in a process
/// of its own; resident size along the way.
async fn memory_run() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    const TOTAL: u64 = 1_000_000;
    const CALLERS: u16 = 16;
    let s = Scenario {
        net: Net::Mem,
        nodes: 3,
        callers: CALLERS as usize,
        size: 100,
        durable: false,
        to_follower: false,
        op: Op::Write,
    };
    let cluster = cluster(&s, None, 0).await;
    let leader = cluster
        .nodes
        .iter()
        .find(|n| n.metrics().role == consensus::Role::Leader)
        .expect("leader")
        .clone();
    let baseline = resident_bytes();
    let issued = Arc::new(AtomicU64::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let value = "m".repeat(100);
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (leader, issued, applied, value) =
            (leader.clone(), issued.clone(), applied.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < TOTAL {
                leader.execute(SetSlot { slot: c, value: value.clone() }).await.expect("execute");
                applied.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut report = format!(
        "Three nodes in one process, in-memory transport and storage, {CALLERS} callers, 100-byte commands; \
         resident size of the whole process (all three nodes), {:.1} MiB right after the cluster formed.\n\n\
         | Commands applied | Resident size | Log entries | Last snapshot at | Entries in memory |\n|---:|---:|---:|---:|---:|\n",
        mib(baseline)
    );
    let started = Instant::now();
    for mark in [100_000u64, 250_000, 500_000, 750_000, 1_000_000] {
        while applied.load(Ordering::Relaxed) < mark {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let m = leader.metrics();
        let last = m.last_log_index.unwrap_or(0);
        let snapshot = m.snapshot_index.unwrap_or(0);
        let _ = writeln!(
            report,
            "| {mark} | {:.1} MiB | {last} | {} | ≤ {} |",
            mib(resident_bytes()),
            m.snapshot_index.map_or("-".to_owned(), |i| i.to_string()),
            last - snapshot + 1000
        );
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let _ = writeln!(report, "\n{TOTAL} commands in {:.1?}.", started.elapsed());
    for node in cluster.nodes {
        node.stop(StopMode::Stay).await.expect("stop");
    }
    report
}

/// Voluntary and involuntary context switches of every thread of this
/// process so far (Linux sums them over the threads for `RUSAGE_SELF`).
fn context_switches() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    (usage.ru_nvcsw + usage.ru_nivcsw) as u64
}

/// `n` nodes called `<prefix>-<i>` on the local tailnet, tagged `tag`,
/// once each sees itself and all the others tagged (within 30 s).
async fn tagged_nodes(
    tailnet: &LocalTailnet,
    prefix: &str,
    n: usize,
    tag: &str,
) -> Vec<ts_transport::tsnet::TsnetTransport> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let hostname = format!("{prefix}-{i}");
        let (node, _) = tailnet.node(&hostname).await.expect("tailnet node");
        tailnet.set_tags(&hostname, &[tag]).await.expect("tag");
        nodes.push(node);
    }
    for node in &nodes {
        let api = ts_discovery::LocalApi::for_node(node, ts_discovery::LocalApiLimits::default())
            .expect("LocalAPI");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !api
            .status()
            .await
            .is_ok_and(|v| v.cluster(tag).members.len() == n - 1 && v.self_node.has_tag(tag))
        {
            assert!(Instant::now() < deadline, "tags did not propagate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes
}

/// Three tapped nodes on the local tailnet, formed, for the traces.
struct TraceCluster {
    tap: Arc<tap::Tap>,
    raft_port: u16,
    command_port: u16,
    nodes: Vec<ts_transport::tsnet::TsnetTransport>,
    cluster: Vec<Consensus<Registers>>,
    leader: usize,
    /// The nodes' state directories, if durable.
    _dirs: Option<tempfile::TempDir>,
}

impl TraceCluster {
    /// Starts the nodes, tagged `tag:trace<name>`, with durable state if
    /// `durable`, and waits for a leader.
    async fn start(tailnet: &LocalTailnet, name: &str, durable: bool) -> TraceCluster {
        let dirs = durable.then(|| tempfile::tempdir().expect("temp dir"));
        let config = Config { monitor_port: None, timing: timing(), ..Config::default() };
        let (raft_port, command_port) = (config.raft_port, config.command_port);
        let tap = tap::Tap::new(raft_port);
        let tag = format!("tag:trace{name}");
        let nodes = tagged_nodes(tailnet, &format!("trace{name}"), 3, &tag).await;
        let mut starts = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let api =
                ts_discovery::LocalApi::for_node(node, ts_discovery::LocalApiLimits::default())
                    .expect("LocalAPI");
            let discovery = Arc::new(ts_discovery::TailnetDiscovery::start(
                api,
                ts_discovery::TailnetDiscoveryConfig::new(tag.clone()),
            ));
            let transport = tap.wrap(Arc::new(node.clone()), i);
            let bootstrap =
                BootstrapOptions { tag: tag.clone(), follow_only: false, expected_size: 3 };
            let state_dir = dirs.as_ref().map(|d| d.path().join(format!("n{i}")));
            let config = Config { state_dir, ..config.clone() };
            starts.push(tokio::spawn(async move {
                Consensus::start_with(transport, discovery, Registers::default(), bootstrap, config)
                    .await
            }));
        }
        let mut cluster = Vec::new();
        for start in starts {
            cluster.push(start.await.expect("start task").expect("node starts"));
        }
        for node in &cluster {
            node.wait_for(Duration::from_secs(60), |m| m.voters == 3 && m.leader.is_some())
                .await
                .expect("cluster formed");
        }
        let leader = cluster
            .iter()
            .position(|n| n.metrics().role == consensus::Role::Leader)
            .expect("leader");
        TraceCluster { tap, raft_port, command_port, nodes, cluster, leader, _dirs: dirs }
    }

    /// Each node's first tailnet address.
    fn ips(&self) -> Vec<IpAddr> {
        self.nodes.iter().map(|n| n.local_addrs()[0]).collect()
    }

    async fn stop(self) {
        for n in self.cluster {
            n.stop(StopMode::Stay).await.expect("stop");
        }
        for n in &self.nodes {
            n.close().await;
        }
    }
}

/// The size from which `--trace-load` counts a raft request as carrying
/// entries: an AppendEntries with none (the commit index, a heartbeat) is
/// a few dozen bytes, one entry of a single 100-byte command already more
/// than this.
const ENTRY_FRAME: usize = 160;

/// Replication under load: `callers` callers put through the leader for
/// `secs`, and the leader's raft frames to and from each follower say how
/// many requests it had in flight to it on average (Little's law: the sum
/// of each answer's time less its request's, over the window; it holds
/// whichever request an answer belongs to, as long as each has one) and
/// how long each took.
async fn load_trace(
    tailnet: &LocalTailnet,
    callers: usize,
    secs: Duration,
    durable: bool,
) -> String {
    use tap::Dir;
    let c = TraceCluster::start(tailnet, "load", durable).await;
    let leader = c.cluster[c.leader].clone();
    let value = "x".repeat(100);
    for _ in 0..200 {
        leader.execute(SetSlot { slot: 0, value: value.clone() }).await.expect("warm-up");
    }
    let cpu_before = cpu_time();
    c.tap.record(true);
    let from = c.tap.now();
    let until = Instant::now() + secs;
    let mut tasks = Vec::new();
    for slot in 0..callers {
        let node = leader.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                node.execute(SetSlot { slot: slot as u16, value: value.clone() })
                    .await
                    .expect("execute");
                done += 1;
            }
            done
        }));
    }
    let mut commands = 0;
    for task in tasks {
        commands += task.await.expect("caller");
    }
    let window = (c.tap.now() - from).as_secs_f64();
    c.tap.record(false);
    let cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    let events = c.tap.events();
    let ips = c.ips();
    let me = c.leader;
    let raft_port = c.raft_port;
    c.stop().await;

    let mut out = format!(
        "Replication under load: {callers} caller{} to the leader for {window:.1} s, 3 nodes in one \
         process on the local tailnet, {} storage: {:.0} commands/s, {:.2} cores busy \
         (CPU of the whole process over the window, of 2).\n\n\
         | Follower | Leader's raft frames to it per s | Requests in flight to it, on average | Most in flight at once | Share of the time with one or more in flight | Mean time from request to answer | Requests of {ENTRY_FRAME} bytes or more (entries) per s, mean answer time | Smaller requests (no entries) per s, mean answer time |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        if callers == 1 { "" } else { "s" },
        storage(durable),
        commands as f64 / window,
        cpu / window
    );
    let mut sizes = String::new();
    for (i, ip) in ips.iter().enumerate().filter(|(i, _)| *i != me) {
        // Each frame's time and size (a write's bytes shared among the
        // frames that started in it).
        let frames = |dir: Dir| -> Vec<(f64, usize)> {
            events
                .iter()
                .filter(|e| e.node == me && e.port == raft_port && e.dir == dir && e.peer == *ip)
                .flat_map(|e| {
                    let size = e.bytes / e.frames.max(1);
                    std::iter::repeat_n((e.at.as_secs_f64(), size), e.frames)
                })
                .collect()
        };
        let sent = frames(Dir::Send);
        let first = sent.first().map_or(f64::MAX, |f| f.0);
        let mut by_bytes: Vec<usize> = sent.iter().map(|f| f.1).collect();
        by_bytes.sort_unstable();
        let at = |q: usize| by_bytes.get(by_bytes.len() * q / 10).copied().unwrap_or(0);
        let _ = writeln!(
            sizes,
            "Request sizes to n{i}, bytes at each tenth from the smallest: {:?}.",
            (0..10).map(at).collect::<Vec<_>>()
        );
        // Answers to requests sent before the window began are not ours.
        let answers: Vec<f64> =
            frames(Dir::Recv).into_iter().map(|f| f.0).filter(|t| *t >= first).collect();
        let n = sent.len().min(answers.len());
        let waited: f64 =
            answers[..n].iter().sum::<f64>() - sent[..n].iter().map(|f| f.0).sum::<f64>();
        // Requests that carry entries against those that carry none (the
        // commit index alone, heartbeats): with durable storage only the
        // first make the follower sync.
        let by_size = |entries: bool| -> String {
            let times: Vec<f64> = sent[..n]
                .iter()
                .zip(&answers[..n])
                .filter(|(s, _)| (s.1 >= ENTRY_FRAME) == entries)
                .map(|(s, a)| a - s.0)
                .collect();
            let mean =
                if times.is_empty() { 0.0 } else { times.iter().sum::<f64>() / times.len() as f64 };
            format!("{:.0}, {:.0} µs", times.len() as f64 / window, mean * 1e6)
        };
        // The requests out at once, in the order the tap saw sends and
        // answers (an answer is read after its request was written).
        let (mut out_now, mut most) = (0usize, 0usize);
        // Time with at least one request out, and since when it has been.
        let (mut busy, mut busy_since) = (0.0, None);
        for e in events.iter().filter(|e| {
            e.node == me && e.port == raft_port && e.peer == *ip && e.at.as_secs_f64() >= first
        }) {
            let at = e.at.as_secs_f64();
            match e.dir {
                Dir::Send => out_now += e.frames,
                Dir::Recv => out_now = out_now.saturating_sub(e.frames),
            }
            most = most.max(out_now);
            match (out_now > 0, busy_since) {
                (true, None) => busy_since = Some(at),
                (false, Some(since)) => {
                    busy += at - since;
                    busy_since = None;
                }
                _ => {}
            }
        }
        let _ = writeln!(
            out,
            "| n{i} | {:.0} | {:.2} | {most} | {:.0} % | {:.0} µs | {} | {} |",
            sent.len() as f64 / window,
            waited / window,
            busy / window * 100.0,
            if n == 0 { 0.0 } else { waited / n as f64 * 1e6 },
            by_size(true),
            by_size(false),
        );
    }
    let _ = write!(out, "\n{sizes}");
    out
}

/// The word reports use for a scenario's storage.
fn storage(durable: bool) -> &'static str {
    if durable { "durable" } else { "memory" }
}

/// One caller, three nodes on the tailnet (durable state if `durable`),
/// every stream of every node tapped: raft frames and HTTP writes per
/// command, where they fall relative to the command, and the time between
/// them.
async fn trace_run(
    tailnet: &LocalTailnet,
    to_follower: bool,
    commands: usize,
    durable: bool,
) -> String {
    use tap::Dir;
    let c = TraceCluster::start(tailnet, &u8::from(to_follower).to_string(), durable).await;
    let (raft_port, command_port, leader) = (c.raft_port, c.command_port, c.leader);
    let cluster = &c.cluster;
    let target = if to_follower { (leader + 1) % 3 } else { leader };
    let node = cluster[target].clone();
    let value = "x".repeat(100);
    for _ in 0..200 {
        node.execute(SetSlot { slot: 0, value: value.clone() }).await.expect("warm-up");
    }
    let switches_before = context_switches();
    let cpu_before = cpu_time();
    c.tap.record(true);
    let mut windows = Vec::with_capacity(commands);
    for _ in 0..commands {
        let start = c.tap.now();
        node.execute(SetSlot { slot: 0, value: value.clone() }).await.expect("execute");
        windows.push((start, c.tap.now()));
    }
    c.tap.record(false);
    let cpu = cpu_time().saturating_sub(cpu_before);
    let switches = context_switches().saturating_sub(switches_before);
    // The tap stores events in the order its lock was taken, which may
    // differ from the order of their times; the steps below need the latter.
    let mut events = c.tap.events();
    events.sort_by_key(|e| e.at);
    let counts = c.tap.counts();
    let ips = c.ips();
    c.stop().await;

    let n = commands as f64;
    let role = |i: usize| {
        if i == leader {
            format!("leader (n{i})")
        } else if i == target {
            format!("follower n{i} (called)")
        } else {
            format!("follower n{i}")
        }
    };
    let peer =
        |ip: IpAddr| ips.iter().position(|a| *a == ip).map_or(ip.to_string(), |i| format!("n{i}"));
    let mut out = format!(
        "{commands} commands, 1 caller, sent to the {}; 3 nodes in one process on the local tailnet, {} storage.\n\n\
         | Node | Port | Direction | Writes or reads per command | Raft frames per command | Bytes per command |\n|---|---|---|---:|---:|---:|\n",
        if to_follower { "follower" } else { "leader" },
        storage(durable),
    );
    for ((i, port, dir), c) in &counts {
        let port_name = if *port == raft_port {
            "raft".to_owned()
        } else if *port == command_port {
            "command (HTTP)".to_owned()
        } else {
            port.to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {port_name} | {:?} | {:.2} | {} | {:.0} |",
            role(*i),
            dir,
            c.calls as f64 / n,
            if *port == raft_port {
                format!("{:.2}", c.frames as f64 / n)
            } else {
                "–".to_owned()
            },
            c.bytes as f64 / n
        );
    }
    // Per command: the leader's raft frames inside the command's window and
    // between its end and the next command's start.
    let mut inside = 0usize;
    let mut after = 0usize;
    let mut phases: [Vec<Duration>; 3] = Default::default();
    let mut e = 0;
    for (k, (start, end)) in windows.iter().enumerate() {
        let next = windows.get(k + 1).map_or(Duration::MAX, |w| w.0);
        while e < events.len() && events[e].at < *start {
            e += 1;
        }
        let mut first_send = None;
        let mut first_ack = None;
        let mut j = e;
        while j < events.len() && events[j].at < next {
            let ev = events[j];
            if ev.node == leader && ev.port == raft_port && ev.dir == Dir::Send && ev.frames > 0 {
                if ev.at <= *end {
                    inside += ev.frames;
                    first_send.get_or_insert(ev.at);
                } else {
                    after += ev.frames;
                }
            }
            if ev.node == leader
                && ev.port == raft_port
                && ev.dir == Dir::Recv
                && ev.frames > 0
                && ev.at <= *end
                && first_send.is_some()
            {
                first_ack.get_or_insert(ev.at);
            }
            j += 1;
        }
        if let (Some(send), Some(ack)) = (first_send, first_ack) {
            phases[0].push(send.saturating_sub(*start));
            phases[1].push(ack.saturating_sub(send));
            phases[2].push(end.saturating_sub(ack));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let total: Vec<Duration> = windows.iter().map(|(s, e)| *e - *s).collect();
    let mut total_sorted = total.clone();
    let _ = writeln!(
        out,
        "\nLeader raft frames sent per command: {:.2} while the command is in flight, {:.2} after it was answered and before the next one.\n\
         Context switches (all threads of the process, all three nodes): {:.1} per command; CPU {:.0} µs per command.\n\n\
         | Phase (medians over the commands where the leader's first frame and first answer fell inside the command) | µs |\n|---|---:|\n\
         | call → leader writes its first raft frame | {:.0} |\n\
         | leader's first raft frame → first raft answer read by the leader | {:.0} |\n\
         | first raft answer → call returns | {:.0} |\n\
         | whole call (median of all) | {:.0} |\n\
         Commands where both fell inside: {} of {commands}.",
        inside as f64 / n,
        after as f64 / n,
        switches as f64 / n,
        cpu.as_secs_f64() * 1e6 / n,
        median(&mut phases[0]),
        median(&mut phases[1]),
        median(&mut phases[2]),
        median(&mut total_sorted),
        phases[1].len(),
    );
    // Per command, over all of them: when the command's entry left the
    // leader (its first raft write of an entry's size inside the call) and,
    // through a follower, the two hops on the command port.
    let _ =
        write!(out, "{}", entry_steps(&events, &windows, leader, target, raft_port, command_port));
    // The timeline of the command closest to the median.
    let med = total_sorted[total_sorted.len() / 2];
    if let Some(k) = total.iter().position(|d| *d == med) {
        let (start, end) = windows[k];
        let next = windows.get(k + 1).map_or(end, |w| w.0);
        let _ = writeln!(
            out,
            "\nTimeline of one command of median latency ({:.0} µs), until the next command starts:\n\n| µs after the call | Node | Port | | Other end | Bytes | Raft frames |\n|---:|---|---|---|---|---:|---:|",
            med.as_secs_f64() * 1e6
        );
        for ev in events.iter().filter(|ev| ev.at >= start && ev.at < next) {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {} | {:?} | {} | {} | {} |",
                (ev.at - start).as_secs_f64() * 1e6,
                role(ev.node),
                if ev.port == raft_port { "raft" } else { "command" },
                ev.dir,
                peer(ev.peer),
                ev.bytes,
                ev.frames
            );
        }
        let _ =
            writeln!(out, "| {:.0} | | | call returns | | |", (end - start).as_secs_f64() * 1e6);
    }
    out
}

/// Medians over all commands of a one-caller trace, per step of each
/// command. Its entry is a raft write of [`ENTRY_FRAME`] bytes or more by
/// the leader inside the call: through a follower, the first after the
/// leader read the forward; to the leader, the earliest of the last such
/// write to each follower (an earlier one to the same follower belongs to
/// the previous command; a follower whose own copy leaves after the call
/// returns cannot be told apart). The step before it is timed from the
/// leader's last raft read from the same follower, the answer the entry
/// may have waited for. Calls through a follower count where the
/// command-port writes and reads fall in order around the entry.
fn entry_steps(
    events: &[tap::Event],
    windows: &[(Duration, Duration)],
    leader: usize,
    target: usize,
    raft_port: u16,
    command_port: u16,
) -> String {
    use tap::Dir;
    #[derive(Default)]
    struct Steps {
        entry: Vec<Duration>,
        after_answer: Vec<Duration>,
        to_end: Vec<Duration>,
        before_forward: Vec<Duration>,
        forward_hop: Vec<Duration>,
        read_to_entry: Vec<Duration>,
        entry_to_answer: Vec<Duration>,
        answer_hop: Vec<Duration>,
        after_back: Vec<Duration>,
        two_entries: usize,
    }
    let forwarded = target != leader;
    let mut steps = Steps::default();
    let mut e = 0;
    for (start, end) in windows {
        while e < events.len() && events[e].at < *start {
            e += 1;
        }
        let inside: Vec<&tap::Event> = events[e..].iter().take_while(|ev| ev.at <= *end).collect();
        let on = |ev: &tap::Event, node: usize, port: u16, dir: Dir| {
            ev.node == node && ev.port == port && ev.dir == dir
        };
        let first = |node: usize, port: u16, dir: Dir| {
            inside.iter().find(|ev| on(ev, node, port, dir)).map(|ev| ev.at)
        };
        let last = |node: usize, port: u16, dir: Dir| {
            inside.iter().rev().find(|ev| on(ev, node, port, dir)).map(|ev| ev.at)
        };
        let (sent, read, answered, back) = if forwarded {
            (
                first(target, command_port, Dir::Send),
                first(leader, command_port, Dir::Recv),
                last(leader, command_port, Dir::Send),
                last(target, command_port, Dir::Recv),
            )
        } else {
            (None, None, None, None)
        };
        let after = read.unwrap_or(*start);
        let entries: Vec<&&tap::Event> = inside
            .iter()
            .filter(|ev| on(ev, leader, raft_port, Dir::Send) && ev.bytes >= ENTRY_FRAME)
            .collect();
        if entries.iter().any(|a| entries.iter().filter(|b| b.peer == a.peer).count() > 1) {
            steps.two_entries += 1;
        }
        // Through a follower: the first entry after the leader read the
        // forward. To the leader: the call's own entry to the follower it
        // reached first, the last entry-sized write to each follower (an
        // earlier one to the same follower is the previous command's).
        let entry = if forwarded {
            entries.iter().find(|ev| ev.at >= after)
        } else {
            entries
                .iter()
                .filter(|a| !entries.iter().any(|b| b.peer == a.peer && b.at > a.at))
                .min_by_key(|ev| ev.at)
        };
        let Some(entry) = entry else { continue };
        // The leader's last raft read from that follower before the entry.
        let answer = inside
            .iter()
            .filter(|ev| {
                on(ev, leader, raft_port, Dir::Recv) && ev.peer == entry.peer && ev.at <= entry.at
            })
            .map(|ev| ev.at)
            .next_back();
        if !forwarded {
            steps.entry.push(entry.at.saturating_sub(*start));
            if let Some(answer) = answer {
                steps.after_answer.push(entry.at.saturating_sub(answer));
            }
            steps.to_end.push(end.saturating_sub(entry.at));
            continue;
        }
        if let (Some(sent), Some(read), Some(answered), Some(back)) = (sent, read, answered, back)
            && sent <= read
            && entry.at <= answered
            && answered <= back
        {
            steps.entry.push(entry.at.saturating_sub(*start));
            if let Some(answer) = answer {
                steps.after_answer.push(entry.at.saturating_sub(answer));
            }
            steps.before_forward.push(sent.saturating_sub(*start));
            steps.forward_hop.push(read.saturating_sub(sent));
            steps.read_to_entry.push(entry.at.saturating_sub(read));
            steps.entry_to_answer.push(answered.saturating_sub(entry.at));
            steps.answer_hop.push(back.saturating_sub(answered));
            steps.after_back.push(end.saturating_sub(back));
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let mut out = format!(
        "\nPer command, medians over the {} of {} commands counted ({} had two or more \
         entry-sized writes to one follower inside the call):\n\n| Step | µs |\n|---|---:|\n\
         | call → its entry leaves the leader (a raft write of {ENTRY_FRAME} bytes or more) | {:.0} |\n\
         | the leader's last raft read from that follower → the entry leaves ({} commands had one) | {:.0} |\n",
        steps.entry.len(),
        windows.len(),
        steps.two_entries,
        median(&mut steps.entry),
        steps.after_answer.len(),
        median(&mut steps.after_answer),
    );
    if forwarded {
        let _ = write!(
            out,
            "| call → the follower writes the command to the leader | {:.0} |\n\
             | forward hop: the follower writes the command → the leader reads it | {:.0} |\n\
             | the leader reads it → the entry leaves | {:.0} |\n\
             | the entry leaves → the leader writes the answer | {:.0} |\n\
             | answer hop: the leader writes the answer → the follower reads it | {:.0} |\n\
             | the follower reads the answer → the call returns | {:.0} |\n",
            median(&mut steps.before_forward),
            median(&mut steps.forward_hop),
            median(&mut steps.read_to_entry),
            median(&mut steps.entry_to_answer),
            median(&mut steps.answer_hop),
            median(&mut steps.after_back),
        );
    } else {
        let _ = writeln!(
            out,
            "| the entry leaves → the call returns | {:.0} |",
            median(&mut steps.to_end)
        );
    }
    out
}

/// Whether Go's tsconsensus runs the same shape: 3 nodes on the tailnet,
/// 100-byte commands.
fn comparable(s: &Scenario) -> bool {
    s.net == Net::Tailnet && s.nodes == 3 && s.size == 100 && s.op == Op::Write
}

fn numbers(r: &Row) -> versus::Numbers {
    versus::Numbers {
        ops_per_s: r.ops_per_s,
        p50: r.p50,
        p99: r.p99,
        cpu_per_op: r.cpu_per_op,
        entries_per_s: r.entries_per_s,
        switches_per_op: r.switches_per_op,
        stolen: r.stolen,
    }
}

/// Command-line options.
struct Args {
    quick: bool,
    memory: bool,
    out: PathBuf,
    go_bin: Option<PathBuf>,
    kv_bin: Option<PathBuf>,
    trace: bool,
    /// Callers of the replication-under-load trace, if asked for.
    trace_load: Option<usize>,
    /// The traces' nodes keep durable state (`--durable`).
    durable: bool,
}

/// The workspace's `target/bench/` (or `$CARGO_TARGET_DIR/bench/`), not a
/// path relative to wherever cargo runs the bench (the package directory).
fn default_out() -> PathBuf {
    // As xtask's `target_dir`: a relative CARGO_TARGET_DIR is the workspace
    // root's (this runs in the package's directory).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("bench"),
        None => root.join("target/bench"),
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        memory: false,
        out: default_out(),
        go_bin: None,
        kv_bin: None,
        trace: false,
        trace_load: None,
        durable: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => args.quick = true,
            "--memory" => args.memory = true,
            "--trace" => args.trace = true,
            "--durable" => args.durable = true,
            "--trace-load" => {
                let callers = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0);
                args.trace_load =
                    Some(callers.expect("--trace-load takes a number of callers above 0"));
            }
            "--go-bin" => args.go_bin = it.next().map(PathBuf::from),
            "--kv-bin" => args.kv_bin = it.next().map(PathBuf::from),
            flag if flag.starts_with("--") => panic!("unknown option {flag}"),
            dir => args.out = PathBuf::from(dir),
        }
    }
    args
}

/// Our tsnet pair, then Go's, measured the same way.
async fn transports(
    tailnet: &LocalTailnet,
    go: Option<&gobench::GoBench>,
    quick: bool,
) -> (rawnet::Report, String, Option<Result<gobench::GoTransport, String>>) {
    let (a, _) = tailnet.node("rawnet-a").await.expect("node");
    let (b, _) = tailnet.node("rawnet-b").await.expect("node");
    let b_ip = b.local_addrs()[0];
    let warm = b.listen(17000).await.expect("listen");
    rawnet::warm_up(&a, &*warm, b_ip).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let path = rawnet::tailnet_path(&a, b_ip).await;
    let amounts = if quick { rawnet::Amounts::QUICK } else { rawnet::Amounts::FULL };
    let (a_arc, b_arc) = (Arc::new(a.clone()), Arc::new(b.clone()));
    let ours = rawnet::measure(a_arc, b_arc, 17200, amounts).await;
    a.close().await;
    b.close().await;
    eprintln!(
        "our tsnet: RTT p50 {:.0} µs, {:.0} MiB/s ({path})",
        ours.rtt_p50.as_secs_f64() * 1e6,
        ours.mib_per_s
    );
    let theirs = match go {
        Some(go) => {
            let result = go.transport(quick).await;
            match &result {
                Ok(t) => eprintln!(
                    "Go tsnet: RTT p50 {:.0} µs, {:.0} MiB/s ({})",
                    t.rtt_p50_us, t.mib_per_s, t.path
                ),
                Err(e) => eprintln!("Go tsnet: {e}"),
            }
            Some(result)
        }
        None => None,
    };
    (ours, path, theirs)
}

fn main() {
    let args = parse_args();
    let (quick, out) = (args.quick, args.out.clone());
    std::fs::create_dir_all(&out).expect("output dir");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if args.memory {
        let report = runtime.block_on(memory_run());
        std::fs::write(out.join("memory.md"), &report).expect("write report");
        println!("{report}");
        return;
    }
    if let Some(callers) = args.trace_load {
        let secs = secs_from_env("BENCH_SECS", Duration::from_secs(3)).max(Duration::from_secs(1));
        let report = runtime.block_on(async {
            let tailnet = LocalTailnet::start().await.expect("local tailnet").without_node_logs();
            let report = load_trace(&tailnet, callers, secs, args.durable).await;
            tailnet.stop().await;
            report
        });
        std::fs::write(out.join("trace-load.md"), &report).expect("write report");
        println!("{report}");
        return;
    }
    if args.trace {
        let report = runtime.block_on(async {
            let tailnet = LocalTailnet::start().await.expect("local tailnet").without_node_logs();
            let commands = if quick { 500 } else { 2000 };
            let leader = trace_run(&tailnet, false, commands, args.durable).await;
            let follower = trace_run(&tailnet, true, commands, args.durable).await;
            tailnet.stop().await;
            format!("{leader}\n{follower}")
        });
        std::fs::write(out.join("trace.md"), &report).expect("write report");
        println!("{report}");
        return;
    }
    runtime.block_on(async {
        let tailnet = LocalTailnet::start().await.expect("local tailnet").without_node_logs();
        let go = args.go_bin.clone().map(|bin| {
            let log = out.join("gobench.log");
            let _ = std::fs::remove_file(&log);
            gobench::GoBench::new(bin, &tailnet.control_url, log)
        });
        let ceiling = raw_ceiling(&tailnet).await;
        eprintln!("raw tsnet ceiling: {ceiling:.0} req/s");
        let mut report = versus::Report::new(quick);
        if go.is_some() {
            let (ours, path, theirs) = transports(&tailnet, go.as_ref(), quick).await;
            report.transport = Some(versus::Transports { ours, ours_path: path, go: theirs });
        }
        // BENCH_SECS=n runs each in-process shape for n seconds (long
        // enough to attach `perf record -p` to this process mid-shape).
        let run = secs_from_env(
            "BENCH_SECS",
            if quick { Duration::from_secs(1) } else { Duration::from_secs(3) },
        );
        let mut rows = Vec::new();
        // BENCH_FILTER=text keeps the scenarios whose description contains
        // it; `a&b` those containing both (e.g. `net: Mem&to_follower`).
        let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
        let chosen = scenarios(quick).into_iter().filter(|s| {
            let description = format!("{s:?}");
            filter.split('&').all(|term| description.contains(term))
        });
        for (serial, s) in chosen.enumerate() {
            // Go first, then ours, shape by shape: the load of the shared
            // machine drifts less between the two halves of a row.
            let theirs = match &go {
                Some(go) if comparable(&s) => {
                    let shape = gobench::GoScenario {
                        callers: s.callers,
                        durable: s.durable,
                        to_follower: s.to_follower,
                        size: s.size,
                        run,
                    };
                    let machine_before = versus::machine_cpu();
                    let result = go.cluster(shape, serial).await;
                    let stolen = versus::stolen(machine_before, versus::machine_cpu());
                    match &result {
                        Ok(g) => eprintln!(
                            "Go {s:?}: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms (host stole {})",
                            g.ops_per_s,
                            g.p50_us / 1e3,
                            g.p99_us / 1e3,
                            versus::stolen_text(stolen),
                        ),
                        Err(e) => eprintln!("Go {s:?}: {e}"),
                    }
                    Some((result, stolen))
                }
                _ => None,
            };
            // The machine's thread hand-off cost right before the shape, to
            // read our tailnet rates against (see `wakeup_round_trip`).
            let wakeup = versus::wakeup_text(
                tokio::task::spawn_blocking(versus::wakeup_round_trip).await.ok().flatten(),
            );
            let row = measure(s, run, &tailnet, serial).await;
            eprintln!(
                "{:?}: {:.0} ops/s p50 {} ms p99 {} ms (wake-up round trip before it: {wakeup}; \
                 host stole {})",
                s,
                row.ops_per_s,
                ms(row.p50),
                ms(row.p99),
                versus::stolen_text(row.stolen),
            );
            if let Some(theirs) = theirs {
                report.clusters.push(versus::Pair {
                    callers: s.callers,
                    durable: s.durable,
                    to_follower: s.to_follower,
                    ours: numbers(&row),
                    go: theirs.0,
                    go_stolen: theirs.1,
                });
            }
            rows.push(row);
        }
        let work = out.join("processes");
        let proc_options = |flavor, bin: PathBuf| processes::ProcOptions {
            flavor,
            bin,
            work: work.clone(),
            load: if quick { Duration::from_secs(3) } else { Duration::from_secs(10) },
            idle: if quick { Duration::from_secs(2) } else { Duration::from_secs(5) },
            many: 64,
            failover_rounds: if quick { 3 } else { 20 },
            // BENCH_STEADY_SECS=n runs the fault-free load longer (elections
            // nobody caused are rare; counting them needs minutes).
            steady: secs_from_env(
                "BENCH_STEADY_SECS",
                if quick { Duration::from_secs(10) } else { Duration::from_secs(60) },
            ),
        };
        let mut serial = 0;
        let mut flavors = Vec::new();
        if let Some(bin) = &args.kv_bin {
            flavors.push(proc_options(processes::Flavor::Kv, bin.clone()));
        }
        if let Some(go) = &go
            && args.kv_bin.is_some()
        {
            flavors.push(proc_options(processes::Flavor::Go, go.bin.clone()));
        }
        for options in flavors {
            serial += 1;
            eprintln!("{:?} processes…", options.flavor);
            let result = processes::run(&tailnet, &options, serial).await;
            match &result {
                Ok(r) => eprintln!(
                    "{:?} processes: 1 client {:.0} puts/s, CPU {:.0} µs/put; failover median {:?}",
                    r.flavor,
                    r.one.ops_per_s,
                    r.one.cpu_per_op.as_secs_f64() * 1e6,
                    r.failover.as_ref().and_then(processes::Failover::median)
                ),
                Err(e) => eprintln!("{:?} processes: {e}", options.flavor),
            }
            match options.flavor {
                processes::Flavor::Kv => report.kv = Some(result),
                processes::Flavor::Go => report.go_nodes = Some(result),
            }
        }
        tailnet.stop().await;
        let text = format!(
            "Raw tsnet request/response ceiling measured in the same run: {ceiling:.0} req/s (64 streams, 64-byte echo).\n\n{}\n{}",
            targets(&rows, ceiling),
            table(&rows)
        );
        std::fs::write(out.join("cluster.md"), &text).expect("write report");
        chart(&rows, ceiling, &out.join("throughput.svg"));
        println!("{text}");
        if go.is_some() || args.kv_bin.is_some() {
            let (markdown, lines) = report.render();
            std::fs::write(out.join("versus.md"), &markdown).expect("write report");
            std::fs::write(out.join("versus.jsonl"), lines).expect("write report");
            println!("{markdown}");
        }
    });
}
