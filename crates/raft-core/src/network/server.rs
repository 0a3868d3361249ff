//! The answering side: accepts raft connections from authorized peers and
//! hands their RPCs to the local `Raft`.

use std::sync::Arc;

use openraft::Raft;
use openraft::raft::{AppendEntriesResponse, InstallSnapshotRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use ts_transport::{Admission, BoxStream, Listener, PeerAddr, Server};

use super::frame::{self, Message};
use super::gate::ClusterGate;
use super::{LeaderContact, Local, NetworkConfig};
use crate::stats::RaftStats;
use crate::types::{ClusterId, NodeId, NodeInfo, TypeConfig, node_id};

/// Who is behind a peer address: the stable id of the node that owns it,
/// if that node may use the raft port (it carries the cluster's tag, or it
/// is this node), and `None` otherwise. raft-core does not know where the
/// answer comes from (the facade answers from its tailnet view). A caller
/// is admitted only as the node this names: its hello must carry that
/// stable id.
pub type Identify = Arc<dyn Fn(PeerAddr) -> Option<String> + Send + Sync>;

/// Answers queued per connection before handlers wait.
const ANSWER_QUEUE: usize = 256;
/// Requests one connection may have in progress at once.
const MAX_IN_PROGRESS: usize = 64;

/// What the raft port's handlers need from their node.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) local: Local,
    pub(crate) config: NetworkConfig,
    pub(crate) identify: Identify,
    pub(crate) gate: Arc<ClusterGate>,
    pub(crate) contact: Arc<LeaderContact>,
    pub(crate) stats: Arc<RaftStats>,
}

/// Serves raft RPCs arriving on `listener`; connections from peers
/// `identify` does not name are dropped before anything is read (a peer
/// holds at most `max_connections_per_peer`), and a
/// connection whose peer stops being authorized (its tag revoked), or
/// whose address now belongs to a node other than the one its hello was
/// admitted as, is dropped at its next request, never served. A connection must say hello
/// for this node and this node's cluster id, as the node that owns its
/// address (its stable id, and a raft id of that stable id), with this
/// node's session limits; while the node has no cluster id, every
/// connection is refused, and one whose cluster id is no longer this
/// node's is dropped at its next request. Every request must carry a vote
/// of the caller's own raft id.
pub(crate) fn start(listener: Arc<dyn Listener>, context: Context) -> Server {
    let allow = {
        let identify = context.identify.clone();
        Arc::new(move |peer: PeerAddr| identify(peer).is_some())
    };
    let admission = Admission { allow, max_per_peer: context.config.max_connections_per_peer };
    Server::start_admitting(listener, "raft", admission, move |stream, peer| {
        serve_connection(stream, peer, context.clone())
    })
}

/// Why a hello is refused.
#[derive(Debug)]
enum Refusal {
    /// Not a hello for this node and cluster.
    Hello(String),
    /// The caller applies entries with other settings.
    Settings(String),
    /// The caller claims to be a node other than the owner of its address.
    Identity(String),
}

impl Refusal {
    fn why(&self) -> &str {
        match self {
            Refusal::Hello(why) | Refusal::Settings(why) | Refusal::Identity(why) => why,
        }
    }
}

