//! Fault injection over any transport, for chaos tests of real processes.
//!
//! [`Faults`] is a shared switchboard; [`Faults::wrap`] puts it in front of
//! a node's transport. Each node of a test cluster wraps its own transport,
//! so cutting `a` off from `b` means blocking `b` on `a` and `a` on `b`:
//!
//! - a blocked peer's connections break at once (both directions fail with
//!   `ConnectionReset`, pending reads included), its dials hang until their
//!   timeout as into a black hole, and its incoming connections are dropped
//!   unanswered;
//! - a black-holed peer is one that vanished without a word, as a process
//!   killed behind a userspace network stack does: its connections go
//!   silent for good (writes vanish, reads never complete, nothing fails),
//!   and dials and incoming connections behave as when blocked until the
//!   black hole is cleared;
//! - a delay holds every write for that long before it goes out;
//! - a drop rate makes that share of writes reset their connection, the way
//!   a lossy path ends up looking to a stream protocol.
//!
//! Randomness comes from the seed given to [`Faults::new`], so a test that
//! records its seed can replay the same drops.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

/// The faults currently in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// Peers this node cannot exchange anything with.
    pub blocked: HashSet<IpAddr>,
    /// Peers whose connections silently died; new ones wait for clearing.
    pub black_holed: HashSet<IpAddr>,
    /// Time every write waits before it is passed on.
    pub delay: Duration,
    /// Writes, per thousand, that reset their connection instead.
    pub drop_per_mille: u16,
}

/// A shared set of faults; cloning gives another handle to the same set.
#[derive(Clone, Debug)]
pub struct Faults {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: FaultConfig,
    rng: u64,
    /// Readers parked on live connections, woken when a peer is blocked.
    parked: Vec<Weak<Mutex<Option<Waker>>>>,
}

impl Faults {
    /// No faults yet; `seed` drives the drop decisions.
    pub fn new(seed: u64) -> Faults {
        let state = State { config: FaultConfig::default(), rng: seed | 1, parked: Vec::new() };
        Faults { shared: Arc::new(Shared { state: Mutex::new(state) }) }
    }

    /// A transport that sends everything through `inner`, subject to these
    /// faults.
    pub fn wrap(&self, inner: Arc<dyn Transport>) -> FaultyTransport {
        FaultyTransport { inner, faults: self.clone() }
    }

    /// The faults in force.
    pub fn config(&self) -> FaultConfig {
        self.lock().config.clone()
    }

    /// Replaces every fault at once.
    pub fn set(&self, config: FaultConfig) {
        let mut state = self.lock();
        state.config = config;
        state.config.drop_per_mille = state.config.drop_per_mille.min(1000);
        state.wake_parked();
    }

    /// Cuts this node off from `peer` (see the module documentation).
    pub fn block(&self, peer: IpAddr) {
        let mut state = self.lock();
        state.config.blocked.insert(peer);
        state.wake_parked();
    }

    /// Lets `peer` through again.
    pub fn unblock(&self, peer: IpAddr) {
        self.lock().config.blocked.remove(&peer);
    }

    /// Makes every live connection with `peer` go silent for good, and new
    /// ones wait until [`Faults::clear_black_hole`] (see the module
    /// documentation).
    pub fn black_hole(&self, peer: IpAddr) {
        self.lock().config.black_holed.insert(peer);
    }

    /// Lets new connections with `peer` through again; the ones that went
    /// silent stay silent.
    pub fn clear_black_hole(&self, peer: IpAddr) {
        self.lock().config.black_holed.remove(&peer);
    }

