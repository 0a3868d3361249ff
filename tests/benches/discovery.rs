//! Tag-propagation latency: from the admin call that tags or untags a node
//! to the moment a peer's `TailnetDiscovery` shows the change. 20 rounds
//! (10 tag, 10 untag). Run with `cargo bench -p tests --features tailnet --bench discovery`.
#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tests::tailnet::LocalTailnet;
use ts_discovery::{Discovery, LocalApi, LocalApiLimits, TailnetDiscovery, TailnetDiscoveryConfig};

const TAG: &str = "tag:cluster";
const ROUNDS: usize = 20;

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let tailnet = LocalTailnet::start().await.expect("tailnet").without_node_logs();
        let (a, _) = tailnet.node("prop-a").await.expect("node a");
        let (b, b_addrs) = tailnet.node("prop-b").await.expect("node b");
        let b_ip = IpAddr::V4(b_addrs.v4.expect("IPv4"));
        tailnet.set_tags("prop-a", &[TAG]).await.expect("tag a");
        let api = LocalApi::for_node(&a, LocalApiLimits::default()).expect("LocalAPI");
        let discovery = TailnetDiscovery::start(api, TailnetDiscoveryConfig::new(TAG));
        let mut state = discovery.state();
        let mut samples = Vec::new();
        for round in 0..ROUNDS {
            let tagged = round % 2 == 0;
            let started = Instant::now();
            tailnet.set_tags("prop-b", if tagged { &[TAG] } else { &[] }).await.expect("admin call");
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let member = state.borrow_and_update().view.as_ref().is_some_and(|v| v.member_by_addr(b_ip).is_some());
                    if member == tagged {
                        return;
                    }
                    state.changed().await.expect("discovery running");
                }
            })
            .await
            .expect("change seen within 10 s");
            samples.push(started.elapsed());
        }
        samples.sort();
        let median = (samples[ROUNDS / 2 - 1] + samples[ROUNDS / 2]) / 2;
        println!("| Tag propagation (admin call → peer's discovery), {ROUNDS} rounds | median {:.1} ms | max {:.1} ms |",
            median.as_secs_f64() * 1e3, samples[ROUNDS - 1].as_secs_f64() * 1e3);
        discovery.shutdown().await;
        a.close().await;
        b.close().await;
        tailnet.stop().await;
    });
}
