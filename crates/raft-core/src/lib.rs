//! The consensus engine: openraft 0.9 wired to a `ts_transport::Transport`
//! (framed RPCs with limits and timeouts), durable log, vote and snapshot
//! storage, and the adapter that turns a user's deterministic state machine
//! into openraft's, with exactly-once commands and proposal batching.
//!
//! Not yet filled: this crate is built by the raft-core issue.
