//! The LocalAPI client against answers a real node never gives: oversized,
//! malformed, HTTP errors, silence, and nobody listening. A raw TCP server
//! plays the LocalAPI so each bad answer can be produced exactly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ts_discovery::{DiscoveryError, LocalApi, LocalApiLimits};

/// Serves `response` (raw HTTP) to every connection; returns its address.
async fn serve(response: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(&response).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

fn ok_with(body: &[u8]) -> Vec<u8> {
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(body);
    response
}

fn limits() -> LocalApiLimits {
    LocalApiLimits { max_body: 1024, max_line: 1024, timeout: Duration::from_secs(2) }
}

#[tokio::test]
async fn oversized_status_is_refused() {
    let addr = serve(ok_with(&vec![b' '; 4096])).await;
    let err = LocalApi::new(addr, "cred", limits()).status().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::TooLarge { limit: 1024, .. }), "{err}");
}

#[tokio::test]
async fn malformed_status_is_refused_with_its_reason() {
    let addr = serve(ok_with(br#"{"BackendState": "Running", "Self": 7}"#)).await;
    let err = LocalApi::new(addr, "cred", limits()).status().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Malformed(ref m) if m.contains("status")), "{err}");
}

#[tokio::test]
async fn http_errors_carry_status_and_message() {
    let body = b"invalid localapi credentials";
    let response = [
        format!("HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let addr = serve(response).await;
    let err = LocalApi::new(addr, "wrong", limits()).status().await.unwrap_err();
    match err {
        DiscoveryError::Http { status: 403, body, .. } => {
            assert_eq!(body, "invalid localapi credentials")
        }
        other => panic!("got {other}"),
    }
}

#[tokio::test]
async fn whois_404_means_no_such_node() {
    let addr = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 8\r\n\r\nno match".to_vec()).await;
    assert!(
        LocalApi::new(addr, "c", limits())
            .whois("100.64.0.9".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_silent_local_api_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let mut limits = limits();
    limits.timeout = Duration::from_millis(300);
    let err = LocalApi::new(addr, "c", limits).status().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn nobody_listening_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = LocalApi::new(addr, "c", limits()).status().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "error names the address: {err}");
}

#[tokio::test]
async fn an_endless_ipn_bus_line_is_refused() {
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n".to_vec();
    response.extend(std::iter::repeat_n(b'x', 8192));
    let addr = serve(response).await;
    let mut watch = LocalApi::new(addr, "c", limits()).watch_ipn_bus().await.unwrap();
    let err = watch.next().await.unwrap_err();
    assert!(matches!(err, DiscoveryError::TooLarge { limit: 1024, .. }), "{err}");
}

#[tokio::test]
async fn ipn_bus_lines_are_split_and_parsed() {
    let mut response = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    response.extend_from_slice(b"{\"State\":6}\n\n{\"NetMap\":{}}\n{broken\n");
    let addr = serve(response).await;
    let mut watch = LocalApi::new(addr, "c", limits()).watch_ipn_bus().await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().state, Some(6));
    assert!(watch.next().await.unwrap().unwrap().has_netmap);
    assert!(matches!(watch.next().await, Err(DiscoveryError::Malformed(_))));
    assert!(watch.next().await.unwrap().is_none(), "end of stream ends the watch");
}
