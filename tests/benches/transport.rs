//! Raw transport ceilings: single-stream throughput and 64-byte
//! request/response round trips, over tsnet on the local tailnet and over
//! TCP on loopback, and Go's own tsnet in-process on the same tailnet in the
//! same run (`crates/ts-transport/go/echobench`). Run with `cargo xtask bench
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

use tests::tailnet::{LocalTailnet, UP_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::tsnet::{DataPath, TsnetTransport};
use ts_transport::{BoxStream, Listener, TcpTransport, Transport};

const BULK_BYTES: usize = 256 << 20;
const BULK_RUNS: usize = 3;
const RTT_WARMUP: usize = 200;
const RTT_ROUNDS: usize = 5000;
const MESSAGE: usize = 64;
const PARALLEL_STREAMS: usize = 64;
const PARALLEL_ROUNDS: usize = 500;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

struct Report {
    name: String,
    path: String,
    mib_per_s: f64,
    rtt_p50: Duration,
    rtt_p99: Duration,
    serial_rps: f64,
    /// Process CPU time per round trip of the serial ping-pong.
    cpu_per_rtt: Duration,
    /// Voluntary context switches of the process (a thread going to sleep
    /// to wait) per serial round trip; involuntary ones are mostly other
    /// processes preempting this one on a shared machine.
    switches_per_rtt: f64,
    parallel_rps: f64,
    /// Process CPU time per round trip over the parallel streams.
    cpu_per_parallel: Duration,
}

/// What to run, from the arguments and environment (see the crate docs).
struct Settings {
    only: Vec<String>,
    bulk_bytes: usize,
    bulk_runs: usize,
    rtt_rounds: usize,
    parallel_rounds: usize,
    repeats: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::args().any(|a| a == "--quick");
        let number = |name: &str, full: usize, reduced: usize| {
            let default = if quick { reduced } else { full };
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        Settings {
            only: std::env::var("TRANSPORT_BENCH_ONLY")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_else(|_| {
                    ["tcp", "socketpair", "tsnet", "go"].map(str::to_owned).to_vec()
                }),
            bulk_bytes: if quick { 64 << 20 } else { BULK_BYTES },
            bulk_runs: number("TRANSPORT_BENCH_BULK_RUNS", BULK_RUNS, 1),
            rtt_rounds: number("TRANSPORT_BENCH_ROUNDS", RTT_ROUNDS, 1000),
            parallel_rounds: if quick { 100 } else { PARALLEL_ROUNDS },
            repeats: number("TRANSPORT_BENCH_REPEATS", 3, 1),
        }
    }

    fn runs(&self, what: &str) -> bool {
        self.only.iter().any(|o| o == what)
    }
}

/// This process's CPU time (user + system) and voluntary context switches
/// so far.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    switches: i64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: rusage is plain data, filled by the call.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a rusage.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0, "getrusage");
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Usage { cpu: time(ru.ru_utime) + time(ru.ru_stime), switches: ru.ru_nvcsw }
    }

    /// CPU time and switches from `self` to `later`, per one of `n` events.
    fn per(self, later: Usage, n: usize) -> (Duration, f64) {
        ((later.cpu - self.cpu) / n as u32, (later.switches - self.switches) as f64 / n as f64)
    }
}

async fn connect(
    a: &dyn Transport,
    listener: &dyn Listener,
    b_ip: IpAddr,
) -> (BoxStream, BoxStream) {
    let (accepted, dialed) =
        tokio::join!(listener.accept(), a.dial(b_ip, listener.local_port(), DIAL_TIMEOUT));
    (dialed.expect("dial"), accepted.expect("accept").0)
}

