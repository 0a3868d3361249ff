//! The calling side: HTTP/1.1 to other nodes' command ports over a
//! `Transport`, with idle connections kept for reuse. Only authorized
//! addresses are called (checked on every call: a peer whose tag was
//! revoked is refused and its idle connections dropped), and at most
//! `max_requests_per_peer` requests are in flight to one address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use raft_core::{ClusterId, NodeId, NodeInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use ts_transport::{PeerAddr, Transport};

use crate::api::ErrorBody;
use crate::code::ErrorCode;
use crate::config::CommandConfig;
use crate::error::RpcError;
use crate::route::Origin;
use crate::server::Authorize;

/// Header carrying the time the caller still allows, in milliseconds.
pub const DEADLINE_HEADER: &str = "x-tsc-deadline-ms";
/// Header marking a request forwarded by another node (never forwarded again).
pub const FORWARDED_HEADER: &str = "x-tsc-forwarded";
/// Header naming the raft id of the member a call is meant for.
pub const TARGET_NODE_HEADER: &str = "x-tsc-target-node";
/// Header naming the sender's cluster id (`none` before it has one).
pub const CLUSTER_HEADER: &str = "x-tsc-cluster";
/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 8;

/// The member a call is meant for: its raft id, in the sender's cluster.
/// A node that is not that member of that cluster (a new incarnation on
/// the same addresses, a node restored as a new cluster) refuses the call
/// as `not_leader` without a hint, and the sender routes it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressee {
    /// The raft id of the member called.
    pub node: NodeId,
    /// The sender's cluster.
    pub cluster: Option<ClusterId>,
}

/// Idle connections by peer address.
type IdlePool = Arc<Mutex<HashMap<SocketAddr, Vec<SendRequest<Full<Bytes>>>>>>;

/// A client for other nodes' command APIs.
#[derive(Clone)]
pub struct CommandClient {
    transport: Arc<dyn Transport>,
    config: CommandConfig,
    idle: IdlePool,
    /// Requests in flight per peer address.
    busy: Arc<Mutex<HashMap<SocketAddr, Arc<Semaphore>>>>,
    authorize: Authorize,
}

impl std::fmt::Debug for CommandClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandClient").finish_non_exhaustive()
    }
}

impl CommandClient {
    /// A client dialing over `transport`, to any address (see
    /// [`CommandClient::authorized_by`]).
    pub fn new(transport: Arc<dyn Transport>, config: CommandConfig) -> CommandClient {
        CommandClient {
            transport,
            config,
            idle: Arc::default(),
            busy: Arc::default(),
            authorize: Arc::new(|_| true),
        }
    }

    /// This client, calling only addresses `authorize` allows, checked on
    /// every call (the node's authorizer: connections this node opens
    /// follow tags as the ones it accepts do).
    pub fn authorized_by(self, authorize: Authorize) -> CommandClient {
        CommandClient { authorize, ..self }
    }

    /// Waits (until `deadline`) for room for one more request to `addr`.
    async fn room(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, RpcError> {
        let limit = self.config.max_requests_per_peer.max(1);
        let semaphore = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone();
        match tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(RpcError::Timeout {
                what: format!("waiting for one of {limit} requests in flight to {addr} to end"),
                after: Duration::ZERO,
            }),
        }
    }

