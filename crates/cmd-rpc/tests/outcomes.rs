//! What a call that ends without the leader's answer reports. Whether an
//! attempt of it may have been applied decides between `not_started`
//! (known not applied: nothing of the call was ever written to a leader)
//! and an unknown outcome; an attempt with next to no time left is not
//! made, and a later, vaguer error does not replace a more telling one.
//!
//! Most of these follow a leader played by a raw HTTP server: a cluster of
//! two, whose leader's command server is replaced by one that answers (or
//! does not) as each test says.
//!
//! Every test runs in tokio's paused time: nothing here leaves the process
//! (`MemNetwork`, memory storage), so deadlines, back-offs, leases and the
//! played leader's delays all pass on tokio's clock, in exact order, and
//! no loaded machine can stretch one past another.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cmd_rpc::{CommandConfig, Consistency, ErrorCode, Origin, ReadRequest};
use common::*;
use raft_core::{NodeId, NodeInfo, Role};
use serde_json::value::RawValue;
use test_support::{eventually, eventually_every};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use ts_transport::{MemNetwork, Transport};

/// What the played leader does with one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Answers after `delay` with HTTP `status` and the error `code`.
    Error { delay: Duration, status: u16, code: &'static str },
    /// Reads it and never answers (the connection stays open).
    Silent,
}

/// Serves the command port at `at` in place of the leader's server: the
/// n-th request it reads gets `replies[n]` (the last one, every request
/// after). Counts the requests read.
async fn play_leader(net: &MemNetwork, at: IpAddr, replies: Vec<Reply>) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let node = net.node(at);
    let listener = eventually(WAIT, "the leader's command port free", async || {
        node.listen(COMMAND_PORT).await.ok()
    })
    .await;
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, replies) = (count.clone(), replies.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then content-length bytes.
                    let (head_end, length) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let reply = replies[n.min(replies.len() - 1)];
                    match reply {
                        Reply::Silent => {
                            // Hold the connection open, say nothing.
                            std::future::pending::<()>().await;
                        }
                        Reply::Error { delay, status, code } => {
                            tokio::time::sleep(delay).await;
                            let body = format!(
                                r#"{{"code":"{code}","message":"played leader","leader":null}}"#
                            );
                            let head = format!(
                                "HTTP/1.1 {status} Played\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n",
                                body.len()
                            );
                            if stream.write_all(head.as_bytes()).await.is_err()
                                || stream.write_all(body.as_bytes()).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    seen
}

/// Client 1's put of `k` with sequence `seq`, executed on `node` within
/// `within`, as a task.
fn spawn_put(
    node: &Node,
    seq: u64,
    within: Duration,
) -> tokio::task::JoinHandle<Result<cmd_rpc::ExecuteResponse, cmd_rpc::RpcError>> {
    let service = node.service.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + within;
        service.execute(&put(1, seq, "k"), deadline, Origin::Client).await
    })
}

/// Two nodes in one cluster; the leader's command server is shut down
/// (its raft keeps leading). The follower's node, the leader's raft node
/// (to shut down at the end), and the leader's address.
async fn follower_of_a_silent_leader(
    net: &MemNetwork,
    config: CommandConfig,
) -> (Node, Arc<raft_core::RaftNode<Counter>>, IpAddr) {
    let mut nodes = Vec::new();
    for i in 0..2 {
        let transport: Arc<dyn Transport> = Arc::new(net.node(ip(i)));
        nodes.push(start_node_with(transport, i, fast_raft(), allow_all(), config.clone()).await);
    }
    let members: BTreeMap<NodeId, NodeInfo> =
        nodes.iter().map(|n| (n.service.node().id(), n.service.node().info().clone())).collect();
    let cluster_id = nodes[0].service.node().form().await.unwrap();
    nodes[1].service.node().set_cluster_id(cluster_id).await.unwrap();
    assert!(nodes[0].service.node().initialize_in(cluster_id, members).await.unwrap());
    let leader = eventually(WAIT, "a leader both nodes follow", async || {
        let at = nodes.iter().position(|n| n.service.node().metrics().role == Role::Leader)?;
        let id = nodes[at].service.node().id();
        nodes.iter().all(|n| n.service.node().metrics().leader == Some(id)).then_some(at)
    })
    .await;
    let at = ip(leader);
    let follower = nodes.remove(1 - leader);
    let leader = nodes.remove(0);
    let raft = leader.service.node().clone();
    leader.server.shutdown().await;
    (follower, raft, at)
}

async fn stop_all(follower: Node, leader: Arc<raft_core::RaftNode<Counter>>) {
    stop_node(follower).await;
    leader.shutdown().await;
}

fn linearizable() -> ReadRequest {
    ReadRequest {
        query: RawValue::from_string("null".to_owned()).unwrap(),
        consistency: Consistency::Linearizable,
    }
}

