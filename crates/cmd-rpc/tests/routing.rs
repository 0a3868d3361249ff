//! Routing a call to the leader: waiting for a leader without starving the
//! runtime, and per-attempt timeouts that let a call in flight when the
//! leader dies reach the new leader long before its deadline.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cmd_rpc::{
    Caller, CommandClient, CommandConfig, CommandServer, CommandService, ExecuteRequest, Peers,
    ProbeFuture, ProbeRequest, ProbeResponse, ProbeState, RpcError,
};
use raft_core::network::frame::{self, Message};
use raft_core::{ClusterId, NodeInfo, RaftConfig, RaftNode, StateMachine, Storage};
use serde_json::value::RawValue;
use tokio::time::Instant;
use ts_transport::{MemNetwork, PeerAddr, Transport};

const RAFT_PORT: u16 = 7000;
const COMMAND_PORT: u16 = 7001;
const WAIT: Duration = Duration::from_secs(20);

/// Applies nothing but counts, and answers with the count.
#[derive(Default)]
struct Counter {
    applied: Vec<String>,
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

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn info(i: usize) -> NodeInfo {
    NodeInfo {
        stable_id: format!("node-{i}"),
        addrs: vec![ip(i)],
        raft_port: RAFT_PORT,
        command_port: COMMAND_PORT,
    }
}

/// Every node is tagged and online.
struct AllPeers;

impl Peers for AllPeers {
    fn caller(&self, ip: IpAddr) -> Option<Caller> {
        let i = (0..20).find(|&i| self::ip(i) == ip)?;
        Some(Caller { stable_id: info(i).stable_id, addrs: vec![ip] })
    }
    fn tagged_online(&self, _stable_id: &str) -> bool {
        true
    }
    fn probe<'a>(&'a self, _caller: &'a Caller, _request: &'a ProbeRequest) -> ProbeFuture<'a> {
        Box::pin(async move {
            ProbeResponse {
                id: 0,
                incarnation: 0,
                node: info(0),
                state: ProbeState::Fresh { promised_to: None },
            }
        })
    }
}

fn fast_raft() -> RaftConfig {
    RaftConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        propose_timeout: Duration::from_secs(3),
        ..RaftConfig::default()
    }
}

fn allow_all() -> Arc<dyn Fn(PeerAddr) -> bool + Send + Sync> {
    Arc::new(|_| true)
}

struct Node {
    service: Arc<CommandService<Counter>>,
    server: CommandServer,
}

async fn start_node(transport: Arc<dyn Transport>, i: usize, raft: RaftConfig) -> Node {
    let raft_node = RaftNode::start(
        info(i),
        transport.clone(),
        Storage::Memory,
        Counter::default(),
        allow_all(),
        raft,
    )
    .await
    .unwrap();
    let config = CommandConfig::default();
    let service = Arc::new(CommandService::new(
        Arc::new(raft_node),
        CommandClient::new(transport.clone(), config.clone()),
        config.clone(),
        Arc::new(AllPeers),
    ));
    let listener = Arc::from(transport.listen(COMMAND_PORT).await.unwrap());
    let server = CommandServer::start(listener, service.clone(), allow_all(), config);
    Node { service, server }
}

async fn stop_node(node: Node) {
    node.server.shutdown().await;
    node.service.node().shutdown().await;
}

fn put(client: u128, seq: u64, key: &str) -> ExecuteRequest {
    ExecuteRequest {
        client: format!("{client:032x}"),
        seq,
        command: RawValue::from_string(format!("{{\"put\":{key:?}}}")).unwrap(),
        retry: false,
    }
}

/// A node that follows a leader its configuration does not hold (here a
/// leader played on the wire; in a cluster, during an incarnation change)
/// waits for a leader it can route to, and keeps yielding while it waits:
/// other tasks on its runtime run.
#[tokio::test(flavor = "current_thread")]
async fn waiting_for_a_leader_outside_the_configuration_does_not_starve_the_runtime() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let raft = node.service.node().clone();
    let cluster_id = ClusterId::random().unwrap();
    raft.set_cluster_id(cluster_id).await.unwrap();
    // Play leader 999 of term 1, which no configuration here knows.
    let mut stream = net.node(ip(9)).dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    let hello = Message::Hello {
        cluster: fast_raft().network.cluster,
        cluster_id,
        from: 999,
        to: raft.id(),
    };
    frame::write(&mut stream, &frame::encode(0, &hello)).await.unwrap();
    let welcome = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(welcome.message, Message::Welcome), "{:?}", welcome.message);
    frame::write(&mut stream, &frame::encode(1, &Message::heartbeat(1, 999))).await.unwrap();
    let answer = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(answer.message, Message::AppendEntriesResult(Ok(_))), "{:?}", answer.message);
    raft.wait_for(WAIT, |m| m.leader == Some(999)).await.expect("the node follows 999");
    assert!(raft.metrics().nodes.is_empty());

    // Another task on the same (single-threaded) runtime counts its turns.
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let err = node
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_secs(1), false)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    let turns = ticks.load(Ordering::Relaxed);
    ticker.abort();
    assert!(waited >= Duration::from_secs(1), "gave up after {waited:?}: {err}");
    // 100 turns in a second if the call yields; none if it spins.
    assert!(turns >= 20, "other tasks ran {turns} times in {waited:?}: the call spun");
    assert!(!matches!(err, RpcError::Timeout { .. }), "{err}");
    drop(stream);
    stop_node(node).await;
}
