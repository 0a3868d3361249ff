//! A running consensus node: the handle users hold.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmd_rpc::{
    Caller, CommandClient, CommandConfig, CommandServer, CommandService, ConfirmFuture,
    ConfirmRequest, Peers, ProbeFuture, ProbeRequest, ReadRequest, RemoveRequest,
};
use raft_core::{NodeId, NodeInfo, RaftConfig, RaftNode, Storage};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use ts_discovery::{ClusterView, Discovery};
use ts_transport::{PeerAddr, Transport};

use crate::admin::Admin;
use crate::bootstrap::Boot;
use crate::config::{BootstrapOptions, Config};
use crate::core::Core;
use crate::error::Error;
use crate::machine::{Adapter, StateMachine, decode_answer};
use crate::membership::Membership;
use crate::metrics::{Counters, CountingTransport, Port};
use crate::monitor::Monitor;
use crate::operation::{Operation, SessionPool};
use crate::report::{Member, Metrics, metrics_of};
use crate::view::tagged_online;
use crate::{admin, campaign, membership, monitor};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every command acknowledged before the read began (asks the
    /// leader to confirm its leadership; one round trip).
    Linearizable,
    /// Whatever this node has applied; may be behind.
    Local,
}

/// Whether to stay in the configuration when stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Stay a member: the node is expected back (a restart, an upgrade).
    Stay,
    /// Leave the configuration first, so the cluster no longer counts it.
    Leave,
}

/// A node's parts: what every concern shares ([`Core`]) and each
/// concern's own state. Only this module knows them all; the concerns take
/// the core and their own part, and their background tasks hold them
/// weakly, so that they end once the node is gone.
pub(crate) struct Inner<S: StateMachine> {
    pub(crate) core: Arc<Core<S>>,
    sessions: Arc<SessionPool>,
    command_server: Mutex<Option<CommandServer>>,
    /// The monitor's servers and what its refresher learns (crate::monitor).
    monitor: Arc<Monitor>,
    /// Whether the node started its discovery itself (and stops it).
    owns_discovery: AtomicBool,
    /// What the leader's membership reconciler keeps between rounds
    /// (crate::membership).
    pub(crate) membership: Arc<Membership>,
    /// The bootstrap lock: the promise this node holds and the cluster it
    /// forms; answering probes and confirms, granting, binding, joining and
    /// forming happen under it (crate::bootstrap).
    boot: Boot,
    /// The operator's endpoint and the restores staged through it
    /// (crate::admin).
    admin: Arc<Admin>,
}

/// What the command API asks the facade about callers, answered from the
/// tailnet view, and the bootstrap probe and confirm, answered by the
/// bootstrap part ([`Boot::probe`], [`Boot::confirm`]).
struct FacadePeers<S: StateMachine> {
    raft: Arc<RaftNode<Adapter<S>>>,
    discovery: Arc<dyn Discovery>,
    max_staleness: Duration,
    boot: Boot,
}

impl<S: StateMachine> Peers for FacadePeers<S> {
    fn caller(&self, ip: IpAddr) -> Option<Caller> {
        let view = self.discovery.current()?;
        let ip = ip.to_canonical();
        let node = if view.self_node.addrs().any(|own| own == ip) {
            &view.self_node
        } else {
            view.member_by_addr(ip)?
        };
        Some(Caller { stable_id: node.id.0.clone(), addrs: node.addrs().collect() })
    }

    fn removal_keeps_quorum(
        &self,
        id: NodeId,
        metrics: &raft_core::NodeMetrics,
    ) -> Result<(), String> {
        membership::removal_keeps_quorum(
            self.raft.id(),
            &self.raft.info().stable_id,
            &*self.discovery,
            self.max_staleness,
            id,
            metrics,
        )
    }

    fn tagged_online(&self, stable_id: &str) -> bool {
        let state = self.discovery.state().borrow().clone();
        match state.view {
            // Fail closed: with an old view, everyone counts as present.
            Some(_) if state.is_stale(self.max_staleness) => true,
            Some(view) => tagged_online(&view, stable_id),
            None => true,
        }
    }

    fn probe<'a>(&'a self, caller: &'a Caller, request: &'a ProbeRequest) -> ProbeFuture<'a> {
        Box::pin(self.boot.probe(&self.raft, &*self.discovery, self.max_staleness, caller, request))
    }

    fn confirm<'a>(&'a self, caller: &'a Caller, request: &'a ConfirmRequest) -> ConfirmFuture<'a> {
        Box::pin(self.boot.confirm(
            &self.raft,
            &*self.discovery,
            self.max_staleness,
            caller,
            request,
        ))
    }
}

