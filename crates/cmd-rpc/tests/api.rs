//! The command API on clusters over the in-memory network: execute and
//! read through any node, forwarding across leader changes; joins and
//! removals answered by the leader only and bound to the caller's identity;
//! authorization, size limits, strict JSON and slow clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmd_rpc::{
    Caller, CommandClient, CommandConfig, CommandService, ConfirmFuture, ConfirmRequest,
    ConfirmResponse, Consistency, ExecuteRequest, ExecuteResponse, JoinRequest, Origin, Peers,
    ProbeFuture, ProbeRequest, ProbeResponse, ProbeState, ReadRequest, ReadResponse, RemoveRequest,
    RpcError, SessionResponse,
};
use common::{COMMAND_PORT, Node, WAIT, fast_raft, info, ip, owner, start_node_on};
use raft_core::{ClusterId, NodeId, NodeInfo, RaftConfig, RaftNode, Role, StateMachine};
use serde_json::json;
use serde_json::value::RawValue;
use test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use ts_transport::{MemNetwork, PeerAddr, Transport};

/// An address that is on the network but not allowed to use the API.
const INTRUDER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99));

/// A JSON key-value store. `{"op":"put","key":k,"value":v}` answers with the
/// previous value; `{"op":"fail"}` answers with an error of the state
/// machine's own; queries are `{"get": k}`.
#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
    log: Vec<String>,
}

impl StateMachine for Kv {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let command: serde_json::Value =
            serde_json::from_slice(command).expect("commands are JSON");
        self.log.push(command.to_string());
        let answer = match command["op"].as_str() {
            Some("put") => {
                let key = command["key"].as_str().unwrap_or_default().to_owned();
                let value = command["value"].as_str().unwrap_or_default().to_owned();
                json!({ "previous": self.map.insert(key, value) })
            }
            _ => json!({ "error": "refused by the state machine: unknown op" }),
        };
        answer.to_string().into_bytes()
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        let query: serde_json::Value = serde_json::from_slice(query).unwrap_or_default();
        json!({ "value": query["get"].as_str().and_then(|k| self.map.get(k)) })
            .to_string()
            .into_bytes()
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &(&self.map, &self.log)).map_err(io::Error::other)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        (self.map, self.log) = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

/// The tailnet as the tests declare it: node `i` is `node-i` at `ip(i)`;
/// the intruder is no node. Nodes in `offline` are tagged but offline;
/// nodes in `strangers` are not in any node's view (their calls are
/// refused as from an untagged node).
#[derive(Default)]
struct Tailnet {
    offline: Mutex<BTreeSet<usize>>,
    strangers: Mutex<BTreeSet<usize>>,
}

/// One node's view of the tailnet, as the facade would give it.
struct TestPeers {
    tailnet: Arc<Tailnet>,
    me: Mutex<Option<(NodeId, u64, NodeInfo)>>,
}

impl Peers for TestPeers {
    fn caller(&self, ip: IpAddr) -> Option<Caller> {
        let i = (0..20).find(|&i| self::ip(i) == ip)?;
        if self.tailnet.strangers.lock().unwrap().contains(&i) {
            return None;
        }
        Some(Caller { stable_id: info(i).stable_id, addrs: vec![ip] })
    }
    fn tagged_online(&self, stable_id: &str) -> bool {
        let offline = self.tailnet.offline.lock().unwrap();
        (0..20).any(|i| info(i).stable_id == stable_id && !offline.contains(&i))
    }
    /// The remaining voters that are online (the leader among them) must
    /// be a majority of them.
    fn removal_keeps_quorum(
        &self,
        id: NodeId,
        metrics: &raft_core::NodeMetrics,
    ) -> Result<(), String> {
        let remaining: Vec<&NodeInfo> = metrics
            .voters
            .iter()
            .filter(|v| **v != id)
            .filter_map(|v| metrics.nodes.get(v))
            .collect();
        let reachable = remaining.iter().filter(|n| self.tagged_online(&n.stable_id)).count();
        if remaining.is_empty() || reachable < remaining.len() / 2 + 1 {
            return Err(format!("{reachable} of {} remaining voters reachable", remaining.len()));
        }
        Ok(())
    }
    fn probe<'a>(&'a self, _caller: &'a Caller, _request: &'a ProbeRequest) -> ProbeFuture<'a> {
        let (id, incarnation, node) = self.me.lock().unwrap().clone().expect("started");
        Box::pin(async move {
            Ok(ProbeResponse {
                id,
                incarnation,
                node,
                state: ProbeState::Fresh { promised_to: None },
            })
        })
    }
    fn confirm<'a>(&'a self, caller: &'a Caller, request: &'a ConfirmRequest) -> ConfirmFuture<'a> {
        // Reached only by a request the server checked against `caller`.
        assert_eq!(caller.stable_id, request.node.stable_id);
        let (id, incarnation, node) = self.me.lock().unwrap().clone().expect("started");
        Box::pin(async move {
            Ok(ConfirmResponse { cluster_id: request.cluster_id, id, incarnation, node })
        })
    }
}

fn test_config() -> CommandConfig {
    CommandConfig {
        body_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(2),
        ..CommandConfig::default()
    }
}

struct Cluster {
    net: MemNetwork,
    tailnet: Arc<Tailnet>,
    cluster_id: ClusterId,
    raft: RaftConfig,
    config: CommandConfig,
    nodes: Vec<Option<Node<Kv>>>,
}

/// Every node but the intruder and the tailnet's strangers.
fn authorize_members(tailnet: Arc<Tailnet>) -> Arc<dyn Fn(PeerAddr) -> bool + Send + Sync> {
    Arc::new(move |peer: PeerAddr| {
        let stranger =
            (0..20).any(|i| ip(i) == peer.ip() && tailnet.strangers.lock().unwrap().contains(&i));
        peer.ip() != INTRUDER && !stranger
    })
}

fn identify_all_but_intruder() -> raft_core::Identify {
    Arc::new(|peer: PeerAddr| (peer.ip() != INTRUDER).then(|| owner(peer.ip())))
}

impl Cluster {
    fn raft_config() -> RaftConfig {
        fast_raft()
    }

    async fn start_node(
        net: &MemNetwork,
        tailnet: &Arc<Tailnet>,
        i: usize,
        raft: RaftConfig,
        config: CommandConfig,
    ) -> Node<Kv> {
        let peers = |raft_node: &RaftNode<Kv>| -> Arc<dyn Peers> {
            Arc::new(TestPeers {
                tailnet: tailnet.clone(),
                me: Mutex::new(Some((raft_node.id(), raft_node.incarnation(), info(i)))),
            })
        };
        start_node_on(
            Arc::new(net.node(ip(i))),
            i,
            raft,
            Kv::default(),
            identify_all_but_intruder(),
            peers,
            authorize_members(tailnet.clone()),
            config,
        )
        .await
    }

    /// `n` nodes; the first `voters` form the initial cluster, the rest
    /// wait to join (with the cluster's id, as if they had decided to).
    async fn new(n: usize, voters: usize) -> Cluster {
        Cluster::with_raft(n, voters, Cluster::raft_config()).await
    }

