//! The operator's admin endpoint on `127.0.0.1:<Config::admin_port>`, for
//! the `tsconsensus` command-line tool (docs/operations.md).
//!
//! cmd-rpc's [`AdminServer`] checks every request first (loopback caller,
//! `Host` of 127.0.0.1 or localhost at this port, no browser `Origin`, the
//! bearer token, the route, a bounded body); this module answers:
//!
//! | Route | Does |
//! |---|---|
//! | `GET /v1/status` | this node: role, term, leader, indexes, members, readiness, a staged restore |
//! | `GET /v1/members` | the configuration with each member's role, tags and liveness |
//! | `POST /v1/remove` `{"node", "force"}` | removes a member (see below) |
//! | `POST /v1/transfer-leader` `{"to"}` | hands leadership over ([`Consensus::transfer_leadership`](crate::Consensus::transfer_leadership)) |
//! | `POST /v1/snapshot` `{}` | builds a snapshot now |
//! | `POST /v1/backup` `{}` | a backup of the state (binary, [`raft_core::backup`]) |
//! | `POST /v1/restore[?force=true]` (backup bytes) | stages a restore as a new cluster |
//!
//! A restore fails closed: without `force` it is staged only if no member
//! (this node included) confirmed a read index during the whole health
//! check, and a restore staged that way is called off (renamed
//! [`RESTORE_CANCELLED`]) as soon as the cluster commits again before the
//! node restarts.
//!
//! A node is named by raft id, stable id or hostname. Removal follows the
//! leader's rules (decision 0003): on the leader, the operator is trusted
//! and may remove any other member, with `force` for one that is tagged
//! and online (membership follows tags, so the leader adds such a node
//! back as soon as it answers a probe), and with `force_quorum` for a
//! voter whose removal would leave the remaining voters without a
//! reachable majority (without a tailnet view only this node counts as
//! reachable); on a follower, the
//! request goes to the leader as this node's, and the leader allows it
//! only for a member it sees offline or untagged; a refusal says to run
//! the command on the leader's host.
//!
//! The token is 32 random bytes in hex in `<state_dir>/admin.token`
//! ([`TOKEN_FILE`]), new at every start, written readable by its owner
//! only before the endpoint listens; the port served is written to
//! `<state_dir>/admin.port` ([`PORT_FILE`]) after. The endpoint proves it
//! knows the token before a client sends it ([`admin_proof`], `GET
//! /v1/proof`). The public items of this
//! module are what the `tsconsensus` tool needs besides HTTP: those names,
//! and reading and staging backups offline.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cmd_rpc::{
    Addressee, AdminHandler, AdminLimits, AdminRequest, AdminResponse, AdminRoute, AdminServer,
    Change, ErrorCode, Origin, ReadIndexResponse, RemoveRequest, RpcError,
};
use serde::Deserialize;
use tokio::time::Instant;
use ts_transport::{TcpTransport, Transport};

pub use cmd_rpc::{NONCE_HEADER, PROOF_PATH, admin_proof};
pub use raft_core::backup::{BackupInfo, BackupMember};

use crate::core::Core;
use crate::error::Error;
use crate::machine::StateMachine;
use crate::monitor::Monitor;
use crate::report::{Member, MemberRole};
use crate::transfer::{self, TransferError};
use crate::view::tagged_online;

/// The token's file in the state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The file in the state directory that names the port served.
pub const PORT_FILE: &str = "admin.port";
/// Largest JSON request body.
const MAX_JSON: usize = 64 << 10;
/// Largest backup a restore accepts.
pub const MAX_BACKUP: usize = 1 << 30;
/// Time a restore spends finding out whether the cluster is healthy.
const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// Longest node name accepted.
const MAX_NAME: usize = 256;

fn routes() -> Vec<AdminRoute> {
    let route = |method, path, max_body| AdminRoute { method, path, max_body };
    vec![
        route("GET", "/v1/status", 0),
        route("GET", "/v1/members", 0),
        route("POST", "/v1/remove", MAX_JSON),
        route("POST", "/v1/transfer-leader", MAX_JSON),
        route("POST", "/v1/snapshot", MAX_JSON),
        route("POST", "/v1/backup", MAX_JSON),
        route("POST", "/v1/restore", MAX_BACKUP),
    ]
}

/// The admin endpoint's part of a node: its server, if served, and the
/// restores staged through it.
#[derive(Default)]
pub(crate) struct Admin {
    server: Mutex<Option<AdminServer>>,
    /// Counts restores staged through the admin endpoint; staging and
    /// cancelling one happen under this lock, so a watcher cancels only
    /// the restore it was started for.
    restore_staged: Mutex<u64>,
}