/// A consensus node. Cloning gives another handle to the same node.
///
/// Without Tailscale, a node runs on any [`Transport`](crate::Transport)
/// and [`Discovery`](crate::Discovery): here a one-node cluster on the
/// in-memory transport.
///
/// ```
/// use std::collections::BTreeSet;
/// use std::io::{self, Read, Write};
/// use std::net::Ipv4Addr;
/// use std::sync::Arc;
///
/// use consensus::{
///     BootstrapOptions, ClusterView, Config, Consensus, Consistency, MemNetwork, StableNodeId,
///     StateMachine, StaticDiscovery, StopMode, TailnetNode,
/// };
///
/// /// Commands add to a counter; the query reads it.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     type Command = u64;
///     type Response = u64;
///     type Query = ();
///     type QueryResponse = u64;
///
///     fn apply(&mut self, n: u64) -> u64 {
///         self.0 += n;
///         self.0
///     }
///     fn query(&self, _: &()) -> u64 {
///         self.0
///     }
///     fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
///         out.write_all(&self.0.to_le_bytes())
///     }
///     fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
///         let mut bytes = [0u8; 8];
///         input.read_exact(&mut bytes)?;
///         self.0 = u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), consensus::Error> {
/// let tag = "tag:counter";
/// let address = Ipv4Addr::new(10, 0, 0, 1);
/// let me = TailnetNode {
///     id: StableNodeId("node-1".to_owned()),
///     hostname: "node-1".to_owned(),
///     dns_name: String::new(),
///     ipv4: Some(address),
///     ipv6: None,
///     tags: BTreeSet::from([tag.to_owned()]),
///     online: true,
///     has_path: true,
/// };
/// let network = MemNetwork::new();
/// let node = Consensus::start_with(
///     Arc::new(network.node(address.into())),
///     Arc::new(StaticDiscovery::new(ClusterView::new(tag, me, []))),
///     Counter::default(),
///     BootstrapOptions::new(tag),
///     Config { monitor_port: None, ..Config::default() },
/// )
/// .await?;
/// assert_eq!(node.execute(2).await?, 2);
/// assert_eq!(node.execute(3).await?, 5);
/// assert_eq!(node.read((), Consistency::Linearizable).await?, 5);
/// node.stop(StopMode::Stay).await?;
/// # Ok(())
/// # }
/// ```
pub struct Consensus<S: StateMachine> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for Consensus<S> {
    fn clone(&self) -> Self {
        Consensus { inner: self.inner.clone() }
    }
}

/// The facade's error for a raft node that could not start, with the raft
/// error underneath as its source (and, through it, the `std::io::Error`
/// or storage error it came from).
fn start_error(err: raft_core::StartError) -> Error {
    use raft_core::StartError;
    match err {
        StartError::Config(ref why) => Error::invalid_from(why.clone(), err),
        StartError::Storage { ref message, .. } | StartError::Identity(ref message) => {
            Error::storage_from(message.clone(), err)
        }
        other => Error::network_from(other.to_string(), other),
    }
}

fn raft_config(config: &Config) -> RaftConfig {
    RaftConfig {
        heartbeat_interval: config.timing.heartbeat,
        election_timeout: config.timing.election,
        snapshot_every: config.snapshot_every,
        sessions: config.sessions,
        ..RaftConfig::default()
    }
}

fn command_config(config: &Config) -> CommandConfig {
    CommandConfig { default_deadline: config.timing.call_deadline, ..CommandConfig::default() }
}

/// Waits for the first view of the tailnet.
async fn first_view(
    discovery: &dyn Discovery,
    timeout: Duration,
) -> Result<Arc<ClusterView>, Error> {
    let mut state = discovery.state();
    let waited = tokio::time::timeout(timeout, async {
        loop {
            if let Some(view) = state.borrow_and_update().view.clone() {
                return Ok(view);
            }
            if state.changed().await.is_err() {
                return Err(Error::network("discovery stopped"));
            }
        }
    })
    .await;
    match waited {
        Ok(result) => result,
        Err(_) => Err(Error::network(match &state.borrow().last_error {
            Some(err) => format!("no view of the tailnet within {timeout:?}: {err}"),
            None => format!("no view of the tailnet within {timeout:?}"),
        })),
    }
}

