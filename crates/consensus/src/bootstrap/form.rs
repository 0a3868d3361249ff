//! Forming a cluster: storing its id bound to this node (a new one, or
//! the one an earlier incarnation of it was forming), asking every tagged
//! peer to confirm it and then to seal its binding (`POST /v1/confirm`),
//! and initializing it with the binders as voters once all sealed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cmd_rpc::{CommandClient, ConfirmRequest, ConfirmResponse, LeaderHint, RpcError, check_node};
use raft_core::{ClusterId, NodeId, NodeInfo, node_id};
use tokio::task::JoinSet;
use tokio::time::Instant;
use ts_discovery::{ClusterView, TailnetNode};

use super::round::{Owned, Round, situation};
use super::{Boot, Forming, PeerAnswer, attempts};
use crate::config::BootstrapOptions;
use crate::core::Core;
use crate::decide::bootstrap::{Answer, Decision, Peer, decide};
use crate::error::Error;
use crate::machine::StateMachine;
use crate::peers::join_ports;

/// Starts forming a cluster (a new one, or one an earlier incarnation of
/// this node was forming), if the decision still says so under the
/// bootstrap lock (a probe answered meanwhile may have granted a promise,
/// a confirm may have bound this node): stores its id bound to this node,
/// and drops the promise it held. `None` when started; otherwise why not.
pub(super) async fn start_forming<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    options: &BootstrapOptions,
    view: &ClusterView,
    answers: &[PeerAnswer],
    decided: &Decision<String, ClusterId, LeaderHint>,
) -> Result<Option<String>, Error> {
    let raft = core.raft();
    let me = raft.info().stable_id.clone();
    let mut state = boot.lock().await;
    let owned = Owned::of(core, &state);
    let now = decide(&situation(&me, options, answers, owned.commitment(view)));
    if now != *decided {
        return Ok(Some("the situation changed while deciding".to_owned()));
    }
    // A new cluster id is drawn by raft-core as it binds this node to it;
    // an id is taken up again only as this incarnation's own binding read
    // back (raft-core refuses any other: docs/reliability.md finding 38).
    let stored = match now {
        Decision::Form => raft.form().await,
        Decision::Resume { cluster } => {
            raft.bind(cluster, raft.id(), raft.info().clone()).await.map(|()| cluster)
        }
        _ => return Ok(Some("not forming".to_owned())),
    };
    let cluster = match stored {
        Ok(cluster) => cluster,
        Err(err) => return Ok(Some(format!("cannot store a cluster id to form: {err}"))),
    };
    state.promise = None;
    state.forming = Some(Forming { cluster, confirmed: BTreeMap::new(), sealed: BTreeMap::new() });
    tracing::info!(
        id = core.id,
        %cluster,
        resumed = matches!(decided, Decision::Resume { .. }),
        tagged = 1 + answers.len(),
        "forming a cluster: asking every tagged peer to confirm"
    );
    Ok(None)
}

/// Asks the peers `ask` to confirm `cluster` (or, `seal`, to seal their
/// binding to it: the last round before initializing), at once, and
/// records those that did. A peer that refuses a seal is no longer bound
/// to this node's cluster as it confirmed (it lost its state, or gave the
/// binding up): its confirmation is forgotten, so that it is asked to
/// confirm again. An empty string when all did; otherwise who did not,
/// and why.
pub(super) async fn confirm_round<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    view: &ClusterView,
    cluster: ClusterId,
    ask: &[String],
    seal: bool,
    deadline: Instant,
) -> String {
    let raft = core.raft();
    let request = ConfirmRequest {
        cluster_id: cluster,
        id: raft.id(),
        incarnation: raft.incarnation(),
        node: raft.info().clone(),
        seal,
    };
    let mut calls = JoinSet::new();
    let mut refused = Vec::new();
    for name in ask {
        let Some(peer) = view.members.values().find(|n| n.id.0 == *name) else {
            refused.push(format!("{name} is not in view"));
            continue;
        };
        if !peer.online {
            refused.push(format!("{name} is offline"));
            continue;
        }
        let client = core.service.client().clone();
        let ports = join_ports(&core.config);
        let (peer, request) = (peer.clone(), request.clone());
        calls.spawn(async move {
            let answer = ask_to_confirm(&client, &peer, &ports, &request, deadline).await;
            (peer, answer)
        });
    }
    let mut bound = Vec::new();
    let mut unbound = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok((peer, Ok(answer))) => match check_confirmed(&answer, &peer, cluster) {
                Ok(record) => bound.push((peer.id.0.clone(), record)),
                Err(why) => refused.push(format!("{} answered badly: {why}", peer.id)),
            },
            Ok((peer, Err(Refused::Refused(why)))) => {
                unbound.push(peer.id.0.clone());
                refused.push(format!("{}: {why}", peer.id));
            }
            Ok((peer, Err(Refused::NoAnswer(why)))) => refused.push(format!("{}: {why}", peer.id)),
            Err(err) => refused.push(format!("a confirm task failed: {err}")),
        }
    }
    let mut state = boot.lock().await;
    if let Some(forming) = state.forming.as_mut().filter(|f| f.cluster == cluster) {
        for (name, record) in bound {
            if seal {
                tracing::info!(peer = %name, id = record.0, %cluster, "peer sealed its binding");
                forming.confirmed.insert(name.clone(), record.clone());
                forming.sealed.insert(name, record);
            } else {
                tracing::info!(peer = %name, id = record.0, %cluster, "peer bound to the cluster");
                forming.confirmed.insert(name, record);
            }
        }
        if seal {
            for name in unbound {
                forming.confirmed.remove(&name);
                forming.sealed.remove(&name);
            }
        }
    }
    refused.sort();
    if refused.is_empty() {
        String::new()
    } else {
        format!("forming cluster {cluster}, not confirmed yet: {}", refused.join("; "))
    }
}

