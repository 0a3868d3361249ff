//! Raw transport ceilings: single-stream throughput and 64-byte
//! request/response round trips, over tsnet on the local tailnet and over
//! TCP on loopback, and Go's own tsnet in-process on the same tailnet in the
//! same run (`xtask/gobench transport`). Run with `cargo xtask bench
//! transport`; it prints a Markdown table for `docs/benchmarks.md`.
//!
//! Besides times it reports the CPU time and the context switches of the
//! whole process per round trip (`getrusage`), which this shared 2-core
//! machine disturbs far less than latency.
//!
//! Everything later layers do is measured against these numbers.
//!
//! For profiling, environment variables narrow a run:
//! `TRANSPORT_BENCH_ONLY=tcp,socketpair,tsnet,go` (any subset; `socketpair`
//! is `TsnetTransport` on the socketpair data path, `tsnet` on the direct
//! one), `TRANSPORT_BENCH_ROUNDS` (measured round trips, default 5000),
//! `TRANSPORT_BENCH_BULK_RUNS` (0 skips the bulk transfers) and
//! `TRANSPORT_BENCH_REPEATS` (how many times the tailnet rows take turns,
//! default 3). `--quick` (`cargo bench -p tests --features tailnet --bench transport --
//! --quick`) moves 64 MiB once, does 1,000 round trips and 100 per parallel
//! stream, and one turn; the variables still apply on top.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::rawnet::{self, Amounts, PARALLEL_STREAMS, tailnet_path, warm_up};
use tests::tailnet::{LocalTailnet, UP_TIMEOUT};
use ts_transport::tsnet::{DataPath, TsnetTransport};
use ts_transport::{TcpTransport, Transport};

/// One row of the report: what was measured, over which path, and the
/// numbers.
struct Report {
    name: String,
    path: String,
    raw: rawnet::Report,
}

/// What to run, from the arguments and environment (see the crate docs).
struct Settings {
    only: Vec<String>,
    amounts: Amounts,
    repeats: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::args().any(|a| a == "--quick");
        let base = if quick { Amounts::QUICK } else { Amounts::FULL };
        let number = |name: &str, default: usize| {
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        Settings {
            only: std::env::var("TRANSPORT_BENCH_ONLY")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_else(|_| {
                    ["tcp", "socketpair", "tsnet", "go"].map(str::to_owned).to_vec()
                }),
            amounts: Amounts {
                bulk_runs: number("TRANSPORT_BENCH_BULK_RUNS", base.bulk_runs),
                rtt_rounds: number("TRANSPORT_BENCH_ROUNDS", base.rtt_rounds),
                ..base
            },
            repeats: number("TRANSPORT_BENCH_REPEATS", if quick { 1 } else { 3 }),
        }
    }

    fn runs(&self, what: &str) -> bool {
        self.only.iter().any(|o| o == what)
    }
}

/// Measures `a` talking to `b` on ports `port` and `port + 1`, the client
/// ends in tasks of their own; one row called `name`.
async fn measure(
    settings: &Settings,
    name: &str,
    path: String,
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    port: u16,
) -> Report {
    let raw = rawnet::measure(a, b, port, settings.amounts).await;
    Report { name: name.to_owned(), path, raw }
}

/// The JSON line `gobench transport` prints (the fields read here).
#[derive(serde::Deserialize)]
struct GoTransport {
    path: String,
    mib_per_s: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    serial_rps: f64,
    cpu_per_rtt_us: f64,
    switches_per_rtt: f64,
    parallel_rps: f64,
    cpu_per_parallel_us: f64,
}

