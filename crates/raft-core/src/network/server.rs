//! The answering side: accepts raft connections from authorized peers and
//! hands their RPCs to the local `Raft`.

use std::sync::Arc;

use openraft::Raft;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use ts_transport::{BoxStream, Listener, PeerAddr, Server};

use super::NetworkConfig;
use super::frame::{self, Message};
use crate::types::{NodeId, TypeConfig};

/// Decides whether a peer may use the raft port; raft-core does not know
/// where the answer comes from.
pub type Authorize = Arc<dyn Fn(PeerAddr) -> bool + Send + Sync>;

/// Answers queued per connection before handlers wait.
const ANSWER_QUEUE: usize = 256;
/// Requests one connection may have in progress at once.
const MAX_IN_PROGRESS: usize = 64;

/// Serves raft RPCs arriving on `listener`; connections from peers
/// `authorize` refuses are dropped before anything is read, and a
/// connection whose peer stops being authorized (its tag revoked) is
/// dropped at its next request, never served.
pub(crate) fn start(
    listener: Arc<dyn Listener>,
    raft: Raft<TypeConfig>,
    self_id: NodeId,
    config: NetworkConfig,
    authorize: Authorize,
) -> Server {
    Server::start(listener, "raft", move |stream, peer| {
        let raft = raft.clone();
        let config = config.clone();
        let authorize = authorize.clone();
        let allowed = authorize(peer);
        async move {
            if !allowed {
                tracing::info!(%peer, "refused raft connection from an unauthorized address");
                return;
            }
            serve_connection(stream, peer, raft, self_id, config, authorize).await;
        }
    })
}

async fn serve_connection(
    stream: BoxStream,
    peer: PeerAddr,
    raft: Raft<TypeConfig>,
    self_id: NodeId,
    config: NetworkConfig,
    authorize: Authorize,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    // The first frame must be a hello for this node and cluster.
    let hello =
        tokio::time::timeout(config.handshake_timeout, frame::read(&mut reader, config.max_frame))
            .await;
    let refusal = match hello {
        Ok(Ok(Some(frame))) => match frame.message {
            Message::Hello { cluster, to, .. } if cluster == config.cluster && to == self_id => {
                None
            }
            Message::Hello { cluster, .. } if cluster != config.cluster => {
                Some(format!("this node is in cluster {:?}, not {cluster:?}", config.cluster))
            }
            Message::Hello { to, .. } => Some(format!("this is node {self_id}, not {to}")),
            _ => Some("expected hello".to_owned()),
        },
        Ok(Ok(None)) => return,
        Ok(Err(err)) => Some(format!("bad hello: {err}")),
        Err(_) => Some("no hello in time".to_owned()),
    };
    if let Some(why) = refusal {
        tracing::info!(%peer, %why, "refused raft connection");
        let _ = frame::write(&mut writer, &frame::encode(0, &Message::Refused(why))).await;
        return;
    }
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
            let raft = raft.clone();
            let answers = answers.clone();
            handlers.spawn(async move {
                let answer = match frame.message {
                    Message::AppendEntries(req) => {
                        Message::AppendEntriesResult(raft.append_entries(req).await)
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
