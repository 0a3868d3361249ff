//! The node-to-node command API: HTTP/1.1 (hyper) over transport streams to
//! execute commands, join the cluster and read linearizably from any node,
//! with forwarding to the leader, authorization by tailnet address and bounded
//! bodies.
//!
//! Not yet filled: this crate is built by the cmd-rpc issue.
