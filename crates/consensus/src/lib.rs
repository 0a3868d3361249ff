//! A replicated state machine for the nodes of a tailnet that carry an ACL
//! tag.
//!
//! Write a deterministic [`StateMachine`]; start a [`Consensus`] on each
//! tagged node with [`Consensus::start_on_tailnet`]; call
//! [`Consensus::execute`] on any node. The command goes to the leader, is
//! committed by a quorum, and is applied on every member in the same order,
//! exactly once, and the leader's answer comes back. [`Consensus::read`]
//! answers queries, linearizable or local.
//!
//! - **Bootstrap without split brain**: with fresh state, nodes wait until
//!   [`BootstrapOptions::expected_size`] tagged nodes are online; the one
//!   with the lowest id forms the cluster and the others join it. A node
//!   with stored state resumes by itself; a follow-only node never forms a
//!   cluster.
//! - **Membership follows tags**: a newly tagged node joins as a learner and
//!   becomes a voter once caught up; the leader removes a member whose tag
//!   is revoked or that leaves the tailnet, never one that is merely
//!   offline, and never if the remaining voters could not reach a quorum.
//! - **Every port is authorized** by the caller's real tailnet address: only
//!   tagged nodes reach the raft, command and monitor ports.
//! - **Observable**: [`Consensus::metrics`] and [`Consensus::watch`], and a
//!   monitor with `/status` (JSON), `/metrics` (Prometheus) and `/` (HTML).
//!
//! Commands and answers travel as JSON between nodes; the Go package's
//! dynamic shape is [`DynamicCommand`] / [`DynamicResult`]. No openraft or
//! hyper type appears in this API.

mod bootstrap;
mod config;
mod error;
mod machine;
mod membership;
#[cfg(test)]
mod model;
mod monitor;
mod node;

pub use crate::config::{BootstrapOptions, Config, Timing};
pub use crate::error::Error;
pub use crate::machine::{DynamicCommand, DynamicResult, StateMachine};
pub use crate::node::{Consensus, Consistency, Member, MemberRole, Metrics, Role, StopMode};
#[cfg(feature = "tailscale")]
pub use ts_transport::tsnet::{NodeLogs, NodeOptions, TailnetAddrs, TsnetTransport};
