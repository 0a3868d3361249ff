//! The decisions of decision 0003 as pure functions: no IO, no clock, no
//! async, no tokio, hyper or openraft types. The shells around them
//! (`bootstrap.rs`, `membership.rs`) gather the inputs, call them, and carry
//! out the one thing they decide. Nodes are named by a generic `N` (stable
//! ids in the facade, small numbers in a model checker), clusters by `C`,
//! leaders by `L`.
//!
//! - [`bootstrap`]: what a fresh node does after probing the tagged peers
//!   (join, form, wait), and how a fresh node answers a probe (the
//!   promises).
//! - [`membership`]: the leader's one membership action per round.

pub(crate) mod bootstrap;
pub(crate) mod membership;
