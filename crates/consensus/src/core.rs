//! What every concern of a node shares: its raft id and tag, the command
//! service (and through it the raft node), the tailnet view, the
//! configuration, the counters, whether it stopped, and its background
//! tasks. Each concern (bootstrap, membership, monitor, admin, …) takes a
//! [`Core`] beside its own part; only `crate::node` knows every part.
//! This module imports no concern.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cmd_rpc::CommandService;
use raft_core::{NodeId, RaftNode};
use tokio::task::JoinHandle;
use ts_discovery::{ClusterView, Discovery};

use crate::config::Config;
use crate::error::Error;
use crate::machine::{Adapter, StateMachine};
use crate::metrics::Counters;
use crate::report::{Member, members_of};

pub(crate) struct Core<S: StateMachine> {
    pub(crate) id: NodeId,
    pub(crate) tag: String,
    pub(crate) service: Arc<CommandService<Adapter<S>>>,
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) config: Config,
    /// What `/metrics` counts here (crate::metrics).
    pub(crate) counters: Arc<Counters>,
    stopped: AtomicBool,
    /// The background tasks the node aborts when it stops.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: StateMachine> Core<S> {
    pub(crate) fn new(
        id: NodeId,
        tag: String,
        service: Arc<CommandService<Adapter<S>>>,
        discovery: Arc<dyn Discovery>,
        config: Config,
        counters: Arc<Counters>,
    ) -> Core<S> {
        Core {
            id,
            tag,
            service,
            discovery,
            config,
            counters,
            stopped: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn raft(&self) -> &Arc<RaftNode<Adapter<S>>> {
        self.service.node()
    }

    pub(crate) fn view(&self) -> Option<Arc<ClusterView>> {
        self.discovery.current()
    }

    /// Every member with its role, tags and liveness.
    pub(crate) fn members(&self) -> Vec<Member> {
        members_of(&self.raft().metrics(), self.view().as_deref(), self.id)
    }

    /// The view, if it is fresh enough to act on.
    pub(crate) fn fresh_view(&self) -> Option<Arc<ClusterView>> {
        let state = self.discovery.state().borrow().clone();
        if state.is_stale(self.config.timing.max_staleness) { None } else { state.view }
    }

    /// Refuses calls on a stopped node, or on one stopped by a fatal error.
    pub(crate) fn check_running(&self) -> Result<(), Error> {
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        match self.raft().fatal() {
            Some(why) => Err(Error::fatal(why)),
            None => Ok(()),
        }
    }

    /// Whether the node stopped (or is stopping).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Marks the node stopped; whether it was already.
    pub(crate) fn stop(&self) -> bool {
        self.stopped.swap(true, Ordering::AcqRel)
    }
}