impl Admin {
    /// The port served on 127.0.0.1, if the endpoint is served.
    pub(crate) fn port(&self) -> Option<u16> {
        self.server.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|a| a.port())
    }

    /// Stops the endpoint, if it is served.
    pub(crate) async fn shutdown(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }

    /// Stages a restore with `stage`, under the lock; answers what it
    /// answered and the restore's generation.
    fn stage<T, E>(&self, stage: impl FnOnce() -> Result<T, E>) -> Result<(T, u64), E> {
        let mut staged = self.restore_staged.lock().unwrap_or_else(|p| p.into_inner());
        let info = stage()?;
        *staged += 1;
        Ok((info, *staged))
    }

    /// Whether the restore staged last is `generation`.
    fn is_staged(&self, generation: u64) -> bool {
        *self.restore_staged.lock().unwrap_or_else(|p| p.into_inner()) == generation
    }

    /// Runs `f` under the lock if the restore staged last is `generation`.
    fn while_staged<R>(&self, generation: u64, f: impl FnOnce() -> R) -> Option<R> {
        let staged = self.restore_staged.lock().unwrap_or_else(|p| p.into_inner());
        (*staged == generation).then(f)
    }
}

/// Starts the admin endpoint if [`Config::admin_port`](crate::Config) asks
/// for it.
pub(crate) async fn start<S: StateMachine>(
    core: &Arc<Core<S>>,
    admin: &Arc<Admin>,
    monitor: &Arc<Monitor>,
) -> Result<(), Error> {
    let Some(port) = core.config.admin_port else { return Ok(()) };
    let Some(dir) = core.config.state_dir.clone() else {
        return Err(Error::invalid(
            "the admin endpoint keeps its token in the state directory: set state_dir, or \
             leave admin_port unset",
        ));
    };
    let token = fresh_token(&dir)?;
    let listener =
        TcpTransport::new(IpAddr::V4(Ipv4Addr::LOCALHOST)).listen(port).await.map_err(|e| {
            let message = format!("cannot listen on 127.0.0.1:{port} for the admin endpoint: {e}");
            Error::network_from(message, e)
        })?;
    let port = listener.local_port();
    write_port(&dir, port)?;
    // The server owns the handler: it holds the node's parts weakly.
    let handler: AdminHandler = {
        let weak = (Arc::downgrade(core), Arc::downgrade(admin), Arc::downgrade(monitor));
        Arc::new(move |request| {
            let (core, admin, monitor) = weak.clone();
            Box::pin(async move {
                match (core.upgrade(), admin.upgrade(), monitor.upgrade()) {
                    (Some(core), Some(admin), Some(monitor)) => {
                        handle(&core, &admin, &monitor, request).await
                    }
                    _ => AdminResponse::error(503, "stopped", "the node is stopping"),
                }
            })
        })
    };
    let server = AdminServer::start(
        Arc::from(listener),
        token,
        format!("the token is in {}", dir.join(TOKEN_FILE).display()),
        routes(),
        handler,
        AdminLimits::default(),
    );
    tracing::info!(port, "admin endpoint on 127.0.0.1");
    *admin.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
    Ok(())
}

/// A new token for this run of the node, written to `dir` as
/// [`TOKEN_FILE`] (readable by its owner only, whole or not at all) before
/// the endpoint listens: a token read from the file is good only while
/// this run lasts.
fn fresh_token(dir: &Path) -> Result<String, Error> {
    fs::create_dir_all(dir)
        .map_err(|e| Error::storage_from(format!("create {}: {e}", dir.display()), e))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::storage_from(format!("no randomness for the admin token: {e}"), e))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(TOKEN_FILE);
    let temp = dir.join(format!("{TOKEN_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        // A leftover (or planted) temporary file is replaced, never
        // followed: create_new refuses links.
        match fs::remove_file(&temp) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        Error::storage_from(format!("write {}: {e}", path.display()), e)
    })?;
    Ok(token)
}

fn write_port(dir: &Path, port: u16) -> Result<(), Error> {
    let temp = dir.join(format!("{PORT_FILE}.tmp"));
    let path = dir.join(PORT_FILE);
    fs::write(&temp, format!("{port}\n"))
        .and_then(|()| fs::rename(&temp, &path))
        .map_err(|e| Error::storage_from(format!("write {}: {e}", path.display()), e))
}

