//! The `tsconsensus` binary end to end against an in-process cluster
//! (three nodes on the in-memory network, each with a state directory and
//! an admin endpoint on 127.0.0.1): every command, its output, its exit
//! status, and the messages of its refusals.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use consensus::{Config, Consensus, Consistency, Role};
use test_support::cluster::{MemCluster, Tailnet, start_node};
use test_support::{Counter, fast_config};
use ts_transport::MemNetwork;

const TAG: &str = "tag:ops";
const WAIT: Duration = Duration::from_secs(20);

fn tailnet(n: usize) -> Tailnet {
    Tailnet::with_names(TAG, 7, (0..n).map(|i| (format!("s{i}"), format!("ops-{i}"))))
}

/// The cluster, with a state directory per node.
type Cluster = MemCluster<Counter>;

fn config(dir: &Path) -> Config {
    Config { admin_port: Some(0), state_dir: Some(dir.to_owned()), ..fast_config() }
}

async fn start_cluster(n: usize) -> Cluster {
    MemCluster::start_durable(tailnet(n), |_, dir| config(dir)).await
}

/// Starts node `i` of `n` again on its state directory.
async fn start(net: &MemNetwork, i: usize, n: usize, dir: &Path) -> Consensus<Counter> {
    let tailnet = tailnet(n);
    start_node(net, &tailnet, i, tailnet.discovery(i), Counter::default(), n, config(dir))
        .await
        .unwrap_or_else(|e| panic!("node {i}: {e}"))
}

/// Runs the binary with `args` (off the runtime's threads).
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tsconsensus"))
            .args(&args)
            .env_remove("TSCONSENSUS_STATE_DIR")
            .env_remove("TSCONSENSUS_ADMIN_PORT")
            .env_remove("TSCONSENSUS_TOKEN")
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap()
}

/// Runs the binary with `args` and the token in the environment.
async fn with_token(args: &[&str], token: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tsconsensus"))
            .args(&args)
            .env_remove("TSCONSENSUS_STATE_DIR")
            .env_remove("TSCONSENSUS_ADMIN_PORT")
            .env("TSCONSENSUS_TOKEN", token)
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap()
}

/// Runs `tsconsensus --state-dir <dir of node i> args...`.
async fn on(cluster: &Cluster, i: usize, args: &[&str]) -> Output {
    let dir = cluster.dirs[i].to_string_lossy().into_owned();
    let mut all = vec!["--state-dir", &dir];
    all.extend_from_slice(args);
    cli(&all).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}\n{}", stderr(out), stdout(out));
    stdout(out)
}

fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected a refusal: {}", stdout(out));
    stderr(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_end_to_end() {
    let mut cluster = start_cluster(3).await;
    for n in 1..=4 {
        cluster.node(0).execute(n).await.unwrap();
    }
    let leader = cluster.leader();
    let (target, third) = ((leader + 1) % 3, (leader + 2) % 3);

    // status and members, human and JSON.
    let text = ok(&on(&cluster, leader, &["status"]).await);
    assert!(text.contains(&format!("node {} (ops-{leader}", cluster.node(leader).id())), "{text}");
    assert!(text.contains("leader, term") && text.contains("\nready\n"), "{text}");
    assert!(text.contains("members (3):"), "{text}");
    let text = ok(&on(&cluster, third, &["members"]).await);
    for i in 0..3 {
        assert!(text.contains(&format!("ops-{i}")), "{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&on(&cluster, third, &["--json", "members"]).await)).unwrap();
    assert_eq!(json["members"].as_array().unwrap().len(), 3);

    // remove through a follower: the leader refuses, the message says where to go.
    let err = refused(&on(&cluster, third, &["remove", &format!("ops-{target}")]).await);
    assert!(err.contains("refused_by_leader"), "{err}");
    assert!(err.contains(&format!("ops-{leader}")) && err.contains("tsconsensus remove"), "{err}");

    // transfer-leader: on a follower it says to go to the leader; on the leader it moves.
    let err = refused(&on(&cluster, target, &["transfer-leader"]).await);
    assert!(err.contains("not_leader") && err.contains(&format!("ops-{leader}")), "{err}");
    let text = ok(&on(&cluster, leader, &["transfer-leader", &format!("ops-{target}")]).await);
    assert!(text.contains("leadership moved from"), "{text}");
    let target_id = cluster.node(target).id();
    cluster.node(leader).wait_for(WAIT, |m| m.leader == Some(target_id)).await.unwrap();
    assert_eq!(cluster.node(target).metrics().role, Role::Leader);

    // snapshot.
    let text = ok(&on(&cluster, third, &["snapshot"]).await);
    assert!(text.starts_with("snapshot built at index"), "{text}");

    // backup: a private file, a valid backup.
    let file = cluster.temp_dir().join("sum.backup");
    let file_arg = file.to_string_lossy().into_owned();
    let text = ok(&on(&cluster, third, &["backup", &file_arg]).await);
    assert!(text.contains("written to") && !text.contains("note:"), "{text}");
    let bytes = std::fs::read(&file).unwrap();
    let info = consensus::admin::backup_info(&bytes).unwrap();
    assert!(info.linearizable);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // restore on a healthy cluster is refused and says why.
    let err = refused(&on(&cluster, third, &["restore", &file_arg]).await);
    assert!(err.contains("healthy_cluster") && err.contains("--force"), "{err}");

    // Quorum lost for good: restore on the survivor, restart it.
    cluster.stop(leader).await;
    cluster.stop(target).await;
    let text = ok(&on(&cluster, third, &["restore", &file_arg]).await);
    assert!(text.contains("restart this node"), "{text}");
    let old_cluster = cluster.node(third).metrics();
    cluster.stop(third).await;
    let node = start(&cluster.net, third, 3, &cluster.dirs[third]).await;
    let m = node.wait_for(WAIT, |m| m.role == Role::Leader).await.unwrap();
    assert_ne!(m.id, old_cluster.id, "a new incarnation");
    assert_eq!((m.voters, m.learners), (1, 0));
    assert_eq!(node.read((), Consistency::Linearizable).await.unwrap(), 10);
    let text = ok(&on(&cluster, third, &["status"]).await);
    assert!(text.contains("members (1):"), "{text}");
    cluster.nodes[third] = Some(node);
    cluster.stop(third).await;

    // Offline: refused for a member's state without --force; then staged.
    let err = refused(&on(&cluster, leader, &["restore", "--offline", &file_arg]).await);
    assert!(err.contains("--force") && err.contains("holds the state of node"), "{err}");
    let text = ok(&on(&cluster, leader, &["restore", "--offline", "--force", &file_arg]).await);
    assert!(text.contains("staged in"), "{text}");
    assert!(cluster.dirs[leader].join("restore.pending").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_what_is_wrong_with_how_it_was_called() {
    let cluster = start_cluster(1).await;
    let err = refused(&cli(&["status"]).await);
    assert!(err.contains("--state-dir"), "{err}");
    let err = refused(&cli(&["--state-dir", "/nonexistent/dir", "status"]).await);
    assert!(err.contains("/nonexistent/dir/admin.port"), "{err}");
    let port = cluster.node(0).admin_port().unwrap().to_string();
    // The token is never an argument (ps shows arguments to every user).
    let usage = cli(&["--port", &port, "--token", "x", "status"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    // A wrong token: the node cannot prove it knows it, and is not sent it.
    let err = refused(&with_token(&["--port", &port, "status"], "wrong").await);
    assert!(err.contains("refusing to send the admin token"), "{err}");
    // The right token through the environment works.
    let token = std::fs::read_to_string(cluster.dirs[0].join("admin.token")).unwrap();
    let out = with_token(&["--port", &port, "members"], token.trim()).await;
    assert!(ok(&out).contains("members (1):"));
    let err = refused(&on(&cluster, 0, &["remove", "nobody"]).await);
    assert!(err.contains("no_such_member") && err.contains("ops-0"), "{err}");
    let err = refused(&on(&cluster, 0, &["restore", "/nonexistent/file"]).await);
    assert!(err.contains("/nonexistent/file"), "{err}");
    let junk = cluster.temp_dir().join("junk");
    std::fs::write(&junk, b"not a backup").unwrap();
    let err = refused(&on(&cluster, 0, &["restore", &junk.to_string_lossy()]).await);
    assert!(err.contains("not a tsconsensus backup"), "{err}");
    let usage = cli(&["frobnicate"]).await;
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

/// A node that is down leaves admin.port and admin.token behind; another
/// program may listen on that port. The tool must not hand it the token:
/// the endpoint has to prove it knows the token first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_not_sent_to_a_program_squatting_the_port() {
    use std::net::TcpListener;
    let dir = tempfile::tempdir().unwrap();
    let token = "ab".repeat(32);
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    std::fs::write(dir.path().join("admin.port"), format!("{port}\n")).unwrap();
    // It answers 200 {} to everything and keeps what it was sent.
    let heard = std::thread::spawn(move || {
        let mut heard = Vec::new();
        squatter.set_nonblocking(false).unwrap();
        let (mut stream, _) = squatter.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    heard.extend_from_slice(&buf[..n]);
                    if heard.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                        );
                    }
                }
            }
        }
        String::from_utf8_lossy(&heard).into_owned()
    });
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = cli(&["--state-dir", &dir_arg, "status"]).await;
    let heard = tokio::task::spawn_blocking(move || heard.join().unwrap()).await.unwrap();
    assert!(!heard.contains(&token), "the squatter was sent the token: {heard}");
    let err = refused(&out);
    assert!(err.contains("refusing to send the admin token"), "{err}");
}
