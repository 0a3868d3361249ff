//! A small harness for the facade's tests: nodes on a `MemNetwork`, every
//! node tagged and online in a static tailnet view, a counter state machine
//! that records what it applied, and fast timings.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]
#![allow(unreachable_pub, reason = "shared between test binaries as a module")]

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Config, Consensus, StateMachine};
use serde::{Deserialize, Serialize};
use test_support::cluster::{self, Tailnet};
pub use test_support::fast_config;
use ts_discovery::{ClusterView, StaticDiscovery};
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
    cluster::ip(0, i)
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

    /// The nodes' names and addresses.
    pub fn tailnet(&self) -> Tailnet {
        Tailnet::new(TAG, 0, self.n)
    }

    /// Node `me`'s view of the tailnet, with the nodes in `offline` shown
    /// offline.
    pub fn view_with_offline(&self, me: usize, offline: &[usize]) -> ClusterView {
        self.tailnet().view(me, offline)
    }

    /// Starts node `i` with `config`, expecting `n` nodes to form the cluster.
    pub async fn start(&self, i: usize, config: Config) -> Consensus<Tally> {
        self.start_on(i, config, self.tailnet().discovery(i)).await
    }

    /// [`World::start`] with a discovery the caller keeps (to change the
    /// node's view).
    pub async fn start_on(
        &self,
        i: usize,
        config: Config,
        discovery: Arc<StaticDiscovery>,
    ) -> Consensus<Tally> {
        cluster::start_node(
            &self.net,
            &self.tailnet(),
            i,
            discovery,
            Tally::default(),
            self.n,
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
        cluster::wait_for_leader(&nodes, self.n).await;
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