/// Why a peer did not confirm.
enum Refused {
    /// It answered with a refusal.
    Refused(String),
    /// No answer (unreachable, a timeout, not serving confirms yet).
    NoAnswer(String),
}

/// One peer's confirm: the first port that answers, each attempt within
/// [`ATTEMPT`] and the deadline; a refusal ends it.
async fn ask_to_confirm(
    client: &CommandClient,
    peer: &TailnetNode,
    ports: &[u16],
    request: &ConfirmRequest,
    deadline: Instant,
) -> Result<ConfirmResponse, Refused> {
    let mut last = "the start deadline passed".to_owned();
    for (target, until) in attempts(peer, ports, deadline) {
        match client.post(&target, "/v1/confirm", request, until, cmd_rpc::Origin::Client).await {
            Ok(answer) => return Ok(answer),
            Err(RpcError::Remote { body, .. }) if body.code == cmd_rpc::ErrorCode::NotConfirmed => {
                return Err(Refused::Refused(format!("{}: {}", body.code, body.message)));
            }
            Err(RpcError::Remote { body, .. }) => {
                return Err(Refused::NoAnswer(format!("{}: {}", body.code, body.message)));
            }
            Err(err) => last = err.to_string(),
        }
    }
    Err(Refused::NoAnswer(last))
}

/// Checks a binder's answer: about `peer`, bound to `cluster`, with a raft
/// id from its incarnation. Its record, with only the addresses the view
/// gives the peer.
fn check_confirmed(
    answer: &ConfirmResponse,
    peer: &TailnetNode,
    cluster: ClusterId,
) -> Result<(NodeId, NodeInfo), String> {
    check_node(&answer.node)?;
    if answer.node.stable_id != peer.id.0 {
        return Err(format!("answered as {:?}", answer.node.stable_id));
    }
    if answer.cluster_id != cluster {
        return Err(format!("bound to cluster {}", answer.cluster_id));
    }
    if answer.incarnation == 0 || answer.id != node_id(&peer.id.0, answer.incarnation) {
        return Err(format!("raft id {} does not match its incarnation", answer.id));
    }
    let addrs: Vec<IpAddr> = answer
        .node
        .addrs
        .iter()
        .copied()
        .filter(|a| peer.addrs().any(|own| own == a.to_canonical()))
        .collect();
    if addrs.is_empty() {
        return Err("none of its addresses is its tailnet address".to_owned());
    }
    Ok((answer.id, NodeInfo { addrs, ..answer.node.clone() }))
}

/// Initializes `cluster` with this node and the binders `voters` as its
/// voters, if every tagged peer of the view is (still) bound to it under
/// the bootstrap lock.
pub(super) async fn initialize<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    options: &BootstrapOptions,
    answers: &[PeerAnswer],
    cluster: ClusterId,
    voters: &[String],
) -> Result<Round, Error> {
    let raft = core.raft();
    let me = raft.info().stable_id.clone();
    let mut state = boot.lock().await;
    // Against the view as it is now: a peer tagged meanwhile must be bound
    // too.
    let Some(view) = core.fresh_view() else {
        return Ok(Round::Again("the tailnet view is missing or out of date".to_owned()));
    };
    let now_answers: Vec<PeerAnswer> = view
        .members
        .values()
        .map(|n| {
            answers
                .iter()
                .find(|a| a.name == n.id.0)
                .cloned()
                .unwrap_or(Peer { name: n.id.0.clone(), answer: Answer::Silent })
        })
        .collect();
    let owned = Owned::of(core, &state);
    let voters = match decide(&situation(&me, options, &now_answers, owned.commitment(&view))) {
        Decision::Initialize { cluster: c, voters: now } if c == cluster => now,
        Decision::Wait(wait) => return Ok(Round::Again(wait.to_string())),
        _ => return Ok(Round::Again(format!("the view changed before initializing ({voters:?})"))),
    };
    let Some(forming) = state.forming.as_ref() else {
        return Ok(Round::Again("no longer forming".to_owned()));
    };
    let mut members = BTreeMap::from([(raft.id(), raft.info().clone())]);
    // The raft ids the binders sealed as: bound for good to this cluster.
    for name in &voters {
        let Some((id, record)) = forming.sealed.get(name) else {
            return Ok(Round::Again(format!("{name} has not sealed its binding")));
        };
        members.insert(*id, record.clone());
    }
    tracing::info!(
        id = core.id,
        %cluster,
        voters = members.len(),
        "every tagged peer sealed its binding to the cluster; initializing it"
    );
    let formed = match raft.initialize_in(cluster, members).await {
        Ok(formed) => formed,
        // raft-core's backstop (finding 38): this incarnation did not draw
        // that id. Never initialized a second time; probe again.
        Err(err @ raft_core::MembershipError::NotFormer { .. }) => {
            tracing::warn!(id = core.id, %cluster, error = %err, "refused to initialize");
            state.forming = None;
            return Ok(Round::Again(err.to_string()));
        }
        Err(err) => return Err(Error::fatal_from(err.to_string(), err)),
    };
    state.forming = None;
    if formed {
        tracing::info!(id = core.id, %cluster, "formed the cluster");
    } else {
        tracing::info!(id = core.id, "this node had raft state before it initialized");
    }
    Ok(Round::Done)
}
