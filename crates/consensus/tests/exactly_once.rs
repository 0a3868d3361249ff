//! Exactly-once commands through the facade: a prepared operation retried
//! after an unknown outcome, sessions that expire before or after an
//! attempt.

use std::time::Duration;

use consensus::{Consistency, Error, Timing};
use test_support::cluster::{MemCluster, Tailnet, WAIT};
use test_support::eventually;
use test_support::fast_config;
use test_support::tally::{Tally, add};

/// Slow raft timings, so that a few hundred milliseconds of link delay do
/// not disturb elections.
fn patient_config() -> consensus::Config {
    let mut config = fast_config();
    config.timing = Timing {
        heartbeat: Duration::from_millis(1000),
        election: (Duration::from_millis(3000), Duration::from_millis(6000)),
        ..config.timing
    };
    config
}

async fn applied_tags(node: &consensus::Consensus<Tally>) -> Vec<String> {
    node.read((), Consistency::Linearizable).await.expect("linearizable read").1
}

/// Delays every write between the leader and the other nodes, so that a
/// commit takes a round trip of about 600 ms.
fn slow_replication(cluster: &MemCluster<Tally>, leader: usize, delay: Duration) {
    for i in (0..cluster.tailnet.len()).filter(|&i| i != leader) {
        cluster.net.set_delay(cluster.ip(leader), cluster.ip(i), delay);
    }
}

/// A command whose first attempt timed out while it was being committed is
/// retried through its operation: the retry is answered, and the command is
/// applied once. (On the old code, with no way to retry the same command,
/// the caller's retry applied it twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_command_retried_after_an_unknown_outcome_is_applied_once() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| patient_config()).await;
    let leader = cluster.leader();
    // A first command registers the leader's session (and is pooled).
    assert_eq!(cluster.node(leader).execute(add("warm", 1)).await.unwrap(), 1);
    slow_replication(&cluster, leader, Duration::from_millis(300));
    let mut operation = cluster.node(leader).prepare(add("once", 1)).expect("prepared");
    let first = operation.execute_within(Duration::from_millis(300)).await;
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    // A command's timeout says so, and that it may still be applied.
    let text = first.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("the command may still be applied"), "{text}");
    slow_replication(&cluster, leader, Duration::ZERO);
    // The command was on its way: it commits, and the retry is answered
    // from the session.
    wait_until_applied(cluster.node(leader), "once").await;
    let retried = operation.execute_within(Duration::from_secs(10)).await;
    assert_eq!(retried.expect("the retry learns the outcome"), 2, "the total after one add");
    let applied = applied_tags(cluster.node(leader)).await;
    assert_eq!(applied, ["warm", "once"], "applied once");
    drop(operation);
    // Dropped, it gave its session back; the next command runs as usual.
    assert_eq!(cluster.node(leader).execute(add("next", 1)).await.unwrap(), 3);
    cluster.shutdown().await;
}

/// Waits (with a deadline) until `node` has applied the command tagged `tag`.
async fn wait_until_applied(node: &consensus::Consensus<Tally>, tag: &str) {
    eventually(WAIT, format_args!("{tag} applied"), async || {
        let (_, applied) = node.read((), Consistency::Local).await.expect("local read");
        applied.iter().any(|t| t == tag)
    })
    .await
}

fn small_table(_: usize) -> consensus::Config {
    let mut config = fast_config();
    config.sessions.max_sessions = 2;
    config
}

/// Sessions unused for this many log entries expire (on every node at the
/// same entry).
const SESSION_TTL: u64 = 8;

/// [`patient_config`] with sessions that expire after [`SESSION_TTL`]
/// unused entries.
fn short_lived_sessions(_: usize) -> consensus::Config {
    let mut config = patient_config();
    config.sessions.ttl_entries = SESSION_TTL;
    config
}

/// Makes sure a session last used at or before the entry `node` has
/// applied now is gone: commands through `through` (in a session of their
/// own, kept in use) until `node` has applied an entry more than
/// [`SESSION_TTL`] past it. Expiry depends only on log positions, so the
/// session is then gone for every entry after that one, whichever node
/// leads. (Evicting it by registering sessions elsewhere depended on how
/// many sessions those commands registered, and once failed under load:
/// the retry found the session still there.)
async fn expire_sessions_used_until_now(
    node: &consensus::Consensus<Tally>,
    through: &consensus::Consensus<Tally>,
) {
    let used = node.metrics().applied_index.unwrap_or(0);
    let past = used + SESSION_TTL;
    for pad in 0.. {
        if node.metrics().applied_index.unwrap_or(0) > past {
            return;
        }
        assert!(pad < 10 * SESSION_TTL, "entry {past} not applied after {pad} commands");
        through.execute(add("pad", 1)).await.expect("a command that moves the log on");
    }
}

