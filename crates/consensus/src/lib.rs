//! A replicated state machine for the nodes of a tailnet that carry an ACL
//! tag.
//!
//! Write a deterministic [`StateMachine`]; start a [`Consensus`] on each
//! tagged node with [`Consensus::start_on_tailnet`]; call
//! [`Consensus::execute`] on any node. The command goes to the leader, is
//! committed by a quorum, and is applied on every member in the same order,
//! exactly once, and the leader's answer comes back. To retry a command
//! whose outcome an error left unknown, [`Consensus::prepare`] it and call
//! [`Operation::execute`] again: it is never applied twice.
//! [`Consensus::read`] answers queries, linearizable or local.
//!
//! - **Bootstrap without split brain** (decision 0003): a fresh node probes
//!   every tagged peer; it joins a cluster one of them knows the leader of,
//!   and forms one only when it sees [`BootstrapOptions::expected_size`]
//!   tagged nodes, has the lowest stable id, and every tagged peer answered
//!   and promised to wait for it. A node with stored state resumes by
//!   itself; a follow-only node never forms a cluster.
//! - **Nodes that forget are new nodes**: a node's raft id comes from its
//!   stable id and an incarnation drawn whenever its state is empty, so a
//!   node that lost its state (memory storage: every restart) never votes
//!   with a log it no longer has; it joins again and the leader swaps it
//!   for its old incarnation in one change.
//! - **Membership follows tags**: a newly tagged node joins as a learner and
//!   becomes a voter once caught up; the leader removes a member whose tag
//!   is revoked or that leaves the tailnet, never one that is merely
//!   offline, and never if the remaining voters could not reach a quorum.
//! - **Every port is authorized** by the caller's real tailnet address: only
//!   tagged nodes reach the raft, command and monitor ports; raft
//!   connections must carry this cluster's id, and joins and removals are
//!   bound to the caller's own identity.
//! - **Observable**: [`Consensus::metrics`] and [`Consensus::watch`], and a
//!   monitor with `/status` (JSON), `/metrics` (Prometheus) and `/` (HTML).
//!   A node that hit a fatal error (its state machine panicked, its storage
//!   failed, raft's core died) says so on all three and stops serving:
//!   calls answer [`Error::Fatal`].
//!
//! - **Operable** (docs/operations.md): `/healthz` and `/readyz` for
//!   supervisors; counters and histograms in `/metrics`; an admin endpoint
//!   on 127.0.0.1 ([`Config::admin_port`], [`admin`]) for the `tsconsensus`
//!   tool: members, status, remove, transfer leadership
//!   ([`Consensus::transfer_leadership`]), snapshot, backup and restore.
//!
//! Commands and answers travel as JSON between nodes; the Go package's
//! dynamic shape is [`DynamicCommand`] / [`DynamicResult`]. No openraft or
//! hyper type appears in this API.
//!
//! # Features
//!
//! [`Consensus::start_on_tailnet`] and the tsnet transport come with the
//! `tailscale` feature (Go's tsnet built into the binary: Go and a C
//! compiler at build time). Without it the crate needs only Rust and runs
//! over any [`Transport`] with any [`Discovery`] ([`Consensus::start_with`]).
//!
// `start_on_tailnet` exists only with the feature: without it, the links
// to it lead to the paragraph above, so rustdoc works either way.
#![cfg_attr(
    feature = "tailscale",
    doc = "[`Consensus::start_on_tailnet`]: Consensus::start_on_tailnet"
)]
#![cfg_attr(not(feature = "tailscale"), doc = "[`Consensus::start_on_tailnet`]: #features")]

pub mod admin;
mod bootstrap;
mod campaign;
mod config;
mod core;
mod decide;
mod error;
mod health;
mod machine;
mod membership;
mod metrics;
#[cfg(test)]
mod model;
mod monitor;
mod node;
mod operation;
mod peers;
mod report;
mod transfer;
mod view;

pub use crate::config::{BootstrapOptions, Config, SessionLimits, StorageFaults, Timing};
pub use crate::error::{BoxError, Error};
pub use crate::machine::{DynamicCommand, DynamicResult, StateMachine};
pub use crate::node::{Consensus, Consistency, StopMode};
pub use crate::operation::Operation;
pub use crate::report::{Member, MemberRole, Metrics, Role};
/// Discovery sources ([`Consensus::start_with`] takes any): a static view
/// for tests and fixed clusters, and the tailnet's.
pub use ts_discovery as discovery;
pub use ts_discovery::{ClusterView, Discovery, StableNodeId, StaticDiscovery, TailnetNode};
/// The transports ([`Consensus::start_with`] takes any): in-memory and TCP
/// for tests and LANs, and the fault wrapper.
pub use ts_transport as transport;
#[cfg(feature = "tailscale")]
pub use ts_transport::tsnet::{NodeLogs, NodeOptions, TailnetAddrs, TsnetTransport};
pub use ts_transport::{MemNetwork, MemTransport, TcpTransport, Transport};
