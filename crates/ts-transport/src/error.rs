//! The error type shared by every transport.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The dial did not complete within its timeout.
    #[error("dial {addr} timed out after {after:?}")]
    Timeout {
        /// Where the dial went.
        addr: SocketAddr,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The peer answered that nothing listens on that port.
    #[error("connection to {0} refused")]
    Refused(SocketAddr),
    /// The peer could not be reached at all.
    #[error("{addr} unreachable: {reason}")]
    Unreachable {
        /// Where the dial went.
        addr: SocketAddr,
        /// What the transport reported.
        reason: String,
    },
    /// Something already listens on that port of this node.
    #[error("port {0} is already in use")]
    AddrInUse(u16),
    /// The listener or the node is closed.
    #[error("closed")]
    Closed,
    /// The operation needs a node that is up and running.
    #[error("node is not running: {0}")]
    NotRunning(String),
    /// The Tailscale node reported an error.
    #[error("tailscale: {0}")]
    Tailscale(String),
    /// An operating-system error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> TransportError {
        TransportError::Io { context: context.into(), source }
    }
}
