//! The side-by-side report: Tailscale's Go tsconsensus against this library,
//! from one run, with the targets of issue 13 checked.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use tests::rawnet;

use crate::gobench::{GoCluster, GoTransport};
use crate::processes::{Flavor, ProcReport};

/// One in-process cluster scenario of ours.
#[derive(Clone, Debug)]
pub(crate) struct Numbers {
    pub(crate) ops_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) cpu_per_op: Duration,
    pub(crate) entries_per_s: f64,
    pub(crate) switches_per_op: f64,
    /// The share of the machine's CPU time the host took meanwhile.
    pub(crate) stolen: Option<f64>,
}

/// A shape measured on both sides.
pub(crate) struct Pair {
    pub(crate) callers: usize,
    pub(crate) durable: bool,
    pub(crate) to_follower: bool,
    pub(crate) ours: Numbers,
    pub(crate) go: Result<GoCluster, String>,
    /// The share of the machine's CPU time the host took while Go's run
    /// of the shape (its start included) lasted.
    pub(crate) go_stolen: Option<f64>,
}

/// The raw tsnet measurements of both sides.
pub(crate) struct Transports {
    pub(crate) ours: rawnet::Report,
    pub(crate) ours_path: String,
    pub(crate) go: Option<Result<GoTransport, String>>,
}

/// Everything one run compared.
pub(crate) struct Report {
    quick: bool,
    /// [`wakeup_round_trip`] when the run started.
    wakeup_at_start: Option<Duration>,
    pub(crate) transport: Option<Transports>,
    pub(crate) clusters: Vec<Pair>,
    pub(crate) kv: Option<Result<ProcReport, String>>,
    pub(crate) go_nodes: Option<Result<ProcReport, String>>,
}

/// One target of issue 13.
struct Target {
    name: &'static str,
    go: String,
    ours: String,
    measured: Option<f64>,
    unit: &'static str,
    goal: f64,
    higher_is_better: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(ours: f64, go: f64) -> String {
    if go > 0.0 { format!("{:.2}×", ours / go) } else { "–".to_owned() }
}

/// Output of a small command, trimmed; "unknown" if it fails.
fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Median time for a thread to wake another on the other CPU and be woken
/// back (park and unpark, a futex each way, the two threads pinned to two
/// different CPUs this process may use), over 2,000 round trips; `None`
/// with fewer than two CPUs. A wake-up across CPUs is the hand-off our
/// tailnet shapes make several times per command (between the Go and tokio
/// schedulers) and Go's in-process ones almost never. On a virtual machine
/// whose idle CPUs halt, each one costs the host waking a virtual CPU, and
/// that cost moves from minute to minute, so the report prints it next to
/// the load average.
pub(crate) fn wakeup_round_trip() -> Option<Duration> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    const ROUNDS: usize = 2_000;
    // Two CPUs this process is allowed to run on.
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set, and
    // sched_getaffinity writes at most its size.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: as above; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads the set with an index below CPU_SETSIZE.
    let mut cpus =
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) });
    let (a, b) = (cpus.next()?, cpus.next()?);
    let pin = move |cpu: usize| {
        // SAFETY: as above; the set has one CPU below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size, &set);
        }
    };
    // 0: the measuring thread's turn; 1: the echo thread's; 2: stop.
    let turn = Arc::new(AtomicU32::new(0));
    let measure = std::thread::spawn(move || {
        pin(a);
        let me = std::thread::current();
        let echo = {
            let turn = Arc::clone(&turn);
            std::thread::spawn(move || {
                pin(b);
                loop {
                    match turn.load(Ordering::Acquire) {
                        1 => {
                            turn.store(0, Ordering::Release);
                            me.unpark();
                        }
                        2 => return,
                        _ => std::thread::park(),
                    }
                }
            })
        };
        let mut took = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            turn.store(1, Ordering::Release);
            echo.thread().unpark();
            while turn.load(Ordering::Acquire) != 0 {
                std::thread::park();
            }
            took.push(start.elapsed());
        }
        turn.store(2, Ordering::Release);
        echo.thread().unpark();
        // The echo thread only parks and stores; it cannot panic.
        let _ = echo.join();
        took.sort_unstable();
        took[ROUNDS / 2]
    });
    measure.join().ok()
}

/// The machine's CPU time so far, as `/proc/stat` counts it in clock
/// ticks: (stolen by the host, all). `None` without such a file.
pub(crate) fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is in
    // user already).
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    Some((*ticks.get(7)?, ticks.iter().sum()))
}

