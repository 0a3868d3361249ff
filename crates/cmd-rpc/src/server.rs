//! The answering side: HTTP/1.1 (hyper) on the command port.
//!
//! A connection from an address that is not authorized is closed at accept,
//! and one peer holds at most `max_connections_per_peer` connections. Every
//! request is authorized again by the caller's real address before anything
//! of it is read (a peer whose tag was revoked gets 403 on a live
//! connection). Bodies are bounded (413), must arrive within a deadline
//! (408), and must be exactly one JSON document of the expected shape (400).
//! Headers must arrive within a deadline too, which also closes idle
//! connections.
//!
//! Joins, removals, probes and confirms are bound to the caller's identity: the
//! [`Peers`](crate::Peers) hook names the node behind the request's real
//! address, and no header (`x-tsc-forwarded` included) changes what is
//! checked.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use raft_core::StateMachine;
use serde::Serialize;
use serde::de::DeserializeOwned;
use ts_transport::{Admission, Listener, PeerAddr, Server};

use crate::api::ErrorBody;
use crate::api::{
    CampaignRequest, ConfirmRequest, ExecuteBatchRequest, ExecuteRequest, JoinRequest, MAX_BATCH,
    ProbeRequest, ReadRequest, RemoveRequest,
};
use crate::client::{
    CLUSTER_HEADER, DEADLINE_HEADER, FORWARDED_HEADER, TARGET_NODE_HEADER, in_words,
};
use crate::code::ErrorCode;
use crate::config::CommandConfig;
use crate::error::RpcError;
use crate::peers::{Caller, check_confirm};
use crate::route::Origin;
use crate::service::CommandService;

/// Decides whether a peer may use the command port.
pub type Authorize = Arc<dyn Fn(PeerAddr) -> bool + Send + Sync>;

/// A running command server; stops on [`CommandServer::shutdown`] or drop.
pub struct CommandServer(Server);

