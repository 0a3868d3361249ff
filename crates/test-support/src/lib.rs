//! What the workspace's tests share, so that each piece is written once:
//!
//! - [`eventually`] and its kin: wait for a condition with a deadline, never
//!   with a bare sleep, and fail naming what was awaited; [`never()`] for a
//!   window in which something must not happen;
//! - [`Rng`] and the seed helpers: seeded randomness whose seed is printed
//!   and can be replayed; `proptest_config` for the property tests;
//! - the fast timing profile of in-memory clusters ([`HEARTBEAT`],
//!   [`ELECTION`], and with features [`fast_raft`], [`fast_timing`],
//!   [`fast_config`]);
//! - [`stream`]: a stream that hands everything to the stream it wraps and
//!   tells a hook what crosses it ([`Hooked`]), and with the `transport`
//!   feature a transport whose streams carry such hooks;
//! - with the `facade` feature: a key-value store with versions and a
//!   digest for checking replicas ([`kv`]) and the chaos node's line
//!   interface over it ([`lines`]), a counter ([`Counter`]), a state
//!   machine that records what it applied ([`tally`]), HTTP to a node's
//!   local endpoints ([`http`]), and the one in-memory cluster of the
//!   facade ([`cluster`]);
//! - [`linearizability`]: a checker of key-value histories (Wing & Gong
//!   search with memoization, partitioned by key, unknown outcomes
//!   allowed); with the `facade` feature, [`workload`]: the seeded
//!   key-value clients both nemesis runs drive (in process and over
//!   processes) and the recorder of the history the checker reads;
//! - with the `raft-cluster` feature: raft-core's own cluster harness,
//!   below the facade ([`raft_cluster`]), for raft-core's tests and
//!   benchmark.
//!
//! A dev-dependency only (`publish = false`). The lower crates use it
//! without the `facade` feature, so that their tests do not depend on the
//! crates above them.

#[cfg(feature = "facade")]
pub mod cluster;
#[cfg(feature = "facade")]
mod counter;
#[cfg(feature = "facade")]
pub mod http;
#[cfg(feature = "facade")]
pub mod kv;
pub mod linearizability;
#[cfg(feature = "facade")]
pub mod lines;
#[cfg(feature = "raft-cluster")]
pub mod raft_cluster;
mod seeded;
pub mod stream;
#[cfg(feature = "facade")]
pub mod tally;
mod timing;
mod wait;
#[cfg(feature = "facade")]
pub mod workload;

#[cfg(feature = "facade")]
pub use crate::counter::Counter;
#[cfg(feature = "proptest")]
pub use crate::seeded::proptest_config;
pub use crate::seeded::{Rng, seed_from_env, seeds_from_env};
pub use crate::stream::{Hook, Hooked};
#[cfg(feature = "raft")]
pub use crate::timing::fast_raft;
pub use crate::timing::{ELECTION, HEARTBEAT};
#[cfg(feature = "facade")]
pub use crate::timing::{fast_config, fast_timing};
pub use crate::wait::{
    Condition, Happened, POLL, eventually, eventually_blocking, eventually_every, never, poll_until,
};
