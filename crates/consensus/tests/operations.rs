//! The operator's admin endpoint against real in-process clusters: members
//! and status, removal under the leader's rules, leadership transfer,
//! snapshots, backup and restore as a new cluster; and what a start on a
//! bad state directory, a taken raft port or a raft log that cannot open
//! reports underneath its error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use consensus::{Config, Consistency, Error, Role, StorageFaults};
use serde_json::json;
use test_support::cluster::{MemCluster, Tailnet, WAIT};
use test_support::http::{admin, admin_json, http};
use test_support::tally::{Tally, add};
use test_support::{eventually, eventually_every, fast_config};
use ts_transport::{Transport, TransportError};

/// The staged restore's file in a state directory.
const PENDING_RESTORE: &str = "restore.pending";

fn config(dir: &Path) -> Config {
    Config { admin_port: Some(0), state_dir: Some(dir.to_owned()), ..fast_config() }
}

/// A cluster of `n` with a state directory per node.
async fn start(n: usize) -> MemCluster<Tally> {
    start_with(n, |_, dir| config(dir)).await
}

/// A cluster of `n` whose node `i` runs with `config(i, its state dir)`.
async fn start_with(n: usize, config: impl Fn(usize, &Path) -> Config) -> MemCluster<Tally> {
    MemCluster::start_durable(Tailnet::of(n), config).await
}

fn code(value: &serde_json::Value) -> &str {
    value["code"].as_str().unwrap_or_else(|| panic!("no code in {value}"))
}

fn message(value: &serde_json::Value) -> &str {
    value["message"].as_str().unwrap_or_else(|| panic!("no message in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_members_and_status_with_its_token_only() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    for i in 0..3 {
        let (status, members) =
            admin_json(&cluster.dirs[i], "GET", "/v1/members", json!(null)).await;
        assert_eq!(status, 200, "{members}");
        let list = members["members"].as_array().unwrap();
        assert_eq!(list.len(), 3, "{members}");
        assert_eq!(members["leader"], json!(cluster.node(leader).id()));
        assert_eq!(members["node"], json!(cluster.node(i).id()));
        assert_eq!(list.iter().filter(|m| m["leader"] == json!(true)).count(), 1);
        let (status, s) = admin_json(&cluster.dirs[i], "GET", "/v1/status", json!(null)).await;
        assert_eq!(status, 200, "{s}");
        assert_eq!(s["id"], json!(cluster.node(i).id()));
        assert_eq!(s["role"], json!(if i == leader { "leader" } else { "follower" }));
        assert_eq!(s["readiness"]["ready"], json!(true), "{s}");
        assert_eq!(s["pending_restore"], json!(null));
        assert!(s["cluster_id"].as_str().is_some_and(|c| c.len() == 32), "{s}");
    }
    // Each node has its own token: node 1's is refused by node 0.
    let port = cluster.node(0).admin_port().unwrap();
    let other =
        std::fs::read_to_string(cluster.dirs[1].join(consensus::admin::TOKEN_FILE)).unwrap();
    let (status, body) = http(
        port,
        "GET",
        "/v1/status",
        &format!("Authorization: Bearer {}\r\n", other.trim()),
        b"",
    )
    .await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_follows_the_leaders_rules_and_a_follower_says_where_to_go() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let other_id = cluster.node(other).id();
    let other_host = format!("host-{other}");

    // Through a follower: the leader refuses an online, tagged member.
    let (status, answer) = admin_json(
        &cluster.dirs[follower],
        "POST",
        "/v1/remove",
        json!({ "node": other_host.clone() }),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(code(&answer), "refused_by_leader");
    let text = message(&answer);
    assert!(text.contains("tagged and online") && text.contains("tsconsensus remove"), "{text}");
    assert!(text.contains(&format!("host-{leader}")), "names the leader's host: {text}");
    // Neither this node nor a stranger.
    let (status, answer) = admin_json(
        &cluster.dirs[follower],
        "POST",
        "/v1/remove",
        json!({ "node": format!("host-{follower}") }),
    )
    .await;
    assert_eq!((status, code(&answer)), (409, "is_this_node"), "{answer}");
    assert!(message(&answer).contains("StopMode::Leave"), "{answer}");
    let (status, answer) =
        admin_json(&cluster.dirs[leader], "POST", "/v1/remove", json!({ "node": "nobody" })).await;
    assert_eq!((status, code(&answer)), (404, "no_such_member"), "{answer}");
    let (status, answer) =
        admin_json(&cluster.dirs[leader], "POST", "/v1/remove", json!({ "nod": "x" })).await;
    assert_eq!((status, code(&answer)), (400, "bad_request"), "{answer}");
    assert!(message(&answer).contains("unknown field"), "{answer}");

    // On the leader: refused without --force, for the same reason.
    let (status, answer) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/remove",
        json!({ "node": other_id.to_string() }),
    )
    .await;
    assert_eq!((status, code(&answer)), (409, "tagged_and_online"), "{answer}");
    assert_eq!(cluster.node(leader).metrics().voters, 3);

    // Through the follower, once the leader's view shows it offline.
    cluster.discovery[leader].set(cluster.tailnet.view(leader, &[other]));
    let (status, answer) =
        admin_json(&cluster.dirs[follower], "POST", "/v1/remove", json!({ "node": other_host }))
            .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["removed"], json!(other_id));
    let m = cluster.node(leader).wait_for(WAIT, |m| m.voters == 2).await.unwrap();
    assert_eq!(m.voters + m.learners, 2);
    cluster.shutdown().await;
}