    async fn with_raft(n: usize, voters: usize, raft: RaftConfig) -> Cluster {
        Cluster::with_configs(n, voters, raft, test_config()).await
    }

    async fn with_configs(
        n: usize,
        voters: usize,
        raft: RaftConfig,
        config: CommandConfig,
    ) -> Cluster {
        let net = MemNetwork::new();
        net.node(INTRUDER);
        let tailnet = Arc::new(Tailnet::default());
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = Cluster::start_node(&net, &tailnet, i, raft.clone(), config.clone()).await;
            nodes.push(Some(node));
        }
        let former = &nodes[0].as_ref().expect("running").service;
        let cluster_id = former.node().form().await.unwrap();
        let cluster = Cluster { net, tailnet, cluster_id, raft, config, nodes };
        let members =
            (0..voters).map(|i| (cluster.id(i), info(i))).collect::<BTreeMap<NodeId, NodeInfo>>();
        for i in 1..n {
            cluster.service(i).node().set_cluster_id(cluster_id).await.unwrap();
        }
        assert!(cluster.service(0).node().initialize_in(cluster_id, members).await.unwrap());
        cluster.leader().await;
        cluster
    }

    /// Restarts node `i` (memory storage: a new incarnation), with the
    /// cluster's id.
    async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        self.nodes[i] = Some(
            Cluster::start_node(
                &self.net,
                &self.tailnet,
                i,
                self.raft.clone(),
                self.config.clone(),
            )
            .await,
        );
        self.service(i).node().set_cluster_id(self.cluster_id).await.unwrap();
    }

    fn id(&self, i: usize) -> NodeId {
        self.service(i).node().id()
    }

    /// Node `i`'s join request.
    fn join_request(&self, i: usize) -> JoinRequest {
        let node = self.service(i).node();
        JoinRequest {
            id: node.id(),
            incarnation: node.incarnation(),
            node: info(i),
            cluster_id: self.cluster_id,
        }
    }

    fn service(&self, i: usize) -> &Arc<CommandService<Kv>> {
        &self.nodes[i].as_ref().expect("running").service
    }

    /// The leader, once every running voter routes to it (knows it and
    /// has it in its configuration, which a follower learns only from the
    /// leader's first entries).
    async fn leader(&self) -> usize {
        eventually(WAIT, "a leader every voter routes to", async || {
            self.nodes.iter().enumerate().find_map(|(i, node)| {
                let m = node.as_ref()?.service.node().metrics();
                if m.role != Role::Leader {
                    return None;
                }
                let routed = self.nodes.iter().flatten().all(|other| {
                    let o = other.service.node().metrics();
                    !m.voters.contains(&o.id)
                        || (o.leader == Some(m.id) && o.nodes.contains_key(&m.id))
                });
                routed.then_some(i)
            })
        })
        .await
    }

    async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.server.shutdown().await;
            match Arc::try_unwrap(node.service) {
                Ok(service) => match Arc::try_unwrap(service.into_node()) {
                    Ok(raft) => raft.shutdown().await,
                    Err(_) => panic!("raft node still shared"),
                },
                Err(_) => panic!("service still shared"),
            }
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }

    /// Registers a session through node `via`; its client id.
    async fn session(&self, via: usize) -> u128 {
        let registered = self.service(via).register(deadline(10), Origin::Client).await.unwrap();
        u128::from_str_radix(&registered.client, 16).unwrap()
    }

    fn log(&self, i: usize) -> Vec<String> {
        self.service(i).node().read_local(|kv| kv.log.clone())
    }

    async fn wait_log_len(&self, i: usize, len: usize) {
        eventually(WAIT, format_args!("node {i} applies {len} commands"), async || {
            let applied = self.log(i).len();
            if applied >= len { Ok(()) } else { Err(format!("applied {applied}")) }
        })
        .await;
    }
}

