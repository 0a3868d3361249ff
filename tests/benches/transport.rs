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
//! `TRANSPORT_BENCH_ONLY=tcp,tsnet,go` (any subset), `TRANSPORT_BENCH_ROUNDS`
//! (measured round trips, default 5000) and `TRANSPORT_BENCH_BULK_RUNS`
//! (0 skips the bulk transfers).
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::tailnet::LocalTailnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// What to run, from the environment (see the crate docs).
struct Settings {
    only: Vec<String>,
    rtt_rounds: usize,
    bulk_runs: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: usize| {
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        Settings {
            only: std::env::var("TRANSPORT_BENCH_ONLY")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_else(|_| vec!["tcp".into(), "tsnet".into(), "go".into()]),
            rtt_rounds: number("TRANSPORT_BENCH_ROUNDS", RTT_ROUNDS),
            bulk_runs: number("TRANSPORT_BENCH_BULK_RUNS", BULK_RUNS),
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

/// Median MiB/s of `runs` one-way transfers of `BULK_BYTES`.
async fn bulk(a: &dyn Transport, listener: &dyn Listener, b_ip: IpAddr, runs: usize) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (mut client, mut server) = connect(a, listener, b_ip).await;
        let chunk = vec![0x5au8; 1 << 20];
        let started = Instant::now();
        let sender = async {
            for _ in 0..BULK_BYTES / chunk.len() {
                client.write_all(&chunk).await.expect("write");
            }
            client.shutdown().await.expect("shutdown");
        };
        let receiver = async {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                let n = server.read(&mut buf).await.expect("read");
                if n == 0 {
                    break total;
                }
                total += n;
            }
        };
        let ((), received) = tokio::join!(sender, receiver);
        assert_eq!(received, BULK_BYTES);
        rates.push(BULK_BYTES as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64());
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
    let mib_per_s = bulk(&*a, &*bulk_listener, b_ip, settings.bulk_runs).await;
    drop(bulk_listener);

    let echo: Arc<dyn Listener> = Arc::from(b.listen(port + 1).await.expect("listen"));
    let server = tokio::spawn(echo_server(echo.clone()));
    let mut stream = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
    ping_pong(&mut stream, RTT_WARMUP).await;
    let rounds = settings.rtt_rounds;
    let (before, started) = (Usage::now(), Instant::now());
    let mut samples = ping_pong(&mut stream, rounds).await;
    let (elapsed, after) = (started.elapsed(), Usage::now());
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
    let (before, started) = (Usage::now(), Instant::now());
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { ping_pong(&mut s, PARALLEL_ROUNDS).await.len() }))
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

/// How node `a` reaches its peer, from its LocalAPI status: "direct" with the
/// endpoint, or "DERP" relay.
async fn tailnet_path(node: &ts_transport::tsnet::TsnetTransport) -> String {
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
    match peers.values().next() {
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

fn main() {
    let settings = Settings::from_env();
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

        let tailnet = LocalTailnet::start().await.expect("local tailnet");
        if settings.runs("tsnet") {
            let (a, _) = tailnet.node("bench-a").await.expect("node a");
            let (b, _) = tailnet.node("bench-b").await.expect("node b");
            // Let the nodes find a direct path before measuring.
            let warm = b.listen(17000).await.expect("listen");
            let _ = connect(&a, &*warm, b.local_addrs()[0]).await;
            drop(warm);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let path = tailnet_path(&a).await;
            let name = "TsnetTransport, local tailnet";
            let (a_t, b_t) = (Arc::new(a.clone()), Arc::new(b.clone()));
            reports.push(measure(&settings, name, path, a_t, b_t, 17200).await);
            a.close().await;
            b.close().await;
        }
        if settings.runs("go") {
            let url = tailnet.control_url.clone();
            let settings = &settings;
            let go = tokio::task::block_in_place(|| measure_go(settings, &url));
            reports.push(go);
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
                r.rtt_p50.as_secs_f64() * 1e6,
                r.rtt_p99.as_secs_f64() * 1e6,
                r.serial_rps,
                r.cpu_per_rtt.as_secs_f64() * 1e6,
                r.switches_per_rtt,
                r.parallel_rps,
                r.cpu_per_parallel.as_secs_f64() * 1e6,
            );
        }
        let ours = reports.iter().find(|r| r.name.starts_with("TsnetTransport"));
        let go = reports.iter().find(|r| r.name.starts_with("Go tsnet"));
        if let (Some(ours), Some(go)) = (ours, go) {
            let ratio = |a: f64, b: f64| a / b;
            println!(
                "\nTsnetTransport ÷ Go tsnet: RTT p50 {:.2}×, p99 {:.2}×, CPU per RTT {:.2}×, \
                 context switches per RTT {:.2}×, {PARALLEL_STREAMS}-stream req/s {:.2}×",
                ratio(ours.rtt_p50.as_secs_f64(), go.rtt_p50.as_secs_f64()),
                ratio(ours.rtt_p99.as_secs_f64(), go.rtt_p99.as_secs_f64()),
                ratio(ours.cpu_per_rtt.as_secs_f64(), go.cpu_per_rtt.as_secs_f64()),
                ratio(ours.switches_per_rtt, go.switches_per_rtt),
                ratio(ours.parallel_rps, go.parallel_rps),
            );
        }
    });
}
