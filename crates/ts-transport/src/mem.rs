//! In-process nodes on a shared network with fault controls.
//!
//! Streams are tokio duplex pipes. Every connection shares a small state
//! object with the network, so a partition cuts connections that already
//! exist (both ends then fail with `ConnectionReset`), and a delay applies to
//! writes on live connections as well as to new dials.

use std::collections::{HashMap, HashSet};
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use crate::close::CloseSignal;
use crate::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

/// Bytes buffered in each direction of an in-memory connection.
const PIPE_CAPACITY: usize = 256 * 1024;
/// Connections waiting to be accepted before new dials are refused.
const ACCEPT_BACKLOG: usize = 1024;
/// First port handed out for port-0 listeners and for the dialing side.
const EPHEMERAL_START: u16 = 32768;

/// A shared in-process network that [`MemTransport`] nodes live on.
///
/// Cloning gives another handle to the same network. Fault controls take
/// effect at once, on new and on existing connections.
#[derive(Clone, Debug, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
}

#[derive(Debug, Default)]
struct NetState {
    nodes: HashSet<IpAddr>,
    listeners: HashMap<SocketAddr, mpsc::Sender<(MemStream, SocketAddr)>>,
    next_port: HashMap<IpAddr, u16>,
    /// Unordered pairs of nodes that cannot talk to each other.
    partitions: HashSet<(IpAddr, IpAddr)>,
    /// Nodes whose new connections vanish: dials hang until their timeout.
    blackholed: HashSet<IpAddr>,
    /// Nodes that refuse every incoming connection.
    refusing: HashSet<IpAddr>,
    /// One-way delay added between a pair of nodes.
    delays: HashMap<(IpAddr, IpAddr), Duration>,
    conns: Vec<Weak<Link>>,
}

fn pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

impl NetState {
    fn partitioned(&self, a: IpAddr, b: IpAddr) -> bool {
        self.partitions.contains(&pair(a, b))
    }

    fn delay(&self, a: IpAddr, b: IpAddr) -> Duration {
        self.delays.get(&pair(a, b)).copied().unwrap_or_default()
    }

    fn ephemeral_port(&mut self, ip: IpAddr) -> u16 {
        loop {
            let next = self.next_port.entry(ip).or_insert(EPHEMERAL_START);
            let port = *next;
            *next = if *next == u16::MAX { EPHEMERAL_START } else { *next + 1 };
            if !self.listeners.contains_key(&SocketAddr::new(ip, port)) {
                return port;
            }
        }
    }

    /// Applies the current faults to every live connection.
    fn update_links(&mut self) {
        self.conns.retain(|weak| weak.strong_count() > 0);
        for link in self.conns.iter().filter_map(Weak::upgrade) {
            if self.partitioned(link.a, link.b) {
                link.cut();
            }
            let delay = self.delay(link.a, link.b);
            link.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    /// A node on this network at `ip`.
    pub fn node(&self, ip: IpAddr) -> MemTransport {
        self.lock().nodes.insert(ip);
        MemTransport { network: self.clone(), ip }
    }

    /// Cuts `a` off from `b`: their connections break and new dials between
    /// them time out.
    pub fn partition(&self, a: IpAddr, b: IpAddr) {
        let mut state = self.lock();
        state.partitions.insert(pair(a, b));
        state.update_links();
    }

    /// Splits the network in two: no node of `side` can reach any node
    /// outside it.
    pub fn partition_set(&self, side: &[IpAddr]) {
        let mut state = self.lock();
        let others: Vec<IpAddr> =
            state.nodes.iter().copied().filter(|ip| !side.contains(ip)).collect();
        for &a in side {
            for &b in &others {
                state.partitions.insert(pair(a, b));
            }
        }
        state.update_links();
    }

    /// Cuts `ip` off from every other node.
    pub fn isolate(&self, ip: IpAddr) {
        self.partition_set(&[ip]);
    }

    /// Removes the partition between `a` and `b`.
    pub fn heal(&self, a: IpAddr, b: IpAddr) {
        self.lock().partitions.remove(&pair(a, b));
    }

    /// Removes every fault: partitions, black holes, refusals and delays.
    pub fn heal_all(&self) {
        let mut state = self.lock();
        state.partitions.clear();
        state.blackholed.clear();
        state.refusing.clear();
        state.delays.clear();
        state.update_links();
    }

    /// While on, new connections from or to `ip` are silently dropped: the
    /// dial waits out its timeout. Existing connections are untouched.
    pub fn set_drop_new(&self, ip: IpAddr, on: bool) {
        let mut state = self.lock();
        if on {
            state.blackholed.insert(ip);
        } else {
            state.blackholed.remove(&ip);
        }
    }

    /// While on, `ip` refuses every incoming connection at once.
    pub fn set_refuse(&self, ip: IpAddr, on: bool) {
        let mut state = self.lock();
        if on {
            state.refusing.insert(ip);
        } else {
            state.refusing.remove(&ip);
        }
    }

    /// Adds `delay` to every write between `a` and `b` (both directions) and
    /// to each dial between them. `Duration::ZERO` removes it.
    pub fn set_delay(&self, a: IpAddr, b: IpAddr, delay: Duration) {
        let mut state = self.lock();
        if delay.is_zero() {
            state.delays.remove(&pair(a, b));
        } else {
            state.delays.insert(pair(a, b), delay);
        }
        state.update_links();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One node on a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    network: MemNetwork,
    ip: IpAddr,
}

impl MemTransport {
    /// The network this node lives on.
    pub fn network(&self) -> &MemNetwork {
        &self.network
    }
}

impl Transport for MemTransport {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let mut state = self.network.lock();
            let port = if port == 0 { state.ephemeral_port(self.ip) } else { port };
            let addr = SocketAddr::new(self.ip, port);
            if state.listeners.contains_key(&addr) {
                return Err(TransportError::AddrInUse(port));
            }
            let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
            state.listeners.insert(addr, tx.clone());
            Ok(Box::new(MemListener {
                network: self.network.clone(),
                addr,
                tx,
                incoming: tokio::sync::Mutex::new(rx),
                closed: CloseSignal::default(),
            }) as Box<dyn Listener>)
        })
    }

    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
        Box::pin(async move {
            let target = SocketAddr::new(addr, port);
            let (lost, delay) = {
                let state = self.network.lock();
                let lost = state.partitioned(self.ip, addr)
                    || state.blackholed.contains(&self.ip)
                    || state.blackholed.contains(&addr);
                (lost, state.delay(self.ip, addr))
            };
            if lost || delay >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout { addr: target, after: timeout });
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut state = self.network.lock();
            if state.refusing.contains(&addr) {
                return Err(TransportError::Refused(target));
            }
            let Some(tx) = state.listeners.get(&target).cloned() else {
                return Err(TransportError::Refused(target));
            };
            let local = SocketAddr::new(self.ip, state.ephemeral_port(self.ip));
            let link = Arc::new(Link::new(self.ip, addr, state.delay(self.ip, addr)));
            state.conns.push(Arc::downgrade(&link));
            drop(state);
            let (near, far) = tokio::io::duplex(PIPE_CAPACITY);
            let server_end = MemStream::new(far, link.clone(), 1);
            if tx.try_send((server_end, local)).is_err() {
                return Err(TransportError::Refused(target));
            }
            Ok(Box::new(MemStream::new(near, link, 0)) as BoxStream)
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        vec![self.ip]
    }
}

