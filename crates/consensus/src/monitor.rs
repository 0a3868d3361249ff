//! The monitor: `/status` (JSON), `/metrics` (Prometheus text: the gauges
//! here, the counters and histograms of [`crate::metrics`]), `/healthz` and
//! `/readyz` ([`crate::health`]) and `/` (an HTML page that refreshes
//! itself), on the monitor port for tagged peers and, optionally, on
//! 127.0.0.1 for operators and supervisors. Read-only: no endpoint makes
//! the node dial anything.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cmd_rpc::{Page, PageServer, Render};
use serde::Serialize;
use ts_transport::{PeerAddr, TcpTransport, Transport};

use crate::core::Core;
use crate::error::Error;
use crate::health::Learned;
use crate::machine::StateMachine;
use crate::report::{Member, Metrics, metrics_of};

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The monitor's part of a node: its servers, and what its refresher
/// learns for `/status`, `/metrics` and readiness.
#[derive(Default)]
pub(crate) struct Monitor {
    servers: Mutex<Vec<PageServer>>,
    localhost_port: Mutex<Option<u16>>,
    /// The committed indexes the refresher learns (crate::health).
    pub(crate) learned: Learned,
}

impl Monitor {
    /// The port of the localhost monitor, if it is served.
    pub(crate) fn localhost_port(&self) -> Option<u16> {
        *self.localhost_port.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every monitor server.
    pub(crate) async fn shutdown(&self) {
        let servers: Vec<_> =
            self.servers.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for server in servers {
            server.shutdown().await;
        }
    }

    fn serve(&self, server: PageServer) {
        self.servers.lock().unwrap_or_else(|p| p.into_inner()).push(server);
    }
}

#[derive(Serialize)]
pub(crate) struct Status {
    id: u64,
    stable_id: String,
    incarnation: String,
    cluster_id: Option<String>,
    tag: String,
    #[serde(flatten)]
    metrics: Metrics,
    committed_index: Option<u64>,
    members: Vec<Member>,
}

pub(crate) fn status<S: StateMachine>(core: &Core<S>, monitor: &Monitor) -> Status {
    let raft = core.raft().metrics();
    let metrics = metrics_of(&raft);
    let node = core.raft();
    Status {
        id: core.id,
        stable_id: node.info().stable_id.clone(),
        incarnation: format!("{:016x}", node.incarnation()),
        cluster_id: node.cluster_id().map(|id| id.to_string()),
        tag: core.tag.clone(),
        metrics,
        committed_index: monitor.learned.committed(),
        members: core.members(),
    }
}

fn prometheus(status: &Status) -> String {
    let mut out = String::new();
    let m = &status.metrics;
    let gauge = |out: &mut String, name: &str, help: &str, value: Option<u64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        if let Some(value) = value {
            let _ = writeln!(out, "{name} {value}");
        }
    };
    gauge(
        &mut out,
        "tsconsensus_fatal",
        "1 if the node stopped on a fatal error (the reason is in /status).",
        Some(u64::from(m.fatal.is_some())),
    );
    gauge(&mut out, "tsconsensus_term", "Current raft term.", Some(m.term));
    gauge(
        &mut out,
        "tsconsensus_is_leader",
        "1 if this node leads.",
        Some(u64::from(m.leader == Some(m.id))),
    );
    gauge(
        &mut out,
        "tsconsensus_leader_known",
        "1 if a leader is known.",
        Some(u64::from(m.leader.is_some())),
    );
    gauge(&mut out, "tsconsensus_last_log_index", "Index of the last log entry.", m.last_log_index);
    gauge(
        &mut out,
        "tsconsensus_applied_index",
        "Index of the last applied entry.",
        m.applied_index,
    );
    gauge(
        &mut out,
        "tsconsensus_committed_index",
        "Index of the last committed entry.",
        status.committed_index,
    );
    gauge(
        &mut out,
        "tsconsensus_snapshot_index",
        "Index covered by the last snapshot.",
        m.snapshot_index,
    );
    gauge(&mut out, "tsconsensus_voters", "Voting members.", Some(m.voters as u64));
    gauge(&mut out, "tsconsensus_learners", "Non-voting members.", Some(m.learners as u64));
    let _ = writeln!(
        out,
        "# HELP tsconsensus_member_online 1 if the tailnet shows the member online.\n# TYPE tsconsensus_member_online gauge"
    );
    for member in &status.members {
        let _ = writeln!(
            out,
            "tsconsensus_member_online{{id=\"{}\",stable_id=\"{}\"}} {}",
            member.id,
            escape_label(&member.stable_id),
            u64::from(member.online)
        );
    }
    let _ = writeln!(
        out,
        "# HELP tsconsensus_member_matched_index Last index replicated to the member (leader only).\n# TYPE tsconsensus_member_matched_index gauge"
    );
    for member in &status.members {
        if let Some(index) = member.matched_index {
            let _ =
                writeln!(out, "tsconsensus_member_matched_index{{id=\"{}\"}} {index}", member.id);
        }
    }
    out
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html(status: &Status) -> String {
    let m = &status.metrics;
    let me = status
        .members
        .iter()
        .find(|member| member.id == status.id)
        .and_then(|member| member.hostname.clone());
    let title = match &me {
        Some(host) => format!("{} ({})", escape_html(host), status.id),
        None => status.id.to_string(),
    };
    let leader = status.members.iter().find(|member| member.leader);
    let leader_text = match leader {
        Some(l) => {
            format!("{} ({})", escape_html(l.hostname.as_deref().unwrap_or(&l.stable_id)), l.id)
        }
        None => "none".to_owned(),
    };
    let fatal = match &m.fatal {
        Some(why) => format!(
            "<p id=\"fatal\" style=\"color:#b00\"><b>Stopped on a fatal error:</b> {}</p>",
            escape_html(why)
        ),
        None => String::new(),
    };
    let mut rows = String::new();
    for member in &status.members {
        let _ = write!(
            rows,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{:?}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if member.leader { " class=\"leader\"" } else { "" },
            member.id,
            escape_html(member.hostname.as_deref().unwrap_or("?")),
            escape_html(&member.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
            member.role,
            if member.leader { ", leader" } else { "" },
            escape_html(&member.tags.join(" ")),
            if member.online { "online" } else { "offline" },
            member.matched_index.map(|i| i.to_string()).unwrap_or_else(|| "-".to_owned()),
        );
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>tsconsensus {title}</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}tr.leader{{font-weight:bold}}</style></head>\
         <body><h1>tsconsensus {title}</h1><p id=\"summary\">Tag <b>{tag}</b> · role <b>{role:?}</b> · term {term} · \
         leader <b id=\"leader\">{leader_text}</b> · applied {applied} · committed {committed} · snapshot {snapshot}</p>{fatal}\
         <table id=\"members\"><tr><th>id</th><th>host</th><th>addresses</th><th>role</th><th>tags</th><th>tailnet</th><th>replicated to</th></tr>{rows}</table>\
         <p>Refreshes every 2 s. <a href=\"/status\">status JSON</a> · <a href=\"/metrics\">metrics</a></p></body></html>",
        tag = escape_html(&status.tag),
        role = m.role,
        term = m.term,
        applied = m.applied_index.map(|i| i.to_string()).unwrap_or_else(|| "-".to_owned()),
        committed = status.committed_index.map(|i| i.to_string()).unwrap_or_else(|| "-".to_owned()),
        snapshot = m.snapshot_index.map(|i| i.to_string()).unwrap_or_else(|| "-".to_owned()),
    )
}

/// The monitor's pages; they answer nothing once the node is gone (the
/// servers own this renderer, so it holds the node's parts weakly).
fn renderer<S: StateMachine>(core: Weak<Core<S>>, monitor: Weak<Monitor>) -> Render {
    Arc::new(move |path: &str| {
        let (core, monitor) = (core.upgrade()?, monitor.upgrade()?);
        let status = status(&core, &monitor);
        match path {
            "/status" => Some(Page {
                status: 200,
                content_type: "application/json",
                body: serde_json::to_string_pretty(&status).unwrap_or_default(),
            }),
            "/metrics" => {
                let mut body = prometheus(&status);
                crate::metrics::render(
                    &mut body,
                    &crate::metrics::Scrape {
                        counters: &core.counters,
                        raft: core.raft().stats(),
                        commands: core.service.stats(),
                    },
                );
                Some(Page { status: 200, content_type: "text/plain; version=0.0.4", body })
            }
            "/healthz" => {
                let (status, body) = match &status.metrics.fatal {
                    None => (200, serde_json::json!({ "status": "ok" })),
                    Some(why) => (503, serde_json::json!({ "status": "fatal", "reason": why })),
                };
                Some(Page { status, content_type: "application/json", body: body.to_string() })
            }
            "/readyz" => {
                let readiness = crate::health::of(&core, &monitor.learned);
                Some(Page {
                    status: if readiness.ready { 200 } else { 503 },
                    content_type: "application/json",
                    body: serde_json::to_string(&readiness).unwrap_or_default(),
                })
            }
            "/" => Some(Page {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: html(&status),
            }),
            _ => None,
        }
    })
}

/// Starts the monitor servers and the task that refreshes the committed
/// index.
pub(crate) async fn start<S: StateMachine>(
    core: &Arc<Core<S>>,
    monitor: &Arc<Monitor>,
    transport: Arc<dyn Transport>,
    authorize: Arc<dyn Fn(PeerAddr) -> bool + Send + Sync>,
) -> Result<(), Error> {
    let refresher = tokio::spawn({
        let (core, monitor) = (Arc::downgrade(core), Arc::downgrade(monitor));
        async move {
            loop {
                let (Some(strong), Some(monitor)) = (core.upgrade(), monitor.upgrade()) else {
                    return;
                };
                if let Some(committed) = strong.raft().committed_index().await {
                    monitor.learned.set_committed(committed);
                }
                crate::health::refresh_leader_commit(&strong, &monitor.learned).await;
                drop((strong, monitor));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    core.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(refresher);
    let render = renderer(Arc::downgrade(core), Arc::downgrade(monitor));
    if let Some(port) = core.config.monitor_port {
        let listener = transport.listen(port).await.map_err(|e| {
            Error::network_from(format!("cannot listen on monitor port {port}: {e}"), e)
        })?;
        let server =
            PageServer::start(Arc::from(listener), authorize, render.clone(), HEADER_TIMEOUT);
        monitor.serve(server);
    }
    if let Some(port) = core.config.monitor_localhost_port {
        let local = TcpTransport::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let listener = local.listen(port).await.map_err(|e| {
            Error::network_from(
                format!("cannot listen on 127.0.0.1:{port} for the monitor: {e}"),
                e,
            )
        })?;
        // Loopback callers that name it 127.0.0.1 or localhost (no DNS
        // rebinding), as the admin endpoint.
        let server = PageServer::start_local(Arc::from(listener), render, HEADER_TIMEOUT);
        *monitor.localhost_port.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.port());
        monitor.serve(server);
    }
    Ok(())
}
