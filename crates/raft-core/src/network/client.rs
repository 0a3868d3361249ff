//! The calling side: openraft's network factory over a `Transport`.
//!
//! Two persistent connections ("lanes") per peer, each shared by every RPC
//! of its kind: the control lane carries votes and heartbeats (empty
//! AppendEntries), the bulk lane AppendEntries with entries and snapshot
//! chunks, so a large frame never holds up a heartbeat behind it and a
//! follower that is catching up keeps hearing from its leader. Requests
//! carry ids, so several can be in flight on a lane.
//!
//! **Connecting** runs in the background, per address within
//! `connect_timeout`: a call waits for it only as long as its own timeout,
//! and the next call finds the connection (or waits on the same dial). So a
//! link whose dial and hello take longer than one heartbeat still connects.
//! A peer that cannot be reached is dialed again with exponential backoff;
//! until the backoff has passed, calls fail at once with `Unreachable`.
//!
//! **Authorization** is checked on the way out too: a peer's address is
//! dialed only while `Identify` names the peer's stable id as its owner,
//! and every call first checks that again for the address of its
//! connection; once a peer is no longer authorized (its tag was revoked)
//! or its address belongs to another node, its connections are dropped
//! and calls to it refused, so a revoked member stops receiving the log
//! and nothing meant for it reaches the address's new owner.
//!
//! **Timeouts.** openraft gives AppendEntries one heartbeat interval, far
//! too little for a frame of several MiB on a slow or loaded link. An
//! AppendEntries with entries therefore lives on past openraft's timeout, up
//! to a deadline that fits its size (`silence_timeout` plus the bytes
//! queued ahead of it and its own at `min_throughput`); openraft's retry of
//! the same entries (or of more entries after them) waits for that request's
//! answer instead of sending them again, and answers with what it covers
//! (openraft accepts a partial success). A request past its deadline is
//! given up, and openraft is asked to send fewer entries at a time.
//!
//! **Dead connections.** A peer process killed behind a userspace network
//! stack (tsnet) never resets its connections, and writes keep being
//! accepted until buffers fill. A watchdog closes a connection that has
//! been expecting answers for `silence_timeout` without receiving a byte,
//! or whose writer has been stuck that long on a frame; one that is busy
//! sending a large frame is not silent while its writes make progress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, Vote};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use ts_transport::{PeerAddr, Transport};

use super::frame::{self, Message};
use super::gate::ClusterGate;
use super::{Identify, Local, NetworkConfig};
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Outgoing frames queued per connection before callers wait.
const SEND_QUEUE: usize = 256;
/// Bytes written at a time, so that progress on a large frame is seen.
const WRITE_CHUNK: usize = 64 * 1024;

/// openraft's network factory: hands out clients that share the
/// connections to each peer.
pub(crate) struct RaftNetworkClients {
    shared: Arc<ClientsShared>,
}

struct ClientsShared {
    dialer: Dialer,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
}

/// What a dial needs; cloned into each background dial.
#[derive(Clone)]
struct Dialer {
    transport: Arc<dyn Transport>,
    config: NetworkConfig,
    local: Local,
    gate: Arc<ClusterGate>,
    identify: Identify,
}

impl RaftNetworkClients {
    /// Clients for node `local` over `transport`; their hellos carry who
    /// `local` is, its session limits and the cluster id in `gate`, and they
    /// reach only peers `identify` names.
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        local: Local,
        config: NetworkConfig,
        gate: Arc<ClusterGate>,
        identify: Identify,
    ) -> RaftNetworkClients {
        RaftNetworkClients {
            shared: Arc::new(ClientsShared {
                dialer: Dialer { transport, config, local, gate, identify },
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
            // The same node at the same place: keep its connections.
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

/// Which of a peer's two connections a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Votes and heartbeats: small, and must never wait behind a large
    /// frame.
    Control = 0,
    /// AppendEntries with entries, snapshot chunks.
    Bulk = 1,
}

/// One peer: its address and its connections.
struct Peer {
    target: NodeId,
    node: NodeInfo,
    lanes: [Mutex<LaneState>; 2],
    /// The AppendEntries with entries in flight on the bulk lane, which
    /// openraft's retries wait for instead of sending it again.
    append: Mutex<Option<InflightAppend>>,
    /// A log id the peer is known to hold, under a leader's vote.
    confirmed: Mutex<Option<(Vote<NodeId>, LogId<NodeId>)>>,
}

struct LaneState {
    conn: Option<Arc<Conn>>,
    /// A dial in progress: flips to true when it ends.
    dialing: Option<(watch::Receiver<bool>, JoinHandle<()>)>,
    /// No dial before this instant.
    retry_at: Instant,
    backoff: Duration,
    /// Why the last dial failed.
    last_error: Option<String>,
}

impl Peer {
    fn new(target: NodeId, node: NodeInfo) -> Peer {
        let lane = || {
            Mutex::new(LaneState {
                conn: None,
                dialing: None,
                retry_at: Instant::now(),
                backoff: Duration::ZERO,
                last_error: None,
            })
        };
        Peer {
            target,
            node,
            lanes: [lane(), lane()],
            append: Mutex::new(None),
            confirmed: Mutex::new(None),
        }
    }

    fn lane(&self, lane: Lane) -> std::sync::MutexGuard<'_, LaneState> {
        self.lanes[lane as usize].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for lane in &self.lanes {
            let mut state = lane.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, task)) = state.dialing.take() {
                task.abort();
            }
        }
    }
}