fn put(client: u128, seq: u64, key: &str, value: &str) -> ExecuteRequest {
    ExecuteRequest {
        client: format!("{client:032x}"),
        seq,
        command: RawValue::from_string(
            json!({"op": "put", "key": key, "value": value}).to_string(),
        )
        .unwrap(),
        retry: false,
    }
}

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A raw HTTP/1.1 exchange from `from` to node `to`'s command port: the
/// status code and body, or the error if the server cut the connection.
async fn raw_http(
    net: &MemNetwork,
    from: IpAddr,
    to: usize,
    request: &[u8],
) -> io::Result<(u16, String)> {
    let stream = net
        .node(from)
        .dial(ip(to), COMMAND_PORT, Duration::from_secs(5))
        .await
        .map_err(io::Error::other)?;
    // The server may answer and close before the whole request is sent (a
    // body refused as too large), so write and read at once: a failed write
    // only matters if no answer came.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut response = Vec::new();
    let (written, read) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(writer.write_all(request), reader.read_to_end(&mut response))
    })
    .await
    .map_err(io::Error::other)?;
    read?;
    if response.is_empty() {
        written?;
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_through_every_node_is_applied_once_each() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    for i in 0..3 {
        let session = cluster.session(i).await;
        let answer = cluster
            .service(i)
            .execute(&put(session, 1, &format!("k{i}"), "v"), deadline(10), Origin::Client)
            .await
            .unwrap();
        assert!(!answer.duplicate);
        assert_eq!(
            answer.result.get(),
            r#"{"previous":null}"#,
            "via node {i} (leader is {leader})"
        );
    }
    // A second put on a key answers with the value before it, via a follower.
    let follower = (leader + 1) % 3;
    let session = cluster.session(follower).await;
    let answer = cluster
        .service(follower)
        .execute(&put(session, 1, "k0", "w"), deadline(10), Origin::Client)
        .await
        .unwrap();
    assert_eq!(answer.result.get(), r#"{"previous":"v"}"#);
    for i in 0..3 {
        cluster.wait_log_len(i, 4).await;
        assert_eq!(cluster.log(i), cluster.log(leader));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machines_own_error_survives_forwarding() {
    let cluster = Cluster::new(3, 3).await;
    let follower = (cluster.leader().await + 1) % 3;
    let request = ExecuteRequest {
        client: format!("{:032x}", cluster.session(follower).await),
        seq: 1,
        command: RawValue::from_string(r#"{"op":"explode"}"#.into()).unwrap(),
        retry: false,
    };
    let answer =
        cluster.service(follower).execute(&request, deadline(10), Origin::Client).await.unwrap();
    assert_eq!(answer.result.get(), r#"{"error":"refused by the state machine: unknown op"}"#);
    cluster.shutdown().await;
}

/// The message of an error answer.
fn message(body: &str) -> String {
    serde_json::from_str::<cmd_rpc::ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body: {body:?}: {e}"))
        .message
}

/// Posts `body` to `path` on node `to` from address `from`, as raw HTTP
/// with `headers` (each ending in CRLF).
async fn post_from(
    cluster: &Cluster,
    from: IpAddr,
    to: usize,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}x-tsc-deadline-ms: 10000\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(&cluster.net, from, to, request.as_bytes()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_answered_by_the_leader_only_and_add_voters() {
    let cluster = Cluster::new(5, 3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // A follower does not forward a join: it names the leader.
    let join = serde_json::to_string(&cluster.join_request(3)).unwrap();
    let (status, body) = post_from(&cluster, ip(3), follower, "/v1/join", &join, "").await;
    assert_eq!(status, 409, "{body}");
    let error: cmd_rpc::ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(error.code.as_str(), "not_leader");
    assert_eq!(error.leader.map(|l| l.id), Some(cluster.id(leader)), "{body}");
    // The leader adds each joining node as a voter.
    for joiner in [3, 4] {
        let join = serde_json::to_string(&cluster.join_request(joiner)).unwrap();
        let (status, body) = post_from(&cluster, ip(joiner), leader, "/v1/join", &join, "").await;
        assert_eq!(status, 200, "join {joiner}: {body}");
    }
    let metrics = cluster.service(leader).node().metrics();
    assert_eq!(metrics.voters, (0..5).map(|i| cluster.id(i)).collect(), "joined nodes are voters");
    // Joining again is harmless.
    let join = serde_json::to_string(&cluster.join_request(3)).unwrap();
    let (status, body) = post_from(&cluster, ip(3), leader, "/v1/join", &join, "").await;
    assert_eq!(status, 200, "{body}");
    // The new voters replicate.
    let session = cluster.session(3).await;
    cluster
        .service(3)
        .execute(&put(session, 1, "after-join", "x"), deadline(10), Origin::Client)
        .await
        .unwrap();
    cluster.wait_log_len(4, 1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_do_not_match_the_callers_identity_are_refused() {
    let cluster = Cluster::new(3, 2).await;
    let leader = cluster.leader().await;
    let good = cluster.join_request(2);
    let owned = cluster;
    let cluster = &owned;
    let refused = |request: &JoinRequest| {
        let body = serde_json::to_string(request).unwrap();
        async move { post_from(cluster, ip(2), leader, "/v1/join", &body, "").await }
    };
    // Another stable id (the caller's own address, though).
    let other = JoinRequest { node: NodeInfo { addrs: vec![ip(2)], ..info(7) }, ..good.clone() };
    let (status, body) = refused(&other).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("\"node-2\" cannot join as \"node-7\""), "{body}");
    // Foreign addresses.
    let foreign = JoinRequest { node: NodeInfo { addrs: vec![ip(7)], ..info(2) }, ..good.clone() };
    let (status, body) = refused(&foreign).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("10.0.0.8 is not one of node \"node-2\""), "{body}");
    // Another cluster.
    let wrong = JoinRequest { cluster_id: ClusterId(cluster.cluster_id.0 ^ 1), ..good.clone() };
    let (status, body) = refused(&wrong).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains(&format!("this is cluster {}", cluster.cluster_id)), "{body}");
    // An id that is not the stable id's.
    let forged = JoinRequest { id: cluster.id(0), ..good.clone() };
    let (status, body) = refused(&forged).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("is not the id of \"node-2\""), "{body}");
    let zero = JoinRequest { incarnation: 0, ..good.clone() };
    assert_eq!(refused(&zero).await.0, 400);
    // Bounded: too many addresses, an oversized stable id.
    let many = JoinRequest { node: NodeInfo { addrs: vec![ip(2); 17], ..info(2) }, ..good.clone() };
    let (status, body) = refused(&many).await;
    assert_eq!(status, 400, "{body}");
    let long =
        JoinRequest { node: NodeInfo { stable_id: "x".repeat(300), ..info(2) }, ..good.clone() };
    assert_eq!(refused(&long).await.0, 400);
    // A forged forwarding header changes nothing.
    let body = serde_json::to_string(&foreign).unwrap();
    let (status, answer) =
        post_from(cluster, ip(2), leader, "/v1/join", &body, "x-tsc-forwarded: 1\r\n").await;
    assert_eq!(status, 403, "a forged x-tsc-forwarded header skipped the checks: {answer}");
    // Nothing was added by any of them; the real join still works.
    let metrics = cluster.service(leader).node().metrics();
    assert_eq!(metrics.nodes.len(), 2, "{metrics:?}");
    let (status, body) = refused(&good).await;
    assert_eq!(status, 200, "{body}");
    owned.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_incarnation_takes_the_old_ones_place_in_one_change() {
    let mut cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let stale = (leader + 1) % 3;
    let old_id = cluster.id(stale);
    let client = cluster.session(leader).await;
    cluster
        .service(leader)
        .execute(&put(client, 1, "k", "v"), deadline(10), Origin::Client)
        .await
        .unwrap();
    cluster.restart(stale).await;
    assert_ne!(cluster.id(stale), old_id, "a node without its state kept its raft id");
    let mut voters_seen = cluster.service(leader).node().subscribe();
    let join = serde_json::to_string(&cluster.join_request(stale)).unwrap();
    let (status, body) = post_from(&cluster, ip(stale), leader, "/v1/join", &join, "").await;
    assert_eq!(status, 200, "{body}");
    let metrics = cluster.service(leader).node().metrics();
    assert!(metrics.voters.contains(&cluster.id(stale)), "{metrics:?}");
    assert!(!metrics.nodes.contains_key(&old_id), "{metrics:?}");
    assert_eq!(metrics.voters.len(), 3);
    // Every configuration the leader went through had three voters or more.
    let mut least = usize::MAX;
    while voters_seen.has_changed().unwrap_or(false) {
        least = least.min(voters_seen.borrow_and_update().voters.len());
    }
    assert!(least >= 3, "voters dropped to {least}");
    cluster.wait_log_len(stale, 1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_leader_change_is_not_applied_twice() {
    let mut cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let session = cluster.session(leader).await;
    // Applied on the old leader, whose answer is then "lost".
    let first = cluster
        .service(leader)
        .execute(&put(session, 1, "once", "1"), deadline(10), Origin::Client)
        .await
        .unwrap();
    assert!(!first.duplicate);
    let follower = (leader + 1) % 3;
    cluster.wait_log_len(follower, 1).await;
    cluster.stop(leader).await;
    // The caller retries the same (client, seq) through a follower: it finds
    // the new leader, which answers from the session.
    let retry = cluster
        .service(follower)
        .execute(&put(session, 1, "once", "1"), deadline(20), Origin::Client)
        .await
        .unwrap();
    assert!(retry.duplicate, "retry was applied again");
    assert_eq!(retry.result.get(), first.result.get());
    cluster.wait_log_len(follower, 1).await;
    assert_eq!(cluster.log(follower).len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_leader_crash_is_applied_exactly_once() {
    let mut cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let session = cluster.session(follower).await;
    // Slow the follower's link to the leader so the forwarded request is
    // still in flight when the leader dies.
    cluster.net.set_delay(ip(follower), ip(leader), Duration::from_millis(300));
    let service = cluster.service(follower).clone();
    let request = tokio::spawn(async move {
        service.execute(&put(session, 1, "crash", "1"), deadline(30), Origin::Client).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    cluster.stop(leader).await;
    cluster.net.set_delay(ip(follower), ip(leader), Duration::ZERO);
    let answer = request.await.unwrap().expect("the request finds the new leader");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &survivors {
        cluster.wait_log_len(i, 1).await;
        let applied = cluster.log(i).iter().filter(|c| c.contains("crash")).count();
        assert_eq!(
            applied, 1,
            "node {i} applied the command {applied} times (duplicate answer: {})",
            answer.duplicate
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_on_a_follower_see_acknowledged_writes() {
    let cluster = Cluster::new(3, 3).await;
    let follower = (cluster.leader().await + 1) % 3;
    let other = (follower + 1) % 3;
    let session = cluster.session(other).await;
    for n in 1..=20u64 {
        cluster
            .service(other)
            .execute(&put(session, n, "counter", &n.to_string()), deadline(10), Origin::Client)
            .await
            .unwrap();
        let read = ReadRequest {
            query: RawValue::from_string(r#"{"get":"counter"}"#.into()).unwrap(),
            consistency: Consistency::Linearizable,
        };
        let answer: ReadResponse =
            cluster.service(follower).read(&read, deadline(10)).await.unwrap();
        assert_eq!(
            answer.result.get(),
            format!(r#"{{"value":"{n}"}}"#),
            "read {n} on a follower missed an acknowledged write"
        );
    }
    let local = ReadRequest {
        query: RawValue::from_string(r#"{"get":"counter"}"#.into()).unwrap(),
        consistency: Consistency::Local,
    };
    assert!(cluster.service(follower).read(&local, deadline(5)).await.is_ok());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_through_a_follower_but_cannot_remove_others_that_are_online() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let remove = |id: NodeId| format!(r#"{{"id":{id}}}"#);
    // Not the leader, and not an online tagged member.
    let (status, body) =
        post_from(&cluster, ip(follower), leader, "/v1/remove", &remove(cluster.id(leader)), "")
            .await;
    assert_eq!(status, 403, "a peer removed the leader: {body}");
    assert!(message(&body).contains("cannot remove the leader"), "{body}");
    let (status, body) =
        post_from(&cluster, ip(follower), leader, "/v1/remove", &remove(cluster.id(other)), "")
            .await;
    assert_eq!(status, 403, "a peer removed an online tagged member: {body}");
    assert!(message(&body).contains("tagged and online"), "{body}");
    // A follower does not forward a removal.
    let (status, body) =
        post_from(&cluster, ip(other), follower, "/v1/remove", &remove(cluster.id(other)), "")
            .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(cluster.service(leader).node().metrics().voters.len(), 3);
    // A node leaves, through whichever node it asks.
    let other_id = cluster.id(other);
    cluster
        .service(other)
        .remove_via_leader(&RemoveRequest { id: other_id }, deadline(10))
        .await
        .unwrap();
    let metrics = cluster.service(leader).node().metrics();
    assert!(!metrics.voters.contains(&other_id) && !metrics.nodes.contains_key(&other_id));
    cluster.shutdown().await;
}

/// A tagged node that is not a voter of the cluster cannot remove anyone
/// but itself, even a member the leader sees offline; a voter can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_voter_removes_another_member_over_the_network() {
    let cluster = Cluster::new(4, 3).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.tailnet.offline.lock().unwrap().insert(other);
    let remove = format!(r#"{{"id":{}}}"#, cluster.id(other));
    // Node 3 is tagged and runs, but is no member.
    let (status, body) = post_from(&cluster, ip(3), leader, "/v1/remove", &remove, "").await;
    assert_eq!(status, 403, "a non-member removed a member: {body}");
    assert!(message(&body).contains("not a voter"), "{body}");
    assert!(cluster.service(leader).node().metrics().voters.contains(&cluster.id(other)));
    // A voter may.
    let (status, body) = post_from(&cluster, ip(follower), leader, "/v1/remove", &remove, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!cluster.service(leader).node().metrics().nodes.contains_key(&cluster.id(other)));
    cluster.shutdown().await;
}

/// A voter's removal of an offline voter is refused when the voters left
/// would not have a reachable majority (the quorum guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_over_the_network_keeps_a_reachable_majority() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    // Both followers offline in the leader's view: removing one leaves the
    // leader and an unreachable voter.
    cluster.tailnet.offline.lock().unwrap().extend([follower, other]);
    let remove = format!(r#"{{"id":{}}}"#, cluster.id(other));
    let (status, body) = post_from(&cluster, ip(follower), leader, "/v1/remove", &remove, "").await;
    assert_eq!(status, 403, "a removal without a reachable majority left went ahead: {body}");
    assert!(message(&body).contains("reachable"), "{body}");
    assert_eq!(cluster.service(leader).node().metrics().voters.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_offline_in_the_leaders_view_may_be_removed_by_a_peer() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.tailnet.offline.lock().unwrap().insert(other);
    let other_id = cluster.id(other);
    cluster
        .service(follower)
        .remove_via_leader(&RemoveRequest { id: other_id }, deadline(10))
        .await
        .expect("an offline member may be removed");
    let metrics = cluster.service(leader).node().metrics();
    assert!(!metrics.nodes.contains_key(&other_id), "{metrics:?}");
    cluster.shutdown().await;
}

/// In paused time (nothing here leaves the process): the deadline passes
/// on tokio's clock, so the test takes milliseconds, and the wait is
/// measured on the same clock the service reads.
#[tokio::test(start_paused = true)]
async fn with_no_leader_a_call_waits_its_deadline_and_says_why() {
    let mut cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cluster.stop(i).await;
        }
    }
    let started = Instant::now();
    let err = cluster
        .service(survivor)
        .execute(&put(1, 1, "k", "v"), Instant::now() + Duration::from_secs(3), Origin::Client)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    // The deadline, and at most one backoff slot past it.
    let slack = test_config().max_backoff;
    assert!(
        waited >= Duration::from_secs(3) && waited <= Duration::from_secs(3) + slack,
        "waited {waited:?}"
    );
    // Nothing of it was written to a leader: not applied, and why
    // (issue 12; before, `no_leader`, an unknown outcome).
    assert!(matches!(err, RpcError::NoLeaderNotStarted { .. }), "no quorum gave {err:?}");
    assert!(err.to_string().contains("no leader elected"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_caller_is_refused_on_every_endpoint() {
    let cluster = Cluster::new(1, 1).await;
    let body = r#"{"client":"00000000000000000000000000000001","seq":1,"command":{}}"#;
    for (method, path) in [
        ("POST", "/v1/execute"),
        ("POST", "/v1/execute-batch"),
        ("POST", "/v1/session"),
        ("POST", "/v1/join"),
        ("POST", "/v1/remove"),
        ("POST", "/v1/probe"),
        ("POST", "/v1/confirm"),
        ("POST", "/v1/read"),
        ("POST", "/v1/read-index"),
        ("POST", "/v1/campaign"),
        ("GET", "/v1/cluster"),
        ("GET", "/nope"),
    ] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // Closed at accept: no answer at all (a peer revoked on a live
        // connection gets 403 instead; tests/admission.rs).
        let answer = raw_http(&cluster.net, INTRUDER, 0, request.as_bytes()).await;
        assert!(answer.is_err(), "{method} {path} answered an unauthorized caller: {answer:?}");
    }
    // And an unauthorized node cannot join, even naming itself.
    let join = serde_json::to_string(&JoinRequest {
        id: raft_core::node_id("node-5", 9),
        incarnation: 9,
        node: NodeInfo { addrs: vec![INTRUDER], ..info(5) },
        cluster_id: cluster.cluster_id,
    })
    .unwrap();
    let answer = raw_http(&cluster.net, INTRUDER, 0, &post("/v1/join", &join)).await;
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(cluster.service(0).node().metrics().nodes.len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_join_on_behalf_of_another_address() {
    let cluster = Cluster::new(2, 1).await;
    // Node 1 (allowed) asks to add a node at an address that is not its own.
    let join = serde_json::to_string(&JoinRequest {
        node: NodeInfo { addrs: vec![ip(7)], ..info(1) },
        ..cluster.join_request(1)
    })
    .unwrap();
    let (status, body) = raw_http(&cluster.net, ip(1), 0, &post("/v1/join", &join)).await.unwrap();
    assert_eq!(status, 403, "{body}");
    cluster.shutdown().await;
}

/// A confirm request reaches the layer above only when it is the caller's
/// own: its stable id, its addresses, and a raft id that is
/// `node_id(stable id, incarnation)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_is_checked_against_the_callers_identity() {
    let net = MemNetwork::new();
    let tailnet = Arc::new(Tailnet::default());
    let node = Cluster::start_node(&net, &tailnet, 0, Cluster::raft_config(), test_config()).await;
    let good = ConfirmRequest {
        cluster_id: ClusterId(0xc1),
        id: raft_core::node_id("node-1", 5),
        incarnation: 5,
        node: info(1),
        seal: false,
    };
    let cases = [
        (ConfirmRequest { node: info(2), ..good.clone() }, 403, "cannot ask for confirmations"),
        (
            ConfirmRequest { node: NodeInfo { addrs: vec![ip(7)], ..info(1) }, ..good.clone() },
            403,
            "is not one of",
        ),
        (ConfirmRequest { id: 12, ..good.clone() }, 400, "is not the id of"),
        (ConfirmRequest { incarnation: 0, ..good.clone() }, 400, "is not the id of"),
        (ConfirmRequest { node: NodeInfo { addrs: vec![], ..info(1) }, ..good.clone() }, 400, ""),
    ];
    for (request, status, message) in cases {
        let body = serde_json::to_string(&request).unwrap();
        let (got, answer) = raw_http(&net, ip(1), 0, &post("/v1/confirm", &body)).await.unwrap();
        assert_eq!(got, status, "{request:?}: {answer}");
        assert!(answer.contains(message), "{answer}");
    }
    let body = serde_json::to_string(&good).unwrap();
    let (got, answer) = raw_http(&net, ip(1), 0, &post("/v1/confirm", &body)).await.unwrap();
    assert_eq!(got, 200, "{answer}");
    let answered: ConfirmResponse = serde_json::from_str(&answer).unwrap();
    assert_eq!((answered.cluster_id, answered.node), (good.cluster_id, info(0)));
    node.server.shutdown().await;
    node.service.node().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let cluster = Cluster::new(1, 1).await;
    let limit = test_config().max_request;
    // Declared too large: refused before the body is read.
    let request = format!(
        "POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        limit + 1
    );
    let (status, body) = raw_http(&cluster.net, ip(0), 0, request.as_bytes()).await.unwrap();
    assert_eq!(status, 413, "{body}");
    // Chunked, growing past the limit.
    let mut request = b"POST /v1/execute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..(limit / chunk.len() + 2) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_http(&cluster.net, ip(0), 0, &request).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_400_and_wrong_routes_get_404_or_405() {
    let cluster = Cluster::new(1, 1).await;
    assert_eq!(cluster.session(0).await, 1, "the first session registered is 1");
    let good = r#"{"client":"00000000000000000000000000000001","seq":1,"command":{"op":"put","key":"a","value":"b"}}"#;
    for bad in [
        "not json",
        "",
        &format!("{good} {good}"),
        r#"{"client":"00000000000000000000000000000001","seq":1,"command":{},"extra":1}"#,
        r#"{"client":"00000000000000000000000000000001","seq":"one","command":{}}"#,
        r#"{"client":"xyz","seq":1,"command":{}}"#,
        r#"{"client":"00000000000000000000000000000001","seq":0,"command":{}}"#,
    ] {
        let (status, body) =
            raw_http(&cluster.net, ip(0), 0, &post("/v1/execute", bad)).await.unwrap();
        assert_eq!(status, 400, "{bad:?} gave {status}: {body}");
        assert!(body.contains("bad_request"), "{body}");
    }
    let (status, _) = raw_http(&cluster.net, ip(0), 0, &post("/v1/execute", good)).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = raw_http(&cluster.net, ip(0), 0, &post("/v2/execute", good)).await.unwrap();
    assert_eq!(status, 404);
    let (status, _) = raw_http(
        &cluster.net,
        ip(0),
        0,
        b"GET /v1/execute HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 405);
    let (status, body) = raw_http(
        &cluster.net,
        ip(0),
        0,
        b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""members""#), "{body}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_one_byte_per_second_is_cut_off() {
    let cluster = Cluster::new(1, 1).await;
    let mut stream =
        cluster.net.node(ip(0)).dial(ip(0), COMMAND_PORT, Duration::from_secs(5)).await.unwrap();
    stream
        .write_all(b"POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // Trickle the body; the server must answer (408) or hang up long before
    // 100 bytes have been sent.
    loop {
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if response.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "slow client was never cut off");
    }
    let cut_after = started.elapsed();
    let body_timeout = test_config().body_timeout;
    assert!(
        cut_after >= body_timeout && cut_after < body_timeout + Duration::from_secs(4),
        "cut off after {cut_after:?}"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_headers_is_disconnected() {
    let cluster = Cluster::new(1, 1).await;
    let mut stream =
        cluster.net.node(ip(0)).dial(ip(0), COMMAND_PORT, Duration::from_secs(5)).await.unwrap();
    stream.write_all(b"POST /v1/exe").await.unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "connection with half a header still open after 10 s");
    assert!(started.elapsed() < test_config().header_timeout + Duration::from_secs(3));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_client_forwards_through_a_real_server() {
    let cluster = Cluster::new(3, 3).await;
    let follower = (cluster.leader().await + 1) % 3;
    let client = CommandClient::new(Arc::new(cluster.net.node(ip(9))), test_config());
    let registered: SessionResponse = client
        .post(&info(follower), "/v1/session", &json!({}), deadline(10), Origin::Client)
        .await
        .unwrap();
    let session = u128::from_str_radix(&registered.client, 16).unwrap();
    let answer: ExecuteResponse = client
        .post(
            &info(follower),
            "/v1/execute",
            &put(session, 1, "http", "yes"),
            deadline(10),
            Origin::Client,
        )
        .await
        .unwrap();
    assert!(!answer.duplicate);
    let again: ExecuteResponse = client
        .post(
            &info(follower),
            "/v1/execute",
            &put(session, 1, "http", "yes"),
            deadline(10),
            Origin::Client,
        )
        .await
        .unwrap();
    assert!(again.duplicate, "HTTP retry applied twice");
    cluster.shutdown().await;
}

/// A body for `path` that the node accepts, to mutate.
fn valid_body(path: &str) -> String {
    match path {
        "/v1/execute" => r#"{"client":"00000000000000000000000000000009","seq":1,"command":{"op":"put","key":"f","value":"z"}}"#.to_owned(),
        // An address that is not the caller's: the join is refused.
        "/v1/join" => r#"{"id":77,"incarnation":5,"node":{"stable_id":"n77","addrs":["10.0.0.77"],"raft_port":7000,"command_port":7001},"cluster_id":"0123456789abcdef0123456789abcdef"}"#.to_owned(),
        "/v1/execute-batch" => r#"{"commands":[{"request":{"client":"00000000000000000000000000000009","seq":1,"command":{"op":"put","key":"f","value":"z"}},"within_ms":300}]}"#.to_owned(),
        "/v1/remove" => r#"{"id":77}"#.to_owned(),
        "/v1/probe" => r#"{"promise":true}"#.to_owned(),
        // An address that is not the caller's: the confirm is refused.
        "/v1/confirm" => r#"{"cluster_id":"0123456789abcdef0123456789abcdef","id":77,"incarnation":5,"node":{"stable_id":"n77","addrs":["10.0.0.77"],"raft_port":7000,"command_port":7001}}"#.to_owned(),
        "/v1/read" => r#"{"query":{"get":"f"},"consistency":"linearizable"}"#.to_owned(),
        "/v1/campaign" => r#"{"term":1,"last_log_index":1}"#.to_owned(),
        _ => "{}".to_owned(),
    }
}

/// Bodies a fuzzer would try: random bytes, damaged valid bodies, and valid
/// JSON with fields swapped for values of the wrong type.
fn fuzzed_body() -> impl proptest::strategy::Strategy<Value = (String, Vec<u8>)> {
    use proptest::prelude::*;
    let path = prop::sample::select(vec![
        "/v1/execute",
        "/v1/execute-batch",
        "/v1/session",
        "/v1/join",
        "/v1/remove",
        "/v1/probe",
        "/v1/confirm",
        "/v1/read",
        "/v1/read-index",
        "/v1/campaign",
    ]);
    let json_value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([[[[[[[[]]]]]]]])),
        Just(serde_json::json!({"nested": {"deeper": [1, "two", null]}})),
        Just(serde_json::json!(u64::MAX)),
    ];
    path.prop_flat_map(move |path| {
        let valid = valid_body(path);
        let random = proptest::collection::vec(any::<u8>(), 0..600);
        let damaged = (
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            any::<prop::sample::Index>(),
        )
            .prop_map({
                let valid = valid.clone();
                move |(flips, cut)| {
                    let mut bytes = valid.clone().into_bytes();
                    for (at, byte) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] = byte;
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                    bytes
                }
            });
        let retyped = (any::<prop::sample::Index>(), json_value.clone()).prop_map({
            let valid = valid.clone();
            move |(field, value)| {
                let mut doc: serde_json::Value = serde_json::from_str(&valid).unwrap();
                if let Some(map) = doc.as_object_mut() {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    if !keys.is_empty() {
                        map.insert(keys[field.index(keys.len())].clone(), value);
                    }
                }
                doc.to_string().into_bytes()
            }
        });
        (Just(path.to_owned()), prop_oneof![random, damaged, retyped])
    })
}

#[test]
fn fuzzed_bodies_on_every_endpoint_get_a_clear_answer_and_the_node_survives() {
    // The proptest stand-in for a cargo-fuzz target (that needs a nightly
    // toolchain): every case goes through the real HTTP server.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = runtime.block_on(Cluster::new(1, 1));
    let caller = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 50));
    let mut runner =
        proptest::test_runner::TestRunner::new(test_support::proptest_config(300, 0x0f22_b0d1));
    // Batches are taken only as forwarded calls to this member.
    let node = cluster.service(0).node();
    let forwarded = format!(
        "x-tsc-forwarded: 1\r\nx-tsc-target-node: {}\r\nx-tsc-cluster: {}\r\n",
        node.id(),
        node.cluster_id().map(|c| c.to_string()).unwrap_or_else(|| "none".to_owned())
    );
    let result = runner.run(&fuzzed_body(), |(path, body)| {
        let marks = if path == "/v1/execute-batch" { forwarded.as_str() } else { "" };
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             x-tsc-deadline-ms: 300\r\n{marks}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let (status, answer) = runtime
            .block_on(raw_http(&cluster.net, caller, 0, &request))
            .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("no answer: {e}")))?;
        proptest::prop_assert!(status != 500, "{path} answered 500: {answer}");
        if status != 200 {
            let error: cmd_rpc::ErrorBody = serde_json::from_str(&answer).map_err(|e| {
                proptest::test_runner::TestCaseError::fail(format!("{status} body {answer:?}: {e}"))
            })?;
            proptest::prop_assert!(!error.message.is_empty(), "{status} without a message");
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // Still healthy: no fatal error, and a normal command goes through.
    runtime.block_on(async {
        assert_eq!(cluster.service(0).node().metrics().fatal, None);
        let request = put(cluster.session(0).await, 1, "after", "fuzz");
        let answer = cluster.service(0).execute(&request, deadline(5), Origin::Client).await;
        answer.expect("the node still executes commands");
        cluster.shutdown().await;
    });
}

/// The answers for commands that were not applied, or whose answer is
/// gone, each have their own code, through a follower as well as on the
/// leader, in the service and over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_outcomes_have_their_own_codes() {
    let mut raft = Cluster::raft_config();
    raft.sessions.max_sessions = 2;
    raft.sessions.max_answer_bytes = 32;
    let cluster = Cluster::with_raft(3, 3, raft).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let code = |result: Result<ExecuteResponse, RpcError>| match result {
        Ok(answer) => format!("ok {}", answer.result.get()),
        Err(err) => err.code().to_string(),
    };
    for via in [leader, follower] {
        let service = cluster.service(via);
        // Never registered.
        let stranger = service.execute(&put(99, 1, "a", "1"), deadline(10), Origin::Client).await;
        assert_eq!(code(stranger), "unknown_session", "via {via}");
        // Registered; the same number again with another command.
        let session = cluster.session(via).await;
        service.execute(&put(session, 1, "a", "1"), deadline(10), Origin::Client).await.unwrap();
        let reused =
            service.execute(&put(session, 1, "a", "2"), deadline(10), Origin::Client).await;
        assert_eq!(code(reused), "sequence_reused", "via {via}");
        // A short answer is kept; one over 32 bytes is not, and a retry
        // says the command was applied but its answer is gone.
        let long = "x".repeat(40);
        let short =
            service.execute(&put(session, 2, "a", &long), deadline(10), Origin::Client).await;
        assert_eq!(code(short), r#"ok {"previous":"1"}"#);
        let again =
            service.execute(&put(session, 2, "a", &long), deadline(10), Origin::Client).await;
        assert_eq!(code(again), r#"ok {"previous":"1"}"#, "a short answer is kept");
        let first = service.execute(&put(session, 3, "a", "z"), deadline(10), Origin::Client).await;
        assert_eq!(code(first), format!(r#"ok {{"previous":"{long}"}}"#));
        let retry = service.execute(&put(session, 3, "a", "z"), deadline(10), Origin::Client).await;
        assert_eq!(code(retry), "answer_not_kept", "via {via}");
        // Two newer sessions evict this one (the cap is two).
        cluster.session(via).await;
        cluster.session(via).await;
        let expired =
            service.execute(&put(session, 4, "c", "1"), deadline(10), Origin::Client).await;
        assert_eq!(code(expired), "session_expired", "via {via}");
        // The caller says an earlier call left the outcome unknown.
        let mut unsure = put(session, 4, "c", "1");
        unsure.retry = true;
        let expired = service.execute(&unsure, deadline(10), Origin::Client).await;
        assert_eq!(code(expired), "session_expired_outcome_unknown", "via {via}");
    }
    // Over HTTP, the codes come with 409.
    let (status, body) = raw_http(
        &cluster.net,
        ip(leader),
        follower,
        &post(
            "/v1/execute",
            r#"{"client":"000000000000000000000000000000ff","seq":1,"command":{}}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 409, "{body}");
    let body: cmd_rpc::ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(body.code.as_str(), "unknown_session");
    assert!(body.message.contains("was not applied"), "{}", body.message);
    cluster.shutdown().await;
}

/// An attempt whose outcome is unknown (its leader was cut off), then the
/// session expires: the caller must hear "outcome unknown", never "not
/// applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_after_an_unknown_attempt_is_reported_as_unknown() {
    let mut raft = Cluster::raft_config();
    raft.sessions.max_sessions = 2;
    raft.propose_timeout = Duration::from_millis(500);
    let cluster = Cluster::with_raft(3, 3, raft).await;
    let leader = cluster.leader().await;
    let session = cluster.session(leader).await;
    cluster
        .service(leader)
        .execute(&put(session, 1, "a", "1"), deadline(10), Origin::Client)
        .await
        .unwrap();
    // The leader is cut off: its attempts time out, outcome unknown.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.net.partition_set(&[ip(leader)]);
    let service = cluster.service(leader).clone();
    let call = tokio::spawn(async move {
        service.execute(&put(session, 2, "b", "1"), deadline(30), Origin::Client).await
    });
    // The others elect a leader and evict the session.
    let new_leader = eventually(WAIT, "a new leader", async || {
        others.iter().copied().find(|&i| cluster.service(i).node().metrics().role == Role::Leader)
    })
    .await;
    cluster.session(new_leader).await;
    cluster.session(new_leader).await;
    cluster.net.heal_all();
    let answer = call.await.unwrap();
    match answer {
        Err(err) => assert_eq!(err.code().as_str(), "session_expired_outcome_unknown", "{err}"),
        Ok(ok) => panic!("answered {}", ok.result.get()),
    }
    // And nothing of it was applied.
    for &i in &others {
        assert!(
            cluster.log(i).iter().all(|c| !c.contains("\"b\"")),
            "node {i}: {:?}",
            cluster.log(i)
        );
    }
    cluster.shutdown().await;
}

/// A forwarded call whose attempt on the leader timed out (outcome unknown:
/// the entry may still commit), then bounced because the leader lost its
/// leadership, must answer with that unknown outcome: `not_leader` tells
/// the caller "not applied", and the entry may yet be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_that_timed_out_is_not_bounced_as_not_leader() {
    let mut raft = Cluster::raft_config();
    raft.propose_timeout = Duration::from_millis(300);
    let cluster = Cluster::with_raft(3, 3, raft).await;
    let leader = cluster.leader().await;
    let session = cluster.session(leader).await;
    // The leader is cut off: the forwarded attempt's proposal times out.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.net.partition_set(&[ip(leader)]);
    let node = cluster.service(leader).node().clone();
    let batches = || node.stats().batch_size.snapshot().count;
    let before = batches();
    let service = cluster.service(leader).clone();
    let call = tokio::spawn(async move {
        service.execute(&put(session, 1, "b", "1"), deadline(30), Origin::Forwarded).await
    });
    // A second proposal means the first one timed out.
    eventually(WAIT, "a second attempt", async || (batches() >= before + 2).then_some(())).await;
    // The leader starts handing leadership over (its proposals are now
    // answered "not the leader"); the others elect a leader, and the old
    // one learns of it once healed.
    node.hold_for_transfer(true);
    eventually(WAIT, "a new leader", async || {
        others.iter().copied().find(|&i| cluster.service(i).node().metrics().role == Role::Leader)
    })
    .await;
    cluster.net.heal_all();
    let answer = call.await.unwrap();
    node.hold_for_transfer(false);
    match answer {
        Err(err) => {
            assert!(err.outcome_unknown(), "answered {} ({err}): a known outcome", err.code());
            assert_eq!(err.code().as_str(), "timeout", "{err}");
        }
        Ok(ok) => panic!("answered {}", ok.result.get()),
    }
    drop(node);
    cluster.shutdown().await;
}

/// The leader applied a forwarded command and answered, but its answer is
/// larger than the follower's client reads (`max_response`): the caller
/// must hear that it was applied (`answer_not_kept`: a 200 from
/// `/v1/execute`, or a retry in the same session) or an unknown outcome
/// (a batch's answer too large), not "too large", which says the request
/// was refused before the state machine (the review of stop 19: it was
/// applied, and a caller that believed the refusal applied it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_max_response_is_never_a_refusal() {
    let config = CommandConfig { max_response: 64 << 10, ..test_config() };
    let cluster = Cluster::with_configs(3, 3, Cluster::raft_config(), config).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let big = "x".repeat(100 << 10);
    let session = cluster.session(leader).await;
    cluster
        .service(leader)
        .execute(&put(session, 1, "k", &big), deadline(10), Origin::Client)
        .await
        .unwrap();
    // Through the follower: its answer is the previous value, 100 KiB.
    let session = cluster.session(follower).await;
    let before = cluster.service(leader).node().metrics().last_applied;
    match cluster
        .service(follower)
        .execute(&put(session, 1, "k", "v"), deadline(10), Origin::Client)
        .await
    {
        // Unknown, or (the follower retried in the same session) "applied,
        // its answer not kept": either tells the truth.
        Err(err) => assert!(
            err.outcome_unknown() || err.code() == cmd_rpc::ErrorCode::AnswerNotKept,
            "answered {} ({err}): not applied, for a command the leader applied",
            err.code()
        ),
        Ok(ok) => panic!("the answer came through: {} bytes", ok.result.get().len()),
    }
    let after = cluster.service(leader).node().metrics().last_applied;
    assert!(after > before, "the leader did not apply the command ({before:?} -> {after:?})");
    cluster.shutdown().await;
}

/// The answer is kept in the session (`max_answer_bytes` above it) but is
/// larger than the follower's `max_response`. Before, the follower could
/// not read it, and every retry in the same session read the same kept
/// answer: the caller learnt nothing until its deadline (the review of
/// finding 19); a later fix reported it at once as applied, its answer not
/// readable. A follower now reads `/v1/execute` answers up to the largest
/// kept answer (`CommandConfig::execute_answer_limit`), so the caller gets
/// the answer, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_answer_larger_than_max_response_is_read_through_a_follower() {
    let config = CommandConfig { max_response: 64 << 10, ..test_config() };
    let mut raft = Cluster::raft_config();
    raft.sessions.max_answer_bytes = 256 << 10;
    let cluster = Cluster::with_configs(3, 3, raft, config).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let big = "x".repeat(100 << 10);
    let session = cluster.session(leader).await;
    cluster
        .service(leader)
        .execute(&put(session, 1, "k", &big), deadline(10), Origin::Client)
        .await
        .unwrap();
    // Through the follower: its answer is the previous value, 100 KiB,
    // kept by the session for a retry.
    let session = cluster.session(follower).await;
    let answer = cluster
        .service(follower)
        .execute(&put(session, 1, "k", "v"), deadline(20), Origin::Client)
        .await
        .expect("the kept answer, read");
    assert!(!answer.duplicate);
    assert!(answer.result.get().len() > 100 << 10, "{} bytes", answer.result.get().len());
    // Applied once: the log holds the big put and this one, nothing more.
    assert_eq!(cluster.log(leader).len(), 2, "{:?}", cluster.log(leader).len());
    cluster.shutdown().await;
}

/// An attempt that left the outcome unknown (timed out at the leader) and
/// a later one the leader refuses before it reaches the state machine (the
/// follower no longer in its view): the caller must hear the unknown
/// outcome, not the refusal, which says "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_an_unknown_attempt_is_reported_as_unknown() {
    let mut raft = Cluster::raft_config();
    raft.propose_timeout = Duration::from_millis(150);
    let cluster = Cluster::with_raft(3, 3, raft).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let session = cluster.session(follower).await;
    // A commit now takes a round trip of 200 ms, longer than the leader
    // waits for a proposal: every forwarded attempt times out at the
    // leader (the entry may still commit), an unknown outcome.
    for other in (0..3).filter(|&i| i != leader) {
        cluster.net.set_delay(ip(leader), ip(other), Duration::from_millis(100));
    }
    let service = cluster.service(follower).clone();
    let stats = service.stats().clone();
    let call = tokio::spawn(async move {
        service.execute(&put(session, 1, "k", "v"), deadline(30), Origin::Client).await
    });
    // A second forward means the first one came back unknown; then the
    // leader's view loses the follower, so a later attempt is refused
    // before it reaches the state machine.
    eventually(WAIT, "a second forward", async || stats.forwarded.get() >= 2).await;
    cluster.tailnet.strangers.lock().unwrap().insert(follower);
    match call.await.unwrap() {
        Err(err) => assert!(
            err.outcome_unknown(),
            "answered {} ({err}): a known outcome after an unknown attempt",
            err.code()
        ),
        Ok(ok) => panic!("answered {}", ok.result.get()),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_may_ask_a_caught_up_voter_to_campaign_in_its_term() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let m = cluster.service(follower).node().metrics();
    let last = cluster.service(leader).node().metrics().last_log_index.unwrap();
    let campaign = |term: u64, index: u64| format!(r#"{{"term":{term},"last_log_index":{index}}}"#);
    let (status, body) =
        post_from(&cluster, ip(other), follower, "/v1/campaign", &campaign(m.term, last), "").await;
    assert_eq!(status, 403, "a follower asked another to campaign: {body}");
    assert!(message(&body).contains("not the leader this node follows"), "{body}");
    let (status, body) =
        post_from(&cluster, ip(leader), follower, "/v1/campaign", &campaign(m.term + 1, last), "")
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("term"), "{body}");
    let (status, body) = post_from(
        &cluster,
        ip(leader),
        follower,
        "/v1/campaign",
        &campaign(m.term, last + 1000),
        "",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("not yet the leader's"), "{body}");
    assert_eq!(cluster.service(follower).node().metrics().term, m.term, "refused, yet campaigned");
    let (status, body) =
        post_from(&cluster, ip(leader), follower, "/v1/campaign", &campaign(m.term, last), "")
            .await;
    assert_eq!(status, 200, "{body}");
    cluster
        .service(follower)
        .node()
        .wait_for(WAIT, |now| now.term > m.term)
        .await
        .expect("the follower campaigned");
    cluster.shutdown().await;
}

/// A forwarded call names the member and cluster it is meant for: a node
/// that is another member (a new incarnation on the same addresses) or in
/// another cluster (a node restored as a new cluster) refuses it as
/// `not_leader` without a hint, and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_meant_for_another_member_or_cluster_is_refused_and_not_applied() {
    let cluster = Cluster::new(3, 3).await;
    let leader = cluster.leader().await;
    let caller = ip((leader + 1) % 3);
    let id = cluster.service(leader).node().id();
    let own = cluster.cluster_id.to_string();
    let other = ClusterId(cluster.cluster_id.0 ^ 1).to_string();
    let client = cluster.session(leader).await;
    let command = |seq: u64, key: &str| serde_json::to_string(&put(client, seq, key, "v")).unwrap();
    let headers = |node: u64, cluster: &str| {
        format!("x-tsc-forwarded: 1\r\nx-tsc-target-node: {node}\r\nx-tsc-cluster: {cluster}\r\n")
    };
    for (what, headers) in
        [("another member", headers(id ^ 1, &own)), ("another cluster", headers(id, &other))]
    {
        let (status, body) =
            post_from(&cluster, caller, leader, "/v1/execute", &command(1, what), &headers).await;
        assert_eq!(status, 409, "{what}: {body}");
        let error: cmd_rpc::ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!((error.code.as_str(), error.leader), ("not_leader", None), "{what}: {body}");
        let (status, body) =
            post_from(&cluster, caller, leader, "/v1/read-index", "{}", &headers).await;
        assert_eq!(status, 409, "{what}: read index answered: {body}");
    }
    assert!(cluster.log(leader).is_empty(), "applied: {:?}", cluster.log(leader));
    // A forwarded call must say whom it is for.
    let (status, body) = post_from(
        &cluster,
        caller,
        leader,
        "/v1/execute",
        &command(1, "x"),
        "x-tsc-forwarded: 1\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Meant for this member of this cluster: applied.
    let (status, body) =
        post_from(&cluster, caller, leader, "/v1/execute", &command(1, "k"), &headers(id, &own))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cluster.log(leader).len(), 1);
    cluster.shutdown().await;
}
