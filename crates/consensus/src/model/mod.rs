//! Model checking the protocol around openraft (issue 12).
//!
//! openraft runs Raft; this library decides around it who forms a cluster,
//! who joins, under which raft id, and which membership changes the leader
//! makes as tags change. Those decisions are checked here exhaustively, not
//! only by examples: [`world`] is a model of the world (an abstract Raft as
//! openraft 0.9 runs it, the tailnet, a lossy network, faults, clients),
//! [`explorer`] visits every state reachable within the bounds of a
//! [`world::Scenario`] and checks the properties in each, and a
//! [`protocol::Protocol`] makes the decisions:
//!
//! - [`legacy::Legacy`] transcribes today's `bootstrap.rs`, `membership.rs`
//!   and `join_here`, line by line; the checker finds both bugs of issue 12.
//! - [`design::Design0003`] transcribes decision 0003.
//!
//! The properties, checked in every reachable state:
//!
//! - (a) `single cluster`: no two clusters (by formation) both commit
//!   entries.
//! - (b) `no lost commit`: a leader elected in a cluster has every entry
//!   that cluster committed; a commit never disagrees with an earlier one;
//!   no node's log loses a committed entry it had (except by a wipe).
//! - `one leader per term` (sanity), per cluster.
//!
//! # Switching `Design0003` to the real `decide::` functions
//!
//! The trait methods are the seams; each maps to one pure function of
//! `crates/consensus/src/decide/` once it exists:
//!
//! | [`protocol::Protocol`]  | decision 0003 / `decide::`                         |
//! |-------------------------|----------------------------------------------------|
//! | `decide`                | `decide::bootstrap` (the fresh node's decision)    |
//! | `answer_probe`          | the granter: answer a probe, grant a promise       |
//! | `keep_promise`          | the granter: release a promise                     |
//! | `plan`                  | `decide::membership::plan`                         |
//! | `on_join`               | the leader's join checks (identity, cluster id)    |
//! | `accepts_raft`          | the raft hello's cluster-id check                  |
//! | `incarnation_after_wipe`| a new incarnation when storage is empty            |
//! | `initial_voters`        | the members passed to `initialize`                 |
//!
//! Each needs a conversion of the model's small values to the real inputs:
//! a model [`protocol::Node`] to a stable id whose string order is the
//! node's number (`"n0" < "n1"`), a [`protocol::RaftId`] to
//! `node_id(stable_id, incarnation)`, a [`protocol::View`] to the tagged
//! nodes with their online flags, [`protocol::Answer`] to the peer answers
//! (`Member{cluster, leader}` / `Fresh{promised_to}`; a `None` answer or
//! an offline peer is `Silent`), the leader's configuration, progress
//! (`matched`) and the live answers of [`protocol::Leader`] to the plan's
//! input, and the results back ([`protocol::Decision`],
//! [`protocol::Change`]). Nothing in [`world`] changes.

mod design;
mod explorer;
mod legacy;
mod protocol;
mod tests;
mod world;
