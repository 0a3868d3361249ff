//! Finding or forming the cluster at start (decision 0003): the shell
//! around [`decide::bootstrap`].
//!
//! A node with raft state resumes: the leader replicates to it again
//! (first, if the membership records it at other ports or addresses than
//! it runs on now, it has the leader replace its record: [`update_record`]). A
//! node without probes every tagged peer of its view (`POST /v1/probe`;
//! offline peers count as silent without being dialed), each probe with
//! its own timeout inside the start deadline, and acts on
//! [`decide::bootstrap::decide`]:
//!
//! - join: it stores the cluster's id (so that the cluster's raft
//!   connections are accepted), then calls the leader's `/v1/join` itself,
//!   following "not the leader" answers;
//! - form (or resume forming a cluster an earlier incarnation of it was
//!   forming): under the bootstrap lock it decides again, stores the
//!   cluster id bound to itself, and asks every tagged peer to confirm
//!   (`POST /v1/confirm`); a peer that still holds its promise binds itself
//!   to the cluster. Once every tagged peer of its view is bound, it
//!   initializes the cluster with itself and the binders as voters;
//! - wait: it probes again, until the start deadline, whose error names the
//!   last reason.
//!
//! The bootstrap lock ([`Boot`], the node's bootstrap part, over
//! [`BootState`]: the promise this node holds and the cluster it forms) is
//! also the one this node answers other nodes' probes and confirms under
//! ([`Boot::probe`], [`Boot::confirm`]), so answering, granting, binding,
//! joining and forming are each one step.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::{
    Caller, CommandClient, ConfirmRequest, ConfirmResponse, JoinRequest, LeaderHint, ProbeRequest,
    ProbeResponse, ProbeState, RpcError, check_node,
};
use raft_core::{ClusterId, NodeId, NodeInfo, NodeMetrics, RaftNode, node_id};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use ts_discovery::{ClusterView, Discovery, TailnetNode};

use crate::config::BootstrapOptions;
use crate::core::Core;
use crate::decide::bootstrap::{
    Answer, Bond, Commitment, Decision, FormerNow, Heard, Names, Peer, Situation, decide,
    other_cluster, unbind, waiting_for, wants_promises,
};
use crate::error::Error;
use crate::machine::{Adapter, StateMachine};
use crate::peers::{check_answer, join_ports};
use crate::view::{tagged, tagged_online};

/// The bootstrap part of a node: its bootstrap lock, held while it starts
/// ([`run`]) and while it answers other nodes' probes and confirms.
#[derive(Clone, Default)]
pub(crate) struct Boot {
    state: Arc<tokio::sync::Mutex<BootState>>,
}

impl Boot {
    /// Answers `POST /v1/probe` from `caller` under the bootstrap lock
    /// ([`crate::decide::bootstrap::answer`]).
    pub(crate) async fn probe<S: StateMachine>(
        &self,
        raft: &RaftNode<Adapter<S>>,
        discovery: &dyn Discovery,
        max_staleness: Duration,
        caller: &Caller,
        request: &ProbeRequest,
    ) -> Result<ProbeResponse, RpcError> {
        let mut boot = self.lock().await;
        // A node that is not ready answers what it is (fresh, holding
        // no promise, or a member once it stored a cluster id) and
        // grants nothing: its answer lets a peer starting with it
        // become ready.
        let ready = boot.ready;
        let state = discovery.state().borrow().clone();
        let stale = state.is_stale(max_staleness);
        let live = |name: &str| state.view.as_ref().is_some_and(|v| tagged_online(v, name));
        let me = raft.info().stable_id.clone();
        let cluster_id = raft.cluster_id();
        let (holding, reply) = crate::decide::bootstrap::answer(&crate::decide::bootstrap::Probe {
            me: &me,
            member: cluster_id.is_some(),
            holding: boot.promise.as_ref(),
            holder_tagged: holder_tagged(discovery, max_staleness, boot.promise.as_deref()),
            caller: &caller.stable_id,
            caller_live: !stale && live(&caller.stable_id),
            wants_promise: request.promise && ready,
        });
        if holding != boot.promise {
            tracing::info!(from = ?boot.promise, to = ?holding, caller = %caller.stable_id, "bootstrap promise changed");
        }
        boot.promise = holding;
        let state = match (cluster_id, reply) {
            (Some(cluster_id), _) => ProbeState::Member { cluster_id, leader: named_leader(raft) },
            (None, crate::decide::bootstrap::Reply::Fresh { promised_to }) => {
                ProbeState::Fresh { promised_to }
            }
            (None, crate::decide::bootstrap::Reply::Member) => {
                ProbeState::Fresh { promised_to: None }
            }
        };
        Ok(ProbeResponse {
            id: raft.id(),
            incarnation: raft.incarnation(),
            node: raft.info().clone(),
            state,
        })
    }

