//! The answering side: HTTP/1.1 (hyper) on the command port.
//!
//! Every request is authorized by the caller's real address before anything
//! of it is read. Bodies are bounded (413), must arrive within a deadline
//! (408), and must be exactly one JSON document of the expected shape (400).
//! Headers must arrive within a deadline too, which also closes idle
//! connections.

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
use ts_transport::{Listener, PeerAddr, Server};

use crate::api::{ExecuteRequest, JoinRequest, ReadRequest, RemoveRequest};
use crate::client::{DEADLINE_HEADER, FORWARDED_HEADER};
use crate::config::CommandConfig;
use crate::error::RpcError;
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
        CommandServer(Server::start(listener, "command API", move |stream, peer| {
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
                if let Err(err) = builder.serve_connection(TokioIo::new(stream), handler).await {
                    tracing::debug!(%peer, error = %err, "command connection ended");
                }
            }
        }))
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
    let mut response = json_response(err.status(), &err.body());
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
        "/v1/execute" | "/v1/session" | "/v1/join" | "/v1/remove" | "/v1/read"
        | "/v1/read-index" => Some(Method::POST),
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
        return error_response(&RpcError::Forbidden(peer.ip().to_string()));
    }
    match dispatch(request, peer, service, authorize, config).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

async fn dispatch<S: StateMachine>(
    request: Request<Incoming>,
    peer: PeerAddr,
    service: &CommandService<S>,
    authorize: &Authorize,
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
                RpcError::BadRequest(format!("{DEADLINE_HEADER} must be milliseconds"))
            })?,
        )),
    };
    let deadline = service.deadline(requested);
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    // A node stopped on a fatal error serves nothing, not even its view of
    // the cluster (which may be stale).
    if let Some(why) = service.fatal() {
        return Err(RpcError::Fatal(why));
    }
    if path == "/v1/cluster" {
        return Ok(json_response(StatusCode::OK, &service.cluster()));
    }
    let body = read_body(request.into_body(), config).await?;
    match path.as_str() {
        "/v1/execute" => {
            let request: ExecuteRequest = parse(&body)?;
            let response = service.execute(&request, deadline, forwarded).await?;
            Ok(json_response(StatusCode::OK, &response))
        }
        "/v1/session" => {
            let _: serde_json::Map<String, serde_json::Value> = parse(&body)?;
            Ok(json_response(StatusCode::OK, &service.register(deadline, forwarded).await?))
        }
        "/v1/join" => {
            let request: JoinRequest = parse(&body)?;
            if !forwarded {
                check_join_addresses(&request, peer, authorize)?;
            }
            service.join(&request, deadline, forwarded).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        "/v1/remove" => {
            let request: RemoveRequest = parse(&body)?;
            service.remove(&request, deadline, forwarded).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
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
        _ => Err(RpcError::NotFound(path)),
    }
}

/// A joining node may only register addresses that are its own (the one it
/// called from among them) and that are authorized: no tagged node can make
/// the cluster dial an address of its choosing.
fn check_join_addresses(
    request: &JoinRequest,
    peer: PeerAddr,
    authorize: &Authorize,
) -> Result<(), RpcError> {
    if request.node.addrs.is_empty() {
        return Err(RpcError::BadRequest("a joining node needs at least one address".to_owned()));
    }
    if !request.node.addrs.iter().any(|ip| ip.to_canonical() == peer.ip().to_canonical()) {
        return Err(RpcError::Forbidden(format!(
            "{} cannot join on behalf of {:?}",
            peer.ip(),
            request.node.addrs
        )));
    }
    for &ip in &request.node.addrs {
        if !authorize(PeerAddr::new(std::net::SocketAddr::new(ip, 0))) {
            return Err(RpcError::Forbidden(format!(
                "address {ip} of the joining node is not allowed"
            )));
        }
    }
    Ok(())
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
            let frame = frame.map_err(|e| RpcError::BadRequest(format!("reading body: {e}")))?;
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
    serde_json::from_slice(body).map_err(|e| RpcError::BadRequest(format!("body: {e}")))
}