/// A pooled session that expired before a new command's first attempt is
/// replaced without the caller noticing: nothing of the command was
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expired_before_the_first_attempt_is_replaced_transparently() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), small_table).await;
    // Node 0 runs a command; its session goes back to its pool.
    assert_eq!(cluster.node(0).execute(add("a", 1)).await.unwrap(), 1);
    // Two commands at once on node 1 register two sessions: with a cap of
    // two, node 0's pooled session is evicted.
    let (b, c) =
        tokio::join!(cluster.node(1).execute(add("b", 1)), cluster.node(1).execute(add("c", 1)));
    b.unwrap();
    c.unwrap();
    // Node 0's next command meets the expired session, and moves on.
    assert_eq!(cluster.node(0).execute(add("d", 1)).await.expect("transparent"), 4);
    let applied = applied_tags(cluster.node(0)).await;
    assert_eq!(applied.iter().filter(|t| *t == "d").count(), 1, "{applied:?}");
    cluster.shutdown().await;
}

/// If the session expires after an attempt whose outcome is unknown, the
/// outcome can no longer be learned: the operation says so, and never
/// applies the command a second time in a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expired_after_an_unknown_attempt_is_an_unknown_outcome() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), short_lived_sessions).await;
    let leader = cluster.leader();
    let other = (leader + 1) % 3;
    assert_eq!(cluster.node(leader).execute(add("warm", 1)).await.unwrap(), 1);
    slow_replication(&cluster, leader, Duration::from_millis(300));
    let mut operation = cluster.node(leader).prepare(add("lost", 1)).expect("prepared");
    let first = operation.execute_within(Duration::from_millis(300)).await;
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    slow_replication(&cluster, leader, Duration::ZERO);
    wait_until_applied(cluster.node(leader), "lost").await;
    // Commands elsewhere, committed after the command, expire the
    // operation's session.
    expire_sessions_used_until_now(cluster.node(leader), cluster.node(other)).await;
    for _ in 0..2 {
        let again = operation.execute_within(Duration::from_secs(10)).await;
        assert!(matches!(again, Err(Error::OutcomeUnknown(_))), "{again:?}");
    }
    let applied = applied_tags(cluster.node(leader)).await;
    assert_eq!(applied.iter().filter(|t| *t == "lost").count(), 1, "{applied:?}");
    cluster.shutdown().await;
}

/// Issue 12: an operation that had answered, executed again once its
/// session expired, answered `OutcomeUnknown` (it asked the session,
/// which could no longer say) though it had heard the command applied.
/// It answers what it answered before, without sending the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_answered_answers_the_same_after_its_session_expired() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), short_lived_sessions).await;
    let leader = cluster.leader();
    let other = (leader + 1) % 3;
    assert_eq!(cluster.node(leader).execute(add("warm", 1)).await.unwrap(), 1);
    let mut operation = cluster.node(leader).prepare(add("done", 1)).expect("prepared");
    assert_eq!(operation.execute().await.expect("applied"), 2);
    expire_sessions_used_until_now(cluster.node(leader), cluster.node(other)).await;
    for _ in 0..2 {
        let again = operation.execute_within(Duration::from_secs(10)).await;
        assert_eq!(again.expect("the answer it gave"), 2, "the total after that add");
    }
    let applied = applied_tags(cluster.node(leader)).await;
    assert_eq!(applied.iter().filter(|t| *t == "done").count(), 1, "{applied:?}");
    cluster.shutdown().await;
}