    /// Answers `POST /v1/confirm` from `caller` under the bootstrap lock
    /// ([`crate::decide::bootstrap::confirm`]): binds this node to the
    /// caller's cluster, seals that binding, or refuses.
    pub(crate) async fn confirm<S: StateMachine>(
        &self,
        raft: &RaftNode<Adapter<S>>,
        discovery: &dyn Discovery,
        max_staleness: Duration,
        caller: &Caller,
        request: &ConfirmRequest,
    ) -> Result<ConfirmResponse, RpcError> {
        let mut boot = self.lock().await;
        let stored = raft.cluster_id();
        let me = raft.info().stable_id.clone();
        let former = raft.former().map(|(_, node)| node.stable_id);
        let has_state = raft.is_initialized().await;
        let sealed = match raft.sealed_to() {
            None => crate::decide::bootstrap::Sealed::No,
            Some(id) if id == request.id => crate::decide::bootstrap::Sealed::ToCaller,
            Some(_) => crate::decide::bootstrap::Sealed::ToOther,
        };
        let step = crate::decide::bootstrap::confirm(&crate::decide::bootstrap::ConfirmCall {
            has_state,
            stored: stored.as_ref().map(|c| (c, former.as_ref())),
            holding: boot.promise.as_ref(),
            holder_tagged: holder_tagged(discovery, max_staleness, boot.promise.as_deref()),
            sealed,
            // A node that decided to join a cluster confirms its former
            // whether it is ready or not (they would wait for each other);
            // a free one binds itself, and a bound one seals, only once
            // ready (docs/reliability.md finding 56).
            ready: boot.ready,
            caller: &caller.stable_id,
            cluster: &request.cluster_id,
            seal: request.seal,
        });
        match step {
            crate::decide::bootstrap::Confirmation::Refuse(
                crate::decide::bootstrap::Refusal::NotReady,
            ) => {
                tracing::info!(caller = %caller.stable_id, cluster = %request.cluster_id, seal = request.seal, "not ready: refused to confirm a cluster being formed");
                Err(not_ready())
            }
            crate::decide::bootstrap::Confirmation::Refuse(why) => {
                tracing::info!(caller = %caller.stable_id, cluster = %request.cluster_id, seal = request.seal, %why, "refused to confirm a cluster being formed");
                Err(RpcError::NotConfirmed(format!("{me} {why}")))
            }
            crate::decide::bootstrap::Confirmation::Bind
            | crate::decide::bootstrap::Confirmation::Again
            | crate::decide::bootstrap::Confirmation::Seal => {
                let (cluster, id, node) = (request.cluster_id, request.id, request.node.clone());
                let stored = if step == crate::decide::bootstrap::Confirmation::Seal {
                    raft.seal(cluster, id, node).await
                } else {
                    raft.bind(cluster, id, node).await
                };
                stored.map_err(|err| RpcError::NotConfirmed(format!("{me}: {err}")))?;
                boot.promise = None;
                Ok(ConfirmResponse {
                    cluster_id: request.cluster_id,
                    id: raft.id(),
                    incarnation: raft.incarnation(),
                    node: raft.info().clone(),
                })
            }
        }
    }

    async fn lock(&self) -> tokio::sync::MutexGuard<'_, BootState> {
        self.state.lock().await
    }
}

/// Whether the holder of this node's promise is still tagged in its view;
/// with a stale view, yes (a promise is kept, failing closed).
fn holder_tagged(discovery: &dyn Discovery, max_staleness: Duration, holder: Option<&str>) -> bool {
    let state = discovery.state().borrow().clone();
    let stale = state.is_stale(max_staleness);
    holder.is_some_and(|h| stale || state.view.as_ref().is_some_and(|v| tagged(v, h)))
}

/// The leader a probe's answer names: the known leader; for a binder (a
/// cluster id, no configuration yet) the cluster's former. A member with a
/// configuration that knows no leader names none: naming the former there
/// would let a former that lost its state read its own name and resume
/// forming the running cluster, instead of joining it as a new incarnation
/// once a leader is elected.
fn named_leader<S: StateMachine>(raft: &RaftNode<Adapter<S>>) -> Option<LeaderHint> {
    let metrics = raft.metrics();
    leader_hint(&metrics).or_else(|| {
        if metrics.voters.is_empty() {
            raft.former().map(|(id, node)| LeaderHint { id, node })
        } else {
            None
        }
    })
}

/// The refusal of a confirm (or a seal) by a node that is not ready: it has
/// not heard from every tagged peer of its view yet, or hears from a member
/// of another cluster (it may be about to learn of a cluster it must join,
/// and must not bind or seal itself to anything before).
fn not_ready() -> RpcError {
    RpcError::Unavailable(
        "starting: this node has not heard from every tagged peer yet, or hears from a member \
         of another cluster"
            .to_owned(),
    )
}

/// The leader this node knows, as a hint for others.
pub(crate) fn leader_hint(metrics: &raft_core::NodeMetrics) -> Option<LeaderHint> {
    let id = metrics.leader?;
    metrics.nodes.get(&id).map(|node| LeaderHint { id, node: node.clone() })
}

/// What a node without raft state holds under its bootstrap lock.
#[derive(Debug, Default)]
struct BootState {
    /// The holder of this node's promise (not to form a cluster before it,
    /// and not to promise anyone else), by stable id.
    pub(crate) promise: Option<String>,
    /// The cluster this node is forming, if it is.
    pub(crate) forming: Option<Forming>,
    /// Whether it grants promises, binds itself to a cluster being formed
    /// and seals its binding: once it has raft state at start, or once
    /// every tagged peer of its view, online or not, has answered one of
    /// its probes and none answers as a member of a cluster other than
    /// the one it stored ([`decide::bootstrap::waiting_for`]). A node that
    /// lost its state (memory storage: at every start) first learns
    /// whether a cluster exists or is being formed among its peers, so
    /// that it never promises, binds or seals itself before it could know.
    /// Until then it answers probes as what it is (fresh, granting
    /// nothing, or a member once it stored a cluster id), refuses to bind
    /// or seal, and confirms only a cluster it decided to join.
    pub(crate) ready: bool,
}

/// A cluster this node is forming: its id (stored, bound to this node) and
/// the peers that bound themselves to it so far.
#[derive(Debug)]
pub(crate) struct Forming {
    /// The cluster.
    pub(crate) cluster: ClusterId,
    /// By stable id: each binder's raft id and record.
    pub(crate) confirmed: BTreeMap<String, (NodeId, NodeInfo)>,
    /// By stable id: each binder that sealed its binding (the last round
    /// before initializing), with the raft id and record it sealed as.
    pub(crate) sealed: BTreeMap<String, (NodeId, NodeInfo)>,
}

