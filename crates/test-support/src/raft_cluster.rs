//! raft-core's own cluster harness, below the facade: `RaftNode`s on a
//! `MemNetwork` (or TCP loopback) with a recording state machine, fast
//! timings, and condition waits with deadlines. For raft-core's tests and
//! its `propose` benchmark; it needs raft-core's `testing` feature (raw
//! frames, to play a peer on the wire).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::eventually;
use raft_core::testing::frame::Message;
use raft_core::{
    ClientId, ClusterId, Identify, NodeId, NodeInfo, Outcome, ProposeError, RaftConfig, RaftNode,
    Role, StateMachine, Storage, StorageFaults,
};
use ts_transport::{MemNetwork, TcpTransport, Transport};

/// Records every applied command in order; `apply` answers with the count.
/// A command starting with `b"panic"` panics, to test containment; the
/// command [`GATED`] waits for [`open_gate`] before it is applied; what
/// `restore` does is set by [`set_restore`].
#[derive(Default)]
pub struct Recorder {
    /// Every command applied, in order.
    pub applied: Vec<Vec<u8>>,
}

/// A command whose apply waits until [`open_gate`] is called (for at most
/// [`WAIT`]): it keeps its batch in flight, committed but not applied, for
/// as long as a test needs. One gate for the whole test binary; only one
/// test of a binary may use it.
pub const GATED: &[u8] = b"gated";

static GATE: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// Lets every [`GATED`] command waiting, and every later one, be applied.
pub fn open_gate() {
    *GATE.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    GATE.1.notify_all();
}

/// What the recorder's `restore` does (one setting per test binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreMode {
    /// Restores (the default).
    Restore,
    /// Waits (for at most [`WAIT`]) until the mode changes: a snapshot
    /// install held half way. A restore still stalled at the deadline
    /// refuses.
    Stall,
    /// Refuses, as a state machine that cannot read the snapshot.
    Refuse,
}

static RESTORE: (std::sync::Mutex<RestoreMode>, std::sync::Condvar) =
    (std::sync::Mutex::new(RestoreMode::Restore), std::sync::Condvar::new());
static RESTORES_STALLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets what every later (and every stalled) restore does.
pub fn set_restore(mode: RestoreMode) {
    *RESTORE.0.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    RESTORE.1.notify_all();
}

/// How many restores have stalled so far.
pub fn restores_stalled() -> usize {
    RESTORES_STALLED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Applies the [`RestoreMode`]: `Err` if this restore is refused.
fn restore_mode() -> io::Result<()> {
    let mut mode = RESTORE.0.lock().unwrap_or_else(|p| p.into_inner());
    if *mode == RestoreMode::Stall {
        RESTORES_STALLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        mode = RESTORE
            .1
            .wait_timeout_while(mode, WAIT, |m| *m == RestoreMode::Stall)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    match *mode {
        RestoreMode::Restore => Ok(()),
        RestoreMode::Stall | RestoreMode::Refuse => {
            Err(io::Error::other("restore refused by the test"))
        }
    }
}

fn wait_for_gate() {
    let open = GATE.0.lock().unwrap_or_else(|p| p.into_inner());
    let _ = GATE.1.wait_timeout_while(open, WAIT, |open| !*open);
}

impl StateMachine for Recorder {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        assert!(!command.starts_with(b"panic"), "asked to panic by the test");
        if command == GATED {
            wait_for_gate();
        }
        self.applied.push(command.to_vec());
        (self.applied.len() as u64).to_le_bytes().to_vec()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        (self.applied.len() as u64).to_le_bytes().to_vec()
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&(self.applied.len() as u64).to_le_bytes())?;
        for command in &self.applied {
            out.write_all(&(command.len() as u32).to_le_bytes())?;
            out.write_all(command)?;
        }
        Ok(())
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        restore_mode()?;
        let mut n = [0u8; 8];
        input.read_exact(&mut n)?;
        self.applied.clear();
        for _ in 0..u64::from_le_bytes(n) {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            let mut command = vec![0u8; u32::from_le_bytes(len) as usize];
            input.read_exact(&mut command)?;
            self.applied.push(command);
        }
        Ok(())
    }
}

/// Timings fast enough for tests, slow enough for a loaded 2-core machine.
pub fn fast_config() -> RaftConfig {
    crate::fast_raft()
}

/// The raft port of every in-memory node (the command port is the next).
pub const RAFT_PORT: u16 = 7000;
/// Bound on waits for cluster conditions (elections, catch-up).
pub const WAIT: Duration = Duration::from_secs(20);

/// Node `i`'s IPv4 address in memory: `10.0.0.<i + 1>`.
pub fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

/// Node `i`'s IPv6 address in memory: `fd7a:115c:a1e0::<i + 1>`.
pub fn ip6(i: usize) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, i as u16 + 1))
}

/// Node `i` at `addr`: stable id `node-<i>`, [`RAFT_PORT`].
pub fn node_info(i: usize, addr: IpAddr) -> NodeInfo {
    NodeInfo {
        stable_id: format!("node-{i}"),
        addrs: vec![addr],
        raft_port: RAFT_PORT,
        command_port: RAFT_PORT + 1,
    }
}