    /// Holds every write for `delay` (`Duration::ZERO`: none).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().config.delay = delay;
    }

    /// Makes `per_mille` writes in a thousand reset their connection
    /// (capped at 1000).
    pub fn set_drop_per_mille(&self, per_mille: u16) {
        self.lock().config.drop_per_mille = per_mille.min(1000);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.set(FaultConfig::default());
    }

    fn blocked(&self, peer: IpAddr) -> bool {
        self.lock().config.blocked.contains(&peer)
    }

    /// Whether new connections with `peer` vanish.
    fn unreachable(&self, peer: IpAddr) -> bool {
        let state = self.lock();
        state.config.blocked.contains(&peer) || state.config.black_holed.contains(&peer)
    }

    fn black_holed(&self, peer: IpAddr) -> bool {
        self.lock().config.black_holed.contains(&peer)
    }

    /// The delay to apply to a write, and whether the write is dropped.
    fn roll_write(&self) -> (Duration, bool) {
        let mut state = self.lock();
        let per_mille = u64::from(state.config.drop_per_mille);
        let dropped = per_mille > 0 && state.next_random() % 1000 < per_mille;
        (state.config.delay, dropped)
    }

    fn park(&self, slot: &Arc<Mutex<Option<Waker>>>) {
        let mut state = self.lock();
        state.parked.retain(|weak| weak.strong_count() > 0);
        state.parked.push(Arc::downgrade(slot));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl State {
    fn next_random(&mut self) -> u64 {
        // xorshift64: small, seedable, good enough to pick drops.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn wake_parked(&mut self) {
        self.parked.retain(|weak| weak.strong_count() > 0);
        for slot in self.parked.iter().filter_map(Weak::upgrade) {
            if let Some(waker) = lock_slot(&slot).take() {
                waker.wake();
            }
        }
    }
}

fn lock_slot(slot: &Mutex<Option<Waker>>) -> MutexGuard<'_, Option<Waker>> {
    slot.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A transport with [`Faults`] in front of it.
#[derive(Clone)]
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    faults: Faults,
}

impl std::fmt::Debug for FaultyTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTransport").field("faults", &self.faults).finish_non_exhaustive()
    }
}

impl FaultyTransport {
    /// The faults this transport obeys.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Transport for FaultyTransport {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let inner = self.inner.listen(port).await?;
            Ok(Box::new(FaultyListener { inner, faults: self.faults.clone() }) as Box<dyn Listener>)
        })
    }

    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
        Box::pin(async move {
            if self.faults.unreachable(addr) {
                // A black hole: nothing comes back before the timeout.
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout {
                    addr: SocketAddr::new(addr, port),
                    after: timeout,
                });
            }
            let stream = self.inner.dial(addr, port, timeout).await?;
            Ok(FaultyStream::boxed(stream, addr, self.faults.clone()))
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        self.inner.local_addrs()
    }
}

struct FaultyListener {
    inner: Box<dyn Listener>,
    faults: Faults,
}

impl Listener for FaultyListener {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            loop {
                let (stream, peer) = self.inner.accept().await?;
                if self.faults.unreachable(peer.ip()) {
                    // Dropped unanswered; the dialer sees its stream die.
                    drop(stream);
                    continue;
                }
                return Ok((FaultyStream::boxed(stream, peer.ip(), self.faults.clone()), peer));
            }
        })
    }

    fn local_port(&self) -> u16 {
        self.inner.local_port()
    }

    fn close(&self) {
        self.inner.close();
    }
}

struct FaultyStream {
    inner: BoxStream,
    peer: IpAddr,
    faults: Faults,
    /// Where a pending read leaves its waker so that blocking the peer
    /// wakes it.
    read_waker: Arc<Mutex<Option<Waker>>>,
    /// The delay of the write in progress, if it has not run out yet.
    delay: Option<Pin<Box<Sleep>>>,
    /// The write in progress has served its delay and passed the drop roll.
    cleared: bool,
    /// The peer was black-holed while this stream lived: it is silent
    /// forever.
    dead: bool,
}

impl FaultyStream {
    fn boxed(inner: BoxStream, peer: IpAddr, faults: Faults) -> BoxStream {
        let read_waker = Arc::new(Mutex::new(None));
        faults.park(&read_waker);
        Box::new(FaultyStream {
            inner,
            peer,
            faults,
            read_waker,
            delay: None,
            cleared: false,
            dead: false,
        })
    }

    /// Whether the stream has gone silent (checking the faults once more).
    fn silent(&mut self) -> bool {
        self.dead = self.dead || self.faults.black_holed(self.peer);
        self.dead
    }

