//! The facade end to end on the real local tailnet, with the checking kv
//! store (`test_support::kv`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use consensus::{
    BootstrapOptions, Config, Consensus, Consistency, Error, MemberRole, Role, StopMode, Timing,
};
use test_support::eventually_every;
use test_support::kv::{KvCommand, KvQuery, KvResponse, KvStore};
use tests::tailnet::{LocalTailnet, timing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ts_discovery::{LocalApi, LocalApiLimits};
use ts_transport::Transport;
use ts_transport::tsnet::TsnetTransport;

const TAG: &str = "tag:kv";
const WAIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config { timing: timing(), ..Config::default() }
}

fn bootstrap(expected_size: usize) -> BootstrapOptions {
    BootstrapOptions { tag: TAG.to_owned(), follow_only: false, expected_size }
}

/// A node that is up and carries `tags`, once it sees them itself.
async fn node_with_tags(tailnet: &LocalTailnet, hostname: &str, tags: &[&str]) -> TsnetTransport {
    let (node, _) = tailnet.node(hostname).await.unwrap();
    tailnet.set_tags(hostname, tags).await.unwrap();
    let api = LocalApi::for_node(&node, LocalApiLimits::default()).unwrap();
    let what = format!("{hostname} sees its tags");
    eventually_every(WAIT, Duration::from_millis(50), what, async || {
        api.status().await.is_ok_and(|view| tags.iter().all(|t| view.self_node.has_tag(t)))
    })
    .await;
    node
}

async fn tagged(tailnet: &LocalTailnet, hostname: &str) -> TsnetTransport {
    node_with_tags(tailnet, hostname, &[TAG]).await
}

async fn start(node: &TsnetTransport, expected: usize, config: Config) -> Consensus<KvStore> {
    Consensus::start_on_tailnet(node, KvStore::default(), bootstrap(expected), config)
        .await
        .unwrap_or_else(|e| panic!("start on {}: {e}", node.hostname()))
}

/// Starts consensus on every node at once. (A fresh node forms a cluster
/// only once every tagged peer answers its probe, so tagged nodes that
/// start one after another would wait for each other.)
async fn start_together(
    nodes: &[TsnetTransport],
    config: impl Fn(usize) -> Config,
) -> Vec<Consensus<KvStore>> {
    let starts: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let node = node.clone();
            let config = config(i);
            tokio::spawn(async move { start(&node, 1, config).await })
        })
        .collect();
    let mut kvs = Vec::new();
    for started in starts {
        kvs.push(started.await.expect("start task"));
    }
    kvs
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put { key: key.to_owned(), value: value.to_owned() }
}

async fn get_local(kv: &Consensus<KvStore>, key: &str) -> serde_json::Value {
    kv.read(KvQuery::Get { key: key.to_owned() }, Consistency::Local).await.unwrap()
}

/// Waits until `kv` has applied `key = value` locally.
async fn wait_value(kv: &Consensus<KvStore>, key: &str, value: &str) {
    let what = format!("node {} applies {key}={value}", kv.id());
    eventually_every(WAIT, Duration::from_millis(50), what, async || {
        get_local(kv, key).await == serde_json::json!(value)
    })
    .await;
}

