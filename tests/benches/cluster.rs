//! The consensus facade end to end: throughput, latency percentiles and CPU
//! time per operation across transports (in-memory, TCP loopback, the local
//! tailnet), cluster sizes, concurrency, command sizes, storage, the node a
//! command is sent to, and linearizable reads; plus resident memory over a
//! million commands.
//!
//! Run through `cargo xtask bench`, which writes the results into
//! docs/benchmarks.md and the chart into docs/img/. Standalone:
//! `cargo bench -p tests --bench cluster -- <out-dir> [--quick]`.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{BootstrapOptions, Config, Consensus, Consistency, StateMachine, StopMode, Timing};
use serde::{Deserialize, Serialize};
use tests::tailnet::LocalTailnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
use ts_transport::{Listener, MemNetwork, TcpTransport, Transport};

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

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(200),
        election: (Duration::from_millis(1000), Duration::from_millis(2000)),
        call_deadline: Duration::from_secs(30),
        start_timeout: Duration::from_secs(60),
        reconcile_every: Duration::from_secs(2),
        max_staleness: Duration::from_secs(60),
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
            for i in 0..s.nodes {
                let hostname = format!("b{serial}-{i}");
                let (node, _) = tailnet.node(&hostname).await.expect("tailnet node");
                tailnet.set_tags(&hostname, &[&tag]).await.expect("tag");
                tailnet_nodes.push(node);
            }
            // Wait until every node sees every tag.
            for node in &tailnet_nodes {
                let api =
                    ts_discovery::LocalApi::for_node(node, ts_discovery::LocalApiLimits::default())
                        .unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !api.status().await.is_ok_and(|v| {
                    v.cluster(&tag).members.len() == s.nodes - 1 && v.self_node.has_tag(&tag)
                }) {
                    assert!(Instant::now() < deadline, "tags did not propagate");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
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
    let entries = cluster.nodes[leader].metrics().last_log_index.unwrap_or(0) - log_before;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let row = Row {
        scenario: s,
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        cpu_per_op: cpu / latencies.len().max(1) as u32,
        entries_per_s: entries as f64 / elapsed.as_secs_f64(),
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
            for &c in callers {
                out.push(Scenario { net, durable, callers: c, ..base });
            }
        }
    }
    for nodes in [1, 5] {
        out.push(Scenario { nodes, callers: 64, ..base });
    }
    out.push(Scenario { size: 4096, callers: 1, ..base });
    out.push(Scenario { size: 4096, callers: 64, ..base });
    out.push(Scenario { size: 4096, callers: 64, durable: true, ..base });
    out.push(Scenario { to_follower: true, callers: 1, ..base });
    out.push(Scenario { to_follower: true, callers: 64, ..base });
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
            if s.durable { "durable" } else { "memory" },
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = PathBuf::from(
        args.iter()
            .find(|a| !a.starts_with("--"))
            .cloned()
            .unwrap_or_else(|| "target/bench".to_owned()),
    );
    std::fs::create_dir_all(&out).expect("output dir");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if args.iter().any(|a| a == "--memory") {
        let report = runtime.block_on(memory_run());
        std::fs::write(out.join("memory.md"), &report).expect("write report");
        println!("{report}");
        return;
    }
    runtime.block_on(async {
        let tailnet = LocalTailnet::start().await.expect("local tailnet");
        let ceiling = raw_ceiling(&tailnet).await;
        eprintln!("raw tsnet ceiling: {ceiling:.0} req/s");
        let run = if quick { Duration::from_secs(1) } else { Duration::from_secs(3) };
        let mut rows = Vec::new();
        // BENCH_FILTER=text keeps the scenarios whose description contains it.
        let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
        let chosen = scenarios(quick).into_iter().filter(|s| format!("{s:?}").contains(&filter));
        for (serial, s) in chosen.enumerate() {
            let row = measure(s, run, &tailnet, serial).await;
            eprintln!("{:?}: {:.0} ops/s p50 {} ms p99 {} ms", s, row.ops_per_s, ms(row.p50), ms(row.p99));
            rows.push(row);
        }
        tailnet.stop().await;
        let report = format!(
            "Raw tsnet request/response ceiling measured in the same run: {ceiling:.0} req/s (64 streams, 64-byte echo).\n\n{}\n{}",
            targets(&rows, ceiling),
            table(&rows)
        );
        std::fs::write(out.join("cluster.md"), &report).expect("write report");
        chart(&rows, ceiling, &out.join("throughput.svg"));
        println!("{report}");
    });
}
