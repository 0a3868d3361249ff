//! What a caller hears when the cluster lost its quorum: a linearizable
//! read on a leader whose voters are gone says that it has no quorum,
//! within the call's deadline, not that the node is stopped; and what a
//! wait that runs out says.

use std::time::Duration;

use consensus::{Consistency, Error};
use test_support::cluster::{MemCluster, Tailnet};
use test_support::fast_config;
use test_support::tally::{Tally, add};
use tokio::time::Instant;

/// Three nodes whose calls have `deadline`.
async fn three_with_deadline(deadline: Duration) -> MemCluster<Tally> {
    MemCluster::start(Tailnet::of(3), |_| {
        let mut config = fast_config();
        config.timing.call_deadline = deadline;
        config
    })
    .await
}

/// Before: `ReadError::QuorumNotReached` became `RpcError::Unavailable`,
/// which the facade reported as `Error::Stopped`, though the node runs.
#[tokio::test(start_paused = true)]
async fn a_linearizable_read_without_a_quorum_says_so_within_its_deadline() {
    let deadline = Duration::from_secs(3);
    let mut cluster = three_with_deadline(deadline).await;
    let leader = cluster.leader();
    cluster.node(leader).execute(add("before", 1)).await.expect("a write with a quorum");
    cluster.node(leader).read((), Consistency::Linearizable).await.expect("a read with a quorum");

    // The other two voters stop: the leader runs on alone.
    for i in (0..3).filter(|&i| i != leader) {
        cluster.stop(i).await;
    }
    let survivor = cluster.node(leader);

    let started = Instant::now();
    let err = survivor.read((), Consistency::Linearizable).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("quorum"), "{err}");
    assert!(matches!(err, Error::QuorumUnavailable(_)), "a read without a quorum gave {err:?}");
    // Within its deadline (and some slack for a loaded machine).
    assert!(took < deadline + Duration::from_secs(2), "answered after {took:?}");
    // The node itself still runs: a local read is answered.
    let (total, _) = survivor.read((), Consistency::Local).await.expect("a local read");
    assert_eq!(total, 1);
    cluster.shutdown().await;
}

/// Before: a membership change that met another one still in progress
/// until its deadline became `RpcError::Unavailable`, which the facade
/// reported as `Error::Stopped`, though the node runs. Only a node shutting
/// down is stopped.
#[tokio::test(start_paused = true)]
async fn a_removal_that_meets_another_change_in_progress_does_not_say_stopped() {
    let deadline = Duration::from_secs(2);
    let cluster = three_with_deadline(deadline).await;
    let leader = cluster.leader();
    // Cut off, the leader keeps its role (openraft 0.9) and appends its own
    // removal, which it cannot commit.
    cluster.net.isolate(cluster.ip(leader));
    let me = cluster.node(leader).id();
    let first = cluster.node(leader).remove_member(me).await.unwrap_err();
    assert!(!matches!(first, Error::Stopped), "{first:?}");
    // The next change meets that one, uncommitted, until its deadline.
    let started = Instant::now();
    let second = cluster.node(leader).remove_member(me).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&second, Error::Unavailable(why) if why.contains("in progress")),
        "a change that met another in progress gave {second:?}"
    );
    assert!(took < deadline + Duration::from_secs(2), "answered after {took:?}");
    cluster.net.heal_all();
    cluster.shutdown().await;
}

/// Before: a `wait_for` whose condition never held said "no outcome within
/// the deadline; the command may still be applied", though no command was
/// involved. Now it says that it was the wait, and how long it waited.
#[tokio::test(start_paused = true)]
async fn a_wait_that_runs_out_says_it_was_a_wait_not_a_command() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| fast_config()).await;
    let waited = Duration::from_secs(2);
    let err = cluster.node(0).wait_for(waited, |m| m.voters == 7).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wait_for") && text.contains(&format!("{waited:?}")), "{text}");
    assert!(!text.contains("command"), "{text}");
    cluster.shutdown().await;
}

/// Issue 12: without a quorum, the session an operation registers for its
/// command (an entry of its own) cannot commit. The caller heard
/// `Error::Timeout`, "the command may still be applied", of a command that
/// was never proposed; it hears `Error::NotApplied`.
#[tokio::test(start_paused = true)]
async fn a_command_whose_session_could_not_be_registered_was_not_applied() {
    let deadline = Duration::from_secs(3);
    let mut cluster = three_with_deadline(deadline).await;
    let leader = cluster.leader();
    // The other two voters stop: the leader runs on alone, with no
    // session in its pool (nothing was executed through it).
    for i in (0..3).filter(|&i| i != leader) {
        cluster.stop(i).await;
    }
    let err = cluster.node(leader).execute(add("never", 1)).await.unwrap_err();
    assert!(matches!(err, Error::NotApplied(_)), "{err:?}");
    assert!(!err.to_string().contains("may still be applied"), "{err}");
    cluster.shutdown().await;
}
