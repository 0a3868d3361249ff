//! How far the raft log may be purged: no further than the last log id of
//! the snapshot that is durably stored.
//!
//! openraft 0.9.25 purges a follower's log up to an incoming snapshot as soon
//! as it queues the snapshot's install, without waiting for the install
//! (`PurgeLog` has no condition). A crash, a failed save or a refused
//! restore before the snapshot reaches the disk would then leave the old
//! snapshot and a log purged past it, from which the node cannot start. The
//! snapshot store advances this floor after each durable save, and the log
//! store never physically purges past it (see `LogStore::purging_behind`).

use std::sync::Arc;

use openraft::LogId;
use tokio::sync::watch;

use crate::types::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    /// The durably stored snapshot's last log id (`None`: no snapshot, or
    /// none known yet).
    durable: Option<LogId<NodeId>>,
    /// Why no later snapshot will be saved: the state machine stopped.
    failed: Option<String>,
}

/// The durably stored snapshot's last log id, shared between the snapshot
/// store (which sets it) and the log store (which purges behind it).
/// Cloning shares it.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFloor {
    state: Arc<watch::Sender<State>>,
}

impl Default for SnapshotFloor {
    fn default() -> Self {
        SnapshotFloor { state: Arc::new(watch::Sender::new(State::default())) }
    }
}

impl SnapshotFloor {
    /// The durably stored snapshot's last log id.
    pub(crate) fn durable(&self) -> Option<LogId<NodeId>> {
        self.state.borrow().durable
    }

    /// Records that the stored snapshot (durable on disk, or the memory
    /// store's) covers up to `log_id`.
    pub(crate) fn set(&self, log_id: Option<LogId<NodeId>>) {
        self.state.send_if_modified(|state| {
            let changed = state.durable != log_id;
            state.durable = log_id;
            changed
        });
    }

    /// Records that no later snapshot will be saved, waking every waiter.
    pub(crate) fn fail(&self, why: &str) {
        self.state.send_if_modified(|state| {
            let first = state.failed.is_none();
            state.failed.get_or_insert_with(|| why.to_owned());
            first
        });
    }

    /// Waits until the stored snapshot covers `log_id`. Fails, saying why,
    /// if the state machine stops first.
    pub(crate) async fn covers(&self, log_id: LogId<NodeId>) -> Result<(), String> {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let state = rx
            .wait_for(|state| reaches(state.durable, log_id) || state.failed.is_some())
            .await
            .map_err(|e| e.to_string())?;
        if reaches(state.durable, log_id) {
            return Ok(());
        }
        Err(state.failed.clone().unwrap_or_default())
    }
}

/// Whether a snapshot up to `durable` covers `log_id`.
///
/// This compares indices, while the log store keeps the purge it was asked
/// for as the `LogId` maximum (term first). The two orders agree because
/// both ids are committed: a snapshot covers only applied (so committed)
/// entries, and openraft purges only behind a snapshot or behind what is
/// applied. On one committed log, a higher index never has a lower term,
/// so `a.index >= b.index` holds exactly when `a >= b`.
pub(crate) fn reaches(durable: Option<LogId<NodeId>>, log_id: LogId<NodeId>) -> bool {
    durable.is_some_and(|durable| {
        // Same index on the committed log: the same entry, the same term.
        debug_assert!(
            durable.index != log_id.index || durable.leader_id == log_id.leader_id,
            "two committed log ids at index {} differ: {durable} and {log_id}",
            log_id.index
        );
        durable.index >= log_id.index
    })
}
