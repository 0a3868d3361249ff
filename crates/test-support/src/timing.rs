//! The fast timing profile of in-memory test clusters: fast enough for
//! tests, slow enough for a loaded 2-core machine. One profile for every
//! layer that has a timing type (raft-core's `RaftConfig`, the facade's
//! `Timing`).

use std::time::Duration;

/// The leader's heartbeat period.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// The election timeout range.
pub const ELECTION: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_millis(1000));

/// raft-core's configuration with the fast profile.
#[cfg(feature = "raft")]
pub fn fast_raft() -> raft_core::RaftConfig {
    raft_core::RaftConfig {
        heartbeat_interval: HEARTBEAT,
        election_timeout: ELECTION,
        install_snapshot_timeout: Duration::from_secs(5),
        propose_timeout: Duration::from_secs(5),
        ..raft_core::RaftConfig::default()
    }
}

/// The facade's timing with the fast profile.
#[cfg(feature = "facade")]
pub fn fast_timing() -> consensus::Timing {
    consensus::Timing {
        heartbeat: HEARTBEAT,
        election: ELECTION,
        reconcile_every: Duration::from_millis(200),
        start_timeout: Duration::from_secs(20),
        call_deadline: Duration::from_secs(10),
        max_staleness: Duration::from_secs(30),
    }
}

/// The facade's configuration for an in-memory cluster: [`fast_timing`],
/// no monitor.
#[cfg(feature = "facade")]
pub fn fast_config() -> consensus::Config {
    consensus::Config { monitor_port: None, timing: fast_timing(), ..consensus::Config::default() }
}
