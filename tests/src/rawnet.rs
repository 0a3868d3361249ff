//! Raw transport measurements shared by the `transport` and `cluster`
//! benchmarks: single-stream throughput and 64-byte request/response round
//! trips between two nodes, the same shapes `xtask/gobench transport`
//! measures for Go's tsnet, with this process's CPU time and context
//! switches per round trip.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::{BoxStream, Listener, Transport};

/// Size of one echoed message.
pub const MESSAGE: usize = 64;
/// Concurrent streams of the parallel measurement.
pub const PARALLEL_STREAMS: usize = 64;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Amounts {
    /// Bytes of one single-stream transfer.
    pub bulk_bytes: usize,
    /// Transfers; the median counts.
    pub bulk_runs: usize,
    /// Round trips before measuring.
    pub rtt_warmup: usize,
    /// Round trips measured.
    pub rtt_rounds: usize,
    /// Round trips per stream in the parallel measurement.
    pub parallel_rounds: usize,
}

impl Amounts {
    /// The full measurement (`xtask/gobench transport` without `-quick`).
    pub const FULL: Amounts = Amounts {
        bulk_bytes: 256 << 20,
        bulk_runs: 3,
        rtt_warmup: 200,
        rtt_rounds: 5000,
        parallel_rounds: 500,
    };
    /// The reduced one (`-quick`).
    pub const QUICK: Amounts = Amounts {
        bulk_bytes: 64 << 20,
        bulk_runs: 1,
        rtt_warmup: 200,
        rtt_rounds: 1000,
        parallel_rounds: 100,
    };
}

/// What one node pair measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Single-stream MiB/s, median.
    pub mib_per_s: f64,
    /// 64-byte round trip, median.
    pub rtt_p50: Duration,
    /// 64-byte round trip, 99th percentile.
    pub rtt_p99: Duration,
    /// Round trips per second on one stream.
    pub serial_rps: f64,
    /// Process CPU time per round trip of the serial ping-pong.
    pub cpu_per_rtt: Duration,
    /// Voluntary context switches of the process (a thread going to sleep
    /// to wait) per serial round trip; involuntary ones are mostly other
    /// processes preempting this one on a shared machine.
    pub switches_per_rtt: f64,
    /// Round trips per second over [`PARALLEL_STREAMS`] streams.
    pub parallel_rps: f64,
    /// Process CPU time per round trip over the parallel streams.
    pub cpu_per_parallel: Duration,
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
    let ((accepted, _), dialed) =
        crate::conformance::connect(listener, a, b_ip, listener.local_port())
            .await
            .expect("connect");
    (dialed, accepted)
}

/// Connects `a` to `listener` (at `b_ip`) once and closes both ends:
/// traffic that lets the nodes find their path before anything is
/// measured.
pub async fn warm_up(a: &dyn Transport, listener: &dyn Listener, b_ip: IpAddr) {
    let _ = connect(a, listener, b_ip).await;
}

/// Median MiB/s of `runs` one-way transfers of `bytes` (NaN for none).
async fn bulk(
    a: &dyn Transport,
    listener: &dyn Listener,
    b_ip: IpAddr,
    bytes: usize,
    runs: usize,
) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (client, server) = connect(a, listener, b_ip).await;
        let started = Instant::now();
        let sender = tokio::spawn(send(client, bytes));
        let receiver = tokio::spawn(receive(server));
        sender.await.expect("sender task");
        let received = receiver.await.expect("receiver task");
        assert_eq!(received, bytes);
        rates.push(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Writes `bytes` (whole MiB) to `client` and shuts its sending side.
async fn send(mut client: BoxStream, bytes: usize) {
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        client.write_all(&chunk).await.expect("write");
    }
    client.shutdown().await.expect("shutdown");
}

/// Reads `server` to its end; the bytes read.
async fn receive(mut server: BoxStream) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = server.read(&mut buf).await.expect("read");
        if n == 0 {
            break total;
        }
        total += n;
    }
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

/// Measures `a` talking to `b` on ports `port` and `port + 1`. The
/// measuring ends run in tasks of their own, as a program's would: not on
/// the thread blocked in `block_on`, which every wake-up would cost one
/// more thread hop (docs/benchmarks.md, "What changed").
pub async fn measure(
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    port: u16,
    amounts: Amounts,
) -> Report {
    let b_ip = b.local_addrs()[0];
    let bulk_listener = b.listen(port).await.expect("listen");
    let mib_per_s = bulk(&*a, &*bulk_listener, b_ip, amounts.bulk_bytes, amounts.bulk_runs).await;
    drop(bulk_listener);

    let echo: Arc<dyn Listener> = Arc::from(b.listen(port + 1).await.expect("listen"));
    let server = tokio::spawn(echo_server(echo.clone()));
    let mut stream = a.dial(b_ip, echo.local_port(), DIAL_TIMEOUT).await.expect("dial");
    let rounds = amounts.rtt_rounds;
    let serial = async move {
        ping_pong(&mut stream, amounts.rtt_warmup).await;
        let (before, started) = (Usage::now(), Instant::now());
        let samples = ping_pong(&mut stream, rounds).await;
        (samples, before, started.elapsed(), Usage::now())
    };
    let (mut samples, before, elapsed, after) = tokio::spawn(serial).await.expect("ping task");
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
    let rounds = amounts.parallel_rounds;
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

/// How node `node` reaches the peer at `peer_ip`, from its LocalAPI status:
/// "direct" with the endpoint, or "DERP" relay.
pub async fn tailnet_path(node: &ts_transport::tsnet::TsnetTransport, peer_ip: IpAddr) -> String {
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
    let ip = peer_ip.to_string();
    let peer = peers.values().find(|p| {
        p["TailscaleIPs"].as_array().is_some_and(|ips| ips.iter().any(|a| a.as_str() == Some(&ip)))
    });
    match peer {
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
