//! Finding or forming the cluster at start (decision 0003): the shell
//! around [`decide::bootstrap`].
//!
//! A node with raft state resumes: the leader replicates to it again. A
//! fresh node probes every tagged peer of its view (`POST /v1/probe`;
//! offline peers count as silent without being dialed), each probe with
//! its own timeout inside the start deadline, and acts on
//! [`decide::bootstrap::decide`]:
//!
//! - join: it stores the cluster's id (so that the cluster's raft
//!   connections are accepted), then calls the leader's `/v1/join` itself,
//!   following "not the leader" answers;
//! - form: under the bootstrap lock it decides again with the promise it
//!   holds now, and initializes a one-node cluster with a new cluster id;
//! - wait: it probes again, until the start deadline, whose error names the
//!   last reason.
//!
//! The bootstrap lock (the [`Promise`] this node holds) is the same one
//! the facade answers probes under, so answering, granting, joining and
//! forming are each one step.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmd_rpc::{
    CommandClient, JoinRequest, LeaderHint, MAX_STABLE_ID, ProbeRequest, ProbeResponse, ProbeState,
    RpcError, check_node,
};
use raft_core::{ClusterId, NodeInfo, node_id};
use tokio::task::JoinSet;
use ts_discovery::{ClusterView, TailnetNode};

use crate::config::BootstrapOptions;
use crate::decide::bootstrap::{Answer, Decision, Peer, Situation, decide, wants_promises};
use crate::error::Error;
use crate::machine::StateMachine;
use crate::node::{Inner, join_ports, tagged};

/// The promise a fresh node holds: the stable id of the node it promised
/// not to form a cluster before (and not to promise anyone else).
#[derive(Debug, Default)]
pub(crate) struct Promise {
    /// The holder.
    pub(crate) to: Option<String>,
}

/// Time one probe of one peer may take.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Time a join may take (catching up included).
const JOIN: Duration = Duration::from_secs(30);
/// Leader changes a join follows before it gives up for this round.
const MAX_HOPS: usize = 4;
/// Longest wait between rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

type PeerAnswer = Peer<String, ClusterId, LeaderHint>;

