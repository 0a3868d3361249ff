//! What the command API learns from the layer above about the nodes that
//! call it: who owns an address, who is tagged and online, and how to
//! answer a bootstrap probe. cmd-rpc does not know where the answers come
//! from (the facade answers from its tailnet view).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use raft_core::{NodeId, NodeInfo, NodeMetrics, node_id};

use crate::api::{
    ConfirmRequest, ConfirmResponse, MAX_SET, ProbeRequest, ProbeResponse, StoreSetRequest,
};
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

    /// Answers `POST /v1/store-set` from `caller`, once [`check_store_set`]
    /// has passed: stores the final voter set, or refuses
    /// ([`RpcError::NotConfirmed`]). A layer that forms no clusters keeps
    /// this default, `not_found`, which is what a node of a version
    /// without the endpoint answers.
    fn store_set<'a>(
        &'a self,
        _caller: &'a Caller,
        _request: &'a StoreSetRequest,
    ) -> ConfirmFuture<'a> {
        Box::pin(async { Err(RpcError::NotFound("/v1/store-set".to_owned())) })
    }
}

/// Checks a store-set request against its caller, as [`check_confirm`]
/// checks a confirm (the former's own record and raft id), and its set: 1
/// to [`MAX_SET`] well-formed records, no raft id 0, one raft id per
/// stable id, no raft id twice, and the caller among them as itself.
pub fn check_store_set(request: &StoreSetRequest, caller: &Caller) -> Result<(), RpcError> {
    check_confirm(
        &ConfirmRequest {
            cluster_id: request.cluster_id,
            id: request.id,
            incarnation: request.incarnation,
            node: request.node.clone(),
            seal: true,
        },
        caller,
    )?;
    let bad = |why: String| Err(RpcError::BadRequest(format!("final voter set: {why}")));
    if request.set.is_empty() || request.set.len() > MAX_SET {
        return bad(format!("1 to {MAX_SET} voters, not {}", request.set.len()));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for member in &request.set {
        if let Err(why) = check_node(&member.node) {
            return bad(why);
        }
        if member.id == 0 || !ids.insert(member.id) {
            return bad(format!("raft id {} is 0 or named twice", member.id));
        }
        if !names.insert(member.node.stable_id.as_str()) {
            return bad(format!("node {:?} is named twice", member.node.stable_id));
        }
    }
    let own = request.set.iter().find(|m| m.node.stable_id == caller.stable_id);
    if own.map(|m| m.id) != Some(request.id) {
        return bad(format!("the caller {:?} is not in it as {}", caller.stable_id, request.id));
    }
    Ok(())
}

/// Checks a confirm request against its caller: a well-formed record of
/// the caller itself (its stable id, only its tailnet addresses) and a raft
/// id that is `node_id(stable id, incarnation)`.
pub fn check_confirm(request: &ConfirmRequest, caller: &Caller) -> Result<(), RpcError> {
    check_node(&request.node).map_err(RpcError::BadRequest)?;
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
        return Err(RpcError::BadRequest(format!(
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use raft_core::ClusterId;

    use super::*;
    use crate::api::SetMember;

    fn record(name: &str, last: u8) -> NodeInfo {
        NodeInfo {
            stable_id: name.to_owned(),
            addrs: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))],
            raft_port: 6270,
            command_port: 6271,
        }
    }

    /// A well-formed request from former "f" (incarnation 5) with voters
    /// "f" and "b".
    fn request() -> (StoreSetRequest, Caller) {
        let former = record("f", 1);
        let id = node_id("f", 5);
        let caller = Caller { stable_id: "f".to_owned(), addrs: former.addrs.clone() };
        let set = vec![
            SetMember { id, node: former.clone() },
            SetMember { id: node_id("b", 9), node: record("b", 2) },
        ];
        let request =
            StoreSetRequest { cluster_id: ClusterId(7), id, incarnation: 5, node: former, set };
        (request, caller)
    }

    #[test]
    fn a_store_set_request_is_checked_and_bounded() {
        let (good, caller) = request();
        check_store_set(&good, &caller).unwrap();
        let refused = |change: &dyn Fn(&mut StoreSetRequest)| {
            let mut bad = good.clone();
            change(&mut bad);
            let err = check_store_set(&bad, &caller).unwrap_err();
            assert!(matches!(err, RpcError::BadRequest(_) | RpcError::Forbidden(_)), "{err}");
            err.to_string()
        };
        // The former is not the caller, or not under its raft id.
        refused(&|r| r.node.stable_id = "g".to_owned());
        refused(&|r| r.incarnation = 6);
        // Empty, too long, a bad record, a raft id 0 or twice, a node
        // twice, the caller missing or under another id.
        assert!(refused(&|r| r.set.clear()).contains("1 to"));
        let many = |r: &mut StoreSetRequest| {
            r.set = (0..=MAX_SET as u8)
                .map(|i| SetMember { id: 100 + u64::from(i), node: record(&format!("n{i}"), i) })
                .collect();
        };
        assert!(refused(&many).contains("1 to"));
        refused(&|r| r.set[1].node.addrs.clear());
        refused(&|r| r.set[1].id = 0);
        assert!(refused(&|r| r.set[1].id = r.set[0].id).contains("twice"));
        assert!(refused(&|r| r.set[1].node.stable_id = "f".to_owned()).contains("twice"));
        assert!(
            refused(&|r| {
                r.set.remove(0);
            })
            .contains("not in it")
        );
        assert!(refused(&|r| r.set[0].id = 77).contains("not in it"));
    }
}