/// The stable id the harness gives the node at `ip`: `node-<i>` for the
/// addresses [`ip`], [`ip6`] and TCP's `127.0.0.<i+1>` give node `i`.
pub fn owner(ip: IpAddr) -> String {
    let last = match ip.to_canonical() {
        IpAddr::V4(v4) => usize::from(v4.octets()[3]),
        IpAddr::V6(v6) => usize::from(v6.segments()[7]),
    };
    format!("node-{}", last.saturating_sub(1))
}

/// Every address may use the raft port, as the node [`owner`] names.
pub fn allow_all() -> Identify {
    Arc::new(|peer| Some(owner(peer.ip())))
}

/// A valid hello from incarnation 1 of the node at `ip(from)` to `to`, in
/// cluster `cluster_id` under the default cluster name and session limits.
pub fn hello_from(from: usize, to: NodeId, cluster_id: ClusterId) -> Message {
    Message::hello(
        &fast_config().network.cluster,
        cluster_id,
        &owner(ip(from)),
        1,
        to,
        fast_config().sessions,
    )
}

/// Starts node `i` on its own (memory storage, a `Recorder`), outside any
/// `Cluster`: for tests that wire transports and authorization by hand.
pub async fn start_alone(
    i: usize,
    transport: Arc<dyn ts_transport::Transport>,
    authorize: Identify,
    config: RaftConfig,
) -> RaftNode<Recorder> {
    RaftNode::start(
        node_info(i, ip(i)),
        transport,
        Storage::Memory,
        Recorder::default(),
        authorize,
        config,
    )
    .await
    .expect("node starts")
}

/// How the nodes of a test cluster reach each other.
#[derive(Clone)]
pub enum Net {
    /// In memory, node i at [`ip`].
    Mem(MemNetwork),
    /// In memory, every node with only an IPv6 address.
    Mem6(MemNetwork),
    /// Loopback TCP, node i at 127.0.0.(i+1), raft port base + i.
    Tcp(u16),
}

/// Forms a cluster of `nodes` (the first draws a new cluster id and
/// initializes it, the others are told that id so they answer its leader).
pub async fn form(nodes: &[&RaftNode<Recorder>]) {
    let members: BTreeMap<NodeId, NodeInfo> =
        nodes.iter().map(|n| (n.id(), n.info().clone())).collect();
    let cluster_id = nodes[0].form().await.expect("form");
    for node in &nodes[1..] {
        node.set_cluster_id(cluster_id).await.expect("set cluster id");
    }
    assert!(nodes[0].initialize_in(cluster_id, members).await.expect("initialize"));
}

/// Nodes of one test cluster, each with its storage (memory, or durable in
/// a temporary directory) and optionally storage faults.
pub struct Cluster {
    /// How the nodes reach each other.
    pub net: Net,
    /// The nodes; `None` while stopped.
    pub nodes: Vec<Option<RaftNode<Recorder>>>,
    /// Each node's raft id (a restart from memory storage changes it).
    pub ids: Vec<NodeId>,
    /// Each node's state directory (durable clusters).
    pub dirs: Vec<Option<PathBuf>>,
    /// Every node's configuration.
    pub config: RaftConfig,
    /// Each node's storage faults, when the cluster was made with them.
    pub faults: Option<Vec<StorageFaults>>,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// `n` nodes, not yet initialized.
    pub async fn new(n: usize, net: Net, durable: bool, config: RaftConfig) -> Cluster {
        Cluster::build(n, net, durable, config, false).await
    }

    /// `n` nodes, not yet initialized, each with its storage behind
    /// switchable faults (`cluster.faults`).
    pub async fn with_faults(n: usize, net: Net, durable: bool, config: RaftConfig) -> Cluster {
        Cluster::build(n, net, durable, config, true).await
    }