impl<S: StateMachine> Consensus<S> {
    /// Starts a consensus node on a Tailscale node that is up. Peers are the
    /// tailnet nodes carrying `bootstrap.tag`.
    #[cfg(feature = "tailscale")]
    pub async fn start_on_tailnet(
        node: &ts_transport::tsnet::TsnetTransport,
        state_machine: S,
        bootstrap: BootstrapOptions,
        config: Config,
    ) -> Result<Consensus<S>, Error> {
        use ts_discovery::{LocalApi, LocalApiLimits, TailnetDiscovery, TailnetDiscoveryConfig};
        let api = LocalApi::for_node(node, LocalApiLimits::default())
            .map_err(|e| Error::network_from(e.to_string(), e))?;
        let discovery = Arc::new(TailnetDiscovery::start(
            api,
            TailnetDiscoveryConfig::new(bootstrap.tag.clone()),
        ));
        let transport: Arc<dyn Transport> = Arc::new(node.clone());
        match Consensus::start_with(transport, discovery.clone(), state_machine, bootstrap, config)
            .await
        {
            Ok(consensus) => {
                consensus.inner.owns_discovery.store(true, Ordering::Release);
                Ok(consensus)
            }
            Err(err) => {
                discovery.stop();
                Err(err)
            }
        }
    }

    /// Starts a consensus node on any transport, with any discovery source
    /// (for example `MemTransport` with `StaticDiscovery` in tests).
    pub async fn start_with(
        transport: Arc<dyn Transport>,
        discovery: Arc<dyn Discovery>,
        state_machine: S,
        bootstrap: BootstrapOptions,
        config: Config,
    ) -> Result<Consensus<S>, Error> {
        if bootstrap.tag.is_empty() {
            return Err(Error::invalid("the cluster tag must not be empty"));
        }
        if bootstrap.expected_size == 0 {
            return Err(Error::invalid("expected_size must be at least 1"));
        }
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let transport = CountingTransport::wrap(transport, counters.clone());
        let view = first_view(&*discovery, config.timing.start_timeout).await?;
        if !view.self_tagged() {
            return Err(Error::NotTagged { tag: bootstrap.tag.clone() });
        }
        let self_node = NodeInfo {
            stable_id: view.self_node.id.0.clone(),
            addrs: view.self_node.addrs().collect(),
            raft_port: config.raft_port,
            command_port: config.command_port,
        };
        let authorizer = discovery.authorizer(config.timing.max_staleness);
        // One authorizer per port, each counting its refusals.
        let authorize_on = |port: Port| -> Arc<dyn Fn(PeerAddr) -> bool + Send + Sync> {
            let authorizer = authorizer.clone();
            let counters = counters.clone();
            Arc::new(move |peer: PeerAddr| {
                let allowed = authorizer.allows_peer(peer);
                if !allowed {
                    counters.refused(port);
                }
                allowed
            })
        };
        let authorize = authorize_on(Port::Command);
        // The raft port serves a peer only as the node that owns its
        // address, and counts its refusals like the others.
        let identify: raft_core::Identify = {
            let authorizer = authorizer.clone();
            let counters = counters.clone();
            Arc::new(move |peer: PeerAddr| {
                let owner = authorizer.owner(peer.ip());
                if owner.is_none() {
                    counters.refused(Port::Raft);
                }
                owner
            })
        };
        let mut storage = match &config.state_dir {
            Some(dir) => Storage::Durable(dir.clone()),
            None => Storage::Memory,
        };
        if let Some(faults) = &config.storage_faults {
            storage = storage.with_faults(faults.clone());
        }
        let raft = RaftNode::start(
            self_node.clone(),
            transport.clone(),
            storage,
            Adapter(state_machine),
            identify,
            raft_config(&config),
        )
        .await
        .map_err(start_error)?;
        let id = raft.id();
        let raft = Arc::new(raft);
        let boot = Boot::default();
        let peers = FacadePeers {
            raft: raft.clone(),
            discovery: discovery.clone(),
            max_staleness: config.timing.max_staleness,
            boot: boot.clone(),
        };
        let commands = command_config(&config);
        let service = Arc::new(CommandService::new(
            raft,
            CommandClient::new(transport.clone(), commands.clone())
                .authorized_by(authorize.clone()),
            commands.clone(),
            Arc::new(peers),
        ));
        let listener = match transport.listen(config.command_port).await {
            Ok(listener) => Arc::from(listener),
            Err(err) => {
                shutdown_service(service).await;
                let message =
                    format!("cannot listen on command port {}: {err}", config.command_port);
                return Err(Error::network_from(message, err));
            }
        };
        let command_server =
            CommandServer::start(listener, service.clone(), authorize.clone(), commands);
        let core = Core::new(
            id,
            bootstrap.tag.clone(),
            service,
            discovery,
            config.clone(),
            counters.clone(),
        );
        let inner = Arc::new(Inner {
            core: Arc::new(core),
            sessions: Arc::default(),
            command_server: Mutex::new(Some(command_server)),
            monitor: Arc::default(),
            owns_discovery: AtomicBool::new(false),
            membership: Arc::default(),
            boot,
            admin: Arc::default(),
        });
        let consensus = Consensus { inner };
        let (inner, core) = (&consensus.inner, &consensus.inner.core);
        // From before the bootstrap, so that the first election counts.
        let leadership = tokio::spawn(crate::metrics::follow_leadership(
            core.counters.clone(),
            core.raft().subscribe_leadership(),
        ));
        core.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(leadership);
        let remaining = config.timing.start_timeout.saturating_sub(started.elapsed());
        if let Err(err) = crate::bootstrap::run(core, &inner.boot, &bootstrap, remaining).await {
            consensus.shutdown_all().await;
            return Err(err);
        }
        // Membership follows tags; the leader acts on it.
        let reconciler = tokio::spawn(membership::reconcile_loop(
            Arc::downgrade(core),
            inner.membership.clone(),
        ));
        // A node whose tag is revoked stops campaigning until a leader takes
        // it back.
        let guard = tokio::spawn(campaign::guard_loop(Arc::downgrade(core)));
        core.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([reconciler, guard]);
        if let Err(err) =
            monitor::start(core, &inner.monitor, transport, authorize_on(Port::Monitor)).await
        {
            consensus.shutdown_all().await;
            return Err(err);
        }
        if let Err(err) = admin::start(core, &inner.admin, &inner.monitor).await {
            consensus.shutdown_all().await;
            return Err(err);
        }
        tracing::info!(id, tag = %bootstrap.tag, "consensus node started");
        Ok(consensus)
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.inner.core.id
    }

