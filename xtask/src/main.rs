//! Build and test automation for the workspace, run as `cargo xtask <task>`.
//!
//! - `demo`: a local tailnet and three KV nodes as separate processes:
//!   writes, reads, the leader killed and replaced, the old leader back.
//! - `ci`: the one gate. Formatting check, clippy with warnings denied,
//!   docs with warnings denied, the whole test suite (the real-tailnet tests
//!   included; the `tsconsensus` tool's end-to-end tests among them),
//!   `cargo package` of every published crate, the project in
//!   `tests/downstream` (outside the workspace, depending on `consensus`
//!   by path) built and run, and `cargo deny check bans licenses
//!   sources`. It never edits files. It ends with one chaos run and the
//!   headscale suite.
//! - `chaos [--runs N] [--seed S] [--duration SECS] [--nodes N]
//!   [--faults KIND,...] [--keep-dir DIR] [--report FILE] ...`: the
//!   multi-process nemesis (flags: `tests/src/bin/chaos.rs`). A local
//!   tailnet, `chaos-node` processes, concurrent clients, seeded faults
//!   (kill -9, raft state wiped, SIGSTOP, partitions, delays, drops, tags
//!   revoked and restored, new nodes mid-run, replacements, two faults at
//!   once), then the linearizability checker, the replica checks and the
//!   two-leader watch. `ci` runs one run of it that must include a state
//!   wipe and a new node started mid-run.
//! - `headscale [--build-only] [--nodes N] [--keep-dir DIR]`: the kv
//!   example against headscale (a real, independent control server) on
//!   127.0.0.1: tagged pre-auth key, forming, retag out and back, kill -9
//!   of the leader, with every phase timed. headscale is built once from
//!   the Go module proxy at a pinned version and cached under
//!   `target/headscale/`. `ci` runs it.
//! - `tailnet`: runs the local tailnet (control, DERP, STUN on 127.0.0.1)
//!   in the foreground and prints its URLs, for trying things by hand.
//! - `bench [--quick]`: the consensus benchmark suite (transports, cluster
//!   sizes, concurrency, command sizes, storage, leader or follower, reads,
//!   memory over a million commands), side by side with Tailscale's Go
//!   tsconsensus (`xtask/gobench`, built here) and with three `kv` example
//!   processes (release build): throughput, CPU per put, failover,
//!   elections under load. Writes its sections of `docs/benchmarks.md` and
//!   `docs/img/throughput.svg`. `--quick` runs a reduced version in a few
//!   minutes and writes only `target/bench/` (in `CARGO_TARGET_DIR` if
//!   set).
//! - `bench transport`: the raw transport benchmark (tsnet and TCP), whose
//!   table goes into `docs/benchmarks.md`.
//! - `bench discovery`: tag-propagation latency on the local tailnet.
//! - `bench raft`: proposal throughput and latency of a 3-node raft-core
//!   cluster (memory and TCP transports, memory and durable storage).
//!
//! Standard library only, so it builds in seconds before anything else.

mod demo;
mod headscale;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Environment every process that may start a tsnet node gets. Go reads it
/// when the process starts, so it must be set before exec.
const TAILNET_ENV: &[(&str, &str)] =
    &[("TS_NO_LOGS_NO_SUPPORT", "true"), ("TS_DISABLE_PORTMAPPER", "1")];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci"] => ci(),
        ["chaos", rest @ ..] => chaos(rest),
        ["demo"] => demo::demo(),
        ["headscale", rest @ ..] => headscale::headscale(rest),
        ["tailnet"] => tailnet(),
        ["bench", which @ ("transport" | "discovery")] => bench("tests", which),
        ["bench", "raft"] => bench("raft-core", "propose"),
        ["bench"] => bench_suite(false),
        ["bench", "--quick"] => bench_suite(true),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | demo | chaos [options] | headscale [--build-only | options] \
                 | tailnet | bench [--quick] | bench transport | bench discovery | bench raft>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

/// The crates meant for crates.io, in dependency order.
const PUBLISHED: &[&str] =
    &["ts-transport", "ts-discovery", "raft-core", "cmd-rpc", "consensus", "tsconsensus"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_owned()
}

