//! Why a node stopped: the first fatal error it met, from whichever source.
//!
//! openraft reports a storage error (ours, or the state machine's) in its
//! metrics as `running_state = Err(..)`. It does not report a panic inside
//! its core task: the task dies, its metrics channel closes, and the last
//! metrics still say all is well. [`watch`] notices both, records the
//! reason here once, and stops the node's raft port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::Raft;
use tokio::sync::watch;

use crate::types::TypeConfig;

/// The node's fatal error, once it has one.
#[derive(Debug)]
pub(crate) struct Fatal {
    reason: watch::Sender<Option<String>>,
    /// Set when the node is being shut down on purpose: raft stopping then
    /// is not an error.
    stopping: AtomicBool,
}

impl Fatal {
    pub(crate) fn new() -> Arc<Fatal> {
        Arc::new(Fatal { reason: watch::channel(None).0, stopping: AtomicBool::new(false) })
    }

    /// Records `why`, unless a reason is already recorded. Returns whether
    /// it was recorded.
    pub(crate) fn record(&self, why: String) -> bool {
        self.reason.send_if_modified(|reason| {
            if reason.is_some() {
                return false;
            }
            tracing::error!(%why, "fatal: this node stops serving");
            *reason = Some(why);
            true
        })
    }

    /// The reason, if any.
    pub(crate) fn get(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Changes of the reason.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.reason.subscribe()
    }

    /// Marks a deliberate shutdown.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Follows `raft` until it stops. A fatal error in its metrics, or its core
/// ending while nobody asked it to, is recorded in `fatal`; returns whether
/// that happened (false on a deliberate shutdown).
///
/// It wakes on openraft's server metrics (role, vote, leader,
/// configuration), not on every change of the full metrics: openraft
/// records a fatal error only as its core ends, which closes both.
pub(crate) async fn watch(raft: Raft<TypeConfig>, fatal: Arc<Fatal>) -> bool {
    let (metrics, mut server) = (raft.metrics(), raft.server_metrics());
    let why = loop {
        server.borrow_and_update();
        match &metrics.borrow().running_state {
            Ok(()) => {}
            Err(openraft::error::Fatal::Stopped) => return false,
            Err(err) => break format!("raft stopped: {err}"),
        }
        if server.changed().await.is_err() {
            // The core recorded why it stopped, if it said, before it
            // ended and closed the channels.
            match &metrics.borrow().running_state {
                Ok(()) => {}
                Err(openraft::error::Fatal::Stopped) => return false,
                Err(err) => break format!("raft stopped: {err}"),
            }
            if fatal.is_stopping() {
                return false;
            }
            // The core task ended without saying why in its metrics: ask the
            // handle, which joins the task (a panic shows as "panicked").
            let why = match raft.with_raft_state(|_| ()).await {
                Err(err) => err.to_string(),
                Ok(()) => "no reason given".to_owned(),
            };
            break format!("raft core stopped unexpectedly: {why}");
        }
    };
    if fatal.is_stopping() {
        return false;
    }
    fatal.record(why);
    true
}