/// Issue 12, task 1 (the flake a087fcf narrowed): the leader answers the
/// first read index `no_quorum` late enough that the back-off pause after
/// it ends shortly before the deadline (less than one minimum back-off
/// left), and would never answer another. Before, the call made one more
/// attempt with that sliver of time, whose bare timeout replaced the
/// leader's `no_quorum` ("no outcome within ..."). Now the attempt is not
/// worth making: the call reports `no_quorum`, and the leader hears one
/// request.
#[tokio::test(start_paused = true)]
async fn a_read_reports_the_leaders_no_quorum_not_a_last_slivers_timeout() {
    let net = MemNetwork::new();
    let backoff = Duration::from_millis(400);
    let config = CommandConfig { min_backoff: backoff, max_backoff: backoff, ..Default::default() };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let budget = Duration::from_millis(1500);
    // Answered at 0.85 s; the pause ends at 1.25 s, 0.25 s before the end.
    let no_quorum =
        Reply::Error { delay: Duration::from_millis(850), status: 503, code: "no_quorum" };
    let requests = play_leader(&net, at, vec![no_quorum, Reply::Silent]).await;
    let started = Instant::now();
    let err = follower
        .service
        .read(&linearizable(), Instant::now() + budget)
        .await
        .expect_err("no quorum to read with");
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::NoQuorum, "{err}");
    assert!(err.to_string().contains("played leader"), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "an attempt with a sliver of time was made");
    // The deadline on the clock the service reads, nothing past it.
    assert!(took <= budget, "answered after {took:?}");
    stop_all(follower, leader).await;
}

/// Issue 12, task 3: a node that knows no leader for the whole of an
/// execute's deadline never wrote the command anywhere: `not_started`
/// (known not applied), saying why. Before: `no_leader`, an unknown
/// outcome, so the facade's operation counted it "maybe applied".
#[tokio::test(start_paused = true)]
async fn an_execute_with_no_leader_for_its_whole_deadline_was_not_started() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let err = node
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_millis(300), Origin::Client)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
    assert!(!err.outcome_unknown(), "{err}");
    assert!(err.to_string().contains("no leader elected"), "{err}");
    stop_node(node).await;
}

/// Issue 12, task 3: every attempt failed to dial the leader (nothing
/// listens there): nothing was written, so `not_started`. Before:
/// `unreachable`, an unknown outcome.
#[tokio::test(start_paused = true)]
async fn an_execute_whose_attempts_all_failed_to_dial_was_not_started() {
    let net = MemNetwork::new();
    let (follower, leader, _) = follower_of_a_silent_leader(&net, CommandConfig::default()).await;
    let err = follower
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_millis(600), Origin::Client)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
    assert!(!err.outcome_unknown(), "{err}");
    assert!(follower.service.stats().forwarded.get() >= 1, "no attempt was made");
    stop_all(follower, leader).await;
}

/// Issue 12, task 3 (the conservative side): an attempt that wrote the
/// command and got no answer may have been applied, whatever follows:
/// an unknown outcome, never `not_started`.
#[tokio::test(start_paused = true)]
async fn an_execute_that_timed_out_after_sending_stays_unknown() {
    let net = MemNetwork::new();
    let config = CommandConfig {
        attempt_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let requests = play_leader(&net, at, vec![Reply::Silent]).await;
    let err = follower
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_secs(1), Origin::Client)
        .await
        .unwrap_err();
    assert!(requests.load(Ordering::SeqCst) >= 1);
    assert!(err.outcome_unknown(), "{}: {err}", err.code());
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    stop_all(follower, leader).await;
}

/// Finding 24, now with a test (issue 12, task 5): the first attempt was
/// written and timed out (it may have been applied); the leader answers
/// every later one `not_started`, which speaks only of that copy. The
/// call must not report `not_started` (not applied): it keeps the unknown
/// outcome.
#[tokio::test(start_paused = true)]
async fn a_not_started_after_an_attempt_that_may_have_been_applied_is_not_the_answer() {
    let net = MemNetwork::new();
    let config = CommandConfig {
        attempt_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let not_started = Reply::Error { delay: Duration::ZERO, status: 503, code: "not_started" };
    let requests = play_leader(&net, at, vec![Reply::Silent, not_started]).await;
    let err = follower
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_millis(1500), Origin::Client)
        .await
        .unwrap_err();
    assert!(requests.load(Ordering::SeqCst) >= 2, "no second attempt was answered");
    assert!(err.outcome_unknown(), "{}: {err}", err.code());
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    stop_all(follower, leader).await;
}

