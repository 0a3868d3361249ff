//! Installing a snapshot from a leader: a follower that fails (or
//! crashes) half way through must start again from its disk, and a peer
//! cannot make a node allocate an unbounded snapshot.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership, Vote};
use raft_core::testing::frame::{self, Message};
use raft_core::{NodeId, Role};
use test_support::eventually;
use test_support::raft_cluster::*;
use ts_transport::{MemNetwork, Transport as _};

/// openraft purges a follower's log up to an incoming snapshot when it
/// queues the install, not after it. Here the follower's restore stalls,
/// then fails, as a crash before the snapshot reaches the disk would leave
/// it: the old snapshot and the log must still fit together, and the node
/// must start from them and catch up. On the old code the log was purged
/// past the stored snapshot and the node could not start (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_snapshot_install_fails_half_way_starts_again_and_catches_up() {
    let net = MemNetwork::new();
    let (mut cluster, leader, _, follower) = a_follower_behind_a_purge(&net, true).await;

    // It gets the leader's snapshot; its restore stalls while raft counts
    // the log up to the snapshot as purged.
    set_restore(RestoreMode::Stall);
    net.heal_all();
    eventually(WAIT, "the follower's install stalls after raft purged its log", async || {
        let m = cluster.node(follower).metrics();
        let purged = m.purged.is_some_and(|p| p >= 50);
        (restores_stalled() >= 1 && purged).then_some(()).ok_or(format!("{m:?}"))
    })
    .await;
    // Then the install fails: the snapshot is never saved.
    set_restore(RestoreMode::Refuse);
    cluster
        .node(follower)
        .wait_for(WAIT, |m| m.fatal.is_some())
        .await
        .expect("the failed install stops the follower");
    cluster.stop(follower).await;

    let dir = cluster.dirs[follower].clone().expect("durable");
    let (purged, snapshot) =
        raft_core::testing::stored_purge_and_snapshot(&dir).await.expect("read the stored state");
    assert!(
        purged <= snapshot,
        "the log on disk is purged to {purged:?}, past the stored snapshot ({snapshot:?})"
    );

    set_restore(RestoreMode::Restore);
    let restarted = cluster.start_node(follower).await;
    cluster.nodes[follower] = Some(restarted);
    cluster.wait_applied(follower, 105).await;
    assert_eq!(cluster.applied(follower), cluster.applied(leader));
    cluster.shutdown().await;
}

/// A snapshot is received into memory, and openraft writes each chunk at
/// the offset the sender gives. A tagged peer that sent a chunk at offset 0
/// and then one at 2^40 made the node allocate a terabyte and abort. Chunks
/// reaching past `network.max_snapshot_bytes` are refused, saying why, and
/// the node stays up (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_past_the_size_limit_is_refused_and_the_node_stays_up() {
    let net = MemNetwork::new();
    let mut config = fast_config();
    config.network.max_snapshot_bytes = 1 << 20;
    let limit = config.network.max_snapshot_bytes;
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), config).await;
    form(&[&a]).await;
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads");
    let cluster_id = a.cluster_id().expect("a cluster id");
    let term = a.metrics().term;

    // node-9, tagged, says hello in its own name and acts as a leader.
    let mut stream =
        net.node(ip(9)).dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.expect("dial");
    frame::write(&mut stream, &frame::encode(0, &hello_from(9, a.id(), cluster_id)))
        .await
        .expect("hello");
    let welcome = frame::read(&mut stream, 1 << 20).await.expect("read").expect("an answer");
    assert!(matches!(welcome.message, Message::Welcome), "{:?}", welcome.message);
    let mine: NodeId = raft_core::node_id("node-9", 1);
    let chunk = |offset: u64| {
        Message::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(term + 1, mine),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(term + 1, mine), 1000)),
                last_membership: StoredMembership::default(),
                snapshot_id: "hostile".to_owned(),
            },
            offset,
            data: vec![7u8; 16],
            done: false,
        })
    };
    let mut request_id = 0;
    let mut send = async |message: Message| {
        request_id += 1;
        frame::write(&mut stream, &frame::encode(request_id, &message)).await.expect("write");
        let answer = tokio::time::timeout(WAIT, frame::read(&mut stream, 1 << 20))
            .await
            .expect("an answer in time")
            .expect("read");
        answer.expect("an answer, not the end of the connection").message
    };

    // The first chunk is taken.
    let first = send(chunk(0)).await;
    assert!(matches!(first, Message::InstallSnapshotResult(Ok(_))), "{first:?}");
    // Chunks reaching past the limit, however far, are refused.
    for offset in [1u64 << 40, limit - 8, u64::MAX - 4] {
        match send(chunk(offset)).await {
            Message::Refused(why) => {
                assert!(why.contains("network.max_snapshot_bytes"), "{why}")
            }
            other => panic!("a chunk at offset {offset} was not refused: {other:?}"),
        }
    }
    // One ending at the limit is taken.
    let last = send(chunk(limit - 16)).await;
    assert!(matches!(last, Message::InstallSnapshotResult(Ok(_))), "{last:?}");

    // The node is up: it leads its one-node cluster again and commits.
    assert_eq!(a.fatal(), None);
    a.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("a leads again");
    a.register_session().await.expect("a commits");
    a.shutdown().await;
}
