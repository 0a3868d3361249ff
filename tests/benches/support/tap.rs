//! A transport wrapper that counts and timestamps what crosses it, for the
//! "where the time goes" profile: how many raft frames and HTTP writes one
//! command costs, and when each happens relative to the command.
//!
//! Raft connections carry frames `[length: u32 BE][rest]`, so the bytes
//! written are parsed to count frames exactly; other connections (the
//! command port's HTTP) are counted in writes.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ts_transport::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

/// Which way bytes went, seen from the node that holds the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dir {
    Send,
    Recv,
}

/// One write or read that moved bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub(crate) at: Duration,
    pub(crate) node: usize,
    /// The service port (raft or command) the stream belongs to.
    pub(crate) port: u16,
    /// The other end's address.
    pub(crate) peer: IpAddr,
    pub(crate) dir: Dir,
    pub(crate) bytes: usize,
    /// Raft frames that started in these bytes (0 for other ports).
    pub(crate) frames: usize,
}

/// Totals for one (node, port, direction).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Count {
    pub(crate) calls: u64,
    pub(crate) bytes: u64,
    pub(crate) frames: u64,
}

/// What the wrapped transports of one cluster saw.
pub(crate) struct Tap {
    raft_port: u16,
    start: Instant,
    enabled: AtomicBool,
    events: Mutex<Vec<Event>>,
    counts: Mutex<BTreeMap<(usize, u16, Dir), Count>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tap {
    pub(crate) fn new(raft_port: u16) -> Arc<Tap> {
        Arc::new(Tap {
            raft_port,
            start: Instant::now(),
            enabled: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts or stops recording.
    pub(crate) fn record(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    /// Time since the tap was made, the clock of every event.
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    pub(crate) fn counts(&self) -> BTreeMap<(usize, u16, Dir), Count> {
        lock(&self.counts).clone()
    }

    fn note(&self, node: usize, port: u16, peer: IpAddr, dir: Dir, bytes: usize, frames: usize) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let at = self.now();
        lock(&self.events).push(Event { at, node, port, peer, dir, bytes, frames });
        let mut counts = lock(&self.counts);
        let c = counts.entry((node, port, dir)).or_default();
        c.calls += 1;
        c.bytes += bytes as u64;
        c.frames += frames as u64;
    }
}

/// A transport whose streams report to a [`Tap`].
pub(crate) struct Tapped {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) node: usize,
    pub(crate) tap: Arc<Tap>,
}

impl Tapped {
    fn wrap(&self, stream: BoxStream, port: u16, peer: IpAddr) -> BoxStream {
        Box::new(TappedStream {
            inner: stream,
            node: self.node,
            port,
            peer,
            tap: self.tap.clone(),
            raft: port == self.tap.raft_port,
            sent: FrameCounter::default(),
            received: FrameCounter::default(),
        })
    }
}

impl Transport for Tapped {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let inner = self.inner.listen(port).await?;
            let port = inner.local_port();
            let listener: Box<dyn Listener> = Box::new(TappedListener {
                inner,
                port,
                transport: Tapped {
                    inner: self.inner.clone(),
                    node: self.node,
                    tap: self.tap.clone(),
                },
            });
            Ok(listener)
        })
    }

    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
        Box::pin(async move {
            let stream = self.inner.dial(addr, port, timeout).await?;
            Ok(self.wrap(stream, port, addr))
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        self.inner.local_addrs()
    }
}

struct TappedListener {
    inner: Box<dyn Listener>,
    port: u16,
    transport: Tapped,
}

impl Listener for TappedListener {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            Ok((self.transport.wrap(stream, self.port, peer.ip()), peer))
        })
    }

    fn local_port(&self) -> u16 {
        self.port
    }

    fn close(&self) {
        self.inner.close();
    }
}

/// Finds frame starts in a byte stream of `[u32 BE length][length bytes]`.
#[derive(Default)]
struct FrameCounter {
    header: [u8; 4],
    header_len: usize,
    remaining: usize,
}

impl FrameCounter {
    fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut frames = 0;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (4 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 4 {
                self.header_len = 0;
                self.remaining = u32::from_be_bytes(self.header) as usize;
                frames += 1;
            }
        }
        frames
    }
}

struct TappedStream {
    inner: BoxStream,
    node: usize,
    port: u16,
    peer: IpAddr,
    tap: Arc<Tap>,
    raft: bool,
    sent: FrameCounter,
    received: FrameCounter,
}

impl AsyncRead for TappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let frames = if this.raft { this.received.feed(new) } else { 0 };
                this.tap.note(this.node, this.port, this.peer, Dir::Recv, new.len(), frames);
            }
        }
        result
    }
}

impl AsyncWrite for TappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            let frames = if this.raft { this.sent.feed(&buf[..n]) } else { 0 };
            this.tap.note(this.node, this.port, this.peer, Dir::Send, n, frames);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