/// Issue 12, task 2: an execute on the leader with no time left is not
/// proposed. Before, the attempt was made with a zero budget;
/// `tokio::time::timeout` polls once before it looks at the clock, so the
/// proposal went to raft and was applied while the caller heard "no
/// outcome".
#[tokio::test(start_paused = true)]
async fn an_execute_with_no_time_left_is_not_proposed() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let raft = node.service.node().clone();
    let members = BTreeMap::from([(raft.id(), raft.info().clone())]);
    assert!(raft.initialize(members).await.unwrap());
    raft.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leader");
    let session: u128 = {
        let registered =
            node.service.register(Instant::now() + WAIT, Origin::Client).await.expect("a session");
        u128::from_str_radix(&registered.client, 16).unwrap()
    };
    let err = node
        .service
        .execute(&put(session, 1, "late"), Instant::now(), Origin::Client)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
    // A later command in the same session commits after anything the
    // first one proposed: the count shows whether that was applied.
    let answer = node
        .service
        .execute(&put(session, 2, "next"), Instant::now() + WAIT, Origin::Client)
        .await
        .expect("the next command");
    assert_eq!(answer.result.get(), "1", "the command with no time left was applied");
    stop_node(node).await;
}

/// Review of issue 12 (F2): an execute on the leader with a sliver of time
/// (100 µs) is not proposed either. Before, only a zero budget was
/// refused: the proposal was polled once, queued, the call timed out, and
/// the command was applied while its caller heard an unknown outcome
/// where `not_started` was known.
#[tokio::test(start_paused = true)]
async fn an_execute_with_a_sliver_of_time_is_not_proposed() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let raft = node.service.node().clone();
    let members = BTreeMap::from([(raft.id(), raft.info().clone())]);
    assert!(raft.initialize(members).await.unwrap());
    raft.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leader");
    let session: u128 = {
        let registered =
            node.service.register(Instant::now() + WAIT, Origin::Client).await.expect("a session");
        u128::from_str_radix(&registered.client, 16).unwrap()
    };
    let sliver = Instant::now() + Duration::from_micros(100);
    let answer = node.service.execute(&put(session, 1, "late"), sliver, Origin::Client).await;
    let err = answer.expect_err("a command with 100 µs left was answered");
    assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
    assert!(!err.outcome_unknown(), "{err}");
    // A later command in the same session commits after anything the
    // first one proposed: the count shows whether that was applied.
    let answer = node
        .service
        .execute(&put(session, 2, "next"), Instant::now() + WAIT, Origin::Client)
        .await
        .expect("the next command");
    assert_eq!(answer.result.get(), "1", "the command with a sliver of time was applied");
    // A short but workable deadline still makes its attempt.
    let answer = node
        .service
        .execute(
            &put(session, 3, "short"),
            Instant::now() + Duration::from_millis(200),
            Origin::Client,
        )
        .await
        .expect("a command with 200 ms is proposed");
    assert_eq!(answer.result.get(), "2");
    stop_node(node).await;
}

