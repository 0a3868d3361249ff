//! Who gets a connection: addresses that are not authorized are closed at
//! accept on the command and monitor ports, a peer holds a bounded number
//! of connections, a revoked peer is refused on a live connection, and the
//! client calls only authorized addresses.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cmd_rpc::{Authorize, CommandClient, CommandConfig, Page, PageServer, Render, RpcError};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use ts_transport::{BoxStream, MemNetwork, Transport};

const INTRUDER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99));
const MONITOR_PORT: u16 = 7002;

fn all_but_intruder() -> Authorize {
    Arc::new(|peer| peer.ip() != INTRUDER)
}

/// Whether the server closed `stream` (end of stream or reset) within
/// `within`, rather than keeping it open.
async fn closed_within(stream: &mut BoxStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

async fn dial(net: &MemNetwork, from: IpAddr, port: u16) -> BoxStream {
    net.node(from).dial(ip(0), port, Duration::from_secs(2)).await.expect("dial")
}

/// Before: the command port kept an unauthorized caller's connection open
/// (until the header timeout), and answered its requests with 403; the
/// monitor port likewise. Now both close it at accept, unread. In paused
/// time (the network is in memory): waiting to see that an authorized
/// connection stays open costs no real time.
#[tokio::test(start_paused = true)]
async fn unauthorized_callers_are_closed_at_accept_on_the_command_and_monitor_ports() {
    let net = MemNetwork::new();
    let transport: Arc<dyn Transport> = Arc::new(net.node(ip(0)));
    let node = start_node_with(
        transport.clone(),
        0,
        fast_raft(),
        all_but_intruder(),
        CommandConfig::default(),
    )
    .await;
    let render: Render = Arc::new(|_| {
        Some(Page { status: 200, content_type: "text/plain", body: "hi\n".to_owned() })
    });
    let monitor = PageServer::start(
        Arc::from(transport.listen(MONITOR_PORT).await.unwrap()),
        all_but_intruder(),
        render,
        Duration::from_secs(10),
    );
    for port in [COMMAND_PORT, MONITOR_PORT] {
        let mut intruder = dial(&net, INTRUDER, port).await;
        assert!(
            closed_within(&mut intruder, Duration::from_secs(2)).await,
            "port {port} kept an unauthorized connection open"
        );
        // An authorized caller's connection stays open, waiting for a
        // request.
        let mut peer = dial(&net, ip(1), port).await;
        assert!(!closed_within(&mut peer, Duration::from_millis(300)).await, "port {port}");
    }
    monitor.shutdown().await;
    stop_node(node).await;
}

/// Before: an authorized peer could hold any number of connections. Now
/// one beyond `max_connections_per_peer` closes that peer's oldest. In
/// paused time, like the test above.
#[tokio::test(start_paused = true)]
async fn a_peer_holds_at_most_max_connections_per_peer() {
    let net = MemNetwork::new();
    let config = CommandConfig { max_connections_per_peer: 4, ..CommandConfig::default() };
    let node =
        start_node_with(Arc::new(net.node(ip(0))), 0, fast_raft(), all_but_intruder(), config)
            .await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(dial(&net, ip(1), COMMAND_PORT).await);
        // One at a time, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = Vec::new();
    for (i, stream) in streams.iter_mut().enumerate() {
        if !closed_within(stream, Duration::from_millis(200)).await {
            open.push(i);
        }
    }
    assert_eq!(open, vec![6, 7, 8, 9], "the newest four stay open");
    // Another peer has its own allowance.
    let mut other = dial(&net, ip(2), COMMAND_PORT).await;
    assert!(!closed_within(&mut other, Duration::from_millis(200)).await);
    stop_node(node).await;
}

/// A peer authorized when it connected and revoked since is refused on
/// its live connection: the next request gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_revoked_on_a_live_connection_gets_403() {
    let net = MemNetwork::new();
    let trusted = Arc::new(AtomicBool::new(true));
    let authorize: Authorize = {
        let trusted = trusted.clone();
        Arc::new(move |peer| peer.ip() != ip(1) || trusted.load(Ordering::SeqCst))
    };
    let node = start_node_with(
        Arc::new(net.node(ip(0))),
        0,
        fast_raft(),
        authorize,
        CommandConfig::default(),
    )
    .await;
    let mut stream = dial(&net, ip(1), COMMAND_PORT).await;
    let request = b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n\r\n";
    let status =
        |answer: &[u8]| String::from_utf8_lossy(&answer[..12.min(answer.len())]).into_owned();
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 64 << 10];
    let n = tokio::time::timeout(WAIT, stream.read(&mut answer)).await.unwrap().unwrap();
    assert_eq!(status(&answer[..n]), "HTTP/1.1 200");
    trusted.store(false, Ordering::SeqCst);
    stream.write_all(request).await.unwrap();
    let n = tokio::time::timeout(WAIT, stream.read(&mut answer)).await.unwrap().unwrap();
    assert_eq!(status(&answer[..n]), "HTTP/1.1 403");
    stop_node(node).await;
}

/// Before: the command client called any address, so a node kept
/// forwarding to (and probing) a peer whose tag had been revoked. Now it
/// refuses, and drops its idle connections there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_calls_only_authorized_addresses() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let trusted = Arc::new(AtomicBool::new(true));
    let authorize: Authorize = {
        let trusted = trusted.clone();
        Arc::new(move |peer| peer.ip() != ip(0) || trusted.load(Ordering::SeqCst))
    };
    let client = CommandClient::new(Arc::new(net.node(ip(5))), CommandConfig::default())
        .authorized_by(authorize);
    let deadline = || Instant::now() + Duration::from_secs(5);
    let answer: Result<serde_json::Value, RpcError> =
        client.get(&info(0), "/v1/cluster", deadline()).await;
    assert!(answer.is_ok(), "{answer:?}");
    trusted.store(false, Ordering::SeqCst);
    let refused: Result<serde_json::Value, RpcError> =
        client.get(&info(0), "/v1/cluster", deadline()).await;
    match refused {
        Err(RpcError::Unreachable { reason, .. }) => {
            assert!(reason.contains("not an authorized address"), "{reason}")
        }
        other => panic!("a revoked address was called: {other:?}"),
    }
    stop_node(node).await;
}