/// The answer of an AppendEntries, kept for whoever waits for it.
type AppendAnswer = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
/// An answer as it arrived: the peer's, or why it made no sense.
type Delivered = Result<AppendAnswer, String>;

/// An AppendEntries with entries, sent and not yet answered.
struct InflightAppend {
    vote: Vote<NodeId>,
    prev: Option<LogId<NodeId>>,
    /// The last entry it carries.
    last: LogId<NodeId>,
    entries: u64,
    /// `Some` once answered; closed if its connection died.
    answer: watch::Receiver<Option<Delivered>>,
    /// Given up after this.
    deadline: Instant,
    conn: Weak<Conn>,
}

impl InflightAppend {
    /// Whether `rpc` asks for these entries (and maybe more after them) on
    /// the same terms: then its answer is this one's, for a prefix.
    fn covered_by(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        self.vote == rpc.vote
            && self.prev == rpc.prev_log_id
            && rpc.entries.iter().any(|entry| entry.log_id == self.last)
    }
}

/// Whoever waits for the answer to a request.
enum Waiter {
    Once(oneshot::Sender<Message>),
    Append(watch::Sender<Option<Delivered>>),
}

/// A live connection: a writer task fed by a queue, a reader task that
/// routes answers to their callers, a watchdog that closes it once it
/// looks dead.
struct Conn {
    addr: SocketAddr,
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    clock: Arc<ConnClock>,
    tasks: [JoinHandle<()>; 3],
}

/// What the watchdog watches, in microseconds since the connection opened.
struct ConnClock {
    opened: Instant,
    alive: AtomicBool,
    last_received: AtomicU64,
    last_written: AtomicU64,
    /// Bytes queued and not yet written.
    queued: AtomicU64,
    /// Requests written (or being written) and not yet answered.
    expecting: AtomicU64,
    /// Since when answers have been expected without one arriving.
    expecting_since: AtomicU64,
}

impl ConnClock {
    fn now(&self) -> u64 {
        self.opened.elapsed().as_micros() as u64
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Whether the connection looks dead: its writer has been stuck on a
    /// frame for `silence`, or it has been expecting answers that long
    /// without receiving anything.
    fn silent(&self, silence: Duration) -> bool {
        let now = self.now();
        let silence = silence.as_micros() as u64;
        let quiet = |since: u64| now.saturating_sub(since) >= silence;
        if self.queued.load(Ordering::Acquire) > 0 {
            return quiet(self.last_written.load(Ordering::Acquire));
        }
        self.expecting.load(Ordering::Acquire) > 0
            && quiet(self.expecting_since.load(Ordering::Acquire))
            && quiet(self.last_received.load(Ordering::Acquire))
    }
}

impl Conn {
    fn alive(&self) -> bool {
        self.clock.alive()
    }

    /// Ends the connection now; whoever waits on it hears so.
    fn close(&self) {
        self.clock.alive.store(false, Ordering::Release);
        for task in &self.tasks {
            task.abort();
        }
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Queues `bytes` (a frame for request `id`), waited for by `waiter`.
    async fn send(&self, id: u64, bytes: Vec<u8>, waiter: Waiter) -> Result<(), ()> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, waiter);
        let len = bytes.len() as u64;
        self.clock.queued.fetch_add(len, Ordering::AcqRel);
        if self.outgoing.send(bytes).await.is_err() {
            self.clock.queued.fetch_sub(len, Ordering::AcqRel);
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(());
        }
        Ok(())
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
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
    #[error("{entries} entries were not answered within the time their size allows")]
    Slow { entries: u64 },
}

impl Dialer {
    /// Whether `addr` belongs to the node `stable_id` now, as `identify`
    /// names its owner: authorized, and not an address given to another
    /// node since.
    fn owned_by(&self, addr: SocketAddr, stable_id: &str) -> bool {
        (self.identify)(PeerAddr::new(addr)).is_some_and(|owner| owner == stable_id)
    }

