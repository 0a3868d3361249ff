//! What more than one of the facade's test binaries asks of a node's
//! command API directly, past the facade: test-support's facade helpers
//! use the facade's public API only, and it does not depend on cmd-rpc.

#![allow(dead_code, reason = "each test binary uses a different part")]
#![allow(unreachable_pub, reason = "shared between test binaries as a module")]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::{CommandClient, CommandConfig, Origin, ProbeRequest, ProbeResponse, ProbeState};
use raft_core::NodeInfo;
use tokio::time::Instant;
use ts_transport::MemNetwork;

/// What the node `stable_id` at `addr`, its command API on `port`, answers
/// a probe asking for no promise (which gives back only a promise held
/// for the caller, so it changes nothing there) from the node at `from`;
/// `None` if it does not answer within `within` (not started, not ready).
pub async fn probe(
    net: &MemNetwork,
    from: IpAddr,
    stable_id: &str,
    addr: IpAddr,
    port: u16,
    within: Duration,
) -> Option<ProbeState> {
    let client = CommandClient::new(Arc::new(net.node(from)), CommandConfig::default());
    let target = NodeInfo {
        stable_id: stable_id.to_owned(),
        addrs: vec![addr],
        raft_port: 0,
        command_port: port,
    };
    let deadline = Instant::now() + within;
    let answer: Result<ProbeResponse, _> = client
        .post(&target, "/v1/probe", &ProbeRequest { promise: false }, deadline, Origin::Client)
        .await;
    answer.ok().map(|a| a.state)
}
