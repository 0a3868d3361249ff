//! The answering side: accepts raft connections from authorized peers and
//! hands their RPCs to the local `Raft`.

use std::sync::Arc;

use openraft::Raft;
use openraft::raft::AppendEntriesResponse;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use ts_transport::{Admission, BoxStream, Listener, PeerAddr, Server};

use super::LeaderContact;
use super::NetworkConfig;
use super::frame::{self, Message};
use super::gate::ClusterGate;
use crate::types::{ClusterId, NodeId, TypeConfig};

/// Decides whether a peer may use the raft port; raft-core does not know
/// where the answer comes from.
pub type Authorize = Arc<dyn Fn(PeerAddr) -> bool + Send + Sync>;

/// Answers queued per connection before handlers wait.
const ANSWER_QUEUE: usize = 256;
/// Requests one connection may have in progress at once.
const MAX_IN_PROGRESS: usize = 64;

/// Serves raft RPCs arriving on `listener`; connections from peers
/// `authorize` refuses are dropped before anything is read (a peer holds
/// at most `max_connections_per_peer`), and a
/// connection whose peer stops being authorized (its tag revoked) is
/// dropped at its next request, never served. A connection must say hello
/// for this node and this node's cluster id; while the node has no cluster
/// id, every connection is refused, and one whose cluster id is no longer
/// this node's is dropped at its next request.
pub(crate) fn start(
    listener: Arc<dyn Listener>,
    raft: Raft<TypeConfig>,
    self_id: NodeId,
    config: NetworkConfig,
    authorize: Authorize,
    gate: Arc<ClusterGate>,
    contact: Arc<LeaderContact>,
) -> Server {
    let admission =
        Admission { allow: authorize.clone(), max_per_peer: config.max_connections_per_peer };
    Server::start_admitting(listener, "raft", admission, move |stream, peer| {
        let raft = raft.clone();
        let config = config.clone();
        let authorize = authorize.clone();
        let gate = gate.clone();
        let contact = contact.clone();
        serve_connection(stream, peer, raft, self_id, config, authorize, gate, contact)
    })
}

/// Why a hello is refused, if it is.
fn check_hello(
    message: &Message,
    config: &NetworkConfig,
    self_id: NodeId,
    own: Option<ClusterId>,
) -> Result<ClusterId, String> {
    let Message::Hello { cluster, cluster_id, to, .. } = message else {
        return Err("expected hello".to_owned());
    };
    if *cluster != config.cluster {
        return Err(format!("this node is in cluster {:?}, not {cluster:?}", config.cluster));
    }
    if *to != self_id {
        return Err(format!("this is node {self_id}, not {to}"));
    }
    match own {
        None => Err("this node has not joined a cluster yet".to_owned()),
        Some(own) if own != *cluster_id => {
            Err(format!("this node is in cluster {own}, not {cluster_id}"))
        }
        Some(own) => Ok(own),
    }
}

#[allow(clippy::too_many_arguments, reason = "one connection's context")]
async fn serve_connection(
    stream: BoxStream,
    peer: PeerAddr,
    raft: Raft<TypeConfig>,
    self_id: NodeId,
    config: NetworkConfig,
    authorize: Authorize,
    gate: Arc<ClusterGate>,
    contact: Arc<LeaderContact>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The first frame must be a hello for this node and cluster.
    let hello =
        tokio::time::timeout(config.handshake_timeout, frame::read(&mut reader, config.max_frame))
            .await;
    let accepted = match hello {
        Ok(Ok(Some(frame))) => check_hello(&frame.message, &config, self_id, gate.get()),
        Ok(Ok(None)) => return,
        Ok(Err(err)) => Err(format!("bad hello: {err}")),
        Err(_) => Err("no hello in time".to_owned()),
    };
    let cluster_id = match accepted {
        Ok(cluster_id) => cluster_id,
        Err(why) => {
            tracing::info!(%peer, %why, "refused raft connection");
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
            if !authorize(peer) {
                tracing::info!(%peer, "dropping the raft connection of a peer no longer authorized");
                break;
            }
            let Ok(permit) = in_progress.clone().acquire_owned().await else { break };
            // Held until the request is handled: the cluster id cannot
            // change under it.
            let entered = gate.enter().await;
            if gate.get() != Some(cluster_id) {
                tracing::info!(%peer, "dropping a raft connection of a cluster this node left");
                break;
            }
            let raft = raft.clone();
            let answers = answers.clone();
            let contact = contact.clone();
            handlers.spawn(async move {
                let _entered = entered;
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
                        Message::InstallSnapshotResult(raft.install_snapshot(req).await)
                    }
                    other => Message::Refused(format!("not a request: {}", variant_name(&other))),
                };
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
