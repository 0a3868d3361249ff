//! The headscale suite behind `cargo xtask headscale`: the `kv` example
//! against headscale, a real, independent control server, all on 127.0.0.1.
//!
//! One run:
//!
//! 1. starts headscale (built by xtask from the Go module proxy) with every
//!    network setting on loopback: the API and the embedded DERP (plain
//!    HTTP) on one free port, STUN on another, no remote gRPC, no metrics
//!    listener, no DERP map URL, no logtail, no update checks; sqlite, the
//!    socket and the keys in a temporary directory. The policy gives the
//!    cluster's tag and a parking tag `tagOwners` and lets `tag:kv` nodes
//!    reach each other on the kv example's raft, command and monitor ports
//!    only (what README.md recommends), so a parked node drops out of the
//!    others' netmaps altogether.
//!    A user and a reusable pre-auth key that tags nodes `tag:kv` follow;
//! 2. starts `kv` example processes with `--control-url` and the key
//!    (`TS_AUTHKEY`, read by the `--auth-key` flag), waits until headscale
//!    lists each registered with the tag, then until they form one cluster
//!    (one leader, every node a voter);
//! 3. writes through each node and reads through the others;
//! 4. retags one follower out (`headscale nodes tag -t tag:parked`) and
//!    waits until the leader removed it, writes while it is out, retags it
//!    back and waits until it is a voter again and reads that write;
//! 5. `kill -9`s the leader while a client keeps writing through the
//!    others, waits for a new leader and a write acknowledged after the
//!    kill, restarts the old leader on its state directory and waits until
//!    it is a voter again and reads the last write;
//! 6. checks that every acknowledged write reads back through every node,
//!    and that no write whose outcome is unknown reads back as anything but
//!    its own value or nothing.
//!
//! Every phase is timed. The processes' output is stamped with the run's
//! clock as it arrives, so the report can also say when each node came up
//! on the tailnet, started raft and formed or joined the cluster (these log
//! lines only inform; no check depends on them). Only the kv example's
//! user-facing interface is used: `put`, `get`, `status` and its flags.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::tailnet::OFFLINE_ENV;

/// The cluster's tag, carried by the pre-auth key.
pub const TAG: &str = "tag:kv";
/// The tag a node is moved to to take it out of the cluster. headscale
/// does not untag a tagged node (a tagged node keeps at least one tag), so
/// "untagging" is retagging to a tag the cluster does not use.
pub const PARKED_TAG: &str = "tag:parked";

/// How long headscale may take to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one headscale CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to register, and then to form the cluster.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a membership change (retag out or back) may take to show.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long all the phases together may take (a passing run takes about
/// a minute; `headscale-suite` bounds the whole run at 600 s).
const PHASES_BOUND: Duration = Duration::from_secs(480);
/// How long a node stays retagged out of the cluster.
const PARKED_FOR: Duration = Duration::from_secs(5);
/// How long a failover or a restarted node's catch-up may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a client waits for one answer; above the library's 30 s call
/// deadline, so a call that the node gives up on is answered, not cut.
const CALL_TIMEOUT: Duration = Duration::from_secs(35);
/// How long a `status` call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(100);
/// Longest line read from a node or a log.
const MAX_LINE: usize = 1 << 20;
/// Log lines of the kv example and the library that mark a node's progress
/// at start, with the name the report gives them.
const NODE_MARKERS: &[(&str, &str)] = &[
    ("is on the tailnet", "on tailnet"),
    ("waiting until this node carries", "waits for tag"),
    ("raft node started", "raft started"),
    ("forms it", "formed cluster"),
    ("joined the cluster", "joined"),
    ("resuming from stored state", "resumed"),
    ("ready; line interface", "ready"),
];

/// What one run uses.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// The headscale binary.
    pub headscale_bin: PathBuf,
    /// The `kv` example binary.
    pub kv_bin: PathBuf,
    /// Nodes in the cluster (at least 3).
    pub nodes: usize,
    /// Keep the work directory (logs, state) here instead of a temporary one.
    pub keep_dir: Option<PathBuf>,
    /// headscale's `tuning.batch_change_delay` and
    /// `tuning.node_store_batch_timeout` (defaults 800 ms and 500 ms): how
    /// long it gathers changes before it sends netmaps. `None` keeps its
    /// defaults, as CI does.
    pub batch_delay: Option<Duration>,
}

/// The run's clock: every timestamp in the logs and the report is time
/// since the run started.
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Clock {
        Clock { start: Instant::now(), wall: SystemTime::now() }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A wall-clock time (from headscale, on this machine) on the run's
    /// clock; times before the start count as the start.
    fn of_wall(&self, time: SystemTime) -> Duration {
        time.duration_since(self.wall).unwrap_or_default()
    }
}

/// Marker lines seen in a process's output, with when they arrived.
type Events = Arc<Mutex<Vec<(Duration, &'static str)>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one line of at most `MAX_LINE` bytes (the rest of a longer line is
/// dropped); `None` at the end of the stream.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (chunk, used, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(end) => (&buf[..end], end + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Copies `source` line by line into `file` (appending), each line stamped
/// with the run's clock, and records the first arrival of each of
/// `markers` in `events`.
fn pump(
    source: impl AsyncRead + Unpin + Send + 'static,
    file: PathBuf,
    clock: Clock,
    markers: &'static [(&'static str, &'static str)],
    events: Events,
) {
    tokio::spawn(async move {
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&file).ok();
        let mut reader = BufReader::new(source);
        while let Ok(Some(line)) = read_line(&mut reader).await {
            let at = clock.now();
            if let Some(out) = out.as_mut() {
                let _ = writeln!(out, "[{:9.3}] {line}", at.as_secs_f64());
            }
            for (pattern, name) in markers {
                if line.contains(pattern) {
                    lock(&events).push((at, name));
                }
            }
        }
    });
}

