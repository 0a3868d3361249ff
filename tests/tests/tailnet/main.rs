//! Tests on a real local tailnet: control, DERP and STUN on 127.0.0.1 (the
//! `xtask/tailnet` program) and tsnet nodes in this process.
//!
//! One test binary, so the Go archive is linked once. Every test starts its
//! own tailnet, so tests can run in parallel and a failure in one leaves
//! nothing behind for the next.

mod consensus;
mod discovery;
mod ffi;
mod transport;

use std::net::IpAddr;
use std::time::Duration;

use ts_transport::tsnet::TsnetTransport;

/// Bound on a whole test's network activity after the nodes are up.
const TEST_BUDGET: Duration = Duration::from_secs(120);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BUDGET, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_BUDGET:?}"))
}

fn v4(node: &TsnetTransport) -> IpAddr {
    IpAddr::V4(node.addrs().and_then(|a| a.v4).expect("node is up with an IPv4 address"))
}
