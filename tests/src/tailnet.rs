//! A local tailnet for tests: starts the `xtask/tailnet` program (control,
//! DERP and STUN on 127.0.0.1) as a child process, talks to its admin API,
//! and brings up tsnet nodes against it.
//!
//! The child exits when its stdin closes, so it never outlives the test
//! process, even when a test panics or the process is killed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use ts_transport::tsnet::{NodeLogs, NodeOptions, TailnetAddrs, TsnetTransport};

/// Path of the tailnet program, built by this crate's build script.
pub const TAILNET_BIN: &str = env!("TAILNET_BIN");

/// How long the tailnet program may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to come up.
pub const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest admin API response read.
const MAX_ADMIN_RESPONSE: u64 = 4 << 20;

/// Environment that keeps a tsnet node off the internet (no log upload, no
/// support endpoints, no port mapping). Go reads it when a process starts,
/// so a child process gets it with `Command::envs`, and this process must
/// have been started with it: [`LocalTailnet::start`] refuses otherwise.
pub const OFFLINE_ENV: &[(&str, &str)] =
    &[("TS_NO_LOGS_NO_SUPPORT", "true"), ("TS_DISABLE_PORTMAPPER", "1")];

/// Checks that `get` (the process environment) has every variable of
/// [`OFFLINE_ENV`] with its value, naming the first that does not.
fn check_offline_env(get: impl Fn(&str) -> Option<String>) -> io::Result<()> {
    for (name, value) in OFFLINE_ENV {
        let found = get(name);
        if found.as_deref() != Some(*value) {
            return Err(io::Error::other(format!(
                "{name} is {found:?}, not {value:?}: tsnet nodes in this process would try to \
                 reach the internet. Run through cargo (the workspace's .cargo/config.toml sets \
                 it) or set it before starting the process"
            )));
        }
    }
    Ok(())
}

/// The facade's timing for clusters of tsnet nodes on a local tailnet:
/// slower than the in-memory profile (`test_support::fast_timing`), since
/// a tsnet hop costs more and a loaded 2-core machine runs several Go
/// runtimes at once. The real-tailnet tests use it as it is; the cluster
/// benchmark keeps its own call deadline, reconciliation period and
/// staleness bound.
pub fn timing() -> consensus::Timing {
    consensus::Timing {
        heartbeat: Duration::from_millis(200),
        election: (Duration::from_millis(1000), Duration::from_millis(2000)),
        call_deadline: Duration::from_secs(20),
        start_timeout: Duration::from_secs(60),
        reconcile_every: Duration::from_millis(500),
        max_staleness: Duration::from_secs(30),
    }
}

/// A running local tailnet.
#[derive(Debug)]
pub struct LocalTailnet {
    child: Child,
    /// The control server's URL, for [`NodeOptions::control_url`].
    pub control_url: String,
    admin_addr: String,
    dir: tempfile::TempDir,
    /// Whether [`LocalTailnet::node`] has nodes log to files.
    node_logs: bool,
}

/// One node as the control server sees it.
#[derive(Clone, Debug, Deserialize)]
pub struct AdminNode {
    /// The hostname the node registered with.
    pub hostname: String,
    /// The node's stable id.
    pub stable_id: String,
    /// The node's tailnet addresses.
    pub ips: Vec<String>,
    /// The node's ACL tags.
    pub tags: Vec<String>,
    /// Whether control marks the node online.
    pub online: bool,
}

#[derive(Deserialize)]
struct Ready {
    control_url: String,
    admin_url: String,
}