async fn handle<S: StateMachine>(
    core: &Arc<Core<S>>,
    admin: &Arc<Admin>,
    monitor: &Monitor,
    request: AdminRequest,
) -> AdminResponse {
    let result = match request.path {
        "/v1/status" => Ok(status(core, monitor).await),
        "/v1/members" => Ok(members(core)),
        "/v1/remove" => remove(core, &request.body).await,
        "/v1/transfer-leader" => transfer_leader(core, &request.body).await,
        "/v1/snapshot" => snapshot(core, &request.body).await,
        "/v1/backup" => backup(core, &request.body).await,
        "/v1/restore" => restore(core, admin, request.query.as_deref(), &request.body).await,
        other => Err(AdminResponse::error(404, "not_found", format!("no admin endpoint {other}"))),
    };
    result.unwrap_or_else(|refusal| refusal)
}

type Answer = Result<AdminResponse, AdminResponse>;

/// A JSON body of shape `T`; an empty body counts as `{}`.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminResponse> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body)
        .map_err(|e| AdminResponse::error(400, "bad_request", format!("request body: {e}")))
}

fn refuse_unless_running<S: StateMachine>(core: &Core<S>) -> Result<(), AdminResponse> {
    core.check_running().map_err(|err| match err {
        Error::Fatal { message: why, .. } => AdminResponse::error(
            503,
            "fatal",
            format!("this node stopped on a fatal error and serves nothing until restarted: {why}"),
        ),
        other => AdminResponse::error(503, "stopped", other.to_string()),
    })
}

async fn status<S: StateMachine>(core: &Arc<Core<S>>, monitor: &Monitor) -> AdminResponse {
    // The monitor refreshes the committed index every 500 ms; an operator
    // asking wants it now.
    if let Some(committed) = core.raft().committed_index().await {
        monitor.learned.set_committed(committed);
    }
    crate::health::refresh_leader_commit(core, &monitor.learned).await;
    let mut value = serde_json::to_value(crate::monitor::status(core, monitor))
        .unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "readiness".to_owned(),
            serde_json::to_value(crate::health::of(core, &monitor.learned)).unwrap_or_default(),
        );
        let pending = core.config.state_dir.as_deref().map(raft_core::backup::pending_restore);
        object.insert(
            "pending_restore".to_owned(),
            match pending {
                None | Some(Ok(None)) => serde_json::Value::Null,
                Some(Ok(Some(info))) => serde_json::to_value(info).unwrap_or_default(),
                Some(Err(why)) => serde_json::json!({ "error": why.to_string() }),
            },
        );
    }
    AdminResponse::json(200, &value)
}

fn members<S: StateMachine>(core: &Arc<Core<S>>) -> AdminResponse {
    let m = core.raft().metrics();
    AdminResponse::json(
        200,
        &serde_json::json!({ "node": core.id, "leader": m.leader, "members": core.members() }),
    )
}

