//! Who a raft connection may speak for and with which settings: a caller
//! is served only as the node that owns its address (its hello's stable id
//! and raft id, and every request's vote, for as long as that node owns
//! the address), and only if it applies entries with this node's session
//! limits.

use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::frame::{self, Message};
use raft_core::{ClusterId, NodeId, RaftConfig, Role, SessionLimits};
use test_support::raft_cluster::*;
use test_support::{eventually, eventually_every, never};
use ts_transport::{BoxStream, MemNetwork, Transport as _};

/// Dials node 0's raft port from `ip(from)` and sends `hello`; returns the
/// answer and the stream.
async fn say_hello(net: &MemNetwork, from: usize, hello: &Message) -> (Message, BoxStream) {
    let mut stream =
        net.node(ip(from)).dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    frame::write(&mut stream, &frame::encode(0, hello)).await.unwrap();
    let answer = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    (answer.message, stream)
}

fn refusal(answer: Message) -> String {
    match answer {
        Message::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Session limits decide which sessions an entry finds, so two members
/// configured differently would apply the same log differently. A node
/// refuses raft connections from a caller whose limits differ, naming both,
/// and counts it; nodes with the same limits form a working cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_different_session_limits_never_connect() {
    let net = MemNetwork::new();
    let ours = fast_config();
    let theirs = RaftConfig {
        sessions: SessionLimits { ttl_entries: 500, ..ours.sessions },
        ..fast_config()
    };
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), ours.clone()).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), theirs.clone()).await;
    form(&[&a, &b]).await;
    // Neither can win the other's vote: every connection is refused.
    never(
        Duration::from_secs(3),
        "a leader was elected across different session limits",
        async || a.metrics().role == Role::Leader || b.metrics().role == Role::Leader,
    )
    .await;
    assert!(
        a.stats().refused_settings.get() + b.stats().refused_settings.get() > 0,
        "the refusals were not counted"
    );
    // The refusal names both values.
    let cluster_id = a.cluster_id().unwrap();
    let hello = Message::hello(
        &theirs.network.cluster,
        cluster_id,
        &owner(ip(5)),
        1,
        a.id(),
        theirs.sessions,
    );
    let why = refusal(say_hello(&net, 5, &hello).await.0);
    assert!(
        why.contains("ttl_entries: 500") && why.contains("ttl_entries: 1000000"),
        "the refusal does not name both limits: {why}"
    );
    a.shutdown().await;
    b.shutdown().await;

    // The same limits (the other ones, on both): a working cluster.
    let net = MemNetwork::new();
    let c = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), theirs.clone()).await;
    let d = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), theirs).await;
    form(&[&c, &d]).await;
    let leader = eventually(WAIT, "a leader with the same limits", async || {
        [&c, &d].into_iter().find(|node| node.metrics().role == Role::Leader)
    })
    .await;
    let session = leader.register_session().await.expect("a session");
    leader.propose(session, 1, b"x".to_vec()).await.expect("committed");
    assert_eq!(c.stats().refused_settings.get() + d.stats().refused_settings.get(), 0);
    c.shutdown().await;
    d.shutdown().await;
}

/// A tagged peer cannot speak for another member: its hello must name the
/// node that owns its address (stable id and a raft id of that stable id),
/// and each request must carry a vote of its own raft id. Refusals name
/// the problem and are counted; the member it impersonates is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_speak_as_another_member() {
    let net = MemNetwork::new();
    let config = fast_config();
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), config.clone()).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), config.clone()).await;
    form(&[&a, &b]).await;
    let leader = eventually(WAIT, "a leader", async || {
        [&a, &b].into_iter().find(|node| node.metrics().role == Role::Leader).map(|node| node.id())
    })
    .await;
    let cluster_id: ClusterId = a.cluster_id().unwrap();
    let name = &config.network.cluster;
    let sessions = config.sessions;
    let term = a.metrics().term;

    // The node at ip(9) (node-9) claims to be node-1, b's exact identity.
    let as_b = Message::hello(name, cluster_id, "node-1", b.incarnation(), a.id(), sessions);
    let why = refusal(say_hello(&net, 9, &as_b).await.0);
    assert!(why.contains("node-9") && why.contains("node-1"), "{why}");

    // Its own stable id, with b's raft id.
    let forged = Message::Hello {
        cluster: name.clone(),
        cluster_id,
        from: b.id(),
        stable_id: "node-9".to_owned(),
        incarnation: 1,
        to: a.id(),
        sessions,
    };
    let why = refusal(say_hello(&net, 9, &forged).await.0);
    assert!(why.contains(&b.id().to_string()), "{why}");
    assert!(a.stats().refused_identity.get() >= 2, "the refusals were not counted");

    // As itself it is welcome, but a request that speaks for b (a vote
    // request with b as the candidate, a term ahead) ends the connection
    // unanswered.
    let own = hello_from(9, a.id(), cluster_id);
    let (answer, mut stream) = say_hello(&net, 9, &own).await;
    assert!(matches!(answer, Message::Welcome), "{answer:?}");
    let vote = Message::Vote(openraft::raft::VoteRequest {
        vote: openraft::Vote::new(term + 5, b.id()),
        last_log_id: None,
    });
    frame::write(&mut stream, &frame::encode(1, &vote)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), frame::read(&mut stream, 1 << 20))
        .await
        .expect("an answer or the end within 5 s");
    assert!(matches!(next, Ok(None) | Err(_)), "a request speaking for b was served: {next:?}");
    assert!(a.stats().refused_identity.get() >= 3);
    assert!(a.metrics().term < term + 5, "a request speaking for b reached raft");

    // A request in its own name is served (answered, whatever the answer).
    let (_, mut stream) = say_hello(&net, 9, &own).await;
    let mine: NodeId = raft_core::node_id("node-9", 1);
    let vote = Message::Vote(openraft::raft::VoteRequest {
        vote: openraft::Vote::new(0, mine),
        last_log_id: None,
    });
    frame::write(&mut stream, &frame::encode(1, &vote)).await.unwrap();
    let answer = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(answer.message, Message::VoteResult(_)), "{:?}", answer.message);
    assert!(a.metrics().leader == Some(leader) || b.metrics().leader == Some(leader));
    a.shutdown().await;
    b.shutdown().await;
}