/// Through a follower, the leader applies its quorum guard: removing an
/// offline voter is refused while the voters left would lack a reachable
/// majority (here the follower itself is offline in the leader's view),
/// and goes ahead once they have one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_through_a_follower_keeps_a_reachable_majority() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let other_host = format!("host-{other}");
    cluster.discovery[leader].set(cluster.tailnet.view(leader, &[follower, other]));
    let (status, answer) = admin_json(
        &cluster.dirs[follower],
        "POST",
        "/v1/remove",
        json!({ "node": other_host.clone() }),
    )
    .await;
    assert_eq!((status, code(&answer)), (403, "refused_by_leader"), "{answer}");
    assert!(message(&answer).contains("reachable"), "{answer}");
    assert_eq!(cluster.node(leader).metrics().voters, 3);
    cluster.discovery[leader].set(cluster.tailnet.view(leader, &[other]));
    let (status, answer) =
        admin_json(&cluster.dirs[follower], "POST", "/v1/remove", json!({ "node": other_host }))
            .await;
    assert_eq!(status, 200, "{answer}");
    cluster.node(leader).wait_for(WAIT, |m| m.voters == 2).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_any_member_with_force_and_membership_brings_it_back() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    let other = (leader + 1) % 3;
    let other_id = cluster.node(other).id();
    let (status, answer) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/remove",
        json!({ "node": other_id.to_string(), "force": true }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["members"].as_array().unwrap().iter().all(|m| m["id"] != json!(other_id)),
        "{answer}"
    );
    // Tagged, online and answering: the leader adds it back (membership
    // follows tags), as the refusal without --force warns.
    cluster
        .node(leader)
        .wait_for(WAIT, |m| m.voters == 3)
        .await
        .expect("the removed node, still tagged and answering, is added back");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_named_voter_while_commands_go_on() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    let target = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    // A follower cannot, and says where to go.
    let (status, answer) =
        admin_json(&cluster.dirs[target], "POST", "/v1/transfer-leader", json!({})).await;
    assert_eq!((status, code(&answer)), (409, "not_leader"), "{answer}");
    assert!(message(&answer).contains(&format!("host-{leader}")), "{answer}");

    // Commands keep flowing through the third node during the transfer.
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let node = cluster.node(third).clone();
        let done = done.clone();
        tokio::spawn(async move {
            for k in 0..40 {
                node.execute(add(&format!("w{k}"), 1))
                    .await
                    .expect("a command during the transfer");
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            done.load(Ordering::SeqCst)
        })
    };
    // The transfer starts while the writer is under way.
    eventually(WAIT, "the writer's first commands apply", async || {
        done.load(Ordering::SeqCst) >= 2
    })
    .await;
    let (status, report) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/transfer-leader",
        json!({ "to": format!("host-{target}") }),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let target_id = cluster.node(target).id();
    assert_eq!(report["target"], json!(target_id));
    assert_eq!(report["leader"], json!(target_id), "{report}");
    assert_eq!(report["target_won"], json!(true));
    for node in cluster.running() {
        node.wait_for(WAIT, |m| m.leader == Some(target_id)).await.unwrap();
    }
    assert_eq!(writer.await.unwrap(), 40);
    let (total, _) = cluster.node(target).read((), Consistency::Linearizable).await.unwrap();
    assert_eq!(total, 40, "every command applied once");
    // And back, without naming a node: the most caught-up other voter.
    let back = cluster.node(target).transfer_leadership(None).await.unwrap();
    assert_ne!(back, target_id);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_builds_one_now() {
    let cluster = start(3).await;
    for k in 0..5 {
        cluster.node(0).execute(add(&format!("s{k}"), 1)).await.unwrap();
    }
    let follower = (cluster.leader() + 1) % 3;
    let (status, answer) =
        admin_json(&cluster.dirs[follower], "POST", "/v1/snapshot", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let snapshot = answer["snapshot_index"].as_u64().expect("a snapshot index");
    assert!(snapshot >= 5, "{answer}");
    assert_eq!(cluster.node(follower).metrics().snapshot_index, Some(snapshot));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_as_a_new_cluster_once_the_quorum_is_lost() {
    let mut cluster = start(3).await;
    for k in 0..10 {
        cluster.node(k % 3).execute(add(&format!("b{k}"), k as i64)).await.unwrap();
    }
    let leader = cluster.leader();
    let keep = (leader + 1) % 3;
    let (status, backup) = admin(&cluster.dirs[keep], "POST", "/v1/backup", b"{}").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&backup));
    let info = consensus::admin::backup_info(&backup).expect("a valid backup");
    assert!(info.linearizable, "{info:?}");
    assert_eq!(info.members.len(), 3);
    let old_cluster = info.cluster_id.expect("a cluster id");
    let expected = cluster.node(keep).read((), Consistency::Local).await.unwrap();
    assert_eq!(expected.0, 45);

    // Refused while the cluster is healthy.
    let (status, answer) = admin(&cluster.dirs[keep], "POST", "/v1/restore", &backup).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!((status, code(&answer)), (409, "healthy_cluster"), "{answer}");
    assert!(message(&answer).contains("--force"), "{answer}");
    // Refused if it is not a backup.
    let (status, answer) = admin(&cluster.dirs[keep], "POST", "/v1/restore", b"junk").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));

    // The two other nodes are gone for good: no quorum.
    for i in (0..3).filter(|&i| i != keep) {
        cluster.stop(i).await;
    }
    let (status, answer) = admin(&cluster.dirs[keep], "POST", "/v1/restore", &backup).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(message_of_staged(&answer).contains("restart"), "{answer}");
    let (_, s) = admin_json(&cluster.dirs[keep], "GET", "/v1/status", json!(null)).await;
    assert_eq!(s["pending_restore"]["cluster_id"], json!(old_cluster.to_string()), "{s}");
    let old_id = cluster.node(keep).id();
    cluster.stop(keep).await;

    // Restarted, it is the only member of a new cluster with the state.
    cluster.start_one(keep, config(&cluster.dirs[keep])).await;
    let node = cluster.node(keep);
    assert_ne!(node.id(), old_id);
    let m = node.wait_for(WAIT, |m| m.role == Role::Leader).await.unwrap();
    assert_eq!((m.voters, m.learners), (1, 0));
    assert_eq!(node.read((), Consistency::Linearizable).await.unwrap(), expected);
    let (_, s) = admin_json(&cluster.dirs[keep], "GET", "/v1/status", json!(null)).await;
    assert_ne!(s["cluster_id"], json!(old_cluster.to_string()), "{s}");
    assert_eq!(s["pending_restore"], json!(null));
    node.execute(add("after", 1)).await.unwrap();
    cluster.shutdown().await;
}