    async fn build(n: usize, net: Net, durable: bool, config: RaftConfig, faulty: bool) -> Cluster {
        let temp = durable.then(|| tempfile::tempdir().expect("temp dir"));
        let dirs =
            (0..n).map(|i| temp.as_ref().map(|t| t.path().join(format!("node-{i}")))).collect();
        let faults = faulty.then(|| (0..n).map(|_| StorageFaults::new()).collect());
        let mut cluster =
            Cluster { net, nodes: Vec::new(), ids: Vec::new(), dirs, config, faults, _temp: temp };
        for i in 0..n {
            let node = cluster.start_node(i).await;
            cluster.ids.push(node.id());
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// Node `i` as its peers know it.
    pub fn info(&self, i: usize) -> NodeInfo {
        match &self.net {
            Net::Mem(_) => node_info(i, ip(i)),
            Net::Mem6(_) => node_info(i, ip6(i)),
            Net::Tcp(base) => NodeInfo {
                stable_id: format!("node-{i}"),
                addrs: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1))],
                raft_port: base + i as u16,
                command_port: 0,
            },
        }
    }

    fn transport(&self, i: usize) -> Arc<dyn Transport> {
        match &self.net {
            Net::Mem(net) => Arc::new(net.node(ip(i))),
            Net::Mem6(net) => Arc::new(net.node(ip6(i))),
            Net::Tcp(_) => Arc::new(TcpTransport::new(self.info(i).addrs[0])),
        }
    }

    /// Starts (or restarts) node `i` on its storage.
    pub async fn start_node(&self, i: usize) -> RaftNode<Recorder> {
        let mut storage = match &self.dirs[i] {
            Some(dir) => Storage::Durable(dir.clone()),
            None => Storage::Memory,
        };
        if let Some(faults) = &self.faults {
            storage = storage.with_faults(faults[i].clone());
        }
        RaftNode::start(
            self.info(i),
            self.transport(i),
            storage,
            Recorder::default(),
            allow_all(),
            self.config.clone(),
        )
        .await
        .expect("node starts")
    }

    /// Node `i`, which must be running.
    pub fn node(&self, i: usize) -> &RaftNode<Recorder> {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Initializes node 0 with every node as a voter.
    pub async fn initialize(&self) {
        let nodes: Vec<&RaftNode<Recorder>> = (0..self.nodes.len()).map(|i| self.node(i)).collect();
        form(&nodes).await;
    }

    /// Waits until the running nodes in `among` agree on one leader from
    /// `among`; returns its index.
    pub async fn leader(&self, among: &[usize]) -> usize {
        eventually(WAIT, format_args!("an agreed leader among {among:?}"), async || {
            let leaders: Vec<usize> = among
                .iter()
                .filter(|&&i| {
                    self.nodes[i].as_ref().is_some_and(|n| n.metrics().role == Role::Leader)
                })
                .copied()
                .collect();
            let [leader] = leaders.as_slice() else { return None };
            let id = self.ids[*leader];
            among
                .iter()
                .all(|&i| self.nodes[i].as_ref().is_none_or(|n| n.metrics().leader == Some(id)))
                .then_some(*leader)
        })
        .await
    }

    /// Commits `count` commands through the leader (one session,
    /// sequential, sequence numbers from `from`), each applied.
    pub async fn commit_n(&self, leader: usize, session: ClientId, from: u64, count: u64) {
        for seq in from..from + count {
            let outcome =
                self.propose(leader, session, seq, format!("{session}:{seq}").as_bytes()).await;
            assert!(matches!(outcome, Ok(Outcome::Applied(_))), "proposal {seq} gave {outcome:?}");
        }
    }

    /// Registers a session through node `i` (the leader).
    pub async fn register(&self, i: usize) -> ClientId {
        self.node(i).register_session().await.expect("session registered")
    }

    /// Proposes through node `i` (the leader).
    pub async fn propose(
        &self,
        i: usize,
        client: ClientId,
        seq: u64,
        command: &[u8],
    ) -> Result<Outcome, ProposeError> {
        self.node(i).propose(client, seq, command.to_vec()).await
    }

    /// Waits until node `i` has applied at least `count` commands.
    pub async fn wait_applied(&self, i: usize, count: usize) {
        eventually(WAIT, format_args!("node {i} applies {count} commands"), async || {
            let have = self.node(i).read_local(|r| r.applied.len());
            if have >= count { Ok(()) } else { Err(format!("applied {have}")) }
        })
        .await
    }

    /// The commands node `i` applied, in order.
    pub fn applied(&self, i: usize) -> Vec<Vec<u8>> {
        self.node(i).read_local(|r| r.applied.clone())
    }

    /// Shuts node `i` down (it stays a member).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Shuts every running node down.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}

/// The answer an applied command gets from the recorder: how many commands
/// it had applied, itself included.
pub fn count_of(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Applied(bytes) | Outcome::Duplicate(bytes) => {
            u64::from_le_bytes(bytes[..8].try_into().unwrap())
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Three nodes on `net` (`durable` or in memory) whose follower was cut
/// off after 5 commands while the leader committed 100 more, built a
/// snapshot and purged its log past where the follower stopped: only a
/// snapshot can bring it back. Answers the cluster, the leader, the
/// leader's session and the follower, still cut off.
pub async fn a_follower_behind_a_purge(
    net: &MemNetwork,
    durable: bool,
) -> (Cluster, usize, ClientId, usize) {
    let mut config = fast_config();
    config.snapshot_every = 20;
    config.keep_after_snapshot = 5;
    config.purge_batch = 1;
    let cluster = Cluster::new(3, Net::Mem(net.clone()), durable, config).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let session = cluster.register(leader).await;
    let follower = (leader + 1) % 3;
    cluster.commit_n(leader, session, 1, 5).await;
    cluster.wait_applied(follower, 5).await;
    net.isolate(ip(follower));
    // Each proposal is its own entry here (sequential), so 100 proposals
    // pass several snapshot points; the leader purges what they cover.
    cluster.commit_n(leader, session, 6, 100).await;
    cluster
        .node(leader)
        .wait_for(WAIT, |m| {
            m.snapshot.is_some_and(|s| s >= 60) && m.purged.is_some_and(|p| p >= 50)
        })
        .await
        .expect("leader built a snapshot and purged the log behind it");
    (cluster, leader, session, follower)
}