/// Where the cargo commands run here build: `CARGO_TARGET_DIR` if set (a
/// relative one from the workspace root, where they run), else `target/`.
/// Every built binary and every output (`bench/`, `headscale/`, `xtask/`)
/// is found through it, as the cluster benchmark's default output is.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(workspace_root());
    cmd.envs(TAILNET_ENV.iter().copied());
    cmd
}

fn run(step: &str, cmd: &mut Command) -> Result {
    eprintln!("\n==> {step}");
    let started = Instant::now();
    let status = cmd.status().map_err(|err| format!("{step}: could not start: {err}"))?;
    eprintln!(
        "==> {step}: {} in {:.1?}",
        if status.success() { "ok" } else { "FAILED" },
        started.elapsed()
    );
    if status.success() { Ok(()) } else { Err(format!("{step} failed ({status})")) }
}

fn ci() -> Result {
    let started = Instant::now();
    run("fmt", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "doc",
        cargo()
            .args(["doc", "--workspace", "--all-features", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Every real-tailnet test runs several tsnet nodes; on a 2-core machine
    // too many at once starve them, so bound the parallelism. Every test
    // binary runs even after one fails, so that one gate run reports every
    // failing test, not only the first binary's.
    run(
        "test",
        cargo()
            .args(["test", "--workspace", "--all-features", "--locked", "--no-fail-fast"])
            .env("RUST_TEST_THREADS", "4"),
    )?;
    // Every library crate (and the tool) packages as it would be published:
    // versioned dependencies, the Go sources inside ts-transport. Packaged
    // together, so that they resolve each other before any is on crates.io.
    let mut package = cargo();
    package.args(["package", "--no-verify", "--offline", "--allow-dirty"]);
    for krate in PUBLISHED {
        package.args(["-p", krate]);
    }
    run("package", &mut package)?;
    // A project outside the workspace that depends on `consensus` by path,
    // as a user's would, builds and runs (sharing the target directory).
    let root = workspace_root();
    run(
        "downstream",
        cargo()
            .current_dir(root.join("tests/downstream"))
            .args(["run", "--locked", "--offline"])
            .env("CARGO_TARGET_DIR", target_dir()),
    )?;
    run("deny", cargo().args(["deny", "--all-features", "check", "bans", "licenses", "sources"]))?;
    // A fresh seed each time (printed, replayable with --seed), so that CI
    // keeps exploring new fault schedules; every schedule wipes a node's
    // raft state and starts a new node mid-run at least once.
    chaos(&["--runs", "1", "--duration", "120", "--require", "wipe,start-lowest"])?;
    // The kv example against headscale, a real control server (built once,
    // then cached under target/headscale/).
    headscale::headscale(&[])?;
    eprintln!("\nci: all steps passed in {:.1?}", started.elapsed());
    Ok(())
}

fn tailnet() -> Result {
    let root = workspace_root();
    let bin = target_dir().join("xtask/tailnet");
    run(
        "build local tailnet",
        Command::new("go")
            .current_dir(root.join("xtask/tailnet"))
            .args(["build", "-trimpath", "-mod=readonly", "-o"])
            .arg(&bin)
            .arg("."),
    )?;
    eprintln!(
        "local tailnet: the line below has its URLs; press Ctrl-D (close stdin) or Ctrl-C to stop"
    );
    run("local tailnet", &mut Command::new(&bin))
}

fn bench(package: &str, which: &str) -> Result {
    run(
        &format!("{which} benchmark"),
        cargo().args([
            "bench",
            "--package",
            package,
            "--features",
            "tailnet",
            "--bench",
            which,
            "--locked",
        ]),
    )
}

/// Markers around the generated part of docs/benchmarks.md.
const BENCH_START: &str = "<!-- cluster-bench:start -->";
const BENCH_END: &str = "<!-- cluster-bench:end -->";

/// Markers around the generated side-by-side comparison with Go.
const VERSUS_START: &str = "<!-- versus-bench:start -->";
const VERSUS_END: &str = "<!-- versus-bench:end -->";

fn bench_suite(quick: bool) -> Result {
    let root = workspace_root();
    let target = target_dir();
    let out = target.join("bench");
    let gobench = target.join("xtask/gobench");
    run(
        "build Go tsconsensus benchmark",
        Command::new("go")
            .current_dir(root.join("xtask/gobench"))
            .args(["build", "-trimpath", "-mod=readonly", "-o"])
            .arg(&gobench)
            .arg("."),
    )?;
    // The bench profile is release with line tables (for perf); it shares
    // the artifacts `cargo bench` builds, in target/release.
    run(
        "build kv example (release)",
        cargo().args([
            "build",
            "--profile",
            "bench",
            "--locked",
            "-p",
            "consensus",
            "--example",
            "kv",
            "--features",
            "tailscale",
        ]),
    )?;
    let mut command = cluster_bench(&out);
    command.arg("--go-bin").arg(&gobench);
    command.arg("--kv-bin").arg(target.join("release/examples/kv"));
    if quick {
        command.arg("--quick");
    }
    run("cluster benchmark", &mut command)?;
    if quick {
        eprintln!("quick run: results in {} (docs/ left as they are)", out.display());
        return Ok(());
    }
    let mut report =
        std::fs::read_to_string(out.join("cluster.md")).map_err(|e| format!("read report: {e}"))?;
    // A process of its own, so earlier scenarios do not weigh on it.
    run("memory over a million commands", cluster_bench(&out).arg("--memory"))?;
    let memory =
        std::fs::read_to_string(out.join("memory.md")).map_err(|e| format!("read report: {e}"))?;
    report.push_str(&format!("\n### Memory over a million commands\n\n{memory}"));
    let versus =
        std::fs::read_to_string(out.join("versus.md")).map_err(|e| format!("read report: {e}"))?;
    let docs = root.join("docs/benchmarks.md");
    let text =
        std::fs::read_to_string(&docs).map_err(|e| format!("read {}: {e}", docs.display()))?;
    let text = splice(&text, BENCH_START, BENCH_END, &report)?;
    let text = splice(&text, VERSUS_START, VERSUS_END, &versus)?;
    std::fs::write(&docs, text).map_err(|e| format!("write {}: {e}", docs.display()))?;
    std::fs::create_dir_all(root.join("docs/img")).map_err(|e| e.to_string())?;
    std::fs::copy(out.join("throughput.svg"), root.join("docs/img/throughput.svg"))
        .map_err(|e| format!("copy chart: {e}"))?;
    eprintln!("wrote docs/benchmarks.md and docs/img/throughput.svg");
    Ok(())
}

/// `cargo bench` of the tests package's cluster benchmark, writing into `out`.
fn cluster_bench(out: &Path) -> Command {
    let mut command = cargo();
    command
        .args(["bench", "--package", "tests", "--features", "tailnet", "--bench", "cluster"])
        .args(["--locked", "--"])
        .arg(out);
    command
}

/// `text` with what lies between the `start` and `end` markers replaced by
/// `section`.
fn splice(text: &str, start: &str, end: &str, section: &str) -> Result<String> {
    let (Some(from), Some(to)) = (text.find(start), text.find(end)) else {
        return Err(format!("docs/benchmarks.md lacks the {start} / {end} markers"));
    };
    Ok(format!("{}{start}\n{section}\n{}", &text[..from], &text[to..]))
}

/// Builds the chaos node and driver, then runs the driver with `args` (see
/// `tests/src/bin/chaos.rs` for the flags).
fn chaos(args: &[&str]) -> Result {
    let root = workspace_root();
    run(
        "build chaos node and driver",
        cargo().args([
            "build",
            "--locked",
            "--package",
            "tests",
            "--features",
            "tailnet",
            "--bin",
            "chaos",
            "--bin",
            "chaos-node",
        ]),
    )?;
    let target = target_dir();
    let node_bin = target.join("debug/chaos-node");
    if !node_bin.is_file() {
        return Err(format!("the build did not produce {}", node_bin.display()));
    }
    let mut command = Command::new(target.join("debug/chaos"));
    command.current_dir(&root).envs(TAILNET_ENV.iter().copied());
    command.arg("--node-bin").arg(node_bin).args(args);
    run("chaos", &mut command)
}
