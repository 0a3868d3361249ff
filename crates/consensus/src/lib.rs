//! The facade users depend on: start a replicated state machine on a tailnet
//! node, execute commands and read from any node, watch membership follow the
//! cluster tag, and observe the node through its monitor.
//!
//! Not yet filled: this crate is built by the consensus facade issue.