/// The checks of a hello: the caller's claimed node against `owner` (the
/// node that owns the connection's peer address, `None` if nobody
/// authorized does), and, if this node's membership names the claimed raft
/// id, against that record too. Returns the cluster id, the caller's raft
/// id and its stable id.
fn check_hello(
    message: &Message,
    config: &NetworkConfig,
    local: &Local,
    own: Option<ClusterId>,
    owner: Option<&str>,
    known: Option<&NodeInfo>,
) -> Result<(ClusterId, NodeId, String), Refusal> {
    let Message::Hello { cluster, cluster_id, from, stable_id, incarnation, to, sessions } =
        message
    else {
        return Err(Refusal::Hello("expected hello".to_owned()));
    };
    if *cluster != config.cluster {
        return Err(Refusal::Hello(format!(
            "this node is in cluster {:?}, not {cluster:?}",
            config.cluster
        )));
    }
    if *to != local.id {
        return Err(Refusal::Hello(format!("this is node {}, not {to}", local.id)));
    }
    let claimed = || stable_id.chars().take(64).collect::<String>();
    match owner {
        Some(owner) if owner == stable_id => {}
        Some(owner) => {
            return Err(Refusal::Identity(format!(
                "the caller's address belongs to node {owner:?}, which cannot speak as {:?}",
                claimed()
            )));
        }
        None => {
            return Err(Refusal::Identity(format!(
                "the caller's address belongs to no authorized node (it claimed {:?})",
                claimed()
            )));
        }
    }
    if *from != node_id(stable_id, *incarnation) {
        return Err(Refusal::Identity(format!(
            "raft id {from} is not the id of node {:?} incarnation {incarnation:016x} (raft ids \
             are SHA-256-derived; a node of a version that derived them with FNV-1a cannot join)",
            claimed()
        )));
    }
    if let Some(known) = known
        && known.stable_id != *stable_id
    {
        return Err(Refusal::Identity(format!(
            "raft id {from} is node {:?}'s in this node's membership, not {:?}'s",
            known.stable_id,
            claimed()
        )));
    }
    if *sessions != local.sessions {
        return Err(Refusal::Settings(format!(
            "session limits differ: this node applies entries with {:?}, the caller with \
             {sessions:?}; every member must use the same (they decide which sessions exist)",
            local.sessions
        )));
    }
    match own {
        None => Err(Refusal::Hello("this node has not joined a cluster yet".to_owned())),
        Some(own) if own != *cluster_id => {
            Err(Refusal::Hello(format!("this node is in cluster {own}, not {cluster_id}")))
        }
        Some(own) => Ok((own, *from, stable_id.clone())),
    }
}

/// The raft id a request speaks for: the candidate of a vote request, the
/// leader of an AppendEntries or a snapshot chunk.
fn speaks_for(message: &Message) -> Option<NodeId> {
    let vote = match message {
        Message::AppendEntries(req) => &req.vote,
        Message::Vote(req) => &req.vote,
        Message::InstallSnapshot(req) => &req.vote,
        _ => return None,
    };
    vote.leader_id().voted_for()
}