/// The member `name` names: a raft id, a stable id, or a hostname.
fn resolve<'a>(members: &'a [Member], name: &str) -> Result<&'a Member, AdminResponse> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(AdminResponse::error(
            400,
            "bad_request",
            format!(
                "a node is named by raft id, stable id or hostname (1 to {MAX_NAME} printable characters)"
            ),
        ));
    }
    if let Ok(id) = name.parse::<u64>()
        && let Some(member) = members.iter().find(|m| m.id == id)
    {
        return Ok(member);
    }
    for matches in [
        members.iter().filter(|m| m.stable_id == name).collect::<Vec<_>>(),
        members.iter().filter(|m| m.hostname.as_deref() == Some(name)).collect(),
    ] {
        match matches.as_slice() {
            [] => {}
            [one] => return Ok(one),
            several => {
                return Err(AdminResponse::error(
                    409,
                    "ambiguous",
                    format!(
                        "{name:?} names several members (raft ids {}): name one by its raft id",
                        several.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    let known = members
        .iter()
        .map(|m| format!("{} ({}, {})", m.id, m.hostname.as_deref().unwrap_or("?"), m.stable_id))
        .collect::<Vec<_>>()
        .join("; ");
    Err(AdminResponse::error(
        404,
        "no_such_member",
        format!("no member is called {name:?}; the members are: {known}"),
    ))
}

fn leader_name(members: &[Member]) -> String {
    match members.iter().find(|m| m.leader) {
        Some(l) => format!("{} (raft id {})", l.hostname.as_deref().unwrap_or(&l.stable_id), l.id),
        None => "not known right now".to_owned(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    node: String,
    /// Removes a member that is tagged and online.
    #[serde(default)]
    force: bool,
    /// Removes a voter whose removal leaves no reachable majority.
    #[serde(default)]
    force_quorum: bool,
}

/// The voters left once `id` is removed, and how many of them are
/// reachable, as the reconciler's quorum guard counts them
/// (`decide::membership::keeps_quorum`): this node (the leader), and the
/// voters whose node `online` says is tagged and online and that are that
/// node's live incarnation (a dead voter of a node that came back under a
/// new raft id does not count). Without a view nobody else counts as
/// reachable (the check must not pass for want of information).
fn remaining_voters(
    members: &[Member],
    me: u64,
    id: u64,
    online: impl Fn(&str) -> bool,
) -> (usize, usize) {
    use crate::decide::membership::{self as decide, Inputs, Probed, Tagged};
    let model: Vec<decide::Member<&str>> = members
        .iter()
        .map(|m| decide::Member {
            id: m.id,
            name: m.stable_id.as_str(),
            voter: m.role == MemberRole::Voter,
            matched: None,
        })
        .collect();
    let tagged: Vec<Tagged<&str>> = members
        .iter()
        .filter(|m| online(&m.stable_id))
        .map(|m| Tagged { name: m.stable_id.as_str(), online: true })
        .collect();
    // Only this node's own answer is known here (no probes).
    let probed: Vec<Probed<&str>> = members
        .iter()
        .filter(|m| m.id == me)
        .map(|m| Probed { name: m.stable_id.as_str(), id: me, in_this_cluster: true })
        .collect();
    let inputs = Inputs {
        leader: me,
        members: &model,
        tagged: &tagged,
        probed: &probed,
        last_index: 0,
        max_lag: 0,
    };
    decide::voters_after_removal(&inputs, id)
}

async fn remove<S: StateMachine>(core: &Arc<Core<S>>, body: &[u8]) -> Answer {
    let request: RemoveBody = parse(body)?;
    refuse_unless_running(core)?;
    let members = core.members();
    let target = resolve(&members, &request.node)?;
    let id = target.id;
    if id == core.id {
        return Err(AdminResponse::error(
            409,
            "is_this_node",
            format!(
                "{} is this node. A running node that carries the tag is added back at once \
                 (membership follows tags): stop it with StopMode::Leave (it leaves the \
                 configuration, then stops), or revoke its tag. If it leads, run \
                 transfer-leader first.",
                request.node
            ),
        ));
    }
    let raft = core.raft();
    let m = raft.metrics();
    let deadline = Instant::now() + core.config.timing.call_deadline;
    let removed = |id: u64| {
        AdminResponse::json(200, &serde_json::json!({ "removed": id, "members": core.members() }))
    };
    if m.role == raft_core::Role::Leader {
        let view = core.view();
        let online = |stable_id: &str| view.as_ref().is_none_or(|v| tagged_online(v, stable_id));
        if online(&target.stable_id) && !request.force {
            return Err(AdminResponse::error(
                409,
                "tagged_and_online",
                format!(
                    "member {id} ({}) is tagged and online. Membership follows tags: the leader \
                     adds it back as soon as it answers a probe. Stop that node (StopMode::Leave) \
                     or revoke its tag instead; --force removes it anyway, and it stays out only \
                     while it does not answer (a wedged node)",
                    target.hostname.as_deref().unwrap_or(&target.stable_id)
                ),
            ));
        }
        if target.role == MemberRole::Voter && !request.force_quorum {
            // As the reconciler's guard: only a fresh view says who is
            // reachable.
            let fresh = core.fresh_view();
            let seen_online =
                |stable_id: &str| fresh.as_ref().is_some_and(|v| tagged_online(v, stable_id));
            let (remaining, reachable) = remaining_voters(&members, core.id, id, seen_online);
            if !crate::decide::membership::quorum_kept(remaining, reachable) {
                return Err(AdminResponse::error(
                    409,
                    "quorum",
                    format!(
                        "removing voter {id} leaves {remaining} voters of which only {reachable} \
                         are reachable{}, not a majority: the joint configuration might never \
                         commit and the cluster could stall. Bring the offline voters back \
                         first; --force-quorum tries anyway (--force does not cover this)",
                        if fresh.is_none() {
                            " (no fresh tailnet view: only this node counts)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        match core.service.change(&Change::Remove { id }, deadline).await {
            Ok(()) => {
                tracing::info!(id, "member removed by the operator");
                Ok(removed(id))
            }
            Err(err) => Err(rpc_refusal(&err, "remove")),
        }
    } else {
        match core.service.remove_via_leader(&RemoveRequest { id }, deadline).await {
            Ok(()) => Ok(removed(id)),
            Err(err) if err.code() == ErrorCode::Forbidden => Err(AdminResponse::error(
                403,
                "refused_by_leader",
                format!(
                    "the leader refused: {}. Through a follower, the leader removes only members \
                     it sees offline or untagged, asked by a voter, and only if the voters left \
                     keep a reachable majority. Run `tsconsensus remove {}` on the leader's \
                     host, {}, where any member may be removed, or revoke the node's tag{}",
                    err_message(&err),
                    request.node,
                    leader_name(&members),
                    if request.force || request.force_quorum {
                        " (--force and --force-quorum count on the leader only)"
                    } else {
                        ""
                    }
                ),
            )),
            Err(err) => Err(rpc_refusal(&err, "remove")),
        }
    }
}

fn err_message(err: &RpcError) -> String {
    match err {
        RpcError::Remote { body, .. } => body.message.clone(),
        other => other.to_string(),
    }
}

fn rpc_refusal(err: &RpcError, what: &str) -> AdminResponse {
    AdminResponse::error(err.status(), err.code().as_str(), format!("{what}: {}", err_message(err)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    #[serde(default)]
    to: Option<String>,
}

async fn transfer_leader<S: StateMachine>(core: &Arc<Core<S>>, body: &[u8]) -> Answer {
    let request: TransferBody = parse(body)?;
    refuse_unless_running(core)?;
    let members = core.members();
    let to = match &request.to {
        Some(name) => Some(resolve(&members, name)?.id),
        None => None,
    };
    let deadline = Instant::now() + core.config.timing.call_deadline;
    match transfer::transfer(core, to, deadline).await {
        Ok(report) => Ok(AdminResponse::json(200, &report)),
        Err(err @ TransferError::NotLeader { .. }) => Err(AdminResponse::error(
            409,
            "not_leader",
            format!(
                "{err}. Only the leader can hand its leadership over: run transfer-leader on \
                 the leader's host, {}",
                leader_name(&members)
            ),
        )),
        Err(err @ (TransferError::Invalid(_) | TransferError::Busy)) => {
            Err(AdminResponse::error(409, "refused", err.to_string()))
        }
        Err(err @ TransferError::Failed(_)) => Err(AdminResponse::error(
            504,
            "not_transferred",
            format!("{err} (heartbeats and proposals resumed on this node)"),
        )),
    }
}

async fn snapshot<S: StateMachine>(core: &Arc<Core<S>>, body: &[u8]) -> Answer {
    let _: serde_json::Map<String, serde_json::Value> = parse(body)?;
    refuse_unless_running(core)?;
    let raft = core.raft();
    raft.snapshot_now(core.config.timing.call_deadline).await.map_err(|e| {
        AdminResponse::error(504, "snapshot_failed", format!("no snapshot built: {e}"))
    })?;
    let m = raft.metrics();
    Ok(AdminResponse::json(
        200,
        &serde_json::json!({ "snapshot_index": m.snapshot, "applied_index": m.last_applied }),
    ))
}

/// Makes sure everything committed before now is applied on this node (a
/// read-index round through the leader): a backup taken after it holds
/// every acknowledged command. Fails without a quorum.
async fn barrier<S: StateMachine>(core: &Core<S>, timeout: Duration) -> Result<u64, String> {
    let raft = core.raft();
    let deadline = Instant::now() + timeout;
    let m = raft.metrics();
    let index = if m.role == raft_core::Role::Leader {
        raft.read_index(timeout).await.map_err(|e| e.to_string())?
    } else {
        let (id, leader) = m
            .leader
            .and_then(|id| m.nodes.get(&id).map(|node| (id, node)))
            .ok_or_else(|| "no leader is known".to_owned())?;
        let to = Addressee { node: id, cluster: raft.cluster_id() };
        let answer: ReadIndexResponse = core
            .service
            .client()
            .post_to(to, leader, "/v1/read-index", &serde_json::json!({}), deadline, Origin::Client)
            .await
            .map_err(|e| err_message(&e))?;
        answer.index
    };
    raft.wait_applied(index, deadline.saturating_duration_since(Instant::now()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(index)
}

async fn backup<S: StateMachine>(core: &Arc<Core<S>>, body: &[u8]) -> Answer {
    let _: serde_json::Map<String, serde_json::Value> = parse(body)?;
    refuse_unless_running(core)?;
    let linearizable = match barrier(core, HEALTH_CHECK).await {
        Ok(_) => true,
        Err(why) => {
            tracing::warn!(%why, "backup taken without a read barrier: it holds what this node applied");
            false
        }
    };
    let backup =
        core.raft().backup(linearizable).await.map_err(|e| {
            AdminResponse::error(500, "backup_failed", format!("no backup taken: {e}"))
        })?;
    tracing::info!(info = ?backup.info(), "backup taken");
    Ok(AdminResponse {
        status: 200,
        content_type: "application/octet-stream",
        body: backup.to_bytes(),
    })
}

async fn restore<S: StateMachine>(
    core: &Arc<Core<S>>,
    admin: &Arc<Admin>,
    query: Option<&str>,
    body: &[u8],
) -> Answer {
    let force = match query {
        None | Some("") | Some("force=false") => false,
        Some("force=true") => true,
        Some(other) => {
            return Err(AdminResponse::error(
                400,
                "bad_request",
                format!(
                    "unknown query {:?}: the only one is force=true",
                    other.chars().take(100).collect::<String>()
                ),
            ));
        }
    };
    let Some(dir) = core.config.state_dir.clone() else {
        return Err(AdminResponse::error(
            409,
            "no_state_dir",
            "this node keeps its state in memory: a restore needs a state directory to be \
             applied at the next start",
        ));
    };
    if let Err(why) = raft_core::Backup::from_bytes(body) {
        return Err(AdminResponse::error(400, "bad_backup", why.to_string()));
    }
    let period = health_check_period(core);
    if !force {
        // Fail closed: staged only once the cluster is shown unable to
        // commit for the whole period, whatever this node's own state.
        if let Ok((index, leader)) = cluster_commits(core, period).await {
            return Err(AdminResponse::error(
                409,
                "healthy_cluster",
                format!(
                    "this node belongs to cluster {} which is healthy: a quorum confirmed leader \
                     {leader} just now (index {index}). A restore takes this node out of it and \
                     starts a second cluster from the backup; it is meant for a cluster that lost \
                     its quorum for good. --force restores anyway (then remove this node's old \
                     incarnation from the healthy cluster).",
                    core.raft().cluster_id().map(|c| c.to_string()).unwrap_or_default(),
                ),
            ));
        }
    }
    let (info, generation) = admin.stage(|| {
        raft_core::backup::stage_restore(&dir, body)
            .map_err(|why| AdminResponse::error(500, "stage_failed", why.to_string()))
    })?;
    tracing::warn!(?info, force, "restore staged; it is applied at the next start");
    if !force {
        let watcher = tokio::spawn(cancel_when_cluster_commits(
            Arc::downgrade(core),
            Arc::downgrade(admin),
            generation,
        ));
        core.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(watcher);
    }
    let pending = dir.join(raft_core::backup::PENDING_RESTORE);
    Ok(AdminResponse::json(
        200,
        &serde_json::json!({
            "staged": info,
            "forced": force,
            "message": format!(
                "staged in {}: restart this node NOW to start a new cluster from the backup (its \
                 raft state moves aside into {}/pre-restore-<time>/). It is that cluster's only \
                 member until other nodes join it with empty state directories. {}",
                pending.display(),
                dir.display(),
                if force {
                    "Forced: it stays staged until the node restarts; to call it off, move the \
                     file away before that."
                } else {
                    "Until the node restarts it keeps asking its cluster: if the cluster commits \
                     again, the restore is called off (the file is renamed restore.cancelled)."
                }
            ),
        }),
    ))
}

/// The file a staged restore is renamed to when it is called off.
pub const RESTORE_CANCELLED: &str = "restore.cancelled";

/// How long a restore's health check asks the cluster: long enough for an
/// election or a leadership transfer to end.
fn health_check_period<S: StateMachine>(core: &Core<S>) -> Duration {
    HEALTH_CHECK.max(core.config.timing.election.1 * 3)
}

/// Whether this node's cluster commits: asks, round after round until
/// `period` has passed, this node (if it leads and is not fatal) and every
/// other member it knows for a read index, which only a leader of this
/// cluster confirmed by a quorum answers. The first answer (index,
/// leader), or why none came.
async fn cluster_commits<S: StateMachine>(
    core: &Core<S>,
    period: Duration,
) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + period;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let why = match commits_once(core, remaining.min(PROBE_ATTEMPT)).await {
            Ok(answer) => return Ok(answer),
            Err(why) => why,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(why);
        }
        tokio::time::sleep(remaining.min(PROBE_PAUSE)).await;
    }
}

/// Time one round of [`cluster_commits`] waits for answers.
const PROBE_ATTEMPT: Duration = Duration::from_secs(1);
/// Pause between rounds.
const PROBE_PAUSE: Duration = Duration::from_millis(200);

/// One round of [`cluster_commits`], within `timeout`.
async fn commits_once<S: StateMachine>(
    core: &Core<S>,
    timeout: Duration,
) -> Result<(u64, u64), String> {
    let raft = core.raft();
    let m = raft.metrics();
    let deadline = Instant::now() + timeout;
    let mut asks = tokio::task::JoinSet::new();
    if m.role == raft_core::Role::Leader && raft.fatal().is_none() {
        let (raft, id) = (raft.clone(), core.id);
        asks.spawn(async move {
            raft.read_index(timeout).await.map(|i| (i, id)).map_err(|e| e.to_string())
        });
    }
    let cluster = raft.cluster_id();
    for (&id, node) in m.nodes.iter().filter(|(id, _)| **id != core.id) {
        let (client, node) = (core.service.client().clone(), node.clone());
        let to = Addressee { node: id, cluster };
        asks.spawn(async move {
            let body = serde_json::json!({});
            let answer: Result<ReadIndexResponse, _> = client
                .post_to(to, &node, "/v1/read-index", &body, deadline, Origin::Forwarded)
                .await;
            answer.map(|r| (r.index, id)).map_err(|e| format!("{id}: {}", err_message(&e)))
        });
    }
    let mut why = Vec::new();
    let answered = tokio::time::timeout(timeout, async {
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(err)) => why.push(err),
                Err(err) => why.push(err.to_string()),
            }
        }
        None
    })
    .await;
    match answered {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) if why.is_empty() => Err("no other member is known".to_owned()),
        Ok(None) => Err(why.join("; ")),
        Err(_) => Err(format!("no member confirmed a read index within {timeout:?}")),
    }
}

/// Calls off the restore staged as `generation` (renames it
/// [`RESTORE_CANCELLED`]) as soon as this node sees its cluster commit,
/// until the node stops or another restore is staged.
async fn cancel_when_cluster_commits<S: StateMachine>(
    core: Weak<Core<S>>,
    admin: Weak<Admin>,
    generation: u64,
) {
    loop {
        tokio::time::sleep(PROBE_ATTEMPT).await;
        let (Some(core), Some(admin)) = (core.upgrade(), admin.upgrade()) else { return };
        let Some(dir) = core.config.state_dir.clone() else { return };
        if !admin.is_staged(generation) {
            return;
        }
        let Ok((index, leader)) = commits_once(&core, PROBE_ATTEMPT).await else { continue };
        let pending = dir.join(raft_core::backup::PENDING_RESTORE);
        let cancelled =
            admin.while_staged(generation, || fs::rename(&pending, dir.join(RESTORE_CANCELLED)));
        match cancelled {
            None => return,
            Some(Ok(())) => tracing::warn!(
                leader,
                index,
                "the cluster commits again: the staged restore is called off (renamed {})",
                RESTORE_CANCELLED
            ),
            Some(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Some(Err(err)) => {
                tracing::error!(error = %err, "cannot call off the staged restore {}", pending.display());
                continue;
            }
        }
        return;
    }
}

/// Where a backup file came from, checking all of it (the format, the
/// lengths, the checksum, the header, the state's format).
pub fn backup_info(backup: &[u8]) -> Result<BackupInfo, Error> {
    raft_core::Backup::from_bytes(backup).map(|b| b.info().clone()).map_err(backup_error)
}

/// Stages `backup` in the state directory of a node that is **not
/// running**, to be restored as a new one-node cluster when the node starts
/// (the disaster-recovery path onto a machine whose node cannot start, or
/// a new machine). Refused while a node runs on the directory (restore
/// through its admin endpoint then, which checks the cluster's health),
/// and, unless `force`, when the directory holds a cluster member's state:
/// nothing here can tell whether that cluster is healthy.
pub async fn stage_restore_offline(
    state_dir: &Path,
    backup: &[u8],
    force: bool,
) -> Result<BackupInfo, Error> {
    backup_info(backup)?;
    match raft_core::backup::inspect_state_dir(state_dir).await.map_err(backup_error)? {
        raft_core::StateDir::InUse => {
            return Err(Error::invalid(format!(
                "a node is running on {} (its raft log is locked): restore through its admin \
                 endpoint instead, which checks whether its cluster is healthy",
                state_dir.display()
            )));
        }
        raft_core::StateDir::Member { node_id, cluster_id, .. } if !force => {
            return Err(Error::invalid(format!(
                "{} holds the state of node {node_id} of cluster {}. If that cluster still \
                 has a quorum, start this node and let it rejoin: a restore starts a second \
                 cluster. --force stages the restore anyway (the state is moved aside, not \
                 deleted)",
                state_dir.display(),
                cluster_id.map(|c| c.to_string()).unwrap_or_else(|| "(none yet)".to_owned())
            )));
        }
        _ => {}
    }
    raft_core::backup::stage_restore(state_dir, backup).map_err(backup_error)
}

/// The facade's error for raft-core's, which stays its source: a backup
/// that does not check out is the caller's (`Invalid`), the rest is
/// storage's.
fn backup_error(err: raft_core::BackupError) -> Error {
    match err {
        raft_core::BackupError::Invalid { .. } => Error::invalid_from(err.to_string(), err),
        _ => Error::storage_from(err.to_string(), err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: `Error::Storage(String)`, the `io::Error` flattened to text.
    #[test]
    fn a_token_that_cannot_be_written_is_a_storage_error_with_its_io_error() {
        let file = std::env::temp_dir().join(format!("tsc-token-{}", std::process::id()));
        fs::write(&file, b"not a directory").unwrap();
        let err = fresh_token(&file.join("state")).unwrap_err();
        let _ = fs::remove_file(&file);
        assert!(matches!(err, Error::Storage { .. }), "{err:?}");
        let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert!(io.is_some(), "no io::Error underneath {err:?}");
        assert!(err.to_string().starts_with("storage: create "), "{err}");
    }

    fn member(id: u64, stable: &str, host: &str) -> Member {
        Member {
            id,
            stable_id: stable.to_owned(),
            hostname: Some(host.to_owned()),
            addrs: Vec::new(),
            raft_port: 1,
            command_port: 2,
            role: MemberRole::Voter,
            leader: false,
            tags: Vec::new(),
            online: true,
            matched_index: None,
        }
    }

    fn error_of(response: AdminResponse) -> cmd_rpc::AdminError {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn members_are_named_by_id_stable_id_or_hostname() {
        let members =
            vec![member(11, "nA", "alpha"), member(22, "nB", "beta"), member(33, "nB", "beta2")];
        assert_eq!(resolve(&members, "11").unwrap().id, 11);
        assert_eq!(resolve(&members, "nA").unwrap().id, 11);
        assert_eq!(resolve(&members, "beta2").unwrap().id, 33);
        let err = error_of(resolve(&members, "nB").unwrap_err());
        assert_eq!(err.code, "ambiguous");
        assert!(err.message.contains("22, 33"), "{}", err.message);
        let err = error_of(resolve(&members, "gamma").unwrap_err());
        assert_eq!(err.code, "no_such_member");
        assert!(err.message.contains("11 (alpha, nA)"), "{}", err.message);
        for bad in ["", "a\nb", &"x".repeat(MAX_NAME + 1)] {
            assert_eq!(error_of(resolve(&members, bad).unwrap_err()).code, "bad_request");
        }
    }

    #[test]
    fn without_a_view_only_this_node_counts_as_reachable() {
        let members = vec![member(1, "a", "a"), member(2, "b", "b"), member(3, "c", "c")];
        assert_eq!(remaining_voters(&members, 1, 3, |_| false), (2, 1));
        assert_eq!(remaining_voters(&members, 1, 3, |s| s == "b"), (2, 2));
        let mut learner = member(4, "d", "d");
        learner.role = MemberRole::Learner;
        let members = [members, vec![learner]].concat();
        assert_eq!(remaining_voters(&members, 1, 2, |_| true), (2, 2));
    }

    /// A node that restarted empty is back as a learner under a new raft
    /// id; its old voter is dead however online the node is, and must not
    /// count as reachable (the reconciler's guard, `keeps_quorum`, agrees).
    #[test]
    fn a_dead_incarnation_of_an_online_node_is_not_a_reachable_voter() {
        let mut new = member(4, "c", "c");
        new.role = MemberRole::Learner;
        let members = vec![member(1, "a", "a"), member(2, "b", "b"), member(3, "c", "c"), new];
        // Removing b (offline) leaves a (this node) and c's dead voter.
        let online = |s: &str| s == "a" || s == "c";
        assert_eq!(remaining_voters(&members, 1, 2, online), (2, 1));
        // Without the new incarnation, c's only voter counts.
        assert_eq!(remaining_voters(&members[..3], 1, 2, online), (2, 2));
    }

    #[test]
    fn every_start_writes_a_new_private_token() {
        let dir = tempfile::tempdir().unwrap();
        let first = fresh_token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            // A token file others could read is replaced by a private one.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let second = fresh_token(dir.path()).unwrap();
        assert_ne!(second, first, "a token outlives the run that made it");
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
