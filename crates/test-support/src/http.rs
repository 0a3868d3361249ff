//! Plain HTTP/1.1 to a node's endpoints on 127.0.0.1 (the monitor, the
//! admin endpoint), with bounded waits: what an operator's tool would send.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one exchange may take.
const EXCHANGE: Duration = Duration::from_secs(60);

/// One HTTP/1.1 exchange with `127.0.0.1:port`: the status and the body.
/// `headers` each end in CRLF.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(EXCHANGE, stream.read_to_end(&mut response))
        .await
        .expect("an answer within a minute")
        .expect("read");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a header end");
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
    (status, response[split + 4..].to_vec())
}

/// A call to the admin endpoint of the node whose state directory is
/// `dir`, with the token and port it keeps there.
pub async fn admin(dir: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let token = std::fs::read_to_string(dir.join(consensus::admin::TOKEN_FILE)).expect("token");
    let port: u16 = std::fs::read_to_string(dir.join(consensus::admin::PORT_FILE))
        .expect("port file")
        .trim()
        .parse()
        .expect("a port");
    http(port, method, path, &format!("Authorization: Bearer {}\r\n", token.trim()), body).await
}

/// [`admin`] with a JSON answer (a null `body` sends none).
pub async fn admin_json(
    dir: &Path,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (status, body) = admin(dir, method, path, &body).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!("{path} answered {status} with non-JSON {:?}: {e}", String::from_utf8_lossy(&body))
    });
    (status, value)
}
