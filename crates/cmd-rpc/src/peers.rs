//! What the command API learns from the layer above about the nodes that
//! call it: who owns an address, who is tagged and online, and how to
//! answer a bootstrap probe. cmd-rpc does not know where the answers come
//! from (the facade answers from its tailnet view).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use raft_core::{NodeId, NodeInfo, NodeMetrics, node_id};

use crate::api::{ConfirmRequest, ConfirmResponse, ProbeRequest, ProbeResponse};
use crate::error::RpcError;

/// Longest stable id accepted from the network.
pub const MAX_STABLE_ID: usize = 256;
/// Most addresses a node record may carry.
pub const MAX_ADDRS: usize = 16;

/// A caller, as the tailnet view shows the owner of its real address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its stable tailnet id.
    pub stable_id: String,
    /// Its tailnet addresses.
    pub addrs: Vec<IpAddr>,
}

impl Caller {
    /// Whether `ip` is one of the caller's addresses (IPv4-mapped IPv6
    /// addresses count as their IPv4 address).
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.addrs.iter().any(|own| own.to_canonical() == ip.to_canonical())
    }
}

/// A future answering a probe, or refusing it (an [`RpcError`]; a node
/// that is still starting answers, granting no promise).
pub type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ProbeResponse, RpcError>> + Send + 'a>>;

/// A future answering a confirm request.
pub type ConfirmFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ConfirmResponse, RpcError>> + Send + 'a>>;

/// Answers about callers, supplied by the layer above.
pub trait Peers: Send + Sync + 'static {
    /// The node that has address `ip` (a request's real peer address): a
    /// tagged peer, or this node itself. `None` if the view knows no such
    /// node.
    fn caller(&self, ip: IpAddr) -> Option<Caller>;

    /// Whether the node with `stable_id` carries the cluster tag and is
    /// online.
    fn tagged_online(&self, stable_id: &str) -> bool;

    /// Whether voter `id` may be removed from the configuration `metrics`
    /// shows (this node leads it) at another node's request: the quorum
    /// guard of the leader's own membership plan (decision 0003), under
    /// which the remaining voters keep a reachable majority and a dead
    /// incarnation of a node that came back does not count as reachable.
    /// `Err` says why not.
    fn removal_keeps_quorum(&self, id: NodeId, metrics: &NodeMetrics) -> Result<(), String>;

    /// Answers `POST /v1/probe` from `caller`.
    fn probe<'a>(&'a self, caller: &'a Caller, request: &'a ProbeRequest) -> ProbeFuture<'a>;

    /// Answers `POST /v1/confirm` from `caller`, once [`check_confirm`]
    /// has passed: binds this node to the caller's cluster, or refuses
    /// ([`RpcError::NotConfirmed`]).
    fn confirm<'a>(&'a self, caller: &'a Caller, request: &'a ConfirmRequest) -> ConfirmFuture<'a>;
}

/// Checks a confirm request against its caller: a well-formed record of
/// the caller itself (its stable id, only its tailnet addresses) and a raft
/// id that is `node_id(stable id, incarnation)`.
pub fn check_confirm(request: &ConfirmRequest, caller: &Caller) -> Result<(), RpcError> {
    check_node(&request.node).map_err(RpcError::bad_request)?;
    let stable_id = &request.node.stable_id;
    if *stable_id != caller.stable_id {
        return Err(RpcError::Forbidden(format!(
            "node {:?} cannot ask for confirmations as {stable_id:?}",
            caller.stable_id
        )));
    }
    if let Some(foreign) = request.node.addrs.iter().find(|ip| !caller.owns(**ip)) {
        return Err(RpcError::Forbidden(format!(
            "address {foreign} is not one of node {stable_id:?}'s tailnet addresses {:?}",
            caller.addrs
        )));
    }
    if request.incarnation == 0 || request.id != node_id(stable_id, request.incarnation) {
        return Err(RpcError::bad_request(format!(
            "raft id {} is not the id of {stable_id:?} incarnation {:016x}",
            request.id, request.incarnation
        )));
    }
    Ok(())
}

/// Checks a node record that arrived from the network: a stable id of 1 to
/// [`MAX_STABLE_ID`] printable bytes and 1 to [`MAX_ADDRS`] addresses.
pub fn check_node(node: &NodeInfo) -> Result<(), String> {
    if node.stable_id.is_empty()
        || node.stable_id.len() > MAX_STABLE_ID
        || node.stable_id.chars().any(char::is_control)
    {
        return Err(format!(
            "a stable id is 1 to {MAX_STABLE_ID} printable bytes, not {:?}",
            node.stable_id.chars().take(40).collect::<String>()
        ));
    }
    if node.addrs.is_empty() || node.addrs.len() > MAX_ADDRS {
        return Err(format!(
            "a node record has 1 to {MAX_ADDRS} addresses, not {}",
            node.addrs.len()
        ));
    }
    Ok(())
}