async fn wait_voters(kv: &Consensus<KvStore>, voters: usize) {
    kv.wait_for(WAIT, |m| m.voters == voters && m.learners == 0 && m.leader.is_some())
        .await
        .unwrap_or_else(|e| panic!("node {} never saw {voters} voters: {e}", kv.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_starts_and_applies() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let node = tagged(&tailnet, "solo").await;
    let kv = start(&node, 1, config()).await;
    assert_eq!(kv.execute(put("a", "1")).await.unwrap(), KvResponse::Previous(None));
    assert_eq!(kv.execute(put("a", "2")).await.unwrap(), KvResponse::Previous(Some("1".into())));
    let read = kv.read(KvQuery::Get { key: "a".into() }, Consistency::Linearizable).await.unwrap();
    assert_eq!(read, serde_json::json!("2"));
    assert_eq!(kv.metrics().role, Role::Leader);
    kv.stop(StopMode::Stay).await.unwrap();
    node.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_node_is_refused_at_start_with_the_tag_named() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let node = node_with_tags(&tailnet, "plain", &["tag:other"]).await;
    match Consensus::start_on_tailnet(&node, KvStore::default(), bootstrap(1), config()).await {
        Err(err @ Error::NotTagged { .. }) => assert!(err.to_string().contains(TAG), "{err}"),
        Err(other) => panic!("untagged start gave {other}"),
        Ok(_) => panic!("an untagged node started"),
    }
    // Nothing was left listening: the ports can be taken again.
    assert!(node.listen(6270).await.is_ok(), "raft port leaked by the failed start");
    assert!(node.listen(6271).await.is_ok(), "command port leaked by the failed start");
    node.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_apply_the_same_commands() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let a = tagged(&tailnet, "pair-a").await;
    let b = tagged(&tailnet, "pair-b").await;
    let mut kvs = start_together(&[a, b], |_| config()).await;
    let (kv_b, kv_a) = (kvs.pop().unwrap(), kvs.pop().unwrap());
    wait_voters(&kv_a, 2).await;
    kv_b.execute(put("from-b", "1")).await.unwrap();
    kv_a.execute(put("from-a", "2")).await.unwrap();
    for kv in [&kv_a, &kv_b] {
        wait_value(kv, "from-b", "1").await;
        wait_value(kv, "from-a", "2").await;
    }
    kv_b.stop(StopMode::Stay).await.unwrap();
    kv_a.stop(StopMode::Stay).await.unwrap();
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_each_with_its_own_ports() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let mut nodes = Vec::new();
    let mut kvs = Vec::new();
    for i in 0..3u16 {
        let node = tagged(&tailnet, &format!("ports-{i}")).await;
        let config = Config {
            raft_port: 7100 + 100 * i,
            command_port: 7101 + 100 * i,
            monitor_port: Some(7102 + 100 * i),
            seed_command_ports: vec![7101, 7201, 7301],
            ..config()
        };
        kvs.push(start(&node, 1, config).await);
        nodes.push(node);
    }
    wait_voters(&kvs[0], 3).await;
    for (i, kv) in kvs.iter().enumerate() {
        kv.execute(put(&format!("k{i}"), "v"))
            .await
            .unwrap_or_else(|e| panic!("via node {i}: {e}"));
    }
    let ports: BTreeSet<u16> = kvs[0].members().iter().map(|m| m.raft_port).collect();
    assert_eq!(ports, BTreeSet::from([7100, 7200, 7300]), "members keep their own ports");
    for kv in &kvs {
        for i in 0..3 {
            wait_value(kv, &format!("k{i}"), "v").await;
        }
    }
    for kv in kvs {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_restarts_and_catches_up() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let state = |i: usize| -> PathBuf { dirs.path().join(format!("n{i}")) };
    let nodes = [
        tagged(&tailnet, "fc-0").await,
        tagged(&tailnet, "fc-1").await,
        tagged(&tailnet, "fc-2").await,
    ];
    let mut kvs: Vec<Option<_>> =
        start_together(&nodes, |i| Config { state_dir: Some(state(i)), ..config() })
            .await
            .into_iter()
            .map(Some)
            .collect();
    wait_voters(kvs[0].as_ref().unwrap(), 3).await;
    kvs[0].as_ref().unwrap().execute(put("before", "1")).await.unwrap();
    let follower =
        (0..3).find(|&i| kvs[i].as_ref().unwrap().metrics().role != Role::Leader).unwrap();
    let other = (0..3).find(|&i| i != follower).unwrap();
    wait_value(kvs[follower].as_ref().unwrap(), "before", "1").await;
    kvs[follower].take().unwrap().stop(StopMode::Stay).await.unwrap();
    for n in 0..20 {
        kvs[other].as_ref().unwrap().execute(put("during", &n.to_string())).await.unwrap();
    }
    let back =
        start(&nodes[follower], 1, Config { state_dir: Some(state(follower)), ..config() }).await;
    wait_value(&back, "during", "19").await;
    assert_eq!(get_local(&back, "before").await, serde_json::json!("1"));
    back.stop(StopMode::Stay).await.unwrap();
    for kv in kvs.into_iter().flatten() {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_state_rejoins() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let nodes = [
        tagged(&tailnet, "amnesia-0").await,
        tagged(&tailnet, "amnesia-1").await,
        tagged(&tailnet, "amnesia-2").await,
    ];
    let mut kvs: Vec<Option<_>> =
        start_together(&nodes, |_| config()).await.into_iter().map(Some).collect();
    wait_voters(kvs[0].as_ref().unwrap(), 3).await;
    kvs[0].as_ref().unwrap().execute(put("old", "1")).await.unwrap();
    let follower =
        (0..3).find(|&i| kvs[i].as_ref().unwrap().metrics().role != Role::Leader).unwrap();
    let other = (0..3).find(|&i| i != follower).unwrap();
    let old_id = kvs[follower].as_ref().unwrap().id();
    kvs[follower].take().unwrap().stop(StopMode::Stay).await.unwrap();
    kvs[other].as_ref().unwrap().execute(put("new", "2")).await.unwrap();
    // Same tailnet node (same stable id), empty memory state: a new
    // incarnation, which replaces the old one.
    let back = start(&nodes[follower], 1, config()).await;
    assert_ne!(back.id(), old_id, "a node without its state came back under its old raft id");
    wait_value(&back, "old", "1").await;
    wait_value(&back, "new", "2").await;
    wait_voters(&back, 3).await;
    assert!(back.members().iter().all(|m| m.id != old_id), "the old incarnation is still a member");
    back.stop(StopMode::Stay).await.unwrap();
    for kv in kvs.into_iter().flatten() {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_tagged_node_joins_and_becomes_a_voter_and_follow_only_joins() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let mut kvs = Vec::new();
    for i in 0..3 {
        let node = tagged(&tailnet, &format!("grow-{i}")).await;
        kvs.push(start(&node, 1, config()).await);
    }
    wait_voters(&kvs[0], 3).await;
    kvs[0].execute(put("k", "v")).await.unwrap();
    let fourth = tagged(&tailnet, "grow-3").await;
    let follower_only =
        BootstrapOptions { tag: TAG.to_owned(), follow_only: true, expected_size: 1 };
    let kv4 = Consensus::start_on_tailnet(&fourth, KvStore::default(), follower_only, config())
        .await
        .unwrap();
    wait_voters(&kvs[0], 4).await;
    let me =
        kv4.members().into_iter().find(|m| m.id == kv4.id()).expect("the new node is a member");
    assert_eq!(me.role, MemberRole::Voter);
    wait_value(&kv4, "k", "v").await;
    kv4.execute(put("from-4", "x")).await.unwrap();
    kv4.stop(StopMode::Stay).await.unwrap();
    for kv in kvs {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_only_never_forms_a_cluster() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let node = tagged(&tailnet, "loner").await;
    let options = BootstrapOptions { tag: TAG.to_owned(), follow_only: true, expected_size: 1 };
    let config =
        Config { timing: Timing { start_timeout: Duration::from_secs(3), ..timing() }, ..config() };
    let started = Instant::now();
    match Consensus::start_on_tailnet(&node, KvStore::default(), options, config).await {
        Err(Error::JoinFailed { .. }) => {}
        Err(other) => panic!("follow-only alone gave {other}"),
        Ok(_) => panic!("a follow-only node formed a cluster"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
    node.close().await;
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_node_cannot_use_any_port_or_join() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let member = tagged(&tailnet, "guarded").await;
    let kv = start(&member, 1, config()).await;
    let outsider = node_with_tags(&tailnet, "outsider", &["tag:other"]).await;
    let target: IpAddr = IpAddr::V4(member.addrs().unwrap().v4.unwrap());
    // Command and monitor ports close the connection at accept.
    for (port, request) in [
        (6271u16, "POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()),
        (6271, "GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned()),
        (6271, "POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()),
        (8081, "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned()),
        (8081, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned()),
    ] {
        let mut stream = outsider.dial(target, port, Duration::from_secs(10)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.unwrap();
        // Closed at accept, unread and unanswered (issue 12 item 9): an
        // end of stream or a reset, never an answer.
        assert!(read.is_err() || response.is_empty(), "port {port}: {response}");
    }
    // The raft port hangs up without answering.
    let mut stream = outsider.dial(target, 6270, Duration::from_secs(10)).await.unwrap();
    let _ = stream.write_all(b"\x00\x00\x00\x20hello raft, let me in please....").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await.unwrap();
    assert!(read.is_err() || buf.is_empty(), "raft port answered an untagged peer: {buf:?}");
    // And it cannot join through the facade either.
    let config =
        Config { timing: Timing { start_timeout: Duration::from_secs(3), ..timing() }, ..config() };
    let refused =
        Consensus::start_on_tailnet(&outsider, KvStore::default(), bootstrap(1), config).await;
    assert!(matches!(refused, Err(Error::NotTagged { .. })), "{:?}", refused.err());
    assert_eq!(kv.members().len(), 1);
    kv.stop(StopMode::Stay).await.unwrap();
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_members_tag_removes_it() {
    /// The bound this test holds the removal to (docs/configuration.md).
    const BOUND: Duration = Duration::from_secs(10);
    let tailnet = LocalTailnet::start().await.unwrap();
    let mut kvs = Vec::new();
    for i in 0..3 {
        let node = tagged(&tailnet, &format!("revoke-{i}")).await;
        kvs.push(start(&node, 1, config()).await);
    }
    wait_voters(&kvs[0], 3).await;
    let leader = kvs.iter().position(|kv| kv.metrics().role == Role::Leader).unwrap();
    let victim = (leader + 1) % 3;
    let revoked_at = Instant::now();
    tailnet.set_tags(&format!("revoke-{victim}"), &[]).await.unwrap();
    let victim_id = kvs[victim].id();
    kvs[leader]
        .wait_for(BOUND, |m| m.voters == 2)
        .await
        .unwrap_or_else(|e| panic!("member not removed within {BOUND:?}: {e}"));
    let took = revoked_at.elapsed();
    eprintln!("revoked member removed after {took:?}");
    assert!(kvs[leader].members().iter().all(|m| m.id != victim_id));
    // The cluster keeps working without it.
    kvs[leader].execute(put("after", "revoke")).await.unwrap();
    for kv in kvs {
        let _ = kv.stop(StopMode::Stay).await;
    }
    tailnet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_together_form_exactly_one_cluster_ten_times() {
    for round in 0..10 {
        let tailnet = LocalTailnet::start().await.unwrap();
        let mut nodes = Vec::new();
        for i in 0..5 {
            nodes.push(tagged(&tailnet, &format!("r{round}-n{i}")).await);
        }
        // All at the same moment.
        let starts: Vec<_> = nodes
            .iter()
            .map(|node| {
                let node = node.clone();
                tokio::spawn(async move { start(&node, 5, config()).await })
            })
            .collect();
        let mut kvs = Vec::new();
        for started in starts {
            kvs.push(started.await.expect("start task"));
        }
        for kv in &kvs {
            wait_voters(kv, 5).await;
        }
        let leaders: BTreeSet<Option<u64>> = kvs.iter().map(|kv| kv.metrics().leader).collect();
        assert_eq!(leaders.len(), 1, "round {round}: nodes disagree on the leader: {leaders:?}");
        let voter_sets: BTreeSet<Vec<u64>> =
            kvs.iter().map(|kv| kv.members().iter().map(|m| m.id).collect()).collect();
        assert_eq!(voter_sets.len(), 1, "round {round}: more than one cluster: {voter_sets:?}");
        for kv in kvs {
            kv.stop(StopMode::Stay).await.unwrap();
        }
        tailnet.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_restarted_from_their_state_keep_every_acknowledged_command() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = [
        tagged(&tailnet, "dur-0").await,
        tagged(&tailnet, "dur-1").await,
        tagged(&tailnet, "dur-2").await,
    ];
    let cfg = |i: usize| Config { state_dir: Some(dirs.path().join(format!("n{i}"))), ..config() };
    let kvs = start_together(&nodes, cfg).await;
    let ids: Vec<u64> = kvs.iter().map(|kv| kv.id()).collect();
    wait_voters(&kvs[0], 3).await;
    let mut acknowledged = Vec::new();
    for n in 0..30 {
        let key = format!("k{n}");
        kvs[n % 3].execute(put(&key, &n.to_string())).await.unwrap();
        acknowledged.push((key, n.to_string()));
    }
    for kv in kvs {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    // With their state, they resume one by one, under their raft ids.
    let mut kvs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        kvs.push(start(node, 1, cfg(i)).await);
    }
    assert_eq!(kvs.iter().map(|kv| kv.id()).collect::<Vec<_>>(), ids);
    wait_voters(&kvs[0], 3).await;
    for (key, value) in &acknowledged {
        let read = kvs[1]
            .read(KvQuery::Get { key: key.clone() }, Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(read, serde_json::json!(value), "{key} lost across a full restart");
    }
    for kv in kvs {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

/// The Chromium binary (Debian's `chromium`, which `.ci/run` installs).
fn chromium() -> std::path::PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "headless Chromium not found at {} (apt-get install chromium, or set CHROMIUM)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_page_shows_the_leader_and_every_member_in_a_browser() {
    let tailnet = LocalTailnet::start().await.unwrap();
    let mut kvs = Vec::new();
    for i in 0..3 {
        let node = tagged(&tailnet, &format!("watch-{i}")).await;
        let config = Config { monitor_localhost_port: Some(0), ..config() };
        kvs.push(start(&node, 1, config).await);
    }
    wait_voters(&kvs[0], 3).await;
    let leader = kvs[0].leader().expect("a leader");
    let port = kvs[1].monitor_localhost_port().expect("localhost monitor");
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("http://127.0.0.1:{port}/"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("Chromium finished within the deadline")
    .expect("Chromium ran");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let leader_name = leader.hostname.clone().expect("leader hostname");
    assert!(
        dom.contains(&format!("<b id=\"leader\">{leader_name} ({})</b>", leader.id)),
        "page does not show the leader {leader_name}: {dom}"
    );
    for i in 0..3 {
        assert!(dom.contains(&format!("watch-{i}")), "page does not list member watch-{i}: {dom}");
    }
    assert!(dom.contains("http-equiv=\"refresh\""), "page does not refresh itself");
    // The JSON and Prometheus views are served too.
    let status = http_get(port, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["leader"], serde_json::json!(leader.id));
    let cluster_id = status["cluster_id"].as_str().unwrap_or_default();
    assert!(
        cluster_id.len() == 32 && cluster_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "/status has no cluster id: {status}"
    );
    let metrics = http_get(port, "/metrics").await;
    assert!(metrics.contains("tsconsensus_voters 3"), "{metrics}");
    for kv in kvs {
        kv.stop(StopMode::Stay).await.unwrap();
    }
    tailnet.stop().await;
}

async fn http_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}
