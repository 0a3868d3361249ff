//! A small harness for the facade's tests: nodes on a `MemNetwork`, every
//! node tagged and online in a static tailnet view, a counter state machine
//! that records what it applied, and fast timings.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]
#![allow(unreachable_pub, reason = "shared between test binaries as a module")]

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use consensus::{BootstrapOptions, Config, Consensus, StateMachine, Timing};
use serde::{Deserialize, Serialize};
use ts_discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
use ts_transport::MemNetwork;

pub const TAG: &str = "tag:c";
pub const WAIT: Duration = Duration::from_secs(20);

/// Commands of [`Tally`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TallyCommand {
    /// Adds to the total and records the tag.
    Add { tag: String, n: i64 },
    /// Panics inside `apply`.
    Panic,
}

/// A total, and every command tag applied, in order.
#[derive(Default)]
pub struct Tally {
    pub total: i64,
    pub applied: Vec<String>,
}

impl StateMachine for Tally {
    type Command = TallyCommand;
    type Response = i64;
    type Query = ();
    type QueryResponse = (i64, Vec<String>);

    fn apply(&mut self, command: TallyCommand) -> i64 {
        match command {
            TallyCommand::Add { tag, n } => {
                self.total += n;
                self.applied.push(tag);
                self.total
            }
            TallyCommand::Panic => panic!("asked to panic by the test"),
        }
    }
    fn query(&self, _: &()) -> (i64, Vec<String>) {
        (self.total, self.applied.clone())
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &(self.total, &self.applied)).map_err(io::Error::other)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        (self.total, self.applied) = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

pub fn add(tag: &str, n: i64) -> TallyCommand {
    TallyCommand::Add { tag: tag.to_owned(), n }
}

pub fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn tailnet_node(i: usize) -> TailnetNode {
    TailnetNode {
        id: StableNodeId(format!("n{i}")),
        hostname: format!("host-{i}"),
        dns_name: String::new(),
        ipv4: match ip(i) {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        },
        ipv6: None,
        tags: BTreeSet::from([TAG.to_owned()]),
        online: true,
        has_path: true,
    }
}

/// Fast timings for an in-memory cluster.
pub fn fast_config() -> Config {
    Config {
        monitor_port: None,
        timing: Timing {
            heartbeat: Duration::from_millis(100),
            election: (Duration::from_millis(500), Duration::from_millis(1000)),
            reconcile_every: Duration::from_millis(200),
            start_timeout: Duration::from_secs(20),
            call_deadline: Duration::from_secs(10),
            max_staleness: Duration::from_secs(30),
        },
        ..Config::default()
    }
}

/// `n` nodes of one cluster on one in-memory network.
pub struct World {
    pub net: MemNetwork,
    pub n: usize,
}

impl World {
    pub fn new(n: usize) -> World {
        World { net: MemNetwork::new(), n }
    }

    fn view(&self, me: usize) -> ClusterView {
        self.view_with_offline(me, &[])
    }

    /// Node `me`'s view of the tailnet, with the nodes in `offline` shown
    /// offline.
    pub fn view_with_offline(&self, me: usize, offline: &[usize]) -> ClusterView {
        let peers = (0..self.n)
            .filter(|&j| j != me)
            .map(|j| TailnetNode { online: !offline.contains(&j), ..tailnet_node(j) });
        ClusterView::new(TAG, tailnet_node(me), peers)
    }

    /// Starts node `i` with `config`, expecting `n` nodes to form the cluster.
    pub async fn start(&self, i: usize, config: Config) -> Consensus<Tally> {
        self.start_on(i, config, Arc::new(StaticDiscovery::new(self.view(i)))).await
    }

    /// [`World::start`] with a discovery the caller keeps (to change the
    /// node's view).
    pub async fn start_on(
        &self,
        i: usize,
        config: Config,
        discovery: Arc<StaticDiscovery>,
    ) -> Consensus<Tally> {
        let bootstrap =
            BootstrapOptions { tag: TAG.to_owned(), follow_only: false, expected_size: self.n };
        Consensus::start_with(
            Arc::new(self.net.node(ip(i))),
            discovery,
            Tally::default(),
            bootstrap,
            config,
        )
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}"))
    }

    /// Starts every node at once, node `i` with `config(i)`, and waits
    /// until they agree on a leader.
    pub async fn start_all(&self, config: impl Fn(usize) -> Config) -> Vec<Consensus<Tally>> {
        let mut starting = Vec::new();
        for i in 0..self.n {
            let world = World { net: self.net.clone(), n: self.n };
            let config = config(i);
            starting.push(tokio::spawn(async move { world.start(i, config).await }));
        }
        let mut nodes = Vec::new();
        for task in starting {
            nodes.push(task.await.expect("start task"));
        }
        for node in &nodes {
            node.wait_for(WAIT, |m| m.voters == self.n && m.leader.is_some())
                .await
                .expect("a leader is elected");
        }
        nodes
    }
}

/// The index of the node that leads, as every node sees it.
pub fn leader_of(nodes: &[Consensus<Tally>]) -> usize {
    let id = nodes[0].metrics().leader.expect("a leader is known");
    nodes.iter().position(|n| n.id() == id).expect("the leader is one of the nodes")
}

/// One HTTP/1.1 exchange with `127.0.0.1:port`: the status and the body.
/// `headers` each end in CRLF.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("an answer within a minute")
        .expect("read");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a header end");
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
    (status, response[split + 4..].to_vec())
}

/// A call to the admin endpoint of the node whose state directory is
/// `dir`, with the token and port it keeps there.
pub async fn admin(dir: &std::path::Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let token = std::fs::read_to_string(dir.join(consensus::admin::TOKEN_FILE)).expect("token");
    let port: u16 = std::fs::read_to_string(dir.join(consensus::admin::PORT_FILE))
        .expect("port file")
        .trim()
        .parse()
        .expect("a port");
    http(port, method, path, &format!("Authorization: Bearer {}\r\n", token.trim()), body).await
}

/// [`admin`] with a JSON answer.
pub async fn admin_json(
    dir: &std::path::Path,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (status, body) = admin(dir, method, path, &body).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!("{path} answered {status} with non-JSON {:?}: {e}", String::from_utf8_lossy(&body))
    });
    (status, value)
}
