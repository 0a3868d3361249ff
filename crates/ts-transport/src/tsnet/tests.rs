//! Tests of the FFI layer that need no tailnet: locking, descriptor
//! ownership and failure handling, some with the Go side made to panic
//! (feature `test-hooks`). Nodes here point at a control server that never
//! answers or refuses, so nothing leaves 127.0.0.1.

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// How long a call that should return at once may take before the test
/// calls it stuck.
const PROMPT: Duration = Duration::from_secs(20);

/// Runs `f` on a thread of its own and returns its result, or fails the test
/// if it has not returned within `PROMPT` (a deadlocked call stays stuck on
/// its thread; the test fails instead of hanging).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PROMPT)
        .unwrap_or_else(|_| panic!("{what} did not return within {PROMPT:?}: deadlocked"))
}

/// A control URL where a server accepts connections and never answers:
/// `up` waits on it until its timeout.
fn hanging_control() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// A control URL where nothing listens.
fn dead_control() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn offline_options(dir: &tempfile::TempDir, hostname: &str, control_url: String) -> NodeOptions {
    let mut options = NodeOptions::new(dir.path().join(hostname), hostname);
    options.control_url = Some(control_url);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_up_does_not_block_other_calls_on_the_node_or_other_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, url) = hanging_control();
    let node = TsnetTransport::new(offline_options(&dir, "hang-up", url)).unwrap();
    let other = TsnetTransport::new(offline_options(&dir, "bystander", dead_control())).unwrap();

    let up = tokio::spawn({
        let node = node.clone();
        async move { node.up(Duration::from_secs(120)).await }
    });
    // Let the up call reach the Go side and start waiting on control.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!up.is_finished(), "up returned against a control server that never answers");

    // Calls on the same node, and on another node, answer while up waits.
    let api = promptly("local_api during a hanging up", {
        let node = node.clone();
        move || node.local_api()
    });
    let api = api.expect("local_api");
    assert!(api.addr.ip().is_loopback());
    let listener = tokio::time::timeout(PROMPT, node.listen(7001))
        .await
        .expect("listen during a hanging up did not return: blocked behind up");
    listener.expect("listen before the node is up");
    promptly("local_api of another node", {
        let other = other.clone();
        move || other.local_api()
    })
    .expect("local_api of another node");

    // Closing during the hanging up works and ends up.
    tokio::time::timeout(PROMPT, node.close()).await.expect("close during a hanging up");
    let result = tokio::time::timeout(PROMPT, up)
        .await
        .expect("up did not end after close")
        .expect("up task");
    assert!(result.is_err(), "up succeeded against a control server that never answers");
    other.close().await;
}
