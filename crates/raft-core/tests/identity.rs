//! Node identities and cluster ids (decision 0003): raft ids from a stable
//! id and an incarnation, the identity record in storage, raft connections
//! bound to a cluster id, and the replacement of a stale incarnation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::testing::frame::{self, Message};
use raft_core::{ClusterId, MembershipError, NodeId, Outcome, RaftNode, Role, StartError, Storage};
use test_support::eventually;
use test_support::raft_cluster::*;
use ts_transport::{MemNetwork, Transport as _};

async fn hello(net: &MemNetwork, node: &RaftNode<Recorder>, cluster_id: ClusterId) -> Message {
    let mut stream = net.node(ip(9)).dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    let hello = hello_from(9, node.id(), cluster_id);
    frame::write(&mut stream, &frame::encode(0, &hello)).await.unwrap();
    frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer").message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cluster_id_refuses_raft_connections_and_another_cluster_is_refused() {
    let net = MemNetwork::new();
    let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
    let ours = ClusterId::random().unwrap();
    match hello(&net, &node, ours).await {
        Message::Refused(why) => assert!(why.contains("not joined a cluster"), "{why}"),
        other => panic!("an uninitialized node accepted a raft connection: {other:?}"),
    }
    node.set_cluster_id(ours).await.unwrap();
    let theirs = ClusterId(ours.0 ^ 1);
    match hello(&net, &node, theirs).await {
        Message::Refused(why) => {
            assert!(why.contains(&ours.to_string()) && why.contains(&theirs.to_string()), "{why}")
        }
        other => panic!("a hello of another cluster was accepted: {other:?}"),
    }
    assert!(matches!(hello(&net, &node, ours).await, Message::Welcome));
    // While it has no raft state, the node may still change its mind.
    node.set_cluster_id(theirs).await.unwrap();
    assert!(matches!(hello(&net, &node, ours).await, Message::Refused(_)));
    assert_eq!(node.metrics().term, 0, "a refused peer reached raft");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_of_two_clusters_never_reach_each_other() {
    let net = MemNetwork::new();
    let config = fast_config();
    let a = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), config.clone()).await;
    let b = start_alone(1, Arc::new(net.node(ip(1))), allow_all(), config).await;
    form(&[&a]).await;
    form(&[&b]).await;
    assert_ne!(a.cluster_id(), b.cluster_id());
    for node in [&a, &b] {
        node.wait_for(WAIT, |m| m.role == Role::Leader).await.unwrap();
        let client = node.register_session().await.unwrap();
        let outcome = node.propose(client, 1, b"mine".to_vec()).await.unwrap();
        assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    }
    // a's leader tries to take b in: b refuses a's connections.
    let added = a.add_learner(b.id(), b.info().clone(), Duration::from_secs(2)).await;
    assert!(added.is_err(), "a leader replicated to the leader of another cluster");
    assert_eq!(b.read_local(|r| r.applied.clone()), vec![b"mine".to_vec()]);
    assert_eq!(b.metrics().role, Role::Leader);
    assert!(b.metrics().fatal.is_none());
    // And a cluster's id never changes once it has raft state.
    let err = b.set_cluster_id(a.cluster_id().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("cannot join"), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

async fn start_durable(
    net: &MemNetwork,
    dir: &std::path::Path,
    stable_id: &str,
) -> Result<RaftNode<Recorder>, StartError> {
    let info = raft_core::NodeInfo { stable_id: stable_id.to_owned(), ..node_info(0, ip(0)) };
    RaftNode::start(
        info,
        Arc::new(net.node(ip(0))),
        Storage::Durable(dir.to_owned()),
        Recorder::default(),
        allow_all(),
        fast_config(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_storage_keeps_the_identity_and_memory_storage_draws_a_new_one() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    let (id, incarnation) = (node.id(), node.incarnation());
    assert_eq!(id, raft_core::node_id("node-0", incarnation));
    form(&[&node]).await;
    let cluster_id = node.cluster_id().expect("a cluster id after forming");
    node.shutdown().await;
    drop(node);
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!((node.id(), node.incarnation()), (id, incarnation));
    assert_eq!(node.cluster_id(), Some(cluster_id));
    node.shutdown().await;
    drop(node);
    let ids: BTreeSet<NodeId> = {
        let mut ids = BTreeSet::new();
        for _ in 0..3 {
            let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
            assert_eq!(node.cluster_id(), None);
            ids.insert(node.id());
            node.shutdown().await;
        }
        ids
    };
    assert_eq!(ids.len(), 3, "memory storage reused an incarnation: {ids:?}");
}

/// A node bound to a cluster being formed keeps the cluster id and its
/// former across a restart, binds again to the same cluster only (a former
/// back under a new incarnation), and not at all once it has raft state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_survives_a_restart_and_is_never_to_another_cluster() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!(node.former(), None);
    let cluster = ClusterId::random().unwrap();
    let former = raft_core::NodeInfo { stable_id: "f".to_owned(), ..node_info(1, ip(1)) };
    node.bind(cluster, 11, former.clone()).await.unwrap();
    assert_eq!(node.cluster_id(), Some(cluster));
    assert_eq!(node.former(), Some((11, former.clone())));
    // The former came back under a new incarnation: recorded anew.
    node.bind(cluster, 12, former.clone()).await.unwrap();
    let other = ClusterId(cluster.0 ^ 1);
    let err = node.bind(other, 13, former.clone()).await.unwrap_err();
    assert!(err.to_string().contains("bound to cluster"), "{err}");
    node.shutdown().await;
    drop(node);
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!(node.cluster_id(), Some(cluster));
    assert_eq!(node.former(), Some((12, former.clone())), "the binding was lost in a restart");
    // A binder never initializes its cluster itself (finding 38).
    let members = BTreeMap::from([(node.id(), node.info().clone())]);
    let err = node.initialize_in(cluster, members.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == cluster), "{err}");
    // Nor once it gave the binding up (no cluster id stored): it did not
    // draw that id. Before the fix it initialized it as a plain node.
    node.unbind(cluster, 12).await.unwrap();
    let err = node.initialize_in(cluster, members.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == cluster), "{err}");
    assert!(!node.is_initialized().await);
    assert_eq!(node.cluster_id(), None, "the refused initialization stored the cluster id");
    // Once the node has raft state (a cluster of its own), no more binding.
    assert!(node.initialize(members).await.unwrap());
    let own = node.cluster_id().unwrap();
    let err = node.bind(own, 14, former).await.unwrap_err();
    assert!(err.to_string().contains("has raft state"), "{err}");
    node.shutdown().await;
}

