//! Asking peers who they are: probing every tagged peer of the view
//! (`POST /v1/probe`) for its answer (fresh, holding a promise, or a member
//! of a cluster naming its leader) and the raft id it answers as, and
//! which online peers not to dial yet ([`Paths`]: no path in this node's
//! netmap yet, or a lower peer whose first handshake should go first).

use std::collections::BTreeMap;
use std::time::Duration;

use cmd_rpc::{CommandClient, LeaderHint, ProbeRequest, ProbeResponse, ProbeState};
use raft_core::{ClusterId, NodeId};
use tokio::task::JoinSet;
use tokio::time::Instant;
use ts_discovery::{ClusterView, TailnetNode};

use super::{PeerAnswer, attempts};
use crate::core::Core;
use crate::decide::bootstrap::{Answer, Peer};
use crate::machine::StateMachine;
use crate::peers::{check_answer, join_ports};

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
pub(super) const YIELD_CHECK: Duration = Duration::from_millis(200);

/// Peers whose path this node is waiting for, or has just seen arrive.
#[derive(Default)]
pub(super) struct Paths {
    /// When each peer was first seen online without a path.
    pathless: BTreeMap<String, Instant>,
    /// When each peer first seen without a path got one.
    pub(super) gained: BTreeMap<String, Instant>,
}

impl Paths {
    pub(super) fn is_empty(&self) -> bool {
        self.pathless.is_empty() && self.gained.is_empty()
    }

    /// The peers not to dial this round: online peers without a path in
    /// this node's netmap, within [`PATHLESS_GRACE`] of when they were
    /// first seen so, and peers sorting lower than `me` within
    /// [`FIRST_CONTACT_YIELD`] of their path's arrival. They answer
    /// [`Answer::Silent`], which never lets this node form.
    pub(super) fn not_yet_reachable(
        &mut self,
        me: &str,
        view: &ClusterView,
        now: Instant,
    ) -> Vec<String> {
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

/// Probes every tagged peer of `view` at once; offline ones, and those in
/// `not_yet` (no path yet), are silent without a dial. Also the raft id
/// each peer that answered answered as.
pub(super) async fn probe_all<S: StateMachine>(
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
    for (target, until) in attempts(peer, ports, deadline) {
        let request = ProbeRequest { promise: wants_promise };
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
            Err(err) => {
                let port = target.command_port;
                tracing::debug!(peer = %peer.id, port, error = %err, "probe failed");
            }
        }
    }
    (Answer::Silent, None)
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