impl Names<String> for LeaderHint {
    fn names(&self, node: &String) -> bool {
        self.node.stable_id == *node
    }
}

/// Time one probe or confirm of one peer may take.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Time a join may take (catching up included).
const JOIN: Duration = Duration::from_secs(30);
/// Leader changes a join follows before it gives up for this round.
const MAX_HOPS: usize = 4;
/// Longest wait between rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a peer that is online but has no path in this node's netmap
/// yet (no DERP home, no endpoint) is left undialed: control usually sends
/// the path within a second or so. A dial before it costs about 5 s (the
/// WireGuard handshake is dropped and retried only after REKEY_TIMEOUT);
/// after this grace it is dialed anyway, in case this control server never
/// reports paths.
const PATHLESS_GRACE: Duration = Duration::from_secs(3);
/// How long this node leaves a peer that sorts lower undialed after the
/// peer's path arrived (having been seen without one): the lower node
/// dials at once, and a first WireGuard handshake both sides start at the
/// same moment is lost on both (each becomes the responder) and retried
/// only 5 s later. The lowest node, which forms the cluster, never waits.
const FIRST_CONTACT_YIELD: Duration = Duration::from_millis(700);
/// How often a node yielding to a lower peer looks again.
const YIELD_CHECK: Duration = Duration::from_millis(200);
/// How long the former of the cluster a node bound itself to may be
/// untagged or absent from the node's view before the node gives the
/// binding up (if it has not sealed it): long enough that a view that
/// flaps does not undo a formation in progress. Safety does not depend on
/// it (decision 0003, "Amendment: bound for good").
pub(crate) const UNBIND_GRACE: Duration = Duration::from_secs(10);

type PeerAnswer = Peer<String, ClusterId, LeaderHint>;

/// What this node is committed to, owned (a snapshot of [`BootState`] and
/// of the raft node's stored cluster id and former).
#[derive(Clone, Debug)]
enum Owned {
    Free { holding: Option<String> },
    Bound { cluster: ClusterId, former: Option<String> },
    Forming { cluster: ClusterId, confirmed: Vec<String>, sealed: Vec<String> },
}

impl Owned {
    fn of<S: StateMachine>(core: &Core<S>, state: &BootState) -> Owned {
        let raft = core.raft();
        if let Some(forming) = &state.forming {
            return Owned::Forming {
                cluster: forming.cluster,
                confirmed: forming.confirmed.keys().cloned().collect(),
                sealed: forming.sealed.keys().cloned().collect(),
            };
        }
        match raft.cluster_id() {
            Some(cluster) => {
                Owned::Bound { cluster, former: raft.former().map(|(_, node)| node.stable_id) }
            }
            None => Owned::Free { holding: state.promise.clone() },
        }
    }

    fn commitment<'a>(&'a self, view: &ClusterView) -> Commitment<'a, String, ClusterId> {
        match self {
            Owned::Free { holding } => {
                Commitment::Free { holding: holding.as_ref().map(|h| (h, tagged(view, h))) }
            }
            Owned::Bound { cluster, former } => {
                Commitment::Bound { cluster, former: former.as_ref() }
            }
            Owned::Forming { cluster, confirmed, sealed } => {
                Commitment::Forming { cluster, confirmed, sealed }
            }
        }
    }
}

/// What a round ended with.
enum Round {
    /// This node has raft state now (it joined, or initialized a cluster).
    Done,
    /// Not yet, for this reason.
    Again(String),
}

pub(crate) async fn run<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    options: &BootstrapOptions,
    timeout: Duration,
) -> Result<(), Error> {
    let raft = core.raft();
    let started = Instant::now();
    let deadline = started + timeout;
    if raft.is_initialized().await {
        boot.lock().await.ready = true;
        tracing::info!(id = core.id, "resuming from stored state");
        return update_record(core, boot, deadline, started).await;
    }
    // A node bound, joining or forming durably answers probes for that
    // (as a member) at once; it is not ready until it heard from its peers
    // all the same, so that it seals no binding it took by following a
    // hint before it could know of a cluster of its own earlier
    // (docs/reliability.md finding 56).
    let me = raft.info().stable_id.clone();
    // Since when the former this node is bound to has been missing from
    // its view.
    let mut former_gone_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let mut reason;
    // When each peer was first seen online without a path, and when it
    // then got one.
    let mut paths = Paths::default();
    let mut views = core.discovery.state();
    let mut raft_changes = raft.subscribe();
    // The peers that answered a probe of this node since it started, each
    // with whether its last answer was a member's, and the peers it waits
    // for before it is ready.
    let mut heard: BTreeMap<String, Option<ClusterId>> = BTreeMap::new();
    let mut not_heard: Vec<String> = Vec::new();
    // Of those, the ones offline in the view.
    let mut offline: Vec<String> = Vec::new();
    loop {
        views.borrow_and_update();
        // Raft's metrics as this round starts: only a change from these
        // ends a pause early.
        let seen = raft_changes.borrow_and_update().clone();
        if raft.is_initialized().await {
            // A leader took this node in, or the former of the cluster it
            // is bound to initialized it.
            return wait_for_leader(core, deadline, started).await;
        }
        match core.fresh_view() {
            None => reason = "the tailnet view is missing or out of date".to_owned(),
            Some(view) => {
                let owned = Owned::of(core, &*boot.lock().await);
                let wants = wants_promises(
                    &me,
                    view.members.values().map(|n| &n.id.0),
                    options.follow_only,
                    options.expected_size,
                    &owned.commitment(&view),
                );
                let wait = paths.not_yet_reachable(&me, &view, Instant::now());
                if !wait.is_empty() {
                    tracing::debug!(peers = ?wait, "not dialing peers without a path yet");
                }
                let (answers, ids) = probe_all(core, &view, &wait, wants, deadline).await;
                for answer in answers.iter().filter(|a| ids.contains_key(&a.name)) {
                    let cluster = match answer.answer {
                        Answer::Member { cluster, .. } => Some(cluster),
                        _ => None,
                    };
                    heard.insert(answer.name.clone(), cluster);
                }
                not_heard = become_ready(core, boot, &view, &heard).await;
                offline = offline_of(&view, &not_heard);
                if let Some(why) =
                    give_up_binding(core, boot, &view, &answers, &ids, &mut former_gone_since).await
                {
                    tracing::info!(id = core.id, %why, "gave up the binding to a cluster being formed");
                    // Ready again only on answers heard from now on.
                    heard.clear();
                }
                match round(core, boot, options, &view, &answers, &ids, deadline).await? {
                    Round::Done => return wait_for_leader(core, deadline, started).await,
                    Round::Again(why) => reason = why,
                }
            }
        }
        if Instant::now() >= deadline {
            if !not_heard.is_empty() {
                reason = format!(
                    "{reason}; not ready: waiting for {} (tagged peers that never answered, or \
                     members of a cluster this node could not join; it promises nothing and \
                     binds itself to no cluster before){}",
                    not_heard.join(", "),
                    offline_advice(&offline),
                );
            }
            return Err(Error::JoinFailed { waited: started.elapsed(), reason });
        }
        tracing::debug!(%reason, "not joined yet");
        let mut pause = jitter(backoff).min(deadline.saturating_duration_since(Instant::now()));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if !paths.gained.is_empty() {
            // A yield to a lower peer ends soon: look again then.
            pause = pause.min(YIELD_CHECK);
        }
        // Look again after `pause`, or as soon as raft's metrics change
        // (the former of the cluster this node is bound to initialized it,
        // a leader took it in), or (while a peer has no path yet) the view
        // changes.
        let watch_views = !paths.is_empty();
        let woke = async {
            tokio::select! {
                true = changed_from(&mut raft_changes, &seen) => {}
                Ok(()) = views.changed(), if watch_views => {}
                else => std::future::pending::<()>().await,
            }
        };
        let _ = tokio::time::timeout(pause, woke).await;
    }
}