pub(crate) async fn run<S: StateMachine>(
    inner: &Arc<Inner<S>>,
    options: &BootstrapOptions,
    timeout: Duration,
) -> Result<(), Error> {
    let raft = inner.raft();
    let started = Instant::now();
    let deadline = started + timeout;
    if raft.is_initialized().await {
        tracing::info!(id = inner.id, "resuming from stored state");
        return Ok(());
    }
    let me = raft.info().stable_id.clone();
    let mut backoff = Duration::from_millis(100);
    let mut reason;
    loop {
        if raft.is_initialized().await {
            // A leader took this node in (a join answered too late).
            return wait_for_leader(inner, deadline, started).await;
        }
        match inner.fresh_view() {
            None => reason = "the tailnet view is missing or out of date".to_owned(),
            Some(view) => {
                let names: Vec<&String> = view.members.values().map(|n| &n.id.0).collect();
                let wants = wants_promises(
                    &me,
                    names.iter().copied(),
                    options.follow_only,
                    options.expected_size,
                );
                let answers = probe_all(inner, &view, wants, deadline).await;
                let holding = inner.promise.lock().await.to.clone();
                let situation = Situation {
                    me: &me,
                    follow_only: options.follow_only,
                    expected_size: options.expected_size,
                    peers: &answers,
                    holding: holding.as_ref().map(|h| (h, tagged(&view, h))),
                };
                match decide(&situation) {
                    Decision::Join { cluster, leader, via } => {
                        match join(inner, cluster, leader, &view, deadline).await {
                            Ok(()) => {
                                tracing::info!(id = inner.id, %cluster, %via, "joined the cluster");
                                return wait_for_leader(inner, deadline, started).await;
                            }
                            Err(why) => {
                                reason =
                                    format!("joining cluster {cluster} (named by {via}): {why}")
                            }
                        }
                    }
                    Decision::Form => match form(inner, &situation, &view).await? {
                        None => return wait_for_leader(inner, deadline, started).await,
                        Some(why) => reason = why,
                    },
                    Decision::Wait(wait) => reason = wait.to_string(),
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::JoinFailed { waited: started.elapsed(), reason });
        }
        tracing::debug!(%reason, "not joined yet");
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Probes every tagged peer of `view` at once; offline ones are silent
/// without a dial.
async fn probe_all<S: StateMachine>(
    inner: &Inner<S>,
    view: &ClusterView,
    wants_promise: bool,
    deadline: Instant,
) -> Vec<PeerAnswer> {
    let mut probes = JoinSet::new();
    let mut answers = Vec::new();
    for peer in view.members.values() {
        if !peer.online {
            answers.push(Peer { name: peer.id.0.clone(), answer: Answer::Silent });
            continue;
        }
        let client = inner.service.client().clone();
        let ports = join_ports(&inner.config);
        let peer = peer.clone();
        probes.spawn(async move {
            let answer = probe(&client, &peer, &ports, wants_promise, deadline).await;
            Peer { name: peer.id.0.clone(), answer }
        });
    }
    while let Some(done) = probes.join_next().await {
        if let Ok(answer) = done {
            answers.push(answer);
        }
    }
    answers
}

/// One peer's answer: the first port that answers, each attempt within
/// [`ATTEMPT`] and the deadline. Anything else (no answer, an error, an
/// answer that does not check out) is silence.
async fn probe(
    client: &CommandClient,
    peer: &TailnetNode,
    ports: &[u16],
    wants_promise: bool,
    deadline: Instant,
) -> Answer<String, ClusterId, LeaderHint> {
    let addrs: Vec<IpAddr> = peer.addrs().collect();
    for &port in ports {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let target = NodeInfo {
            stable_id: peer.id.0.clone(),
            addrs: addrs.clone(),
            raft_port: 0,
            command_port: port,
        };
        let request = ProbeRequest { promise: wants_promise };
        let until = Instant::now() + ATTEMPT.min(remaining);
        match client.post::<_, ProbeResponse>(&target, "/v1/probe", &request, until, false).await {
            Ok(answer) => {
                return match check_answer(&answer, &peer.id.0) {
                    Ok(()) => match answer.state {
                        ProbeState::Member { cluster_id, leader } => {
                            Answer::Member { cluster: cluster_id, leader }
                        }
                        ProbeState::Fresh { promised_to } => Answer::Fresh { promised_to },
                    },
                    Err(why) => {
                        tracing::warn!(peer = %peer.id, %why, "ignoring a malformed probe answer");
                        Answer::Silent
                    }
                };
            }
            Err(err) => tracing::debug!(peer = %peer.id, port, error = %err, "probe failed"),
        }
    }
    Answer::Silent
}

/// Checks that a probe answer is about `stable_id` and well formed.
pub(crate) fn check_answer(answer: &ProbeResponse, stable_id: &str) -> Result<(), String> {
    check_node(&answer.node)?;
    if answer.node.stable_id != stable_id {
        return Err(format!("answered as {:?}", answer.node.stable_id));
    }
    if answer.incarnation == 0 || answer.id != node_id(stable_id, answer.incarnation) {
        return Err(format!("raft id {} does not match its incarnation", answer.id));
    }
    match &answer.state {
        ProbeState::Member { leader: Some(hint), .. } => check_node(&hint.node),
        ProbeState::Fresh { promised_to: Some(to) } if to.len() > MAX_STABLE_ID => {
            Err("promised to an oversized stable id".to_owned())
        }
        _ => Ok(()),
    }
}

/// The leader `hint` names, reached at the addresses `view` gives its node:
/// a hint from a peer never makes this node dial elsewhere.
fn resolve(view: &ClusterView, hint: &LeaderHint) -> Result<NodeInfo, String> {
    let node = view
        .members
        .values()
        .find(|n| n.id.0 == hint.node.stable_id)
        .ok_or_else(|| format!("leader {:?} is not a tagged peer here", hint.node.stable_id))?;
    Ok(NodeInfo { addrs: node.addrs().collect(), ..hint.node.clone() })
}

/// Stores `cluster` as this node's cluster (under the bootstrap lock: from
/// now on it answers probes as a member), then asks its leader to add it.
async fn join<S: StateMachine>(
    inner: &Inner<S>,
    cluster: ClusterId,
    leader: LeaderHint,
    view: &ClusterView,
    deadline: Instant,
) -> Result<(), String> {
    let raft = inner.raft();
    {
        let mut promise = inner.promise.lock().await;
        raft.set_cluster_id(cluster).await.map_err(|err| err.to_string())?;
        promise.to = None;
    }
    let request = JoinRequest {
        id: raft.id(),
        incarnation: raft.incarnation(),
        node: raft.info().clone(),
        cluster_id: cluster,
    };
    let mut hint = leader;
    for _ in 0..MAX_HOPS {
        let target = resolve(view, &hint)?;
        let until = (Instant::now() + JOIN).min(deadline);
        let joined: Result<serde_json::Value, RpcError> =
            inner.service.client().post(&target, "/v1/join", &request, until, false).await;
        match joined {
            Ok(_) => return Ok(()),
            Err(RpcError::Remote { body, .. }) if body.code == "not_leader" => match body.leader {
                Some(next) if next.id != hint.id => hint = next,
                _ => return Err(format!("{} is not the leader and knows no other", target)),
            },
            Err(err) => return Err(format!("{target}: {err}")),
        }
    }
    Err("the leader kept changing".to_owned())
}

/// Forms a one-node cluster, if the decision still says so under the
/// bootstrap lock (a probe answered meanwhile may have granted a promise).
/// `None` when formed; otherwise why not.
async fn form<S: StateMachine>(
    inner: &Inner<S>,
    situation: &Situation<'_, String, ClusterId, LeaderHint>,
    view: &ClusterView,
) -> Result<Option<String>, Error> {
    let raft = inner.raft();
    let mut promise = inner.promise.lock().await;
    let holding = promise.to.clone();
    let now =
        Situation { holding: holding.as_ref().map(|h| (h, tagged(view, h))), ..situation.clone() };
    match decide(&now) {
        Decision::Form => {}
        Decision::Wait(wait) => return Ok(Some(wait.to_string())),
        Decision::Join { .. } => return Ok(Some("a cluster appeared".to_owned())),
    }
    tracing::info!(
        id = inner.id,
        tagged = 1 + situation.peers.len(),
        "every tagged peer is fresh and promised to wait for this node; forming the cluster"
    );
    let members = [(raft.id(), raft.info().clone())].into_iter().collect();
    let formed = raft.initialize(members).await.map_err(|e| Error::Fatal(e.to_string()))?;
    promise.to = None;
    if formed {
        tracing::info!(id = inner.id, cluster = ?raft.cluster_id(), "formed the cluster");
    } else {
        tracing::info!(id = inner.id, "a leader took this node in before it formed a cluster");
    }
    Ok(None)
}

async fn wait_for_leader<S: StateMachine>(
    inner: &Inner<S>,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    inner
        .raft()
        .wait_for(remaining, |m| m.leader.is_some())
        .await
        .map(|_| ())
        .map_err(|_| Error::NoLeader { waited: started.elapsed() })
}