/// A node that gave its binding up and later decides to join the same
/// cluster id (through a leader, with no former) names no former after a
/// restart: `unbind` clears the binding record, not only the identity's
/// cluster id. Before the fix the old binding was read back (it belongs
/// to the cluster id stored again), and the node named that former.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_node_reads_back_no_binding_after_a_restart() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    let cluster = ClusterId::random().unwrap();
    let former = raft_core::NodeInfo { stable_id: "f".to_owned(), ..node_info(1, ip(1)) };
    node.bind(cluster, 11, former.clone()).await.unwrap();
    node.unbind(cluster, 11).await.unwrap();
    assert_eq!((node.cluster_id(), node.former()), (None, None));
    // It decides to join that cluster through a leader a peer named.
    node.set_cluster_id(cluster).await.unwrap();
    assert_eq!(node.former(), None);
    node.shutdown().await;
    drop(node);
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!(node.cluster_id(), Some(cluster));
    assert_eq!(node.former(), None, "the binding given up came back after a restart");
    assert_eq!(node.sealed_to(), None);
    // Free to bind to that cluster's (new) former again, and to seal.
    node.bind(cluster, 12, former.clone()).await.unwrap();
    node.seal(cluster, 12, former.clone()).await.unwrap();
    assert_eq!(node.sealed_to(), Some(12));
    node.shutdown().await;
}