/// Review of issue 12 (F1): a batch that never got a request slot is
/// handed back unsent before its callers stop waiting. The follower may
/// have one request out to the leader (`max_requests_per_peer = 1`); a
/// read to the played leader, which never answers, holds it. Three
/// executes follow: the first goes alone and waits for the slot until its
/// deadline, the others wait for it and then go together in a batch,
/// which waits for the slot too. Before, the batch waited until its
/// attempt's end and a grace beyond it, its callers only until their
/// deadline: they gave up first and heard "no answer in time" (unknown)
/// for commands never written. Now every one of them is `not_started`.
#[tokio::test(start_paused = true)]
async fn a_batch_that_never_got_a_request_slot_was_not_started() {
    let net = MemNetwork::new();
    let config = CommandConfig {
        max_requests_per_peer: 1,
        attempt_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let requests = play_leader(&net, at, vec![Reply::Silent]).await;
    let service = follower.service.clone();
    let read = tokio::spawn(async move {
        service.read(&linearizable(), Instant::now() + Duration::from_secs(3)).await
    });
    eventually(WAIT, "the read holds the request slot", async || {
        (requests.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let stats = follower.service.stats().clone();
    let execute = |seq: u64, within: Duration| spawn_put(&follower, seq, within);
    let alone = execute(1, Duration::from_millis(300));
    eventually(WAIT, "the first execute out", async || (stats.forwarded.get() >= 1).then_some(()))
        .await;
    let together = [execute(2, Duration::from_secs(1)), execute(3, Duration::from_secs(1))];
    for call in std::iter::once(alone).chain(together) {
        let err = call.await.unwrap().expect_err("nothing answers");
        assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
        assert!(!err.outcome_unknown(), "{err}");
    }
    assert!(stats.batches.get() >= 1, "no batch was formed");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "only the read reached the leader");
    let _ = read.await;
    stop_all(follower, leader).await;
}

/// Moves the leadership from `leader` (whose command port is played) to
/// `follower`, which then leads: a change every waiting forward sees.
///
/// The held leader sends no heartbeats, and a vote is granted only once
/// the voters' leader leases have run out (when, depends on when each last
/// heard from the leader): the follower campaigns, a few times a lease,
/// until it leads.
async fn move_leadership_to(follower: &Node, leader: &raft_core::RaftNode<Counter>) {
    leader.hold_for_transfer(true);
    let node = follower.service.node();
    let every = leader.leader_lease() / 4;
    eventually_every(WAIT, every, "the follower leads", async || {
        let now = node.metrics();
        if now.leader == Some(node.id()) {
            return Ok(());
        }
        node.campaign().await.expect("campaign");
        Err(format!("term {}, leader {:?}", now.term, now.leader))
    })
    .await;
}

/// Holds the only request slot (`max_requests_per_peer` 1) from the
/// follower to the played leader at `at` with a request it never
/// answers and that no change of leader abandons.
async fn hold_the_request_slot(follower: &Node, at: IpAddr, requests: &AtomicUsize) {
    let client = follower.service.client().clone();
    let leader = NodeInfo { addrs: vec![at], ..info(0) };
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        let _ = client.get::<serde_json::Value>(&leader, "/v1/cluster", deadline).await;
    });
    eventually(WAIT, "the slot is held", async || {
        (requests.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
}

/// Issue 12 (finding 37's open end): a batch waiting for a request slot
/// when its leader lost its leadership was abandoned as if written, so
/// its commands' outcomes were unknown though none of it left the node.
/// They are handed back unsent: routed again (to this node, now the
/// leader, which does not know the session), the calls end with a known
/// outcome, not "maybe applied".
#[tokio::test(start_paused = true)]
async fn a_batch_abandoned_before_it_was_written_was_not_started() {
    let net = MemNetwork::new();
    let config = CommandConfig {
        max_requests_per_peer: 1,
        attempt_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let requests = play_leader(&net, at, vec![Reply::Silent]).await;
    hold_the_request_slot(&follower, at, &requests).await;
    let stats = follower.service.stats().clone();
    let execute = |seq: u64, within: Duration| spawn_put(&follower, seq, within);
    // The first goes alone and gives up at its deadline; the next two wait
    // meanwhile and go in a batch, which waits for the slot.
    let alone = execute(1, Duration::from_millis(300));
    eventually(WAIT, "the first execute out", async || (stats.forwarded.get() >= 1).then_some(()))
        .await;
    let together = [execute(2, Duration::from_secs(8)), execute(3, Duration::from_secs(8))];
    let err = alone.await.unwrap().expect_err("nothing answers");
    assert_eq!(err.code(), ErrorCode::NotStarted, "{err}");
    eventually(WAIT, "a batch out", async || (stats.batches.get() >= 1).then_some(())).await;
    let not_sent = stats.not_sent.get();
    move_leadership_to(&follower, &leader).await;
    for call in together {
        let err = call.await.unwrap().expect_err("session 1 was never registered");
        assert!(!err.outcome_unknown(), "{}: {err}", err.code());
        assert_eq!(err.code(), ErrorCode::UnknownSession, "{err}");
    }
    assert_eq!(stats.not_sent.get(), not_sent + 2, "both handed back unsent");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "only the slot's holder reached the leader");
    stop_all(follower, leader).await;
}

/// Issue 12, the same for a command forwarded alone: waiting for the
/// request slot when its leader lost its leadership, nothing of it was
/// written. Before: an unknown outcome ("lost its leadership"), whatever
/// was written.
#[tokio::test(start_paused = true)]
async fn an_execute_abandoned_alone_before_it_was_written_was_not_started() {
    let net = MemNetwork::new();
    let config = CommandConfig {
        max_requests_per_peer: 1,
        attempt_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let (follower, leader, at) = follower_of_a_silent_leader(&net, config).await;
    let requests = play_leader(&net, at, vec![Reply::Silent]).await;
    hold_the_request_slot(&follower, at, &requests).await;
    let stats = follower.service.stats().clone();
    let service = follower.service.clone();
    let call = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(8);
        service.execute(&put(1, 1, "k"), deadline, Origin::Client).await
    });
    eventually(WAIT, "the execute out", async || (stats.forwarded.get() >= 1).then_some(())).await;
    move_leadership_to(&follower, &leader).await;
    let err = call.await.unwrap().expect_err("session 1 was never registered");
    assert!(!err.outcome_unknown(), "{}: {err}", err.code());
    assert_eq!(err.code(), ErrorCode::UnknownSession, "{err}");
    assert_eq!(stats.not_sent.get(), 1, "handed back unsent");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "only the slot's holder reached the leader");
    stop_all(follower, leader).await;
}
