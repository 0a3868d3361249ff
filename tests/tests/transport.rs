//! The transport conformance suite over the in-memory and TCP transports,
//! and the in-memory network's fault controls.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::conformance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::{MemNetwork, TcpTransport, Transport, TransportError};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

#[tokio::test]
async fn mem_transport_conforms() {
    let net = MemNetwork::new();
    conformance::run_all(Arc::new(net.node(ip(1))), Arc::new(net.node(ip(2))), 0).await;
}

#[tokio::test]
async fn mem_transport_over_ipv6_conforms() {
    let net = MemNetwork::new();
    let a: IpAddr = "fd7a:115c:a1e0::1".parse().unwrap();
    let b: IpAddr = "fd7a:115c:a1e0::2".parse().unwrap();
    conformance::run_all(Arc::new(net.node(a)), Arc::new(net.node(b)), 0).await;
}

#[tokio::test]
async fn tcp_transport_conforms() {
    // Distinct loopback addresses, so the peer address tells the nodes apart.
    let a = TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    let b = TcpTransport::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    conformance::run_all(Arc::new(a), Arc::new(b), 0).await;
}

async fn connected_pair(
    net: &MemNetwork,
) -> (ts_transport::BoxStream, ts_transport::BoxStream, Box<dyn ts_transport::Listener>) {
    let a = net.node(ip(1));
    let b = net.node(ip(2));
    let listener = b.listen(0).await.unwrap();
    let port = listener.local_port();
    let (accepted, dialed) =
        tokio::join!(listener.accept(), a.dial(ip(2), port, Duration::from_secs(1)));
    (dialed.unwrap(), accepted.unwrap().0, listener)
}

#[tokio::test]
async fn partition_cuts_existing_connections_and_new_dials() {
    let net = MemNetwork::new();
    let (mut client, mut server, listener) = connected_pair(&net).await;
    let port = listener.local_port();
    // A read parked before the partition must wake up with an error.
    let parked = tokio::spawn(async move {
        let mut buf = [0u8; 1];
        server.read(&mut buf).await
    });
    tokio::task::yield_now().await;
    net.partition(ip(1), ip(2));
    let read = tokio::time::timeout(Duration::from_secs(5), parked).await.unwrap().unwrap();
    assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    assert!(client.write_all(b"x").await.is_err(), "write across a partition succeeded");

    let a = net.node(ip(1));
    let started = Instant::now();
    let dial = a.dial(ip(2), port, Duration::from_millis(200)).await;
    assert!(
        matches!(dial, Err(TransportError::Timeout { .. })),
        "dial gave {:?}",
        dial.map(|_| ())
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    net.heal(ip(1), ip(2));
    let (accepted, dialed) =
        tokio::join!(listener.accept(), a.dial(ip(2), port, Duration::from_secs(1)));
    assert!(accepted.is_ok() && dialed.is_ok(), "no connection after healing");
}

#[tokio::test]
async fn partition_set_splits_the_network() {
    let net = MemNetwork::new();
    let nodes: Vec<_> = (1..=5).map(|i| net.node(ip(i))).collect();
    let mut listeners = Vec::new();
    for node in &nodes {
        listeners.push(node.listen(7000).await.unwrap());
    }
    net.partition_set(&[ip(1), ip(2)]);
    let timeout = Duration::from_millis(100);
    // Same side: fine. Across: times out.
    assert!(nodes[0].dial(ip(2), 7000, timeout).await.is_ok());
    assert!(nodes[2].dial(ip(5), 7000, timeout).await.is_ok());
    assert!(nodes[0].dial(ip(3), 7000, timeout).await.is_err());
    assert!(nodes[4].dial(ip(2), 7000, timeout).await.is_err());
    net.heal_all();
    assert!(nodes[4].dial(ip(2), 7000, timeout).await.is_ok());
}

#[tokio::test]
async fn refuse_and_drop_new_connections() {
    let net = MemNetwork::new();
    let a = net.node(ip(1));
    let b = net.node(ip(2));
    let _listener = b.listen(7000).await.unwrap();
    net.set_refuse(ip(2), true);
    let started = Instant::now();
    let refused = a.dial(ip(2), 7000, Duration::from_secs(5)).await;
    assert!(matches!(refused, Err(TransportError::Refused(_))), "got {:?}", refused.map(|_| ()));
    assert!(started.elapsed() < Duration::from_secs(1), "refusal was not immediate");
    net.set_refuse(ip(2), false);

    net.set_drop_new(ip(2), true);
    let dropped = a.dial(ip(2), 7000, Duration::from_millis(150)).await;
    assert!(
        matches!(dropped, Err(TransportError::Timeout { .. })),
        "got {:?}",
        dropped.map(|_| ())
    );
    net.set_drop_new(ip(2), false);
    assert!(a.dial(ip(2), 7000, Duration::from_secs(1)).await.is_ok());
}

#[tokio::test]
async fn delay_slows_writes_on_live_connections() {
    let net = MemNetwork::new();
    let (mut client, mut server, _listener) = connected_pair(&net).await;
    net.set_delay(ip(1), ip(2), Duration::from_millis(100));
    let started = Instant::now();
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100), "delay not applied");
    net.set_delay(ip(1), ip(2), Duration::ZERO);
    let started = Instant::now();
    client.write_all(b"pong").await.unwrap();
    server.read_exact(&mut buf).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "delay not removed");
}

#[tokio::test]
async fn listen_twice_on_a_port_is_refused_until_closed() {
    let net = MemNetwork::new();
    let b = net.node(ip(2));
    let first = b.listen(7000).await.unwrap();
    assert!(matches!(b.listen(7000).await, Err(TransportError::AddrInUse(7000))));
    first.close();
    assert!(b.listen(7000).await.is_ok());

    let tcp = TcpTransport::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let first = tcp.listen(0).await.unwrap();
    let port = first.local_port();
    assert!(matches!(tcp.listen(port).await, Err(TransportError::AddrInUse(p)) if p == port));
}