/// docs/reliability.md finding 38: a node initializes only a cluster id
/// this incarnation drew. A former that restarts with its state (the same
/// incarnation) takes its own formation up again; one wiped (a new
/// incarnation, the same stable id and address) can neither bind itself
/// to the id its earlier incarnation drew nor initialize it, even bound to
/// it as a binder would be. Before the fix a new incarnation bound itself
/// to that id and initialized it a second time, with other voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_incarnation_that_drew_a_cluster_id_forms_and_initializes_it() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    let (first, info) = (node.id(), node.info().clone());
    // Not bound to itself on its own word: only through `form`.
    let elsewhere = ClusterId::random().unwrap();
    let err = node.bind(elsewhere, first, info.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { .. }), "{err}");
    assert_eq!(node.cluster_id(), None);
    let cluster = node.form().await.unwrap();
    assert_eq!((node.cluster_id(), node.former()), (Some(cluster), Some((first, info.clone()))));
    node.shutdown().await;
    drop(node);
    // Restarted with its state: the same incarnation takes it up again.
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!(node.id(), first);
    node.bind(cluster, first, info.clone()).await.unwrap();
    node.shutdown().await;
    drop(node);
    // Wiped: a new incarnation of the same node.
    let wiped = tempfile::tempdir().unwrap();
    let node = start_durable(&net, wiped.path(), "node-0").await.unwrap();
    assert_ne!(node.id(), first);
    let again = node.info().clone();
    let err = node.bind(cluster, node.id(), again.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == cluster), "{err}");
    assert_eq!(node.cluster_id(), None, "the refused binding stored the cluster id");
    // Even bound to that id by its earlier incarnation (as a binder), it
    // does not initialize it.
    node.bind(cluster, first, info).await.unwrap();
    let members = BTreeMap::from([(node.id(), again)]);
    let err = node.initialize_in(cluster, members.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == cluster), "{err}");
    assert!(!node.is_initialized().await);
    // It forms a cluster of its own instead (after giving that up).
    node.unbind(cluster, first).await.unwrap();
    let own = node.form().await.unwrap();
    assert_ne!(own, cluster);
    assert!(node.initialize_in(own, members).await.unwrap());
    node.shutdown().await;
}

/// A node initializes only a cluster id this incarnation drew
/// ([`RaftNode::form`]), whether or not it has a cluster id stored: a
/// fresh node handed an id refuses it, and stores nothing. Before the fix
/// `initialize_in` checked the former only when that id was stored, and a
/// node with none stored the id it was handed and initialized it.
/// `initialize` draws its own id and forms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cluster_id_initializes_none_it_is_handed() {
    let net = MemNetwork::new();
    let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
    let members = BTreeMap::from([(node.id(), node.info().clone())]);
    let handed = ClusterId::random().unwrap();
    let err = node.initialize_in(handed, members.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == handed), "{err}");
    assert!(!node.is_initialized().await);
    assert_eq!((node.cluster_id(), node.former()), (None, None));
    // `initialize` draws an id, forms it and initializes it.
    assert!(node.initialize(members.clone()).await.unwrap());
    let own = node.cluster_id().expect("a cluster id");
    assert_ne!(own, handed);
    assert_eq!(node.former().map(|(id, _)| id), Some(node.id()));
    // Initializing again is harmless, whatever id is given.
    assert!(!node.initialize(members.clone()).await.unwrap());
    assert!(!node.initialize_in(handed, members).await.unwrap());
    assert_eq!(node.cluster_id(), Some(own));
    node.shutdown().await;
}

/// Issue 12: `initialize` forms (draws an id and binds the node to it)
/// before openraft initializes; when openraft then refused (here: the
/// members leave the node out), every retry drew another id and was
/// refused as bound to the first (`Bound`), for good, since the binding is
/// durable. A retry now initializes the id the node formed, also after a
/// restart, and never forms a second one; once initialized, `initialize`
/// does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_initialize_is_retried_under_the_id_it_formed() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    let id = node.id();
    let members = BTreeMap::from([(id, node.info().clone())]);
    let others = BTreeMap::from([(id ^ 1, node_info(1, ip(1)))]);
    let err = node.initialize(others.clone()).await.unwrap_err();
    assert!(matches!(err, MembershipError::Other(_)), "{err}");
    let formed = node.cluster_id().expect("the first attempt formed an id");
    assert_eq!(node.former().map(|(former, _)| former), Some(id));
    assert!(node.initialize(others).await.is_err());
    assert_eq!(node.cluster_id(), Some(formed), "a second id was formed");
    // Retried after a restart, with the members right.
    node.shutdown().await;
    drop(node);
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_eq!((node.id(), node.cluster_id()), (id, Some(formed)));
    assert!(node.initialize(members.clone()).await.expect("the retry initializes"));
    assert!(node.is_initialized().await);
    assert_eq!(node.cluster_id(), Some(formed));
    node.wait_for(WAIT, |m| m.role == Role::Leader).await.expect("it leads its cluster");
    assert!(!node.initialize(members).await.unwrap());
    assert_eq!(node.cluster_id(), Some(formed));
    node.shutdown().await;
}