    /// `POST path` with a JSON body to `node`, as a forwarded request when
    /// `origin` is [`Origin::Forwarded`]; decodes a 200 answer as `R`, anything else as the error
    /// the other node reported. Each of the node's addresses gets at most
    /// [`CommandConfig::connect_timeout`] to connect; the answer may take
    /// until `deadline`.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        node: &NodeInfo,
        path: &str,
        body: &B,
        deadline: impl Into<Instant>,
        origin: Origin,
    ) -> Result<R, RpcError> {
        let call = Call {
            deadline: deadline.into(),
            answer_within: None,
            origin,
            to: None,
            answer_limit: self.config.max_response,
            send_by: None,
            written: None,
        };
        self.request(node, Method::POST, path, encode(body)?, call).await.result
    }

    /// [`CommandClient::post`] to a member named by `to`: the call says
    /// which member of which cluster it is meant for, and any other node
    /// refuses it.
    pub async fn post_to<B: Serialize, R: DeserializeOwned>(
        &self,
        to: Addressee,
        node: &NodeInfo,
        path: &str,
        body: &B,
        deadline: impl Into<Instant>,
        origin: Origin,
    ) -> Result<R, RpcError> {
        let call = Call {
            deadline: deadline.into(),
            answer_within: None,
            origin,
            to: Some(to),
            answer_limit: self.config.max_response,
            send_by: None,
            written: None,
        };
        self.request(node, Method::POST, path, encode(body)?, call).await.result
    }

    /// [`CommandClient::post`] as one attempt of a call that may be tried
    /// again, to the member `to` if named: the answer is awaited for at
    /// most `answer_within` (within `deadline`), and the other node is told
    /// that budget as its deadline, so it answers (if only "timeout")
    /// before this side gives up. An attempt that gets no answer in time
    /// drops every idle connection to that address: a peer that died
    /// behind a userspace network stack never resets them.
    #[allow(clippy::too_many_arguments, reason = "post_to's arguments and the attempt's budget")]
    pub async fn post_attempt<B: Serialize, R: DeserializeOwned>(
        &self,
        to: Option<Addressee>,
        node: &NodeInfo,
        path: &str,
        body: &B,
        deadline: impl Into<Instant>,
        answer_within: Duration,
        origin: Origin,
    ) -> Result<R, RpcError> {
        let call = Call {
            deadline: deadline.into(),
            answer_within: Some(answer_within),
            origin,
            to,
            answer_limit: self.config.max_response,
            send_by: None,
            written: None,
        };
        self.request(node, Method::POST, path, encode(body)?, call).await.result
    }

    /// [`CommandClient::post_attempt`] with a body encoded already and an
    /// answer of up to `answer_limit` bytes (a batch's answers); also says
    /// whether an address tried before the one that answered may have
    /// received the request. `written` is set as soon as any of the
    /// request may be written (what [`Sent::written`] says), for a caller
    /// that may drop this call before it ends.
    #[allow(clippy::too_many_arguments, reason = "post_attempt's arguments and the limit")]
    pub(crate) async fn post_attempt_encoded<R: DeserializeOwned>(
        &self,
        to: Option<Addressee>,
        node: &NodeInfo,
        path: &str,
        body: Bytes,
        deadline: impl Into<Instant>,
        answer_within: Duration,
        origin: Origin,
        answer_limit: usize,
        written: &AtomicBool,
    ) -> Sent<R> {
        let deadline = deadline.into();
        self.post_attempt_sent_by(
            to,
            node,
            path,
            body,
            deadline,
            answer_within,
            origin,
            answer_limit,
            None,
            written,
        )
        .await
    }

    /// [`CommandClient::post_attempt_encoded`], given up unwritten (not
    /// sent: `Sent::written` false) if no address has a free request slot
    /// and a connection by `send_by` (when given): a batch whose callers
    /// stop waiting then hands them back unsent before they do.
    #[allow(clippy::too_many_arguments, reason = "post_attempt_encoded's arguments and send_by")]
    pub(crate) async fn post_attempt_sent_by<R: DeserializeOwned>(
        &self,
        to: Option<Addressee>,
        node: &NodeInfo,
        path: &str,
        body: Bytes,
        deadline: impl Into<Instant>,
        answer_within: Duration,
        origin: Origin,
        answer_limit: usize,
        send_by: Option<Instant>,
        written: &AtomicBool,
    ) -> Sent<R> {
        let call = Call {
            deadline: deadline.into(),
            answer_within: Some(answer_within),
            origin,
            to,
            answer_limit,
            send_by,
            written: Some(written),
        };
        self.request(node, Method::POST, path, body, call).await
    }

    /// `GET path` on `node`.
    pub async fn get<R: DeserializeOwned>(
        &self,
        node: &NodeInfo,
        path: &str,
        deadline: impl Into<Instant>,
    ) -> Result<R, RpcError> {
        let call = Call {
            deadline: deadline.into(),
            answer_within: None,
            origin: Origin::Client,
            to: None,
            answer_limit: self.config.max_response,
            send_by: None,
            written: None,
        };
        self.request(node, Method::GET, path, Bytes::new(), call).await.result
    }

    /// Tries `node`'s addresses in order: each gets its own connect budget,
    /// so an address that hangs (a dead peer's IPv4 path) leaves time for
    /// the next. Once a request is sent, its answer decides the call; an
    /// exchange that breaks leaves the next address to try, and the call
    /// remembers that the broken one may have received the request.
    async fn request<R: DeserializeOwned>(
        &self,
        node: &NodeInfo,
        method: Method,
        path: &str,
        body: Bytes,
        call: Call<'_>,
    ) -> Sent<R> {
        let mut sent = false;
        let mut written = false;
        let done = |result: Result<R, RpcError>, sent_before: bool, written: bool| Sent {
            result,
            sent_before,
            written,
        };
        let mut last = RpcError::Unreachable {
            target: node.to_string(),
            reason: "no address".to_owned(),
            source: None,
        };
        for &ip in &node.addrs {
            let addr = SocketAddr::new(ip, node.command_port);
            let what = || format!("{method} {path} to {addr}");
            let remaining = call.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let err = RpcError::Timeout { what: what(), after: Duration::ZERO };
                return done(Err(err), sent, written);
            }
            if !(self.authorize)(PeerAddr::new(addr)) {
                self.forget(addr);
                last = RpcError::Unreachable {
                    target: addr.to_string(),
                    reason: "not an authorized address (no longer tagged?)".to_owned(),
                    source: None,
                };
                continue;
            }
            // Nothing is written before a slot is free and a connection
            // made: both within the deadline, and by `send_by` if given.
            let unwritten_until = call.send_by.map_or(call.deadline, |by| by.min(call.deadline));
            let _room = match self.room(addr, unwritten_until).await {
                Ok(room) => room,
                Err(err) => return done(Err(err), sent, written),
            };
            let remaining = unwritten_until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let err = RpcError::Timeout { what: what(), after: Duration::ZERO };
                return done(Err(err), sent, written);
            }
            let connect = remaining.min(self.config.connect_timeout);
            let sender = match tokio::time::timeout(connect, self.connection(addr, connect)).await {
                Ok(Ok(sender)) => sender,
                Ok(Err(err)) => {
                    last = err;
                    continue;
                }
                Err(_) => {
                    last = RpcError::Unreachable {
                        target: addr.to_string(),
                        reason: format!("no connection within {connect:?}"),
                        source: None,
                    };
                    continue;
                }
            };
            let remaining = call.deadline.saturating_duration_since(Instant::now());
            // The other node's budget, and this side's: a little longer, for
            // the answer to travel back.
            let (budget, wait) = match call.answer_within {
                Some(within) if within < remaining => {
                    (within, (within + self.config.connect_timeout).min(remaining))
                }
                _ => (remaining, remaining),
            };
            // From here on, some of the request may be on the wire: said
            // before the exchange is first polled, so a caller that drops
            // this call at any later point reads it.
            written = true;
            if let Some(flag) = call.written {
                flag.store(true, Ordering::SeqCst);
            }
            let exchange =
                self.exchange(sender, addr, method.clone(), path, body.clone(), budget, call);
            match tokio::time::timeout(wait, exchange).await {
                Err(_) => {
                    // The connection may be dead without an error; so may
                    // the others to the same place.
                    self.forget(addr);
                    return done(
                        Err(RpcError::Timeout { what: what(), after: wait }),
                        sent,
                        written,
                    );
                }
                Ok(Err(Exchanged::Broke(err))) => {
                    last = err;
                    // Some of it may have been written before it broke.
                    sent = true;
                }
                // Answered: the request was carried out (or refused) here,
                // so no other address is tried, even when the answer is
                // too large to read (its outcome is unknown, not "try
                // again elsewhere").
                Ok(Err(Exchanged::Failed(err))) => return done(Err(err), sent, written),
                Ok(Ok((status, bytes))) => {
                    return done(decode(addr, status, &bytes), sent, written);
                }
            }
        }
        done(Err(last), sent, written)
    }

    #[allow(clippy::too_many_arguments, reason = "one request's parts")]
    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Bytes,
        budget: Duration,
        call: Call<'_>,
    ) -> Result<(u16, Bytes), Exchanged> {
        let Call { origin, to, answer_limit, .. } = call;
        let unreachable =
            |err: hyper::Error| Exchanged::Broke(RpcError::unreachable(addr, in_words(&err)));
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(DEADLINE_HEADER, budget.as_millis().to_string());
        if origin == Origin::Forwarded {
            request = request.header(FORWARDED_HEADER, "1");
        }
        if let Some(to) = to {
            let cluster = to.cluster.map(|c| c.to_string()).unwrap_or_else(|| "none".to_owned());
            request = request
                .header(TARGET_NODE_HEADER, to.node.to_string())
                .header(CLUSTER_HEADER, cluster);
        }
        let request = request.body(Full::new(body)).map_err(|e| {
            Exchanged::Failed(RpcError::bad_request_from(e.to_string(), in_words(&e)))
        })?;
        let response = sender.send_request(request).await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut incoming = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(unreachable)?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > answer_limit {
                    // The peer may have carried the request out (a leader
                    // applies a command before it answers): an answer this
                    // node will not read is an unknown outcome, never
                    // `too_large`, which says the request was refused
                    // before the state machine.
                    // The status stays underneath, for a caller that
                    // knows what it means on its path (a 200 from
                    // `/v1/execute`: applied).
                    return Err(Exchanged::Failed(RpcError::Unreachable {
                        target: addr.to_string(),
                        reason: format!(
                            "its answer (status {status}) exceeds this node's {answer_limit}-byte \
                             limit (max_response, per command of a batch); the request may have \
                             been carried out"
                        ),
                        source: Some(Box::new(Oversized {
                            status,
                            limit: answer_limit,
                            answer_shaped: starts_as_an_answer(&bytes, &data),
                        })),
                    }));
                }
                bytes.extend_from_slice(&data);
            }
        }
        self.give_back(addr, sender);
        Ok((status, Bytes::from(bytes)))
    }

    /// An idle connection to `addr`, or a new one.
    async fn connection(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<Full<Bytes>>, RpcError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&addr)
                .and_then(Vec::pop);
            match idle {
                Some(mut sender) if !sender.is_closed() => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                Some(_) => continue,
                None => break,
            }
        }
        let stream = self
            .transport
            .dial(addr.ip(), addr.port(), timeout)
            .await
            .map_err(|e| RpcError::unreachable(addr, e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RpcError::unreachable(addr, in_words(&e)))?;
        // Ends when the connection closes or every sender is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Drops every idle connection to `addr`.
    fn forget(&self, addr: SocketAddr) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
    }

    fn give_back(&self, addr: SocketAddr, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push(sender);
        }
    }
}