    /// Dials the peer's authorized addresses in order, each within
    /// `connect_timeout`, and says hello.
    async fn dial(&self, peer: &NodeInfo, target: NodeId) -> Result<Arc<Conn>, String> {
        let Some(cluster_id) = self.gate.get() else {
            return Err("this node has no cluster id yet".to_owned());
        };
        let timeout = self.config.connect_timeout;
        let mut last_error = format!("node {target} has no address");
        for &ip in &peer.addrs {
            let addr = SocketAddr::new(ip, peer.raft_port);
            if !self.owned_by(addr, &peer.stable_id) {
                last_error = format!("{addr} is not authorized as {}", peer.stable_id);
                continue;
            }
            let hello = Message::Hello {
                cluster: self.config.cluster.clone(),
                cluster_id,
                from: self.local.id,
                stable_id: self.local.stable_id.clone(),
                incarnation: self.local.incarnation,
                to: target,
                sessions: self.local.sessions,
            };
            let connect = async {
                let mut stream = self
                    .transport
                    .dial(ip, peer.raft_port, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                frame::write(&mut stream, &frame::encode(0, &hello))
                    .await
                    .map_err(|e| e.to_string())?;
                match frame::read(&mut stream, self.config.max_frame).await {
                    Ok(Some(frame)) => match frame.message {
                        Message::Welcome => Ok(stream),
                        Message::Refused(why) => Err(format!("refused: {why}")),
                        other => Err(format!("unexpected answer to hello: {other:?}")),
                    },
                    Ok(None) => Err("closed during hello".to_owned()),
                    Err(err) => Err(err.to_string()),
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(stream)) => return Ok(self.start_conn(addr, stream)),
                Ok(Err(err)) => last_error = format!("{addr}: {err}"),
                Err(_) => last_error = format!("{addr}: not connected within {timeout:?}"),
            }
        }
        Err(last_error)
    }

    fn start_conn(&self, addr: SocketAddr, stream: ts_transport::BoxStream) -> Arc<Conn> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let pending: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let clock = Arc::new(ConnClock {
            opened: Instant::now(),
            alive: AtomicBool::new(true),
            last_received: AtomicU64::new(0),
            last_written: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            expecting: AtomicU64::new(0),
            expecting_since: AtomicU64::new(0),
        });
        let writer_task = tokio::spawn({
            let clock = clock.clone();
            async move {
                while let Some(bytes) = queue.recv().await {
                    clock.last_written.store(clock.now(), Ordering::Release);
                    if clock.expecting.fetch_add(1, Ordering::AcqRel) == 0 {
                        clock.expecting_since.store(clock.now(), Ordering::Release);
                    }
                    if write_frame(&mut writer, &bytes, &clock).await.is_err() {
                        break;
                    }
                }
                clock.alive.store(false, Ordering::Release);
            }
        });
        let max_frame = self.config.max_frame;
        let reader_task = tokio::spawn({
            let clock = clock.clone();
            let pending = pending.clone();
            async move {
                loop {
                    match frame::read(&mut reader, max_frame).await {
                        Ok(Some(frame)) => {
                            let now = clock.now();
                            clock.last_received.store(now, Ordering::Release);
                            clock.expecting_since.store(now, Ordering::Release);
                            let _ = clock.expecting.fetch_update(
                                Ordering::AcqRel,
                                Ordering::Acquire,
                                |n| n.checked_sub(1),
                            );
                            let waiter = pending
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&frame.request_id);
                            deliver(waiter, frame.message);
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::debug!(error = %err, "raft connection read failed");
                            break;
                        }
                    }
                }
                clock.alive.store(false, Ordering::Release);
                // Callers still waiting see their sender dropped.
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        });
        let silence = self.config.silence_timeout;
        let watchdog = tokio::spawn({
            let clock = clock.clone();
            let pending = pending.clone();
            let reader = reader_task.abort_handle();
            let writer = writer_task.abort_handle();
            async move {
                while clock.alive() {
                    tokio::time::sleep(silence / 4).await;
                    if clock.silent(silence) {
                        tracing::debug!(
                            %addr,
                            "raft connection silent for {silence:?} while answers were due; dialing anew"
                        );
                        clock.alive.store(false, Ordering::Release);
                        reader.abort();
                        writer.abort();
                        pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                }
            }
        });
        Arc::new(Conn {
            addr,
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            clock,
            tasks: [writer_task, reader_task, watchdog],
        })
    }
}

/// Writes one frame in chunks, recording progress, and flushes.
async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    clock: &ConnClock,
) -> std::io::Result<()> {
    let mut result = Ok(());
    let mut left = bytes.len() as u64;
    for chunk in bytes.chunks(WRITE_CHUNK) {
        result = writer.write_all(chunk).await;
        if result.is_err() {
            break;
        }
        clock.last_written.store(clock.now(), Ordering::Release);
        clock.queued.fetch_sub(chunk.len() as u64, Ordering::AcqRel);
        left -= chunk.len() as u64;
    }
    clock.queued.fetch_sub(left, Ordering::AcqRel);
    result?;
    writer.flush().await
}

/// Hands an answer to whoever waits for it.
fn deliver(waiter: Option<Waiter>, message: Message) {
    match waiter {
        None => {}
        Some(Waiter::Once(tx)) => {
            let _ = tx.send(message);
        }
        Some(Waiter::Append(tx)) => {
            let answer = match message {
                Message::AppendEntriesResult(result) => Ok(result),
                other => Err(format!("unexpected answer {other:?}")),
            };
            let _ = tx.send(Some(answer));
        }
    }
}

/// A copy of an AppendEntries answer (openraft's type is not `Clone`).
fn copy_answer(delivered: &Delivered) -> Delivered {
    let answer = match delivered {
        Ok(answer) => answer,
        Err(why) => return Err(why.clone()),
    };
    Ok(match answer {
        Ok(AppendEntriesResponse::Success) => Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(m)) => {
            Ok(AppendEntriesResponse::PartialSuccess(*m))
        }
        Ok(AppendEntriesResponse::Conflict) => Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(*v)),
        Err(err) => Err(err.clone()),
    })
}

