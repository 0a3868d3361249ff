//! Runs `xtask/gobench` (Tailscale's Go tsconsensus and tsnet, built by
//! `cargo xtask bench`) on the benchmark's local tailnet and reads the one
//! JSON line each run prints.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use tests::tailnet::OFFLINE_ENV;

/// Longest a single Go run may take (cluster start included).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest result read from the Go program's stdout.
const MAX_OUTPUT: u64 = 1 << 20;

/// The Go program and where its logs go.
pub(crate) struct GoBench {
    /// The `gobench` binary.
    pub(crate) bin: PathBuf,
    control_url: String,
    log: PathBuf,
}

/// One cluster scenario as the Go program reports it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GoCluster {
    pub(crate) ops_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) cpu_us_per_op: f64,
    pub(crate) entries_per_s: f64,
    pub(crate) switches_per_op: f64,
    pub(crate) errors: u64,
    pub(crate) term_changes: u64,
}

/// The raw tsnet measurements of two Go nodes in one process.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct GoTransport {
    pub(crate) path: String,
    pub(crate) mib_per_s: f64,
    pub(crate) rtt_p50_us: f64,
    pub(crate) rtt_p99_us: f64,
    pub(crate) serial_rps: f64,
    pub(crate) parallel_rps: f64,
}

/// What a cluster scenario asks of the Go program.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GoScenario {
    pub(crate) callers: usize,
    pub(crate) durable: bool,
    pub(crate) to_follower: bool,
    pub(crate) size: usize,
    pub(crate) run: Duration,
}

impl GoBench {
    /// Uses `bin` against the tailnet at `control_url`; the Go program's
    /// stderr is appended to `log`.
    pub(crate) fn new(bin: PathBuf, control_url: &str, log: PathBuf) -> GoBench {
        GoBench { bin, control_url: control_url.to_owned(), log }
    }

    /// Runs one cluster scenario; `serial` keeps hostnames and tags apart.
    pub(crate) async fn cluster(&self, s: GoScenario, serial: usize) -> Result<GoCluster, String> {
        let mut args = vec!["cluster".to_owned()];
        for (flag, value) in [
            ("-prefix", format!("go{serial}")),
            ("-tag", format!("tag:go{serial}")),
            ("-callers", s.callers.to_string()),
            ("-target", if s.to_follower { "follower" } else { "leader" }.to_owned()),
            ("-storage", if s.durable { "durable" } else { "memory" }.to_owned()),
            ("-size", s.size.to_string()),
            ("-duration", format!("{}ms", s.run.as_millis())),
        ] {
            args.push(flag.to_owned());
            args.push(value);
        }
        let line = self.run(&args).await?;
        serde_json::from_str(&line).map_err(|e| format!("gobench cluster said {line:?}: {e}"))
    }

    /// Runs the raw tsnet measurement.
    pub(crate) async fn transport(&self, quick: bool) -> Result<GoTransport, String> {
        let mut args = vec!["transport".to_owned(), "-prefix".to_owned(), "gotransport".to_owned()];
        if quick {
            args.push("-quick".to_owned());
        }
        let line = self.run(&args).await?;
        serde_json::from_str(&line).map_err(|e| format!("gobench transport said {line:?}: {e}"))
    }

    async fn run(&self, args: &[String]) -> Result<String, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let mut child = Command::new(&self.bin)
            .args(args)
            .args(["-control-url", &self.control_url])
            .envs(OFFLINE_ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let finished = async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(MAX_OUTPUT)
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
            let status = child.wait().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((out, status))
        };
        let (out, status) = tokio::time::timeout(RUN_TIMEOUT, finished)
            .await
            .map_err(|_| format!("gobench {} took over {RUN_TIMEOUT:?}", args.join(" ")))??;
        if !status.success() {
            return Err(format!(
                "gobench {} failed ({status}); see {}",
                args.join(" "),
                self.log.display()
            ));
        }
        let text = String::from_utf8_lossy(&out);
        text.lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .map(str::to_owned)
            .ok_or_else(|| format!("gobench {} printed no result", args.join(" ")))
    }
}