/// An attempt the caller abandons (its future dropped mid-call) counts as
/// one whose outcome is unknown: a later call never moves the command to a
/// new session, where it could be applied a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_counts_as_an_unknown_outcome() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), short_lived_sessions).await;
    let leader = cluster.leader();
    let other = (leader + 1) % 3;
    assert_eq!(cluster.node(leader).execute(add("warm", 1)).await.unwrap(), 1);
    slow_replication(&cluster, leader, Duration::from_millis(300));
    let mut operation = cluster.node(leader).prepare(add("dropped", 1)).expect("prepared");
    let abandoned =
        tokio::time::timeout(Duration::from_millis(300), operation.execute_within(WAIT)).await;
    assert!(abandoned.is_err(), "the attempt finished: {abandoned:?}");
    slow_replication(&cluster, leader, Duration::ZERO);
    wait_until_applied(cluster.node(leader), "dropped").await;
    expire_sessions_used_until_now(cluster.node(leader), cluster.node(other)).await;
    let again = operation.execute_within(Duration::from_secs(10)).await;
    assert!(matches!(again, Err(Error::OutcomeUnknown(_))), "{again:?}");
    let applied = applied_tags(cluster.node(leader)).await;
    assert_eq!(applied.iter().filter(|t| *t == "dropped").count(), 1, "{applied:?}");
    cluster.shutdown().await;
}

/// Kept answers larger than the command API's default read limit: the
/// facade raises its read limit to what sessions keep (so a follower can
/// read any kept answer), and the nodes start and serve. (A start check that refused such
/// limits, found by review, stranded clusters whose limits were valid
/// before it: session limits cannot change on a running cluster.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_with_kept_answers_above_the_default_read_limit() {
    let max_response = cmd_rpc::CommandConfig::default().max_response;
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| {
        let mut config = fast_config();
        config.sessions.max_answer_bytes = max_response + 1;
        config
    })
    .await;
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    assert_eq!(cluster.node(follower).execute(add("through a follower", 1)).await.unwrap(), 1);
    cluster.shutdown().await;
}

/// A node whose pool holds many sessions that all expired while it was
/// quiet: its next command meets one expired session, forgets the rest and
/// registers a new one. Before (review finding), it popped one expired
/// session after another, each costing a committed entry, and gave up
/// after eight with a timeout for a command that was never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_expired_sessions_is_forgotten_at_the_first_one() {
    let table = |_: usize| {
        let mut config = fast_config();
        config.sessions.max_sessions = 12;
        config
    };
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), table).await;
    // Node 0 runs twelve commands at once: twelve sessions in its pool.
    at_once(cluster.node(0), "a").await;
    // Node 1 registers twelve more: every one of node 0's is evicted.
    at_once(cluster.node(1), "b").await;
    let answer = cluster.node(0).execute(add("after", 1)).await;
    assert_eq!(answer.expect("a new session, not eight expired ones"), 25);
    cluster.shutdown().await;
}

/// Twelve commands through `node` at once, each in a session of its own.
async fn at_once(node: &consensus::Consensus<Tally>, prefix: &str) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (node, tag) = (node.clone(), format!("{prefix}{i}"));
        calls.spawn(async move { node.execute(add(&tag, 1)).await });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().unwrap();
    }
}

/// Issue 12: a call that found no leader for its whole deadline wrote the
/// command nowhere, so the operation knows it was not applied: once its
/// session has expired, executing it again moves it to a new session and
/// applies it, once. Before, cmd-rpc answered `no_leader`, an unknown
/// outcome; the operation counted it "maybe applied", and after the
/// session expired answered `OutcomeUnknown` for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_found_no_leader_leaves_its_operation_known_not_applied() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), small_table).await;
    let leader = cluster.leader();
    let (cut, other) = ((leader + 1) % 3, (leader + 2) % 3);
    // A command through the node to be cut off pools its session there.
    assert_eq!(cluster.node(cut).execute(add("warm", 1)).await.unwrap(), 1);
    cluster.net.partition_set(&[cluster.ip(cut)]);
    eventually(WAIT, "the cut-off node knows no leader", async || {
        cluster.node(cut).metrics().leader.is_none()
    })
    .await;
    let mut operation = cluster.node(cut).prepare(add("unsent", 1)).expect("prepared");
    let first = operation.execute_within(Duration::from_millis(500)).await;
    assert!(matches!(first, Err(Error::NoLeader { .. })), "{first:?}");
    cluster.net.heal_all();
    // Two new sessions elsewhere evict the operation's.
    let (b, c) = tokio::join!(
        cluster.node(other).execute(add("b", 1)),
        cluster.node(other).execute(add("c", 1))
    );
    b.unwrap();
    c.unwrap();
    let again = operation.execute_within(WAIT).await;
    assert_eq!(again.expect("applied in a new session"), 4, "warm, b, c and this one");
    let applied = applied_tags(cluster.node(other)).await;
    assert_eq!(applied.iter().filter(|t| *t == "unsent").count(), 1, "{applied:?}");
    drop(operation);
    cluster.shutdown().await;
}