impl ClientsShared {
    fn config(&self) -> &NetworkConfig {
        &self.dialer.config
    }

    /// The live connection of `lane` to `peer`: the one open, or the one a
    /// background dial brings before `until`. A connection to an address
    /// that is no longer authorized as `peer` is dropped and refused.
    async fn conn(
        &self,
        peer: &Arc<Peer>,
        lane: Lane,
        until: Instant,
    ) -> Result<Arc<Conn>, CallError> {
        loop {
            let mut done = {
                let mut state = peer.lane(lane);
                if let Some(conn) = &state.conn {
                    if conn.alive() && self.dialer.owned_by(conn.addr, &peer.node.stable_id) {
                        return Ok(conn.clone());
                    }
                    if conn.alive() {
                        tracing::info!(
                            target = peer.target,
                            addr = %conn.addr,
                            "dropping the raft connection to a peer no longer authorized \
                             (untagged, or its address now another node's)"
                        );
                    }
                    conn.close();
                    state.conn = None;
                }
                if state.dialing.is_none() {
                    let now = Instant::now();
                    if now < state.retry_at {
                        return Err(CallError::Unreachable {
                            target: peer.target,
                            reason: format!(
                                "{}; backing off for {:?}",
                                state.last_error.as_deref().unwrap_or("dial failed"),
                                state.retry_at - now
                            ),
                        });
                    }
                    state.dialing = Some(self.spawn_dial(peer, lane));
                }
                match &state.dialing {
                    Some((done, _)) => done.clone(),
                    None => continue,
                }
            };
            if tokio::time::timeout_at(until, done.wait_for(|ended| *ended)).await.is_err() {
                return Err(CallError::Unreachable {
                    target: peer.target,
                    reason: "still connecting".to_owned(),
                });
            }
            // The dial ended and recorded its outcome: look again.
            let state = peer.lane(lane);
            if state.conn.is_none() && state.dialing.is_none() {
                return Err(CallError::Unreachable {
                    target: peer.target,
                    reason: state.last_error.clone().unwrap_or_else(|| "dial failed".to_owned()),
                });
            }
        }
    }

    /// Dials `lane` of `peer` in the background; the outcome goes into the
    /// lane's state, then the returned receiver flips to true.
    fn spawn_dial(&self, peer: &Arc<Peer>, lane: Lane) -> (watch::Receiver<bool>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let dialer = self.dialer.clone();
        let node = peer.node.clone();
        let target = peer.target;
        let weak = Arc::downgrade(peer);
        let task = tokio::spawn(async move {
            let result = dialer.dial(&node, target).await;
            if let Some(peer) = weak.upgrade() {
                let mut state = peer.lane(lane);
                state.dialing = None;
                match result {
                    Ok(conn) => {
                        state.backoff = Duration::ZERO;
                        state.last_error = None;
                        state.conn = Some(conn);
                    }
                    Err(reason) => {
                        let config = &dialer.config;
                        state.backoff = if state.backoff.is_zero() {
                            config.min_backoff
                        } else {
                            (state.backoff * 2).min(config.max_backoff)
                        };
                        state.retry_at = Instant::now() + state.backoff;
                        tracing::debug!(target, ?lane, %reason, backoff = ?state.backoff, "raft dial failed");
                        state.last_error = Some(reason);
                    }
                }
            }
            let _ = tx.send(true);
        });
        (rx, task)
    }

