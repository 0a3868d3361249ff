//! An in-memory cluster of the facade: nodes on a `MemNetwork`, each seeing
//! the others in a `StaticDiscovery` view, with fast timings.
//!
//! [`Tailnet`] describes the nodes (names, addresses, the tag) and builds
//! their views; [`start_node`] starts one; [`MemCluster`] starts them all
//! at once, waits for a leader, and stops them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use consensus::{BootstrapOptions, Config, Consensus, Error, StateMachine, StopMode};
use ts_discovery::{ClusterView, StableNodeId, StaticDiscovery, TailnetNode};
use ts_transport::MemNetwork;

/// How long a cluster may take to elect a leader.
pub const WAIT: Duration = Duration::from_secs(20);

/// The tag of [`Tailnet::of`]'s nodes.
pub const TAG: &str = "tag:c";

/// The address of node `i` of a [`Tailnet`] on `subnet`:
/// `10.<subnet>.0.<i + 1>`.
pub fn ip(subnet: u8, i: usize) -> IpAddr {
    IpAddr::V4(ipv4(subnet, i))
}

fn ipv4(subnet: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, subnet, 0, i as u8 + 1)
}

/// Node `i` on `subnet` (at [`ip`]) as the tailnet shows it: carrying
/// `tag`, online, with a path.
pub fn tailnet_node(tag: &str, subnet: u8, i: usize, id: &str, hostname: &str) -> TailnetNode {
    TailnetNode {
        id: StableNodeId(id.to_owned()),
        hostname: hostname.to_owned(),
        dns_name: String::new(),
        ipv4: Some(ipv4(subnet, i)),
        ipv6: None,
        tags: BTreeSet::from([tag.to_owned()]),
        online: true,
        has_path: true,
    }
}

/// The nodes of an in-memory tailnet: node `i` at `10.<subnet>.0.<i + 1>`,
/// tagged with the tag, online, with a path.
#[derive(Clone, Debug)]
pub struct Tailnet {
    tag: String,
    subnet: u8,
    /// Stable id and hostname of each node.
    names: Vec<(String, String)>,
}

impl Tailnet {
    /// `n` nodes tagged [`TAG`] on subnet 0: what most tests need.
    pub fn of(n: usize) -> Tailnet {
        Tailnet::new(TAG, 0, n)
    }

    /// `n` nodes with stable ids `n<i>` and hostnames `host-<i>`.
    pub fn new(tag: &str, subnet: u8, n: usize) -> Tailnet {
        Tailnet::with_names(tag, subnet, (0..n).map(|i| (format!("n{i}"), format!("host-{i}"))))
    }

    /// One node per name, used as its stable id and its hostname.
    pub fn named(tag: &str, subnet: u8, names: &[&str]) -> Tailnet {
        Tailnet::with_names(tag, subnet, names.iter().map(|n| ((*n).to_owned(), (*n).to_owned())))
    }

    /// One node per (stable id, hostname).
    pub fn with_names(
        tag: &str,
        subnet: u8,
        names: impl IntoIterator<Item = (String, String)>,
    ) -> Tailnet {
        Tailnet { tag: tag.to_owned(), subnet, names: names.into_iter().collect() }
    }

