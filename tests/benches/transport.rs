//! Raw transport ceilings: single-stream throughput and 64-byte
//! request/response round trips, over tsnet on the local tailnet and over
//! TCP on loopback. Run with `cargo xtask bench transport`; it prints a
//! Markdown table for `docs/benchmarks.md`. With `--quick` (`cargo bench -p
//! tests --bench transport -- --quick`) it moves less data and does fewer
//! rounds. (`cargo xtask bench` measures
//! the tsnet row again next to Go's tsnet, in the same run.)
//!
//! Everything later layers do is measured against these numbers.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

#[path = "support/rawnet.rs"]
mod rawnet;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rawnet::{Amounts, PARALLEL_STREAMS, Report};
use tests::tailnet::LocalTailnet;
use ts_transport::{TcpTransport, Transport};

fn main() {
    let amounts =
        if std::env::args().any(|a| a == "--quick") { Amounts::QUICK } else { Amounts::FULL };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut reports: Vec<(&str, String, Report)> = Vec::new();

        let tcp_a = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        let tcp_b = Arc::new(TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        let tcp = rawnet::measure(tcp_a, tcp_b, 17100, amounts).await;
        reports.push(("TcpTransport, loopback", "kernel loopback".to_owned(), tcp));

        let tailnet = LocalTailnet::start().await.expect("local tailnet");
        let (a, _) = tailnet.node("bench-a").await.expect("node a");
        let (b, _) = tailnet.node("bench-b").await.expect("node b");
        // Let the nodes find a direct path before measuring.
        rawnet::warm_up(&a, &b, 17000).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let path = rawnet::tailnet_path(&a, b.local_addrs()[0]).await;
        let report =
            rawnet::measure(Arc::new(a.clone()), Arc::new(b.clone()), 17200, amounts).await;
        reports.push(("TsnetTransport, local tailnet", path, report));
        a.close().await;
        b.close().await;
        tailnet.stop().await;

        println!("| Transport | Path | Single stream MiB/s | 64 B RTT p50 | 64 B RTT p99 | Serial req/s | {PARALLEL_STREAMS} streams req/s |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for (name, path, r) in reports {
            println!(
                "| {name} | {path} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} |",
                r.mib_per_s,
                r.rtt_p50.as_secs_f64() * 1e6,
                r.rtt_p99.as_secs_f64() * 1e6,
                r.serial_rps,
                r.parallel_rps
            );
        }
    });
}