/// Builds `xtask/gobench` and runs its in-process tsnet measurement against
/// `control_url`: the same shapes as [`measure`], in a process of its own
/// (one Go runtime per process), on the same tailnet.
fn measure_go(settings: &Settings, control_url: &str) -> Report {
    let go_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xtask/gobench");
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gobench");
    let go = std::env::var("GO").unwrap_or_else(|_| "go".to_owned());
    let status = Command::new(&go)
        .current_dir(&go_dir)
        .args(["build", "-trimpath", "-mod=readonly", "-o"])
        .arg(&bin)
        .arg(".")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build of xtask/gobench failed");
    let out = Command::new(&bin)
        .args(["transport", "-control-url", control_url])
        .args(["-rounds", &settings.amounts.rtt_rounds.to_string()])
        .args(["-bulk-runs", &settings.amounts.bulk_runs.to_string()])
        .args(["-bulk-bytes", &settings.amounts.bulk_bytes.to_string()])
        .args(["-parallel-rounds", &settings.amounts.parallel_rounds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run gobench transport");
    assert!(out.status.success(), "gobench transport failed: {}", out.status);
    let go: GoTransport =
        serde_json::from_slice(&out.stdout).expect("gobench transport's JSON line");
    let us = |v: f64| Duration::from_nanos((v * 1e3) as u64);
    Report {
        name: "Go tsnet in-process (gobench)".to_owned(),
        path: go.path,
        raw: rawnet::Report {
            mib_per_s: go.mib_per_s,
            rtt_p50: us(go.rtt_p50_us),
            rtt_p99: us(go.rtt_p99_us),
            serial_rps: go.serial_rps,
            cpu_per_rtt: us(go.cpu_per_rtt_us),
            switches_per_rtt: go.switches_per_rtt,
            parallel_rps: go.parallel_rps,
            cpu_per_parallel: us(go.cpu_per_parallel_us),
        },
    }
}

/// Median and range of one metric over repeated runs, as "m (lo–hi)".
fn spread(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "–".to_owned(),
        [only] => format!("{only:.decimals$}"),
        all => format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            all[all.len() / 2],
            all[0],
            all[all.len() - 1]
        ),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Brings up two nodes `{prefix}-a` and `{prefix}-b` on `data_path` and lets
/// them find their path; returns them and the path `a` reports.
async fn node_pair(
    tailnet: &LocalTailnet,
    prefix: &str,
    data_path: DataPath,
) -> (TsnetTransport, TsnetTransport, String) {
    let node = |name: String| {
        let mut options = tailnet.node_options(&name);
        options.data_path = data_path;
        async move {
            let node = TsnetTransport::new(options).expect("node");
            node.up(UP_TIMEOUT).await.expect("node up");
            node
        }
    };
    let a = node(format!("{prefix}-a")).await;
    let b = node(format!("{prefix}-b")).await;
    // Traffic until the nodes talk directly (not through the DERP relay),
    // for at most 20 s.
    let b_ip = b.local_addrs()[0];
    let warm = b.listen(17000).await.expect("listen");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut path = String::new();
    while Instant::now() < deadline {
        warm_up(&a, &*warm, b_ip).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        path = tailnet_path(&a, b_ip).await;
        if path.starts_with("direct") {
            break;
        }
    }
    drop(warm);
    (a, b, path)
}

fn main() {
    let settings = Settings::from_env();
    let repeats = settings.repeats;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut reports = Vec::new();

        if settings.runs("tcp") {
            let tcp_a = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
            let tcp_b = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
            let path = "kernel loopback".to_owned();
            reports.push(
                measure(&settings, "TcpTransport, loopback", path, tcp_a, tcp_b, 17100).await,
            );
        }

        // The tailnet rows take turns, `repeats` times, so that a load
        // change on this shared machine hits them alike; the socketpair
        // path is the "before" of decision 0004.
        let tailnet = LocalTailnet::start().await.expect("local tailnet");
        let mut pairs = Vec::new();
        for (what, data_path, prefix, label) in [
            ("socketpair", DataPath::Socketpair, "bench-s", "TsnetTransport (socketpair path)"),
            ("tsnet", DataPath::Direct, "bench", "TsnetTransport (direct path)"),
        ] {
            if settings.runs(what) {
                let (a, b, path) = node_pair(&tailnet, prefix, data_path).await;
                pairs.push((label, a, b, path));
            }
        }
        for round in 0..repeats {
            let port = 17200 + 10 * round as u16;
            for (label, a, b, path) in &pairs {
                let (a, b) = (Arc::new(a.clone()), Arc::new(b.clone()));
                reports.push(measure(&settings, label, path.clone(), a, b, port).await);
            }
            if settings.runs("go") {
                let url = tailnet.control_url.clone();
                let settings = &settings;
                let go = tokio::task::block_in_place(|| measure_go(settings, &url));
                reports.push(go);
            }
        }
        for (_, a, b, _) in pairs {
            a.close().await;
            b.close().await;
        }
        tailnet.stop().await;

        println!(
            "| Transport | Path | Single stream MiB/s | 64 B RTT p50 | 64 B RTT p99 | Serial req/s \
             | CPU µs per RTT | Voluntary context switches per RTT | {PARALLEL_STREAMS} streams req/s \
             | CPU µs per req ({PARALLEL_STREAMS} streams) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &reports {
            println!(
                "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} |",
                r.name,
                r.path,
                r.raw.mib_per_s,
                micros(r.raw.rtt_p50),
                micros(r.raw.rtt_p99),
                r.raw.serial_rps,
                micros(r.raw.cpu_per_rtt),
                r.raw.switches_per_rtt,
                r.raw.parallel_rps,
                micros(r.raw.cpu_per_parallel),
            );
        }

        // Medians and ranges over the repeats.
        let mut names: Vec<&str> = Vec::new();
        for r in &reports {
            if !names.contains(&r.name.as_str()) {
                names.push(&r.name);
            }
        }
        println!(
            "\nMedian (min–max) of {repeats} runs:\n\n| Transport | Single stream MiB/s \
             | 64 B RTT p50 µs | 64 B RTT p99 µs | CPU µs per RTT \
             | Voluntary context switches per RTT | {PARALLEL_STREAMS} streams req/s \
             | CPU µs per req ({PARALLEL_STREAMS} streams) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for name in &names {
            let runs: Vec<&Report> = reports.iter().filter(|r| r.name == *name).collect();
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                spread(runs.iter().map(|r| r.raw.mib_per_s), 0),
                spread(runs.iter().map(|r| micros(r.raw.rtt_p50)), 0),
                spread(runs.iter().map(|r| micros(r.raw.rtt_p99)), 0),
                spread(runs.iter().map(|r| micros(r.raw.cpu_per_rtt)), 0),
                spread(runs.iter().map(|r| r.raw.switches_per_rtt), 1),
                spread(runs.iter().map(|r| r.raw.parallel_rps), 0),
                spread(runs.iter().map(|r| micros(r.raw.cpu_per_parallel)), 0),
            );
        }

        // Ratios within each repeat (same minute, same load), then their
        // medians and ranges.
        let by_round = |prefix: &str| -> Vec<&Report> {
            reports.iter().filter(|r| r.name.starts_with(prefix)).collect()
        };
        let (direct, socketpair, go) = (
            by_round("TsnetTransport (direct"),
            by_round("TsnetTransport (socketpair"),
            by_round("Go tsnet"),
        );
        let ratios = |label: &str, ours: &[&Report], base: &[&Report]| {
            if ours.is_empty() || ours.len() != base.len() {
                return;
            }
            let pairs = || ours.iter().zip(base.iter());
            println!(
                "| {label} | {} | {} | {} | {} | {} |",
                spread(pairs().map(|(o, b)| micros(o.raw.rtt_p50) / micros(b.raw.rtt_p50)), 2),
                spread(pairs().map(|(o, b)| micros(o.raw.rtt_p99) / micros(b.raw.rtt_p99)), 2),
                spread(pairs().map(|(o, b)| micros(o.raw.cpu_per_rtt) / micros(b.raw.cpu_per_rtt)), 2),
                spread(pairs().map(|(o, b)| o.raw.switches_per_rtt / b.raw.switches_per_rtt), 2),
                spread(pairs().map(|(o, b)| o.raw.parallel_rps / b.raw.parallel_rps), 2),
            );
        };
        println!(
            "\nRatios within each run, median (min–max):\n\n| Ratio | RTT p50 | RTT p99 \
             | CPU per RTT | Context switches per RTT | {PARALLEL_STREAMS}-stream req/s |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        ratios("direct ÷ socketpair", &direct, &socketpair);
        ratios("direct ÷ Go tsnet", &direct, &go);
        ratios("socketpair ÷ Go tsnet", &socketpair, &go);
    });
}
