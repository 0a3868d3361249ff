//! Serving a listener: one task accepts, one task per connection, and a
//! handle that stops it all.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::{BoxStream, Listener, PeerAddr, TransportError};

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
        let task = tokio::spawn(accept_loop(listener.clone(), what, serve));
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

async fn accept_loop<F, Fut>(listener: Arc<dyn Listener>, what: &'static str, serve: F)
where
    F: Fn(BoxStream, PeerAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(stream, peer));
                }
                Err(TransportError::Closed) => break,
                Err(err) => {
                    tracing::warn!(server = what, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
