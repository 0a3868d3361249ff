//! `headscale-suite`: runs the headscale suite (see `tests::headscale`)
//! once and prints its timings. `cargo xtask headscale` builds headscale,
//! the `kv` example and this, and calls it.
//!
//! ```text
//! headscale-suite --headscale-bin PATH --kv-bin PATH [--nodes N] [--keep-dir DIR]
//!                 [--batch-delay MS]
//! ```
//!
//! `--batch-delay` sets headscale's netmap batching (`tuning.batch_change_delay`
//! and `tuning.node_store_batch_timeout`, 800 and 500 ms by default), to
//! compare formation and membership times with other values; CI keeps the
//! defaults.
//!
//! Exits non-zero if a check failed or the run could not finish; the
//! failure report ends with headscale's log and the end of every node's.

#![allow(clippy::print_stdout, reason = "a command-line tool: its report goes to stdout")]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tests::headscale::{SuiteOptions, run};

fn usage() -> ExitCode {
    eprintln!(
        "usage: headscale-suite --headscale-bin PATH --kv-bin PATH [--nodes N] [--keep-dir DIR] \
         [--batch-delay MS]"
    );
    ExitCode::from(2)
}

/// The whole run, setup and teardown included, ends within this.
const RUN_BOUND: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut headscale_bin, mut kv_bin, mut keep_dir) = (None, None, None);
    let mut nodes = 3usize;
    let mut batch_delay = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else { return usage() };
        let parsed = match flag.as_str() {
            "--headscale-bin" => headscale_bin.replace(PathBuf::from(value)).is_none(),
            "--kv-bin" => kv_bin.replace(PathBuf::from(value)).is_none(),
            "--keep-dir" => keep_dir.replace(PathBuf::from(value)).is_none(),
            "--nodes" => value.parse().map(|n| nodes = n).is_ok(),
            "--batch-delay" => value
                .parse()
                .map(|ms| batch_delay.replace(Duration::from_millis(ms)).is_none())
                .unwrap_or(false),
            _ => false,
        };
        if !parsed {
            eprintln!("headscale-suite: bad or repeated flag: {flag} {value}");
            return usage();
        }
    }
    let (Some(headscale_bin), Some(kv_bin)) = (headscale_bin, kv_bin) else { return usage() };
    if !(3..=7).contains(&nodes) {
        eprintln!("headscale-suite: --nodes must be 3 to 7");
        return usage();
    }
    let options = SuiteOptions { headscale_bin, kv_bin, nodes, keep_dir, batch_delay };
    let started = Instant::now();
    let outcome = match tokio::time::timeout(RUN_BOUND, run(options)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("the run exceeded {RUN_BOUND:?}")),
    };
    match outcome {
        Ok(report) => {
            println!("headscale suite: PASS in {:.1?}\n{report}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("headscale suite: FAILED after {:.1?}: {why}", started.elapsed());
            ExitCode::FAILURE
        }
    }
}
