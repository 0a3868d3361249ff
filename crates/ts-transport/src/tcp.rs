//! Plain TCP on one local address: loopback clusters and LANs.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::close::CloseSignal;
use crate::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

/// A node reachable over plain TCP at one IP address.
///
/// Every node of a loopback cluster can have its own address in
/// `127.0.0.0/8`; dials are bound to the node's address so the listening side
/// sees the dialer's real address.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    ip: IpAddr,
}

impl TcpTransport {
    /// A node at `ip`, which must be an address of this host.
    pub fn new(ip: IpAddr) -> TcpTransport {
        TcpTransport { ip }
    }
}

impl Transport for TcpTransport {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let addr = SocketAddr::new(self.ip, port);
            let listener = TcpListener::bind(addr).await.map_err(|err| {
                if err.kind() == io::ErrorKind::AddrInUse {
                    TransportError::AddrInUse(port)
                } else {
                    TransportError::io(format!("listen on {addr}"), err)
                }
            })?;
            let local_port = listener
                .local_addr()
                .map_err(|err| TransportError::io("listener address", err))?
                .port();
            Ok(Box::new(TcpListenerHandle {
                listener: Mutex::new(Some(Arc::new(listener))),
                local_port,
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
            let socket = match self.ip {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|err| TransportError::io("create socket", err))?;
            socket
                .bind(SocketAddr::new(self.ip, 0))
                .map_err(|err| TransportError::io(format!("bind to {}", self.ip), err))?;
            let stream = match tokio::time::timeout(timeout, socket.connect(target)).await {
                Err(_) => return Err(TransportError::Timeout { addr: target, after: timeout }),
                Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(TransportError::Refused(target));
                }
                Ok(Err(err)) => {
                    return Err(TransportError::Unreachable {
                        addr: target,
                        reason: err.to_string(),
                    });
                }
                Ok(Ok(stream)) => stream,
            };
            stream.set_nodelay(true).map_err(|err| TransportError::io("set TCP_NODELAY", err))?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        vec![self.ip]
    }
}

struct TcpListenerHandle {
    /// Taken out by `close`, so the port is released once any accept in
    /// flight has returned.
    listener: Mutex<Option<Arc<TcpListener>>>,
    local_port: u16,
    closed: CloseSignal,
}

impl Listener for TcpListenerHandle {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            let listener = self
                .listener
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone()
                .ok_or(TransportError::Closed)?;
            loop {
                let accepted = tokio::select! {
                    _ = self.closed.closed() => return Err(TransportError::Closed),
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        // A peer that resets right after connecting can make
                        // this fail; the connection is unusable either way.
                        if stream.set_nodelay(true).is_err() {
                            continue;
                        }
                        return Ok((Box::new(stream) as BoxStream, PeerAddr::new(peer)));
                    }
                    // Errors about one connection (reset before accept, out
                    // of descriptors) must not end the accept loop of a
                    // server; back off briefly and try again.
                    Err(err) if is_per_connection_error(&err) => {
                        tracing::debug!(error = %err, "transient accept error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(err) => return Err(TransportError::io("accept", err)),
                }
            }
        })
    }

    fn local_port(&self) -> u16 {
        self.local_port
    }

    fn close(&self) {
        self.closed.close();
        self.listener.lock().unwrap_or_else(|poison| poison.into_inner()).take();
    }
}

fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