    fn check_running(&self) -> Result<(), Error> {
        self.inner.core.check_running()
    }

    /// Executes a command: it is applied on every member in the same order,
    /// exactly once, and this answers with the leader's result.
    ///
    /// After [`Error::NotApplied`] or [`Error::NoLeader`] the command was
    /// not applied, and executing it again is safe. After most other
    /// errors ([`Error::Timeout`], [`Error::OutcomeUnknown`],
    /// [`Error::Stopped`], …) it may or may not have been applied; calling
    /// `execute` again would execute it again, as a new command. To retry
    /// one command until its outcome is known, use [`Consensus::prepare`].
    pub async fn execute(&self, command: S::Command) -> Result<S::Response, Error> {
        self.execute_within(command, self.inner.core.config.timing.call_deadline).await
    }

    /// [`Consensus::execute`] with its own deadline.
    pub async fn execute_within(
        &self,
        command: S::Command,
        deadline: Duration,
    ) -> Result<S::Response, Error> {
        self.prepare(command)?.execute_within(deadline).await
    }

    /// Prepares `command` for exactly-once execution: the [`Operation`]
    /// keeps its session, sequence number and encoding, so
    /// [`Operation::execute`] can be called again after any error and the
    /// command is still applied at most once.
    pub fn prepare(&self, command: S::Command) -> Result<Operation<S>, Error> {
        self.check_running()?;
        let json = serde_json::to_string(&command)
            .map_err(|e| Error::invalid_from(format!("command does not encode: {e}"), e))?;
        let command =
            RawValue::from_string(json).map_err(|e| Error::invalid_from(e.to_string(), e))?;
        let inner = &self.inner;
        Ok(Operation::new(inner.core.clone(), inner.sessions.clone(), inner.clone(), command))
    }

    /// Answers a query from the state machine.
    pub async fn read(
        &self,
        query: S::Query,
        consistency: Consistency,
    ) -> Result<S::QueryResponse, Error> {
        self.check_running()?;
        let json = serde_json::to_string(&query)
            .map_err(|e| Error::invalid_from(format!("query does not encode: {e}"), e))?;
        let request = ReadRequest {
            query: RawValue::from_string(json)
                .map_err(|e| Error::invalid_from(e.to_string(), e))?,
            consistency: match consistency {
                Consistency::Linearizable => cmd_rpc::Consistency::Linearizable,
                Consistency::Local => cmd_rpc::Consistency::Local,
            },
        };
        let deadline = Instant::now() + self.inner.core.config.timing.call_deadline;
        let response = self.inner.core.service.read(&request, deadline).await?;
        decode_answer(response.result.get())
    }

    /// The leader, if one is known.
    pub fn leader(&self) -> Option<Member> {
        self.members().into_iter().find(|m| m.leader)
    }

    /// Every member with its role, tags and liveness.
    pub fn members(&self) -> Vec<Member> {
        self.inner.core.members()
    }