    /// Encodes `message` for a connection, refusing what exceeds a frame.
    fn encode(&self, id: u64, message: &Message) -> Result<Vec<u8>, CallError> {
        let bytes = frame::encode(id, message);
        let limit = self.config().max_frame;
        if bytes.len() > limit + 4 {
            return Err(CallError::TooLarge { size: bytes.len() - 4, limit });
        }
        Ok(bytes)
    }

    /// Sends `message` on `lane` and waits for its answer, within `timeout`
    /// overall (waiting for a connection included).
    ///
    /// On the control lane, a request whose connection breaks under it is
    /// sent once more on a new connection if time is left. A connection
    /// can sit unused for long (followers talk to each other only in
    /// elections) while the peer's process restarts; behind a userspace
    /// network stack nothing tells this side until it writes, and the
    /// answer to that write is a reset. Without the second try, the vote
    /// that peer would have granted is lost for the whole election. Votes,
    /// heartbeats and probes are idempotent, so a request that did arrive
    /// before the break does no harm arriving again.
    async fn call(
        &self,
        peer: &Arc<Peer>,
        lane: Lane,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let until = Instant::now() + timeout;
        let first = self.call_once(peer, lane, &message, until, timeout).await;
        match first {
            Err(CallError::Network { ref reason, .. })
                if lane == Lane::Control && Instant::now() < until =>
            {
                tracing::debug!(
                    target = peer.target,
                    %reason,
                    "raft connection broke under a request; sending it once more on a new one"
                );
                self.call_once(peer, lane, &message, until, timeout).await
            }
            other => other,
        }
    }

