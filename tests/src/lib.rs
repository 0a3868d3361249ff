//! Cross-crate test suites and the harness they share.
//!
//! - `tailnet` runs a real local tailnet (control, DERP and STUN on
//!   127.0.0.1, in a separate Go process) and brings up tsnet nodes on it.
//! - [`conformance`] is the one suite every `ts_transport::Transport` must
//!   pass, run over the in-memory, TCP and tsnet transports alike.
//! - `nodes` runs `chaos-node` processes (this crate's `src/bin/chaos-node.rs`:
//!   a key-value state machine, `test_support::kv`, behind switchable
//!   faults) on a local
//!   tailnet, and watches that no two clusters lead at once.
//! - `chaos` is the multi-process nemesis run behind `cargo xtask chaos`:
//!   `chaos-node` processes on a local tailnet, faults, a recorded history
//!   and the checks after every run (its workload and history checker
//!   are test-support's, shared with the in-process nemesis).
//! - `headscale` is the suite behind `cargo xtask headscale`: `kv`
//!   example processes against headscale, a real, independent control
//!   server, on 127.0.0.1.
//! - `rawnet` is the raw transport measurement (throughput, echo round
//!   trips) that the `transport` and `cluster` benchmarks share.
//!
//! The suites themselves live in `tests/tests/` (`scenarios.rs` runs fixed
//! fault sequences against `chaos-node` processes).
//!
//! Everything that needs Go (tsnet, the local tailnet program) or Chromium
//! is behind the `tailnet` feature, so a plain `cargo test` with only Rust
//! installed runs the in-memory and TCP suites; `cargo xtask ci` runs all.

#[cfg(feature = "tailnet")]
pub mod chaos;
pub mod conformance;
#[cfg(feature = "tailnet")]
pub mod headscale;
#[cfg(feature = "tailnet")]
pub mod nodes;
#[cfg(feature = "tailnet")]
pub mod rawnet;
#[cfg(feature = "tailnet")]
pub mod tailnet;
