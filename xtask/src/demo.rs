//! `cargo xtask demo`: a local tailnet, three KV nodes as separate
//! processes, writes and reads through different nodes, the leader killed
//! and replaced, and the old leader back and caught up, told as it happens.
//!
//! Every process it starts is killed when it ends, however it ends: the
//! guards kill them on return and on panic, the tailnet and the nodes exit
//! when their stdin (a pipe from here) closes, and Ctrl-C reaches the whole
//! foreground process group.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Result, TAILNET_ENV, cargo, run, target_dir, workspace_root};

const TAG: &str = "tag:kv";
const NODES: usize = 3;

/// Kills its child when dropped.
struct Guard {
    name: String,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guard {
    fn spawn(name: &str, command: &mut Command) -> Result<Guard> {
        let child = command.spawn().map_err(|e| format!("start {name}: {e}"))?;
        Ok(Guard { name: name.to_owned(), child })
    }
}

struct Node {
    hostname: String,
    local_port: u16,
    monitor_port: u16,
    state_dir: PathBuf,
    process: Option<Guard>,
}

fn say(text: &str) {
    eprintln!("\n\x1b[1m▶ {text}\x1b[0m");
}

/// One line to a node's line interface, one JSON line back.
fn ask(port: u16, line: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(40))).map_err(|e| e.to_string())?;
    stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("answer from 127.0.0.1:{port}: {e}"))?;
    Ok(answer.trim().to_owned())
}

/// Waits up to `limit` for `check` to succeed.
fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{what}: not done within {limit:?}"))
}

