//! The raft network over slow, lossy or revoked links: dials that take
//! longer than a heartbeat, frames that take longer than a heartbeat to
//! send, and peers whose authorization is revoked on the calling side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raft_core::{Identify, Outcome, RaftConfig, Role};
use test_support::raft_cluster::*;
use ts_transport::MemNetwork;

/// A cluster of `a` alone, which commits `commands` of `size` bytes.
async fn lone_leader(
    net: &MemNetwork,
    config: &RaftConfig,
    commands: usize,
    size: usize,
) -> raft_core::RaftNode<Recorder> {
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), config.clone()).await;
    form(&[&a]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let session = a.register_session().await.expect("a session");
    for seq in 1..=commands as u64 {
        let mut command = vec![b'x'; size];
        command[..8].copy_from_slice(&seq.to_be_bytes());
        let outcome = a.propose(session, seq, command).await;
        assert!(matches!(outcome, Ok(Outcome::Applied(_))), "{outcome:?}");
    }
    a
}

/// Over a link where dialing and saying hello take longer than a heartbeat
/// (openraft's AppendEntries timeout), a leader still connects to a
/// learner it reaches only through AppendEntries: the dial runs in the
/// background with its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_slower_than_a_heartbeat_still_connects() {
    let net = MemNetwork::new();
    let config = RaftConfig {
        election_timeout: (Duration::from_millis(600), Duration::from_millis(1200)),
        ..fast_config()
    };
    let a = lone_leader(&net, &config, 5, 16).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), config.clone()).await;
    b.set_cluster_id(a.cluster_id().unwrap()).await.unwrap();
    // 40 ms each way: a request and its answer take 80 ms, within the
    // heartbeat (the fast profile's 100 ms); a dial and hello take 120 ms,
    // beyond it.
    net.set_delay(ip(0), ip(1), Duration::from_millis(40));
    a.add_learner(b.id(), b.info().clone(), WAIT).await.expect("the learner catches up");
    b.wait_for(WAIT, |m| m.last_applied >= a.metrics().last_applied)
        .await
        .expect("the learner applies the log");
    assert_eq!(b.read_local(|r| r.applied.len()), 5);
    a.shutdown().await;
    b.shutdown().await;
}

/// A follower far behind on a link where one frame of entries takes many
/// heartbeats to send catches up: the AppendEntries stays in flight past
/// openraft's timeout, retries wait for it instead of sending it again, and
/// the connection is not taken for dead while it is busy sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_frames_slower_than_a_heartbeat_catches_up() {
    let net = MemNetwork::new();
    let mut config = RaftConfig {
        election_timeout: (Duration::from_millis(600), Duration::from_millis(1200)),
        ..fast_config()
    };
    // Shorter than a frame takes: a busy connection must not count as
    // silent.
    config.network.silence_timeout = Duration::from_millis(500);
    // 24 commands of 384 KiB: about 9 MiB to catch up on.
    let a = lone_leader(&net, &config, 24, 384 << 10).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), config.clone()).await;
    b.set_cluster_id(a.cluster_id().unwrap()).await.unwrap();
    // Every write waits 20 ms: 64 KiB at a time, about 3 MiB/s; a frame of
    // a few MiB takes a second or more, ten heartbeats.
    net.set_delay(ip(0), ip(1), Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    a.add_learner(b.id(), b.info().clone(), Duration::from_secs(60))
        .await
        .expect("the learner catches up");
    b.wait_for(WAIT, |m| m.last_applied >= a.metrics().last_applied)
        .await
        .expect("the learner applies the log");
    eprintln!("caught up on 9 MiB in {:?}", started.elapsed());
    assert_eq!(b.read_local(|r| r.applied.len()), 24);
    a.shutdown().await;
    b.shutdown().await;
}

/// A leader whose view no longer authorizes a member (its tag revoked)
/// stops sending it the log, although the member still accepts the
/// leader: outgoing connections are re-checked like incoming requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stops_replicating_to_a_member_it_no_longer_authorizes() {
    let net = MemNetwork::new();
    let config = fast_config();
    let trusted = Arc::new(AtomicBool::new(true));
    // Node 0 allows node 1 until the switch flips; everyone else allows all.
    let revocable: Identify = {
        let trusted = trusted.clone();
        Arc::new(move |peer: ts_transport::PeerAddr| {
            (peer.ip() != ip(1) || trusted.load(Ordering::SeqCst)).then(|| owner(peer.ip()))
        })
    };
    let a = start_alone(0, Arc::new(net.node(ip(0))), revocable, config.clone()).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), config.clone()).await;
    let c = start_alone(2, Arc::new(net.node(ip(2))), allow_all(), config.clone()).await;
    form(&[&a, &b, &c]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let session = a.register_session().await.expect("a session");
    a.propose(session, 1, b"before".to_vec()).await.expect("committed");
    for node in [&b, &c] {
        node.wait_for(WAIT, |m| m.last_applied >= a.metrics().last_applied)
            .await
            .expect("replicated");
    }
    let b_had = b.metrics().last_log_index;

    trusted.store(false, Ordering::SeqCst);
    for seq in 2..=6 {
        a.propose(session, seq, format!("after {seq}").into_bytes())
            .await
            .expect("a and c commit without b");
    }
    c.wait_for(WAIT, |m| m.last_applied >= a.metrics().last_applied).await.expect("c applies");
    assert_eq!(
        b.metrics().last_log_index,
        b_had,
        "b received entries from a leader that no longer authorizes it"
    );
    assert_eq!(b.read_local(|r| r.applied.len()), 1);
    assert_eq!(a.metrics().role, Role::Leader, "b disrupted the leader");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// A peer holds at most `max_connections_per_peer` raft connections: a
/// new one beyond it closes that peer's oldest (before: no bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holds_at_most_max_connections_per_peer_on_the_raft_port() {
    use tokio::io::AsyncReadExt;
    use ts_transport::Transport as _;
    let net = MemNetwork::new();
    let mut config = fast_config();
    config.network.max_connections_per_peer = 3;
    let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), config).await;
    let dialer = net.node(ip(1));
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(dialer.dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = Vec::new();
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
        if read.is_err() {
            open.push(i);
        }
    }
    assert_eq!(open, vec![3, 4, 5], "the newest three stay open");
    node.shutdown().await;
}