struct MemListener {
    network: MemNetwork,
    addr: SocketAddr,
    /// Identifies this listener's entry in the network's table.
    tx: mpsc::Sender<(MemStream, SocketAddr)>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(MemStream, SocketAddr)>>,
    closed: CloseSignal,
}

impl Listener for MemListener {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            let next = tokio::select! {
                _ = self.closed.closed() => None,
                next = async { self.incoming.lock().await.recv().await } => next,
            };
            match next {
                Some((stream, peer)) if !self.closed.is_closed() => {
                    Ok((Box::new(stream) as BoxStream, PeerAddr::new(peer)))
                }
                _ => Err(TransportError::Closed),
            }
        })
    }

    fn local_port(&self) -> u16 {
        self.addr.port()
    }

    fn close(&self) {
        if self.closed.close() {
            self.unregister();
        }
    }
}

impl MemListener {
    /// Frees the port; connections still queued are dropped with the
    /// listener, which resets their dialers.
    fn unregister(&self) {
        let mut state = self.network.lock();
        if state.listeners.get(&self.addr).is_some_and(|tx| tx.same_channel(&self.tx)) {
            state.listeners.remove(&self.addr);
        }
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.closed.close();
        self.unregister();
    }
}

/// What the network shares with both ends of one connection.
#[derive(Debug)]
struct Link {
    a: IpAddr,
    b: IpAddr,
    cut: AtomicBool,
    delay_us: AtomicU64,
    /// Tasks parked on either end, woken when the link is cut.
    /// Slot `end * 2 + (0 for reads, 1 for writes)`.
    wakers: Mutex<[Option<Waker>; 4]>,
}

impl Link {
    fn new(a: IpAddr, b: IpAddr, delay: Duration) -> Link {
        Link {
            a,
            b,
            cut: AtomicBool::new(false),
            delay_us: AtomicU64::new(delay.as_micros() as u64),
            wakers: Mutex::new(Default::default()),
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        wakers.into_iter().flatten().for_each(Waker::wake);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn park(&self, slot: usize, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        match &mut wakers[slot] {
            Some(old) if old.will_wake(waker) => {}
            other => *other = Some(waker.clone()),
        }
    }
}

/// One end of an in-memory connection.
struct MemStream {
    inner: DuplexStream,
    link: Arc<Link>,
    end: usize,
    /// The delay still to pass before the current write goes through.
    write_delay: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl MemStream {
    fn new(inner: DuplexStream, link: Arc<Link>, end: usize) -> MemStream {
        MemStream { inner, link, end, write_delay: None }
    }

    fn reset() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "connection cut by a network partition")
    }
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.link.is_cut() {
            return Poll::Ready(Err(MemStream::reset()));
        }
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_pending() {
            self.link.park(self.end * 2, cx.waker());
            if self.link.is_cut() {
                return Poll::Ready(Err(MemStream::reset()));
            }
        }
        poll
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.link.is_cut() {
            return Poll::Ready(Err(MemStream::reset()));
        }
        let delay = Duration::from_micros(self.link.delay_us.load(Ordering::Relaxed));
        if !delay.is_zero() {
            let sleep = self.write_delay.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                self.link.park(self.end * 2 + 1, cx.waker());
                return Poll::Pending;
            }
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &poll {
            Poll::Pending => {
                self.link.park(self.end * 2 + 1, cx.waker());
                if self.link.is_cut() {
                    return Poll::Ready(Err(MemStream::reset()));
                }
            }
            Poll::Ready(_) => self.write_delay = None,
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
