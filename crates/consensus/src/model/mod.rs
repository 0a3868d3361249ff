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
//! - [`legacy::Legacy`] transcribes the code before decision 0003
//!   (`bootstrap.rs`, `membership.rs` and `join_here`), line by line; the
//!   checker finds both bugs of issue 12.
//! - [`as_written::AsWritten0003`] transcribes decision 0003 as first
//!   written (forming on probe answers alone); the checker finds two
//!   clusters with it (a promise released behind its holder's back).
//! - [`design::Design0003`] is decision 0003 with its confirm round as the
//!   code makes it: every decision that is a pure function of
//!   `crate::decide` is made by calling that function.
//!   [`design::EarlierReadiness`] is the same with the readiness rules the
//!   code had before (a starting node ready after any first round, or once
//!   every online peer answered); the checker finds a second cluster with
//!   each. [`design::ResumeOnHint`] has the resume rule the code had
//!   before docs/reliability.md finding 38. Such a variant implements [`design::Variant`], whose methods
//!   default to the code's rules, and overrides only what it changes.
//!
//! The properties, checked in every reachable state:
//!
//! - (a) `single cluster`: no two clusters (by formation) both commit
//!   entries.
//! - (b) `no lost commit`: a leader elected in a cluster has every entry
//!   that cluster committed; a commit never disagrees with an earlier one;
//!   no node's log loses a committed entry it had (except by a wipe).
//! - `one leader per term` (sanity), per cluster.
//! - `one formation per cluster id` (ghost): a cluster id is initialized
//!   once, by one raft id with one index-0 configuration
//!   (docs/reliability.md finding 38).
//!
//! # How `Design0003` calls the code
//!
//! Each [`protocol::Protocol`] method is a seam; `Design0003` fills it
//! with the real function, called the way the shell calls it:
//!
//! | [`protocol::Protocol`]  | the code                                                  |
//! |-------------------------|-----------------------------------------------------------|
//! | `wants_promise`         | `decide::bootstrap::wants_promises` (`bootstrap::run`)    |
//! | `decide`                | `decide::bootstrap::decide` (`bootstrap::round`)          |
//! | `answer_probe`          | `decide::bootstrap::answer` (`FacadePeers::probe`)        |
//! | `keep_promise`          | `decide::bootstrap::kept`                                 |
//! | `on_confirm`            | `decide::bootstrap::confirm` (`FacadePeers::confirm`)     |
//! | `unbind`                | `decide::bootstrap::unbind` (`give_up_binding`)           |
//! | `ready`                 | `decide::bootstrap::waiting_for` (`become_ready`)         |
//! | `plan`                  | `decide::membership::{to_probe, plan}` (`reconcile`)      |
//! | `on_join`               | transcribed: cmd-rpc `join_here`                          |
//! | `accepts_raft`          | transcribed: raft-core's raft hello (`gate.rs`)           |
//! | `incarnation_after_wipe`| transcribed: raft-core `identity.rs`                      |
//!
//! The model's small values are converted to the real inputs: a model
//! [`protocol::Node`] is its own name (nodes sort as stable ids do), a
//! [`protocol::RaftId`] is a leader hint naming its node whatever the
//! incarnation, a [`protocol::View`] gives the tagged peers and their
//! online flags (an offline peer or a missing answer is `Silent`), the
//! node's stored cluster id, former, forming flag and the confirmations
//! that reached it give its `Commitment`; the results are converted back
//! ([`protocol::Decision`], [`protocol::Confirm`], [`protocol::Change`]).
//! [`world`] owns what the shell does with a decision: storing a cluster
//! id (a durable binding), sending confirms, `initialize` with the
//! binders' raft ids.

mod as_written;
mod design;
mod explorer;
mod legacy;
mod protocol;
mod tests;
mod world;
