//! Installing a snapshot from a leader: a follower that fails (or
//! crashes) half way through must start again from its disk.

mod common;

use common::*;
use raft_core::{ClientId, Outcome};
use test_support::eventually;
use ts_transport::MemNetwork;

async fn commit_n(cluster: &Cluster, leader: usize, session: ClientId, from: u64, count: u64) {
    for seq in from..from + count {
        let outcome =
            cluster.propose(leader, session, seq, format!("{session}:{seq}").as_bytes()).await;
        assert!(matches!(outcome, Ok(Outcome::Applied(_))), "proposal {seq} gave {outcome:?}");
    }
}

/// openraft purges a follower's log up to an incoming snapshot when it
/// queues the install, not after it. Here the follower's restore stalls,
/// then fails, as a crash before the snapshot reaches the disk would leave
/// it: the old snapshot and the log must still fit together, and the node
/// must start from them and catch up. On the old code the log was purged
/// past the stored snapshot and the node could not start (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_snapshot_install_fails_half_way_starts_again_and_catches_up() {
    let net = MemNetwork::new();
    let mut config = fast_config();
    config.snapshot_every = 20;
    config.keep_after_snapshot = 5;
    config.purge_batch = 1;
    let mut cluster = Cluster::new(3, Net::Mem(net.clone()), true, config).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let session = cluster.register(leader).await;
    let follower = (leader + 1) % 3;
    commit_n(&cluster, leader, session, 1, 5).await;
    cluster.wait_applied(follower, 5).await;

    // The follower falls behind what the leader keeps in its log.
    net.isolate(ip(follower));
    commit_n(&cluster, leader, session, 6, 100).await;
    cluster
        .node(leader)
        .wait_for(WAIT, |m| {
            m.snapshot.is_some_and(|s| s >= 60) && m.purged.is_some_and(|p| p >= 50)
        })
        .await
        .expect("leader built a snapshot and purged the log behind it");

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