    /// The tag every node carries.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Node `i`'s hostname.
    pub fn hostname(&self, i: usize) -> &str {
        &self.names[i].1
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> IpAddr {
        ip(self.subnet, i)
    }

    /// Node `i` as the tailnet shows it: tagged, online, with a path.
    pub fn node(&self, i: usize) -> TailnetNode {
        let (id, hostname) = &self.names[i];
        tailnet_node(&self.tag, self.subnet, i, id, hostname)
    }

    /// Node `me`'s view: every other node, those in `offline` shown
    /// offline.
    pub fn view(&self, me: usize, offline: &[usize]) -> ClusterView {
        let peers = (0..self.len())
            .filter(|&j| j != me)
            .map(|j| TailnetNode { online: !offline.contains(&j), ..self.node(j) });
        ClusterView::new(&self.tag, self.node(me), peers)
    }

    /// A discovery that shows node `me` [`Tailnet::view`] with every node
    /// online (the caller may change it later).
    pub fn discovery(&self, me: usize) -> Arc<StaticDiscovery> {
        Arc::new(StaticDiscovery::new(self.view(me, &[])))
    }

    /// How a node of this tailnet starts: forming with `expected_size`
    /// tagged nodes, or joining.
    pub fn bootstrap(&self, expected_size: usize) -> BootstrapOptions {
        BootstrapOptions { tag: self.tag.clone(), follow_only: false, expected_size }
    }
}

/// Starts node `i` of `tailnet` on `net`, seeing what `discovery` shows,
/// expecting `expected_size` nodes to form the cluster.
pub async fn start_node<S: StateMachine>(
    net: &MemNetwork,
    tailnet: &Tailnet,
    i: usize,
    discovery: Arc<StaticDiscovery>,
    machine: S,
    expected_size: usize,
    config: Config,
) -> Result<Consensus<S>, Error> {
    let transport = Arc::new(net.node(tailnet.ip(i)));
    Consensus::start_with(transport, discovery, machine, tailnet.bootstrap(expected_size), config)
        .await
}

/// Waits until each of `nodes` counts `voters` voters and knows a leader.
pub async fn wait_for_leader<'a, S: StateMachine>(
    nodes: impl IntoIterator<Item = &'a Consensus<S>>,
    voters: usize,
) {
    for node in nodes {
        node.wait_for(WAIT, |m| m.voters == voters && m.leader.is_some())
            .await
            .unwrap_or_else(|e| panic!("node {}: no leader of {voters} voters: {e}", node.id()));
    }
}

/// The index of the node that leads among `nodes` (`None`: stopped), as
/// the first running one sees it.
pub fn leader_of<S: StateMachine>(nodes: &[Option<Consensus<S>>]) -> usize {
    let first = nodes.iter().flatten().next().expect("a running node");
    let id = first.metrics().leader.expect("a leader is known");
    nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.id() == id))
        .expect("the leader is one of the nodes")
}

/// Every node of a [`Tailnet`] on one in-memory network: started at once
/// ([`MemCluster::start`]), or one by one ([`MemCluster::new`], then
/// [`MemCluster::start_one`]).
pub struct MemCluster<S: StateMachine> {
    /// The network.
    pub net: MemNetwork,
    /// The nodes' names and addresses.
    pub tailnet: Tailnet,
    /// Each node's discovery, which the test may change.
    pub discovery: Vec<Arc<StaticDiscovery>>,
    /// The nodes; `None` while stopped.
    pub nodes: Vec<Option<Consensus<S>>>,
    /// Each node's state directory ([`MemCluster::start_durable`]; empty
    /// otherwise).
    pub dirs: Vec<PathBuf>,
    /// How the tailnet shows each node now ([`MemCluster::show`]); `None`:
    /// deleted from it.
    shown: Vec<Option<TailnetNode>>,
    temp: Option<tempfile::TempDir>,
}

impl<S: StateMachine + Default> MemCluster<S> {
    /// Starts every node of `tailnet` at once, node `i` with `config(i)`
    /// and a fresh state machine, and waits until they agree on a leader.
    pub async fn start(tailnet: Tailnet, config: impl Fn(usize) -> Config) -> MemCluster<S> {
        MemCluster::start_in(tailnet, None, config).await
    }

    /// [`MemCluster::start`] with durable state: node `i` runs with
    /// `config(i, dir)`, its state directory named after its hostname in a
    /// temporary directory that lives as long as the cluster.
    pub async fn start_durable(
        tailnet: Tailnet,
        config: impl Fn(usize, &Path) -> Config,
    ) -> MemCluster<S> {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dirs: Vec<PathBuf> =
            (0..tailnet.len()).map(|i| temp.path().join(tailnet.hostname(i))).collect();
        let mut cluster = MemCluster::start_in(tailnet, Some(temp), |i| config(i, &dirs[i])).await;
        cluster.dirs = dirs;
        cluster
    }

    /// Starts node `i` (on its state directory, if `config` has one) with
    /// a fresh state machine, expecting every node of the tailnet to form
    /// the cluster; a node still running in its place is dropped.
    pub async fn start_one(&mut self, i: usize, config: Config) {
        let started = self.try_start_one(i, config).await;
        started.unwrap_or_else(|e| panic!("node {i} starts: {e}"));
    }

