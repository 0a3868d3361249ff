//! A joint configuration left behind: openraft 0.9 leaves the joint
//! configuration for the final one in the future of the `change_membership`
//! call that entered it, so a leader lost between the two steps leaves the
//! cluster joint for good. A later membership change through `RaftNode`
//! must finish it and end in a uniform configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use raft_core::testing::TypeConfig;
use raft_core::testing::frame::{self, Message};
use raft_core::{NodeId, NodeInfo, RaftNode};
use test_support::eventually;
use test_support::raft_cluster::*;
use ts_transport::{MemNetwork, Transport as _};

/// Sends one AppendEntries to node `i` as incarnation 1 of node-9 (a
/// tagged node that plays a leader on the wire); returns the answer.
async fn append_as_player(
    net: &MemNetwork,
    node: &RaftNode<Recorder>,
    i: usize,
    request: AppendEntriesRequest<TypeConfig>,
) -> Message {
    let mut stream = net.node(ip(9)).dial(ip(i), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    let hello = hello_from(9, node.id(), node.cluster_id().unwrap());
    frame::write(&mut stream, &frame::encode(0, &hello)).await.unwrap();
    let welcome = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(welcome.message, Message::Welcome), "{:?}", welcome.message);
    frame::write(&mut stream, &frame::encode(1, &Message::AppendEntries(request))).await.unwrap();
    frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer").message
}

/// Voters {0, 1, 2} and learner 3. A leader of a later term (played on the
/// wire, then silent, as a leader that died between the two steps of a
/// replacement of 2 by 3) commits the joint configuration
/// {0, 1, 2} + {0, 1, 3} and never the final one. The nodes elect a new
/// leader in the joint configuration; replacing 2 by 3 through
/// `RaftNode::replace` then succeeds and leaves {0, 1, 3} alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_finishes_a_joint_configuration_left_behind() {
    let net = MemNetwork::new();
    let cluster = Cluster::new(4, Net::Mem(net.clone()), false, fast_config()).await;
    form(&[cluster.node(0), cluster.node(1), cluster.node(2)]).await;
    let cluster_id = cluster.node(0).cluster_id().unwrap();
    cluster.node(3).set_cluster_id(cluster_id).await.unwrap();
    let leader = cluster.leader(&[0, 1, 2]).await;
    let ids: Vec<NodeId> = (0..4).map(|i| cluster.node(i).id()).collect();
    cluster
        .node(leader)
        .add_learner(ids[3], cluster.info(3), WAIT)
        .await
        .expect("the learner is added");
    let client = cluster.register(leader).await;
    cluster.propose(leader, client, 1, b"before").await.expect("committed");
    for i in 0..4 {
        cluster.wait_applied(i, 1).await;
    }
    // Every node holds the leader's log, up to the same last entry.
    let m = cluster.node(leader).metrics();
    let (term, last) = (m.term, m.last_log_index.expect("a log"));
    for i in 0..4 {
        cluster
            .node(i)
            .wait_for(WAIT, |n| n.last_log_index == Some(last) && n.last_applied == Some(last))
            .await
            .expect("the log is everywhere");
    }

    // The player: leader of the next term, with the joint entry.
    let player = raft_core::node_id(&owner(ip(9)), 1);
    let nodes: BTreeMap<NodeId, NodeInfo> = (0..4).map(|i| (ids[i], cluster.info(i))).collect();
    let joint = Membership::new(
        vec![BTreeSet::from([ids[0], ids[1], ids[2]]), BTreeSet::from([ids[0], ids[1], ids[3]])],
        nodes,
    );
    let prev = LogId::new(CommittedLeaderId::new(term, ids[leader]), last);
    let entry_id = LogId::new(CommittedLeaderId::new(term + 1, player), last + 1);
    let request = || AppendEntriesRequest {
        vote: Vote::new_committed(term + 1, player),
        prev_log_id: Some(prev),
        entries: vec![Entry::<TypeConfig> {
            log_id: entry_id,
            payload: EntryPayload::Membership(joint.clone()),
        }],
        leader_commit: Some(entry_id),
    };
    for i in 0..4 {
        let answer = append_as_player(&net, cluster.node(i), i, request()).await;
        assert!(
            matches!(answer, Message::AppendEntriesResult(Ok(ref r)) if r.is_success()),
            "node {i}: {answer:?}"
        );
    }
    // The player falls silent. The nodes elect a leader of the joint
    // configuration, which commits it and is left joint.
    let all = [0, 1, 2, 3];
    let leader = cluster.leader(&all).await;
    let voters: BTreeSet<NodeId> = ids.iter().copied().collect();
    cluster
        .node(leader)
        .wait_for(WAIT, |n| n.voters == voters && n.last_applied > Some(last))
        .await
        .expect("the joint configuration is in force");

    // Replace 2 by 3, through our API, on whichever node leads.
    let mut leader = leader;
    eventually(WAIT, "2 replaced by 3 on the leader", async || {
        let replaced = cluster
            .node(leader)
            .replace(&BTreeSet::from([ids[2]]), ids[3], cluster.info(3), Duration::from_secs(10))
            .await;
        match replaced {
            Ok(()) => Ok(()),
            Err(err @ raft_core::MembershipError::NotLeader { .. }) => {
                leader = cluster.leader(&all).await;
                Err(err)
            }
            Err(err) => panic!("replacing 2 by 3 after a joint configuration failed: {err}"),
        }
    })
    .await;
    let uniform = BTreeSet::from([ids[0], ids[1], ids[3]]);
    let m = cluster.node(leader).metrics();
    assert_eq!(m.voters, uniform, "the configuration is not uniform {{0, 1, 3}}: {m:?}");
    assert!(!m.nodes.contains_key(&ids[2]), "node 2 is still a member: {m:?}");
    // And the cluster still commits.
    let after = cluster.register(leader).await;
    cluster.propose(leader, after, 1, b"after").await.expect("committed after the change");
    cluster.shutdown().await;
}
