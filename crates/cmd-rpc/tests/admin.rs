//! The admin endpoint's gate: loopback callers only, the `Host` header
//! names 127.0.0.1 or localhost at the port served, no browser origins,
//! the bearer token, known routes and methods, bounded bodies that arrive
//! in time; every refusal is JSON naming the problem.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::{AdminError, AdminHandler, AdminLimits, AdminResponse, AdminRoute, AdminServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ts_transport::{MemNetwork, TcpTransport, Transport};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn routes() -> Vec<AdminRoute> {
    vec![
        AdminRoute { method: "GET", path: "/v1/status", max_body: 0 },
        AdminRoute { method: "POST", path: "/v1/echo", max_body: 100 },
    ]
}

/// Answers with what it was asked: path, query, body.
fn echo() -> AdminHandler {
    Arc::new(|request| {
        Box::pin(async move {
            AdminResponse::json(
                200,
                &serde_json::json!({
                    "path": request.path,
                    "query": request.query,
                    "body": String::from_utf8_lossy(&request.body),
                }),
            )
        })
    })
}

async fn start() -> AdminServer {
    let listener = TcpTransport::new(IpAddr::V4(Ipv4Addr::LOCALHOST)).listen(0).await.unwrap();
    AdminServer::start(
        Arc::from(listener),
        TOKEN.to_owned(),
        "the token is in /state/admin.token".to_owned(),
        routes(),
        echo(),
        AdminLimits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(1),
        },
    )
}

/// Sends `request` and reads the whole answer: status and body.
async fn exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn request(method: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn good_headers(port: u16) -> String {
    format!("Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n")
}

fn error(body: &str) -> AdminError {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an admin error: {body:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_passes_every_check_reaches_the_handler() {
    let server = start().await;
    let port = server.port();
    let (status, body) =
        exchange(port, &request("POST", "/v1/echo?force=true", &good_headers(port), "hello")).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"path": "/v1/echo", "query": "force=true", "body": "hello"})
    );
    let localhost = format!("Host: localhost:{port}\r\nAuthorization: Bearer {TOKEN}\r\n");
    let (status, body) = exchange(port, &request("GET", "/v1/status", &localhost, "")).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_the_problem() {
    let server = start().await;
    let port = server.port();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("no Host", request("GET", "/v1/status", &auth, ""), 400, "bad_host", "no Host"),
        (
            "a rebinding name",
            request("GET", "/v1/status", &format!("Host: evil.example:{port}\r\n{auth}"), ""),
            421,
            "bad_host",
            "evil.example",
        ),
        (
            "another port",
            request("GET", "/v1/status", &format!("Host: 127.0.0.1:1\r\n{auth}"), ""),
            421,
            "bad_host",
            "is not 127.0.0.1",
        ),
        (
            "two Hosts",
            request("GET", "/v1/status", &format!("{host}{host}{auth}"), ""),
            400,
            "bad_host",
            "two Host",
        ),
        (
            "a browser",
            request("GET", "/v1/status", &format!("{host}{auth}Origin: http://evil.example\r\n"), ""),
            403,
            "forbidden",
            "Origin",
        ),
        ("no token", request("GET", "/v1/status", &host, ""), 401, "unauthorized", "admin.token"),
        (
            "a wrong token",
            request("GET", "/v1/status", &format!("{host}Authorization: Bearer nope\r\n"), ""),
            401,
            "unauthorized",
            "wrong admin token",
        ),
        (
            "the token without Bearer",
            request("GET", "/v1/status", &format!("{host}Authorization: {TOKEN}\r\n"), ""),
            401,
            "unauthorized",
            "Bearer",
        ),
        (
            "an unknown path",
            request("GET", "/v1/nothing", &good_headers(port), ""),
            404,
            "not_found",
            "/v1/nothing",
        ),
        (
            "the wrong method",
            request("POST", "/v1/status", &good_headers(port), ""),
            405,
            "method_not_allowed",
            "takes GET",
        ),
        (
            "a body over the route's limit",
            request("POST", "/v1/echo", &good_headers(port), &"x".repeat(101)),
            413,
            "too_large",
            "100-byte limit",
        ),
        (
            "a chunked body over the limit",
            format!(
                "POST /v1/echo HTTP/1.1\r\n{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n64\r\n{}\r\n64\r\n{}\r\n0\r\n\r\n",
                good_headers(port),
                "y".repeat(100),
                "z".repeat(100)
            )
            .into_bytes(),
            413,
            "too_large",
            "limit",
        ),
    ];
    for (what, bytes, status, code, says) in cases {
        let (got, body) = exchange(port, &bytes).await;
        assert_eq!(got, status, "{what}: {body}");
        let err = error(&body);
        assert_eq!(err.code, code, "{what}: {body}");
        assert!(err.message.contains(says), "{what}: {:?} does not say {says:?}", err.message);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let server = start().await;
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/echo HTTP/1.1\r\n{}Content-Length: 50\r\nConnection: close\r\n\r\nonly part",
        good_headers(port)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answers")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("slow_body"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_from_another_address_is_refused() {
    // Over the in-memory network, where a caller can have any address.
    let net = MemNetwork::new();
    let listener = net.node(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))).listen(9000).await.unwrap();
    let server = AdminServer::start(
        Arc::from(listener),
        TOKEN.to_owned(),
        String::new(),
        routes(),
        echo(),
        AdminLimits::default(),
    );
    let mut stream = net
        .node(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        .dial(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9000, Duration::from_secs(5))
        .await
        .unwrap();
    stream.write_all(&request("GET", "/v1/status", &good_headers(9000), "")).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("10.0.0.2"), "{text}");
    server.shutdown().await;
}