/// A connection is admitted as the node that owned its address at the
/// hello. If the address later belongs to another tagged node (the first
/// left the tailnet, the address was given to another), the connection no
/// longer speaks for anyone the hello checked: its next request ends it
/// unanswered, even though the address is still authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_address_moves_to_another_node() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let net = MemNetwork::new();
    let moved = Arc::new(AtomicBool::new(false));
    let switch = moved.clone();
    // ip(9) is node-9's until the switch flips, then node-7's.
    let identify: raft_core::Identify = Arc::new(move |peer: ts_transport::PeerAddr| {
        if peer.ip() == ip(9) && switch.load(Ordering::SeqCst) {
            Some("node-7".to_owned())
        } else {
            Some(owner(peer.ip()))
        }
    });
    let a = start_alone(0, Arc::new(net.node(ip(0))), identify, fast_config()).await;
    form(&[&a]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let cluster_id = a.cluster_id().unwrap();
    let (answer, mut stream) = say_hello(&net, 9, &hello_from(9, a.id(), cluster_id)).await;
    assert!(matches!(answer, Message::Welcome), "{answer:?}");
    let mine: NodeId = raft_core::node_id("node-9", 1);
    let vote = Message::Vote(openraft::raft::VoteRequest {
        vote: openraft::Vote::new(0, mine),
        last_log_id: None,
    });
    // While node-9 owns the address, its requests are served.
    frame::write(&mut stream, &frame::encode(1, &vote)).await.unwrap();
    let answer = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(answer.message, Message::VoteResult(_)), "{:?}", answer.message);
    // The address now belongs to node-7: the same connection is cut off.
    moved.store(true, Ordering::SeqCst);
    let refused = a.stats().refused_identity.get();
    frame::write(&mut stream, &frame::encode(2, &vote)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), frame::read(&mut stream, 1 << 20))
        .await
        .expect("an answer or the end within 5 s");
    assert!(
        matches!(next, Ok(None) | Err(_)),
        "a request on a connection whose address moved to another node was served: {next:?}"
    );
    assert!(a.stats().refused_identity.get() > refused, "the refusal was not counted");
    a.shutdown().await;
}

/// Issue 12: a caller that sends raft requests and never reads the answers
/// fills the connection's answer queue, and then its handlers wait to queue
/// theirs. They waited holding the cluster gate, so an identity change
/// (which takes the gate exclusively) waited for as long as the caller did
/// not read: here `initialize_in` never returned. The gate now guards the
/// raft call only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reads_no_answers_holds_no_identity_change_back() {
    let net = MemNetwork::new();
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
    let cluster_id = a.form().await.unwrap();
    let (answer, stream) = say_hello(&net, 9, &hello_from(9, a.id(), cluster_id)).await;
    assert!(matches!(answer, Message::Welcome), "{answer:?}");
    let (unread, mut writer) = tokio::io::split(stream);
    let mine: NodeId = raft_core::node_id("node-9", 1);
    let vote = frame::encode(
        1,
        &Message::Vote(openraft::raft::VoteRequest {
            vote: openraft::Vote::new(0, mine),
            last_log_id: None,
        }),
    );
    // Far more requests than the pipes (256 KiB each way), the answer
    // queue and the requests in progress hold between them.
    let requests = 16 * 256 * 1024 / vote.len();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writing = tokio::spawn({
        let written = written.clone();
        async move {
            for _ in 0..requests {
                if frame::write(&mut writer, &vote).await.is_err() {
                    break;
                }
                written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            writer
        }
    });
    // The node stops reading once every handler in progress waits to
    // queue its answer: the writes stall (no progress between two polls
    // half a second apart) before they are all written.
    let mut last = 0;
    eventually_every(WAIT, Duration::from_millis(500), "the node stops reading", async || {
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        let stalled = now == last && now > 0;
        last = now;
        stalled.then_some(())
    })
    .await;
    assert!(!writing.is_finished(), "the node read every request unanswered");
    let members = std::collections::BTreeMap::from([(a.id(), a.info().clone())]);
    // It returns, whatever it decides (the votes the node answered may
    // count as raft state, and then it declines).
    let initialized = tokio::time::timeout(WAIT, a.initialize_in(cluster_id, members)).await;
    assert!(
        matches!(initialized, Ok(Ok(_))),
        "the initialization waited for answers nobody read: {initialized:?}"
    );
    writing.abort();
    drop(unread);
    a.shutdown().await;
}
