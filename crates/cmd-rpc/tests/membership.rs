//! Membership changes on the leader run one at a time (the service's
//! membership lock), each within its caller's deadline: a join, a removal
//! or a change that finds another change holding the lock gives up at its
//! deadline with a timeout its caller may retry, instead of waiting for the
//! other change to end (docs/reliability.md finding 57). A leader's update
//! of its own record takes the same lock (finding 58).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cmd_rpc::{Caller, Change, CommandService, ErrorCode, JoinRequest, RemoveRequest, RpcError};
use common::{Counter, Node, WAIT, fast_raft, info, ip, start_node, stop_node};
use raft_core::{ClusterId, NodeInfo, Role, node_id};
use test_support::eventually;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use ts_transport::MemNetwork;

/// The deadline of each call made while another change holds the lock.
const DEADLINE: Duration = Duration::from_millis(300);
/// How long after its deadline such a call may still take to return.
const SLACK: Duration = Duration::from_millis(1700);
/// How long the blocking change holds the lock at most (it never ends
/// earlier on its own): far beyond `DEADLINE + SLACK`.
const HOLD: Duration = Duration::from_secs(20);

/// Node 0 leading a cluster of itself alone, in which it is recorded as
/// `record`, and node 1, not a member, with the cluster's id.
struct Pair {
    _net: MemNetwork,
    leader: Node,
    joiner: Node,
    cluster_id: ClusterId,
}

impl Pair {
    async fn start(record: NodeInfo) -> Pair {
        let net = MemNetwork::new();
        let leader = start_node(Arc::new(net.node(ip(0))), 0, fast_raft()).await;
        let joiner = start_node(Arc::new(net.node(ip(1))), 1, fast_raft()).await;
        let cluster_id = leader.service.node().form().await.unwrap();
        joiner.service.node().set_cluster_id(cluster_id).await.unwrap();
        let members = BTreeMap::from([(leader.service.node().id(), record)]);
        assert!(leader.service.node().initialize_in(cluster_id, members).await.unwrap());
        eventually(WAIT, "node 0 leads", async || {
            leader.service.node().metrics().role == Role::Leader
        })
        .await;
        Pair { _net: net, leader, joiner, cluster_id }
    }

    fn service(&self) -> &Arc<CommandService<Counter>> {
        &self.leader.service
    }

    /// Node 1's join request, and node 1 as its caller.
    fn join_request(&self) -> (JoinRequest, Caller) {
        let node = self.joiner.service.node();
        let request = JoinRequest {
            id: node.id(),
            incarnation: node.incarnation(),
            node: info(1),
            cluster_id: self.cluster_id,
        };
        (request, Caller { stable_id: info(1).stable_id, addrs: vec![ip(1)] })
    }

    /// Holds the leader's membership lock: a change that adds as a learner
    /// a node nobody runs, which never catches up, so the change waits up
    /// to [`HOLD`] for it. Returns once the learner is recorded, that is,
    /// while the change holds the lock.
    async fn hold_lock(&self) -> JoinHandle<Result<(), RpcError>> {
        let absent = node_id(&info(9).stable_id, 1);
        let service = self.service().clone();
        let change = Change::AddLearner { id: absent, node: info(9) };
        let blocker =
            tokio::spawn(async move { service.change(&change, Instant::now() + HOLD).await });
        eventually(WAIT, "the blocking change records its learner", async || {
            self.service().node().metrics().nodes.contains_key(&absent)
        })
        .await;
        blocker
    }

    async fn stop(self) {
        stop_node(self.joiner).await;
        stop_node(self.leader).await;
    }
}

/// Runs `call` (given its deadline, [`DEADLINE`] from now): it must end
/// within [`SLACK`] of its deadline, with a timeout that names the wait
/// for the other membership change.
async fn gives_up_in_time<F: Future<Output = Result<(), RpcError>>>(
    what: &str,
    call: impl FnOnce(Instant) -> F,
) {
    let started = Instant::now();
    let answer = tokio::time::timeout(DEADLINE + SLACK, call(started + DEADLINE))
        .await
        .unwrap_or_else(|_| {
            panic!("{what} with a {DEADLINE:?} deadline still waits after {:?}", DEADLINE + SLACK)
        });
    let err = answer.expect_err(what);
    assert_eq!(err.code(), ErrorCode::Timeout, "{what}: {err}");
    assert!(err.to_string().contains("another membership change"), "{what}: {err}");
    assert!(started.elapsed() >= DEADLINE, "{what} gave up before its deadline: {err}");
}

