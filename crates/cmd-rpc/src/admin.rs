//! The operator's endpoint: HTTP/1.1 for the `tsconsensus` command-line
//! tool, meant for a listener on 127.0.0.1. What each route does is the
//! facade's ([`AdminHandler`]); this server decides who may ask, before
//! anything of the request body is read:
//!
//! 1. the caller's address must be a loopback address;
//! 2. the `Host` header must be `127.0.0.1:<port>` or `localhost:<port>`
//!    for the port served (a web page that got a name of its own resolved
//!    to 127.0.0.1 sends its own name: no DNS rebinding), and a request
//!    carrying `Origin` (a browser's) is refused;
//! 3. `Authorization: Bearer <token>` must carry the token, compared in
//!    constant time — except on `GET /v1/proof` ([`PROOF_PATH`]), where
//!    the endpoint proves that it knows the token without being sent it:
//!    it answers the caller's nonce ([`NONCE_HEADER`]) with
//!    [`admin_proof`], an HMAC of the nonce and the port keyed by the
//!    token. A client checks that before it sends the token, so a program
//!    squatting the port of a stopped node learns nothing;
//! 4. the route must exist ([`AdminRoute`]; 404, 405), and the body must
//!    fit its limit (413) and arrive within the body deadline (408);
//!    headers must arrive within the header deadline.
//!
//! Every refusal is JSON `{"code", "message"}` naming the problem.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use ts_transport::{BoxFuture, Listener, PeerAddr, Server};

/// The path where the endpoint proves it knows the token.
pub const PROOF_PATH: &str = "/v1/proof";
/// The header carrying the caller's nonce on [`PROOF_PATH`]: 64 hex digits.
pub const NONCE_HEADER: &str = "x-tsc-nonce";

/// What the endpoint on `port` answers to `nonce` on [`PROOF_PATH`]:
/// HMAC-SHA256 keyed by `token` of `"tsconsensus admin proof v1"`, the
/// port and the nonce, in hex. Only a program that knows the token can
/// compute it, and it tells nothing about the token; the port in it means
/// an answer relayed from an endpoint on another port does not fit.
pub fn admin_proof(token: &str, port: u16, nonce: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(format!("tsconsensus admin proof v1\n{port}\n{nonce}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A route the admin endpoint serves.
#[derive(Clone, Debug)]
pub struct AdminRoute {
    /// `"GET"` or `"POST"`.
    pub method: &'static str,
    /// The path, such as `/v1/status`.
    pub path: &'static str,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
}

/// A request that passed every check.
#[derive(Clone, Debug)]
pub struct AdminRequest {
    /// Its route's path.
    pub path: &'static str,
    /// The query string, if any (without `?`).
    pub query: Option<String>,
    /// The body, within the route's limit.
    pub body: Bytes,
}

/// What the facade answers.
#[derive(Clone, Debug)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

/// An admin error body: a machine-readable code and a sentence for the
/// operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AdminError {
    /// What went wrong, such as `unauthorized` or `not_leader`.
    pub code: String,
    /// What to do about it.
    pub message: String,
}

impl AdminResponse {
    /// `value` as JSON.
    pub fn json<T: Serialize>(status: u16, value: &T) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }

    /// An error body.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> AdminResponse {
        AdminResponse::json(status, &AdminError { code: code.to_owned(), message: message.into() })
    }
}

/// Answers the requests that passed the checks.
pub type AdminHandler =
    Arc<dyn Fn(AdminRequest) -> BoxFuture<'static, AdminResponse> + Send + Sync>;