/// A plain HTTP/1.1 request to the tailnet's admin API.
fn admin(admin_addr: &str, method: &str, path: &str, body: &str) -> Result<String> {
    let mut stream = TcpStream::connect(admin_addr).map_err(|e| format!("admin API: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response).map_err(|e| e.to_string())?;
    Ok(response)
}

fn json_field<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let start = line.find(prefix)? + prefix.len();
    let rest = &line[start..];
    Some(&rest[..rest.find('"')?])
}

pub(crate) fn demo() -> Result {
    let root = workspace_root();
    say("Building the local tailnet and the KV example");
    let tailnet_bin = target_dir().join("xtask/tailnet");
    run(
        "build local tailnet",
        Command::new("go")
            .current_dir(root.join("xtask/tailnet"))
            .args(["build", "-trimpath", "-mod=readonly", "-o"])
            .arg(&tailnet_bin)
            .arg("."),
    )?;
    run(
        "build kv example",
        cargo().args([
            "build",
            "--package",
            "consensus",
            "--example",
            "kv",
            "--features",
            "tailscale",
        ]),
    )?;
    let kv_bin = target_dir().join("debug/examples/kv");
    let work = std::env::temp_dir().join(format!("tsconsensus-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    say(
        "Starting a local tailnet: control server, DERP and STUN on 127.0.0.1 (no account, no internet)",
    );
    let mut tailnet = Guard::spawn(
        "tailnet",
        Command::new(&tailnet_bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let mut ready = String::new();
    BufReader::new(tailnet.child.stdout.take().ok_or("tailnet stdout")?)
        .read_line(&mut ready)
        .map_err(|e| format!("tailnet: {e}"))?;
    let control_url = json_field(&ready, "\"control_url\":\"")
        .ok_or(format!("tailnet said {ready:?}"))?
        .to_owned();
    let admin_addr = control_url.trim_start_matches("http://").to_owned();
    eprintln!("  control server at {control_url}");

    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            hostname: format!("kv-{}", i + 1),
            local_port: 17_001 + i as u16,
            monitor_port: 18_001 + i as u16,
            state_dir: work.join(format!("kv-{}", i + 1)),
            process: None,
        })
        .collect();
    say(&format!(
        "Starting {NODES} KV nodes as separate processes, each a Tailscale node tagged {TAG}"
    ));
    for node in &mut nodes {
        start_node(&kv_bin, &control_url, node, &work)?;
        tag(&admin_addr, &node.hostname)?;
        eprintln!("  {} started (line interface 127.0.0.1:{})", node.hostname, node.local_port);
    }
    wait("three voters and a leader", Duration::from_secs(120), || {
        nodes.iter().all(|n| {
            ask(n.local_port, "status")
                .is_ok_and(|s| s.contains("\"voters\":3") && s.contains("\"leader\":"))
        })
    })?;
    let leader = find_leader(&nodes)?;
    eprintln!("  the nodes formed one cluster; {} leads", nodes[leader].hostname);

    say("Writing through one node, reading through the others");
    let mut acknowledged = Vec::new();
    for n in 1..=5 {
        let writer = n % NODES;
        let answer = ask(nodes[writer].local_port, &format!("put color{n} shade{n}"))?;
        eprintln!("  {} put color{n}=shade{n} → {answer}", nodes[writer].hostname);
        if answer.contains("\"ok\"") {
            acknowledged.push((format!("color{n}"), format!("shade{n}")));
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let answer = ask(node.local_port, "get color1")?;
        eprintln!("  {} get color1 → {answer}", node.hostname);
        if !answer.contains("shade1") {
            return Err(format!("node {i} read {answer} for color1"));
        }
    }
    let cas = ask(nodes[1].local_port, "cas color1 shade1 crimson")?;
    eprintln!("  {} cas color1 shade1→crimson → {cas}", nodes[1].hostname);
    acknowledged.retain(|(k, _)| k != "color1");
    acknowledged.push(("color1".into(), "crimson".into()));

    say(&format!("Killing the leader, {} (kill -9)", nodes[leader].hostname));
    if let Some(mut process) = nodes[leader].process.take() {
        let _ = process.child.kill();
        let _ = process.child.wait();
    }
    let survivors: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
    let killed_at = Instant::now();
    wait("a new leader", Duration::from_secs(60), || {
        survivors.iter().any(|&i| {
            ask(nodes[i].local_port, "status").is_ok_and(|s| s.contains("\"role\":\"leader\""))
        })
    })?;
    let new_leader = find_leader(&nodes)?;
    eprintln!("  {} took over after {:.1?}", nodes[new_leader].hostname, killed_at.elapsed());
    for (key, value) in &acknowledged {
        let answer = ask(nodes[survivors[0]].local_port, &format!("get {key}"))?;
        if !answer.contains(value.as_str()) {
            return Err(format!("acknowledged {key}={value} lost: {answer}"));
        }
    }
    eprintln!("  every acknowledged write is still there ({} keys)", acknowledged.len());
    let answer = ask(nodes[survivors[1]].local_port, "put after-failover yes")?;
    eprintln!("  {} put after-failover=yes → {answer}", nodes[survivors[1]].hostname);

    say(&format!("Restarting {} on its state directory", nodes[leader].hostname));
    start_node(&kv_bin, &control_url, &mut nodes[leader], &work)?;
    let old = nodes[leader].local_port;
    wait("the old leader catching up", Duration::from_secs(120), || {
        ask(old, "get-local after-failover").is_ok_and(|a| a.contains("yes"))
    })?;
    eprintln!(
        "  {} caught up: get-local after-failover → {}",
        nodes[leader].hostname,
        ask(old, "get-local after-failover")?
    );

    say("Done");
    eprintln!(
        "  status page of {}: http://127.0.0.1:{}/ (JSON at /status, Prometheus at /metrics)",
        nodes[0].hostname, nodes[0].monitor_port
    );
    eprintln!("  it stays up for 10 s, then everything is stopped and {} removed", work.display());
    thread::sleep(Duration::from_secs(10));
    for node in &mut nodes {
        node.process.take();
    }
    drop(tailnet);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn start_node(kv_bin: &Path, control_url: &str, node: &mut Node, work: &Path) -> Result {
    let log = std::fs::File::create(work.join(format!("{}.log", node.hostname)))
        .map_err(|e| e.to_string())?;
    let mut command = Command::new(kv_bin);
    command
        .args([
            "--hostname",
            &node.hostname,
            "--control-url",
            control_url,
            "--tag",
            TAG,
            "--expected-size",
            "3",
        ])
        .arg("--state-dir")
        .arg(&node.state_dir)
        .args([
            "--local-port",
            &node.local_port.to_string(),
            "--monitor-local-port",
            &node.monitor_port.to_string(),
        ])
        .arg("--exit-on-stdin-eof")
        .envs(TAILNET_ENV.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
    node.process = Some(Guard::spawn(&node.hostname, &mut command)?);
    Ok(())
}

/// Tags `hostname` once control knows it.
fn tag(admin_addr: &str, hostname: &str) -> Result {
    wait(&format!("{hostname} registering"), Duration::from_secs(60), || {
        admin(admin_addr, "GET", "/__admin/nodes", "")
            .is_ok_and(|r| r.contains(&format!("\"hostname\":\"{hostname}\"")))
    })?;
    let body = format!("{{\"hostname\":\"{hostname}\",\"tags\":[\"{TAG}\"]}}");
    let response = admin(admin_addr, "POST", "/__admin/tags", &body)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("tagging {hostname}: {response}"));
    }
    Ok(())
}

fn find_leader(nodes: &[Node]) -> Result<usize> {
    nodes
        .iter()
        .position(|n| {
            n.process.is_some()
                && ask(n.local_port, "status").is_ok_and(|s| s.contains("\"role\":\"leader\""))
        })
        .ok_or_else(|| "no node reports itself leader".to_owned())
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}