/// Makes this node ready (it grants promises, binds itself and seals its
/// binding from now on) if every tagged peer of `view`, online or not, is
/// in `heard` (with the cluster its last answer named, if any) and none's
/// last answer there was a member's of a cluster other than this node's
/// own ([`decide::bootstrap::waiting_for`], [`other_cluster`]), under the
/// bootstrap lock. The peers it is still waiting for (none once ready).
async fn become_ready<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    view: &ClusterView,
    heard: &BTreeMap<String, Option<ClusterId>>,
) -> Vec<String> {
    let mut state = boot.lock().await;
    if state.ready {
        return Vec::new();
    }
    let own = core.raft().cluster_id();
    let peers: Vec<Heard<'_, String>> = view
        .members
        .values()
        .map(|n| Heard {
            peer: &n.id.0,
            answered: heard.contains_key(&n.id.0),
            member: heard
                .get(&n.id.0)
                .is_some_and(|answered| other_cluster(answered.as_ref(), own.as_ref())),
        })
        .collect();
    let waiting = waiting_for(&peers);
    if waiting.is_empty() {
        state.ready = true;
        tracing::info!(id = core.id, "every tagged peer answered, none a member: ready");
    } else {
        tracing::debug!(peers = ?waiting, "not ready: waiting for these peers");
    }
    waiting
}

/// The peers of `peers` that are offline in `view`.
fn offline_of(view: &ClusterView, peers: &[String]) -> Vec<String> {
    let offline = |p: &String| view.members.values().any(|n| n.id.0 == *p && !n.online);
    peers.iter().filter(|p| offline(p)).cloned().collect()
}

/// What the operator can do about peers a start waited for that are
/// offline: empty if there are none.
fn offline_advice(offline: &[String]) -> String {
    if offline.is_empty() {
        return String::new();
    }
    format!(
        "; offline: {} (a tagged peer may hold a cluster's data: start it, or, if it is gone \
         for good, remove its tag or delete it from the tailnet)",
        offline.join(", ")
    )
}

/// Waits until raft's metrics differ from `seen`; false once raft is gone.
/// Raft republishes its metrics unchanged whenever it handles a call, and
/// this node calls it every round (whether it is initialized, its binding):
/// before, each round's own calls ended the next pause at once, and a
/// formation the peers refused was asked again in a tight loop (every few
/// milliseconds in memory, every ~20 ms on a tailnet; docs/reliability.md
/// finding 10).
async fn changed_from(changes: &mut watch::Receiver<NodeMetrics>, seen: &NodeMetrics) -> bool {
    changes.wait_for(|now| now != seen).await.is_ok()
}

/// `pause` scaled by a random factor in [1/2, 1): nodes that wait for the
/// same thing do not probe and confirm in step.
fn jitter(pause: Duration) -> Duration {
    let mut byte = [0u8; 1];
    match getrandom::fill(&mut byte) {
        Ok(()) => pause / 2 + pause.mul_f64(f64::from(byte[0]) / 512.0),
        Err(_) => pause,
    }
}