/// Deadlines of the admin endpoint.
#[derive(Clone, Debug)]
pub struct AdminLimits {
    /// Time the request headers have to arrive (also closes idle
    /// connections).
    pub header_timeout: Duration,
    /// Time a request body has to arrive.
    pub body_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// A running admin endpoint; stops on [`AdminServer::shutdown`] or drop.
pub struct AdminServer(Server);

struct Shared {
    token: String,
    /// Where the operator finds the token, for the refusal message.
    token_hint: String,
    routes: Vec<AdminRoute>,
    handler: AdminHandler,
    limits: AdminLimits,
    port: u16,
}

impl AdminServer {
    /// Serves `routes` on `listener` (bound to 127.0.0.1) to callers that
    /// present `token`; `token_hint` says where the token is kept.
    pub fn start(
        listener: Arc<dyn Listener>,
        token: String,
        token_hint: String,
        routes: Vec<AdminRoute>,
        handler: AdminHandler,
        limits: AdminLimits,
    ) -> AdminServer {
        let shared = Arc::new(Shared {
            token,
            token_hint,
            routes,
            handler,
            limits,
            port: listener.local_port(),
        });
        AdminServer(Server::start(listener, "admin", move |stream, peer| {
            let shared = shared.clone();
            async move {
                let header_timeout = shared.limits.header_timeout;
                let handler = service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(into_http(handle(request, peer, &shared).await)) }
                });
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                if let Err(err) = builder.serve_connection(TokioIo::new(stream), handler).await {
                    tracing::debug!(%peer, error = %err, "admin connection ended");
                }
            }
        }))
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Stops serving and waits for every connection to end.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

fn into_http(answer: AdminResponse) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Equal, in time that depends only on the lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `host` names this endpoint: `127.0.0.1:<port>` or
/// `localhost:<port>`.
pub(crate) fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, given)) = host.rsplit_once(':') else { return false };
    given.parse::<u16>().is_ok_and(|p| p == port)
        && (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost"))
}

async fn handle(request: Request<Incoming>, peer: PeerAddr, shared: &Shared) -> AdminResponse {
    if let Err(refusal) = check_caller(&request, peer, shared) {
        return refusal;
    }
    if request.uri().path() == PROOF_PATH {
        return prove(&request, shared);
    }
    match check(&request, shared) {
        Err(refusal) => refusal,
        Ok(route) => {
            let query = request.uri().query().map(str::to_owned);
            match read_body(request.into_body(), route.max_body, shared.limits.body_timeout).await {
                Ok(body) => (shared.handler)(AdminRequest { path: route.path, query, body }).await,
                Err(refusal) => refusal,
            }
        }
    }
}

/// The answer on [`PROOF_PATH`]: the proof for the caller's nonce.
fn prove(request: &Request<Incoming>, shared: &Shared) -> AdminResponse {
    if request.method() != hyper::Method::GET {
        return AdminResponse::error(
            405,
            "method_not_allowed",
            format!("{PROOF_PATH} takes GET, not {}", request.method()),
        );
    }
    let nonce = request.headers().get(NONCE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if nonce.len() != 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return AdminResponse::error(
            400,
            "bad_request",
            format!("{PROOF_PATH} needs a {NONCE_HEADER} header of 64 hex digits"),
        );
    }
    AdminResponse::json(
        200,
        &serde_json::json!({ "proof": admin_proof(&shared.token, shared.port, nonce) }),
    )
}

/// The checks of who asks and how: a loopback caller, a `Host` naming this
/// endpoint, no browser `Origin`.
fn check_caller(
    request: &Request<Incoming>,
    peer: PeerAddr,
    shared: &Shared,
) -> Result<(), AdminResponse> {
    if !peer.ip().to_canonical().is_loopback() {
        return Err(AdminResponse::error(
            403,
            "forbidden",
            format!("the admin endpoint answers this host only, not {}", peer.ip()),
        ));
    }
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().unwrap_or(""),
        (None, _) => {
            return Err(AdminResponse::error(400, "bad_host", "the request has no Host header"));
        }
        (Some(_), Some(_)) => {
            return Err(AdminResponse::error(400, "bad_host", "the request has two Host headers"));
        }
    };
    if !host_allowed(host, shared.port) {
        return Err(AdminResponse::error(
            421,
            "bad_host",
            format!(
                "Host {:?} is not 127.0.0.1:{port} or localhost:{port}; the admin endpoint \
                 answers only requests addressed to it by those names",
                host.chars().take(100).collect::<String>(),
                port = shared.port
            ),
        ));
    }
    if headers.contains_key(header::ORIGIN) {
        return Err(AdminResponse::error(
            403,
            "forbidden",
            "requests from web pages (with an Origin header) are refused",
        ));
    }
    Ok(())
}