impl LocalTailnet {
    /// Starts a new tailnet.
    ///
    /// Fails unless this process was started with [`OFFLINE_ENV`]: the
    /// nodes it brings up run in this process.
    pub async fn start() -> io::Result<LocalTailnet> {
        check_offline_env(|name| std::env::var(name).ok())?;
        // tokio installs a SIGCHLD handler when a child is dropped before it
        // exits; in a process with Go it must have SA_ONSTACK. The handler
        // outlives the listener dropped here.
        drop(ts_transport::tsnet::signal(tokio::signal::unix::SignalKind::child())?);
        let dir = tempfile::Builder::new().prefix("tailnet-").tempdir()?;
        let mut child = Command::new(TAILNET_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| io::Error::new(err.kind(), format!("start {TAILNET_BIN}: {err}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => {
                return Err(io::Error::other("tailnet program exited before it was ready"));
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(io::Error::other("tailnet program not ready after 30 s")),
        }
        let ready: Ready = serde_json::from_str(&line).map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("tailnet said {line:?}: {err}"))
        })?;
        let admin_addr = ready
            .admin_url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| io::Error::other(format!("bad admin URL {}", ready.admin_url)))?
            .to_owned();
        Ok(LocalTailnet { child, control_url: ready.control_url, admin_addr, dir, node_logs: true })
    }

    /// This tailnet with [`LocalTailnet::node`]'s nodes logging nowhere:
    /// for benchmarks, where formatting and writing tsnet's verbose log
    /// would cost time in the measured process.
    pub fn without_node_logs(mut self) -> LocalTailnet {
        self.node_logs = false;
        self
    }

    /// A directory that lives as long as the tailnet, for node state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Options for a node called `hostname` on this tailnet, with its state
    /// in a directory of its own.
    pub fn node_options(&self, hostname: &str) -> NodeOptions {
        let mut options = NodeOptions::new(self.state_dir(hostname), hostname);
        options.control_url = Some(self.control_url.clone());
        options
    }

    /// The state directory [`LocalTailnet::node_options`] uses for `hostname`.
    pub fn state_dir(&self, hostname: &str) -> PathBuf {
        self.dir.path().join(hostname)
    }

    /// Creates a node called `hostname` and brings it up. The node logs to
    /// `hostname.log` in [`LocalTailnet::dir`] (unless
    /// [`LocalTailnet::without_node_logs`]); when it does not come up, the
    /// error ends with the log's last lines, so that a failure in CI says
    /// what tsnet was doing.
    pub async fn node(&self, hostname: &str) -> io::Result<(TsnetTransport, TailnetAddrs)> {
        let log = self.dir.path().join(format!("{hostname}.log"));
        let mut options = self.node_options(hostname);
        if self.node_logs {
            options.logs =
                NodeLogs::File(std::fs::OpenOptions::new().create(true).append(true).open(&log)?);
        }
        let node = TsnetTransport::new(options).map_err(io::Error::other)?;
        let addrs = node.up(UP_TIMEOUT).await.map_err(|err| {
            if !self.node_logs {
                return io::Error::other(format!("{hostname} not up: {err}"));
            }
            let tail = log_tail(&log, LOG_TAIL_LINES);
            io::Error::other(format!(
                "{hostname} not up: {err}\nthe last lines of its log ({}):\n{tail}",
                log.display()
            ))
        })?;
        Ok((node, addrs))
    }

    /// Every node control knows.
    pub async fn nodes(&self) -> io::Result<Vec<AdminNode>> {
        let body = self.admin("GET", "/__admin/nodes", "").await?;
        serde_json::from_str(&body).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// Sets the tags of the node called `hostname` (an empty list clears
    /// them); control pushes the change to every node.
    pub async fn set_tags(&self, hostname: &str, tags: &[&str]) -> io::Result<Vec<AdminNode>> {
        let body = serde_json::json!({ "hostname": hostname, "tags": tags }).to_string();
        let body = self.admin("POST", "/__admin/tags", &body).await?;
        serde_json::from_str(&body).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// One HTTP/1.1 request to the admin API; returns the body of a 200.
    async fn admin(&self, method: &str, path: &str, body: &str) -> io::Result<String> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.admin_addr).await?;
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                self.admin_addr,
                body.len()
            );
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.take(MAX_ADMIN_RESPONSE).read_to_end(&mut response).await?;
            Ok::<_, io::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| io::Error::other(format!("admin {method} {path} timed out")))??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("admin {method} {path}: no HTTP response")))?;
        let chunked = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
            })
        });
        let body = if chunked {
            dechunk(body).map_err(|why| {
                io::Error::new(io::ErrorKind::InvalidData, format!("admin {method} {path}: {why}"))
            })?
        } else {
            body.to_owned()
        };
        if !head.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!(
                "admin {method} {path}: {} {body}",
                head.lines().next().unwrap_or_default()
            )));
        }
        Ok(body)
    }

    /// Stops the tailnet program and waits for it to exit.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// How many lines of a node's log a failure to come up quotes.
const LOG_TAIL_LINES: usize = 60;
/// How much of the log's end is read to find them.
const LOG_TAIL_BYTES: u64 = 64 << 10;

/// The last `lines` lines of the log at `path`, or why they cannot be read.
fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
    };
    read().unwrap_or_else(|err| format!("(log unreadable: {err})"))
}

/// Decodes a chunked HTTP/1.1 body (the admin API answers large lists that
/// way).
fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut body = String::new();
    loop {
        let (size, after) =
            rest.split_once("\r\n").ok_or("a chunk size line without its line end")?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|e| format!("chunk size {size:?} is not hexadecimal: {e}"))?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after.get(..size).ok_or("a chunk shorter than its size")?;
        body.push_str(chunk);
        rest = after[size..].strip_prefix("\r\n").ok_or("a chunk without its line end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::{OFFLINE_ENV, check_offline_env, dechunk};

    #[test]
    fn offline_env_is_required() {
        let all =
            |name: &str| OFFLINE_ENV.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned());
        check_offline_env(all).unwrap();
        let err = check_offline_env(|_| None).unwrap_err().to_string();
        assert!(err.contains("TS_NO_LOGS_NO_SUPPORT is None"), "{err}");
        // A wrong value is as bad as none.
        let wrong = |name: &str| {
            if name == "TS_DISABLE_PORTMAPPER" { Some("0".to_owned()) } else { all(name) }
        };
        let err = check_offline_env(wrong).unwrap_err().to_string();
        assert!(err.contains(r#"TS_DISABLE_PORTMAPPER is Some("0"), not "1""#), "{err}");
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(dechunk("4\r\n[1,2\r\n3;x=y\r\n,3]\r\n0\r\n\r\n").unwrap(), "[1,2,3]");
        assert_eq!(dechunk("0\r\n\r\n").unwrap(), "");
        assert!(dechunk("zz\r\nab\r\n0\r\n\r\n").is_err());
        assert!(dechunk("5\r\nab").is_err());
        assert!(dechunk("2\r\nabcd").is_err());
    }
}