fn message_of_staged(answer: &serde_json::Value) -> &str {
    answer["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_restore_refuses_a_running_node_and_a_members_state_unless_forced() {
    let mut cluster = start(1).await;
    cluster.node(0).execute(add("x", 7)).await.unwrap();
    let (status, backup) = admin(&cluster.dirs[0], "POST", "/v1/backup", b"").await;
    assert_eq!(status, 200);
    let dir = cluster.dirs[0].clone();
    let err = consensus::admin::stage_restore_offline(&dir, &backup, true).await.unwrap_err();
    assert!(err.to_string().contains("is running"), "{err}");
    cluster.stop(0).await;
    let err = consensus::admin::stage_restore_offline(&dir, &backup, false).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    let err = consensus::admin::stage_restore_offline(&dir, b"junk", true).await.unwrap_err();
    assert!(err.to_string().contains("not a tsconsensus backup"), "{err}");
    consensus::admin::stage_restore_offline(&dir, &backup, true).await.unwrap();
    // An empty directory (a new machine) needs no force.
    let fresh = dir.with_file_name("fresh");
    consensus::admin::stage_restore_offline(&fresh, &backup, false).await.unwrap();
    // A directory that cannot be created: storage's error, with the
    // io::Error underneath (before: text only).
    let file = dir.with_file_name("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = consensus::admin::stage_restore_offline(&file.join("state"), &backup, false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(underneath::<std::io::Error>(&err).is_some(), "no io::Error underneath {err:?}");
    cluster.start_one(0, config(&fresh)).await;
    let node = cluster.node(0);
    node.wait_for(WAIT, |m| m.role == Role::Leader).await.unwrap();
    assert_eq!(node.read((), Consistency::Local).await.unwrap().0, 7);
    cluster.shutdown().await;
}

/// A node that stopped on a fatal error, whose cluster still commits, must
/// not stage a restore: it would take effect at the next restart (a
/// supervisor restarts a fatal node) and start a second cluster beside the
/// live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_node_cannot_stage_a_restore_while_its_cluster_commits() {
    let faults: Vec<StorageFaults> = (0..3).map(|_| StorageFaults::new()).collect();
    let cluster =
        start_with(3, |i, dir| Config { storage_faults: Some(faults[i].clone()), ..config(dir) })
            .await;
    let leader = cluster.leader();
    let broken = (leader + 1) % 3;
    cluster.node(leader).execute(add("a", 1)).await.unwrap();
    let (status, backup) = admin(&cluster.dirs[broken], "POST", "/v1/backup", b"{}").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&backup));
    faults[broken].fail_next_fsync();
    cluster.node(leader).execute(add("b", 1)).await.unwrap();
    cluster.node(broken).wait_for(WAIT, |m| m.fatal.is_some()).await.expect("the node goes fatal");
    let (status, answer) = admin(&cluster.dirs[broken], "POST", "/v1/restore", &backup).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!((status, code(&answer)), (409, "healthy_cluster"), "{answer}");
    assert!(!cluster.dirs[broken].join(PENDING_RESTORE).exists(), "a restore was staged");
    cluster.shutdown().await;
}