/// A node bound (or sealed) to a cluster being formed does not take
/// another cluster id through `set_cluster_id`: giving a binding up is
/// `unbind`'s job. Before the fix the id was replaced and the binding
/// silently lost (`former` and `sealed_to` answered `None`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_node_keeps_its_cluster_id_until_it_unbinds() {
    let net = MemNetwork::new();
    let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
    let cluster = ClusterId::random().unwrap();
    let other = ClusterId(cluster.0 ^ 1);
    let former = raft_core::NodeInfo { stable_id: "f".to_owned(), ..node_info(1, ip(1)) };
    node.bind(cluster, 11, former.clone()).await.unwrap();
    let err = node.set_cluster_id(other).await.unwrap_err();
    assert!(
        matches!(err, MembershipError::Bound { current, wanted } if current == cluster && wanted == other),
        "{err}"
    );
    assert_eq!((node.cluster_id(), node.former()), (Some(cluster), Some((11, former.clone()))));
    // The same id again changes nothing.
    node.set_cluster_id(cluster).await.unwrap();
    assert_eq!(node.former(), Some((11, former.clone())));
    node.seal(cluster, 11, former.clone()).await.unwrap();
    let err = node.set_cluster_id(other).await.unwrap_err();
    assert!(matches!(err, MembershipError::Bound { .. }), "{err}");
    assert_eq!((node.cluster_id(), node.sealed_to()), (Some(cluster), Some(11)));
    node.shutdown().await;
    // Unsealed and given up, the node is free to take another id.
    let node = start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await;
    node.bind(cluster, 11, former).await.unwrap();
    node.unbind(cluster, 11).await.unwrap();
    node.set_cluster_id(other).await.unwrap();
    assert_eq!(node.cluster_id(), Some(other));
    node.shutdown().await;
}

