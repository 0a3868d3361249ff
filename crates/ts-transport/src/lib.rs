//! Byte streams between the nodes of a cluster, and whom each stream is with.
//!
//! Everything above this crate talks to other nodes through one object-safe
//! trait, [`Transport`]: listen on a port and accept streams, each paired with
//! the [`PeerAddr`] it really came from, or dial a peer with a timeout. The
//! peer address is what authorization is decided on, so every implementation
//! obtains it together with the stream, never by a later lookup.
//!
//! Three implementations:
//!
//! - [`MemTransport`]: in-process nodes on a shared [`MemNetwork`] with fault
//!   controls (partitions, refused and black-holed connections, added delay),
//!   for deterministic tests of the layers above.
//! - [`TcpTransport`]: plain TCP on one local address, for loopback clusters
//!   and LANs.
//! - `TsnetTransport` (cargo feature `tailscale`): a Tailscale node run by
//!   Go's `tsnet`, compiled into this crate as a C archive with an API shaped
//!   like libtailscale's `tailscale.h`. This is the only place in the
//!   workspace that knows Tailscale exists.
//!
//! [`Faults`] wraps any of them with switchable faults (peers cut off,
//! delays, dropped writes), for chaos tests of real processes.
//!
//! Streams are tokio [`AsyncRead`] +
//! [`AsyncWrite`]; shutting down the write half sends
//! end-of-stream to the peer while the read half stays open.

mod close;
mod error;
mod fault;
mod mem;
mod server;
mod tcp;
#[cfg(feature = "tailscale")]
pub mod tsnet;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::error::TransportError;
pub use crate::fault::{FaultConfig, Faults, FaultyTransport};
pub use crate::mem::{MemNetwork, MemTransport};
pub use crate::server::{Admission, Server};
pub use crate::tcp::TcpTransport;

/// A boxed future, as returned by the object-safe traits of this crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream to one peer.
///
/// Implemented for every `AsyncRead + AsyncWrite` type that can move between
/// tasks; transports hand streams out boxed as [`BoxStream`].
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A stream as handed out by a [`Transport`].
pub type BoxStream = Box<dyn AsyncStream>;

/// The address a stream really comes from, as seen by the transport that
/// accepted it.
///
/// For the tailnet transport this is the peer's tailnet address, delivered by
/// the node together with the connection itself; it is safe to authorize on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(SocketAddr);

impl PeerAddr {
    /// Wraps a socket address observed by a transport.
    pub fn new(addr: SocketAddr) -> PeerAddr {
        PeerAddr(addr)
    }

    /// The peer's IP address.
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }

    /// The peer's source port.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The peer's full socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A node's way of reaching other nodes.
///
/// Object safe: the layers above hold it as `Arc<dyn Transport>`.
pub trait Transport: Send + Sync + 'static {
    /// Starts listening on `port` of every address of this node.
    ///
    /// Port 0 picks a free port; [`Listener::local_port`] tells which.
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>>;

    /// Opens a stream to `addr:port`, giving up after `timeout`.
    ///
    /// A dial that times out or is dropped leaves nothing running behind it
    /// beyond what the timeout itself bounds.
    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>>;

    /// The addresses other nodes reach this node at.
    fn local_addrs(&self) -> Vec<IpAddr>;
}

/// A listening port.
///
/// Dropping the listener closes it, as does [`Listener::close`].
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next connection and the address it came from.
    ///
    /// Once the listener or its node is closed this returns
    /// [`TransportError::Closed`], and keeps returning it.
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>>;

    /// The port this listener is bound to.
    fn local_port(&self) -> u16;

    /// Stops listening. A pending or later [`Listener::accept`] returns
    /// [`TransportError::Closed`]. Closing twice is harmless.
    fn close(&self);
}
