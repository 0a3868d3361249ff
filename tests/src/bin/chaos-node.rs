//! `chaos-node`: the node program of the chaos harness and of the
//! end-to-end scenarios (`tests/tests/scenarios.rs`): a key-value state
//! machine (`test_support::kv`: the kv example's, with versions and a
//! digest for checking replicas) on a tailnet node whose transport sits behind switchable faults,
//! with a line interface for clients and for the harness.
//!
//! ```sh
//! chaos-node --hostname chaos-0 --control-url http://127.0.0.1:PORT --tag tag:chaos \
//!     --state-dir /tmp/chaos-0 --local-port 7000 [--expected-size 3] [--fault-seed 7] \
//!     [--snapshot-every 300] [--exit-on-stdin-eof]
//! chaos-node --hostname chaos-9 --control-url ... --state-dir /tmp/chaos-9 --register-only
//! ```
//!
//! The line interface on `127.0.0.1:<local-port>` opens before the node
//! joins the tailnet, so faults can be set before the node starts looking
//! for its cluster. One command per line, one JSON answer per line
//! (`{"ok": ...}` or `{"error": "..."}`; lines are at most 64 KiB): the kv
//! example's commands (`test_support::lines`) and the harness's lines:
//!
//! ```text
//! put <key> <value>         set a key
//! get <key>                 read it (linearizable)
//! get-local <key>           read it from this node only (may be stale)
//! cas <key> <old|-> <new>   compare-and-set ("-": the key is absent)
//! del <key>                 delete it
//! version <key>             how many writes were applied to it (linearizable)
//! digest                    a digest of this node's whole state, and its applied index
//! status                    {"phase": "starting"} until consensus runs, then
//!                           {"phase": "running", "metrics": ..., "members": [...]}
//! fault block <ip>          cut this node off from the peer at <ip>
//! fault unblock <ip>        let it through again
//! fault delay <ms>          hold every outgoing write that long
//! fault drop <per-mille>    reset that share of writes' connections
//! fault heal                remove every network fault
//! fault fsync-fail          fail the next fsync of the raft storage
//! fault write-fail          fail every write of the raft storage from now on
//! ```
//!
//! The storage faults act through `consensus::StorageFaults` in front of
//! the raft log: a failed write is never acknowledged, and the node stops
//! with a fatal error (`status` shows it).
//!
//! `--register-only` brings the node up on the tailnet (so control assigns
//! its stable id, in registration order) and exits: the harness reserves
//! identities that sort lowest this way and starts them later.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use consensus::{
    BootstrapOptions, Config, Consensus, Consistency, NodeOptions, StopMode, StorageFaults,
    TsnetTransport,
};
use test_support::kv::{KvQuery, KvStore};
use test_support::lines;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use ts_discovery::{Discovery, LocalApi, LocalApiLimits, TailnetDiscovery, TailnetDiscoveryConfig};
use ts_transport::{Faults, Transport};

#[derive(Parser, Debug)]
#[command(about = "The chaos harness's node: a KV store on a tailnet, behind switchable faults")]
struct Args {
    /// Tailnet hostname of this node.
    #[arg(long)]
    hostname: String,
    /// Control server URL.
    #[arg(long)]
    control_url: String,
    /// The cluster's ACL tag.
    #[arg(long, default_value = "tag:chaos")]
    tag: String,
    /// Directory for the node's tailnet state (`tailscale/`) and its raft
    /// state (`raft/`).
    #[arg(long)]
    state_dir: PathBuf,
    /// Port on 127.0.0.1 for the line interface.
    #[arg(long, required_unless_present = "register_only")]
    local_port: Option<u16>,
    /// How many tagged nodes form the first cluster.
    #[arg(long, default_value_t = 1)]
    expected_size: usize,
    /// Seed of the random write drops.
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// Build a snapshot after this many log entries (default: the
    /// library's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: Option<u64>,
    /// How long to wait for the cluster tag before giving up, in seconds.
    #[arg(long, default_value_t = 120)]
    tag_wait: u64,
    /// Join the tailnet, then exit (reserves a stable id).
    #[arg(long)]
    register_only: bool,
    /// Exit when standard input closes.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

/// What the line interface serves; the node is set once consensus runs.
struct Served {
    faults: Faults,
    storage: StorageFaults,
    kv: OnceLock<Consensus<KvStore>>,
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
    options.control_url = Some(args.control_url.clone());
    let node = TsnetTransport::new(options)?;

    if args.register_only {
        let addrs = node.up(Duration::from_secs(120)).await?;
        eprintln!("chaos-node: {} registered at {:?}", args.hostname, addrs.all());
        node.close().await;
        return Ok(());
    }

    let served = Arc::new(Served {
        faults: Faults::new(args.fault_seed),
        storage: StorageFaults::new(),
        kv: OnceLock::new(),
    });
    let local_port = args.local_port.ok_or("--local-port is required")?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], local_port))).await?;
    let serve = lines::accept(listener, {
        let served = served.clone();
        move |line| {
            let served = served.clone();
            async move { handle(&served, &line).await }
        }
    });
    let stop_on_eof = async {
        if args.exit_on_stdin_eof {
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    // Through ts-transport: Go needs SA_ONSTACK on the handler.
    let mut interrupt = ts_transport::tsnet::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        result = run(&args, &node, &served) => {
            if let Err(err) = &result {
                eprintln!("chaos-node: {err}");
            }
            result?;
        }
        _ = serve => {}
        _ = interrupt.recv() => eprintln!("chaos-node: interrupted"),
        _ = stop_on_eof => eprintln!("chaos-node: stdin closed"),
    }
    if let Some(kv) = served.kv.get() {
        kv.clone().stop(StopMode::Stay).await?;
    }
    node.close().await;
    Ok(())
}