/// `initialize_in` checks that the node formed the cluster id under the
/// same exclusive hold of the cluster gate as the initialization, so a
/// binding given up meanwhile is seen. Here an incoming raft request holds
/// the gate while `unbind` and then `initialize_in` wait for it: the
/// binding is given up first, and the initialization is refused. Before
/// the fix `initialize_in` checked before waiting, stored the id again
/// after `unbind` and initialized a cluster id the node had given up.
/// `gate_waiters` counts a waiter only once it is queued for the gate
/// (first come, first served), so `unbind`, counted first, is ahead of
/// `initialize_in` whatever the scheduling (docs/reliability.md 52).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_in_sees_a_binding_given_up_while_it_waited() {
    let net = MemNetwork::new();
    let node =
        Arc::new(start_alone(0, Arc::new(net.node(ip(0))), allow_all(), fast_config()).await);
    let members = BTreeMap::from([(node.id(), node.info().clone())]);
    let cluster = node.form().await.unwrap();
    let request = raft_core::testing::enter_gate(&node).await;
    let unbind = tokio::spawn({
        let node = node.clone();
        async move { node.unbind(cluster, node.id()).await }
    });
    eventually(WAIT, "unbind waits for the gate", async || {
        raft_core::testing::gate_waiters(&node) == 1
    })
    .await;
    let initialize = tokio::spawn({
        let node = node.clone();
        async move { node.initialize_in(cluster, members).await }
    });
    eventually(WAIT, "initialize_in waits for the gate", async || {
        raft_core::testing::gate_waiters(&node) == 2
    })
    .await;
    drop(request);
    unbind.await.unwrap().unwrap();
    let err = initialize.await.unwrap().unwrap_err();
    assert!(matches!(err, MembershipError::NotFormer { cluster: c } if c == cluster), "{err}");
    assert!(!node.is_initialized().await);
    assert_eq!(node.cluster_id(), None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_of_another_stable_id_is_refused() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    node.shutdown().await;
    drop(node);
    let err = match start_durable(&net, dir.path(), "node-1").await {
        Ok(_) => panic!("a node started on another node's state directory"),
        Err(err) => err,
    };
    assert!(matches!(err, StartError::Identity(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("\"node-0\"") && text.contains("\"node-1\""), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_from_before_identities_is_refused_with_advice() {
    use openraft::storage::RaftLogStorage as _;
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    {
        // What an older version left: a vote, no identity record.
        let mut log = raft_core::testing::LogStore::durable(&dir.path().join("raft.redb")).unwrap();
        log.save_vote(&openraft::Vote::new(3, 7)).await.unwrap();
    }
    let err = match start_durable(&net, dir.path(), "node-0").await {
        Ok(_) => panic!("a node started on a state directory without an identity"),
        Err(err) => err,
    };
    let text = err.to_string();
    assert!(matches!(err, StartError::Identity(_)), "{text}");
    assert!(text.contains("before node incarnations") && text.contains("move it away"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_identity_clears_a_leftover_snapshot() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    let old_id = node.id();
    form(&[&node]).await;
    node.wait_for(WAIT, |m| m.role == Role::Leader).await.unwrap();
    let client = node.register_session().await.unwrap();
    for seq in 1..=5 {
        let outcome = node.propose(client, seq, format!("c{seq}").into_bytes()).await.unwrap();
        assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    }
    assert_eq!(node.read_local(|r| r.applied.len()), 5);
    node.snapshot_now(WAIT).await.unwrap();
    node.shutdown().await;
    drop(node);
    assert!(dir.path().join("snapshots").exists(), "no snapshot was written");
    // The log (and with it the identity) is lost; the snapshot is not.
    std::fs::remove_file(dir.path().join("raft.redb")).unwrap();
    let node = start_durable(&net, dir.path(), "node-0").await.unwrap();
    assert_ne!(node.id(), old_id, "a node without its log kept its raft id");
    assert_eq!(node.read_local(|r| r.applied.len()), 0, "an old incarnation's snapshot came back");
    assert_eq!(node.metrics().snapshot, None);
    assert!(!dir.path().join("snapshots").exists(), "the leftover snapshot is still there");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_incarnation_is_swapped_for_the_new_one_in_one_change() {
    let mut cluster = Cluster::new(3, Net::Mem(MemNetwork::new()), false, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let stale = (leader + 1) % 3;
    let client = cluster.register(leader).await;
    let outcome = cluster.propose(leader, client, 1, b"before").await.unwrap();
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    let history: Arc<Mutex<Vec<BTreeSet<NodeId>>>> = Arc::default();
    let mut watch = cluster.node(leader).subscribe();
    let recorder = {
        let history = history.clone();
        tokio::spawn(async move {
            loop {
                let voters = watch.borrow_and_update().voters.clone();
                {
                    let mut history = history.lock().unwrap();
                    if history.last() != Some(&voters) {
                        history.push(voters);
                    }
                }
                if watch.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    // The node restarts without its state (memory storage): a new id.
    let old_id = cluster.ids[stale];
    cluster.stop(stale).await;
    let node = cluster.start_node(stale).await;
    let new_id = node.id();
    assert_ne!(new_id, old_id);
    node.set_cluster_id(cluster.node(leader).cluster_id().unwrap()).await.unwrap();
    cluster.ids[stale] = new_id;
    cluster.nodes[stale] = Some(node);
    let before = cluster.node(leader).metrics().last_log_index.unwrap();
    cluster
        .node(leader)
        .replace(&BTreeSet::from([old_id]), new_id, cluster.info(stale), WAIT)
        .await
        .expect("replaced");
    let metrics = cluster.node(leader).metrics();
    assert!(metrics.voters.contains(&new_id) && !metrics.voters.contains(&old_id), "{metrics:?}");
    assert!(!metrics.nodes.contains_key(&old_id), "the old record is left: {metrics:?}");
    assert_eq!(metrics.voters.len(), 3);
    cluster.wait_applied(stale, 1).await;
    recorder.abort();
    let history = history.lock().unwrap().clone();
    assert!(history.iter().all(|voters| voters.len() >= 3), "voters dropped: {history:?}");
    // One change: the new node as a learner, then the joint configuration
    // and the uniform one, three entries (removing the old one first and
    // adding the new one after would take five). The recorder above may
    // miss the joint configuration: a metrics watch keeps only the latest.
    let appended = metrics.last_log_index.unwrap() - before;
    assert_eq!(appended, 3, "not one joint change: {appended} entries; seen {history:?}");
    let members: BTreeMap<NodeId, bool> =
        metrics.nodes.keys().map(|id| (*id, metrics.voters.contains(id))).collect();
    assert_eq!(members.len(), 3, "{members:?}");
    cluster.shutdown().await;
}