/// A restore staged while the cluster could not commit is cancelled (moved
/// aside) as soon as the node sees its cluster commit again before it is
/// restarted: it is never left armed for whatever restart comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_restore_is_cancelled_when_the_cluster_commits_again() {
    let mut cluster = start(3).await;
    cluster.node(0).execute(add("a", 1)).await.unwrap();
    let keep = (cluster.leader() + 1) % 3;
    let (status, backup) = admin(&cluster.dirs[keep], "POST", "/v1/backup", b"{}").await;
    assert_eq!(status, 200);
    let others: Vec<usize> = (0..3).filter(|&i| i != keep).collect();
    for &i in &others {
        cluster.stop(i).await;
    }
    let (status, answer) = admin(&cluster.dirs[keep], "POST", "/v1/restore", &backup).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let pending = cluster.dirs[keep].join(PENDING_RESTORE);
    assert!(pending.exists());
    // The others come back: the cluster commits again.
    for &i in &others {
        cluster.restart(i, config(&cluster.dirs[i])).await;
    }
    eventually(WAIT, "the staged restore disarmed", async || !pending.exists()).await;
    assert!(cluster.dirs[keep].join("restore.cancelled").exists());
    let (_, s) = admin_json(&cluster.dirs[keep], "GET", "/v1/status", json!(null)).await;
    assert_eq!(s["pending_restore"], json!(null), "{s}");
    cluster.node(keep).execute(add("b", 1)).await.unwrap();
    cluster.shutdown().await;
}

