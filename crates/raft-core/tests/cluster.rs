//! Raft clusters on the in-memory network (with its fault controls) and on
//! TCP loopback: elections, replication, crashes, partitions, snapshots,
//! restarts from durable storage, exactly-once proposals.

use std::collections::BTreeSet;
use std::time::Duration;

use raft_core::{ClientId, Outcome, ProposeError, Role};
use test_support::eventually;
use test_support::raft_cluster::*;
use ts_transport::MemNetwork;

async fn elect_and_replicate(n: usize, net: Net) {
    let cluster = Cluster::new(n, net, false, fast_config()).await;
    cluster.initialize().await;
    let all: Vec<usize> = (0..n).collect();
    let leader = cluster.leader(&all).await;
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 20).await;
    for i in 0..n {
        cluster.wait_applied(i, 20).await;
        assert_eq!(cluster.applied(i), cluster.applied(leader), "node {i} diverged");
    }
    let metrics = cluster.node(leader).metrics();
    assert_eq!(metrics.voters.len(), n);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_elects_itself_and_applies() {
    elect_and_replicate(1, Net::Mem(MemNetwork::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate() {
    elect_and_replicate(3, Net::Mem(MemNetwork::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_and_replicate() {
    elect_and_replicate(5, Net::Mem(MemNetwork::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ipv6_only_nodes_elect_and_replicate() {
    elect_and_replicate(3, Net::Mem6(MemNetwork::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate_over_tcp() {
    elect_and_replicate(3, Net::Tcp(17400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_elects_a_new_leader_and_loses_nothing() {
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 10).await;
    let before = cluster.applied(leader);
    cluster.stop(leader).await;

    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.leader(&rest).await;
    assert_ne!(new_leader, leader);
    let s2 = cluster.register(new_leader).await;
    cluster.commit_n(new_leader, s2, 1, 10).await;
    for &i in &rest {
        cluster.wait_applied(i, 20).await;
        let applied = cluster.applied(i);
        assert_eq!(applied[..10], before[..], "node {i} lost or reordered a committed entry");
    }
    // The survivors agree on the whole log, old entries and new.
    assert_eq!(cluster.applied(rest[0]), cluster.applied(rest[1]));
    cluster.shutdown().await;
}

/// A watch of leadership wakes once per election or configuration change,
/// not once per entry (a watcher per node that woke on every entry cost
/// every command tens of microseconds of CPU, docs/benchmarks.md); and it
/// still sees every change of leader, as does a wait on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_watch_wakes_on_elections_not_entries() {
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 2).await;
    for &i in &rest {
        cluster.wait_applied(i, 2).await;
    }
    let mut leadership: Vec<_> = (0..3).map(|i| cluster.node(i).subscribe_leadership()).collect();
    let mut every: Vec<_> = (0..3).map(|i| cluster.node(i).subscribe()).collect();
    for rx in leadership.iter_mut().chain(every.iter_mut()) {
        rx.borrow_and_update();
    }
    cluster.commit_n(leader, s1, 3, 40).await;
    for &i in &rest {
        cluster.wait_applied(i, 42).await;
    }
    for i in 0..3 {
        // The entries reached every node's metrics (so a change was there
        // to be seen), but none woke a watcher of leadership.
        assert!(every[i].has_changed().unwrap(), "node {i}: 40 entries changed no metrics");
        assert!(
            !leadership[i].has_changed().unwrap(),
            "node {i}: an entry woke a leadership watch"
        );
    }
    let old = cluster.ids[leader];
    cluster.stop(leader).await;
    let (watched, waiting) = (rest[0], rest[1]);
    let moved = |m: &raft_core::NodeMetrics| m.leader.is_some_and(|l| l != old);
    let waited = cluster.node(waiting).wait_for_leadership(WAIT, moved).await;
    let waited = waited.expect("a wait on leadership sees the new leader");
    let seen = tokio::time::timeout(WAIT, leadership[watched].wait_for(moved)).await;
    let seen = seen.expect("in time").expect("the watch is open").clone();
    assert_eq!(seen.leader, waited.leader, "the two survivors name different leaders");
    assert!(seen.term > 1, "the new leader's term is missing: {seen:?}");
    cluster.shutdown().await;
}

/// A watch of leadership nobody holds any more ends its task at once, not
/// at the next election: on a steady cluster that may be never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leadership_watch_ends_its_task() {
    let cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    let watches: Vec<_> = (0..50).map(|_| cluster.node(leader).subscribe_leadership()).collect();
    assert!(tasks() >= before + 50, "{} tasks before, {} with 50 watches", before, tasks());
    drop(watches);
    eventually(WAIT, "the 50 watch tasks end", async || tasks() < before + 10).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partition_cannot_commit_and_catches_up_after_healing() {
    let net = MemNetwork::new();
    let cluster = Cluster::new(5, Net::Mem(net.clone()), false, fast_config()).await;
    cluster.initialize().await;
    let all: Vec<usize> = (0..5).collect();
    let leader = cluster.leader(&all).await;
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 5).await;

    // The leader and one follower on the minority side.
    let buddy = (leader + 1) % 5;
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != leader && i != buddy).collect();
    net.partition_set(&[ip(leader), ip(buddy)]);

    // The old leader cannot commit: its proposal gets no outcome.
    let stranded = cluster.node(leader).propose(s1, 6, b"stranded".to_vec()).await;
    assert!(
        matches!(
            stranded,
            Err(ProposeError::Timeout(_)
                | ProposeError::NotLeader { .. }
                | ProposeError::LeaderLost { .. })
        ),
        "minority leader committed: {stranded:?}"
    );
    // The majority elects its own leader and commits.
    let new_leader = cluster.leader(&majority).await;
    let s2 = cluster.register(new_leader).await;
    cluster.commit_n(new_leader, s2, 1, 5).await;

    net.heal_all();
    for i in 0..5 {
        cluster.wait_applied(i, 10).await;
    }
    let reference = cluster.applied(new_leader);
    assert!(
        !reference.contains(&b"stranded".to_vec()),
        "an uncommitted minority write was applied"
    );
    for i in 0..5 {
        assert_eq!(cluster.applied(i), reference, "node {i} diverged after healing");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_does_not_stop_the_majority() {
    let net = MemNetwork::new();
    let cluster = Cluster::new(3, Net::Mem(net.clone()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let s1 = cluster.register(leader).await;
    let follower = (leader + 1) % 3;
    net.isolate(ip(follower));
    cluster.commit_n(leader, s1, 1, 10).await;
    assert!(cluster.applied(follower).len() < 10, "isolated follower received entries");
    net.heal_all();
    cluster.wait_applied(follower, 10).await;
    assert_eq!(cluster.applied(follower), cluster.applied(leader));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_through_a_snapshot() {
    let net = MemNetwork::new();
    let (cluster, leader, _, follower) = a_follower_behind_a_purge(&net, false).await;
    net.heal_all();
    cluster.wait_applied(follower, 105).await;
    assert_eq!(cluster.applied(follower), cluster.applied(leader));
    let caught_up = cluster.node(follower).metrics();
    assert!(
        caught_up.snapshot.is_some(),
        "follower caught up without installing a snapshot: {caught_up:?}"
    );
    // The counters the facade's /metrics shows.
    assert!(cluster.node(follower).stats().snapshots_installed.get() >= 1);
    assert!(cluster.node(leader).stats().snapshots_built.get() >= 1);
    assert_eq!(cluster.node(leader).stats().commands_applied.get(), 105);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_restarted_from_durable_storage_keeps_every_committed_entry() {
    let mut config = fast_config();
    config.snapshot_every = 30;
    config.keep_after_snapshot = 10;
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), true, config).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 50).await;
    let committed = cluster.applied(leader);
    for i in 0..3 {
        cluster.stop(i).await;
    }
    for i in 0..3 {
        let node = cluster.start_node(i).await;
        cluster.nodes[i] = Some(node);
    }
    // Restored from the last snapshot plus the log, before any new election.
    for i in 0..3 {
        cluster.wait_applied(i, 50).await;
        assert_eq!(
            cluster.applied(i)[..50],
            committed[..],
            "node {i} lost entries across the restart"
        );
    }
    let leader = cluster.leader(&[0, 1, 2]).await;
    cluster.commit_n(leader, s1, 51, 5).await;
    for i in 0..3 {
        cluster.wait_applied(i, 55).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_proposal_twice_is_applied_once() {
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let c = cluster.register(leader).await;
    let first = cluster.propose(leader, c, 1, b"once").await.unwrap();
    let again = cluster.propose(leader, c, 1, b"once").await.unwrap();
    assert!(matches!(first, Outcome::Applied(_)));
    assert_eq!(
        again,
        Outcome::Duplicate(match &first {
            Outcome::Applied(bytes) => bytes.clone(),
            _ => unreachable!(),
        })
    );
    // A retry through a new leader after a crash is still a duplicate.
    cluster.stop(leader).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.leader(&rest).await;
    let retried = cluster.propose(new_leader, c, 1, b"once").await.unwrap();
    assert!(matches!(retried, Outcome::Duplicate(_)), "{retried:?}");
    // An older sequence number than the session's last is stale, not applied.
    cluster.propose(new_leader, c, 2, b"second").await.unwrap();
    let stale = cluster.propose(new_leader, c, 1, b"once").await.unwrap();
    assert_eq!(stale, Outcome::Stale { last_seq: 2 });
    for &i in &rest {
        cluster.wait_applied(i, 2).await;
        let applied = cluster.applied(i);
        assert_eq!(applied, vec![b"once".to_vec(), b"second".to_vec()], "node {i}");
    }
    cluster.shutdown().await;
}

/// Sessions are registered through the log: every replica assigns the same
/// ids, forgets the same sessions, and refuses the same retries, across a
/// leader change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_registered_through_the_log_and_expire_alike_everywhere() {
    let mut config = fast_config();
    config.sessions.max_sessions = 3;
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, config).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let first = cluster.register(leader).await;
    assert_eq!(first, ClientId(1), "ids are assigned from 1, in log order");
    let answer = cluster.propose(leader, first, 1, b"first").await.unwrap();
    assert!(matches!(answer, Outcome::Applied(_)), "{answer:?}");
    // Three more sessions: over the cap, so the least recently used goes.
    for expected in 2..=4 {
        assert_eq!(cluster.register(leader).await, ClientId(expected));
    }
    // A new leader refuses the evicted session's retry and new commands, and
    // never-assigned ids.
    cluster.stop(leader).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.leader(&rest).await;
    let retry = cluster.propose(new_leader, first, 1, b"first").await.unwrap();
    assert_eq!(retry, Outcome::SessionExpired);
    let next = cluster.propose(new_leader, first, 2, b"second").await.unwrap();
    assert_eq!(next, Outcome::SessionExpired);
    let stranger = cluster.propose(new_leader, ClientId(99), 1, b"stranger").await.unwrap();
    assert_eq!(stranger, Outcome::UnknownSession);
    // The counter carried over: the next id follows the last one.
    assert_eq!(cluster.register(new_leader).await, ClientId(5));
    let fifth = cluster.propose(new_leader, ClientId(5), 1, b"fifth").await.unwrap();
    assert!(matches!(fifth, Outcome::Applied(_)), "{fifth:?}");
    for &i in &rest {
        cluster.wait_applied(i, 2).await;
        assert_eq!(cluster.applied(i), vec![b"first".to_vec(), b"fifth".to_vec()], "node {i}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_and_all_applied_in_one_order() {
    let cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let cluster = std::sync::Arc::new(cluster);
    let before = cluster.node(leader).metrics().last_log_index.unwrap_or(0);
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..64 {
        sessions.push(cluster.register(leader).await);
    }
    for c in sessions {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=10 {
                let outcome =
                    cluster.propose(leader, c, seq, format!("{c}:{seq}").as_bytes()).await;
                assert!(matches!(outcome, Ok(Outcome::Applied(_))), "{outcome:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..3 {
        cluster.wait_applied(i, 640).await;
        assert_eq!(cluster.applied(i), cluster.applied(leader));
    }
    let entries = cluster.node(leader).metrics().last_log_index.unwrap_or(0) - before;
    assert!(entries < 640, "640 concurrent proposals took {entries} log entries: no batching");
    let set: BTreeSet<Vec<u8>> = cluster.applied(leader).into_iter().collect();
    assert_eq!(set.len(), 640, "a proposal was applied twice or lost");
    match std::sync::Arc::try_unwrap(cluster) {
        Ok(cluster) => cluster.shutdown().await,
        Err(_) => panic!("cluster still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_state_machine_stops_the_node_with_a_fatal_error() {
    let cluster = Cluster::new(1, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    cluster.leader(&[0]).await;
    let c = cluster.register(0).await;
    cluster.propose(0, c, 1, b"fine").await.unwrap();
    let outcome = cluster.propose(0, c, 2, b"panic now").await;
    assert!(
        matches!(outcome, Err(ProposeError::Fatal(_)) | Err(ProposeError::ShuttingDown)),
        "{outcome:?}"
    );
    let stopped = cluster
        .node(0)
        .wait_for(WAIT, |m| m.fatal.is_some())
        .await
        .expect("node reports the fatal error");
    assert!(
        stopped.fatal.as_deref().unwrap_or_default().contains("panicked"),
        "{:?}",
        stopped.fatal
    );
    let after = cluster.propose(0, c, 3, b"later").await;
    assert!(after.is_err(), "a stopped node accepted a proposal: {after:?}");
    assert_eq!(cluster.applied(0), vec![b"fine".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_peers_cannot_reach_the_raft_port() {
    let net = MemNetwork::new();
    let config = fast_config();
    // Node 0 accepts nobody; node 1 everybody.
    let deny: raft_core::Identify = std::sync::Arc::new(|_| None);
    let a = start_alone(0, std::sync::Arc::new(net.node(ip(0))), deny, config.clone()).await;
    let b = start_alone(1, std::sync::Arc::new(net.node(ip(1))), allow_all(), config).await;
    form(&[&b, &a]).await;
    // b can never win: a refuses its connections, so no vote arrives.
    let elected = b.wait_for(Duration::from_secs(3), |m| m.role == Role::Leader).await;
    assert!(elected.is_err(), "b became leader without a's vote");
    assert_eq!(a.metrics().term, 0, "a heard from an unauthorized peer");
    a.shutdown().await;
    b.shutdown().await;
}

/// Nodes 0 (a, identifying peers with `identify_a`) and 1 (b, with
/// `identify_b`) form a cluster that a leads; one entry is committed and b
/// applied it. Also the session it was proposed in.
async fn a_leads_b_applied_one(
    net: &MemNetwork,
    identify_a: raft_core::Identify,
    identify_b: raft_core::Identify,
) -> (raft_core::RaftNode<Recorder>, raft_core::RaftNode<Recorder>, raft_core::ClientId) {
    let config = fast_config();
    let a = start_alone(0, std::sync::Arc::new(net.node(ip(0))), identify_a, config.clone()).await;
    let b = start_alone(1, std::sync::Arc::new(net.node(ip(1))), identify_b, config).await;
    form(&[&a, &b]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let c = a.register_session().await.expect("session registered");
    tokio::time::timeout(WAIT, a.propose(c, 1, b"before".to_vec()))
        .await
        .expect("in time")
        .expect("the first entry committed");
    b.wait_for(WAIT, |m| m.last_applied >= a.metrics().last_applied).await.expect("b applies");
    (a, b, c)
}

/// After [`a_leads_b_applied_one`] and a change that must cut b off: a's
/// next entry does not commit within 3 s (b is a's only other voter), and
/// b applied nothing more; `what` names the failure. Stops both.
async fn no_second_entry_reaches_b(
    a: raft_core::RaftNode<Recorder>,
    b: raft_core::RaftNode<Recorder>,
    c: raft_core::ClientId,
    what: &str,
) {
    let after =
        tokio::time::timeout(Duration::from_secs(3), a.propose(c, 2, b"after".to_vec())).await;
    assert!(!matches!(after, Ok(Ok(_))), "{what}: {after:?}");
    assert_eq!(b.read_local(|r| r.applied.len()), 1, "{what}: b applied a second entry");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_authorization_is_revoked_is_cut_off_on_live_connections() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let net = MemNetwork::new();
    // Node 1 accepts node 0 until the switch flips; node 0 accepts everyone.
    let trusted = std::sync::Arc::new(AtomicBool::new(true));
    let switch = trusted.clone();
    let revocable: raft_core::Identify =
        std::sync::Arc::new(move |peer: ts_transport::PeerAddr| {
            switch.load(Ordering::SeqCst).then(|| owner(peer.ip()))
        });
    let (a, b, c) = a_leads_b_applied_one(&net, allow_all(), revocable).await;
    // Revoked: a's established connection to b must not carry another
    // entry, so a can no longer commit anything.
    trusted.store(false, Ordering::SeqCst);
    no_second_entry_reaches_b(a, b, c, "a revoked peer still replicated over its live connection")
        .await;
}

/// The leader's side of a raft connection speaks to the node it dialed:
/// once that node's address belongs to another tagged node (the first
/// left the tailnet and the address was given to another), the leader's
/// live connection must not carry another entry, though the address is
/// still authorized. Before, the leader checked only that the address was
/// authorized, by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stops_replicating_to_an_address_that_moved_to_another_node() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let net = MemNetwork::new();
    // At node 0, ip(1) is node 1's until the switch flips, then node-7's.
    let moved = std::sync::Arc::new(AtomicBool::new(false));
    let switch = moved.clone();
    let identify: raft_core::Identify = std::sync::Arc::new(move |peer: ts_transport::PeerAddr| {
        if peer.ip() == ip(1) && switch.load(Ordering::SeqCst) {
            Some("node-7".to_owned())
        } else {
            Some(owner(peer.ip()))
        }
    });
    let (a, b, c) = a_leads_b_applied_one(&net, identify, allow_all()).await;
    moved.store(true, Ordering::SeqCst);
    no_second_entry_reaches_b(a, b, c, "a kept replicating to an address now another node's").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_went_silent_is_replaced() {
    // A follower's process dies behind a userspace network stack and comes
    // back: the leader's connection to it goes silent without an error.
    // The leader must notice and dial again rather than wait on it forever.
    let net = MemNetwork::new();
    let config = fast_config();
    let faults = ts_transport::Faults::new(7);
    let faulty = faults.wrap(std::sync::Arc::new(net.node(ip(0))));
    let a = start_alone(0, std::sync::Arc::new(faulty), allow_all(), config.clone()).await;
    let b = start_alone(1, std::sync::Arc::new(net.node(ip(1))), allow_all(), config).await;
    form(&[&a, &b]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let c = a.register_session().await.expect("session registered");
    tokio::time::timeout(WAIT, a.propose(c, 1, b"before".to_vec()))
        .await
        .expect("in time")
        .expect("committed");
    faults.black_hole(ip(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.clear_black_hole(ip(1));
    // b may have campaigned meanwhile; whoever leads must reach the other.
    eventually(
        Duration::from_secs(15),
        "the cluster recovers from a silent connection",
        async || {
            for node in [&a, &b] {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(2),
                    node.propose(c, 2, b"after".to_vec()),
                )
                .await;
                if matches!(attempt, Ok(Ok(_))) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_incoming_connection_is_closed() {
    use raft_core::testing::frame::{self, Message};
    use ts_transport::Transport as _;
    let net = MemNetwork::new();
    let mut config = fast_config();
    config.network.idle_timeout = Duration::from_millis(300);
    let node =
        start_alone(0, std::sync::Arc::new(net.node(ip(0))), allow_all(), config.clone()).await;
    let dialer = net.node(ip(1));
    let mut stream = dialer.dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    let cluster_id = raft_core::ClusterId::random().unwrap();
    node.set_cluster_id(cluster_id).await.unwrap();
    let hello = hello_from(1, node.id(), cluster_id);
    frame::write(&mut stream, &frame::encode(0, &hello)).await.unwrap();
    let welcome = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(welcome.message, Message::Welcome), "{:?}", welcome.message);
    // Then silence: the node hangs up after its idle timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), frame::read(&mut stream, 1 << 20))
        .await
        .expect("the idle connection was closed within 5 s");
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    node.shutdown().await;
}

/// Review finding (a duplicate write on five nodes): openraft answers
/// `ForwardToLeader` also to a proposal whose entry this node had appended,
/// when a new leader's log truncates it; such an entry may survive on
/// another node and commit there. It was reported as
/// `ProposeError::NotLeader` ("not applied; a retry elsewhere is safe"),
/// which the command API took for a known outcome. Here the leader is cut
/// off alone with a proposal appended, the others elect a leader and
/// commit, and on healing the old leader's entry is truncated: the
/// proposal must end with an unknown outcome (`LeaderLost`, or a timeout),
/// never `NotLeader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_whose_entry_was_truncated_has_an_unknown_outcome() {
    let net = MemNetwork::new();
    let config =
        raft_core::RaftConfig { propose_timeout: Duration::from_secs(60), ..fast_config() };
    let cluster = Cluster::new(3, Net::Mem(net.clone()), false, config).await;
    cluster.initialize().await;
    let all: Vec<usize> = (0..3).collect();
    let leader = cluster.leader(&all).await;
    let s1 = cluster.register(leader).await;
    cluster.commit_n(leader, s1, 1, 3).await;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();

    net.partition_set(&[ip(leader)]);
    let appended = cluster.node(leader).metrics().last_log_index;
    let cut_off = cluster.node(leader).propose(s1, 4, b"cut off".to_vec());
    let elsewhere = async {
        // The entry is in the old leader's log before the others move on.
        test_support::eventually(WAIT, "the cut-off proposal appended", async || {
            (cluster.node(leader).metrics().last_log_index > appended).then_some(())
        })
        .await;
        let new_leader = cluster.leader(&rest).await;
        let s2 = cluster.register(new_leader).await;
        cluster.commit_n(new_leader, s2, 1, 2).await;
        net.heal_all();
    };
    let (outcome, ()) = tokio::time::timeout(WAIT * 2, async { tokio::join!(cut_off, elsewhere) })
        .await
        .expect("an outcome");
    assert!(
        !matches!(outcome, Err(ProposeError::NotLeader { .. }) | Ok(_)),
        "a truncated entry's proposal was answered {outcome:?}: 'not applied' is not known"
    );
    cluster.shutdown().await;
}