    fn cut(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("fault injection: cut off from {}", self.peer),
        )
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.silent() {
            // Nothing will ever arrive; nothing will wake this read.
            return Poll::Pending;
        }
        if this.faults.blocked(this.peer) {
            return Poll::Ready(Err(this.cut()));
        }
        *lock_slot(&this.read_waker) = Some(cx.waker().clone());
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.silent() {
            // Into the void: accepted, never delivered.
            return Poll::Ready(Ok(buf.len()));
        }
        if this.faults.blocked(this.peer) {
            return Poll::Ready(Err(this.cut()));
        }
        if !this.cleared {
            if this.delay.is_none() {
                let (delay, dropped) = this.faults.roll_write();
                if dropped {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("fault injection: dropped a write to {}", this.peer),
                    )));
                }
                if !delay.is_zero() {
                    this.delay = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
            if let Some(sleep) = this.delay.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.delay = None;
            }
            this.cleared = true;
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if result.is_ready() {
            this.cleared = false;
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.silent() {
            return Poll::Ready(Ok(()));
        }
        if this.faults.blocked(this.peer) {
            return Poll::Ready(Err(this.cut()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::MemNetwork;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// Two nodes on a memory network, each behind its own faults.
    fn pair() -> (FaultyTransport, FaultyTransport) {
        let net = MemNetwork::new();
        let a = Faults::new(1).wrap(Arc::new(net.node(ip(1))));
        let b = Faults::new(2).wrap(Arc::new(net.node(ip(2))));
        (a, b)
    }

    async fn connect(a: &FaultyTransport, b: &FaultyTransport) -> (BoxStream, BoxStream) {
        let listener = b.listen(7000).await.unwrap();
        let dial = a.dial(ip(2), 7000, Duration::from_secs(1));
        let (dialed, accepted) = tokio::join!(dial, listener.accept());
        (dialed.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn without_faults_bytes_pass_unchanged() {
        let (a, b) = pair();
        let (mut x, mut y) = connect(&a, &b).await;
        x.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        y.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn blocking_a_peer_wakes_and_fails_a_pending_read() {
        let (a, b) = pair();
        let (mut x, _y) = connect(&a, &b).await;
        let read = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            x.read(&mut byte).await
        });
        tokio::task::yield_now().await;
        a.faults().block(ip(2));
        let err = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the parked read is woken")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_dial_hangs_until_its_timeout() {
        let (a, b) = pair();
        let _listener = b.listen(7000).await.unwrap();
        a.faults().block(ip(2));
        let started = tokio::time::Instant::now();
        let err = a.dial(ip(2), 7000, Duration::from_secs(3)).await.err().expect("dial fails");
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        a.faults().unblock(ip(2));
        assert!(a.dial(ip(2), 7000, Duration::from_secs(3)).await.is_ok());
    }

    #[tokio::test]
    async fn a_blocked_peer_is_not_accepted() {
        let (a, b) = pair();
        let listener = b.listen(7000).await.unwrap();
        b.faults().block(ip(1));
        let mut dialed = a.dial(ip(2), 7000, Duration::from_secs(1)).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(accepted.is_err(), "the connection from a blocked peer was accepted");
        // The dialer's stream is dead: its peer dropped it.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), dialed.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }

    #[tokio::test]
    async fn a_black_holed_peer_goes_silent_for_good_but_new_connections_work_after() {
        let (a, b) = pair();
        let (mut x, mut y) = connect(&a, &b).await;
        a.faults().black_hole(ip(2));
        x.write_all(b"lost").await.expect("writes vanish without an error");
        let mut byte = [0u8; 1];
        let nothing = tokio::time::timeout(Duration::from_millis(200), y.read(&mut byte)).await;
        assert!(nothing.is_err(), "a write into the black hole arrived: {nothing:?}");
        a.faults().clear_black_hole(ip(2));
        // The old stream stays silent, even after the peer writes to it.
        y.write_all(b"late").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(200), x.read(&mut byte)).await;
        assert!(silent.is_err(), "a dead stream came back: {silent:?}");
        // A new connection works.
        let (mut x2, mut y2) = connect(&a, &b).await;
        x2.write_all(b"new").await.unwrap();
        let mut got = [0u8; 3];
        y2.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"new");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_each_write() {
        let (a, b) = pair();
        let (mut x, mut y) = connect(&a, &b).await;
        a.faults().set_delay(Duration::from_millis(250));
        let started = tokio::time::Instant::now();
        x.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        y.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"late");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn the_drop_rate_resets_about_that_share_of_writes() {
        let faults = Faults::new(42);
        faults.set_drop_per_mille(300);
        let dropped = (0..10_000).filter(|_| faults.roll_write().1).count();
        assert!((2_700..3_300).contains(&dropped), "{dropped} of 10000 dropped at 30%");
        faults.set_drop_per_mille(5000);
        assert_eq!(faults.config().drop_per_mille, 1000, "capped");
        assert!((0..100).all(|_| faults.roll_write().1));
        faults.heal();
        assert!((0..100).all(|_| !faults.roll_write().1));
    }
}