    /// [`MemCluster::start_one`], answering the start's error.
    pub async fn try_start_one(&mut self, i: usize, config: Config) -> Result<(), Error> {
        let node = start_node(
            &self.net,
            &self.tailnet,
            i,
            self.discovery[i].clone(),
            S::default(),
            self.tailnet.len(),
            config,
        )
        .await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    async fn start_in(
        tailnet: Tailnet,
        temp: Option<tempfile::TempDir>,
        config: impl Fn(usize) -> Config,
    ) -> MemCluster<S> {
        let mut cluster = MemCluster::new(tailnet);
        cluster.temp = temp;
        let n = cluster.tailnet.len();
        let mut starting = Vec::new();
        for (i, view) in cluster.discovery.iter().enumerate() {
            let (net, tailnet, view, config) =
                (cluster.net.clone(), cluster.tailnet.clone(), view.clone(), config(i));
            starting.push(tokio::spawn(async move {
                start_node(&net, &tailnet, i, view, S::default(), n, config).await
            }));
        }
        for (i, task) in starting.into_iter().enumerate() {
            let node = task.await.expect("start task");
            cluster.nodes[i] = Some(node.unwrap_or_else(|e| panic!("node {i}: {e}")));
        }
        wait_for_leader(cluster.running(), n).await;
        cluster
    }

    /// Starts node `i` again (on its state directory, if `config` has
    /// one) with a fresh state machine.
    pub async fn restart(&mut self, i: usize, config: Config) {
        self.start_one(i, config).await;
    }
}

impl<S: StateMachine> MemCluster<S> {
    /// The nodes of `tailnet` on a new in-memory network, each with its
    /// discovery, none started yet.
    pub fn new(tailnet: Tailnet) -> MemCluster<S> {
        let discovery = (0..tailnet.len()).map(|i| tailnet.discovery(i)).collect();
        let nodes = (0..tailnet.len()).map(|_| None).collect();
        let shown = (0..tailnet.len()).map(|i| Some(tailnet.node(i))).collect();
        MemCluster {
            net: MemNetwork::new(),
            tailnet,
            discovery,
            nodes,
            dirs: Vec::new(),
            shown,
            temp: None,
        }
    }

    /// Changes how the tailnet shows node `i` (`None`: deleted from it),
    /// and tells every node still in it.
    pub fn show(&mut self, i: usize, node: Option<TailnetNode>) {
        let everyone: Vec<usize> = (0..self.tailnet.len()).collect();
        self.show_to(i, node, &everyone);
    }

    /// [`MemCluster::show`], told only to the nodes in `seen_by` (netmaps
    /// reach nodes at different times).
    pub fn show_to(&mut self, i: usize, node: Option<TailnetNode>, seen_by: &[usize]) {
        self.shown[i] = node;
        for &j in seen_by {
            if let Some(me) = &self.shown[j] {
                let peers =
                    (0..self.shown.len()).filter(|&k| k != j).filter_map(|k| self.shown[k].clone());
                self.discovery[j].set(ClusterView::new(self.tailnet.tag(), me.clone(), peers));
            }
        }
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> IpAddr {
        self.tailnet.ip(i)
    }

    /// The temporary directory that holds the state directories (of a
    /// cluster from [`MemCluster::start_durable`]), for other files too.
    pub fn temp_dir(&self) -> &Path {
        self.temp.as_ref().expect("a durable cluster").path()
    }

    /// Node `i`, which must be running.
    pub fn node(&self, i: usize) -> &Consensus<S> {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("node {i} is stopped"))
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &Consensus<S>> {
        self.nodes.iter().flatten()
    }

    /// The index of the node that leads.
    pub fn leader(&self) -> usize {
        leader_of(&self.nodes)
    }

    /// Stops node `i` (it stays a member).
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.stop(StopMode::Stay).await.unwrap_or_else(|e| panic!("node {i} stops: {e}"));
        }
    }

    /// Stops every running node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
        drop(self.temp.take());
    }
}