/// `--force` overrides the tagged-and-online check only: removing a voter
/// whose removal leaves no reachable majority (another voter is offline)
/// needs its own override, `force_quorum`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_voter_that_breaks_the_quorum_needs_its_own_override() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    let (offline, target) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.discovery[leader].set(cluster.tailnet.view(leader, &[offline]));
    let target_id = cluster.node(target).id().to_string();
    let (status, answer) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/remove",
        json!({ "node": target_id.clone(), "force": true }),
    )
    .await;
    assert_eq!((status, code(&answer)), (409, "quorum"), "{answer}");
    assert!(message(&answer).contains("--force-quorum"), "{answer}");
    assert_eq!(cluster.node(leader).metrics().voters, 3);
    let (status, answer) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/remove",
        json!({ "node": target_id, "force": true, "force_quorum": true }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    cluster.shutdown().await;
}

/// A transfer to a voter that cannot catch up (it is down) gives up after
/// about two election timeouts without progress, not at the call's
/// deadline: the leader holds its log still all that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_voter_that_does_not_catch_up_gives_up_early() {
    let mut cluster = start(3).await;
    let leader = cluster.leader();
    let target = (leader + 1) % 3;
    let target_id = cluster.node(target).id();
    cluster.stop(target).await;
    // The leader's log moves past what the stopped voter has.
    cluster.node(leader).execute(add("after", 1)).await.unwrap();
    let started = std::time::Instant::now();
    let (status, answer) = admin_json(
        &cluster.dirs[leader],
        "POST",
        "/v1/transfer-leader",
        json!({ "to": target_id.to_string() }),
    )
    .await;
    let took = started.elapsed();
    assert_eq!((status, code(&answer)), (504, "not_transferred"), "{answer}");
    assert!(message(&answer).contains("catch up"), "{answer}");
    // fast_config: upper election timeout 1 s, call deadline 10 s.
    assert!(took < Duration::from_secs(5), "gave up only after {took:?}");
    // The hold ended: commands commit again on the same leader.
    cluster.node(leader).execute(add("again", 1)).await.unwrap();
    cluster.shutdown().await;
}

