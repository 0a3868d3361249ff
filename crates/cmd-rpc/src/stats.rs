//! What the command API counts, for the facade's `/metrics`: relaxed
//! atomics, nothing allocated per call.

use raft_core::Counter;

/// Counters of one node's command API.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Execute attempts this node forwarded to the leader (a command
    /// retried after a leader change counts once per attempt).
    pub forwarded: Counter,
    /// Batches of forwarded commands sent to the leader
    /// (`/v1/execute-batch`; a command with no other waiting goes alone).
    pub batches: Counter,
    /// Commands answered through those batches.
    pub batched: Counter,
    /// Batches the leader refused whole (an older version, a smaller size
    /// limit): their commands went alone.
    pub batches_refused: Counter,
    /// Forwarded commands taken back before they were written (their
    /// leader lost its leadership while they waited for a batch, their
    /// attempt's time ran out, or every dial to the leader failed or found
    /// no free request slot): not applied, routed again.
    pub not_sent: Counter,
    /// Commands of batches forwarded to this node that it started as the
    /// leader.
    pub batch_started: Counter,
    /// Commands of batches forwarded to this node that found no free slot
    /// within their budget (at most `4 × MAX_BATCH` run at once), answered
    /// `unavailable` without being started.
    pub batch_not_started: Counter,
}
