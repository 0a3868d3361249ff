//! The consensus engine: openraft 0.9 wired to a `ts_transport::Transport`.
//!
//! - [`RaftNode`] runs one node: its raft port (only a peer whose hello
//!   names the node the caller's [`Identify`] hook says owns its address,
//!   served only while that node still owns it, and only connections of
//!   its own cluster),
//!   storage ([`Storage::Memory`] or [`Storage::Durable`]: identity, log,
//!   vote and committed index in redb, snapshots as atomically replaced
//!   files), and a proposal batcher that coalesces concurrent commands into
//!   one log entry, because openraft 0.9 performs one durable append at a
//!   time.
//! - Identity (decision 0003): a node's raft id is [`node_id`] of its
//!   stable id and an incarnation drawn whenever its storage is fresh, so a
//!   node that lost its state is a new node to the cluster; each cluster
//!   has a random [`ClusterId`] that every raft connection must carry.
//! - [`StateMachine`] is the user's deterministic state machine. The adapter
//!   around it keeps a session table so a command retried with the same
//!   `(ClientId, seq)` is applied once: sessions are registered through the
//!   log ([`RaftNode::register_session`]), and a session that expired, a
//!   client id never assigned or a sequence number reused for another
//!   command is answered, never applied. It stops the node on a panic in
//!   `apply` rather than let replicas diverge.
//! - The network frames RPCs as `[length][version][request id][bincode]`,
//!   refuses frames over a configured size before allocating them, keeps one
//!   connection per peer with several RPCs in flight, and backs off from
//!   unreachable peers.
//!
//! - Operators: [`RaftNode::backup`] takes a backup of the replicated state
//!   and [`backup::stage_restore`] stages one, which the node restores at
//!   its next start as a new one-node cluster ([`backup`]);
//!   [`RaftNode::hold_for_transfer`] and [`RaftNode::campaign`] are the
//!   pieces of a leadership transfer; [`RaftNode::stats`] counts batches,
//!   applies and snapshots ([`stats`]).
//!
//! openraft types stay inside this crate: errors, metrics and membership are
//! this crate's own types, so the layers above never see openraft. The
//! openraft-typed pieces this crate's own integration tests need (frames,
//! `TypeConfig`, the log store) are public only under the non-default
//! `testing` feature, in `testing`.

#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits require its StorageError (over 200 bytes) as their error type"
)]

pub mod backup;
mod codec;
mod error;
mod fatal;
mod identity;
mod network;
mod node;
mod sessions;
mod state_machine;
pub mod stats;
mod storage;
mod types;

pub use crate::backup::{Backup, BackupError, BackupInfo, StateDir};
pub use crate::codec::DecodeError;
pub use crate::error::{BoxError, Cause, MembershipError, ProposeError, ReadError, StartError};
pub use crate::network::{Identify, NetworkConfig};
pub use crate::node::{NodeMetrics, RaftConfig, RaftNode, Role, Storage};
pub use crate::sessions::SessionLimits;
pub use crate::state_machine::StateMachine;
pub use crate::stats::{Counter, Histogram, HistogramSnapshot, RaftStats};
pub use crate::storage::StorageFaults;
pub use crate::types::{
    Batch, BatchResponse, ClientId, ClusterId, NodeId, NodeInfo, Outcome, Proposal, command_hash,
    node_id,
};

/// openraft-typed internals, for this workspace's own tests only: raw
/// frames (to play a peer or a leader on the wire), the openraft type
/// configuration and the log store. Behind the non-default
/// `testing` feature, which only dev-dependencies enable, so that no
/// library built on this crate (the facade above all) can name openraft
/// through it. No stability promise.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::network::frame;
    pub use crate::storage::log::LogStore;
    pub use crate::types::TypeConfig;

    use crate::{RaftNode, StateMachine};

    /// Holds `node`'s cluster gate as an incoming raft request does, so
    /// that identity changes (which take it exclusively) wait until the
    /// guard is dropped.
    pub async fn enter_gate<S: StateMachine>(
        node: &RaftNode<S>,
    ) -> tokio::sync::OwnedRwLockReadGuard<()> {
        node.gate().enter().await
    }

    /// How many identity changes wait for `node`'s cluster gate now, each
    /// counted only once it is queued for the gate: changes seen counted
    /// one after the other get the gate in that order.
    pub fn gate_waiters<S: StateMachine>(node: &RaftNode<S>) -> usize {
        node.gate().waiting()
    }

    /// What a stopped node's state directory `dir` holds: the index the
    /// raft log is purged to, and the stored snapshot's last index.
    pub async fn stored_purge_and_snapshot(
        dir: &std::path::Path,
    ) -> Result<(Option<u64>, Option<u64>), String> {
        use openraft::storage::RaftLogStorage;
        let mut log = LogStore::durable(&dir.join("raft.redb")).map_err(|e| e.to_string())?;
        let purged = log.get_log_state().await.map_err(|e| e.to_string())?.last_purged_log_id;
        let snapshot = crate::storage::snapshot::SnapshotStore::dir(dir.join("snapshots"))
            .load()
            .map_err(|e| e.to_string())?;
        Ok((purged.map(|p| p.index), snapshot.and_then(|s| s.meta.last_log_id).map(|l| l.index)))
    }
}
