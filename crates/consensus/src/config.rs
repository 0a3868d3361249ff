//! How to run a node: ports, storage, timing, bootstrap.

use std::path::PathBuf;
use std::time::Duration;

pub use raft_core::{SessionLimits, StorageFaults};

/// Node settings. `Config::default()` uses the Go package's ports (raft
/// 6270, command 6271, monitor 8081) and memory-only state.
#[derive(Clone, Debug)]
pub struct Config {
    /// Port of the raft RPC server.
    pub raft_port: u16,
    /// Port of the command API.
    pub command_port: u16,
    /// Port of the monitor (tagged peers only); `None` disables it.
    pub monitor_port: Option<u16>,
    /// Also serve the monitor on `127.0.0.1:<port>` for operators on this
    /// host (0 picks a free port); `None` disables it.
    pub monitor_localhost_port: Option<u16>,
    /// Serve the operator's admin endpoint (the `tsconsensus` tool) on
    /// `127.0.0.1:<port>` (0 picks a free port); `None` disables it. It
    /// needs `state_dir`: its token is kept there (`admin.token`, readable
    /// by the owner only), and so is the port it listens on
    /// (`admin.port`).
    pub admin_port: Option<u16>,
    /// `/readyz` answers "not ready" while this node's applied index is
    /// more than this many entries behind the committed index it knows.
    pub ready_max_lag: u64,
    /// Where to keep the log and snapshots; `None` keeps them in memory
    /// (everything is lost when the process ends).
    pub state_dir: Option<PathBuf>,
    /// Command ports to try on peers when joining, besides this node's own
    /// and the default 6271 (for clusters whose nodes use other ports).
    pub seed_command_ports: Vec<u16>,
    /// Build a snapshot after this many new log entries (raft-core's
    /// `RaftConfig::snapshot_every`; 8192 by default). Small values make
    /// followers that fall behind catch up by snapshot (the chaos harness
    /// uses a few hundred).
    pub snapshot_every: u64,
    /// Timing of raft and of calls.
    pub timing: Timing,
    /// Bounds of the exactly-once session table. They decide which
    /// sessions exist, and so whether a retried command is answered or
    /// refused: every member of a cluster must use the same values (raft
    /// connections between members whose values differ are refused). The
    /// defaults keep sessions for a million log entries, at most 100 000 of
    /// them, answers up to 64 KiB, 64 MiB of answers in all. An answer
    /// kept must also be one a follower reads from the leader (4 MiB, 64
    /// bytes of it for the answer's envelope): a larger `max_answer_bytes`
    /// is refused at start ([`crate::Error::Invalid`], naming both).
    pub sessions: SessionLimits,
    /// **Tests and the chaos harness only.** Switchable faults in front of
    /// the raft log storage (failed fsyncs, refused or slow writes, a
    /// panicking write); keep a clone of the handle to switch them. A node
    /// whose write fails stops with a fatal error. `None` in production.
    pub storage_faults: Option<StorageFaults>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            raft_port: 6270,
            command_port: cmd_rpc::DEFAULT_PORT,
            monitor_port: Some(8081),
            monitor_localhost_port: None,
            admin_port: None,
            ready_max_lag: 1000,
            state_dir: None,
            seed_command_ports: Vec::new(),
            snapshot_every: raft_core::RaftConfig::default().snapshot_every,
            timing: Timing::default(),
            sessions: SessionLimits::default(),
            storage_faults: None,
        }
    }
}

/// Timing settings; the defaults fit a tailnet (docs/configuration.md).
#[derive(Clone, Debug)]
pub struct Timing {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election: (Duration, Duration),
    /// Default deadline of `execute` and `read`.
    pub call_deadline: Duration,
    /// How long `start` may take to join or form a cluster.
    pub start_timeout: Duration,
    /// How often the leader reconciles membership with the tagged nodes
    /// (it also does so on every discovery change).
    pub reconcile_every: Duration,
    /// The authorizer refuses peers once the tailnet view is this old.
    pub max_staleness: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(250),
            election: (Duration::from_millis(600), Duration::from_millis(900)),
            call_deadline: Duration::from_secs(30),
            start_timeout: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(2),
            max_staleness: Duration::from_secs(30),
        }
    }
}

/// How this node finds or forms its cluster.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    /// The ACL tag that makes a node a member, such as `tag:cluster`. This
    /// node must carry it.
    pub tag: String,
    /// Never form a cluster; only join an existing one.
    pub follow_only: bool,
    /// How many tagged nodes form the first cluster. With a fresh state,
    /// nodes wait until they see this many tagged nodes; then the one with
    /// the lowest stable id forms the cluster (once every tagged node has
    /// promised to wait for it) and the others join it. More than half of
    /// the tagged nodes guarantees exactly one cluster even while the
    /// nodes' views of the tailnet differ (docs/configuration.md). 1 lets a
    /// lone node start.
    pub expected_size: usize,
}

impl BootstrapOptions {
    /// Options for `tag`, expecting a cluster of one to start with.
    pub fn new(tag: impl Into<String>) -> BootstrapOptions {
        BootstrapOptions { tag: tag.into(), follow_only: false, expected_size: 1 }
    }
}