    /// Asks the leader to remove a member from the configuration.
    ///
    /// The leader allows it for this node itself (or an old incarnation of
    /// it), and for a member its tailnet view shows offline or untagged;
    /// never for the leader by another node, nor for a member that is
    /// tagged and online: membership follows tags, so revoke its tag, or
    /// stop it with [`StopMode::Leave`], to take it out.
    pub async fn remove_member(&self, id: u64) -> Result<(), Error> {
        self.check_running()?;
        let deadline = Instant::now() + self.inner.core.config.timing.call_deadline;
        self.inner
            .core
            .service
            .remove_via_leader(&RemoveRequest { id }, deadline)
            .await
            .map_err(Error::from)
    }

    /// This node's metrics now.
    pub fn metrics(&self) -> Metrics {
        metrics_of(&self.inner.core.raft().metrics())
    }

    /// Metrics as they change.
    pub fn watch(&self) -> watch::Receiver<Metrics> {
        let mut source = self.inner.core.raft().subscribe();
        let (tx, rx) = watch::channel(metrics_of(&source.borrow()));
        tokio::spawn(async move {
            while source.changed().await.is_ok() {
                if tx.send(metrics_of(&source.borrow_and_update())).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Waits, at most `timeout`, until `condition` holds for the metrics;
    /// then [`Error::Timeout`], with the metrics of that moment.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics, Error> {
        self.inner
            .core
            .raft()
            .wait_for(timeout, |m| condition(&metrics_of(m)))
            .await
            .map(|m| metrics_of(&m))
            .map_err(|m| {
                Error::Timeout(format!(
                    "wait_for: the metrics condition was not met within {timeout:?}; metrics \
                     now {:?}",
                    metrics_of(&m)
                ))
            })
    }

    /// The port of the admin endpoint on 127.0.0.1, if it is served
    /// ([`Config::admin_port`]).
    pub fn admin_port(&self) -> Option<u16> {
        self.inner.admin.port()
    }

    /// Hands this node's leadership to `to` (a voter's raft id), or to the
    /// most caught-up other voter; answers the new leader's id. Only the
    /// leader can: elsewhere this answers [`Error::Invalid`] naming the
    /// leader. openraft 0.9 has no leadership transfer; this is the closest
    /// safe equivalent (docs/operations.md): the leader holds its log
    /// still (no heartbeats, no new entries; commands wait and then go to
    /// the new leader) until the target has every entry and the other
    /// voters' leader leases have run out, then asks the target to start an
    /// election. Raft's voting rules keep it safe; if another node wins,
    /// or nobody does before the deadline, the answer says so and the
    /// leader's hold ends either way.
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64, Error> {
        self.check_running()?;
        let deadline = Instant::now() + self.inner.core.config.timing.call_deadline;
        crate::transfer::transfer(&self.inner.core, to, deadline)
            .await
            .map(|report| report.leader)
            .map_err(Error::from)
    }

    /// The port of the localhost monitor (`http://127.0.0.1:<port>/`), if
    /// it is served.
    pub fn monitor_localhost_port(&self) -> Option<u16> {
        self.inner.monitor.localhost_port()
    }

    /// Stops the node. With [`StopMode::Leave`] it first leaves the
    /// configuration (through the leader). Every background task ends.
    pub async fn stop(self, mode: StopMode) -> Result<(), Error> {
        let mut result = Ok(());
        if mode == StopMode::Leave && !self.inner.core.is_stopped() {
            // Stop answering peers first, so that the leader cannot add
            // this node back between its removal and its stop.
            let server = self.inner.command_server.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(server) = server {
                server.shutdown().await;
            }
            let deadline = Instant::now() + self.inner.core.config.timing.call_deadline;
            if let Err(err) = self
                .inner
                .core
                .service
                .remove_via_leader(&RemoveRequest { id: self.inner.core.id }, deadline)
                .await
            {
                result = Err(Error::from(err));
            }
        }
        self.shutdown_all().await;
        result
    }

    async fn shutdown_all(&self) {
        if self.inner.core.stop() {
            return;
        }
        let tasks: Vec<_> =
            self.inner.core.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.inner.admin.shutdown().await;
        self.inner.monitor.shutdown().await;
        let server = self.inner.command_server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.shutdown().await;
        }
        self.inner.core.raft().shutdown().await;
        if self.inner.owns_discovery.load(Ordering::Acquire) {
            self.inner.core.discovery.stop();
        }
        tracing::info!(id = self.inner.core.id, "consensus node stopped");
    }
}

async fn shutdown_service<S: StateMachine>(service: Arc<CommandService<Adapter<S>>>) {
    service.node().shutdown().await;
}