/// An answer longer than the call reads: the error underneath the
/// [`RpcError::Unreachable`] such an exchange ends with, keeping the
/// answer's status.
#[derive(Debug, thiserror::Error)]
#[error("an answer (status {status}) longer than the {limit}-byte limit")]
pub(crate) struct Oversized {
    /// The answer's HTTP status.
    pub(crate) status: u16,
    /// The most bytes the call read.
    pub(crate) limit: usize,
    /// Whether what was read begins as an execute answer does
    /// (`{"result":`): a 200 from anything else says nothing.
    pub(crate) answer_shaped: bool,
}

/// Whether an answer whose first bytes are `read` followed by `next`
/// begins as [`ExecuteResponse`](crate::api::ExecuteResponse) is encoded.
fn starts_as_an_answer(read: &[u8], next: &[u8]) -> bool {
    const HEAD: &[u8] = b"{\"result\":";
    let head: Vec<u8> = read.iter().chain(next).take(HEAD.len()).copied().collect();
    head == HEAD
}

/// One call's limits.
#[derive(Clone, Copy, Debug)]
struct Call<'a> {
    deadline: Instant,
    /// Most time one attempt waits for its answer; `None`: the deadline.
    answer_within: Option<Duration>,
    origin: Origin,
    /// The member the call is meant for, if named.
    to: Option<Addressee>,
    /// Most bytes of the answer read.
    answer_limit: usize,
    /// When given, the latest a slot and a connection may be waited for:
    /// past it, nothing having been written, the call ends not sent.
    send_by: Option<Instant>,
    /// Set (before any byte of the request can reach a socket) once an
    /// exchange begins, as [`Sent::written`] would say: a caller that
    /// drops the call midway (a batch abandoned when its leader lost its
    /// leadership) still learns whether any of it may have been written.
    written: Option<&'a AtomicBool>,
}