/// Issue 12 (hostile review): a join, a removal or a change waited for
/// the membership lock without bound, so behind a change waiting for a
/// slow learner it answered long after its caller's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_behind_another_gives_up_at_its_own_deadline() {
    let pair = Pair::start(info(0)).await;
    let blocker = pair.hold_lock().await;
    let service = pair.service();
    let (join, caller) = pair.join_request();
    gives_up_in_time("join", |deadline| service.join(&join, &caller, deadline)).await;
    let leave = RemoveRequest { id: join.id };
    gives_up_in_time("remove", |deadline| service.remove(&leave, &caller, deadline)).await;
    let promote = Change::Promote { id: join.id };
    gives_up_in_time("change", |deadline| service.change(&promote, deadline)).await;
    assert!(!blocker.is_finished(), "the blocking change held the lock throughout");
    // Once the lock is free, the same join goes through.
    blocker.abort();
    let _ = blocker.await;
    service.join(&join, &caller, Instant::now() + WAIT).await.unwrap();
    assert!(service.node().metrics().voters.contains(&join.id), "node 1 joined as a voter");
    pair.stop().await;
}

/// Issue 12 (hostile review): a leader started on other ports than its
/// record replaced the record with raft's `set_node` directly, beside the
/// membership lock, so in the middle of whatever change the service was
/// running. Now it goes through the service and waits for the lock (within
/// its deadline) like any other change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_update_of_its_own_record_waits_for_the_membership_lock() {
    let mut recorded = info(0);
    recorded.command_port += 100;
    let pair = Pair::start(recorded.clone()).await;
    let service = pair.service();
    let me = service.node().id();
    let blocker = pair.hold_lock().await;
    gives_up_in_time("update_own_record", |deadline| service.update_own_record(deadline)).await;
    let record = service.node().metrics().nodes.get(&me).cloned();
    assert_eq!(record, Some(recorded), "the record moved in the middle of another change");
    assert!(!blocker.is_finished(), "the blocking change held the lock throughout");
    // Once the lock is free, the record is replaced.
    blocker.abort();
    let _ = blocker.await;
    service.update_own_record(Instant::now() + WAIT).await.unwrap();
    assert_eq!(service.node().metrics().nodes.get(&me), Some(&info(0)), "record updated");
    pair.stop().await;
}

/// Issue 12 (hostile review of finding 57): a join was answered "already
/// a voter" from the latest configuration in the leader's log, committed
/// or not. Here node 1's promotion cannot commit (node 1 is down, and the
/// joint configuration needs it), so the leader lists node 1 among its
/// voters from an entry a later leader may still truncate; node 1's join
/// must not be told it is a member on that ground.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_not_answered_from_an_uncommitted_configuration() {
    let pair = Pair::start(info(0)).await;
    let (join, caller) = pair.join_request();
    let Pair { _net, leader, joiner, .. } = pair;
    let service = leader.service.clone();
    let add = Change::AddLearner { id: join.id, node: info(1) };
    service.change(&add, Instant::now() + WAIT).await.unwrap();
    stop_node(joiner).await;
    let promote = Change::Promote { id: join.id };
    let promoted = service.change(&promote, Instant::now() + DEADLINE).await;
    assert!(promoted.is_err(), "the promotion committed without node 1: {promoted:?}");
    let m = service.node().metrics();
    assert!(m.voters.contains(&join.id), "the uncommitted configuration lists node 1");
    assert!(!m.membership_applied(), "the configuration listing node 1 is not committed");
    let joined = service.join(&join, &caller, Instant::now() + DEADLINE).await;
    let err = joined.expect_err("a join answered from an uncommitted configuration");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    stop_node(leader).await;
}