/// Median MiB/s of `runs` one-way transfers of `bytes`.
async fn bulk(
    a: &dyn Transport,
    listener: &dyn Listener,
    b_ip: IpAddr,
    bytes: usize,
    runs: usize,
) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (mut client, mut server) = connect(a, listener, b_ip).await;
        let started = Instant::now();
        // Tasks of their own, as a program's would be (not the thread
        // blocked in `block_on`, which every wake-up would cost a hop).
        let sender = tokio::spawn(async move {
            let chunk = vec![0x5au8; 1 << 20];
            for _ in 0..bytes / chunk.len() {
                client.write_all(&chunk).await.expect("write");
            }
            client.shutdown().await.expect("shutdown");
        });
        let receiver = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                let n = server.read(&mut buf).await.expect("read");
                if n == 0 {
                    break total;
                }
                total += n;
            }
        });
        sender.await.expect("sender task");
        let received = receiver.await.expect("receiver task");
        assert_eq!(received, bytes);
        rates.push(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn echo_server(listener: Arc<dyn Listener>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; MESSAGE];
            while stream.read_exact(&mut buf).await.is_ok() {
                if stream.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Round trips of one 64-byte message on one stream, one at a time.
async fn ping_pong(stream: &mut BoxStream, rounds: usize) -> Vec<Duration> {
    let mut buf = [7u8; MESSAGE];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        stream.write_all(&buf).await.expect("ping");
        stream.read_exact(&mut buf).await.expect("pong");
        samples.push(started.elapsed());
    }
    samples
}

async fn measure(
    settings: &Settings,
    name: &str,
    path: String,
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    port: u16,
) -> Report {
    let b_ip = b.local_addrs()[0];
    let bulk_listener = b.listen(port).await.expect("listen");
    let mib_per_s = bulk(&*a, &*bulk_listener, b_ip, settings.bulk_bytes, settings.bulk_runs).await;
    drop(bulk_listener);

    let echo: Arc<dyn Listener> = Arc::from(b.listen(port + 1).await.expect("listen"));
    let server = tokio::spawn(echo_server(echo.clone()));
    let mut stream = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
    let rounds = settings.rtt_rounds;
    // In a task of its own, as a program's would be (see `bulk`).
    let (mut samples, before, elapsed, after) = tokio::spawn(async move {
        ping_pong(&mut stream, RTT_WARMUP).await;
        let (before, started) = (Usage::now(), Instant::now());
        let samples = ping_pong(&mut stream, rounds).await;
        (samples, before, started.elapsed(), Usage::now())
    })
    .await
    .expect("ping task");
    let serial_rps = rounds as f64 / elapsed.as_secs_f64();
    let (cpu_per_rtt, switches_per_rtt) = before.per(after, rounds);
    samples.sort();
    let rtt_p50 = samples[samples.len() / 2];
    let rtt_p99 = samples[samples.len() * 99 / 100];

    let mut streams = Vec::new();
    for _ in 0..PARALLEL_STREAMS {
        let mut s = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
        ping_pong(&mut s, 10).await;
        streams.push(s);
    }
    let rounds = settings.parallel_rounds;
    let (before, started) = (Usage::now(), Instant::now());
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { ping_pong(&mut s, rounds).await.len() }))
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("ping task");
    }
    let parallel_rps = done as f64 / started.elapsed().as_secs_f64();
    let (cpu_per_parallel, _) = before.per(Usage::now(), done);
    echo.close();
    server.abort();
    Report {
        name: name.to_owned(),
        path,
        mib_per_s,
        rtt_p50,
        rtt_p99,
        serial_rps,
        cpu_per_rtt,
        switches_per_rtt,
        parallel_rps,
        cpu_per_parallel,
    }
}

