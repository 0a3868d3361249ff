//! The calling side: openraft's network factory over a `Transport`.
//!
//! One persistent connection per peer, shared by every RPC to it. Requests
//! carry ids, so several can be in flight; each has its own timeout. A peer
//! that cannot be reached is retried with exponential backoff; until the
//! backoff has passed, calls fail at once with `Unreachable` instead of
//! dialing again.
//!
//! A connection can die without an error: a peer process killed behind a
//! userspace network stack (tsnet) never resets it, and writes keep being
//! accepted. So a call that times out while nothing at all arrived on its
//! connection for its whole wait retires that connection; the next call
//! dials again. A peer that is merely slow still answers something (other
//! calls, heartbeats) and keeps its connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use ts_transport::Transport;

use super::NetworkConfig;
use super::frame::{self, Message};
use super::gate::ClusterGate;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Outgoing frames queued per connection before callers wait.
const SEND_QUEUE: usize = 256;

/// openraft's network factory: hands out clients that share one connection
/// per peer.
pub(crate) struct RaftNetworkClients {
    shared: Arc<ClientsShared>,
}

struct ClientsShared {
    transport: Arc<dyn Transport>,
    config: NetworkConfig,
    self_id: NodeId,
    gate: Arc<ClusterGate>,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
}

impl RaftNetworkClients {
    /// Clients for node `self_id` over `transport`; their hellos carry the
    /// cluster id in `gate`.
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        self_id: NodeId,
        config: NetworkConfig,
        gate: Arc<ClusterGate>,
    ) -> RaftNetworkClients {
        RaftNetworkClients {
            shared: Arc::new(ClientsShared {
                transport,
                config,
                self_id,
                gate,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkClients {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let mut peers = self.shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = match peers.get(&target) {
            // The same node at the same place: keep its connection.
            Some(peer) if peer.node == *node => peer.clone(),
            _ => {
                let peer = Arc::new(Peer::new(target, node.clone()));
                peers.insert(target, peer.clone());
                peer
            }
        };
        PeerClient { shared: self.shared.clone(), peer }
    }
}

/// One peer: its address and the connection to it, if any.
struct Peer {
    target: NodeId,
    node: NodeInfo,
    state: tokio::sync::Mutex<PeerState>,
}

struct PeerState {
    conn: Option<Arc<Conn>>,
    /// No dial before this instant.
    retry_at: Instant,
    backoff: Duration,
}

impl Peer {
    fn new(target: NodeId, node: NodeInfo) -> Peer {
        Peer {
            target,
            node,
            state: tokio::sync::Mutex::new(PeerState {
                conn: None,
                retry_at: Instant::now(),
                backoff: Duration::ZERO,
            }),
        }
    }
}

/// A live connection: a writer task fed by a queue, a reader task that
/// routes answers to their callers.
struct Conn {
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    /// When the connection started.
    opened: Instant,
    /// Microseconds after `opened` at which the last frame arrived.
    last_received_us: Arc<AtomicU64>,
    tasks: [JoinHandle<()>; 2],
}

impl Conn {
    /// Whether nothing has arrived since `since`.
    fn silent_since(&self, since: Instant) -> bool {
        let last =
            self.opened + Duration::from_micros(self.last_received_us.load(Ordering::Acquire));
        last < since
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("cannot reach node {target}: {reason}")]
    Unreachable { target: NodeId, reason: String },
    #[error("connection to node {target} failed: {reason}")]
    Network { target: NodeId, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request of {size} bytes exceeds the {limit}-byte frame limit")]
    TooLarge { size: usize, limit: usize },
}

impl ClientsShared {
    /// The live connection to `peer`, dialing if allowed.
    async fn conn(&self, peer: &Peer, timeout: Duration) -> Result<Arc<Conn>, CallError> {
        let mut state = peer.state.lock().await;
        if let Some(conn) = &state.conn {
            if conn.alive.load(Ordering::Acquire) {
                return Ok(conn.clone());
            }
            state.conn = None;
        }
        if Instant::now() < state.retry_at {
            return Err(CallError::Unreachable {
                target: peer.target,
                reason: format!(
                    "backing off for {:?} after a failed dial",
                    state.retry_at - Instant::now()
                ),
            });
        }
        match self.dial(peer, timeout).await {
            Ok(conn) => {
                state.backoff = Duration::ZERO;
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(reason) => {
                state.backoff = if state.backoff.is_zero() {
                    self.config.min_backoff
                } else {
                    (state.backoff * 2).min(self.config.max_backoff)
                };
                state.retry_at = Instant::now() + state.backoff;
                tracing::debug!(target = peer.target, %reason, backoff = ?state.backoff, "raft dial failed");
                Err(CallError::Unreachable { target: peer.target, reason })
            }
        }
    }

    /// Dials the peer's addresses in order and says hello.
    async fn dial(&self, peer: &Peer, timeout: Duration) -> Result<Arc<Conn>, String> {
        let Some(cluster_id) = self.gate.get() else {
            return Err("this node has no cluster id yet".to_owned());
        };
        let mut last_error = format!("node {} has no address", peer.target);
        for &addr in &peer.node.addrs {
            let mut stream = match self.transport.dial(addr, peer.node.raft_port, timeout).await {
                Ok(stream) => stream,
                Err(err) => {
                    last_error = err.to_string();
                    continue;
                }
            };
            let hello = Message::Hello {
                cluster: self.config.cluster.clone(),
                cluster_id,
                from: self.self_id,
                to: peer.target,
            };
            let handshake = async {
                frame::write(&mut stream, &frame::encode(0, &hello))
                    .await
                    .map_err(|e| e.to_string())?;
                match frame::read(&mut stream, self.config.max_frame).await {
                    Ok(Some(frame)) => match frame.message {
                        Message::Welcome => Ok(()),
                        Message::Refused(why) => Err(format!("refused: {why}")),
                        other => Err(format!("unexpected answer to hello: {other:?}")),
                    },
                    Ok(None) => Err("closed during hello".to_owned()),
                    Err(err) => Err(err.to_string()),
                }
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(())) => return Ok(self.start_conn(stream)),
                Ok(Err(err)) => last_error = format!("{addr}: {err}"),
                Err(_) => last_error = format!("{addr}: no answer to hello within {timeout:?}"),
            }
        }
        Err(last_error)
    }

    fn start_conn(&self, stream: ts_transport::BoxStream) -> Arc<Conn> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let opened = Instant::now();
        let last_received_us = Arc::new(AtomicU64::new(0));
        let writer_task = tokio::spawn({
            let alive = alive.clone();
            async move {
                while let Some(bytes) = queue.recv().await {
                    if frame::write(&mut writer, &bytes).await.is_err() {
                        break;
                    }
                }
                alive.store(false, Ordering::Release);
            }
        });
        let max_frame = self.config.max_frame;
        let reader_task = tokio::spawn({
            let alive = alive.clone();
            let pending = pending.clone();
            let last_received_us = last_received_us.clone();
            async move {
                loop {
                    match frame::read(&mut reader, max_frame).await {
                        Ok(Some(frame)) => {
                            let at = opened.elapsed().as_micros() as u64;
                            last_received_us.store(at, Ordering::Release);
                            let waiter = pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&frame.request_id);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(frame.message);
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::debug!(error = %err, "raft connection read failed");
                            break;
                        }
                    }
                }
                alive.store(false, Ordering::Release);
                // Callers still waiting see their sender dropped.
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        });
        Arc::new(Conn {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            opened,
            last_received_us,
            tasks: [writer_task, reader_task],
        })
    }

    /// Sends `message` to `peer` and waits for its answer, within `timeout`
    /// overall (dial included).
    async fn call(
        &self,
        peer: &Peer,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let deadline = Instant::now() + timeout;
        let conn = self.conn(peer, timeout).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode(id, &message);
        if bytes.len() > self.config.max_frame + 4 {
            return Err(CallError::TooLarge {
                size: bytes.len() - 4,
                limit: self.config.max_frame,
            });
        }
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let sent_at = Instant::now();
        let remaining = deadline.saturating_duration_since(sent_at);
        let sent = tokio::time::timeout(remaining, conn.outgoing.send(bytes)).await;
        if !matches!(sent, Ok(Ok(()))) {
            conn.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            // A send queue that stays full is a connection going nowhere.
            conn.alive.store(false, Ordering::Release);
            return Err(CallError::Network {
                target: peer.target,
                reason: "connection closed".to_owned(),
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Network {
                target: peer.target,
                reason: "connection lost".to_owned(),
            }),
            Err(_) => {
                conn.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if conn.silent_since(sent_at) {
                    tracing::debug!(
                        target = peer.target,
                        "nothing arrived on the raft connection while a call waited; dialing anew"
                    );
                    conn.alive.store(false, Ordering::Release);
                }
                Err(CallError::Timeout(timeout))
            }
        }
    }
}

/// openraft's client for one peer.
pub(crate) struct PeerClient {
    shared: Arc<ClientsShared>,
    peer: Arc<Peer>,
}

impl PeerClient {
    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        err: CallError,
    ) -> RPCError<NodeId, NodeInfo, E> {
        match err {
            CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&err)),
            CallError::Network { .. } | CallError::TooLarge { .. } => {
                RPCError::Network(NetworkError::new(&err))
            }
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.shared.self_id,
                target: self.peer.target,
                timeout,
            }),
        }
    }

    fn unexpected<E: std::error::Error>(&self, answer: &Message) -> RPCError<NodeId, NodeInfo, E> {
        let err = CallError::Network {
            target: self.peer.target,
            reason: format!("unexpected answer {answer:?}"),
        };
        RPCError::Network(NetworkError::new(&err))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let answer = match self
            .shared
            .call(&self.peer, Message::AppendEntries(rpc), option.soft_ttl())
            .await
        {
            Ok(answer) => answer,
            // Too many entries for one frame: openraft retries with fewer.
            Err(CallError::TooLarge { .. }) if entries > 1 => {
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                    entries / 2,
                )));
            }
            Err(err) => return Err(self.rpc_error(RPCTypes::AppendEntries, err)),
        };
        match answer {
            Message::AppendEntriesResult(Ok(resp)) => Ok(resp),
            Message::AppendEntriesResult(Err(err)) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.peer.target, self.peer.node.clone(), err),
            )),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let answer = self
            .shared
            .call(&self.peer, Message::InstallSnapshot(rpc), option.soft_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::InstallSnapshot, e))?;
        match answer {
            Message::InstallSnapshotResult(Ok(resp)) => Ok(resp),
            Message::InstallSnapshotResult(Err(err)) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.peer.target, self.peer.node.clone(), err),
            )),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let answer = self
            .shared
            .call(&self.peer, Message::Vote(rpc), option.soft_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        match answer {
            Message::VoteResult(Ok(resp)) => Ok(resp),
            Message::VoteResult(Err(err)) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.peer.target, self.peer.node.clone(), err),
            )),
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        let min = self.shared.config.min_backoff;
        let max = self.shared.config.max_backoff;
        openraft::network::Backoff::new(std::iter::successors(Some(min), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}