/// A free TCP port on 127.0.0.1 (another process could take it before it
/// is used; headscale then fails to start and is started again).
fn free_tcp_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free TCP port: {e}"))
}

/// A free UDP port on 127.0.0.1, for STUN.
fn free_udp_port() -> Result<u16, String> {
    std::net::UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free UDP port: {e}"))
}

/// A YAML double-quoted string.
fn yaml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// headscale's configuration: everything on 127.0.0.1, nothing that
/// reaches the internet (checked against v0.28.0's `config-example.yaml`
/// and the defaults in `hscontrol/types/config.go`).
fn config(dir: &Path, port: u16, stun_port: u16, batch_delay: Option<Duration>) -> String {
    let path = |name: &str| yaml_string(&dir.join(name).display().to_string());
    let tuning = batch_delay.map_or(String::new(), |delay| {
        let ms = delay.as_millis();
        format!("tuning:\n  batch_change_delay: {ms}ms\n  node_store_batch_timeout: {ms}ms\n")
    });
    format!(
        r#"# Written by the tsconsensus-rs headscale suite: loopback only, offline.
server_url: http://127.0.0.1:{port}
listen_addr: 127.0.0.1:{port}
# Remote gRPC starts only with TLS or grpc_allow_insecure; the CLI uses the socket.
grpc_listen_addr: 127.0.0.1:0
grpc_allow_insecure: false
# Empty: no metrics and debug listener.
metrics_listen_addr: ""
# Else every CLI call asks GitHub for the latest release.
disable_check_updates: true
noise:
  private_key_path: {noise}
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    # The embedded DERP, on listen_addr at /derp, plain HTTP: the nodes run
    # with TS_DEBUG_USE_DERP_HTTP=1.
    enabled: true
    region_id: 999
    region_code: headscale
    region_name: headscale on 127.0.0.1
    verify_clients: true
    stun_listen_addr: 127.0.0.1:{stun_port}
    private_key_path: {derp_key}
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
    # No IPv6 address for the DERP node ("" would make every node try one).
    ipv6: none
  # No DERP map from controlplane.tailscale.com, and no refreshing it.
  urls: []
  paths: []
  auto_update_enabled: false
ephemeral_node_inactivity_timeout: 120s
database:
  type: sqlite
  sqlite:
    path: {db}
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: {policy}
dns:
  magic_dns: true
  base_domain: headscale.test
  # No nameservers pushed to the nodes.
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {socket}
unix_socket_permission: "0770"
# Tells the nodes not to upload logs (Debug.DisableLogTail).
logtail:
  enabled: false
taildrop:
  enabled: false
{tuning}"#,
        noise = path("noise_private.key"),
        derp_key = path("derp_server_private.key"),
        db = path("db.sqlite"),
        policy = path("policy.hujson"),
        socket = path("headscale.sock"),
    )
}

/// The policy: both tags exist (`nodes tag` accepts only tags in
/// `tagOwners`; an empty owner list leaves them to the admin), and nodes
/// tagged `tag:kv` may reach each other on the raft (6270), command (6271)
/// and monitor (8081) ports, the kv example's defaults; nothing else is
/// allowed.
fn policy() -> String {
    format!(
        r#"{{
  "tagOwners": {{ "{TAG}": [], "{PARKED_TAG}": [] }},
  "acls": [ {{ "action": "accept", "src": ["{TAG}"], "dst": ["{TAG}:6270,6271,8081"] }} ]
}}
"#
    )
}

/// A node as headscale lists it.
#[derive(Clone, Debug)]
struct HeadscaleNode {
    id: u64,
    name: String,
    tags: Vec<String>,
    online: bool,
    created: Option<SystemTime>,
}

impl HeadscaleNode {
    fn parse(value: &Value) -> Result<HeadscaleNode, String> {
        let id = value["id"].as_u64().ok_or_else(|| format!("node without an id: {value}"))?;
        let name = value["name"].as_str().ok_or_else(|| format!("node {id} without a name"))?;
        let tags = match &value["tags"] {
            Value::Null => Vec::new(),
            Value::Array(tags) => tags
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("node {id} has tags that are not strings"))?,
            other => return Err(format!("node {id} has tags {other}")),
        };
        let created = value["created_at"]["seconds"].as_u64().map(|seconds| {
            let nanos = value["created_at"]["nanos"].as_u64().unwrap_or(0).min(999_999_999);
            UNIX_EPOCH + Duration::new(seconds, nanos as u32)
        });
        Ok(HeadscaleNode {
            id,
            name: name.to_owned(),
            tags,
            online: value["online"].as_bool().unwrap_or(false),
            created,
        })
    }
}

/// A running headscale.
struct Headscale {
    bin: PathBuf,
    config: PathBuf,
    url: String,
    log: PathBuf,
    child: Child,
}