/// What became of a request: its result, whether an address tried
/// before the one that gave it may have received the request (its exchange
/// broke after it began), so the request may have run there too, and
/// whether any of it may have been written at all.
#[derive(Debug)]
pub(crate) struct Sent<R> {
    pub(crate) result: Result<R, RpcError>,
    pub(crate) sent_before: bool,
    /// An exchange began with some address: bytes of the request may be
    /// on the wire. False when every address was refused, unauthorized or
    /// not connected in time, no request slot came free, or no time was
    /// left: then the request was never received, let alone run.
    pub(crate) written: bool,
}

fn encode<B: Serialize>(body: &B) -> Result<Bytes, RpcError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| RpcError::bad_request_from(format!("encode request: {e}"), e))
}

/// Why an exchange with one address ended without an answer to decode.
enum Exchanged {
    /// The connection broke: some of the request may have been written,
    /// and the next address may be tried.
    Broke(RpcError),
    /// This address ended the call (it answered, too much to read, or the
    /// request could not be built).
    Failed(RpcError),
}

/// A 200 answer as `R`, anything else as the error the other node reported.
fn decode<R: DeserializeOwned>(addr: SocketAddr, status: u16, bytes: &[u8]) -> Result<R, RpcError> {
    if status == 200 {
        return serde_json::from_slice(bytes).map_err(|e| RpcError::Unreachable {
            target: addr.to_string(),
            reason: format!("answered 200 with an unexpected body: {e}"),
            source: Some(Box::new(e)),
        });
    }
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        code: ErrorCode::HttpError,
        message: format!("{status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(256)])),
        leader: None,
    });
    Err(RpcError::from_remote(status, body))
}