/// Gives this node's binding up if [`decide::bootstrap::unbind`] says so
/// (its former gone for [`UNBIND_GRACE`], or answering as another
/// incarnation that does not resume the formation), under the bootstrap
/// lock, the lock confirms and seals are answered under: a seal answered
/// before keeps it bound for good, and a seal asked after is refused.
/// `gone_since` tracks when the former was last seen missing. Why it gave
/// the binding up, if it did.
async fn give_up_binding<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    view: &ClusterView,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
    gone_since: &mut Option<Instant>,
) -> Option<String> {
    let raft = core.raft();
    let mut state = boot.lock().await;
    let (Some(cluster), Some((former_id, former))) = (raft.cluster_id(), raft.former()) else {
        *gone_since = None;
        return None;
    };
    let me = &raft.info().stable_id;
    if state.forming.is_some() || former.stable_id == *me {
        return None;
    }
    let name = &former.stable_id;
    let former_now = if !tagged(view, name) {
        let since = *gone_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= UNBIND_GRACE { FormerNow::GoneForGood } else { FormerNow::Gone }
    } else {
        *gone_since = None;
        let resumed = answers.iter().any(|p| {
            p.name == *name
                && matches!(&p.answer, Answer::Member { cluster: c, leader: Some(l) }
                    if *c == cluster && l.names(name))
        });
        match ids.get(name) {
            Some(id) if *id != former_id && !resumed => FormerNow::Forgot,
            _ => FormerNow::Present,
        }
    };
    let bond = Bond {
        me,
        has_state: raft.is_initialized().await,
        former: Some(name),
        sealed: raft.sealed_to().is_some(),
        former_now,
    };
    if !unbind(&bond) {
        return None;
    }
    let why = match former_now {
        FormerNow::Forgot => format!("{name} answers as another incarnation"),
        _ => format!("{name} has been gone from the view for {UNBIND_GRACE:?}"),
    };
    match raft.unbind(cluster, former_id).await {
        Ok(()) => {
            *gone_since = None;
            // Free now: ready only once every tagged peer, online or
            // not, has answered since (a binder is made ready at start for
            // its binding, without that).
            state.ready = false;
            Some(format!("cluster {cluster}: {why}"))
        }
        Err(err) => {
            tracing::info!(%cluster, error = %err, "kept the binding");
            None
        }
    }
}

/// Peers whose path this node is waiting for, or has just seen arrive.
#[derive(Default)]
struct Paths {
    /// When each peer was first seen online without a path.
    pathless: BTreeMap<String, Instant>,
    /// When each peer first seen without a path got one.
    gained: BTreeMap<String, Instant>,
}

impl Paths {
    fn is_empty(&self) -> bool {
        self.pathless.is_empty() && self.gained.is_empty()
    }

    /// The peers not to dial this round: online peers without a path in
    /// this node's netmap, within [`PATHLESS_GRACE`] of when they were
    /// first seen so, and peers sorting lower than `me` within
    /// [`FIRST_CONTACT_YIELD`] of their path's arrival. They answer
    /// [`Answer::Silent`], which never lets this node form.
    fn not_yet_reachable(&mut self, me: &str, view: &ClusterView, now: Instant) -> Vec<String> {
        let online: BTreeMap<&str, bool> = view
            .members
            .values()
            .filter(|n| n.online)
            .map(|n| (n.id.0.as_str(), n.has_path))
            .collect();
        let mut arrived = Vec::new();
        self.pathless.retain(|name, _| match online.get(name.as_str()) {
            Some(false) => true,
            Some(true) => {
                arrived.push(name.clone());
                false
            }
            None => false,
        });
        // Only lower peers are yielded to.
        for name in arrived.into_iter().filter(|name| name.as_str() < me) {
            self.gained.insert(name, now);
        }
        self.gained.retain(|name, at| {
            online.get(name.as_str()) == Some(&true)
                && now.saturating_duration_since(*at) < FIRST_CONTACT_YIELD
        });
        let mut wait = Vec::new();
        for (name, has_path) in online {
            if has_path {
                if self.gained.contains_key(name) {
                    wait.push(name.to_owned());
                }
                continue;
            }
            let first = *self.pathless.entry(name.to_owned()).or_insert(now);
            if now.saturating_duration_since(first) < PATHLESS_GRACE {
                wait.push(name.to_owned());
            }
        }
        wait
    }
}

/// Decides on this round's answers and acts: forming (or resuming) goes on
/// to the confirm round at once, and a confirm round that binds every peer
/// to initializing.
async fn round<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    options: &BootstrapOptions,
    view: &ClusterView,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
    deadline: Instant,
) -> Result<Round, Error> {
    let me = core.raft().info().stable_id.clone();
    // Form, resume, one confirm round, one seal round, initialize: at most
    // five steps.
    let mut why = String::new();
    for _ in 0..5 {
        let decision = {
            let state = boot.lock().await;
            let owned = Owned::of(core, &state);
            let situation = situation(&me, options, answers, owned.commitment(view));
            decide(&situation)
        };
        match decision {
            Decision::Join { cluster, leader, via } => {
                let leader = match current_hint(cluster, leader, answers, ids) {
                    Ok(leader) => leader,
                    Err(why) => {
                        return Ok(Round::Again(format!(
                            "joining cluster {cluster} (named by {via}): {why}"
                        )));
                    }
                };
                return match join(core, boot, cluster, leader, view, deadline).await {
                    Ok(()) => {
                        tracing::info!(id = core.id, %cluster, %via, "joined the cluster");
                        Ok(Round::Done)
                    }
                    Err(why) => Ok(Round::Again(format!(
                        "joining cluster {cluster} (named by {via}): {why}"
                    ))),
                };
            }
            Decision::Form | Decision::Resume { .. } => {
                if let Some(why) =
                    start_forming(core, boot, options, view, answers, &decision).await?
                {
                    return Ok(Round::Again(why));
                }
            }
            Decision::Confirm { cluster, ask } => {
                why = confirm_round(core, boot, view, cluster, &ask, false, deadline).await;
                if why.is_empty() {
                    continue;
                }
                // The peers asked may have confirmed meanwhile (a view that
                // changed), but one round is enough: probe again first.
                return Ok(Round::Again(why));
            }
            Decision::Seal { cluster, ask } => {
                why = confirm_round(core, boot, view, cluster, &ask, true, deadline).await;
                if why.is_empty() {
                    continue;
                }
                return Ok(Round::Again(why));
            }
            Decision::Initialize { cluster, voters } => {
                return initialize(core, boot, options, answers, cluster, &voters).await;
            }
            Decision::Wait(wait) => return Ok(Round::Again(wait.to_string())),
        }
    }
    Ok(Round::Again(why))
}

