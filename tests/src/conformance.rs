//! One conformance suite for every `Transport`: echo, half-close, concurrent
//! streams, peer address, and close semantics. Each check takes two nodes,
//! `a` and `b`, of the same transport, and a port for `b` to listen on
//! (0 where the transport supports picking one).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::{BoxStream, Listener, PeerAddr, Transport, TransportError};

/// A dial timeout generous enough for a loaded 2-core machine.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any single step of a check.
const STEP: Duration = Duration::from_secs(30);

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {STEP:?}"),
    }
}

/// Runs every check in turn, each on its own port (`port`, `port + 1`, …;
/// all 0 when `port` is 0).
pub async fn run_all(a: Arc<dyn Transport>, b: Arc<dyn Transport>, port: u16) {
    let next = |i: u16| if port == 0 { 0 } else { port + i };
    echo_and_peer_addr(&*a, &*b, next(0)).await;
    half_close(&*a, &*b, next(1)).await;
    concurrent_streams(a.clone(), b.clone(), next(2)).await;
    listener_close_ends_accept(&*a, &*b, next(3)).await;
    dropped_stream_reads_eof(&*a, &*b, next(4)).await;
    dial_to_closed_port_fails(&*a, &*b, next(5)).await;
}

/// Dials `ip:port` from `dialer` and accepts on `listener` at once: the
/// accepted stream with its dialer's address, and the dialed stream.
///
/// A dial that fails is made again, every 100 ms, until [`DIAL_TIMEOUT`]
/// has passed: a tsnet node that has just come up may not have its peer in
/// its netmap yet, and a dial to an address it does not know fails at once
/// (seen in stop 28: the dial failed before the netmap that named the peer
/// arrived). A dial that fails for good ends the wait for the accept too,
/// where a plain `join!` would wait for that accept for ever.
pub async fn connect(
    listener: &(impl Listener + ?Sized),
    dialer: &(impl Transport + ?Sized),
    ip: IpAddr,
    port: u16,
) -> Result<((BoxStream, PeerAddr), BoxStream), TransportError> {
    let dial = async {
        let deadline = tokio::time::Instant::now() + DIAL_TIMEOUT;
        loop {
            match dialer.dial(ip, port, DIAL_TIMEOUT).await {
                Ok(stream) => return Ok(stream),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    tokio::try_join!(listener.accept(), dial)
}

async fn listen(b: &dyn Transport, port: u16) -> Box<dyn Listener> {
    step("listen", b.listen(port)).await.expect("listen")
}

fn dial_ip(b: &dyn Transport) -> std::net::IpAddr {
    *b.local_addrs().first().expect("a node that is up has an address")
}

/// Bytes go both ways unchanged, and the accepted stream names the dialer.
pub async fn echo_and_peer_addr(a: &dyn Transport, b: &dyn Transport, port: u16) {
    let listener = listen(b, port).await;
    let port = listener.local_port();
    let ((mut server, peer), mut client) =
        step("connect", connect(&*listener, a, dial_ip(b), port)).await.expect("connect");
    let serve = async {
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.expect("server read");
        server.write_all(&buf).await.expect("server write");
        server.flush().await.expect("server flush");
    };
    let ask = async {
        client.write_all(b"hello").await.expect("client write");
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.expect("client read");
        assert_eq!(&buf, b"hello");
    };
    step("echo", async { tokio::join!(serve, ask) }).await;
    assert!(
        a.local_addrs().contains(&peer.ip()),
        "accepted stream says it came from {peer}, but the dialer's addresses are {:?}",
        a.local_addrs()
    );
}

/// Shutting down one write half delivers end of stream while the other
/// direction keeps working.
pub async fn half_close(a: &dyn Transport, b: &dyn Transport, port: u16) {
    let listener = listen(b, port).await;
    let port = listener.local_port();
    let ((mut server, _), mut client) =
        step("connect", connect(&*listener, a, dial_ip(b), port)).await.expect("connect");
    let serve = async {
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.expect("read to end of stream");
        assert_eq!(request, b"request body");
        server.write_all(b"reply after end of request").await.expect("write after peer's EOF");
        server.shutdown().await.expect("server shutdown");
    };
    let ask = async {
        client.write_all(b"request body").await.expect("write");
        client.shutdown().await.expect("shutdown write half");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("read reply");
        assert_eq!(reply, b"reply after end of request");
    };
    step("half-close", async { tokio::join!(serve, ask) }).await;
}

/// Many streams at once each carry their own bytes.
pub async fn concurrent_streams(a: Arc<dyn Transport>, b: Arc<dyn Transport>, port: u16) {
    const STREAMS: usize = 16;
    const BYTES: usize = 64 * 1024;
    let listener: Arc<dyn Listener> = Arc::from(listen(&*b, port).await);
    let port = listener.local_port();
    let server = tokio::spawn({
        let listener = listener.clone();
        async move {
            let mut echoes = Vec::new();
            for _ in 0..STREAMS {
                let (mut stream, _) = listener.accept().await.expect("accept");
                echoes.push(tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(&mut stream);
                    tokio::io::copy(&mut r, &mut w).await.expect("echo copy");
                    w.shutdown().await.expect("echo shutdown");
                }));
            }
            for echo in echoes {
                echo.await.expect("echo task");
            }
        }
    });
    let ip = dial_ip(&*b);
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let a = a.clone();
        clients.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..BYTES).map(|j| (i * 31 + j) as u8).collect();
            let stream = a.dial(ip, port, DIAL_TIMEOUT).await.expect("dial");
            let (mut r, mut w) = tokio::io::split(stream);
            let writer = async {
                w.write_all(&payload).await.expect("write");
                w.shutdown().await.expect("shutdown");
            };
            let reader = async {
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.expect("read");
                back
            };
            let ((), back) = tokio::join!(writer, reader);
            assert!(
                back == payload,
                "stream {i} got {} bytes back, not its own {BYTES}",
                back.len()
            );
        }));
    }
    step("concurrent streams", async {
        for client in clients {
            client.await.expect("client task");
        }
        server.await.expect("server task");
    })
    .await;
}