async fn serve_connection(stream: BoxStream, peer: PeerAddr, context: Context) {
    let Context { raft, local, config, identify, gate, contact, stats } = context;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The first frame must be a hello for this node and cluster.
    let hello =
        tokio::time::timeout(config.handshake_timeout, frame::read(&mut reader, config.max_frame))
            .await;
    let accepted = match hello {
        Ok(Ok(Some(frame))) => {
            let owner = identify(peer);
            let known = match &frame.message {
                Message::Hello { from, .. } => raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .nodes()
                    .find_map(|(id, node)| (id == from).then(|| node.clone())),
                _ => None,
            };
            check_hello(
                &frame.message,
                &config,
                &local,
                gate.get(),
                owner.as_deref(),
                known.as_ref(),
            )
        }
        Ok(Ok(None)) => return,
        Ok(Err(err)) => Err(Refusal::Hello(format!("bad hello: {err}"))),
        Err(_) => Err(Refusal::Hello("no hello in time".to_owned())),
    };
    let (cluster_id, caller, stable_id) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            match &refusal {
                Refusal::Settings(why) => {
                    stats.refused_settings.inc();
                    tracing::error!(%peer, %why, "refused a raft connection: the caller applies entries with other settings");
                }
                Refusal::Identity(why) => {
                    stats.refused_identity.inc();
                    tracing::warn!(%peer, %why, "refused a raft connection: the caller is not who it claims");
                }
                Refusal::Hello(why) => tracing::info!(%peer, %why, "refused raft connection"),
            }
            let why = refusal.why().to_owned();
            let _ = frame::write(&mut writer, &frame::encode(0, &Message::Refused(why))).await;
            return;
        }
    };
    if frame::write(&mut writer, &frame::encode(0, &Message::Welcome)).await.is_err() {
        return;
    }

    let (answers, mut queue) = mpsc::channel::<Vec<u8>>(ANSWER_QUEUE);
    let writer_task = async move {
        while let Some(bytes) = queue.recv().await {
            if frame::write(&mut writer, &bytes).await.is_err() {
                break;
            }
        }
    };
    let in_progress = Arc::new(Semaphore::new(MAX_IN_PROGRESS));
    let max_snapshot_bytes = config.max_snapshot_bytes;
    let mut handlers = JoinSet::new();
    let reader_task = async {
        loop {
            let read = frame::read(&mut reader, config.max_frame);
            let frame = match tokio::time::timeout(config.idle_timeout, read).await {
                Err(_) => {
                    tracing::debug!(%peer, "closing an idle raft connection");
                    break;
                }
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => break,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "dropping raft connection");
                    break;
                }
            };
            // The address must still be authorized, and still be the
            // node's the hello was checked against: an address given to
            // another tagged node does not carry the first one's session.
            match identify(peer) {
                None => {
                    tracing::info!(%peer, "dropping the raft connection of a peer no longer authorized");
                    break;
                }
                Some(owner) if owner != stable_id => {
                    stats.refused_identity.inc();
                    tracing::warn!(%peer, admitted = %stable_id, %owner, "dropping a raft connection whose address now belongs to another node");
                    break;
                }
                Some(_) => {}
            }
            if let Some(claimed) = speaks_for(&frame.message)
                && claimed != caller
            {
                stats.refused_identity.inc();
                tracing::warn!(%peer, caller, claimed, "dropping a raft connection whose request speaks for another node");
                break;
            }
            let Ok(permit) = in_progress.clone().acquire_owned().await else { break };
            // Held while raft handles the request (not while its answer
            // waits to be written): the cluster id cannot change under it.
            let entered = gate.enter().await;
            if gate.get() != Some(cluster_id) {
                tracing::info!(%peer, "dropping a raft connection of a cluster this node left");
                break;
            }
            let raft = raft.clone();
            let answers = answers.clone();
            let contact = contact.clone();
            handlers.spawn(async move {
                let answer = match frame.message {
                    Message::AppendEntries(req) => {
                        let answer = raft.append_entries(req).await;
                        if matches!(
                            answer,
                            Ok(AppendEntriesResponse::Success
                                | AppendEntriesResponse::PartialSuccess(_)
                                | AppendEntriesResponse::Conflict)
                        ) {
                            contact.heard();
                        }
                        Message::AppendEntriesResult(answer)
                    }
                    Message::Vote(req) => Message::VoteResult(raft.vote(req).await),
                    Message::InstallSnapshot(req) => {
                        match snapshot_chunk_fits(&req, max_snapshot_bytes) {
                            Ok(()) => {
                                Message::InstallSnapshotResult(raft.install_snapshot(req).await)
                            }
                            Err(why) => {
                                tracing::warn!(%peer, %why, "refusing a snapshot chunk");
                                Message::Refused(why)
                            }
                        }
                    }
                    other => Message::Refused(format!("not a request: {}", variant_name(&other))),
                };
                // The gate guards the raft call only: a caller slow to read
                // its answers (the queue full) must not hold identity
                // changes back while its answer waits (issue 12).
                drop(entered);
                let _ = answers.send(frame::encode(frame.request_id, &answer)).await;
                drop(permit);
            });
            while handlers.try_join_next().is_some() {}
        }
        drop(answers);
    };
    tokio::join!(reader_task, writer_task);
    handlers.shutdown().await;
}

/// Whether a snapshot chunk stays within `limit` bytes of snapshot. The
/// snapshot is received into memory and openraft writes a chunk at its
/// offset, whatever it is: unchecked, one chunk at offset 2^40 would
/// allocate a terabyte.
fn snapshot_chunk_fits(req: &InstallSnapshotRequest<TypeConfig>, limit: u64) -> Result<(), String> {
    let end = req.offset.checked_add(req.data.len() as u64);
    match end {
        Some(end) if end <= limit => Ok(()),
        _ => Err(format!(
            "snapshot {} chunk at offset {} ({} bytes) reaches past the {limit}-byte limit on \
             snapshots (network.max_snapshot_bytes)",
            req.meta.snapshot_id,
            req.offset,
            req.data.len()
        )),
    }
}

fn variant_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::Welcome => "welcome",
        Message::Refused(_) => "refused",
        Message::AppendEntries(_) => "append entries",
        Message::AppendEntriesResult(_) => "append entries result",
        Message::Vote(_) => "vote",
        Message::VoteResult(_) => "vote result",
        Message::InstallSnapshot(_) => "install snapshot",
        Message::InstallSnapshotResult(_) => "install snapshot result",
    }
}
