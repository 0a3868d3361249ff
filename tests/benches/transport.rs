//! Raw transport ceilings: single-stream throughput and 64-byte
//! request/response round trips, over tsnet on the local tailnet and over
//! TCP on loopback. Run with `cargo xtask bench transport`; it prints a
//! Markdown table for `docs/benchmarks.md`.
//!
//! Everything later layers do is measured against these numbers.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::net::{IpAddr, Ipv4Addr};
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
    parallel_rps: f64,
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

/// Median MiB/s of `BULK_RUNS` one-way transfers of `BULK_BYTES`.
async fn bulk(a: &dyn Transport, listener: &dyn Listener, b_ip: IpAddr) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..BULK_RUNS {
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
    rates[rates.len() / 2]
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
    name: &str,
    path: String,
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    port: u16,
) -> Report {
    let b_ip = b.local_addrs()[0];
    let bulk_listener = b.listen(port).await.expect("listen");
    let mib_per_s = bulk(&*a, &*bulk_listener, b_ip).await;
    drop(bulk_listener);

    let echo: Arc<dyn Listener> = Arc::from(b.listen(port + 1).await.expect("listen"));
    let server = tokio::spawn(echo_server(echo.clone()));
    let mut stream = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
    ping_pong(&mut stream, RTT_WARMUP).await;
    let started = Instant::now();
    let mut samples = ping_pong(&mut stream, RTT_ROUNDS).await;
    let serial_rps = RTT_ROUNDS as f64 / started.elapsed().as_secs_f64();
    samples.sort();
    let rtt_p50 = samples[samples.len() / 2];
    let rtt_p99 = samples[samples.len() * 99 / 100];

    let mut streams = Vec::new();
    for _ in 0..PARALLEL_STREAMS {
        let mut s = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
        ping_pong(&mut s, 10).await;
        streams.push(s);
    }
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { ping_pong(&mut s, PARALLEL_ROUNDS).await.len() }))
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("ping task");
    }
    let parallel_rps = done as f64 / started.elapsed().as_secs_f64();
    echo.close();
    server.abort();
    Report { name: name.to_owned(), path, mib_per_s, rtt_p50, rtt_p99, serial_rps, parallel_rps }
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
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut reports = Vec::new();

        let tcp_a = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        let tcp_b = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        reports.push(measure("TcpTransport, loopback", "kernel loopback".to_owned(), tcp_a, tcp_b, 17100).await);

        let tailnet = LocalTailnet::start().await.expect("local tailnet");
        let (a, _) = tailnet.node("bench-a").await.expect("node a");
        let (b, _) = tailnet.node("bench-b").await.expect("node b");
        // Let the nodes find a direct path before measuring.
        let warm = b.listen(17000).await.expect("listen");
        let _ = connect(&a, &*warm, b.local_addrs()[0]).await;
        drop(warm);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let path = tailnet_path(&a).await;
        reports.push(measure("TsnetTransport, local tailnet", path, Arc::new(a.clone()), Arc::new(b.clone()), 17200).await);
        a.close().await;
        b.close().await;
        tailnet.stop().await;

        println!("| Transport | Path | Single stream MiB/s | 64 B RTT p50 | 64 B RTT p99 | Serial req/s | {PARALLEL_STREAMS} streams req/s |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for r in reports {
            println!(
                "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} |",
                r.name,
                r.path,
                r.mib_per_s,
                r.rtt_p50.as_secs_f64() * 1e6,
                r.rtt_p99.as_secs_f64() * 1e6,
                r.serial_rps,
                r.parallel_rps
            );
        }
    });
}
