//! Finding or forming the cluster at start (decision 0003): the shell
//! around [`decide::bootstrap`].
//!
//! A node with raft state resumes: the leader replicates to it again
//! (first, if the membership records it at other ports or addresses than
//! it runs on now, it has the leader replace its record:
//! [`record::update_record`]). A
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
//!
//! The decisions are [`decide::bootstrap`]'s pure functions; this module
//! holds the lock and the start loop ([`run`]), and its submodules the
//! steps, one concern each:
//!
//! - [`answer`]: answering other nodes' probes and confirms under the lock;
//! - [`probe`]: asking every tagged peer who it is and which cluster it is
//!   in, and which peers not to dial yet ([`probe::Paths`]);
//! - [`ready`]: when this node becomes ready (grants promises, binds and
//!   seals), and giving up a binding whose former is gone or forgot it;
//! - [`round`](mod@round): one round: deciding on the peers' answers
//!   and acting;
//! - [`form`]: forming a cluster: storing its id, the confirm and seal
//!   rounds, initializing it;
//! - [`join`]: joining an existing cluster through the leader a peer names;
//! - [`record`]: at a resume, having the leader update this node's own
//!   record.
//!
//! [`decide::bootstrap`]: crate::decide::bootstrap
//! [`decide::bootstrap::decide`]: crate::decide::bootstrap::decide

mod answer;
mod form;
mod join;
mod probe;
mod ready;
mod record;
mod round;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::LeaderHint;
use raft_core::{ClusterId, NodeId, NodeInfo, NodeMetrics};
use tokio::sync::watch;
use tokio::time::Instant;
use ts_discovery::TailnetNode;

use self::probe::{Paths, YIELD_CHECK, probe_all};
use self::ready::{become_ready, give_up_binding, offline_advice, offline_of};
use self::record::update_record;
use self::round::{Owned, Round, round};
use crate::config::BootstrapOptions;
use crate::core::Core;
use crate::decide::bootstrap::{Answer, Names, Peer, wants_promises};
use crate::error::Error;
use crate::machine::StateMachine;

/// The bootstrap part of a node: its bootstrap lock, held while it starts
/// ([`run`]) and while it answers other nodes' probes and confirms.
#[derive(Clone, Default)]
pub(crate) struct Boot {
    state: Arc<tokio::sync::Mutex<BootState>>,
}

impl Boot {
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, BootState> {
        self.state.lock().await
    }
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
struct Forming {
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

/// The attempts to reach `peer` at each of `ports` in turn: its command
/// target on that port, and when that attempt must end (at most
/// [`ATTEMPT`] from when it is asked for, never after `deadline`). Ends
/// once the deadline has passed, so a caller that takes the next attempt
/// only after the last one failed stops on time.
fn attempts<'a>(
    peer: &'a TailnetNode,
    ports: &'a [u16],
    deadline: Instant,
) -> impl Iterator<Item = (NodeInfo, Instant)> + 'a {
    let addrs: Vec<IpAddr> = peer.addrs().collect();
    ports.iter().map_while(move |&port| {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return None;
        }
        let target = NodeInfo {
            stable_id: peer.id.0.clone(),
            addrs: addrs.clone(),
            raft_port: 0,
            command_port: port,
        };
        Some((target, now + ATTEMPT.min(remaining)))
    })
}

/// Time a join may take (catching up included).
const JOIN: Duration = Duration::from_secs(30);

/// How long before the start deadline every join's call ends, and no new
/// one starts (at most half the start timeout). The leader runs a join
/// within the time the call gives it, counted from the request's arrival,
/// and a membership change it has begun completes even when it stops
/// waiting: a call cut off right at the deadline could leave the node
/// added just after it gave up. Ending the calls earlier leaves that
/// time for rounds that only watch what the leader did (finding 62).
const JOIN_MARGIN: Duration = Duration::from_secs(1);

/// Longest wait between rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

type PeerAnswer = Peer<String, ClusterId, LeaderHint>;

/// Starts this node's part of the cluster within `timeout`: resumes from
/// stored state (updating its own record if need be), or probes, joins or
/// forms round after round until it has raft state, then waits for a
/// leader (see the module doc).
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
            // A leader may have added this node (as a learner or a voter)
            // in this very round, its answer to the join arriving too
            // late; or the former of the cluster it is bound to may have
            // initialized it. Failing the start would shut down a member,
            // perhaps one the cluster counts in its quorum (finding 62).
            if raft.is_initialized().await {
                return wait_for_leader(core, deadline, started).await;
            }
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

async fn wait_for_leader<S: StateMachine>(
    core: &Core<S>,
    deadline: Instant,
    started: Instant,
) -> Result<(), Error> {
    // At least two of the longest election timeouts: a node that is a
    // member by its deadline fails only if no leader emerges in that time.
    let grace = core.config.timing.election.1 * 2;
    let remaining = deadline.saturating_duration_since(Instant::now()).max(grace);
    core.raft()
        .wait_for_leadership(remaining, |m| m.leader.is_some())
        .await
        .map(|_| ())
        .map_err(|_| Error::NoLeader { waited: started.elapsed() })
}