/// The token and the route, checked before the body is read; the route on
/// success.
fn check<'a>(
    request: &Request<Incoming>,
    shared: &'a Shared,
) -> Result<&'a AdminRoute, AdminResponse> {
    let headers = request.headers();
    let presented = match headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) {
        None => {
            return Err(AdminResponse::error(
                401,
                "unauthorized",
                format!("no Authorization header: send \"Bearer <token>\" ({})", shared.token_hint),
            ));
        }
        Some(value) => match value.strip_prefix(b"Bearer ") {
            Some(token) => token,
            None => {
                return Err(AdminResponse::error(
                    401,
                    "unauthorized",
                    "the Authorization header must be \"Bearer <token>\"",
                ));
            }
        },
    };
    if !same_secret(presented, shared.token.as_bytes()) {
        return Err(AdminResponse::error(
            401,
            "unauthorized",
            format!("wrong admin token ({})", shared.token_hint),
        ));
    }
    let path = request.uri().path();
    let mut allowed = shared.routes.iter().filter(|r| r.path == path).peekable();
    if allowed.peek().is_none() {
        return Err(AdminResponse::error(
            404,
            "not_found",
            format!("no admin endpoint {:?}", path.chars().take(100).collect::<String>()),
        ));
    }
    let method = request.method().as_str();
    let methods: Vec<&'static str> = allowed.clone().map(|r| r.method).collect();
    let Some(route) = allowed.find(|r| r.method == method) else {
        return Err(AdminResponse::error(
            405,
            "method_not_allowed",
            format!("{path} takes {}, not {method}", methods.join(" or ")),
        ));
    };
    Ok(route)
}

/// Reads a body within `limit` bytes and `timeout`.
async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, AdminResponse> {
    use hyper::body::Body as _;
    let too_large = |size: u64| {
        AdminResponse::error(
            413,
            "too_large",
            format!("request body of {size} bytes exceeds this endpoint's {limit}-byte limit"),
        )
    };
    if let Some(declared) = body.size_hint().exact()
        && declared > limit as u64
    {
        return Err(too_large(declared));
    }
    let collect = async {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                AdminResponse::error(400, "bad_request", format!("reading the body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large((buf.len() + data.len()) as u64));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, collect).await.unwrap_or_else(|_| {
        Err(AdminResponse::error(
            408,
            "slow_body",
            format!("the request body did not arrive within {timeout:?}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for (host, ok) in [
            ("127.0.0.1:7000", true),
            ("localhost:7000", true),
            ("LOCALHOST:7000", true),
            ("127.0.0.1:7001", false),
            ("127.0.0.1", false),
            ("evil.example:7000", false),
            ("127.0.0.1.evil.example:7000", false),
            ("[::1]:7000", false),
            ("localhost:07000x", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, 7000), ok, "{host:?}");
        }
    }

    #[test]
    fn proofs_follow_the_token_the_port_and_the_nonce() {
        // RFC 4231 test case 2 checks the HMAC itself.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let nonce = "ab".repeat(32);
        let proof = admin_proof("token", 7000, &nonce);
        assert_eq!(proof.len(), 64);
        assert_eq!(proof, admin_proof("token", 7000, &nonce));
        assert_ne!(proof, admin_proof("tokem", 7000, &nonce));
        assert_ne!(proof, admin_proof("token", 7001, &nonce));
        assert_ne!(proof, admin_proof("token", 7000, &"ac".repeat(32)));
    }

    #[test]
    fn secrets() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