/// Joins the tailnet, waits for the tag, starts consensus, then serves
/// until the process is told to stop (never returns `Ok` on its own).
async fn run(
    args: &Args,
    node: &TsnetTransport,
    served: &Served,
) -> Result<(), Box<dyn std::error::Error>> {
    let addrs = node.up(Duration::from_secs(120)).await?;
    eprintln!("chaos-node: {} is on the tailnet at {:?}", args.hostname, addrs.all());
    wait_for_tag(node, &args.tag, Duration::from_secs(args.tag_wait)).await?;
    let mut config = Config {
        state_dir: Some(args.state_dir.join("raft")),
        monitor_port: None,
        storage_faults: Some(served.storage.clone()),
        ..Config::default()
    };
    if let Some(every) = args.snapshot_every {
        config.snapshot_every = every;
    }
    let bootstrap = BootstrapOptions {
        tag: args.tag.clone(),
        follow_only: false,
        expected_size: args.expected_size,
    };
    let transport: Arc<dyn Transport> = Arc::new(served.faults.wrap(Arc::new(node.clone())));
    let api = LocalApi::for_node(node, LocalApiLimits::default())?;
    let discovery =
        Arc::new(TailnetDiscovery::start(api, TailnetDiscoveryConfig::new(args.tag.clone())));
    let kv = match Consensus::start_with(
        transport,
        discovery.clone(),
        KvStore::default(),
        bootstrap,
        config,
    )
    .await
    {
        Ok(kv) => kv,
        Err(err) => {
            discovery.stop();
            return Err(format!("consensus did not start: {err}").into());
        }
    };
    eprintln!("chaos-node: node {} running", kv.id());
    let _ = served.kv.set(kv);
    std::future::pending::<()>().await;
    Ok(())
}

/// Waits until this node carries `tag`: the harness tags it once it has
/// registered.
async fn wait_for_tag(
    node: &TsnetTransport,
    tag: &str,
    limit: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let api = LocalApi::for_node(node, LocalApiLimits::default())?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if api.status().await.is_ok_and(|view| view.self_node.has_tag(tag)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("this node was not tagged {tag} within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line of the line interface: `fault ...`, the commands of
/// `test_support::lines::kv_command`, and the harness's `status`,
/// `version` and `digest`.
async fn handle(served: &Served, line: &str) -> serde_json::Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    if let ["fault", rest @ ..] = words.as_slice() {
        return fault(&served.faults, &served.storage, rest);
    }
    let Some(kv) = served.kv.get() else {
        return match words.as_slice() {
            ["status"] => serde_json::json!({ "ok": { "phase": "starting" } }),
            _ => serde_json::json!({ "error": "starting: consensus is not running yet" }),
        };
    };
    if let Some(answer) = lines::kv_command(kv, &words).await {
        return answer;
    }
    let result = match words.as_slice() {
        ["version", key] => {
            kv.read(KvQuery::Version { key: key.to_string() }, Consistency::Linearizable).await
        }
        ["digest"] => kv.read(KvQuery::Digest, Consistency::Local).await.map(|digest| {
            serde_json::json!({ "digest": digest, "applied_index": kv.metrics().applied_index })
        }),
        ["status"] => Ok(serde_json::json!({
            "phase": "running",
            "metrics": kv.metrics(),
            "members": kv.members(),
        })),
        _ => return lines::unknown(line),
    };
    lines::answer(result)
}

/// A `fault` line.
fn fault(faults: &Faults, storage: &StorageFaults, words: &[&str]) -> serde_json::Value {
    let ip = |word: &str| {
        word.parse::<IpAddr>().map_err(|err| format!("{word:?} is not an IP address: {err}"))
    };
    let number =
        |word: &str| word.parse::<u64>().map_err(|err| format!("{word:?} is not a number: {err}"));
    let done = match words {
        ["block", peer] => ip(peer).map(|peer| faults.block(peer)),
        ["unblock", peer] => ip(peer).map(|peer| faults.unblock(peer)),
        ["delay", ms] => number(ms).and_then(|ms| {
            (ms <= 60_000)
                .then(|| faults.set_delay(Duration::from_millis(ms)))
                .ok_or_else(|| format!("a delay of {ms} ms is over the 60000 ms limit"))
        }),
        ["drop", per_mille] => number(per_mille)
            .map(|n| faults.set_drop_per_mille(u16::try_from(n.min(1000)).unwrap_or(1000))),
        ["heal"] => {
            faults.heal();
            Ok(())
        }
        ["fsync-fail"] => {
            storage.fail_next_fsync();
            Ok(())
        }
        ["write-fail"] => {
            storage.fail_all_writes(true);
            Ok(())
        }
        _ => Err(format!("unknown fault command {:?}", words.join(" "))),
    };
    match done {
        Ok(()) => {
            let config = faults.config();
            serde_json::json!({ "ok": {
                "blocked": config.blocked,
                "delay_ms": config.delay.as_millis() as u64,
                "drop_per_mille": config.drop_per_mille,
            }})
        }
        Err(err) => serde_json::json!({ "error": err }),
    }
}