impl CommandServer {
    /// Serves `service` on `listener`.
    pub fn start<S: StateMachine>(
        listener: Arc<dyn Listener>,
        service: Arc<CommandService<S>>,
        authorize: Authorize,
        config: CommandConfig,
    ) -> CommandServer {
        let admission =
            Admission { allow: authorize.clone(), max_per_peer: config.max_connections_per_peer };
        CommandServer(Server::start_admitting(
            listener,
            "command API",
            admission,
            move |stream, peer| {
                let service = service.clone();
                let authorize = authorize.clone();
                let config = config.clone();
                async move {
                    let header_timeout = config.header_timeout;
                    let handler = service_fn(move |request| {
                        let service = service.clone();
                        let authorize = authorize.clone();
                        let config = config.clone();
                        async move {
                            Ok::<_, Infallible>(
                                handle(request, peer, &service, &authorize, &config).await,
                            )
                        }
                    });
                    let mut builder = http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                    if let Err(err) = builder.serve_connection(TokioIo::new(stream), handler).await
                    {
                        tracing::debug!(%peer, error = %err, "command connection ended");
                    }
                }
            },
        ))
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Stops accepting, ends every connection, and waits for that.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(err: &RpcError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = json_response(status, &err.body());
    if let RpcError::MethodNotAllowed { path, .. } = err {
        let allow = if path == "/v1/cluster" { "GET" } else { "POST" };
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
    }
    response
}

/// Which endpoint, and which method it takes.
fn endpoint(path: &str) -> Option<Method> {
    match path {
        "/v1/execute" | "/v1/execute-batch" | "/v1/session" | "/v1/join" | "/v1/remove"
        | "/v1/probe" | "/v1/confirm" | "/v1/read" | "/v1/read-index" | "/v1/campaign" => {
            Some(Method::POST)
        }
        "/v1/cluster" => Some(Method::GET),
        _ => None,
    }
}

async fn handle<S: StateMachine>(
    request: Request<Incoming>,
    peer: PeerAddr,
    service: &CommandService<S>,
    authorize: &Authorize,
    config: &CommandConfig,
) -> Response<Full<Bytes>> {
    // Before anything of the request is read.
    if !authorize(peer) {
        tracing::info!(%peer, path = request.uri().path(), "refused command request from an unauthorized address");
        return error_response(&RpcError::Forbidden(format!("peer {} is not allowed", peer.ip())));
    }
    match dispatch(request, peer, service, config).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

/// The node behind `peer`, as this node's view knows it.
fn caller_of<S: StateMachine>(
    service: &CommandService<S>,
    peer: PeerAddr,
) -> Result<Caller, RpcError> {
    service.peers().caller(peer.ip()).ok_or_else(|| {
        RpcError::Forbidden(format!("{} is not a tagged node in this node's view", peer.ip()))
    })
}

async fn dispatch<S: StateMachine>(
    request: Request<Incoming>,
    peer: PeerAddr,
    service: &CommandService<S>,
    config: &CommandConfig,
) -> Result<Response<Full<Bytes>>, RpcError> {
    let path = request.uri().path().to_owned();
    let Some(method) = endpoint(&path) else { return Err(RpcError::NotFound(path)) };
    if request.method() != method {
        return Err(RpcError::MethodNotAllowed { method: request.method().to_string(), path });
    }
    let headers = request.headers();
    let requested = match headers.get(DEADLINE_HEADER) {
        None => None,
        Some(value) => Some(Duration::from_millis(
            value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                RpcError::bad_request(format!("{DEADLINE_HEADER} must be milliseconds"))
            })?,
        )),
    };
    let deadline = service.deadline(requested);
    // Only these honour the forwarding mark; on the others it changes nothing.
    let origin = if headers.contains_key(FORWARDED_HEADER)
        && matches!(
            path.as_str(),
            "/v1/execute" | "/v1/execute-batch" | "/v1/session" | "/v1/read-index"
        ) {
        Origin::Forwarded
    } else {
        Origin::Client
    };
    check_addressee(headers, service, origin)?;
    // A node stopped on a fatal error serves nothing, not even its view of
    // the cluster (which may be stale).
    if let Some(why) = service.fatal() {
        return Err(RpcError::fatal(why));
    }
    if path == "/v1/cluster" {
        return Ok(json_response(StatusCode::OK, &service.cluster().await));
    }
    let body = read_body(request.into_body(), config).await?;
    match path.as_str() {
        "/v1/execute" => {
            let request: ExecuteRequest = parse(&body)?;
            let response = service.execute(&request, deadline, origin).await?;
            Ok(json_response(StatusCode::OK, &response))
        }
        "/v1/execute-batch" => {
            if origin != Origin::Forwarded {
                return Err(RpcError::bad_request(
                    "only a member forwarding its callers' commands sends batches".to_owned(),
                ));
            }
            let request: ExecuteBatchRequest = parse(&body)?;
            if request.commands.len() > MAX_BATCH {
                return Err(RpcError::bad_request(format!(
                    "a batch holds at most {MAX_BATCH} commands, not {}",
                    request.commands.len()
                )));
            }
            Ok(json_response(StatusCode::OK, &service.execute_batch(&request, deadline).await))
        }
        "/v1/session" => {
            let _: serde_json::Map<String, serde_json::Value> = parse(&body)?;
            Ok(json_response(StatusCode::OK, &service.register(deadline, origin).await?))
        }
        "/v1/join" => {
            let request: JoinRequest = parse(&body)?;
            let caller = caller_of(service, peer)?;
            service.join(&request, &caller, deadline).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        "/v1/remove" => {
            let request: RemoveRequest = parse(&body)?;
            let caller = caller_of(service, peer)?;
            service.remove(&request, &caller, deadline).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        "/v1/probe" => {
            let request: ProbeRequest = parse(&body)?;
            let caller = caller_of(service, peer)?;
            let answer = service.peers().probe(&caller, &request).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        "/v1/confirm" => {
            let request: ConfirmRequest = parse(&body)?;
            let caller = caller_of(service, peer)?;
            check_confirm(&request, &caller)?;
            let answer = service.peers().confirm(&caller, &request).await?;
            Ok(json_response(StatusCode::OK, &answer))
        }
        "/v1/read" => {
            let request: ReadRequest = parse(&body)?;
            let response = service.read(&request, deadline).await?;
            Ok(json_response(StatusCode::OK, &response))
        }
        "/v1/read-index" => {
            let _: serde_json::Map<String, serde_json::Value> = parse(&body)?;
            Ok(json_response(StatusCode::OK, &service.read_index(deadline).await?))
        }
        "/v1/campaign" => {
            let request: CampaignRequest = parse(&body)?;
            let caller = caller_of(service, peer)?;
            service.campaign(&request, &caller).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        _ => Err(RpcError::NotFound(path)),
    }
}

/// A call that names the member it is meant for ([`crate::Addressee`]) is
/// answered only by that member of that cluster; a forwarded call must
/// (execute, session, read index) must name it. Another node on the same addresses (a new incarnation, a node
/// restored as a new cluster) answers `not_leader` without a hint, which
/// makes the sender route the call again by what it knows.
fn check_addressee<S: StateMachine>(
    headers: &hyper::HeaderMap,
    service: &CommandService<S>,
    origin: Origin,
) -> Result<(), RpcError> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("(not text)"));
    let (node, cluster) = match (text(TARGET_NODE_HEADER), text(CLUSTER_HEADER)) {
        (None, None) if origin == Origin::Client => return Ok(()),
        (Some(node), Some(cluster)) => (node, cluster),
        _ => {
            return Err(RpcError::bad_request(format!(
                "{TARGET_NODE_HEADER} and {CLUSTER_HEADER} go together, and a forwarded call \
                 carries both"
            )));
        }
    };
    let own_node = service.node().id().to_string();
    let own_cluster =
        service.node().cluster_id().map(|c| c.to_string()).unwrap_or_else(|| "none".to_owned());
    if node == own_node && cluster == own_cluster {
        return Ok(());
    }
    let clip = |s: &str| s.chars().take(64).collect::<String>();
    Err(RpcError::from_remote(
        StatusCode::CONFLICT.as_u16(),
        ErrorBody {
            code: ErrorCode::NotLeader,
            message: format!(
                "this is node {own_node} of cluster {own_cluster}, not node {} of cluster {}: \
                 the call was meant for another member (route it again)",
                clip(node),
                clip(cluster)
            ),
            leader: None,
        },
    ))
}

/// Reads a request body within the size limit and the body deadline.
async fn read_body(body: Incoming, config: &CommandConfig) -> Result<Bytes, RpcError> {
    use hyper::body::Body as _;
    let limit = config.max_request;
    if let Some(declared) = body.size_hint().exact()
        && declared > limit as u64
    {
        return Err(RpcError::TooLarge { size: declared as usize, limit });
    }
    let collect = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                RpcError::bad_request_from(format!("reading body: {e}"), in_words(&e))
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(RpcError::TooLarge { size: buf.len() + data.len(), limit });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(config.body_timeout, collect)
        .await
        .map_err(|_| RpcError::SlowBody(config.body_timeout))?
}

/// Exactly one JSON document of the expected shape.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(body).map_err(|e| RpcError::bad_request_from(format!("body: {e}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: `BadRequest(String)`, the JSON parser's error flattened to
    /// text. Now it is the source, and the wire's answer is unchanged.
    #[test]
    fn a_body_that_is_not_json_keeps_the_parsers_error_and_says_the_same_on_the_wire() {
        let err = parse::<ExecuteRequest>(b"{\"client\": ").unwrap_err();
        assert!(matches!(err, RpcError::BadRequest { .. }), "{err:?}");
        let json =
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<serde_json::Error>());
        let json = json.unwrap_or_else(|| panic!("no serde_json::Error underneath {err:?}"));
        let body = err.body();
        assert_eq!(body.code, ErrorCode::BadRequest);
        assert_eq!(body.message, format!("bad request: body: {json}"));
        assert_eq!(err.status(), 400);
    }
}
