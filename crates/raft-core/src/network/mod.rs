//! Raft RPCs over a `ts_transport::Transport`: framed, versioned, bounded.

pub(crate) mod client;
#[cfg_attr(
    not(feature = "testing"),
    allow(unreachable_pub, reason = "public only through `crate::testing`")
)]
pub mod frame;
pub(crate) mod gate;
pub(crate) mod server;

use std::time::Duration;

pub use self::server::Identify;

use crate::sessions::SessionLimits;

/// What this node says about itself in every hello it sends, and what it
/// holds the callers' hellos to.
#[derive(Clone, Debug)]
pub(crate) struct Local {
    /// This node's raft id.
    pub(crate) id: crate::NodeId,
    /// Its stable id.
    pub(crate) stable_id: String,
    /// Its incarnation (`id` is `node_id(stable_id, incarnation)`).
    pub(crate) incarnation: u64,
    /// The session limits its state machine applies entries with.
    pub(crate) sessions: SessionLimits,
}

/// When this node last heard from a leader: the last AppendEntries whose
/// vote it accepted (answered success or conflict, not "higher vote").
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl LeaderContact {
    pub(crate) fn heard(&self) {
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    pub(crate) fn last(&self) -> Option<tokio::time::Instant> {
        *self.at.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settings of the raft network.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The cluster's name; a node refuses connections that name another.
    /// (Each cluster also has a random id, decision 0003, which connections
    /// must match as well.)
    pub cluster: String,
    /// Largest frame accepted or sent. A larger announced length is refused
    /// before anything of that size is allocated.
    pub max_frame: usize,
    /// Largest snapshot accepted from a leader, in bytes. A snapshot is
    /// received into memory; a chunk that would reach past this (wherever
    /// its offset puts it) is refused before anything is written. Must
    /// exceed the largest snapshot the cluster makes.
    pub max_snapshot_bytes: u64,
    /// Time a new connection has to say hello.
    pub handshake_timeout: Duration,
    /// First wait before dialing a peer again after a failure.
    pub min_backoff: Duration,
    /// Longest wait between dials to an unreachable peer.
    pub max_backoff: Duration,
    /// An incoming connection that carries no request for this long is
    /// closed (a dialer that vanished without a word never closes it).
    pub idle_timeout: Duration,
    /// Time each of a peer's addresses has to accept a connection and
    /// answer its hello. Dials run in the background: a call waits for one
    /// only as long as its own timeout.
    pub connect_timeout: Duration,
    /// An outgoing connection that has been waiting this long for answers
    /// without receiving a byte (or whose writer has been stuck this long
    /// on a frame) is closed and dialed again: a peer that died behind a
    /// userspace network stack never resets it. Also the time an
    /// AppendEntries' answer may take once everything before it is sent.
    pub silence_timeout: Duration,
    /// The slowest link (bytes per second) an AppendEntries is given time
    /// for: one stays in flight for `silence_timeout` plus its bytes, and
    /// those queued ahead of it, at this rate. One not answered by then is
    /// given up, and later ones carry fewer entries.
    pub min_throughput: u64,
    /// Most incoming raft connections one peer address may hold (each peer
    /// keeps two, and may redial before this node notices the old ones
    /// died); a new one beyond it closes that peer's oldest.
    pub max_connections_per_peer: usize,
}

impl NetworkConfig {
    /// Time to allow an answer to a request with `bytes` to send first.
    pub(crate) fn transfer_time(&self, bytes: u64) -> Duration {
        let rate = self.min_throughput.max(1);
        self.silence_timeout + Duration::from_micros(bytes.saturating_mul(1_000_000) / rate)
    }
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            cluster: "tsconsensus".to_owned(),
            max_frame: 16 << 20,
            // As large as the largest backup a node restores.
            max_snapshot_bytes: 1 << 30,
            handshake_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(5),
            min_throughput: 256 << 10,
            max_connections_per_peer: 8,
        }
    }
}
