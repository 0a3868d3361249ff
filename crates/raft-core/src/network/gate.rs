//! The cluster id a node answers raft connections for, and the lock that
//! keeps it from changing while a raft request is being handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::sync::{OwnedRwLockReadGuard, RwLock, RwLockWriteGuard};

use crate::types::ClusterId;

/// Holds this node's cluster id. Every incoming raft request is handled
/// under a read guard, and the id changes only under the write guard, so a
/// change of cluster (allowed only while the node has no raft state) never
/// races with a request of the old cluster.
#[derive(Debug)]
pub(crate) struct ClusterGate {
    lock: Arc<RwLock<()>>,
    id: Mutex<Option<ClusterId>>,
    /// Callers waiting in [`ClusterGate::exclusive`] (tests observe the
    /// order of identity changes with it).
    waiting: AtomicUsize,
}

/// One caller counted in [`ClusterGate::waiting`] until it has the lock or
/// is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ClusterGate {
    pub(crate) fn new(id: Option<ClusterId>) -> ClusterGate {
        ClusterGate {
            lock: Arc::new(RwLock::new(())),
            id: Mutex::new(id),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The cluster id now.
    pub(crate) fn get(&self) -> Option<ClusterId> {
        *self.id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Held while a raft request is handled.
    pub(crate) async fn enter(&self) -> OwnedRwLockReadGuard<()> {
        self.lock.clone().read_owned().await
    }

    /// Held while the id may change; waits for requests in progress.
    pub(crate) async fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        // The first poll either takes the lock or queues this caller in
        // the lock's (first come, first served) wait list; only then is
        // it counted, so a caller counted waiting is in the queue, and
        // callers counted one after the other get the lock in that order.
        // Unconstrained: a task out of its cooperative budget would be
        // answered "pending" without being queued.
        let mut write = std::pin::pin!(tokio::task::unconstrained(self.lock.write()));
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        if let Poll::Ready(held) = first {
            return held;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Waiting(&self.waiting);
        write.await
    }

    /// How many callers wait in [`ClusterGate::exclusive`] now, each
    /// counted once it is queued for the lock.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Sets the id; call with [`ClusterGate::exclusive`] held.
    pub(crate) fn set(&self, _held: &RwLockWriteGuard<'_, ()>, id: ClusterId) {
        *self.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// Clears the id (the node answers no raft request again); call with
    /// [`ClusterGate::exclusive`] held.
    pub(crate) fn clear(&self, _held: &RwLockWriteGuard<'_, ()>) {
        *self.id.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