fn situation<'a>(
    me: &'a String,
    options: &BootstrapOptions,
    answers: &'a [PeerAnswer],
    commitment: Commitment<'a, String, ClusterId>,
) -> Situation<'a, String, ClusterId, LeaderHint> {
    Situation {
        me,
        follow_only: options.follow_only,
        expected_size: options.expected_size,
        peers: answers,
        commitment,
    }
}

/// Starts forming a cluster (a new one, or one an earlier incarnation of
/// this node was forming), if the decision still says so under the
/// bootstrap lock (a probe answered meanwhile may have granted a promise,
/// a confirm may have bound this node): stores its id bound to this node,
/// and drops the promise it held. `None` when started; otherwise why not.
async fn start_forming<S: StateMachine>(
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
async fn confirm_round<S: StateMachine>(
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
    let addrs: Vec<IpAddr> = peer.addrs().collect();
    let mut last = "the start deadline passed".to_owned();
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
        let until = Instant::now() + ATTEMPT.min(remaining);
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
async fn initialize<S: StateMachine>(
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

/// Probes every tagged peer of `view` at once; offline ones, and those in
/// `not_yet` (no path yet), are silent without a dial. Also the raft id
/// each peer that answered answered as.
async fn probe_all<S: StateMachine>(
    core: &Core<S>,
    view: &ClusterView,
    not_yet: &[String],
    wants_promise: bool,
    deadline: Instant,
) -> (Vec<PeerAnswer>, BTreeMap<String, NodeId>) {
    let mut probes = JoinSet::new();
    let mut answers = Vec::new();
    let mut ids = BTreeMap::new();
    // A binder also tries its former where the former said it listens, so
    // that it hears a new incarnation there answer that it forgot (and
    // gives the binding up) whatever its own port list.
    let former = core.raft().former().map(|(_, node)| node);
    // A member also tries its peers where the membership records them
    // (they may listen on other ports than this node).
    let recorded = core.raft().metrics().nodes;
    for peer in view.members.values() {
        if !peer.online || not_yet.contains(&peer.id.0) {
            answers.push(Peer { name: peer.id.0.clone(), answer: Answer::Silent });
            continue;
        }
        let client = core.service.client().clone();
        let mut ports = join_ports(&core.config);
        if let Some(former) = former.as_ref().filter(|f| f.stable_id == peer.id.0)
            && !ports.contains(&former.command_port)
        {
            ports.push(former.command_port);
        }
        for node in recorded.values().filter(|n| n.stable_id == peer.id.0) {
            if !ports.contains(&node.command_port) {
                ports.push(node.command_port);
            }
        }
        let peer = peer.clone();
        probes.spawn(async move {
            let (answer, id) = probe(&client, &peer, &ports, wants_promise, deadline).await;
            (Peer { name: peer.id.0.clone(), answer }, id)
        });
    }
    while let Some(done) = probes.join_next().await {
        if let Ok((answer, id)) = done {
            if let Some(id) = id {
                ids.insert(answer.name.clone(), id);
            }
            answers.push(answer);
        }
    }
    (answers, ids)
}

/// One peer's answer, and the raft id it answered as: the first port that
/// answers, each attempt within [`ATTEMPT`] and the deadline. Anything
/// else (no answer, an error, an answer that does not check out) is
/// silence.
async fn probe(
    client: &CommandClient,
    peer: &TailnetNode,
    ports: &[u16],
    wants_promise: bool,
    deadline: Instant,
) -> (Answer<String, ClusterId, LeaderHint>, Option<NodeId>) {
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
        match client
            .post::<_, ProbeResponse>(
                &target,
                "/v1/probe",
                &request,
                until,
                cmd_rpc::Origin::Client,
            )
            .await
        {
            Ok(answer) => {
                return match check_answer(&answer, &peer.id.0) {
                    Ok(()) => match answer.state {
                        ProbeState::Member { cluster_id, leader } => {
                            (Answer::Member { cluster: cluster_id, leader }, Some(answer.id))
                        }
                        ProbeState::Fresh { promised_to } => {
                            (Answer::Fresh { promised_to }, Some(answer.id))
                        }
                    },
                    Err(why) => {
                        tracing::warn!(peer = %peer.id, %why, "ignoring a malformed probe answer");
                        (Answer::Silent, None)
                    }
                };
            }
            Err(err) => tracing::debug!(peer = %peer.id, port, error = %err, "probe failed"),
        }
    }
    (Answer::Silent, None)
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

/// The leader to join `cluster` through, for a `hint` a peer gave: the
/// hint itself, unless the node it names answered this round as another
/// raft id (the hint names an earlier incarnation: a binder naming a
/// former that lost its state, which never takes that cluster up again).
/// Then that node's own answer decides: the leader it names for the same
/// cluster (its new incarnation may have joined it, and lead it), else
/// none (following the stale hint would bind this node to a dead
/// incarnation again and again).
fn current_hint(
    cluster: ClusterId,
    hint: LeaderHint,
    answers: &[PeerAnswer],
    ids: &BTreeMap<String, NodeId>,
) -> Result<LeaderHint, String> {
    let named = &hint.node.stable_id;
    let Some(now) = ids.get(named).filter(|now| **now != hint.id) else { return Ok(hint) };
    let own = answers.iter().find(|a| a.name == *named).map(|a| &a.answer);
    match own {
        Some(Answer::Member { cluster: c, leader: Some(l) }) if *c == cluster => Ok(l.clone()),
        _ => Err(format!(
            "{named:?} answers as raft id {now}, not as the {} named, and names no leader of \
             that cluster: a stale hint",
            hint.id
        )),
    }
}

/// Stores `cluster` as this node's cluster (under the bootstrap lock: from
/// now on it answers probes as a member; refused if this node is bound to
/// another cluster meanwhile), then asks its leader to add it.
async fn join<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    cluster: ClusterId,
    leader: LeaderHint,
    view: &ClusterView,
    deadline: Instant,
) -> Result<(), String> {
    let raft = core.raft();
    // Never store a cluster id on hearsay: the leader a peer names must be
    // a tagged, online node of this node's own view.
    let first = resolve(view, &leader)?;
    if !view.members.values().any(|n| n.id.0 == first.stable_id && n.online) {
        return Err(format!("leader {:?} is offline here", first.stable_id));
    }
    {
        let mut state = boot.lock().await;
        match raft.cluster_id() {
            Some(own) if own != cluster => {
                return Err(format!("this node is bound to cluster {own} meanwhile"));
            }
            // Already its cluster (bound to it, or a join before a
            // restart).
            Some(_) => {}
            // A free node binds itself to the cluster by the node it
            // follows, as a binder is bound by its former, so that it
            // gives the id up as a binder does if that node forgets it or
            // is gone for good before the join happens (a former that
            // died before initializing: otherwise the node would answer
            // as a member that knows no leader for ever and every peer
            // would wait on it). Its former confirms it as its binder.
            None => raft
                .bind(cluster, leader.id, first.clone())
                .await
                .map_err(|err| format!("storing cluster {cluster}: {err}"))?,
        }
        state.promise = None;
        state.forming = None;
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
        let joined: Result<serde_json::Value, RpcError> = core
            .service
            .client()
            .post(&target, "/v1/join", &request, until, cmd_rpc::Origin::Client)
            .await;
        match joined {
            Ok(_) => return Ok(()),
            Err(RpcError::Remote { body, .. }) if body.code == cmd_rpc::ErrorCode::NotLeader => {
                match body.leader {
                    Some(next) if next.id != hint.id => hint = next,
                    _ => return Err(format!("{} is not the leader and knows no other", target)),
                }
            }
            Err(err) => return Err(format!("{target}: {err}")),
        }
    }
    Err("the leader kept changing".to_owned())
}

/// After a restart with raft state: if the membership records this node
/// elsewhere than it now runs (other ports or addresses than at its first
/// join), asks the leader to replace its record, through the join path
/// (the leader replaces only the caller's own record), and returns once
/// the leader committed the new record. Without it the leader would go on dialing
/// the old raft port for good. The start fails at `deadline` if no leader
/// takes the new record (none elected, or none reachable: every member
/// changed its ports at once), naming both records.
async fn update_record<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    let raft = core.raft();
    let (id, mine) = (raft.id(), raft.info().clone());
    let Some(cluster) = raft.cluster_id() else { return Ok(()) };
    let mut backoff = Duration::from_millis(100);
    loop {
        let metrics = raft.metrics();
        // Not a member (removed while away): nothing to update; the leader
        // adds it back with the record its probe answer carries.
        let Some(recorded) = metrics.nodes.get(&id).cloned() else { return Ok(()) };
        if recorded == mine {
            return Ok(());
        }
        tracing::info!(id, %recorded, configured = %mine, "asking the leader to update this member's record");
        let why = match ask_to_update(core, boot, cluster, &metrics, deadline).await {
            // The leader committed the new record: it dials this node where
            // it listens now. Not waiting for the record to reach this
            // node's own log: a member far behind catches up (a snapshot,
            // perhaps) after its start, as any member resuming does; a
            // start that waited for it could run out and be restarted
            // before the catch-up ends, again and again.
            Ok(()) => {
                tracing::info!(id, record = %mine, "the leader took this member's new record");
                return Ok(());
            }
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(Error::JoinFailed {
                waited: started.elapsed(),
                reason: format!(
                    "the membership records this node with raft port {} and command port {} \
                     (addresses {:?}), but it is configured with raft port {} and command port \
                     {} (addresses {:?}), and no leader updated the record: {why}. A leader \
                     must run for the update (change one node's ports at a time), or start this \
                     node with the recorded ports",
                    recorded.raft_port,
                    recorded.command_port,
                    recorded.addrs,
                    mine.raft_port,
                    mine.command_port,
                    mine.addrs,
                ),
            });
        }
        tracing::debug!(%why, "member record not updated yet");
        let pause = jitter(backoff).min(deadline.saturating_duration_since(Instant::now()));
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }
}

/// One attempt to have this node's record replaced by the leader: if this
/// node leads, by its own command service (serialized with the other
/// membership changes); else a join with its record now, sent to the leader
/// it knows or, if it knows none (the leader cannot reach it at the old
/// record), the one a peer of its cluster names.
async fn ask_to_update<S: StateMachine>(
    core: &Core<S>,
    boot: &Boot,
    cluster: ClusterId,
    metrics: &NodeMetrics,
    deadline: Instant,
) -> Result<(), String> {
    let raft = core.raft();
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Through the service, under its membership lock: beside it, the
    // update could land in the middle of a join, a removal or a
    // replacement the service is running (finding 58).
    if metrics.leader == Some(raft.id()) {
        let until = Instant::now() + remaining.min(JOIN);
        return core.service.update_own_record(until).await.map_err(|err| err.to_string());
    }
    let view = core.fresh_view().ok_or("the tailnet view is missing or out of date")?;
    let hint = match leader_hint(metrics).filter(|h| h.id != raft.id()) {
        Some(hint) => hint,
        None => {
            let (answers, _) = probe_all(core, &view, &[], false, deadline).await;
            answers
                .into_iter()
                .find_map(|p| match p.answer {
                    Answer::Member { cluster: c, leader: Some(l) }
                        if c == cluster && l.id != raft.id() =>
                    {
                        Some(l)
                    }
                    _ => None,
                })
                .ok_or("no peer names a leader of this node's cluster")?
        }
    };
    join(core, boot, cluster, hint, &view, deadline).await
}

async fn wait_for_leader<S: StateMachine>(
    core: &Core<S>,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    core.raft()
        .wait_for_leadership(remaining, |m| m.leader.is_some())
        .await
        .map(|_| ())
        .map_err(|_| Error::NoLeader { waited: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ts_discovery::{StableNodeId, TailnetNode};

    use super::*;

    fn node(name: &str, online: bool, has_path: bool) -> TailnetNode {
        let last = name.bytes().last().unwrap_or(0);
        TailnetNode {
            id: StableNodeId(name.to_owned()),
            hostname: name.to_owned(),
            dns_name: String::new(),
            ipv4: Some(Ipv4Addr::new(100, 64, 0, last)),
            ipv6: None,
            tags: ["tag:t".to_owned()].into(),
            online,
            has_path,
        }
    }

    fn view(peers: &[(&str, bool, bool)]) -> ClusterView {
        let peers = peers.iter().map(|(n, online, path)| node(n, *online, *path));
        ClusterView::new("tag:t", node("m", true, true), peers)
    }

    /// An online peer without a path is not dialed until its path arrives,
    /// or for at most PATHLESS_GRACE; a peer with a path from the start,
    /// or offline, is not held back (offline peers are silent anyway).
    #[test]
    fn a_hint_naming_an_earlier_incarnation_is_followed_only_through_its_new_one() {
        let (c, other) = (ClusterId(1), ClusterId(2));
        let hint = |id, name: &str| LeaderHint {
            id,
            node: NodeInfo {
                stable_id: name.to_owned(),
                addrs: Vec::new(),
                raft_port: 0,
                command_port: 0,
            },
        };
        let answer = |answer| vec![Peer { name: "a".to_owned(), answer }];
        let ids = BTreeMap::from([("a".to_owned(), 7)]);
        // The named node answered as the raft id named: the hint holds.
        assert_eq!(current_hint(c, hint(7, "a"), &[], &ids), Ok(hint(7, "a")));
        // Not heard this round: nothing to say it is stale.
        assert_eq!(current_hint(c, hint(5, "b"), &[], &ids), Ok(hint(5, "b")));
        // Another incarnation: its own answer decides.
        let led = answer(Answer::Member { cluster: c, leader: Some(hint(7, "a")) });
        assert_eq!(current_hint(c, hint(5, "a"), &led, &ids), Ok(hint(7, "a")));
        let elsewhere = answer(Answer::Member { cluster: c, leader: Some(hint(9, "d")) });
        assert_eq!(current_hint(c, hint(5, "a"), &elsewhere, &ids), Ok(hint(9, "d")));
        for stale in [
            answer(Answer::Fresh { promised_to: None }),
            answer(Answer::Member { cluster: c, leader: None }),
            answer(Answer::Member { cluster: other, leader: Some(hint(7, "a")) }),
        ] {
            let refused = current_hint(c, hint(5, "a"), &stale, &ids);
            assert!(refused.as_ref().is_err_and(|e| e.contains("stale hint")), "{refused:?}");
        }
    }

    #[test]
    fn a_peer_without_a_path_is_dialed_when_it_has_one_or_after_the_grace() {
        let t0 = Instant::now();
        let mut paths = Paths::default();
        let v = view(&[("p", true, false), ("q", true, true), ("r", false, false)]);
        assert_eq!(paths.not_yet_reachable("m", &v, t0), ["p"]);
        assert_eq!(paths.not_yet_reachable("m", &v, t0 + PATHLESS_GRACE / 2), ["p"]);
        assert!(paths.not_yet_reachable("m", &v, t0 + PATHLESS_GRACE).is_empty());
        // Its path arrives: dialed at once (it sorts higher than "m").
        let mut paths = Paths::default();
        assert_eq!(paths.not_yet_reachable("m", &v, t0), ["p"]);
        let v = view(&[("p", true, true), ("q", true, true), ("r", false, false)]);
        assert!(paths.not_yet_reachable("m", &v, t0 + PATHLESS_GRACE / 3).is_empty());
        assert!(paths.is_empty());
    }

    /// A peer that sorts lower and whose path just arrived dials first: this
    /// node waits FIRST_CONTACT_YIELD, so that the two first handshakes do
    /// not cross; a lower peer known with a path from the start is dialed
    /// at once.
    #[test]
    fn a_lower_peer_whose_path_just_arrived_dials_first() {
        let t0 = Instant::now();
        let mut paths = Paths::default();
        let before = view(&[("a", true, false), ("b", true, true), ("p", true, false)]);
        let after = view(&[("a", true, true), ("b", true, true), ("p", true, true)]);
        assert_eq!(paths.not_yet_reachable("m", &before, t0), ["a", "p"]);
        let t1 = t0 + Duration::from_millis(900);
        assert_eq!(paths.not_yet_reachable("m", &after, t1), ["a"]);
        assert_eq!(paths.not_yet_reachable("m", &after, t1 + FIRST_CONTACT_YIELD / 2), ["a"]);
        assert!(paths.not_yet_reachable("m", &after, t1 + FIRST_CONTACT_YIELD).is_empty());
        assert!(paths.is_empty());
        // A peer gone offline meanwhile is forgotten.
        let mut paths = Paths::default();
        paths.not_yet_reachable("m", &before, t0);
        paths.not_yet_reachable("m", &after, t1);
        let gone = view(&[("a", false, true), ("b", true, true), ("p", true, true)]);
        assert!(paths.not_yet_reachable("m", &gone, t1).is_empty());
        assert!(paths.is_empty(), "{:?} {:?}", paths.pathless, paths.gained);
    }
}
