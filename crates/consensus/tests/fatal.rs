//! A node that hit a fatal error says so everywhere and stops serving:
//! `Consensus::metrics()`, the monitor's `/status` and `/metrics`, calls
//! through the facade and the command API, and its raft port. Three ways to
//! get there: the state machine panics in `apply`, the leader's fsync fails,
//! raft's own core panics.

use std::time::Duration;

use consensus::{Config, Consensus, Consistency, Error, StorageFaults};
use test_support::cluster::{MemCluster, Tailnet, WAIT};
use test_support::tally::{Tally, TallyCommand, add};
use test_support::{eventually, fast_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_transport::Transport as _;

const RAFT_PORT: u16 = 6270;
const COMMAND_PORT: u16 = 6271;

/// The test configuration, with the monitor on 127.0.0.1 and storage
/// faults (off until switched).
fn config(faults: &StorageFaults, durable: Option<&tempfile::TempDir>, i: usize) -> Config {
    Config {
        monitor_localhost_port: Some(0),
        storage_faults: Some(faults.clone()),
        state_dir: durable.map(|dir| dir.path().join(format!("n{i}"))),
        ..fast_config()
    }
}

/// `GET path` on the node's localhost monitor: the body.
async fn monitor(node: &Consensus<Tally>, path: &str) -> String {
    let port = node.monitor_localhost_port().expect("monitor on localhost");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the monitor answers")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// A raw `POST path` to node `to`'s command API from node `from`: the
/// status code and body.
async fn command_api(
    cluster: &MemCluster<Tally>,
    from: usize,
    to: usize,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = cluster
        .net
        .node(cluster.ip(from))
        .dial(cluster.ip(to), COMMAND_PORT, Duration::from_secs(2))
        .await
        .expect("dial the command port");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the command API answers")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// Whether node `i`'s raft port still accepts a connection that stays open.
async fn raft_port_open(cluster: &MemCluster<Tally>, from: usize, i: usize) -> bool {
    let dialed = cluster
        .net
        .node(cluster.ip(from))
        .dial(cluster.ip(i), RAFT_PORT, Duration::from_secs(1))
        .await;
    dialed.is_ok()
}

/// Checks every surface of a node that stopped on a fatal error whose
/// reason contains `expected`.
async fn assert_stopped_everywhere(cluster: &MemCluster<Tally>, i: usize, expected: &str) {
    let node = cluster.node(i);
    let stopped = node.wait_for(WAIT, |m| m.fatal.is_some()).await.expect("fatal is reported");
    let why = stopped.fatal.clone().unwrap();
    assert!(why.contains(expected), "metrics().fatal = {why:?}, expected {expected:?}");
    assert_eq!(node.metrics().fatal.as_deref(), Some(why.as_str()));

    let status: serde_json::Value =
        serde_json::from_str(&monitor(node, "/status").await).expect("/status is JSON");
    assert_eq!(status["fatal"].as_str(), Some(why.as_str()), "/status: {status}");
    assert_eq!(status["role"], "stopped", "/status: {status}");
    let metrics = monitor(node, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "tsconsensus_fatal 1"), "/metrics:\n{metrics}");
    assert!(monitor(node, "/").await.contains("Stopped on a fatal error"));

    let executed = node.execute(add("after", 1)).await;
    assert!(matches!(executed, Err(Error::Fatal { .. })), "execute: {executed:?}");
    let prepared = node.prepare(add("after", 1));
    assert!(matches!(prepared, Err(Error::Fatal { .. })), "prepare: {prepared:?}");
    for consistency in [Consistency::Linearizable, Consistency::Local] {
        let read = node.read((), consistency).await;
        assert!(matches!(read, Err(Error::Fatal { .. })), "read {consistency:?}: {read:?}");
    }
    let peer = (i + 1) % cluster.tailnet.len();
    for path in ["/v1/execute", "/v1/session", "/v1/read"] {
        let body = match path {
            "/v1/execute" => {
                r#"{"client":"00000000000000000000000000000001","seq":1,"command":{}}"#
            }
            "/v1/read" => r#"{"query":null,"consistency":"local"}"#,
            _ => "{}",
        };
        let (status, answer) = command_api(cluster, peer, i, path, body).await;
        assert_eq!(status, 500, "{path}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["code"], "fatal", "{path}: {answer}");
    }
    eventually(WAIT, "the raft port closes", async || !raft_port_open(cluster, peer, i).await)
        .await;
}

async fn healthy(node: &Consensus<Tally>) {
    assert_eq!(node.metrics().fatal, None);
    let metrics = monitor(node, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "tsconsensus_fatal 0"), "/metrics:\n{metrics}");
}

/// A command that panics the state machine stops every replica that
/// applies it, rather than let them diverge. The leader applies it for
/// sure (it committed it); a follower may never learn that it was
/// committed, since the leader stops right after, and then never applies
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_is_reported_everywhere_and_stops_serving() {
    let faults: Vec<_> = (0..3).map(|_| StorageFaults::new()).collect();
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |i| config(&faults[i], None, i)).await;
    let leader = cluster.leader();
    let caller = (leader + 1) % 3;
    healthy(cluster.node(caller)).await;
    assert_eq!(cluster.node(caller).execute(add("fine", 1)).await.unwrap(), 1);
    let panicked =
        cluster.node(caller).execute_within(TallyCommand::Panic, Duration::from_secs(3)).await;
    assert!(panicked.is_err(), "{panicked:?}");
    assert_stopped_everywhere(&cluster, leader, "asked to panic by the test").await;
    for i in (0..3).filter(|&i| i != leader) {
        if cluster.node(i).metrics().fatal.is_some() {
            assert_stopped_everywhere(&cluster, i, "asked to panic by the test").await;
        }
    }
    cluster.shutdown().await;
}

/// The leader's fsync fails: it stops and says why on every surface; the
/// others elect a leader and serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_reported_everywhere_and_stops_serving() {
    let dir = tempfile::tempdir().unwrap();
    let faults: Vec<_> = (0..3).map(|_| StorageFaults::new()).collect();
    let cluster =
        MemCluster::<Tally>::start(Tailnet::of(3), |i| config(&faults[i], Some(&dir), i)).await;
    let leader = cluster.leader();
    assert_eq!(cluster.node(leader).execute(add("before", 1)).await.unwrap(), 1);
    faults[leader].fail_next_fsync();
    let failed = cluster.node(leader).execute(add("lost", 1)).await;
    assert!(failed.is_err(), "a write whose fsync failed succeeded: {failed:?}");
    assert_stopped_everywhere(&cluster, leader, "fsync failed").await;
    let other = (leader + 1) % 3;
    healthy(cluster.node(other)).await;
    cluster
        .node(other)
        .wait_for(WAIT, |m| m.leader.is_some_and(|l| l != cluster.node(leader).id()))
        .await
        .expect("the others elect a new leader");
    let total = cluster.node(other).execute(add("after", 1)).await.expect("the others serve on");
    assert!(total == 2 || total == 3, "total {total}");
    cluster.shutdown().await;
}

/// Raft's core task panics (a log write panics inside it, with memory
/// storage): openraft's metrics never say so, the node must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_raft_core_is_reported_everywhere_and_stops_serving() {
    let faults: Vec<_> = (0..3).map(|_| StorageFaults::new()).collect();
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |i| config(&faults[i], None, i)).await;
    let leader = cluster.leader();
    assert_eq!(cluster.node(leader).execute(add("before", 1)).await.unwrap(), 1);
    faults[leader].panic_next_write();
    let failed = cluster.node(leader).execute_within(add("boom", 1), Duration::from_secs(3)).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_stopped_everywhere(&cluster, leader, "panicked").await;
    cluster.shutdown().await;
}
