//! `tsconsensus`: operate a tsconsensus cluster through one node's admin
//! endpoint (127.0.0.1 only, token in the node's state directory).
//!
//! ```text
//! tsconsensus --state-dir /var/lib/kv-1/raft status
//! tsconsensus --state-dir /var/lib/kv-1/raft members
//! tsconsensus --state-dir /var/lib/kv-1/raft remove kv-3
//! tsconsensus --state-dir /var/lib/kv-1/raft transfer-leader kv-2
//! tsconsensus --state-dir /var/lib/kv-1/raft snapshot
//! tsconsensus --state-dir /var/lib/kv-1/raft backup kv.backup
//! tsconsensus --state-dir /var/lib/kv-1/raft restore kv.backup
//! tsconsensus --state-dir /var/lib/kv-1/raft restore --offline kv.backup
//! ```
//!
//! The node is found by its state directory (`--state-dir`, where it keeps
//! `admin.token` and `admin.port`), or by `--port` (or
//! `TSCONSENSUS_ADMIN_PORT`) and the token in `TSCONSENSUS_TOKEN` (never
//! on the command line, where `ps` shows it). The endpoint must prove it
//! knows the token before the tool sends it. `--json` prints the
//! endpoint's JSON answers as they are. Exit status: 0 done, 1 refused or
//! failed (the message says why and what to do), 2 bad usage.
//! docs/operations.md describes every command.

#![allow(clippy::print_stdout, reason = "a command-line tool answers on standard output")]

mod http;

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consensus::admin::{BackupInfo, MAX_BACKUP, PORT_FILE, TOKEN_FILE};
use serde_json::{Value, json};

use crate::http::{Answer, Endpoint};

/// The environment variable that may carry the admin token.
const TOKEN_ENV: &str = "TSCONSENSUS_TOKEN";
/// Largest JSON answer read.
const MAX_JSON: usize = 16 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "tsconsensus",
    version,
    about = "Operate a tsconsensus cluster through a node's admin endpoint on 127.0.0.1"
)]
struct Cli {
    /// The node's state directory (Config::state_dir), where it keeps
    /// admin.token and admin.port.
    #[arg(long, env = "TSCONSENSUS_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// The admin port, instead of the one in the state directory.
    #[arg(long, env = "TSCONSENSUS_ADMIN_PORT", global = true)]
    port: Option<u16>,
    /// Print the endpoint's JSON answers unchanged.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for an answer (a transfer or a backup can take a
    /// while).
    #[arg(long, default_value_t = 90, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// This node: role, term, leader, indexes, readiness, members.
    Status,
    /// The cluster's members with their role, tags and liveness.
    Members,
    /// Removes a member (by raft id, stable id or hostname). On the leader
    /// any other member; through a follower only one the leader sees
    /// offline or untagged, if the voters left keep a reachable majority.
    Remove {
        /// The member.
        node: String,
        /// On the leader: remove a member that is tagged and online (the
        /// leader adds it back once it answers).
        #[arg(long)]
        force: bool,
        /// On the leader: remove a voter even though the voters left would
        /// have no reachable majority (the change may never commit).
        #[arg(long)]
        force_quorum: bool,
    },
    /// Hands leadership from this node (the leader) to a voter, or to the
    /// most caught-up one.
    TransferLeader {
        /// The voter to hand over to.
        node: Option<String>,
    },
    /// Builds a snapshot on this node now.
    Snapshot,
    /// Writes a backup of the replicated state to a file.
    Backup {
        /// Where to write it (written whole or not at all, mode 0600).
        file: PathBuf,
    },
    /// Restores a backup as a NEW cluster whose only member is this node
    /// (at its next start): the way back when the quorum is lost for good.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Restore even if the node's cluster is healthy (or, with
        /// --offline, even though the directory holds a member's state).
        #[arg(long)]
        force: bool,
        /// Stage it in --state-dir directly, for a node that is not
        /// running (one that cannot start, or a new machine).
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tsconsensus: {message}");
            ExitCode::FAILURE
        }
    }
}

