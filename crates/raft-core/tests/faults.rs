//! Storage faults and fatal errors: a leader whose fsync fails stops and
//! acknowledges nothing more while the others carry on; a panic inside
//! raft's core is reported and closes the raft port; a slow disk slows
//! commits.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::testing::frame::{self, Message};
use raft_core::{ClientId, ClusterId, NodeId, Outcome, ProposeError, Role};
use test_support::raft_cluster::*;
use test_support::{eventually, eventually_every};
use ts_transport::{MemNetwork, Transport as _};

fn command(client: ClientId, seq: u64) -> Vec<u8> {
    format!("{}:{seq}", client.0).into_bytes()
}

/// Proposes (client, seq) until some node answers it, trying the node
/// `prefer` first and then whichever node leads.
async fn propose_until_answered(
    cluster: &Cluster,
    among: &[usize],
    prefer: usize,
    client: ClientId,
    seq: u64,
) -> Outcome {
    let mut target = prefer;
    let what = format!("({client}, {seq}) answered");
    eventually_every(WAIT, Duration::from_millis(50), what, async || {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            cluster.node(target).propose(client, seq, command(client, seq)),
        )
        .await;
        match attempt {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => {
                target = cluster.leader(among).await;
                Err(err.to_string())
            }
            Err(_) => {
                target = cluster.leader(among).await;
                Err("no answer within 3s".to_owned())
            }
        }
    })
    .await
}

/// Whether a raft connection to node `i` is still served.
async fn raft_port_answers(
    net: &MemNetwork,
    i: usize,
    cluster_name: &str,
    to: NodeId,
    cluster_id: ClusterId,
) -> bool {
    let Ok(mut stream) = net.node(ip(9)).dial(ip(i), RAFT_PORT, Duration::from_secs(1)).await
    else {
        return false;
    };
    let hello =
        Message::hello(cluster_name, cluster_id, &owner(ip(9)), 1, to, fast_config().sessions);
    if frame::write(&mut stream, &frame::encode(0, &hello)).await.is_err() {
        return false;
    }
    let answer = tokio::time::timeout(Duration::from_secs(2), frame::read(&mut stream, 1 << 20));
    matches!(answer.await, Ok(Ok(Some(frame))) if matches!(frame.message, Message::Welcome))
}

/// The leader's next fsync fails while clients write. No client sees a
/// success that is not on a quorum; the leader stops and says why; the
/// others elect a leader and go on; every acknowledged write survives, once,
/// on every node, the failed one included after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_stops_and_the_others_carry_on() {
    const WRITERS: usize = 4;
    let net = MemNetwork::new();
    let cluster = Cluster::with_faults(3, Net::Mem(net.clone()), true, fast_config()).await;
    cluster.initialize().await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(cluster.register(leader).await);
    }
    let cluster = Arc::new(cluster);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    // Each writer writes through the leader until a write fails; it
    // returns the write whose outcome it does not know.
    let writers: Vec<_> = clients
        .iter()
        .map(|&client| {
            let cluster = cluster.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for seq in 1.. {
                    match cluster.node(leader).propose(client, seq, command(client, seq)).await {
                        Ok(Outcome::Applied(_)) => {
                            acknowledged.lock().unwrap().insert((client, seq));
                        }
                        Ok(other) => panic!("({client}, {seq}) answered {other:?}"),
                        Err(ProposeError::Fatal(_) | ProposeError::Timeout(_)) => return seq,
                        Err(err) => panic!("({client}, {seq}) failed with {err}"),
                    }
                }
                unreachable!("writers stop at their first error")
            })
        })
        .collect();
    eventually(WAIT, "the writers' progress", async || acknowledged.lock().unwrap().len() >= 20)
        .await;
    // The next write's fsync fails, in the middle of the writes.
    cluster.faults.as_ref().unwrap()[leader].fail_next_fsync();
    let mut unknown = Vec::new();
    for (writer, &client) in writers.into_iter().zip(&clients) {
        unknown.push((client, writer.await.expect("writer")));
    }
    let stopped = cluster
        .node(leader)
        .wait_for(WAIT, |m| m.fatal.is_some())
        .await
        .expect("the leader reports a fatal error");
    let why = stopped.fatal.clone().unwrap();
    assert!(why.contains("fsync failed"), "{why}");
    assert_eq!(stopped.role, Role::Shutdown);
    assert_eq!(cluster.node(leader).fatal().as_deref(), Some(why.as_str()));
    // It acknowledges nothing more, and its raft port is closed.
    let (client, seq) = unknown[0];
    let after = cluster.node(leader).propose(client, seq + 1, command(client, seq + 1)).await;
    assert!(matches!(after, Err(ProposeError::Fatal(_))), "{after:?}");
    let name = cluster.config.network.cluster.clone();
    let (id, cluster_id) = (cluster.ids[leader], cluster.node(leader).cluster_id().unwrap());
    assert!(
        !raft_port_answers(&net, leader, &name, id, cluster_id).await,
        "a stopped node serves raft"
    );

    // The others elect a leader; each unknown write is retried there and
    // answered once.
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster.leader(&rest).await;
    for &(client, seq) in &unknown {
        let outcome = propose_until_answered(&cluster, &rest, new_leader, client, seq).await;
        assert!(
            matches!(outcome, Outcome::Applied(_) | Outcome::Duplicate(_)),
            "({client}, {seq}) {outcome:?}"
        );
        acknowledged.lock().unwrap().insert((client, seq));
    }
    let acknowledged: BTreeSet<Vec<u8>> =
        acknowledged.lock().unwrap().iter().map(|&(c, seq)| command(c, seq)).collect();
    let check = |cluster: &Cluster, i: usize| {
        let applied = cluster.applied(i);
        let distinct: BTreeSet<Vec<u8>> = applied.iter().cloned().collect();
        assert_eq!(distinct.len(), applied.len(), "node {i} applied a write twice");
        assert_eq!(distinct, acknowledged, "node {i}: exactly the acknowledged writes");
    };
    for &i in &rest {
        cluster.wait_applied(i, acknowledged.len()).await;
        check(&cluster, i);
    }
    // The failed node restarts from its disk (faults off) and catches up.
    let Ok(mut cluster) = Arc::try_unwrap(cluster) else { panic!("cluster still shared") };
    cluster.stop(leader).await;
    cluster.faults.as_ref().unwrap()[leader].clear();
    let restarted = cluster.start_node(leader).await;
    cluster.nodes[leader] = Some(restarted);
    cluster.wait_applied(leader, acknowledged.len()).await;
    check(&cluster, leader);
    cluster.shutdown().await;
}

