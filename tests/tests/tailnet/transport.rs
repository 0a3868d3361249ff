//! The tsnet transport on the real local tailnet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::conformance;
use tests::tailnet::LocalTailnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::tsnet::{DataPath, TsnetTransport};
use ts_transport::{Listener, Transport, TransportError};

use crate::{v4, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_transport_conforms() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("conform-a").await.unwrap();
    let (b, _) = tailnet.node("conform-b").await.unwrap();
    within(
        "conformance suite",
        conformance::run_all(Arc::new(a.clone()), Arc::new(b.clone()), 7100),
    )
    .await;
    a.close().await;
    b.close().await;
    tailnet.stop().await;
}

/// The socketpair data path (libtailscale's way, kept for comparison and as
/// the direct path's fallback) still does everything the direct one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_socketpair_path_conforms() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let node = |name: &str| {
        let mut options = tailnet.node_options(name);
        options.data_path = DataPath::Socketpair;
        async move {
            let node = TsnetTransport::new(options).unwrap();
            node.up(tests::tailnet::UP_TIMEOUT).await.unwrap();
            node
        }
    };
    let a = node("pair-a").await;
    let b = node("pair-b").await;
    within(
        "conformance suite, socketpair path",
        conformance::run_all(Arc::new(a.clone()), Arc::new(b.clone()), 7150),
    )
    .await;
    a.close().await;
    b.close().await;
    tailnet.stop().await;
}

/// A writer whose peer does not read is held back after a bounded amount
/// (the direct path's rings and gVisor's windows), not buffered without
/// end, and goes on once the peer reads; every byte arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_writer_is_held_back_while_the_peer_does_not_read() {
    const BOUND: usize = 64 << 20;
    const AFTER: usize = 4 << 20;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("back-a").await.unwrap();
    let (b, _) = tailnet.node("back-b").await.unwrap();
    let listener = b.listen(7800).await.unwrap();
    let ((mut server, _), mut client) =
        within("connect", conformance::connect(&*listener, &a, v4(&b), 7800)).await.unwrap();
    fn byte(i: usize) -> u8 {
        (i % 251) as u8
    }
    let chunk_at = |offset: usize, len: usize| (offset..offset + len).map(byte).collect::<Vec<_>>();

    // Write until no write completes for 2 s.
    let mut written = 0;
    loop {
        let chunk = chunk_at(written, 64 << 10);
        match tokio::time::timeout(Duration::from_secs(2), client.write(&chunk)).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(err)) => panic!("write failed after {written} bytes: {err}"),
            Err(_) => break,
        }
        assert!(written <= BOUND, "{written} bytes written to a peer that reads nothing");
    }
    assert!(written > 0, "nothing could be written at all");

    // The peer reads everything, and the writer goes on meanwhile.
    let total = written + AFTER;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        loop {
            let n = server.read(&mut buf).await.expect("read");
            if n == 0 {
                return got;
            }
            for (j, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, byte(got + j), "byte {} differs", got + j);
            }
            got += n;
        }
    });
    within("writing after the peer reads", async {
        client.write_all(&chunk_at(written, AFTER)).await.expect("write after the peer reads");
        client.shutdown().await.expect("shutdown");
    })
    .await;
    let got = within("reading everything", reader).await.unwrap();
    assert_eq!(got, total);
    eprintln!("held back after {written} bytes");
    tailnet.stop().await;
}

/// Bytes written just before a stream is dropped still reach the peer,
/// followed by end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_dropped_stream_delivers_what_was_written() {
    const SIZE: usize = 3 << 20;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("linger-a").await.unwrap();
    let (b, _) = tailnet.node("linger-b").await.unwrap();
    let listener = b.listen(7810).await.unwrap();
    let ((mut server, _), mut client) =
        within("connect", conformance::connect(&*listener, &a, v4(&b), 7810)).await.unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to end of stream");
        got
    });
    within("write", client.write_all(&data)).await.unwrap();
    drop(client);
    let got = within("read to end of stream", reader).await.unwrap();
    assert!(got == data, "received {} bytes, not the {SIZE} written", got.len());
    tailnet.stop().await;
}