impl Headscale {
    /// Writes the configuration and policy into `dir` and starts headscale,
    /// its output going to `log`; tries again with other ports if it exits
    /// before it is healthy.
    async fn start(
        bin: &Path,
        dir: &Path,
        log: &Path,
        batch_delay: Option<Duration>,
        clock: Clock,
    ) -> Result<Headscale, String> {
        let socket = dir.join("headscale.sock");
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 100 {
            return Err(format!("{} is too long for a unix socket path", socket.display()));
        }
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))
        };
        write("policy.hujson", policy())?;
        let mut last = String::new();
        for _ in 0..3 {
            let (port, stun_port) = (free_tcp_port()?, free_udp_port()?);
            write("config.yaml", config(dir, port, stun_port, batch_delay))?;
            let config = dir.join("config.yaml");
            let mut command = Command::new(bin);
            command
                .arg("serve")
                .arg("-c")
                .arg(&config)
                .env("HEADSCALE_DISABLE_CHECK_UPDATES", "true")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            // SAFETY: prctl(2) is async-signal-safe and touches only the
            // child. If this process dies without dropping the child (kill
            // -9), headscale gets SIGTERM instead of running on.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = command.spawn().map_err(|e| format!("start {}: {e}", bin.display()))?;
            let events = Events::default();
            if let Some(out) = child.stdout.take() {
                pump(out, log.to_owned(), clock, &[], events.clone());
            }
            if let Some(err) = child.stderr.take() {
                pump(err, log.to_owned(), clock, &[], events);
            }
            let url = format!("http://127.0.0.1:{port}");
            let mut headscale =
                Headscale { bin: bin.to_owned(), config, url, log: log.to_owned(), child };
            match headscale.wait_healthy().await {
                Ok(()) => return Ok(headscale),
                Err(why) => {
                    last = why;
                    headscale.stop().await;
                }
            }
        }
        Err(format!("headscale did not start: {last}"))
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let addr = self.url.trim_start_matches("http://").to_owned();
        loop {
            let attempt = async {
                let mut stream = TcpStream::connect(&addr).await.ok()?;
                let request =
                    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut reader = BufReader::new(stream);
                let status = read_line(&mut reader).await.ok()??;
                Some(status.starts_with("HTTP/1.1 200"))
            };
            if tokio::time::timeout(Duration::from_secs(2), attempt).await == Ok(Some(true)) {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                return Err(format!(
                    "no healthy answer from {} ({}); log {}",
                    self.url,
                    if exited { "it exited" } else { "timed out" },
                    self.log.display()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One CLI call (`headscale -c config -o json ARGS`), over the unix
    /// socket; its JSON output.
    async fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let output = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(["-o", "json"])
            .args(args)
            .env("HEADSCALE_DISABLE_CHECK_UPDATES", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let what = format!("headscale {}", args.join(" "));
        let output = tokio::time::timeout(CLI_TIMEOUT, output)
            .await
            .map_err(|_| format!("{what}: no answer within {CLI_TIMEOUT:?}"))?
            .map_err(|e| format!("{what}: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{what} failed ({}): {} {}",
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("{what} printed {stdout:?}: {e}"))
    }

    /// Creates a user and a reusable pre-auth key (an hour, not ephemeral)
    /// that tags every node registering with it `tags`; the key.
    async fn tagged_key(&self, user: &str, tags: &str) -> Result<String, String> {
        let created = self.cli(&["users", "create", user]).await?;
        let id = created["id"].as_u64().ok_or_else(|| format!("users create said {created}"))?;
        let key = self
            .cli(&[
                "preauthkeys",
                "create",
                "--user",
                &id.to_string(),
                "--reusable",
                "--expiration",
                "1h",
                "--tags",
                tags,
            ])
            .await?;
        let key_tags = &key["acl_tags"];
        if key_tags.as_array().is_none_or(|t| t.iter().all(|t| t != TAG)) {
            return Err(format!("the pre-auth key does not carry {TAG}: {key_tags}"));
        }
        key["key"].as_str().map(str::to_owned).ok_or_else(|| "preauthkeys create: no key".into())
    }

    async fn nodes(&self) -> Result<Vec<HeadscaleNode>, String> {
        match self.cli(&["nodes", "list"]).await? {
            Value::Null => Ok(Vec::new()),
            Value::Array(nodes) => nodes.iter().map(HeadscaleNode::parse).collect(),
            other => Err(format!("nodes list said {other}")),
        }
    }

    /// Replaces the tags of node `id`.
    async fn set_tags(&self, id: u64, tags: &str) -> Result<(), String> {
        let node = self.cli(&["nodes", "tag", "-i", &id.to_string(), "-t", tags]).await?;
        let now: Vec<&str> =
            node["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if now.join(",") != tags {
            return Err(format!("nodes tag: node {id} has tags {now:?}, not {tags}"));
        }
        Ok(())
    }

    /// Stops headscale (SIGTERM, then SIGKILL after 5 s).
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a child this process has not reaped, so
            // the pid is still ours.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// One kv process.
struct KvNode {
    hostname: String,
    local_port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// When it was last started.
    spawned: Duration,
    /// Marker lines of its last start.
    events: Events,
    /// Its headscale node id, which is also its stable tailnet id.
    headscale_id: Option<u64>,
}

impl KvNode {
    fn stable_id(&self) -> String {
        self.headscale_id.map(|id| id.to_string()).unwrap_or_default()
    }
}

/// A node's `status` answer, the parts the suite reads.
#[derive(Clone, Debug)]
struct Status {
    id: u64,
    role: String,
    term: u64,
    leader: Option<u64>,
    voters: u64,
    learners: u64,
    /// (stable id, is a voter) of each member.
    members: Vec<(String, bool)>,
}

impl Status {
    fn parse(value: &Value) -> Result<Status, String> {
        let m = &value["metrics"];
        let number = |v: &Value, what: &str| {
            v.as_u64().ok_or_else(|| format!("status without {what}: {value}"))
        };
        let members = value["members"]
            .as_array()
            .ok_or_else(|| format!("status without members: {value}"))?
            .iter()
            .map(|member| {
                let id = member["stable_id"].as_str()?;
                Some((id.to_owned(), member["role"] == "voter"))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("status with a malformed member: {value}"))?;
        Ok(Status {
            id: number(&m["id"], "an id")?,
            role: m["role"].as_str().unwrap_or_default().to_owned(),
            term: number(&m["term"], "a term")?,
            leader: m["leader"].as_u64(),
            voters: number(&m["voters"], "voters")?,
            learners: number(&m["learners"], "learners")?,
            members,
        })
    }

    fn short(&self) -> String {
        format!(
            "{} term {} leader {} voters {} learners {}",
            self.role,
            self.term,
            self.leader.map_or("none".to_owned(), |l| l.to_string()),
            self.voters,
            self.learners
        )
    }
}

/// One line to a node's line interface, one JSON answer; `{"ok": v}` gives
/// `v`, `{"error": e}` gives `e`.
async fn call(port: u16, line: &str, timeout: Duration) -> Result<Value, String> {
    let exchange = async {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let answer = read_line(&mut reader)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "connection closed".to_owned())?;
        serde_json::from_str::<Value>(&answer).map_err(|e| format!("bad answer {answer:?}: {e}"))
    };
    let mut answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer to {line:?} within {timeout:?}"))??;
    match answer.get_mut("ok") {
        Some(value) => Ok(value.take()),
        None => Err(answer["error"].as_str().unwrap_or("malformed answer").to_owned()),
    }
}

async fn status(port: u16) -> Result<Status, String> {
    Status::parse(&call(port, "status", STATUS_TIMEOUT).await?)
}

/// Reads `key` (linearizable) through the node on `port`.
async fn get(port: u16, key: &str) -> Result<Option<String>, String> {
    match call(port, &format!("get {key}"), CALL_TIMEOUT).await? {
        Value::Null => Ok(None),
        Value::String(value) => Ok(Some(value)),
        other => Err(format!("get {key} answered {other}")),
    }
}

/// One write's record.
#[derive(Clone, Debug)]
struct WriteRecord {
    key: String,
    value: String,
    sent: Duration,
    done: Duration,
    acknowledged: bool,
    /// The error answer, if any.
    error: Option<String>,
}

/// One line on the writes sent around a kill: how many were acknowledged
/// and how fast, how many failed, after how long and why.
fn failover_summary(writes: &[WriteRecord]) -> String {
    let took = |w: &&WriteRecord| w.done.saturating_sub(w.sent);
    let (ok, failed): (Vec<&WriteRecord>, Vec<&WriteRecord>) =
        writes.iter().partition(|w| w.acknowledged);
    let range = |set: &[&WriteRecord]| {
        let min = set.iter().map(took).min().unwrap_or_default();
        let max = set.iter().map(took).max().unwrap_or_default();
        format!("{:.2}–{:.2} s", min.as_secs_f64(), max.as_secs_f64())
    };
    let mut line = format!(
        "writes around the kill (one every 100 ms through the survivors): {} sent, {} acknowledged in {}",
        writes.len(),
        ok.len(),
        range(&ok)
    );
    if !failed.is_empty() {
        let mut errors: Vec<&str> = failed.iter().filter_map(|w| w.error.as_deref()).collect();
        errors.sort_unstable();
        errors.dedup();
        let _ = write!(
            line,
            ", {} failed (outcome unknown) after {}: {}",
            failed.len(),
            range(&failed),
            errors.iter().take(3).map(|e| shorten(e, 160)).collect::<Vec<_>>().join(" | ")
        );
    }
    line
}

/// `text` cut to at most `max` characters.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The timings of one run.
#[derive(Clone, Debug, Default)]
struct Timings {
    headscale_ready: Option<Duration>,
    key_created: Option<Duration>,
    /// Per node: start of the process → headscale's registration time.
    registered: Vec<Option<Duration>>,
    /// The last registration → one cluster, one leader, every node a voter.
    formed_after_last_registration: Option<Duration>,
    /// The start of the processes → formed.
    formed_after_start: Option<Duration>,
    /// Writes, reads, time taken.
    write_read: Option<(usize, usize, Duration)>,
    /// `nodes tag` started → the leader removed the node; the CLI call's
    /// own share.
    retag_out: Option<(Duration, Duration)>,
    /// `nodes tag` started → a voter again, caught up; the CLI call's share.
    retag_back: Option<(Duration, Duration)>,
    /// The leader's term before and after the retag back (a change means
    /// the returning node forced elections).
    retag_back_terms: Option<(u64, u64)>,
    new_leader: Option<Duration>,
    write_after_kill: Option<Duration>,
    /// What happened to the writes sent around the kill.
    failover_writes: Option<String>,
    restarted_caught_up: Option<Duration>,
    /// Each start of each node: its marker lines relative to its start.
    timelines: Vec<String>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl Timings {
    /// The report: one line per measured phase, then each node's starts.
    fn render(&self, nodes: &[KvNode]) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("headscale ready (start → /health)".into(), secs(self.headscale_ready)),
            ("user and tagged pre-auth key created".into(), secs(self.key_created)),
        ];
        for (node, at) in nodes.iter().zip(&self.registered) {
            rows.push((
                format!("{} registered tagged (process start → in headscale)", node.hostname),
                secs(*at),
            ));
        }
        rows.push((
            "formed: last registration → one leader, all voters".into(),
            secs(self.formed_after_last_registration),
        ));
        rows.push(("formed: processes started → formed".into(), secs(self.formed_after_start)));
        if let Some((writes, reads, took)) = self.write_read {
            rows.push((
                format!("{writes} writes, {reads} reads through different nodes"),
                secs(Some(took)),
            ));
        }
        for (what, timing) in [
            ("retag out: nodes tag → the leader removed it", self.retag_out),
            ("retag back: nodes tag → a voter, caught up", self.retag_back),
        ] {
            let cli = timing.map_or(String::new(), |(_, cli)| {
                format!(" (the CLI call: {:.2} s)", cli.as_secs_f64())
            });
            rows.push((what.into(), format!("{}{cli}", secs(timing.map(|(t, _)| t)))));
        }
        if let Some((before, after)) = self.retag_back_terms {
            let what = if before == after {
                "no election"
            } else {
                "elections: the returning node disrupted the cluster"
            };
            rows.push((
                "retag back: leader's term before → after".into(),
                format!("{before} → {after} ({what})"),
            ));
        }
        rows.push(("kill -9 of the leader → a new leader".into(), secs(self.new_leader)));
        rows.push((
            "kill -9 of the leader → a later write acknowledged".into(),
            secs(self.write_after_kill),
        ));
        rows.push((
            "old leader restarted → a voter, caught up".into(),
            secs(self.restarted_caught_up),
        ));
        let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, value) in rows {
            let pad = width - label.chars().count();
            let _ = writeln!(out, "  {label}{:pad$}  {value}", "");
        }
        if let Some(summary) = &self.failover_writes {
            let _ = writeln!(out, "  {summary}");
        }
        if !self.timelines.is_empty() {
            let _ = writeln!(out, "  each start of each node, from its process start (its log):");
            for line in &self.timelines {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }
}

/// One run.
struct Suite {
    options: SuiteOptions,
    clock: Clock,
    work: PathBuf,
    headscale: Headscale,
    key: String,
    nodes: Vec<KvNode>,
    timings: Timings,
    /// Every write, in the order sent.
    writes: Vec<WriteRecord>,
}

/// Runs the suite once; the report on success, or what failed with the
/// timings so far and the logs.
pub async fn run(options: SuiteOptions) -> Result<String, String> {
    let clock = Clock::new();
    let temp = tempfile::Builder::new()
        .prefix("headscale-suite-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let work = match &options.keep_dir {
        Some(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    // headscale's own files go in a short path: the socket's path is
    // limited to 108 bytes.
    let headscale_dir = temp.path().join("hs");
    std::fs::create_dir_all(&headscale_dir).map_err(|e| format!("create headscale dir: {e}"))?;
    let log = work.join("headscale.log");
    let headscale =
        Headscale::start(&options.headscale_bin, &headscale_dir, &log, options.batch_delay, clock)
            .await?;
    let headscale_ready = clock.now();
    let nodes = (0..options.nodes)
        .map(|i| {
            Ok(KvNode {
                hostname: format!("kv-{}", i + 1),
                local_port: free_tcp_port()?,
                state_dir: work.join(format!("kv-{}", i + 1)),
                log: work.join(format!("kv-{}.log", i + 1)),
                child: None,
                spawned: Duration::ZERO,
                events: Events::default(),
                headscale_id: None,
            })
        })
        .collect::<Result<Vec<_>, String>>();
    let nodes = match nodes {
        Ok(nodes) => nodes,
        Err(why) => {
            headscale.stop().await;
            return Err(why);
        }
    };
    let mut suite = Suite {
        options,
        clock,
        work,
        headscale,
        key: String::new(),
        nodes,
        timings: Timings { headscale_ready: Some(headscale_ready), ..Timings::default() },
        writes: Vec::new(),
    };
    let batching = suite.options.batch_delay.map_or_else(
        || "default netmap batching (800 ms / 500 ms)".to_owned(),
        |d| format!("netmap batching {} ms", d.as_millis()),
    );
    suite.note(&format!("headscale {} ready, {batching}", suite.headscale.url));
    // Within the caller's bound, so that a run that overruns still ends
    // with the failure report and the logs.
    let outcome = tokio::time::timeout(PHASES_BOUND, suite.phases())
        .await
        .unwrap_or_else(|_| Err(format!("the phases did not end within {PHASES_BOUND:?}")));
    suite.note(if outcome.is_ok() { "passed" } else { "FAILED" });
    let report = suite.timings.render(&suite.nodes);
    let result = match outcome {
        Ok(()) => Ok(report),
        Err(why) => {
            Err(format!("{why}\n\ntimings so far:\n{report}\n{}", suite.logs_for_failure()))
        }
    };
    suite.shutdown().await;
    drop(temp);
    result
}

impl Suite {
    async fn phases(&mut self) -> Result<(), String> {
        let started = self.clock.now();
        self.key = self.headscale.tagged_key("kv-suite", TAG).await?;
        self.timings.key_created = Some(self.clock.now() - started);
        self.note(&format!("user and reusable pre-auth key tagged {TAG} created"));
        self.register_and_form().await?;
        self.write_and_read().await?;
        self.retag().await?;
        self.kill_and_restart_leader().await?;
        self.check_every_write().await?;
        let writes = std::fs::File::create(self.work.join("writes.txt")).map(|mut file| {
            for w in &self.writes {
                let _ = writeln!(file, "{w:?}");
            }
        });
        if let Err(err) = writes {
            self.note(&format!("cannot write writes.txt: {err}"));
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let clock = self.clock;
        let node = &mut self.nodes[i];
        let mut child = Command::new(&self.options.kv_bin)
            .args(["--hostname", &node.hostname, "--control-url", &self.headscale.url])
            .args(["--tag", TAG, "--expected-size", &self.options.nodes.to_string()])
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(["--local-port", &node.local_port.to_string()])
            .arg("--exit-on-stdin-eof")
            // The key, as the --auth-key flag reads it from the environment.
            .env("TS_AUTHKEY", &self.key)
            // headscale's embedded DERP speaks plain HTTP here.
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .envs(OFFLINE_ENV.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("HEADSCALE_SUITE_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".to_owned()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.options.kv_bin.display()))?;
        node.spawned = clock.now();
        node.events = Events::default();
        if let Some(err) = child.stderr.take() {
            pump(err, node.log.clone(), clock, NODE_MARKERS, node.events.clone());
        }
        node.child = Some(child);
        Ok(())
    }

    async fn register_and_form(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        for i in 0..n {
            self.spawn(i)?;
        }
        self.note(&format!("started {n} kv processes with --control-url and the key"));
        let start = self.nodes[0].spawned;
        self.timings.registered = vec![None; n];
        // Registered: headscale lists every node, tagged by its key, online
        // (holding its map session). The time is headscale's registration
        // time.
        let deadline = Instant::now() + FORM_TIMEOUT;
        let mut registered_at = vec![None; n];
        loop {
            let listed = self.headscale.nodes().await?;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                let Some(entry) = listed.iter().find(|e| e.name == node.hostname) else {
                    continue;
                };
                if entry.tags != [TAG] {
                    return Err(format!(
                        "{} registered with tags {:?}, not the key's [{TAG}]",
                        node.hostname, entry.tags
                    ));
                }
                node.headscale_id = Some(entry.id);
                if !entry.online {
                    continue;
                }
                let at = entry.created.map_or_else(|| self.clock.now(), |t| self.clock.of_wall(t));
                registered_at[i] = Some(at);
                self.timings.registered[i] = Some(at.saturating_sub(node.spawned));
            }
            if registered_at.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<&str> = (0..n)
                    .filter(|&i| registered_at[i].is_none())
                    .map(|i| self.nodes[i].hostname.as_str())
                    .collect();
                return Err(format!("not registered within {FORM_TIMEOUT:?}: {missing:?}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let last_registered = registered_at.iter().flatten().max().copied().unwrap_or(start);
        self.note(&format!(
            "all registered tagged {TAG} and online in headscale (the last at {:.3} s)",
            last_registered.as_secs_f64()
        ));
        let all: Vec<usize> = (0..n).collect();
        let formed = self.wait_formed(&all, FORM_TIMEOUT).await?;
        self.timings.formed_after_last_registration = Some(formed.saturating_sub(last_registered));
        self.timings.formed_after_start = Some(formed - start);
        let (leader, _) = self.leader().await?;
        self.note(&format!("one cluster of {n} voters, {} leads", self.nodes[leader].hostname));
        for i in 0..n {
            self.record_timeline(i, "first start");
        }
        Ok(())
    }

    /// Waits until every node in `which` answers as a voter of one cluster
    /// of all the nodes, with one leader; when that was seen.
    async fn wait_formed(&self, which: &[usize], timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len() as u64;
        let expected: Vec<String> = self.nodes.iter().map(KvNode::stable_id).collect();
        loop {
            let mut last = String::new();
            let mut statuses = Vec::new();
            for &i in which {
                match status(self.nodes[i].local_port).await {
                    Ok(s) => {
                        let _ = write!(last, "[{}: {}] ", self.nodes[i].hostname, s.short());
                        statuses.push(s);
                    }
                    Err(e) => {
                        let _ = write!(last, "[{}: {e}] ", self.nodes[i].hostname);
                    }
                }
            }
            let at = self.clock.now();
            if statuses.len() == which.len() {
                let leader = statuses[0].leader;
                let leaders = statuses.iter().filter(|s| s.role == "leader").count();
                let members_ok = statuses.iter().all(|s| {
                    s.voters == n
                        && s.learners == 0
                        && s.leader.is_some()
                        && s.leader == leader
                        && s.role != "learner"
                });
                // The leader is the one the others name, and its
                // configuration has every node as a voter.
                let complete = statuses.iter().filter(|s| s.role == "leader").all(|s| {
                    Some(s.id) == leader
                        && expected
                            .iter()
                            .all(|id| s.members.iter().any(|(m, voter)| m == id && *voter))
                });
                if members_ok && leaders == 1 && complete {
                    return Ok(at);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no single cluster of {n} voters within {timeout:?}: {last}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node that reports itself leader (in the highest term).
    async fn leader(&self) -> Result<(usize, Status), String> {
        let mut best: Option<(usize, Status)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            if let Ok(s) = status(node.local_port).await
                && s.role == "leader"
                && best.as_ref().is_none_or(|(_, b)| s.term > b.term)
            {
                best = Some((i, s));
            }
        }
        best.ok_or_else(|| "no node reports itself leader".to_owned())
    }

    /// Writes `key=value` through node `i`, recorded.
    async fn put(&mut self, i: usize, key: &str, value: &str) -> Result<(), String> {
        let sent = self.clock.now();
        let answer =
            call(self.nodes[i].local_port, &format!("put {key} {value}"), CALL_TIMEOUT).await;
        self.writes.push(WriteRecord {
            key: key.to_owned(),
            value: value.to_owned(),
            sent,
            done: self.clock.now(),
            acknowledged: answer.is_ok(),
            error: answer.as_ref().err().cloned(),
        });
        answer.map(|_| ()).map_err(|e| format!("put {key} through {}: {e}", self.nodes[i].hostname))
    }

    async fn write_and_read(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let started = self.clock.now();
        let mut reads = 0;
        for i in 0..2 * n {
            let (key, value) = (format!("w{i}"), format!("v{i}"));
            self.put(i % n, &key, &value).await?;
            for j in (0..n).filter(|&j| j != i % n) {
                let read = get(self.nodes[j].local_port, &key).await?;
                reads += 1;
                if read.as_deref() != Some(value.as_str()) {
                    return Err(format!(
                        "{key}={value} written through {} but {} read {read:?}",
                        self.nodes[i % n].hostname,
                        self.nodes[j].hostname
                    ));
                }
            }
        }
        self.timings.write_read = Some((2 * n, reads, self.clock.now() - started));
        self.note(&format!("{} writes and {reads} reads through different nodes agree", 2 * n));
        Ok(())
    }

    /// Retags a follower out of the cluster and back.
    async fn retag(&mut self) -> Result<(), String> {
        let (leader, _) = self.leader().await?;
        let victim = (0..self.nodes.len()).find(|&i| i != leader).unwrap_or(0);
        let victim_id = self.nodes[victim].headscale_id.ok_or("no headscale id")?;
        let stable = self.nodes[victim].stable_id();
        let others: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != victim).collect();

        self.note(&format!("headscale nodes tag: {} to {PARKED_TAG}", self.nodes[victim].hostname));
        let retagging = self.clock.now();
        self.headscale.set_tags(victim_id, PARKED_TAG).await?;
        let cli = self.clock.now() - retagging;
        let removed = self
            .wait_leader_view(&others, MEMBERSHIP_TIMEOUT, |s| {
                s.voters == others.len() as u64 && s.members.iter().all(|(m, _)| *m != stable)
            })
            .await
            .map_err(|e| {
                format!(
                    "{} retagged {PARKED_TAG} was not removed: {e}",
                    self.nodes[victim].hostname
                )
            })?;
        self.timings.retag_out = Some((removed - retagging, cli));
        self.note(&format!("the leader removed {}", self.nodes[victim].hostname));
        // The cluster goes on without it: writes through the others while it
        // is parked, longer than an election timeout (a 0.9 s lease, then 0.6-0.9 s), as when an
        // operator parks a node for a while.
        let parked = Instant::now();
        let mut n = 0;
        while parked.elapsed() < PARKED_FOR {
            self.put(others[n % others.len()], &format!("parked{n}"), "yes").await?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.put(others[0], "while-out", "yes").await?;
        let term_before = self.leader().await?.1.term;
        self.note(&format!("{} writes acknowledged while it was parked", n + 1));

        self.note(&format!("headscale nodes tag: {} back to {TAG}", self.nodes[victim].hostname));
        let retagging = self.clock.now();
        self.headscale.set_tags(victim_id, TAG).await?;
        let cli = self.clock.now() - retagging;
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_formed(&all, MEMBERSHIP_TIMEOUT).await.map_err(|e| {
            format!("{} retagged {TAG} is not back: {e}", self.nodes[victim].hostname)
        })?;
        // Caught up: a linearizable read through it sees the write made
        // while it was out.
        let read = get(self.nodes[victim].local_port, "while-out").await?;
        if read.as_deref() != Some("yes") {
            return Err(format!(
                "{} is back but read while-out as {read:?}",
                self.nodes[victim].hostname
            ));
        }
        self.timings.retag_back = Some((self.clock.now() - retagging, cli));
        let term_after = self.leader().await?.1.term;
        self.timings.retag_back_terms = Some((term_before, term_after));
        self.note(&format!("{} is a voter again and read while-out", self.nodes[victim].hostname));
        Ok(())
    }

    /// Waits until a node in `which` that says it leads shows a status for
    /// which `done` holds; when that was seen.
    async fn wait_leader_view(
        &self,
        which: &[usize],
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            for &i in which {
                match status(self.nodes[i].local_port).await {
                    Ok(s) if s.role == "leader" && done(&s) => return Ok(self.clock.now()),
                    Ok(s) => {
                        let _ = write!(
                            last,
                            "[{}: {} members {:?}] ",
                            self.nodes[i].hostname,
                            s.short(),
                            s.members
                        );
                    }
                    Err(e) => {
                        let _ = write!(last, "[{}: {e}] ", self.nodes[i].hostname);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not within {timeout:?}: {last}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn kill_and_restart_leader(&mut self) -> Result<(), String> {
        let (leader, before) = self.leader().await?;
        let survivors: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != leader).collect();
        let ports: Vec<u16> = survivors.iter().map(|&i| self.nodes[i].local_port).collect();
        // A client that keeps writing through the survivors: a new write
        // every 100 ms, each waiting for its answer on its own, each record
        // sent here as it completes.
        let (records_tx, mut records) = tokio::sync::mpsc::unbounded_channel();
        let background = self.writes.len();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let clock = self.clock;
        let writer = tokio::spawn(async move {
            for n in 0usize.. {
                if *stop_rx.borrow() {
                    break;
                }
                let port = ports[n % ports.len()];
                let (key, value) = (format!("f{n}"), format!("x{n}"));
                let records = records_tx.clone();
                tokio::spawn(async move {
                    let sent = clock.now();
                    let answer = call(port, &format!("put {key} {value}"), CALL_TIMEOUT).await;
                    let (acknowledged, error) = (answer.is_ok(), answer.err());
                    let _ = records.send(WriteRecord {
                        key,
                        value,
                        sent,
                        done: clock.now(),
                        acknowledged,
                        error,
                    });
                });
                let _ = tokio::time::timeout(Duration::from_millis(100), stop_rx.changed()).await;
            }
        });
        // Let some writes land before the kill.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.note(&format!(
            "kill -9 of the leader, {}, while a client writes through the others",
            self.nodes[leader].hostname
        ));
        let kill_at = self.clock.now();
        if let Some(mut child) = self.nodes[leader].child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        let elected = self
            .wait_leader_view(&survivors, RECOVERY_TIMEOUT, |s| s.term > before.term)
            .await
            .map_err(|e| format!("no new leader after the leader was killed: {e}"));
        // Writes continue: wait for a write sent after the kill to be
        // acknowledged.
        let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
        let mut write_after_kill = None;
        while elected.is_ok() && write_after_kill.is_none() {
            match tokio::time::timeout_at(deadline, records.recv()).await {
                Ok(Some(record)) => {
                    if record.acknowledged && record.sent >= kill_at {
                        write_after_kill = Some(record.done - kill_at);
                    }
                    self.writes.push(record);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let (Ok(elected), Some(write)) = (&elected, write_after_kill) {
            self.note(&format!(
                "a new leader after {:.2} s; a write sent after the kill acknowledged after {:.2} s",
                (*elected - kill_at).as_secs_f64(),
                write.as_secs_f64()
            ));
        }
        // Stop the client; every write it sent ends within CALL_TIMEOUT.
        let _ = stop_tx.send(true);
        writer.await.map_err(|e| format!("writer task: {e}"))?;
        self.note("waiting for the answer to every write sent around the kill");
        while let Ok(Some(record)) = tokio::time::timeout(CALL_TIMEOUT * 2, records.recv()).await {
            self.writes.push(record);
        }
        let elected = elected?;
        self.timings.new_leader = Some(elected - kill_at);
        self.timings.write_after_kill = Some(write_after_kill.ok_or_else(|| {
            format!("no write sent after the kill was acknowledged within {RECOVERY_TIMEOUT:?}")
        })?);
        let summary = failover_summary(&self.writes[background..]);
        self.note(&summary);
        self.timings.failover_writes = Some(summary);

        // The old leader back, on its state directory.
        self.note(&format!("restart {} on its state directory", self.nodes[leader].hostname));
        self.spawn(leader)?;
        let restarted = self.nodes[leader].spawned;
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_formed(&all, RECOVERY_TIMEOUT)
            .await
            .map_err(|e| format!("the old leader did not come back: {e}"))?;
        let last = self.writes.iter().rev().find(|w| w.acknowledged).cloned();
        if let Some(last) = last {
            let read = get(self.nodes[leader].local_port, &last.key).await?;
            if read.as_deref() != Some(last.value.as_str()) {
                return Err(format!(
                    "the restarted old leader read {}={read:?}, not {}",
                    last.key, last.value
                ));
            }
        }
        self.timings.restarted_caught_up = Some(self.clock.now() - restarted);
        self.note(&format!("{} is a voter again and caught up", self.nodes[leader].hostname));
        self.record_timeline(leader, "restart");
        Ok(())
    }

    /// Every acknowledged write reads back through every node; a write
    /// whose outcome is unknown reads back as its value or as nothing.
    async fn check_every_write(&self) -> Result<(), String> {
        let mut expected: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
        for write in &self.writes {
            // Keys are written once; a key written twice keeps its last
            // acknowledged value.
            let entry = expected.entry(&write.key).or_insert((&write.value, write.acknowledged));
            if write.acknowledged {
                *entry = (&write.value, true);
            }
        }
        let acknowledged = expected.values().filter(|(_, a)| *a).count();
        if acknowledged < 10 {
            return Err(format!("only {acknowledged} writes were acknowledged"));
        }
        for node in &self.nodes {
            for (key, (value, acked)) in &expected {
                let read = get(node.local_port, key).await?;
                match read.as_deref() {
                    Some(v) if v == *value => {}
                    None if !acked => {}
                    other => {
                        return Err(format!(
                            "{} read {key}={other:?}; the write of {value} was {}",
                            node.hostname,
                            if *acked { "acknowledged" } else { "of unknown outcome" }
                        ));
                    }
                }
            }
        }
        self.note(&format!(
            "every one of {acknowledged} acknowledged writes reads back through every node"
        ));
        Ok(())
    }

    /// Records the start of node `i` as its log told it, relative to its
    /// process start.
    fn record_timeline(&mut self, i: usize, what: &str) {
        let node = &self.nodes[i];
        let steps: Vec<String> = lock(&node.events)
            .iter()
            .map(|(at, name)| {
                format!("{name} +{:.2} s", at.saturating_sub(node.spawned).as_secs_f64())
            })
            .collect();
        let line = format!("{} ({what}): {}", node.hostname, steps.join(", "));
        self.timings.timelines.push(line);
    }

    /// Prints a progress line stamped with the run's clock, and keeps it in
    /// `suite.log` in the work directory.
    fn note(&self, text: &str) {
        let line = format!("[{:9.3}] {text}", self.clock.now().as_secs_f64());
        eprintln!("headscale-suite {line}");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("suite.log"));
        if let Ok(mut log) = log {
            let _ = writeln!(log, "{line}");
        }
    }

    /// The end of headscale's log and of every node's, for a failure report.
    fn logs_for_failure(&self) -> String {
        let mut out = String::new();
        let tail = |path: &Path, lines: usize| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let _ = writeln!(out, "--- headscale log ({}) ---", self.headscale.log.display());
        let _ = writeln!(out, "{}", tail(&self.headscale.log, 300));
        for node in &self.nodes {
            let _ = writeln!(
                out,
                "--- {} log, last 40 lines ({}) ---",
                node.hostname,
                node.log.display()
            );
            let _ = writeln!(out, "{}", tail(&node.log, 40));
        }
        match &self.options.keep_dir {
            Some(dir) => {
                let _ =
                    writeln!(out, "--- logs, state and suite.log kept in {} ---", dir.display());
            }
            None => {
                let _ = writeln!(out, "--- logs removed at exit; --keep-dir DIR keeps them ---");
            }
        }
        out
    }

    /// Stops every node (stdin closed, then killed after 10 s) and
    /// headscale.
    async fn shutdown(self) {
        for mut node in self.nodes {
            if let Some(mut child) = node.child.take() {
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
        self.headscale.stop().await;
    }
}