/// A follower's readiness is measured against the leader's commit index
/// (learned through a read-index round), not its own, which openraft
/// clamps to the entries it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_readiness_uses_the_leaders_commit_index() {
    let cluster = start(3).await;
    let leader = cluster.leader();
    for k in 0..3 {
        cluster.node(leader).execute(add(&format!("r{k}"), 1)).await.unwrap();
    }
    let follower = (leader + 1) % 3;
    // The leader's index is learned about once a second: wait for a round
    // after the writes.
    let s = eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the leader's committed index learned",
        async || {
            let (_, s) =
                admin_json(&cluster.dirs[follower], "GET", "/v1/status", json!(null)).await;
            let learned = s["readiness"]["leader_committed_index"].as_u64();
            if learned.is_some_and(|i| i >= 3) { Ok(s) } else { Err(s.to_string()) }
        },
    )
    .await;
    let readiness = &s["readiness"];
    let learned = readiness["leader_committed_index"].as_u64();
    assert!(learned.is_some_and(|i| i >= 3), "{s}");
    assert_eq!(readiness["ready"], json!(true), "{s}");
    let (_, s) = admin_json(&cluster.dirs[leader], "GET", "/v1/status", json!(null)).await;
    assert_eq!(s["readiness"]["leader_committed_index"], json!(null), "a leader uses its own: {s}");
    cluster.shutdown().await;
}

/// The first error of type `T` in `err`'s chain of sources.
fn underneath<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(err.source(), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// Starts the one node of `cluster` with `config`: what the start answers.
async fn start_alone(cluster: &mut MemCluster<Tally>, config: Config) -> Result<(), Error> {
    cluster.try_start_one(0, config).await
}

/// Before: a start on a state directory that cannot be created said why
/// in words only; the operating system's error was lost. Now it is in the
/// chain of sources, for programs that look at its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_state_directory_that_is_a_file_keeps_the_io_error_underneath() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("state");
    std::fs::write(&file, b"not a directory").unwrap();
    let mut cluster = MemCluster::<Tally>::new(Tailnet::of(1));
    let config = Config { state_dir: Some(file.clone()), ..fast_config() };
    let started = start_alone(&mut cluster, config).await;
    let Err(err) = started else { panic!("a node started on a state directory that is a file") };
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("create {}", file.display())), "{err}");
    let io = underneath::<std::io::Error>(&err);
    assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::AlreadyExists), "{err:?}");
}

/// Before: a start whose raft port was taken kept only the transport's
/// words. Now the transport's error is in the chain of sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_taken_raft_port_keeps_the_transports_error_underneath() {
    let mut cluster = MemCluster::<Tally>::new(Tailnet::of(1));
    let config = fast_config();
    let port = config.raft_port;
    let _squatter = cluster.net.node(cluster.ip(0)).listen(port).await.unwrap();
    let started = start_alone(&mut cluster, config).await;
    let Err(err) = started else { panic!("a node started on a raft port already in use") };
    assert!(matches!(err, Error::Network { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("cannot listen on raft port {port}")), "{err}");
    let transport = underneath::<TransportError>(&err);
    assert!(matches!(transport, Some(TransportError::AddrInUse(p)) if *p == port), "{err:?}");
}

/// Before: a start whose raft log could not be opened kept the log store's
/// error, an openraft `StorageError`, in its chain of sources, so
/// openraft's types reached callers of the facade through `source()`. Now
/// every error in the chain is the facade's, raft-core's or the standard
/// library's, and the log store's words are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_raft_log_cannot_open_shows_no_openraft_type_underneath() {
    let tmp = tempfile::tempdir().unwrap();
    // The log file's name taken by a directory: the log store cannot open it.
    std::fs::create_dir_all(tmp.path().join("raft.redb")).unwrap();
    let mut cluster = MemCluster::<Tally>::new(Tailnet::of(1));
    let config = Config { state_dir: Some(tmp.path().to_owned()), ..fast_config() };
    let started = start_alone(&mut cluster, config).await;
    let Err(err) = started else { panic!("a node started with a raft log it cannot open") };
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    let chain: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| e.source())
            .collect();
    assert!(chain.len() >= 3, "the log store's error is gone: {err:?}");
    for link in &chain {
        let ours = link.is::<Error>()
            || link.is::<raft_core::StartError>()
            || link.is::<raft_core::Cause>()
            || link.is::<std::io::Error>();
        assert!(ours, "a foreign type in the chain of sources: {link:?} (all: {err:?})");
    }
    let words: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    assert!(words[2..].iter().all(|w| !w.is_empty()), "{words:?}");
}