fn endpoint(cli: &Cli) -> Result<Endpoint, String> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let from_dir = |file: &str| -> Result<(String, PathBuf), String> {
        let dir = cli.state_dir.as_ref().ok_or_else(|| {
            "name the node: --state-dir DIR (the node's state directory, with admin.token and \
             admin.port), or --port with the token in TSCONSENSUS_TOKEN"
                .to_owned()
        })?;
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (is {} the state directory of a node started with an admin \
                 port?)",
                path.display(),
                dir.display()
            )
        })?;
        Ok((text.trim().to_owned(), path))
    };
    let (port, origin) = match cli.port {
        Some(port) => (port, "--port".to_owned()),
        None => {
            let (text, path) = from_dir(PORT_FILE)?;
            let port = text
                .parse::<u16>()
                .map_err(|_| format!("{} does not hold a port: {text:?}", path.display()))?;
            (port, format!("port from {}", path.display()))
        }
    };
    // The token is never an argument: `ps` would show it to every user.
    let token = match std::env::var(TOKEN_ENV) {
        Ok(token) => token,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{TOKEN_ENV} is not text"));
        }
        Err(std::env::VarError::NotPresent) => from_dir(TOKEN_FILE)?.0,
    };
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token must be 1 to 256 printable characters".to_owned());
    }
    Ok(Endpoint { port, token, origin, timeout })
}

/// The JSON of a successful answer, or the endpoint's refusal as an error.
fn json_of(answer: Answer) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "the node answered {} with something that is not JSON ({e}): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
        )
    })?;
    if answer.status == 200 {
        return Ok(value);
    }
    Err(match (value["code"].as_str(), value["message"].as_str()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => format!("the node answered {}: {value}", answer.status),
    })
}