/// An error of the HTTP layer (hyper's, or `http`'s from building a
/// request) as its words, level by level, its own source's included: the
/// chain under an [`RpcError`] reaches the facade's callers, and no hyper
/// type may be found in it (issue 15).
pub(crate) fn in_words(err: &(dyn std::error::Error + 'static)) -> raft_core::Cause {
    raft_core::Cause::of(err)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ts_transport::{MemNetwork, TransportError};

    use super::*;

    /// Before: the transport's or HTTP's error was flattened into
    /// `reason`. Now it is the error's source as well.
    #[tokio::test]
    async fn an_unreachable_peer_keeps_the_transports_error_underneath() {
        let net = MemNetwork::new();
        let (me, nobody) = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), Ipv4Addr::new(10, 0, 0, 2));
        let client = CommandClient::new(Arc::new(net.node(me)), CommandConfig::default());
        let peer = NodeInfo {
            stable_id: "nobody".to_owned(),
            addrs: vec![IpAddr::V4(nobody)],
            raft_port: 6270,
            command_port: 6271,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let err =
            client.get::<serde_json::Value>(&peer, "/v1/cluster", deadline).await.unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
        let source =
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<TransportError>());
        assert!(matches!(source, Some(TransportError::Refused(_))), "{err:?}");
        // The words stay as they were.
        assert!(err.to_string().starts_with("cannot reach 10.0.0.2:6271: "), "{err}");
    }
    /// Issue 15: an exchange that broke kept hyper's error as the source of
    /// `Unreachable`, and so in the chain under the facade's
    /// `Error::Network`, where a caller walking `source()` could downcast
    /// to it. Its words stay, level by level; its type does not. One peer
    /// hangs up after reading the request; the other's stream fails the
    /// read with a reset, which hyper keeps as its own source.
    #[tokio::test]
    async fn a_broken_exchange_shows_no_hyper_type_underneath() {
        use std::error::Error as _;
        use std::io;
        use std::task::{Context, Poll};

        /// Fails every read of a stream dialed to `resets` with a reset.
        struct Resets(bool);
        impl test_support::Hook for Resets {
            fn before_read(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                if !self.0 {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "played reset")))
            }
        }

        let net = MemNetwork::new();
        let ip = |i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        let (me, hangs_up, resets) = (ip(1), ip(2), ip(3));
        serve(net.node(hangs_up), None).await;
        serve(net.node(resets), None).await;
        let transport = test_support::stream::HookedTransport::new(Arc::new(net.node(me)))
            .dialed(move |to: IpAddr, _| Resets(to == resets));
        let client = CommandClient::new(Arc::new(transport), CommandConfig::default());
        for (at, words) in [(hangs_up, vec!["connection closed"]), (resets, vec!["played reset"])] {
            let peer = NodeInfo {
                stable_id: "peer".to_owned(),
                addrs: vec![at],
                raft_port: 6270,
                command_port: 6271,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            let err = client
                .post::<_, serde_json::Value>(
                    &peer,
                    "/v1/execute",
                    &serde_json::json!({}),
                    deadline,
                    Origin::Client,
                )
                .await
                .unwrap_err();
            assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
            let chain: Vec<_> = std::iter::successors(err.source(), |&e| e.source()).collect();
            assert!(!chain.is_empty(), "no source: {err:?}");
            for under in &chain {
                assert!(!under.is::<hyper::Error>(), "hyper's error underneath: {under:?}");
            }
            let text: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
            for word in words {
                assert!(text.iter().any(|t| t.contains(word)), "{word:?} lost: {text:?}");
            }
        }
    }

    /// Serves `port` on `node`: reads each request's head and body (up to
    /// the end of a `{...}` body), then answers 404 with `answer` if it is
    /// `Some`, or closes the connection without a word.
    async fn serve(node: ts_transport::MemTransport, answer: Option<&'static str>) {
        serve_counted(node, answer.map(|body| ("404 Not Found", body.to_owned()))).await;
    }

    /// An address whose exchange breaks after the request was written may
    /// have received it: a later address's refusal says nothing of that,
    /// and the call says so. One that could not even be connected to could
    /// not.
    #[tokio::test]
    async fn a_request_resent_to_another_address_says_an_earlier_one_may_have_it() {
        let net = MemNetwork::new();
        let ip = |i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        let (me, breaks, refuses, absent) = (ip(1), ip(2), ip(3), ip(4));
        serve(net.node(breaks), None).await;
        let refusal = r#"{"code":"not_found","message":"no such endpoint","leader":null}"#;
        serve(net.node(refuses), Some(refusal)).await;
        let client = CommandClient::new(Arc::new(net.node(me)), CommandConfig::default());
        let peer = |addrs| NodeInfo {
            stable_id: "leader".to_owned(),
            addrs,
            raft_port: 6270,
            command_port: 6271,
        };
        let call = async |node: NodeInfo| {
            let body = Bytes::from_static(br#"{"commands":[]}"#);
            let deadline = Instant::now() + Duration::from_secs(5);
            let within = Duration::from_secs(2);
            client
                .post_attempt_encoded::<serde_json::Value>(
                    None,
                    &node,
                    "/v1/execute-batch",
                    body,
                    deadline,
                    within,
                    Origin::Forwarded,
                    1024,
                    &AtomicBool::new(false),
                )
                .await
        };
        let sent = call(peer(vec![breaks, refuses])).await;
        assert!(sent.sent_before, "{sent:?}");
        assert!(matches!(&sent.result, Err(RpcError::Remote { status: 404, .. })), "{sent:?}");
        let sent = call(peer(vec![absent, refuses])).await;
        assert!(!sent.sent_before, "{sent:?}");
        assert!(matches!(&sent.result, Err(RpcError::Remote { status: 404, .. })), "{sent:?}");
    }

    /// Serves `port` on `node`: reads each request's head and body (up to
    /// the end of a `{...}` body) and counts it, then answers `(status,
    /// body)` if given, or closes the connection without a word. The count
    /// of requests read in full.
    async fn serve_counted(
        node: ts_transport::MemTransport,
        answer: Option<(&'static str, String)>,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen_requests.clone();
        let listener = node.listen(6271).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (count, answer) = (count.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.ends_with(b"}") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if let Some((status, body)) = answer {
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                    }
                });
            }
        });
        seen_requests
    }

    /// Review finding: an answer larger than the call's limit (the leader
    /// applied the request and answered) was treated like a broken
    /// exchange, and the request was sent again to the leader's next
    /// address, where it ran again against the session table and could
    /// come back as a refusal. The call ends there: its outcome is unknown,
    /// and no other address is tried.
    #[tokio::test]
    async fn an_answer_too_large_to_read_is_not_resent_to_the_next_address() {
        let net = MemNetwork::new();
        let ip = |i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        let (me, large, refuses) = (ip(1), ip(2), ip(3));
        let big = format!(r#"{{"answers":["{}"]}}"#, "x".repeat(4096));
        let at_large = serve_counted(net.node(large), Some(("200 OK", big))).await;
        let refusal = r#"{"code":"not_found","message":"no such endpoint","leader":null}"#;
        let at_refuses =
            serve_counted(net.node(refuses), Some(("404 Not Found", refusal.to_owned()))).await;
        let client = CommandClient::new(Arc::new(net.node(me)), CommandConfig::default());
        let peer = NodeInfo {
            stable_id: "leader".to_owned(),
            addrs: vec![large, refuses],
            raft_port: 6270,
            command_port: 6271,
        };
        let sent = client
            .post_attempt_encoded::<serde_json::Value>(
                None,
                &peer,
                "/v1/execute-batch",
                Bytes::from_static(br#"{"commands":[]}"#),
                Instant::now() + Duration::from_secs(5),
                Duration::from_secs(2),
                Origin::Forwarded,
                1024,
                &AtomicBool::new(false),
            )
            .await;
        let err = sent.result.as_ref().expect_err("an answer over the limit");
        assert!(err.outcome_unknown(), "{err}");
        assert!(err.to_string().contains("exceeds"), "{err}");
        assert_eq!(at_large.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(at_refuses.load(std::sync::atomic::Ordering::SeqCst), 0, "{sent:?}");
    }

    /// The head of an execute answer may arrive split across frames.
    #[test]
    fn an_answer_is_recognised_by_its_head_across_frames() {
        let answer = serde_json::to_vec(&crate::api::ExecuteResponse {
            result: serde_json::value::RawValue::from_string("[1,2]".to_owned()).unwrap(),
            duplicate: false,
        })
        .unwrap();
        for split in 0..answer.len() {
            let (read, next) = answer.split_at(split);
            assert!(starts_as_an_answer(read, next), "split at {split}");
        }
        assert!(!starts_as_an_answer(b"", b"<html>"));
        assert!(!starts_as_an_answer(b"{\"res", b"ult\"x"));
        assert!(!starts_as_an_answer(b"", b"{\"code\":\"timeout\"}"));
    }
}
