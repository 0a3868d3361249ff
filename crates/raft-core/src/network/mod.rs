//! Raft RPCs over a `ts_transport::Transport`: framed, versioned, bounded.

pub(crate) mod client;
pub mod frame;
pub(crate) mod gate;
pub(crate) mod server;

use std::time::Duration;

pub use self::server::Authorize;

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
    /// Time a new connection has to say hello.
    pub handshake_timeout: Duration,
    /// First wait before dialing a peer again after a failure.
    pub min_backoff: Duration,
    /// Longest wait between dials to an unreachable peer.
    pub max_backoff: Duration,
    /// An incoming connection that carries no request for this long is
    /// closed (a dialer that vanished without a word never closes it).
    pub idle_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            cluster: "tsconsensus".to_owned(),
            max_frame: 16 << 20,
            handshake_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}