/// The JSON line `echobench` prints.
#[derive(serde::Deserialize)]
struct GoEcho {
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

/// Builds and runs Go's in-process tsnet benchmark against `control_url`:
/// the same shapes as [`measure`], in a process of its own (one Go runtime
/// per process), on the same tailnet.
fn measure_go(settings: &Settings, control_url: &str) -> Report {
    let go_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/ts-transport/go");
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("echobench");
    let go = std::env::var("GO").unwrap_or_else(|_| "go".to_owned());
    let status = Command::new(&go)
        .current_dir(&go_dir)
        .args(["build", "-trimpath", "-mod=readonly", "-o"])
        .arg(&bin)
        .arg("./echobench")
        .status()
        .expect("run go build");
    assert!(status.success(), "go build ./echobench failed");
    let out = Command::new(&bin)
        .args(["-control-url", control_url, "-prefix", "echobench"])
        .args(["-rounds", &settings.rtt_rounds.to_string()])
        .args(["-bulk-runs", &settings.bulk_runs.to_string()])
        .args(["-bulk-bytes", &settings.bulk_bytes.to_string()])
        .args(["-parallel-rounds", &settings.parallel_rounds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run echobench");
    assert!(out.status.success(), "echobench failed: {}", out.status);
    let go: GoEcho = serde_json::from_slice(&out.stdout).expect("echobench's JSON line");
    let us = |v: f64| Duration::from_nanos((v * 1e3) as u64);
    Report {
        name: "Go tsnet in-process (echobench)".to_owned(),
        path: go.path,
        mib_per_s: go.mib_per_s,
        rtt_p50: us(go.rtt_p50_us),
        rtt_p99: us(go.rtt_p99_us),
        serial_rps: go.serial_rps,
        cpu_per_rtt: us(go.cpu_per_rtt_us),
        switches_per_rtt: go.switches_per_rtt,
        parallel_rps: go.parallel_rps,
        cpu_per_parallel: us(go.cpu_per_parallel_us),
    }
}

/// How `node` reaches the peer at `peer`, from its LocalAPI status: "direct"
/// with the endpoint, or "DERP" relay.
async fn tailnet_path(node: &TsnetTransport, peer: IpAddr) -> String {
    let Ok(api) = node.local_api() else { return "unknown".to_owned() };
    let auth = base64(&format!(":{}", api.credential));
    let request = format!(
        "GET /localapi/v0/status HTTP/1.0\r\nHost: {}\r\nSec-Tailscale: localapi\r\n\
         Authorization: Basic {auth}\r\nConnection: close\r\n\r\n",
        api.addr
    );
    let Ok(mut conn) = tokio::net::TcpStream::connect(api.addr).await else {
        return "unknown".to_owned();
    };
    if conn.write_all(request.as_bytes()).await.is_err() {
        return "unknown".to_owned();
    }
    let mut body = Vec::new();
    let _ = conn.take(4 << 20).read_to_end(&mut body).await;
    let text = String::from_utf8_lossy(&body);
    let Some(json) = text.split_once("\r\n\r\n").map(|(_, b)| b) else {
        return "unknown".to_owned();
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(json) else {
        return "unknown".to_owned();
    };
    let peers = status["Peer"].as_object().cloned().unwrap_or_default();
    let peer = peer.to_string();
    let is_peer = |p: &&serde_json::Value| {
        p["TailscaleIPs"].as_array().is_some_and(|ips| ips.iter().any(|ip| *ip == *peer))
    };
    match peers.values().find(is_peer) {
        Some(peer) if peer["CurAddr"].as_str().is_some_and(|a| !a.is_empty()) => {
            format!("direct ({})", peer["CurAddr"].as_str().unwrap_or_default())
        }
        Some(peer) => format!("DERP relay ({})", peer["Relay"].as_str().unwrap_or("?")),
        None => "unknown".to_owned(),
    }
}

fn base64(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
        let _ = connect(&a, &*warm, b_ip).await;
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
                r.mib_per_s,
                micros(r.rtt_p50),
                micros(r.rtt_p99),
                r.serial_rps,
                micros(r.cpu_per_rtt),
                r.switches_per_rtt,
                r.parallel_rps,
                micros(r.cpu_per_parallel),
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
                spread(runs.iter().map(|r| r.mib_per_s), 0),
                spread(runs.iter().map(|r| micros(r.rtt_p50)), 0),
                spread(runs.iter().map(|r| micros(r.rtt_p99)), 0),
                spread(runs.iter().map(|r| micros(r.cpu_per_rtt)), 0),
                spread(runs.iter().map(|r| r.switches_per_rtt), 1),
                spread(runs.iter().map(|r| r.parallel_rps), 0),
                spread(runs.iter().map(|r| micros(r.cpu_per_parallel)), 0),
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
                spread(pairs().map(|(o, b)| micros(o.rtt_p50) / micros(b.rtt_p50)), 2),
                spread(pairs().map(|(o, b)| micros(o.rtt_p99) / micros(b.rtt_p99)), 2),
                spread(pairs().map(|(o, b)| micros(o.cpu_per_rtt) / micros(b.cpu_per_rtt)), 2),
                spread(pairs().map(|(o, b)| o.switches_per_rtt / b.switches_per_rtt), 2),
                spread(pairs().map(|(o, b)| o.parallel_rps / b.parallel_rps), 2),
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