/// A panic inside raft's core task (here: in a log write, which the core
/// runs itself with memory storage) ends the core without a word in
/// openraft's metrics. The node must still report it, refuse proposals and
/// close its raft port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_raft_core_is_reported_and_stops_the_node() {
    let net = MemNetwork::new();
    let cluster = Cluster::with_faults(1, Net::Mem(net.clone()), false, fast_config()).await;
    cluster.initialize().await;
    cluster.leader(&[0]).await;
    let client = cluster.register(0).await;
    cluster.propose(0, client, 1, b"before").await.unwrap();
    let mut watched = cluster.node(0).subscribe();
    let mut watched_leadership = cluster.node(0).subscribe_leadership();
    cluster.faults.as_ref().unwrap()[0].panic_next_write();
    let outcome = cluster.propose(0, client, 2, b"boom").await;
    assert!(outcome.is_err(), "{outcome:?}");
    let stopped = cluster
        .node(0)
        .wait_for(WAIT, |m| m.fatal.is_some())
        .await
        .expect("the node reports that its raft core died");
    let why = stopped.fatal.unwrap();
    assert!(why.contains("raft core stopped unexpectedly") && why.contains("panicked"), "{why}");
    assert_eq!(stopped.role, Role::Shutdown);
    assert_eq!(stopped.leader, None);
    // Subscribers hear it too.
    let seen = tokio::time::timeout(WAIT, watched.wait_for(|m| m.fatal.is_some())).await;
    let seen = seen.expect("in time").expect("the watch delivers the fatal error").clone();
    assert_eq!(seen.fatal.as_deref(), Some(why.as_str()));
    let seen = tokio::time::timeout(WAIT, watched_leadership.wait_for(|m| m.fatal.is_some())).await;
    let seen = seen.expect("in time").expect("the leadership watch delivers it").clone();
    assert_eq!(seen.fatal.as_deref(), Some(why.as_str()));
    let waited = cluster.node(0).wait_for_leadership(WAIT, |m| m.fatal.is_some()).await;
    assert_eq!(waited.expect("a wait on leadership sees it").role, Role::Shutdown);
    let after = cluster.propose(0, client, 3, b"after").await;
    assert!(matches!(after, Err(ProposeError::Fatal(_))), "{after:?}");
    let name = cluster.config.network.cluster.clone();
    let (id, cluster_id) = (cluster.ids[0], cluster.node(0).cluster_id().unwrap());
    eventually(WAIT, "the raft port closes", async || {
        !raft_port_answers(&net, 0, &name, id, cluster_id).await
    })
    .await;
    assert_eq!(cluster.applied(0), vec![b"before".to_vec()]);
    cluster.shutdown().await;
}

/// A slow disk delays every commit by at least its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_slows_every_commit() {
    let cluster = Cluster::with_faults(1, Net::Mem(MemNetwork::new()), true, fast_config()).await;
    cluster.initialize().await;
    cluster.leader(&[0]).await;
    let client = cluster.register(0).await;
    let delay = Duration::from_millis(200);
    cluster.faults.as_ref().unwrap()[0].set_delay(delay);
    let started = Instant::now();
    cluster.propose(0, client, 1, b"slow").await.unwrap();
    assert!(started.elapsed() >= delay, "committed in {:?}", started.elapsed());
    cluster.faults.as_ref().unwrap()[0].set_delay(Duration::ZERO);
    cluster.propose(0, client, 2, b"fast").await.unwrap();
    cluster.shutdown().await;
}