/// Closing a listener ends a pending accept with `Closed`, and later accepts
/// keep saying so.
pub async fn listener_close_ends_accept(_a: &dyn Transport, b: &dyn Transport, port: u16) {
    let listener: Arc<dyn Listener> = Arc::from(listen(b, port).await);
    let pending = tokio::spawn({
        let listener = listener.clone();
        async move { listener.accept().await.map(|_| ()) }
    });
    // Let the accept start waiting before closing; either order must work.
    tokio::task::yield_now().await;
    listener.close();
    let result = step("accept after close", pending).await.expect("accept task");
    assert!(matches!(result, Err(TransportError::Closed)), "pending accept gave {result:?}");
    let again = step("second accept", listener.accept()).await;
    assert!(
        matches!(again, Err(TransportError::Closed)),
        "accept after close gave {:?}",
        again.map(|_| ())
    );
    listener.close();
}

/// When one side drops its stream, the other reads end of stream (or a
/// reset), never hangs.
pub async fn dropped_stream_reads_eof(a: &dyn Transport, b: &dyn Transport, port: u16) {
    let listener = listen(b, port).await;
    let port = listener.local_port();
    let ((mut server, _), client) =
        step("connect", connect(&*listener, a, dial_ip(b), port)).await.expect("connect");
    drop(client);
    let mut buf = [0u8; 16];
    match step("read from dropped peer", server.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a peer that sent nothing and went away"),
    }
}

/// Dialing a port nobody listens on fails, and within the timeout. With
/// `port` 0 a free port is found by listening and closing; otherwise `port`
/// must be one nobody listens on.
pub async fn dial_to_closed_port_fails(a: &dyn Transport, b: &dyn Transport, port: u16) {
    let port = if port == 0 {
        let listener = listen(b, 0).await;
        let port = listener.local_port();
        listener.close();
        port
    } else {
        port
    };
    let timeout = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let result = a.dial(dial_ip(b), port, timeout).await;
    assert!(result.is_err(), "dial to closed port {port} succeeded");
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "failed dial took {:?}, timeout was {timeout:?}",
        started.elapsed()
    );
}