fn run(cli: &Cli) -> Result<(), String> {
    if let Command::Restore { file, force, offline: true } = &cli.command {
        return restore_offline(cli, file, *force);
    }
    let endpoint = endpoint(cli)?;
    let call = |method: &str, path: &str, body: Value| -> Result<Value, String> {
        let body = if method == "GET" { Vec::new() } else { body.to_string().into_bytes() };
        json_of(endpoint.call(method, path, "application/json", &body, MAX_JSON)?)
    };
    let print = |value: &Value, human: &dyn Fn(&Value)| {
        if cli.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            human(value);
        }
    };
    match &cli.command {
        Command::Status => {
            let status = call("GET", "/v1/status", Value::Null)?;
            print(&status, &print_status);
        }
        Command::Members => {
            let members = call("GET", "/v1/members", Value::Null)?;
            print(&members, &|m| print_members(&m["members"]));
        }
        Command::Remove { node, force, force_quorum } => {
            let body = json!({ "node": node, "force": force, "force_quorum": force_quorum });
            let answer = call("POST", "/v1/remove", body)?;
            print(&answer, &|a| {
                println!("removed member {}", a["removed"]);
                print_members(&a["members"]);
            });
        }
        Command::TransferLeader { node } => {
            let answer = call("POST", "/v1/transfer-leader", json!({ "to": node }))?;
            print(&answer, &|a| {
                if a["from"] == a["leader"] {
                    println!("this node ({}) already leads", a["leader"]);
                } else if a["target_won"] == json!(true) {
                    println!(
                        "leadership moved from {} to {} in {} ms",
                        a["from"], a["leader"], a["took_ms"]
                    );
                } else {
                    println!(
                        "leadership moved from {} to {}, not to the target {} (another voter won the election)",
                        a["from"], a["leader"], a["target"]
                    );
                }
            });
        }
        Command::Snapshot => {
            let answer = call("POST", "/v1/snapshot", json!({}))?;
            print(&answer, &|a| println!("snapshot built at index {}", a["snapshot_index"]));
        }
        Command::Backup { file } => {
            let answer = endpoint.call(
                "POST",
                "/v1/backup",
                "application/json",
                b"{}",
                MAX_BACKUP + 4096,
            )?;
            if answer.status != 200 || answer.content_type != "application/octet-stream" {
                return Err(json_of(answer)
                    .err()
                    .unwrap_or_else(|| "the node sent no backup".into()));
            }
            let info = consensus::admin::backup_info(&answer.body)
                .map_err(|e| format!("the node sent a damaged backup: {e}"))?;
            write_private(file, &answer.body)?;
            let value = json!({ "file": file, "bytes": answer.body.len(), "backup": info });
            print(&value, &|_| print_backup(&info, file, answer.body.len()));
        }
        Command::Restore { file, force, offline: false } => {
            let bytes = read_backup(file)?;
            let path = if *force { "/v1/restore?force=true" } else { "/v1/restore" };
            let answer = json_of(endpoint.call(
                "POST",
                path,
                "application/octet-stream",
                &bytes,
                MAX_JSON,
            )?)?;
            print(&answer, &|a| println!("{}", a["message"].as_str().unwrap_or_default()));
        }
        Command::Restore { offline: true, .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn read_backup(file: &Path) -> Result<Vec<u8>, String> {
    let size = fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?.len();
    if size > MAX_BACKUP as u64 {
        return Err(format!(
            "{} is {size} bytes; a restore takes at most {MAX_BACKUP}",
            file.display()
        ));
    }
    let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    consensus::admin::backup_info(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(bytes)
}

fn restore_offline(cli: &Cli, file: &Path, force: bool) -> Result<(), String> {
    let dir = cli
        .state_dir
        .as_ref()
        .ok_or_else(|| "--offline stages the restore in --state-dir DIR: name it".to_owned())?;
    let bytes = read_backup(file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let info = runtime
        .block_on(consensus::admin::stage_restore_offline(dir, &bytes, force))
        .map_err(|e| e.to_string())?;
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "staged": info })).unwrap_or_default()
        );
    } else {
        println!(
            "staged in {}: start the node to begin a new cluster from the backup of cluster {} \
             (index {}); it will be that cluster's only member until others join it with empty \
             state directories",
            dir.join("restore.pending").display(),
            info.cluster_id.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            info.applied_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

/// Writes `bytes` to `file` whole or not at all, readable by the owner
/// only.
fn write_private(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = file.file_name().ok_or_else(|| format!("{} is not a file name", file.display()))?;
    let temp = file.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        fs::rename(&temp, file)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        format!("writing {}: {e}", file.display())
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_status(s: &Value) {
    let me = s["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == s["id"]))
        .map(|m| text(&m["hostname"]))
        .unwrap_or_else(|| "-".to_owned());
    println!(
        "node {} ({me}, stable id {}): {}, term {}",
        s["id"],
        text(&s["stable_id"]),
        text(&s["role"]),
        s["term"]
    );
    println!("cluster {}, tag {}", text(&s["cluster_id"]), text(&s["tag"]));
    println!(
        "leader {}; applied {}, committed {}, last log {}, snapshot {}",
        text(&s["leader"]),
        text(&s["applied_index"]),
        text(&s["committed_index"]),
        text(&s["last_log_index"]),
        text(&s["snapshot_index"])
    );
    if !s["fatal"].is_null() {
        println!("FATAL: {} (the node serves nothing until restarted)", text(&s["fatal"]));
    }
    let readiness = &s["readiness"];
    if readiness["ready"] == json!(true) {
        println!("ready");
    } else {
        let reasons: Vec<String> = readiness["reasons"]
            .as_array()
            .map(|r| r.iter().map(text).collect())
            .unwrap_or_default();
        println!("NOT ready: {}", reasons.join("; "));
    }
    if let Some(pending) = s["pending_restore"].as_object() {
        println!(
            "restore staged (applied at the next start): backup of cluster {} at index {}",
            text(&pending.get("cluster_id").cloned().unwrap_or_default()),
            text(&pending.get("applied_index").cloned().unwrap_or_default())
        );
    }
    print_members(&s["members"]);
}

fn print_members(members: &Value) {
    let Some(members) = members.as_array() else { return };
    println!("members ({}):", members.len());
    println!(
        "  {:<20} {:<20} {:<8} {:<7} {:<8} {:<9} STABLE ID",
        "ID", "HOST", "ROLE", "LEADER", "TAILNET", "MATCHED"
    );
    for m in members {
        println!(
            "  {:<20} {:<20} {:<8} {:<7} {:<8} {:<9} {}",
            text(&m["id"]),
            text(&m["hostname"]),
            text(&m["role"]),
            if m["leader"] == json!(true) { "yes" } else { "" },
            if m["online"] == json!(true) { "online" } else { "offline" },
            text(&m["matched_index"]),
            text(&m["stable_id"]),
        );
    }
}

fn print_backup(info: &BackupInfo, file: &Path, bytes: usize) {
    println!(
        "backup of cluster {} at index {} ({} members) written to {} ({bytes} bytes)",
        info.cluster_id.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        info.applied_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        info.members.len(),
        file.display()
    );
    if !info.linearizable {
        println!(
            "note: taken without a quorum's confirmation: it holds what node {} had applied, \
             which may miss the last acknowledged commands",
            info.taken_by
        );
    }
}
