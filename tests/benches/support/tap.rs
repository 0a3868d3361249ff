//! A transport wrapper that counts and timestamps what crosses it, for the
//! "where the time goes" profile: how many raft frames and HTTP writes one
//! command costs, and when each happens relative to the command.
//!
//! Raft connections carry frames `[length: u32 BE][rest]`, so the bytes
//! written are parsed to count frames exactly; other connections (the
//! command port's HTTP) are counted in writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_support::Hook;
use test_support::stream::HookedTransport;
use ts_transport::Transport;

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

impl Tap {
    /// `inner`, as node `node`, with every stream it dials or accepts
    /// reporting to this tap.
    pub(crate) fn wrap(
        self: &Arc<Tap>,
        inner: Arc<dyn Transport>,
        node: usize,
    ) -> Arc<dyn Transport> {
        let hook = {
            let tap = self.clone();
            move |peer: IpAddr, port: u16| TapHook {
                node,
                port,
                peer,
                raft: port == tap.raft_port,
                tap: tap.clone(),
                sent: FrameCounter::default(),
                received: FrameCounter::default(),
            }
        };
        Arc::new(HookedTransport::new(inner).dialed(hook.clone()).accepted(hook))
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

/// What one stream reports to its [`Tap`].
struct TapHook {
    node: usize,
    /// The service port (raft or command) the stream belongs to.
    port: u16,
    peer: IpAddr,
    tap: Arc<Tap>,
    raft: bool,
    sent: FrameCounter,
    received: FrameCounter,
}

impl Hook for TapHook {
    fn after_read(&mut self, bytes: &[u8]) {
        let frames = if self.raft { self.received.feed(bytes) } else { 0 };
        self.tap.note(self.node, self.port, self.peer, Dir::Recv, bytes.len(), frames);
    }

    fn after_write(&mut self, bytes: &[u8]) {
        let frames = if self.raft { self.sent.feed(bytes) } else { 0 };
        self.tap.note(self.node, self.port, self.peer, Dir::Send, bytes.len(), frames);
    }
}
