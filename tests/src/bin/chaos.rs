//! `chaos`: runs the multi-process nemesis (see `tests::chaos`) one or more
//! times and reports each run. `cargo xtask chaos` builds the `chaos-node`
//! program and this driver, then calls it.
//!
//! ```text
//! chaos --node-bin PATH [--runs N] [--seed S] [--duration SECS] [--nodes N]
//!       [--clients N] [--keys N] [--keep-dir DIR] [--report FILE]
//!       [--snapshot-every N] [--local-reads yes]
//!       [--faults KIND,...] [--require KIND,...]
//! ```
//!
//! Kinds: kill, wipe, pause, partition, partition-leader, delay, drop,
//! untag, start-lowest, start-highest, replace, double, fsync-fail,
//! write-fail (the default set: all of them). `--require` puts each of its kinds among the
//! first faults of every run (by the seed). `--snapshot-every` defaults to
//! 300 entries (0: the library's default).
//!
//! Run `i` uses seed `S + i`. `--report` appends one JSON line per run.
//! Exits non-zero if any run found a violation or could not run.

#![allow(clippy::print_stdout, reason = "a command-line tool: its report goes to stdout")]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tests::chaos::{ChaosOptions, FaultKind, run};

fn usage() -> ExitCode {
    let kinds: Vec<&str> = FaultKind::NAMES.iter().map(|(name, _)| *name).collect();
    eprintln!(
        "usage: chaos --node-bin PATH [--runs N] [--seed S] [--duration SECS] [--nodes N] \
         [--clients N] [--keys N] [--keep-dir DIR] [--report FILE] [--snapshot-every N] \
         [--local-reads yes] [--faults KIND,...] [--require KIND,...]\nkinds: {}",
        kinds.join(",")
    );
    ExitCode::from(2)
}

fn kinds(value: &str) -> Option<Vec<FaultKind>> {
    value
        .split(',')
        .map(FaultKind::from_name)
        .collect::<Option<Vec<_>>>()
        .filter(|kinds| !kinds.is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut node_bin = None;
    let mut runs = 1u64;
    let mut seed = None;
    let mut duration = 60u64;
    let (mut nodes, mut clients, mut keys) = (3usize, 6usize, 5usize);
    let mut keep_dir = None;
    let mut report = None;
    let mut local_reads = false;
    let mut faults = FaultKind::ALL.to_vec();
    let mut require = Vec::new();
    let mut snapshot_every = Some(300);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else { return usage() };
        let number = || value.parse::<u64>().ok();
        let parsed = match flag.as_str() {
            "--node-bin" => node_bin.replace(PathBuf::from(value)).map_or(Some(()), |_| None),
            "--runs" => number().map(|n| runs = n),
            "--seed" => number().map(|n| seed = Some(n)),
            "--duration" => number().map(|n| duration = n),
            "--nodes" => number().map(|n| nodes = n as usize),
            "--clients" => number().map(|n| clients = n as usize),
            "--keys" => number().map(|n| keys = n as usize),
            "--keep-dir" => keep_dir.replace(PathBuf::from(value)).map_or(Some(()), |_| None),
            "--faults" => kinds(value).map(|kinds| faults = kinds),
            "--require" => kinds(value).map(|kinds| require = kinds),
            "--snapshot-every" => number().map(|n| snapshot_every = (n > 0).then_some(n)),
            "--local-reads" => (value == "yes").then(|| local_reads = true),
            "--report" => report.replace(PathBuf::from(value)).map_or(Some(()), |_| None),
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("chaos: bad flag or value: {flag} {value}");
            return usage();
        }
    }
    let Some(node_bin) = node_bin else { return usage() };
    if !node_bin.is_file() {
        eprintln!(
            "chaos: the node binary {} does not exist (cargo build -p tests --features tailnet --bin chaos-node)",
            node_bin.display()
        );
        return ExitCode::from(2);
    }
    if nodes < 3 || clients == 0 || keys == 0 || duration < 10 {
        eprintln!("chaos: needs at least 3 nodes, 1 client, 1 key and 10 seconds");
        return usage();
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let mut failed = 0;
    for i in 0..runs {
        let run_seed = seed + i;
        eprintln!("chaos: run {}/{runs}, seed {run_seed} (replay with --seed {run_seed})", i + 1);
        let options = ChaosOptions {
            node_bin: node_bin.clone(),
            nodes,
            clients,
            keys,
            duration: Duration::from_secs(duration),
            seed: run_seed,
            keep_dir: keep_dir.clone(),
            local_reads,
            faults: faults.clone(),
            require: require.clone(),
            snapshot_every,
        };
        let started = Instant::now();
        // Setup, the workload, healing and the checks, bounded as a whole.
        let bound = Duration::from_secs(duration) + Duration::from_secs(420);
        let outcome = match tokio::time::timeout(bound, run(options)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("the run exceeded {bound:?}")),
        };
        let line = match &outcome {
            Ok(report) => {
                for fault in &report.faults {
                    eprintln!("chaos:   {fault}");
                }
                println!("{}", report.summary());
                report.to_json(started.elapsed().as_secs_f64())
            }
            Err(why) => {
                println!("seed {run_seed} | could not run: {why}");
                serde_json::json!({ "seed": run_seed, "passed": false, "error": why })
            }
        };
        if !outcome.as_ref().is_ok_and(|r| r.passed()) {
            failed += 1;
        }
        if let Some(path) = &report {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(err) = written {
                eprintln!("chaos: cannot append to {}: {err}", path.display());
            }
        }
    }
    println!("chaos: {} of {runs} runs passed", runs - failed);
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
