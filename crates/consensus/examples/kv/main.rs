//! A replicated key-value store on a tailnet: the whole program a user of
//! `consensus` writes, in three files.
//!
//! - `store.rs`: the state machine, which every node applies the same
//!   commands to: a map from keys to values with put, compare-and-set and
//!   delete;
//! - `lines.rs`: a line interface on 127.0.0.1 that turns lines into
//!   [`Consensus::execute`] and [`Consensus::read`] calls;
//! - this file: joining the tailnet, waiting for the cluster's tag,
//!   starting the node with [`Consensus::start_on_tailnet`], and stopping.
//!
//! Run one per machine (or per `--state-dir` and `--hostname` on one):
//!
//! ```sh
//! cargo run -p consensus --features tailscale --example kv -- --hostname kv-1 --control-url http://127.0.0.1:PORT \
//!     --tag tag:kv --state-dir /tmp/kv-1 --local-port 7000
//! ```
//!
//! Talk to it on `127.0.0.1:<local-port>`, one command per line, one JSON
//! answer per line (lines are at most 64 KiB):
//!
//! ```text
//! put <key> <value>         set a key
//! get <key>                 read it (linearizable)
//! get-local <key>           read it from this node only (may be stale)
//! cas <key> <old|-> <new>   compare-and-set ("-": the key is absent)
//! del <key>                 delete it
//! status                    this node's role, term, leader and members
//! ```
//!
//! `cargo xtask demo` runs three of these as separate processes on a local
//! tailnet.

mod lines;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use consensus::discovery::{LocalApi, LocalApiLimits};
use consensus::{BootstrapOptions, Config, Consensus, NodeOptions, StopMode, TsnetTransport};
use tokio::net::TcpListener;

use crate::store::KvStore;

#[derive(Parser, Debug)]
#[command(about = "A replicated key-value store on a tailnet")]
struct Args {
    /// Tailnet hostname of this node.
    #[arg(long)]
    hostname: String,
    /// Auth key to join the tailnet (not needed once state exists).
    #[arg(long, env = "TS_AUTHKEY")]
    auth_key: Option<String>,
    /// Control server URL (default: Tailscale's).
    #[arg(long)]
    control_url: Option<String>,
    /// The cluster's ACL tag.
    #[arg(long, default_value = "tag:kv")]
    tag: String,
    /// Directory for the node's tailnet state and its raft state.
    #[arg(long)]
    state_dir: PathBuf,
    /// Raft port.
    #[arg(long, default_value_t = 6270)]
    raft_port: u16,
    /// Command port.
    #[arg(long, default_value_t = 6271)]
    command_port: u16,
    /// Monitor port on the tailnet (tagged peers only).
    #[arg(long, default_value_t = 8081)]
    monitor_port: u16,
    /// Also serve the monitor on 127.0.0.1:<port> (with /healthz and
    /// /readyz for supervisors).
    #[arg(long)]
    monitor_local_port: Option<u16>,
    /// Serve the admin endpoint for the `tsconsensus` tool on
    /// 127.0.0.1:<port> (0: any free port); its token and port are kept in
    /// <state-dir>/raft.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Port on 127.0.0.1 for the line interface.
    #[arg(long)]
    local_port: u16,
    /// How many tagged nodes form the first cluster.
    #[arg(long, default_value_t = 1)]
    expected_size: usize,
    /// Only join an existing cluster.
    #[arg(long)]
    follow_only: bool,
    /// Command ports to try on peers when joining.
    #[arg(long, value_delimiter = ',')]
    seed_command_ports: Vec<u16>,
    /// Exit when standard input closes (for supervisors and tests).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut options = NodeOptions::new(args.state_dir.join("tailscale"), &args.hostname);
    options.auth_key = args.auth_key.clone();
    options.control_url = args.control_url.clone();
    let node = TsnetTransport::new(options)?;
    let addrs = node.up(Duration::from_secs(120)).await?;
    eprintln!("kv: {} is on the tailnet at {:?}", args.hostname, addrs.all());
    wait_for_tag(&node, &args.tag).await?;

    let config = Config {
        raft_port: args.raft_port,
        command_port: args.command_port,
        monitor_port: Some(args.monitor_port),
        monitor_localhost_port: args.monitor_local_port,
        admin_port: args.admin_port,
        state_dir: Some(args.state_dir.join("raft")),
        seed_command_ports: args.seed_command_ports.clone(),
        ..Config::default()
    };
    let bootstrap = BootstrapOptions {
        tag: args.tag.clone(),
        follow_only: args.follow_only,
        expected_size: args.expected_size,
    };
    let kv = Consensus::start_on_tailnet(&node, KvStore::default(), bootstrap, config).await?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.local_port))).await?;
    eprintln!(
        "kv: node {} ready; line interface on 127.0.0.1:{}{}{}",
        kv.id(),
        args.local_port,
        kv.monitor_localhost_port()
            .map(|p| format!("; monitor on http://127.0.0.1:{p}/"))
            .unwrap_or_default(),
        kv.admin_port()
            .map(|_| format!(
                "; admin: tsconsensus --state-dir {}",
                args.state_dir.join("raft").display()
            ))
            .unwrap_or_default()
    );

    let serve = lines::accept(listener, kv.clone());
    let stop_on_eof = async {
        if args.exit_on_stdin_eof {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Through consensus::transport: Go needs SA_ONSTACK on the handler.
    let mut interrupt =
        consensus::transport::tsnet::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = serve => {}
        _ = interrupt.recv() => eprintln!("kv: interrupted"),
        _ = stop_on_eof => eprintln!("kv: stdin closed"),
    }
    kv.stop(StopMode::Stay).await?;
    node.close().await;
    Ok(())
}

/// Waits (up to a minute) until this node carries `tag`: an operator may
/// tag it only once it has registered.
async fn wait_for_tag(node: &TsnetTransport, tag: &str) -> Result<(), Box<dyn std::error::Error>> {
    let api = LocalApi::for_node(node, LocalApiLimits::default())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut said = false;
    loop {
        if api.status().await.is_ok_and(|view| view.self_node.has_tag(tag)) {
            return Ok(());
        }
        if !said {
            eprintln!("kv: waiting until this node carries {tag}");
            said = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("this node was not tagged {tag} within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
