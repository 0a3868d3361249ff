//! What the command API counts, for the facade's `/metrics`: relaxed
//! atomics, nothing allocated per call.

use raft_core::Counter;

/// Counters of one node's command API.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Execute attempts this node forwarded to the leader (a command
    /// retried after a leader change counts once per attempt).
    pub forwarded: Counter,
}