/// The share of the machine's CPU time the host took (a virtual CPU ready
/// to run that the host did not run) between two [`machine_cpu`] reads.
/// A run with much stolen time is slower for reasons outside it.
pub(crate) fn stolen(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((steal_before, all_before), (steal_after, all_after)) = (before?, after?);
    let all = all_after.checked_sub(all_before).filter(|all| *all > 0)?;
    Some(steal_after.saturating_sub(steal_before) as f64 / all as f64)
}

/// A [`stolen`] share for a report cell.
pub(crate) fn stolen_text(share: Option<f64>) -> String {
    share.map_or_else(|| "–".to_owned(), |s| format!("{:.0} %", s * 100.0))
}

/// [`wakeup_round_trip`] for a report line.
pub(crate) fn wakeup_text(round_trip: Option<Duration>) -> String {
    round_trip.map_or_else(|| "unknown".to_owned(), |d| format!("{} µs", d.as_micros()))
}

impl Report {
    pub(crate) fn new(quick: bool) -> Report {
        Report {
            quick,
            wakeup_at_start: wakeup_round_trip(),
            transport: None,
            clusters: Vec::new(),
            kv: None,
            go_nodes: None,
        }
    }

    fn pair(&self, callers: usize, durable: bool, to_follower: bool) -> Option<&Pair> {
        self.clusters
            .iter()
            .find(|p| p.callers == callers && p.durable == durable && p.to_follower == to_follower)
    }

    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let both = |callers, durable| {
            self.pair(callers, durable, false).and_then(|p| p.go.as_ref().ok().map(|g| (p, g)))
        };
        for (name, callers, durable, goal) in [
            ("1 caller to the leader: commands/s, ours ÷ Go", 1, false, 1.0),
            ("16 callers: commands/s, ours ÷ Go", 16, false, 1.0),
            ("64 callers: commands/s, ours ÷ Go", 64, false, 2.0),
            ("durable, 64 callers: commands/s, ours ÷ Go", 64, true, 2.0),
        ] {
            let found = both(callers, durable);
            out.push(Target {
                name,
                go: found.map_or("–".to_owned(), |(_, g)| format!("{:.0}/s", g.ops_per_s)),
                ours: found.map_or("–".to_owned(), |(p, _)| format!("{:.0}/s", p.ours.ops_per_s)),
                measured: found.map(|(p, g)| p.ours.ops_per_s / g.ops_per_s),
                unit: "×",
                goal,
                higher_is_better: true,
            });
            if callers == 1 && !durable {
                out.push(Target {
                    name: "1 caller to the leader: p50, ours ÷ Go",
                    go: found
                        .map_or("–".to_owned(), |(_, g)| format!("{:.2} ms", g.p50_us / 1e3)),
                    ours: found.map_or("–".to_owned(), |(p, _)| ms(p.ours.p50)),
                    measured: found.map(|(p, g)| us(p.ours.p50) / g.p50_us),
                    unit: "×",
                    goal: 1.0,
                    higher_is_better: false,
                });
            }
        }
        for (name, callers) in [
            ("to a follower ÷ to the leader, 1 caller (memory)", 1),
            ("to a follower ÷ to the leader, 64 callers (memory)", 64),
        ] {
            let (lead, follow) =
                (self.pair(callers, false, false), self.pair(callers, false, true));
            let go = match (lead.map(|p| &p.go), follow.map(|p| &p.go)) {
                (Some(Ok(l)), Some(Ok(f))) => format!("{:.2}", f.ops_per_s / l.ops_per_s),
                _ => "–".to_owned(),
            };
            let measured = match (lead, follow) {
                (Some(l), Some(f)) => Some(f.ours.ops_per_s / l.ours.ops_per_s),
                _ => None,
            };
            out.push(Target {
                name,
                go,
                ours: measured.map_or("–".to_owned(), |m| format!("{m:.2}")),
                measured,
                unit: "",
                goal: 0.8,
                higher_is_better: true,
            });
        }
        let transport = self.transport.as_ref();
        let go_rtt = transport.and_then(|t| t.go.as_ref()).and_then(|g| g.as_ref().ok());
        out.push(Target {
            name: "tsnet 64 B round trip p50, ours ÷ Go in-process",
            go: go_rtt.map_or("–".to_owned(), |g| format!("{:.0} µs", g.rtt_p50_us)),
            ours: transport.map_or("–".to_owned(), |t| format!("{:.0} µs", us(t.ours.rtt_p50))),
            measured: transport.zip(go_rtt).map(|(t, g)| us(t.ours.rtt_p50) / g.rtt_p50_us),
            unit: "×",
            goal: 1.3,
            higher_is_better: false,
        });
        let kv = self.kv.as_ref().and_then(|r| r.as_ref().ok());
        let go_nodes = self.go_nodes.as_ref().and_then(|r| r.as_ref().ok());
        out.push(Target {
            name: "CPU per sequential durable put, 3 node processes (ms)",
            go: go_nodes.map_or("–".to_owned(), |g| {
                format!("{:.2} ms", g.one.cpu_per_op.as_secs_f64() * 1e3)
            }),
            ours: kv.map_or("–".to_owned(), |k| {
                format!("{:.2} ms", k.one.cpu_per_op.as_secs_f64() * 1e3)
            }),
            measured: kv.map(|k| k.one.cpu_per_op.as_secs_f64() * 1e3),
            unit: " ms",
            goal: 1.0,
            higher_is_better: false,
        });
        let median =
            |r: Option<&ProcReport>| r.and_then(|r| r.failover.as_ref()).and_then(|f| f.median());
        out.push(Target {
            name: "failover (kill -9 of the leader → first put accepted), median (s)",
            go: median(go_nodes).map_or("–".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            ours: median(kv).map_or("–".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            measured: median(kv).map(|d| d.as_secs_f64()),
            unit: " s",
            goal: 2.0,
            higher_is_better: false,
        });
        out
    }

    /// The Markdown section and the JSON lines.
    pub(crate) fn render(&self) -> (String, String) {
        let mut md = String::new();
        let mut lines = String::new();
        let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let commit = command_output("git", &["rev-parse", "--short=9", "HEAD"]);
        let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"]);
        let commit = if dirty.is_empty() || dirty == "unknown" {
            commit
        } else {
            format!("{commit} with uncommitted changes")
        };
        // What else ran shows in the load average; the 15-minute one spans
        // most of a full run.
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
            .unwrap_or_else(|| "unknown".to_owned());
        let wakeup_at_end = wakeup_round_trip();
        let _ = writeln!(
            md,
            "Measured {date}, commit {commit}, one `cargo xtask bench{}` run. Load average \
             at its end (1 / 5 / 15 min): {load}, on 2 cores. A thread waking another and \
             being woken back across CPUs (median of 2,000) took {} at the start of the run \
             and {} at its end. Absolute numbers are noisy here: read the ratios, which come \
             from the same run, each Go scenario measured right before ours, and the share of \
             the CPU time the host took meanwhile (\"host stole\", from `/proc/stat`; a run \
             with much stolen is slowed from outside).\n",
            if self.quick { " --quick" } else { "" },
            wakeup_text(self.wakeup_at_start),
            wakeup_text(wakeup_at_end),
        );
        let _ = writeln!(
            lines,
            "{}",
            json!({"kind": "run", "date": date, "commit": commit, "quick": self.quick, "load": load,
                   "wakeup_round_trip_us": [self.wakeup_at_start.map(us), wakeup_at_end.map(us)]})
        );

        md.push_str("#### Targets of issue 13\n\n| Target | Go | Ours | Measured | Goal | |\n|---|---:|---:|---:|---:|---|\n");
        for t in self.targets() {
            let (measured, verdict) = match t.measured {
                Some(m) => {
                    let met = if t.higher_is_better { m >= t.goal } else { m <= t.goal };
                    (format!("{m:.2}{}", t.unit), if met { "met" } else { "**missed**" })
                }
                None => ("–".to_owned(), "not measured"),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {measured} | {} {:.2}{} | {verdict} |",
                t.name,
                t.go,
                t.ours,
                if t.higher_is_better { "≥" } else { "≤" },
                t.goal,
                t.unit
            );
            let _ = writeln!(
                lines,
                "{}",
                json!({"kind": "target", "name": t.name, "measured": t.measured, "goal": t.goal,
                       "higher_is_better": t.higher_is_better,
                       "met": t.measured.map(|m| if t.higher_is_better { m >= t.goal } else { m <= t.goal })})
            );
        }

        md.push_str(
            "\n#### Consensus, 3 nodes in one process, local tailnet, 100-byte commands\n\n\
             | Storage | Sent to | Callers | Go cmd/s | Ours cmd/s | Ours ÷ Go | Go p50 | Ours p50 | Ours ÷ Go | Go p99 | Ours p99 | Go CPU µs/cmd | Ours CPU µs/cmd | Go switches/cmd | Ours switches/cmd | Go entries/s | Ours entries/s | Host stole, Go | Host stole, ours |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in &self.clusters {
            let storage = crate::storage(p.durable);
            let target = if p.to_follower { "follower" } else { "leader" };
            let o = &p.ours;
            match &p.go {
                Ok(g) => {
                    let _ = writeln!(
                        md,
                        "| {storage} | {target} | {} | {:.0} | {:.0} | {} | {:.2} ms | {} | {} | {:.2} ms | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} |",
                        p.callers,
                        g.ops_per_s,
                        o.ops_per_s,
                        ratio(o.ops_per_s, g.ops_per_s),
                        g.p50_us / 1e3,
                        ms(o.p50),
                        ratio(us(o.p50), g.p50_us),
                        g.p99_us / 1e3,
                        ms(o.p99),
                        g.cpu_us_per_op,
                        us(o.cpu_per_op),
                        g.switches_per_op,
                        o.switches_per_op,
                        g.entries_per_s,
                        o.entries_per_s,
                        stolen_text(p.go_stolen),
                        stolen_text(o.stolen),
                    );
                    if g.errors > 0 || g.term_changes > 0 {
                        let _ = writeln!(
                            md,
                            "| | | | Go: {} failed commands, {} term changes during the run | | | | | | | | | | | | | | | |",
                            g.errors, g.term_changes
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "| {storage} | {target} | {} | failed | {:.0} | – | – | {} | – | – | {} | – | {:.0} | – | {:.1} | – | {:.0} | – | {} |",
                        p.callers,
                        o.ops_per_s,
                        ms(o.p50),
                        ms(o.p99),
                        us(o.cpu_per_op),
                        o.switches_per_op,
                        o.entries_per_s,
                        stolen_text(o.stolen),
                    );
                    let _ = writeln!(md, "\nGo run failed: {e}\n");
                }
            }
            let _ = writeln!(
                lines,
                "{}",
                json!({"kind": "cluster", "storage": storage, "target": target, "callers": p.callers,
                       "go": p.go.as_ref().ok().map(|g| json!({"ops_per_s": g.ops_per_s, "p50_us": g.p50_us,
                             "p99_us": g.p99_us, "cpu_us_per_op": g.cpu_us_per_op,
                             "entries_per_s": g.entries_per_s, "errors": g.errors, "switches_per_op": g.switches_per_op,
                             "term_changes": g.term_changes, "stolen": p.go_stolen})),
                       "ours": {"ops_per_s": o.ops_per_s, "p50_us": us(o.p50), "p99_us": us(o.p99),
                                "cpu_us_per_op": us(o.cpu_per_op), "entries_per_s": o.entries_per_s,
                                "switches_per_op": o.switches_per_op, "stolen": o.stolen}})
            );
        }

        if let Some(t) = &self.transport {
            md.push_str(
                "\n#### Raw tsnet between two nodes in one process\n\n\
                 Ours: Rust over the tsnet C archive (bytes cross between Go and Rust through \
                 shared rings, decision 0004). Go: two `tsnet.Server`s and plain `net.Conn`s.\n\n\
                 | Measure | Go | Ours | Ours ÷ Go |\n|---|---:|---:|---:|\n",
            );
            let o = &t.ours;
            match &t.go {
                Some(Ok(g)) => {
                    for (name, go, ours, unit) in [
                        ("64 B round trip p50", g.rtt_p50_us, us(o.rtt_p50), " µs"),
                        ("64 B round trip p99", g.rtt_p99_us, us(o.rtt_p99), " µs"),
                        ("round trips/s, one stream", g.serial_rps, o.serial_rps, ""),
                        ("round trips/s, 64 streams", g.parallel_rps, o.parallel_rps, ""),
                        ("single stream MiB/s", g.mib_per_s, o.mib_per_s, ""),
                    ] {
                        let _ = writeln!(
                            md,
                            "| {name} | {go:.0}{unit} | {ours:.0}{unit} | {} |",
                            ratio(ours, go)
                        );
                    }
                    let _ = writeln!(md, "| path | {} | {} | |", g.path, t.ours_path);
                }
                Some(Err(e)) => {
                    let _ = writeln!(md, "| Go run failed: {e} | | | |");
                }
                None => {}
            }
            let _ = writeln!(
                lines,
                "{}",
                json!({"kind": "tsnet", "ours": {"rtt_p50_us": us(o.rtt_p50), "rtt_p99_us": us(o.rtt_p99),
                        "serial_rps": o.serial_rps, "parallel_rps": o.parallel_rps, "mib_per_s": o.mib_per_s,
                        "path": t.ours_path},
                       "go": t.go.as_ref().and_then(|g| g.as_ref().ok()).map(|g| json!({
                        "rtt_p50_us": g.rtt_p50_us, "rtt_p99_us": g.rtt_p99_us, "serial_rps": g.serial_rps,
                        "parallel_rps": g.parallel_rps, "mib_per_s": g.mib_per_s, "path": g.path}))})
            );
        }

        self.render_processes(&mut md, &mut lines);
        (md, lines)
    }

    fn render_processes(&self, md: &mut String, lines: &mut String) {
        if self.kv.is_none() && self.go_nodes.is_none() {
            return;
        }
        let kv = self.kv.as_ref().and_then(|r| r.as_ref().ok());
        let go = self.go_nodes.as_ref().and_then(|r| r.as_ref().ok());
        md.push_str(
            "\n#### Three node processes, durable state, local tailnet\n\n\
             Ours: three `kv` example processes (release build). Go: three `gobench node` \
             processes, each one tsconsensus node with its BoltDB state dir and the same line \
             interface. Clients put 100-byte values through the leader's line interface on \
             127.0.0.1, each waiting for its answer before the next put. CPU is user + system \
             time of the three node processes together (`/proc/<pid>/stat`), per put.\n\n\
             | Measure | Go | Ours | Ours ÷ Go |\n|---|---:|---:|---:|\n",
        );
        for (k, r) in [("kv", &self.kv), ("go", &self.go_nodes)] {
            if let Some(Err(e)) = r {
                let _ = writeln!(md, "| {k} processes failed: {e} | | | |");
            }
        }
        let row = |md: &mut String,
                   name: &str,
                   f: &dyn Fn(&ProcReport) -> f64,
                   unit: &str,
                   digits: usize| {
            let (g, o) = (go.map(f), kv.map(f));
            let show =
                |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.digits$}{unit}"));
            let ratio = match (o, g) {
                (Some(o), Some(g)) => ratio(o, g),
                _ => "–".to_owned(),
            };
            let _ = writeln!(md, "| {name} | {} | {} | {ratio} |", show(g), show(o));
        };
        let clients = kv.or(go).map_or(64, |r| r.many.clients);
        row(md, "1 client: puts/s", &|r| r.one.ops_per_s, "", 0);
        row(md, "1 client: p50", &|r| r.one.p50.as_secs_f64() * 1e3, " ms", 2);
        row(md, "1 client: p99", &|r| r.one.p99.as_secs_f64() * 1e3, " ms", 2);
        row(md, "1 client: CPU per put, 3 nodes", &|r| us(r.one.cpu_per_op), " µs", 0);
        row(md, "1 client: context switches per put, 3 nodes", &|r| r.one.switches_per_op, "", 1);
        row(md, &format!("{clients} clients: puts/s"), &|r| r.many.ops_per_s, "", 0);
        row(md, &format!("{clients} clients: p50"), &|r| r.many.p50.as_secs_f64() * 1e3, " ms", 2);
        row(md, &format!("{clients} clients: p99"), &|r| r.many.p99.as_secs_f64() * 1e3, " ms", 2);
        row(
            md,
            &format!("{clients} clients: CPU per put, 3 nodes"),
            &|r| us(r.many.cpu_per_op),
            " µs",
            0,
        );
        row(
            md,
            &format!("{clients} clients: context switches per put, 3 nodes"),
            &|r| r.many.switches_per_op,
            "",
            1,
        );
        for i in 0..3 {
            row(
                md,
                &format!("idle CPU, node {i} (ms per s)"),
                &|r| r.idle_ms_per_s.get(i).copied().unwrap_or(0.0),
                "",
                1,
            );
        }
        let failed =
            |r: Option<&ProcReport>| r.map(|r| r.one.errors + r.many.errors).filter(|&e| e > 0);
        if failed(kv).is_some() || failed(go).is_some() {
            let _ = writeln!(
                md,
                "| failed puts (all loads) | {} | {} | |",
                failed(go).unwrap_or(0),
                failed(kv).unwrap_or(0)
            );
        }

        let has_failover = kv.or(go).is_some_and(|r| r.failover.is_some());
        if has_failover {
            md.push_str(
                "\n#### Failover and elections nobody caused (same processes)\n\n\
                 Failover: `kill -9` of the leader, then a put to each survivor every 100 ms, \
                 each on its own connection and left to wait as long as the node holds it, \
                 until one is accepted; the killed node is restarted from its state and the \
                 cluster settles before the next round. \"A put sent at the kill\" is the \
                 first of those puts, answered either way (accepted or refused): what a \
                 client that was writing at the crash sees. Steady load: puts through the \
                 leader for a fixed time on a healthy cluster, no fault injected; every raft term change is an election.\n\n\
                 | Measure | Go | Ours |\n|---|---:|---:|\n",
            );
            let show = |r: Option<&ProcReport>, f: &dyn Fn(&ProcReport) -> Option<String>| {
                r.and_then(f).unwrap_or_else(|| "–".to_owned())
            };
            let secs = |d: Option<Duration>| d.map(|d| format!("{:.2} s", d.as_secs_f64()));
            type Cell<'a> = &'a dyn Fn(&ProcReport) -> Option<String>;
            let rows: [(&str, Cell<'_>); 9] = [
                ("failover rounds", &|r| {
                    r.failover.as_ref().map(|f| (f.samples.len() + f.failed).to_string())
                }),
                ("failover: first put accepted, median", &|r| {
                    secs(r.failover.as_ref().and_then(|f| f.median()))
                }),
                ("failover: first put accepted, max", &|r| {
                    secs(r.failover.as_ref().and_then(|f| f.max()))
                }),
                ("failover: a put sent at the kill got an answer after, median", &|r| {
                    secs(
                        r.failover
                            .as_ref()
                            .and_then(|f| f.in_flight.get(f.in_flight.len() / 2).copied()),
                    )
                }),
                ("failover: rounds where that put had no answer once the cluster settled", &|r| {
                    r.failover
                        .as_ref()
                        .map(|f| (f.samples.len() + f.failed - f.in_flight.len()).to_string())
                }),
                ("rounds with no put accepted within 60 s", &|r| {
                    r.failover.as_ref().map(|f| f.failed.to_string())
                }),
                ("steady load", &|r| {
                    r.steady.as_ref().map(|s| {
                        format!(
                            "{} clients, {:.0} s, {} puts",
                            s.clients,
                            s.duration.as_secs_f64(),
                            s.ops
                        )
                    })
                }),
                ("elections (term changes) under steady load", &|r| {
                    r.steady.as_ref().map(|s| s.term_changes.to_string())
                }),
                ("leader changes seen under steady load", &|r| {
                    r.steady.as_ref().map(|s| s.leader_changes.to_string())
                }),
            ];
            for (name, cell) in rows {
                let _ = writeln!(md, "| {name} | {} | {} |", show(go, cell), show(kv, cell));
            }
        }
        for r in [kv, go].into_iter().flatten() {
            let load = |l: &crate::processes::Load| {
                json!({"clients": l.clients, "ops": l.ops, "errors": l.errors, "ops_per_s": l.ops_per_s,
                       "p50_us": us(l.p50), "p99_us": us(l.p99), "cpu_us_per_op": us(l.cpu_per_op),
                       "switches_per_op": l.switches_per_op})
            };
            let _ = writeln!(
                lines,
                "{}",
                json!({"kind": "processes", "impl": if r.flavor == Flavor::Kv { "ours" } else { "go" },
                       "idle_cpu_ms_per_s": r.idle_ms_per_s, "one": load(&r.one), "many": load(&r.many),
                       "failover_s": r.failover.as_ref().map(|f| f.samples.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
                       "failover_failed": r.failover.as_ref().map(|f| f.failed),
                       "failover_in_flight_s": r.failover.as_ref().map(|f| f.in_flight.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
                       "steady": r.steady.as_ref().map(|s| json!({"seconds": s.duration.as_secs_f64(),
                            "clients": s.clients, "ops": s.ops, "term_changes": s.term_changes,
                            "leader_changes": s.leader_changes}))})
            );
        }
    }
}
