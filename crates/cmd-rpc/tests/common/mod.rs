//! The one harness of the command API's tests: nodes on a `MemNetwork`,
//! node `i` being `node-<i>` at [`ip`]`(i)`. [`start_node_on`] starts a
//! node with the state machine, identities, tailnet view and authorization
//! a test chooses; [`start_node`] and [`start_node_with`] one with a
//! counting state machine, every node tagged and online.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]
#![allow(unreachable_pub, reason = "shared between test binaries as a module")]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::{
    Authorize, Caller, CommandClient, CommandConfig, CommandServer, CommandService, ConfirmFuture,
    ConfirmRequest, ExecuteRequest, Peers, ProbeFuture, ProbeRequest, ProbeResponse, ProbeState,
    RpcError,
};
use raft_core::{NodeInfo, RaftConfig, RaftNode, StateMachine, Storage};
use serde_json::value::RawValue;
use ts_transport::Transport;

pub const RAFT_PORT: u16 = 7000;
pub const COMMAND_PORT: u16 = 7001;
pub const WAIT: Duration = Duration::from_secs(20);

/// Applies nothing but counts, and answers with the count.
#[derive(Default)]
pub struct Counter {
    pub applied: Vec<String>,
}

impl StateMachine for Counter {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        self.applied.push(String::from_utf8_lossy(command).into_owned());
        self.applied.len().to_string().into_bytes()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        self.applied.len().to_string().into_bytes()
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &self.applied).map_err(io::Error::other)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.applied = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

pub fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

pub fn info(i: usize) -> NodeInfo {
    NodeInfo {
        stable_id: format!("node-{i}"),
        addrs: vec![ip(i)],
        raft_port: RAFT_PORT,
        command_port: COMMAND_PORT,
    }
}

/// Every node is tagged and online.
pub struct AllPeers;

impl Peers for AllPeers {
    fn caller(&self, ip: IpAddr) -> Option<Caller> {
        let i = (0..20).find(|&i| self::ip(i) == ip)?;
        Some(Caller { stable_id: info(i).stable_id, addrs: vec![ip] })
    }
    fn tagged_online(&self, _stable_id: &str) -> bool {
        true
    }
    fn removal_keeps_quorum(
        &self,
        _id: raft_core::NodeId,
        _metrics: &raft_core::NodeMetrics,
    ) -> Result<(), String> {
        // Every voter is reachable here.
        Ok(())
    }
    fn probe<'a>(&'a self, _caller: &'a Caller, _request: &'a ProbeRequest) -> ProbeFuture<'a> {
        Box::pin(async move {
            Ok(ProbeResponse {
                id: 0,
                incarnation: 0,
                node: info(0),
                state: ProbeState::Fresh { promised_to: None },
            })
        })
    }
    fn confirm<'a>(
        &'a self,
        _caller: &'a Caller,
        _request: &'a ConfirmRequest,
    ) -> ConfirmFuture<'a> {
        // These clusters are formed by the tests, never through bootstrap.
        Box::pin(async move { Err(RpcError::NotConfirmed("not forming here".to_owned())) })
    }
}

pub fn fast_raft() -> RaftConfig {
    RaftConfig { propose_timeout: Duration::from_secs(3), ..test_support::fast_raft() }
}

pub fn allow_all() -> Authorize {
    Arc::new(|_| true)
}

/// The node at `ip(i)` is `node-<i>` (as [`info`] says).
pub fn owner(ip: IpAddr) -> String {
    let last = match ip.to_canonical() {
        IpAddr::V4(v4) => usize::from(v4.octets()[3]),
        IpAddr::V6(v6) => usize::from(v6.segments()[7]),
    };
    format!("node-{}", last.saturating_sub(1))
}

/// Every address may use the raft port, as the node [`owner`] names.
pub fn identify_all() -> raft_core::Identify {
    Arc::new(|peer| Some(owner(peer.ip())))
}

/// A running node: its command service (and raft node) and its server.
pub struct Node<S: StateMachine = Counter> {
    pub service: Arc<CommandService<S>>,
    pub server: CommandServer,
}

pub async fn start_node(transport: Arc<dyn Transport>, i: usize, raft: RaftConfig) -> Node {
    start_node_with(transport, i, raft, allow_all(), CommandConfig::default()).await
}

/// Node `i`, its command port served to callers `authorize` allows.
pub async fn start_node_with(
    transport: Arc<dyn Transport>,
    i: usize,
    raft: RaftConfig,
    authorize: Authorize,
    config: CommandConfig,
) -> Node {
    let peers = |_: &RaftNode<Counter>| -> Arc<dyn Peers> { Arc::new(AllPeers) };
    let machine = Counter::default();
    start_node_on(transport, i, raft, machine, identify_all(), peers, authorize, config).await
}

/// Node `i` (as [`info`] says) serving `machine` with memory storage:
/// raft peers identified by `identify`, the tailnet as `peers` shows it
/// (made once the raft node exists, for views that name it), its command
/// port served to the callers `authorize` allows.
#[allow(clippy::too_many_arguments, reason = "each is what a test varies")]
pub async fn start_node_on<S: StateMachine>(
    transport: Arc<dyn Transport>,
    i: usize,
    raft: RaftConfig,
    machine: S,
    identify: raft_core::Identify,
    peers: impl FnOnce(&RaftNode<S>) -> Arc<dyn Peers>,
    authorize: Authorize,
    config: CommandConfig,
) -> Node<S> {
    let raft_node =
        RaftNode::start(info(i), transport.clone(), Storage::Memory, machine, identify, raft)
            .await
            .unwrap();
    let peers = peers(&raft_node);
    let service = Arc::new(CommandService::new(
        Arc::new(raft_node),
        CommandClient::new(transport.clone(), config.clone()),
        config.clone(),
        peers,
    ));
    let listener = Arc::from(transport.listen(COMMAND_PORT).await.unwrap());
    let server = CommandServer::start(listener, service.clone(), authorize, config);
    Node { service, server }
}

/// Forms a cluster of the nodes, the first initializing it.
pub async fn form<S: StateMachine>(nodes: &[&Node<S>]) {
    let members: std::collections::BTreeMap<raft_core::NodeId, NodeInfo> =
        nodes.iter().map(|n| (n.service.node().id(), n.service.node().info().clone())).collect();
    let cluster_id = nodes[0].service.node().form().await.unwrap();
    for node in &nodes[1..] {
        node.service.node().set_cluster_id(cluster_id).await.unwrap();
    }
    assert!(nodes[0].service.node().initialize_in(cluster_id, members).await.unwrap());
}

pub async fn stop_node<S: StateMachine>(node: Node<S>) {
    node.server.shutdown().await;
    node.service.node().shutdown().await;
}

pub fn put(client: u128, seq: u64, key: &str) -> ExecuteRequest {
    ExecuteRequest {
        client: format!("{client:032x}"),
        seq,
        command: RawValue::from_string(format!("{{\"put\":{key:?}}}")).unwrap(),
        retry: false,
    }
}