/// Connections a listener took but nobody accepted are closed with the
/// listener, so their dialers see end of stream instead of waiting for
/// ever (on the direct path they are handles nobody else would close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_connections_left_on_a_closed_listener_are_closed() {
    const DIALS: usize = 5;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("left-a").await.unwrap();
    let (b, _) = tailnet.node("left-b").await.unwrap();
    let listener = b.listen(7820).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..DIALS {
        let mut stream =
            within("dial", a.dial(v4(&b), 7820, conformance::DIAL_TIMEOUT)).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        streams.push(stream);
    }
    // Let the node hand them all to the listener, then close it unread.
    tokio::time::sleep(Duration::from_millis(500)).await;
    listener.close();
    drop(listener);
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("stream {i} read {n} bytes"),
            Err(_) => panic!("stream {i} still open 20 s after its listener closed"),
        }
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_ipv6_peer_addresses() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, a_addrs) = tailnet.node("six-a").await.unwrap();
    let (b, b_addrs) = tailnet.node("six-b").await.unwrap();
    let b_v6 = IpAddr::V6(b_addrs.v6.expect("testcontrol hands out IPv6 addresses"));
    let listener = b.listen(7200).await.unwrap();
    let ((_, peer), _) =
        within("IPv6 connect", conformance::connect(&*listener, &a, b_v6, 7200)).await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V6(a_addrs.v6.unwrap()), "IPv6 dial attributed to {peer}");
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_moves_64_mib_each_way_at_once() {
    const SIZE: usize = 64 << 20;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("bulk-a").await.unwrap();
    let (b, _) = tailnet.node("bulk-b").await.unwrap();
    let listener = b.listen(7300).await.unwrap();
    let ((server, _), client) =
        within("connect", conformance::connect(&*listener, &a, v4(&b), 7300)).await.unwrap();

    // A pattern that differs at every offset modulo a prime, so a dropped,
    // duplicated or reordered chunk changes the checksum.
    fn pattern(seed: u8, i: usize) -> u8 {
        (i % 251) as u8 ^ seed
    }
    async fn send(mut w: impl AsyncWriteExt + Unpin, seed: u8) {
        let mut chunk = vec![0u8; 1 << 20];
        for offset in (0..SIZE).step_by(chunk.len()) {
            for (j, byte) in chunk.iter_mut().enumerate() {
                *byte = pattern(seed, offset + j);
            }
            w.write_all(&chunk).await.expect("bulk write");
        }
        w.shutdown().await.expect("bulk shutdown");
    }
    async fn receive(mut r: impl AsyncReadExt + Unpin, seed: u8) -> usize {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await.expect("bulk read");
            if n == 0 {
                return total;
            }
            for (j, &byte) in buf[..n].iter().enumerate() {
                assert_eq!(byte, pattern(seed, total + j), "byte {} differs", total + j);
            }
            total += n;
        }
    }
    let (client_r, client_w) = tokio::io::split(client);
    let (server_r, server_w) = tokio::io::split(server);
    let started = Instant::now();
    let (_, _, at_server, at_client) = within("64 MiB each way", async {
        tokio::join!(
            send(client_w, 0x5a),
            send(server_w, 0xa5),
            receive(server_r, 0x5a),
            receive(client_r, 0xa5)
        )
    })
    .await;
    assert_eq!(at_server, SIZE, "server received {at_server} bytes");
    assert_eq!(at_client, SIZE, "client received {at_client} bytes");
    eprintln!("64 MiB each way at once in {:?}", started.elapsed());
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_accept_attributes_every_connection_to_its_dialer() {
    const PER_DIALER: usize = 30;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (server, _) = tailnet.node("attr-server").await.unwrap();
    let mut dialers = Vec::new();
    for name in ["attr-d1", "attr-d2", "attr-d3"] {
        dialers.push(tailnet.node(name).await.unwrap().0);
    }
    let listener: Arc<dyn Listener> = Arc::from(server.listen(7400).await.unwrap());
    let total = PER_DIALER * dialers.len();
    let acceptor = tokio::spawn({
        let listener = listener.clone();
        async move {
            let mut checks = Vec::new();
            for _ in 0..total {
                let (mut stream, peer) = listener.accept().await.expect("accept");
                // Read the dialer's own claim of its address on a task of its
                // own, so slow writers do not hold up the accept loop.
                checks.push(tokio::spawn(async move {
                    let mut len = [0u8; 1];
                    stream.read_exact(&mut len).await.expect("read length");
                    let mut claimed = vec![0u8; len[0] as usize];
                    stream.read_exact(&mut claimed).await.expect("read claimed address");
                    let claimed: IpAddr = String::from_utf8(claimed).unwrap().parse().unwrap();
                    (claimed, peer.ip())
                }));
            }
            let mut pairs = Vec::new();
            for check in checks {
                pairs.push(check.await.expect("check task"));
            }
            pairs
        }
    });
    // Interleave: every dialer opens its connections concurrently.
    let server_ip = v4(&server);
    let mut dials = Vec::new();
    for round in 0..PER_DIALER {
        for dialer in &dialers {
            let dialer = dialer.clone();
            dials.push(tokio::spawn(async move {
                let own = v4(&dialer).to_string();
                let mut stream = dialer
                    .dial(server_ip, 7400, conformance::DIAL_TIMEOUT)
                    .await
                    .unwrap_or_else(|err| panic!("dial {round}: {err}"));
                stream.write_all(&[own.len() as u8]).await.unwrap();
                stream.write_all(own.as_bytes()).await.unwrap();
                stream.flush().await.unwrap();
                // Keep the stream open until the server has read it.
                let mut buf = [0u8; 1];
                let _ = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
            }));
        }
    }
    let pairs = within("90 interleaved connections", acceptor).await.expect("acceptor task");
    for dial in dials {
        dial.abort();
    }
    assert_eq!(pairs.len(), total);
    let mut per_dialer: HashMap<IpAddr, usize> = HashMap::new();
    for (claimed, observed) in pairs {
        assert_eq!(observed, claimed, "connection from {claimed} was attributed to {observed}");
        *per_dialer.entry(observed).or_default() += 1;
    }
    assert_eq!(per_dialer.len(), 3);
    assert!(per_dialer.values().all(|&n| n == PER_DIALER), "counts per dialer: {per_dialer:?}");
    tailnet.stop().await;
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|dir| dir.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_dial_to_unused_address_fails_fast_and_never_leaves_the_tailnet() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("void-dialer").await.unwrap();
    let timeout = Duration::from_secs(5);
    // Inside the tailnet's range but no node has it, and outside the range:
    // tsnet alone would send both out through the host's network.
    for nobody in
        [IpAddr::V4(Ipv4Addr::new(100, 64, 0, 250)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]
    {
        let started = Instant::now();
        match a.dial(nobody, 7500, timeout).await {
            Err(TransportError::Unreachable { reason, .. }) => {
                assert!(reason.contains("no tailnet node"), "unexpected reason {reason:?}")
            }
            other => panic!("dial to {nobody} gave {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < timeout, "refusal took {:?}", started.elapsed());
    }
    a.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_dials_to_a_vanished_peer_time_out_without_stuck_threads() {
    const DIALS: usize = 50;
    let tailnet = LocalTailnet::start().await.unwrap();
    let (a, _) = tailnet.node("timeout-dialer").await.unwrap();
    let (gone, _) = tailnet.node("timeout-gone").await.unwrap();
    // Still in the netmap (not ephemeral), but nothing answers any more.
    let gone_ip = v4(&gone);
    gone.close().await;
    drop(gone);
    let timeout = Duration::from_secs(2);

    let before = thread_count();
    let mut dials = Vec::new();
    for _ in 0..DIALS {
        let a = a.clone();
        dials.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = a.dial(gone_ip, 7500, timeout).await;
            (result.map(|_| ()), started.elapsed())
        }));
    }
    for dial in dials {
        let (result, took) = within("dial to a vanished peer", dial).await.unwrap();
        assert!(
            matches!(result, Err(TransportError::Timeout { .. })),
            "dial to a vanished peer gave {result:?} after {took:?}, not a timeout"
        );
        assert!(
            took < timeout + Duration::from_secs(2),
            "a dial took {took:?} with timeout {timeout:?}"
        );
    }
    // Abandoned dials must not leave threads behind: allow a few for the Go
    // runtime's own scaling, far fewer than one per dial.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = thread_count();
    while after > before + 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = thread_count();
    }
    assert!(
        after <= before + 8,
        "threads went from {before} to {after} after {DIALS} failed dials"
    );
    a.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_close_in_every_state() {
    let tailnet = LocalTailnet::start().await.unwrap();

    // A node that never came up closes cleanly, twice, and refuses work.
    let never = TsnetTransport::new(tailnet.node_options("never-up")).unwrap();
    never.close().await;
    never.close().await;
    let listen = never.listen(7600).await;
    assert!(listen.is_err(), "listen on a closed node succeeded");
    drop(never);

    // Dropping a node that never started is safe too (libtailscale aborts).
    drop(TsnetTransport::new(tailnet.node_options("dropped")).unwrap());

    // A node with open listeners and streams: closing it ends accept and
    // breaks the streams, without crashing.
    let (a, _) = tailnet.node("close-a").await.unwrap();
    let (b, _) = tailnet.node("close-b").await.unwrap();
    let listener: Arc<dyn Listener> = Arc::from(b.listen(7601).await.unwrap());
    let ((mut server_stream, _), _client_stream) =
        within("connect", conformance::connect(&*listener, &a, v4(&b), 7601)).await.unwrap();
    let pending = tokio::spawn({
        let listener = listener.clone();
        async move { listener.accept().await.map(|_| ()) }
    });
    within("close node", b.close()).await;
    let result = within("accept after node close", pending).await.unwrap();
    assert!(matches!(result, Err(TransportError::Closed)), "pending accept gave {result:?}");
    let mut buf = [0u8; 8];
    match within("read after node close", server_stream.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes on a stream of a closed node"),
    }
    assert!(
        b.dial(v4(&a), 7601, Duration::from_secs(1)).await.is_err(),
        "dial from a closed node worked"
    );
    b.close().await;
    a.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsnet_restart_on_same_state_dir_keeps_address() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (first, first_addrs) = tailnet.node("phoenix").await.unwrap();
    first.close().await;
    drop(first);
    let (second, second_addrs) = tailnet.node("phoenix").await.unwrap();
    assert_eq!(first_addrs, second_addrs, "address changed across a restart on the same state dir");
    // And it is usable: a peer reaches it at that address.
    let (peer, _) = tailnet.node("phoenix-peer").await.unwrap();
    let listener = second.listen(7700).await.unwrap();
    within("connect", conformance::connect(&*listener, &peer, v4(&second), 7700)).await.unwrap();
    assert_eq!(
        tailnet.nodes().await.unwrap().iter().filter(|n| n.hostname == "phoenix").count(),
        1
    );
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_admin_tags_reach_the_node() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let (node, addrs) = tailnet.node("taggable").await.unwrap();
    let updated = tailnet.set_tags("taggable", &["tag:cluster"]).await.unwrap();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].tags, ["tag:cluster"]);
    assert!(updated[0].ips.contains(&addrs.v4.unwrap().to_string()));
    let listed = tailnet.nodes().await.unwrap();
    let me = listed.iter().find(|n| n.hostname == "taggable").expect("node listed");
    assert_eq!(me.tags, ["tag:cluster"]);
    assert!(!me.stable_id.is_empty());
    assert!(tailnet.set_tags("no-such-host", &["tag:x"]).await.is_err());
    // The LocalAPI is reachable with the credential the node hands out.
    let api = node.local_api().unwrap();
    assert!(api.addr.ip().is_loopback());
    assert_eq!(api.credential.len(), 32);
    node.close().await;
    tailnet.stop().await;
}
