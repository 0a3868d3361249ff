//! Routing a call to the leader: waiting for a leader without starving the
//! runtime, and per-attempt timeouts that let a call in flight when the
//! leader dies reach the new leader long before its deadline.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cmd_rpc::{CommandClient, CommandConfig, Origin, RpcError};
use common::*;
use raft_core::testing::frame::{self, Message};
use raft_core::{ClusterId, NodeInfo, Role};
use test_support::{eventually, eventually_every};
use tokio::time::Instant;
use ts_transport::{Faults, MemNetwork, Transport};

/// A node that follows a leader its configuration does not hold (here a
/// leader played on the wire; in a cluster, during an incarnation change)
/// waits for a leader it can route to, and keeps yielding while it waits:
/// other tasks on its runtime run.
#[tokio::test(flavor = "current_thread")]
async fn waiting_for_a_leader_outside_the_configuration_does_not_starve_the_runtime() {
    let net = MemNetwork::new();
    let node = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
    let raft = node.service.node().clone();
    let cluster_id = ClusterId::random().unwrap();
    raft.set_cluster_id(cluster_id).await.unwrap();
    // Play a leader of term 1 (incarnation 1 of node-9), which no
    // configuration here knows.
    let mut stream = net.node(ip(9)).dial(ip(0), RAFT_PORT, Duration::from_secs(1)).await.unwrap();
    let hello = Message::hello(
        &fast_raft().network.cluster,
        cluster_id,
        &owner(ip(9)),
        1,
        raft.id(),
        fast_raft().sessions,
    );
    let player = raft_core::node_id(&owner(ip(9)), 1);
    frame::write(&mut stream, &frame::encode(0, &hello)).await.unwrap();
    let welcome = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(welcome.message, Message::Welcome), "{:?}", welcome.message);
    frame::write(&mut stream, &frame::encode(1, &Message::heartbeat(1, player))).await.unwrap();
    let answer = frame::read(&mut stream, 1 << 20).await.unwrap().expect("an answer");
    assert!(matches!(answer.message, Message::AppendEntriesResult(Ok(_))), "{:?}", answer.message);
    raft.wait_for(WAIT, |m| m.leader == Some(player))
        .await
        .expect("the node follows the played leader");
    assert!(raft.metrics().nodes.is_empty());

    // Another task on the same (single-threaded) runtime counts its turns.
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let err = node
        .service
        .execute(&put(1, 1, "k"), Instant::now() + Duration::from_secs(1), Origin::Client)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    let turns = ticks.load(Ordering::Relaxed);
    ticker.abort();
    assert!(waited >= Duration::from_secs(1), "gave up after {waited:?}: {err}");
    // 100 turns in a second if the call yields; none if it spins.
    assert!(turns >= 20, "other tasks ran {turns} times in {waited:?}: the call spun");
    // It waited for a leader it can route to (a timeout that says so, not
    // `unavailable`, which reads as this node stopping).
    assert!(err.to_string().contains("is not in its configuration yet"), "{err}");
    drop(stream);
    stop_node(node).await;
}

async fn leader_of(nodes: &[Node]) -> usize {
    eventually(WAIT, "a leader", async || {
        nodes.iter().position(|n| n.service.node().metrics().role == Role::Leader)
    })
    .await
}

/// The leader vanishes the way a process killed behind tsnet does: its
/// connections go silent (nothing resets them) and dials to it hang. A put
/// sent through a follower while that happens is answered by the new
/// leader soon after the failover, not at the call's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_the_leader_vanishes_completes_soon_after_the_failover() {
    let net = MemNetwork::new();
    let faults: Vec<Faults> = (0..3).map(|i| Faults::new(40 + i)).collect();
    let mut nodes = Vec::new();
    for (i, faults) in faults.iter().enumerate() {
        let transport: Arc<dyn Transport> = Arc::new(faults.wrap(Arc::new(net.node(ip(i)))));
        nodes.push(start_node(transport, i, fast_raft()).await);
    }
    form(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let leader = leader_of(&nodes).await;
    let follower = (leader + 1) % 3;
    let service = nodes[follower].service.clone();
    let session = service.register(Instant::now() + WAIT, Origin::Client).await.expect("a session");
    let client = u128::from_str_radix(&session.client, 16).unwrap();
    // A warm, pooled connection from the follower to the leader.
    service.execute(&put(client, 1, "warm"), Instant::now() + WAIT, Origin::Client).await.unwrap();
    for node in &nodes {
        node.service.node().wait_for(WAIT, |m| m.last_applied >= Some(3)).await.unwrap();
    }

    // The leader vanishes: every other node's connections with it go silent.
    for (i, f) in faults.iter().enumerate() {
        if i == leader {
            for j in (0..3).filter(|&j| j != leader) {
                f.black_hole(ip(j));
            }
        } else {
            f.black_hole(ip(leader));
        }
    }
    let vanished = Instant::now();
    let call = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .execute(
                    &put(client, 2, "in-flight"),
                    Instant::now() + Duration::from_secs(30),
                    Origin::Client,
                )
                .await
        }
    });
    // The survivors elect a new leader.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    eventually_every(WAIT, Duration::from_millis(10), "a new leader", async || {
        survivors.iter().any(|&i| nodes[i].service.node().metrics().role == Role::Leader)
    })
    .await;
    let failover = vanished.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ends within its deadline")
        .unwrap();
    let took = vanished.elapsed();
    let answer = answer.expect("the put is applied by the new leader");
    eprintln!("failover {failover:?}, the put answered {took:?} after the leader vanished");
    assert!(!answer.duplicate);
    // Within about twice the failover (plus slack for a loaded machine).
    let bound = failover * 2 + Duration::from_secs(2);
    assert!(
        took <= bound,
        "the put took {took:?} after the leader vanished; the failover took {failover:?}"
    );
    for node in nodes {
        stop_node(node).await;
    }
}

/// A peer's first address hangs (a dead path: dials vanish); its second
/// works. The call reaches the second address after the first one's
/// connect budget, not at its deadline. In paused time: the budget passes
/// on tokio's clock.
#[tokio::test(start_paused = true)]
async fn an_address_that_hangs_leaves_time_for_the_next() {
    let net = MemNetwork::new();
    let dead = ip(5);
    let live = IpAddr::V6(std::net::Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 1));
    net.node(dead);
    net.set_drop_new(dead, true);
    let node = start_node(Arc::new(net.node(live)), 0, fast_raft()).await;
    let client = CommandClient::new(Arc::new(net.node(ip(9))), CommandConfig::default());
    let target = NodeInfo { addrs: vec![dead, live], ..info(0) };
    let started = Instant::now();
    let answer: Result<serde_json::Value, RpcError> =
        client.get(&target, "/v1/cluster", Instant::now() + Duration::from_secs(20)).await;
    let took = started.elapsed();
    let answer = answer.expect("the second address answers");
    assert_eq!(answer["node"], node.service.node().id());
    let budget = CommandConfig::default().connect_timeout;
    assert!(took >= budget && took < budget + Duration::from_secs(2), "took {took:?}");
    stop_node(node).await;
}