    /// One try of [`ClientsShared::call`], until `until`.
    async fn call_once(
        &self,
        peer: &Arc<Peer>,
        lane: Lane,
        message: &Message,
        until: Instant,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let conn = self.conn(peer, lane, until).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = self.encode(id, message)?;
        let (tx, rx) = oneshot::channel();
        // Forgets the request if openraft drops this call first.
        let _forget = Forget(&conn, id);
        let broken = |reason: &str| {
            // Whatever broke it, the next try must not find it again.
            conn.close();
            CallError::Network { target: peer.target, reason: reason.to_owned() }
        };
        match tokio::time::timeout_at(until, conn.send(id, bytes, Waiter::Once(tx))).await {
            Ok(Ok(())) => {}
            Ok(Err(())) => return Err(broken("connection closed")),
            // Its queue stayed full: out of time, not broken.
            Err(_) => {
                return Err(CallError::Network {
                    target: peer.target,
                    reason: "connection closed".to_owned(),
                });
            }
        }
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(broken("connection lost")),
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Before entries go after a log id the peer is not known to hold, an
    /// empty AppendEntries on the control lane asks whether it does: a
    /// conflict (or a higher vote) is then answered without sending a
    /// frame of entries that the peer would refuse. `Some` is that answer;
    /// `None` means the entries may go.
    async fn probe(
        &self,
        peer: &Arc<Peer>,
        rpc: &AppendEntriesRequest<TypeConfig>,
        until: Instant,
    ) -> Result<Option<AppendAnswer>, CallError> {
        let Some(prev) = rpc.prev_log_id else { return Ok(None) };
        if *peer.confirmed.lock().unwrap_or_else(|p| p.into_inner()) == Some((rpc.vote, prev)) {
            return Ok(None);
        }
        let probe = AppendEntriesRequest {
            vote: rpc.vote,
            prev_log_id: Some(prev),
            leader_commit: rpc.leader_commit,
            entries: Vec::new(),
        };
        let timeout = until.saturating_duration_since(Instant::now());
        match self.call(peer, Lane::Control, Message::AppendEntries(probe), timeout).await? {
            Message::AppendEntriesResult(Ok(
                AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_),
            )) => {
                *peer.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = Some((rpc.vote, prev));
                Ok(None)
            }
            Message::AppendEntriesResult(answer) => Ok(Some(answer)),
            other => Err(CallError::Network {
                target: peer.target,
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    /// An AppendEntries with entries on the bulk lane. If the same entries
    /// (or a prefix of these) are already in flight on the same terms, this
    /// waits for that request's answer instead of sending them again.
    async fn append(
        &self,
        peer: &Arc<Peer>,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<AppendAnswer, CallError> {
        let until = Instant::now() + timeout;
        let Some(last) = rpc.entries.last().map(|e| e.log_id) else {
            return Err(CallError::Network {
                target: peer.target,
                reason: "an AppendEntries without entries is not bulk".to_owned(),
            });
        };
        let attach = {
            let mut slot = peer.append.lock().unwrap_or_else(|p| p.into_inner());
            match slot.take() {
                Some(inflight) if inflight.covered_by(&rpc) => {
                    let alive = inflight.conn.upgrade().is_some_and(|c| c.alive());
                    let answered = inflight.answer.borrow().is_some();
                    if answered || (alive && Instant::now() < inflight.deadline) {
                        let attach = (inflight.answer.clone(), inflight.last);
                        *slot = Some(inflight);
                        Some(attach)
                    } else {
                        if alive && inflight.entries > 1 {
                            // Still going, but slower than min_throughput:
                            // send fewer entries at a time from now on.
                            tracing::debug!(
                                target = peer.target,
                                entries = inflight.entries,
                                "AppendEntries not answered by its deadline; asking for smaller ones"
                            );
                            return Err(CallError::Slow { entries: inflight.entries });
                        }
                        None
                    }
                }
                other => {
                    *slot = other;
                    None
                }
            }
        };
        let (answer, covered) = match attach {
            Some(attached) => attached,
            None => {
                if let Some(answer) = self.probe(peer, &rpc, until).await? {
                    return Ok(answer);
                }
                let conn = self.conn(peer, Lane::Bulk, until).await?;
                let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
                let entries = rpc.entries.len() as u64;
                let (vote, prev) = (rpc.vote, rpc.prev_log_id);
                let bytes = self.encode(id, &Message::AppendEntries(rpc))?;
                let ahead = conn.clock.queued.load(Ordering::Acquire);
                let deadline =
                    Instant::now() + self.config().transfer_time(ahead + bytes.len() as u64);
                let (tx, rx) = watch::channel(None);
                *peer.append.lock().unwrap_or_else(|p| p.into_inner()) = Some(InflightAppend {
                    vote,
                    prev,
                    last,
                    entries,
                    answer: rx.clone(),
                    deadline,
                    conn: Arc::downgrade(&conn),
                });
                let sent = tokio::time::timeout_at(until, conn.send(id, bytes, Waiter::Append(tx)));
                if !matches!(sent.await, Ok(Ok(()))) {
                    return Err(CallError::Network {
                        target: peer.target,
                        reason: "connection closed".to_owned(),
                    });
                }
                (rx, last)
            }
        };
        let mut answer = answer;
        let waited = tokio::time::timeout_at(until, answer.wait_for(Option::is_some)).await;
        let result = match waited {
            Err(_) => return Err(CallError::Timeout(timeout)),
            Ok(Err(_)) => Err(CallError::Network {
                target: peer.target,
                reason: "connection lost".to_owned(),
            }),
            Ok(Ok(value)) => match value.as_ref().map(copy_answer) {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(reason)) => Err(CallError::Network { target: peer.target, reason }),
                None => {
                    Err(CallError::Network { target: peer.target, reason: "no answer".to_owned() })
                }
            },
        };
        // Answered (or lost): nobody waits for it any more.
        let mut slot = peer.append.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inflight) = slot.as_ref().filter(|s| s.last == covered) {
            let vote = inflight.vote;
            *slot = None;
            drop(slot);
            let mut confirmed = peer.confirmed.lock().unwrap_or_else(|p| p.into_inner());
            *confirmed = match &result {
                Ok(Ok(AppendEntriesResponse::Success)) => Some((vote, covered)),
                _ => None,
            };
        }
        match result? {
            Ok(AppendEntriesResponse::Success) if covered != last => {
                Ok(Ok(AppendEntriesResponse::PartialSuccess(Some(covered))))
            }
            answer => Ok(answer),
        }
    }
}

/// Forgets a request whose caller is gone (openraft dropped the call).
struct Forget<'a>(&'a Conn, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
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
            CallError::Network { .. } | CallError::TooLarge { .. } | CallError::Slow { .. } => {
                RPCError::Network(NetworkError::new(&err))
            }
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.shared.dialer.local.id,
                target: self.peer.target,
                timeout,
            }),
        }
    }

    fn unexpected<E: std::error::Error>(&self, answer: &Message) -> RPCError<NodeId, NodeInfo, E> {
        let reason = match answer {
            Message::Refused(why) => format!("refused: {why}"),
            other => format!("unexpected answer {other:?}"),
        };
        let err = CallError::Network { target: self.peer.target, reason };
        RPCError::Network(NetworkError::new(&err))
    }

    /// The peer refused a snapshot chunk (it reaches past the peer's
    /// `network.max_snapshot_bytes`). Sending it again at once cannot
    /// succeed: as a network error, openraft retried the chunk at once and
    /// then streamed the whole snapshot again from offset 0, for ever.
    /// `Unreachable` makes openraft's snapshot sender and its replication
    /// back off (this client's `backoff`) between attempts.
    fn snapshot_refused<E: std::error::Error>(&self, why: &str) -> RPCError<NodeId, NodeInfo, E> {
        tracing::error!(
            target = self.peer.target,
            %why,
            "the peer refused the snapshot; it cannot catch up until network.max_snapshot_bytes \
             exceeds the snapshot on every node"
        );
        let err =
            CallError::Network { target: self.peer.target, reason: format!("refused: {why}") };
        RPCError::Unreachable(Unreachable::new(&err))
    }

    fn remote<E: std::error::Error>(
        &self,
        err: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.peer.target,
            self.peer.node.clone(),
            err,
        ))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        // openraft drops the call at its hard ttl; waiting that long here
        // costs nothing, and a bulk request lives on past it anyway.
        let timeout = option.hard_ttl();
        let answer = if entries == 0 {
            match self
                .shared
                .call(&self.peer, Lane::Control, Message::AppendEntries(rpc), timeout)
                .await
            {
                Ok(Message::AppendEntriesResult(answer)) => answer,
                Ok(other) => return Err(self.unexpected(&other)),
                Err(err) => return Err(self.rpc_error(RPCTypes::AppendEntries, err)),
            }
        } else {
            match self.shared.append(&self.peer, rpc, timeout).await {
                Ok(answer) => answer,
                // Too many entries for one frame, or for the time a frame
                // gets: openraft retries at once with fewer.
                Err(CallError::TooLarge { .. }) if entries > 1 => {
                    return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                        entries / 2,
                    )));
                }
                Err(CallError::Slow { entries: slow }) if slow > 1 => {
                    return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                        slow / 2,
                    )));
                }
                Err(err) => return Err(self.rpc_error(RPCTypes::AppendEntries, err)),
            }
        };
        answer.map_err(|err| self.remote(err))
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
            .call(&self.peer, Lane::Bulk, Message::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::InstallSnapshot, e))?;
        match answer {
            Message::InstallSnapshotResult(answer) => answer.map_err(|err| self.remote(err)),
            Message::Refused(why) => Err(self.snapshot_refused(&why)),
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
            .call(&self.peer, Lane::Control, Message::Vote(rpc), option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        match answer {
            Message::VoteResult(answer) => answer.map_err(|err| self.remote(err)),
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        let min = self.shared.config().min_backoff;
        let max = self.shared.config().max_backoff;
        openraft::network::Backoff::new(std::iter::successors(Some(min), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    use openraft::Vote;
    use test_support::Hook;
    use test_support::stream::HookedTransport;
    use ts_transport::MemNetwork;

    use super::*;
    use crate::types::ClusterId;

    const PORT: u16 = 7000;

    fn ip(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
    }

    /// The dialing side's view of a peer whose process can restart behind
    /// a userspace network stack: after [`Restarts::restart`], connections
    /// dialed before it hear nothing until they write, and the write is
    /// answered with a reset (the new process knows no such connection).
    #[derive(Clone)]
    struct Restarts {
        transport: Arc<dyn Transport>,
        epoch: Arc<AtomicU64>,
    }

    impl Restarts {
        fn new(inner: Arc<dyn Transport>) -> Restarts {
            let epoch = Arc::new(AtomicU64::new(0));
            let dial_epoch = epoch.clone();
            let inner = HookedTransport::new(inner).dialed(move |_, _| EpochHook {
                dialed_in: dial_epoch.load(Ordering::Acquire),
                epoch: dial_epoch.clone(),
                reset: false,
                reader: None,
            });
            Restarts { transport: Arc::new(inner), epoch }
        }

        fn restart(&self) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The hook of one dialed stream: stale once the peer restarted since
    /// the dial.
    struct EpochHook {
        dialed_in: u64,
        epoch: Arc<AtomicU64>,
        reset: bool,
        reader: Option<Waker>,
    }

    impl EpochHook {
        fn stale(&self) -> bool {
            self.epoch.load(Ordering::Acquire) != self.dialed_in
        }

        fn reset_error() -> io::Error {
            io::Error::new(io::ErrorKind::ConnectionReset, "the peer restarted")
        }
    }

    impl Hook for EpochHook {
        fn before_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.reader = Some(cx.waker().clone());
            if self.reset {
                return Poll::Ready(Err(EpochHook::reset_error()));
            }
            if self.stale() {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn before_write(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.stale() || self.reset {
                // The reset comes back for the reader too.
                self.reset = true;
                if let Some(waker) = self.reader.take() {
                    waker.wake();
                }
                return Poll::Ready(Err(EpochHook::reset_error()));
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A played peer: welcomes every hello, answers other requests with
    /// `answer` (or hangs up where it gives none); counts the connections
    /// it accepted.
    async fn played_peer(
        net: &MemNetwork,
        accepted: Arc<AtomicUsize>,
        answer: fn(Message) -> Option<Message>,
    ) -> JoinHandle<()> {
        let listener = net.node(ip(2)).listen(PORT).await.expect("listen");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    while let Ok(Some(frame)) = frame::read(&mut stream, 1 << 20).await {
                        let answer = match frame.message {
                            Message::Hello { .. } => Message::Welcome,
                            other => match answer(other) {
                                Some(answer) => answer,
                                None => return,
                            },
                        };
                        let bytes = frame::encode(frame.request_id, &answer);
                        if frame::write(&mut stream, &bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }

    /// Node 1's client, over `transport`, to the played peer: node 2, stable
    /// id "peer", listening on `ip(2)`:`PORT` (see [`played_peer`]).
    async fn client_to_peer(transport: Arc<dyn Transport>) -> PeerClient {
        let gate = Arc::new(ClusterGate::new(Some(ClusterId::random().expect("randomness"))));
        let local = Local {
            id: crate::types::node_id("self", 1),
            stable_id: "self".to_owned(),
            incarnation: 1,
            sessions: crate::sessions::SessionLimits::default(),
        };
        let mut clients = RaftNetworkClients::new(
            transport,
            local,
            NetworkConfig::default(),
            gate,
            Arc::new(|_| Some("peer".to_owned())),
        );
        let node = NodeInfo {
            stable_id: "peer".to_owned(),
            addrs: vec![ip(2)],
            raft_port: PORT,
            command_port: PORT + 1,
        };
        clients.new_client(2, &node).await
    }

    /// A peer that grants every vote; counts the connections it accepted.
    async fn granting_peer(net: &MemNetwork, accepted: Arc<AtomicUsize>) -> JoinHandle<()> {
        played_peer(net, accepted, |message| match message {
            Message::Vote(rpc) => {
                Some(Message::VoteResult(Ok(VoteResponse::new(rpc.vote, None, true))))
            }
            _ => None,
        })
        .await
    }

    /// A candidate's vote request to a peer whose process restarted since
    /// their last exchange reaches the new process: the connection that
    /// breaks under the request is replaced within the vote's timeout,
    /// instead of the vote being lost for the whole election.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_over_a_connection_the_peer_restarted_under_is_sent_again() {
        let net = MemNetwork::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = granting_peer(&net, accepted.clone()).await;
        let transport = Restarts::new(Arc::new(net.node(ip(1))));
        let mut client = client_to_peer(transport.transport.clone()).await;
        let option = || RPCOption::new(Duration::from_millis(600));

        let first = client.vote(VoteRequest::new(Vote::new(1, 1), None), option()).await;
        assert!(first.is_ok_and(|r| r.vote_granted), "the first vote is answered");
        assert_eq!(accepted.load(Ordering::Acquire), 1);

        transport.restart();
        let second = client.vote(VoteRequest::new(Vote::new(2, 1), None), option()).await;
        match second {
            Ok(answer) => assert!(answer.vote_granted, "{answer:?}"),
            Err(err) => panic!("the vote after the restart was lost: {err}"),
        }
        assert_eq!(accepted.load(Ordering::Acquire), 2, "on a new connection");
        server.abort();
    }

    /// A peer that refuses every snapshot chunk, as one whose
    /// `network.max_snapshot_bytes` the snapshot exceeds.
    async fn refusing_peer(net: &MemNetwork) -> JoinHandle<()> {
        played_peer(net, Arc::default(), |message| match message {
            Message::InstallSnapshot(_) => Some(Message::Refused(
                "reaches past the limit (network.max_snapshot_bytes)".to_owned(),
            )),
            _ => None,
        })
        .await
    }

    /// A refused snapshot chunk is `Unreachable`, on which openraft's
    /// snapshot sender and replication back off. As a network error it was
    /// sent again at once, and the whole snapshot streamed again from
    /// offset 0, for ever (hostile review of issue 12, finding 3).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_snapshot_chunk_makes_the_sender_back_off() {
        use openraft::raft::InstallSnapshotRequest;
        use openraft::{SnapshotMeta, StoredMembership};

        let net = MemNetwork::new();
        let server = refusing_peer(&net).await;
        let mut client = client_to_peer(Arc::new(net.node(ip(1)))).await;
        let req = InstallSnapshotRequest {
            vote: Vote::new(1, 1),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: "big".to_owned(),
            },
            offset: 0,
            data: vec![0; 1024],
            done: false,
        };
        let answer = client.install_snapshot(req, RPCOption::new(Duration::from_secs(5))).await;
        match answer {
            Err(RPCError::Unreachable(err)) => {
                assert!(err.to_string().contains("network.max_snapshot_bytes"), "{err}")
            }
            other => panic!("a refused chunk gave {other:?}, not Unreachable"),
        }
        server.abort();
    }
}
