//! Serving a listener: one task accepts, one task per connection, and a
//! handle that stops it all. Connections can be admitted by the peer's
//! address before anything is read, and bounded per peer.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::{BoxStream, Listener, PeerAddr, TransportError};

/// Who may connect to a [`Server`], and how many connections each may hold.
#[derive(Clone)]
pub struct Admission {
    /// Whether a peer may connect at all. A refused peer's connection is
    /// closed at accept, before anything of it is read (and before any
    /// buffers are spent on it).
    pub allow: Arc<dyn Fn(PeerAddr) -> bool + Send + Sync>,
    /// Most connections one peer address may hold at once. A new one
    /// beyond it closes that peer's oldest: a peer that replaced a
    /// connection it thought dead is served on the new one, and no peer
    /// holds more than this many.
    pub max_per_peer: usize,
}

impl Admission {
    /// Every peer, without a bound (tests, loopback-only servers).
    pub fn everyone() -> Admission {
        Admission { allow: Arc::new(|_| true), max_per_peer: usize::MAX }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_per_peer", &self.max_per_peer)
            .finish_non_exhaustive()
    }
}

/// How long [`Server::shutdown`] waits for connections to wind down before
/// aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections on a listener and serves each on its own task.
///
/// Closing the listener (or [`Server::shutdown`]) ends the accept loop,
/// which then stops every connection task and waits for them. Dropping the
/// handle closes the listener and aborts everything.
pub struct Server {
    listener: Arc<dyn Listener>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("port", &self.listener.local_port()).finish()
    }
}

impl Server {
    /// Serves `listener`: `serve` runs once per accepted connection, with
    /// the peer's real address. `what` names the server in logs.
    pub fn start<F, Fut>(listener: Arc<dyn Listener>, what: &'static str, serve: F) -> Server
    where
        F: Fn(BoxStream, PeerAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Server::start_admitting(listener, what, Admission::everyone(), serve)
    }

    /// [`Server::start`], serving only the connections `admission` lets in.
    pub fn start_admitting<F, Fut>(
        listener: Arc<dyn Listener>,
        what: &'static str,
        admission: Admission,
        serve: F,
    ) -> Server
    where
        F: Fn(BoxStream, PeerAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(accept_loop(listener.clone(), what, admission, serve));
        Server { listener, task }
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.listener.local_port()
    }

    /// Stops accepting, ends every connection and waits for that.
    pub async fn shutdown(mut self) {
        self.listener.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.listener.close();
        self.task.abort();
    }
}

async fn accept_loop<F, Fut>(
    listener: Arc<dyn Listener>,
    what: &'static str,
    admission: Admission,
    serve: F,
) where
    F: Fn(BoxStream, PeerAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut held = Held::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !(admission.allow)(peer) {
                        tracing::debug!(server = what, %peer, "closed a connection from an unauthorized address");
                        drop(stream);
                        continue;
                    }
                    if let Some(oldest) = held.make_room(peer.ip(), admission.max_per_peer) {
                        tracing::info!(
                            server = what,
                            %peer,
                            max = admission.max_per_peer,
                            "peer holds too many connections; closing its oldest"
                        );
                        oldest.abort();
                    }
                    let handle = connections.spawn(serve(stream, peer));
                    held.add(peer.ip(), handle);
                }
                Err(TransportError::Closed) => break,
                Err(err) => {
                    tracing::warn!(server = what, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(done) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => err.id(),
                };
                held.remove(id);
            }
        }
    }
    connections.shutdown().await;
}

/// The connections each peer holds, oldest first.
#[derive(Default)]
struct Held {
    by_peer: HashMap<IpAddr, VecDeque<AbortHandle>>,
    peer_of: HashMap<tokio::task::Id, IpAddr>,
}

impl Held {
    /// The connection to close so that `peer` holds fewer than `max`.
    fn make_room(&mut self, peer: IpAddr, max: usize) -> Option<AbortHandle> {
        let list = self.by_peer.get_mut(&peer)?;
        if list.len() < max.max(1) {
            return None;
        }
        let oldest = list.pop_front()?;
        self.peer_of.remove(&oldest.id());
        Some(oldest)
    }

    fn add(&mut self, peer: IpAddr, handle: AbortHandle) {
        self.peer_of.insert(handle.id(), peer);
        self.by_peer.entry(peer).or_default().push_back(handle);
    }

    fn remove(&mut self, id: tokio::task::Id) {
        let Some(peer) = self.peer_of.remove(&id) else { return };
        if let Some(list) = self.by_peer.get_mut(&peer) {
            list.retain(|h| h.id() != id);
            if list.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}
