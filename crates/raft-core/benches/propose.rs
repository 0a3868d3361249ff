//! Proposal throughput and latency of a 3-node cluster: 1, 16, 64 and 256
//! concurrent proposers; MemTransport and TcpTransport; memory and durable
//! (redb, fsync per append) storage; 100-byte commands, sent to the leader.
//! Run with `cargo bench -p raft-core --bench propose`; prints a Markdown
//! table for docs/benchmarks.md.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::RaftConfig;
use test_support::raft_cluster::{Cluster, Net};
use ts_transport::MemNetwork;

const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
const RUN: Duration = Duration::from_secs(3);
const COMMAND: usize = 100;

struct Row {
    transport: &'static str,
    storage: &'static str,
    callers: usize,
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
    entries_per_s: f64,
}

async fn measure(
    transport: &'static str,
    storage: &'static str,
    callers: usize,
    tcp_base: u16,
) -> Row {
    let net = match transport {
        "mem" => Net::Mem(MemNetwork::new()),
        _ => Net::Tcp(tcp_base),
    };
    let config = RaftConfig {
        heartbeat_interval: test_support::HEARTBEAT,
        election_timeout: test_support::ELECTION,
        ..RaftConfig::default()
    };
    let cluster = Arc::new(Cluster::new(3, net, storage == "durable", config).await);
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let log_before = cluster.node(leader).metrics().last_log_index.unwrap_or(0);
    let started = Instant::now();
    let deadline = started + RUN;
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..callers {
        sessions.push(cluster.register(leader).await);
    }
    for session in sessions {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let command = vec![b'x'; COMMAND];
            let mut latencies = Vec::new();
            let mut seq = 0;
            while Instant::now() < deadline {
                seq += 1;
                let t = Instant::now();
                cluster.propose(leader, session, seq, &command).await.expect("proposal");
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
    let entries = cluster.node(leader).metrics().last_log_index.unwrap_or(0) - log_before;
    latencies.sort();
    let row = Row {
        transport,
        storage,
        callers,
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        entries_per_s: entries as f64 / elapsed.as_secs_f64(),
    };
    match Arc::try_unwrap(cluster) {
        Ok(cluster) => cluster.shutdown().await,
        Err(_) => unreachable!("every caller has finished"),
    }
    row
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut rows = Vec::new();
        let mut tcp_base = 18000;
        for transport in ["mem", "tcp"] {
            for storage in ["memory", "durable"] {
                for callers in CONCURRENCY {
                    rows.push(measure(transport, storage, callers, tcp_base).await);
                    tcp_base += 10;
                }
            }
        }
        println!("| Transport | Storage | Proposers | Proposals/s | p50 | p99 | Log entries/s |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} |",
                r.transport,
                r.storage,
                r.callers,
                r.ops_per_s,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.entries_per_s
            );
        }
    });
}
