//! What a supervisor and a Prometheus server see: `/healthz` and `/readyz`
//! as a node loses and regains its leader, its quorum, and its life; and
//! `/metrics` parsed as Prometheus text, every family typed, counters only
//! growing, histograms well formed, each counter moved by what it counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use consensus::{Config, Consensus};
use test_support::cluster::{MemCluster, Tailnet, WAIT};
use test_support::http::http;
use test_support::tally::{Tally, TallyCommand, add};
use test_support::{eventually_every, fast_config};
use tokio::io::AsyncWriteExt;
use ts_transport::Transport as _;

fn config() -> Config {
    Config { monitor_localhost_port: Some(0), ..fast_config() }
}

async fn get(node: &Consensus<Tally>, path: &str) -> (u16, String) {
    let port = node.monitor_localhost_port().expect("a localhost monitor");
    let (status, body) = http(port, "GET", path, "", b"").await;
    (status, String::from_utf8(body).expect("UTF-8"))
}

/// Polls `path` on `node` until `check` holds for its answer, within WAIT.
async fn until(node: &Consensus<Tally>, path: &str, check: impl Fn(u16, &str) -> bool) -> String {
    eventually_every(WAIT, Duration::from_millis(50), format_args!("{path} changes"), async || {
        let (status, body) = get(node, path).await;
        if check(status, &body) { Ok(body) } else { Err(format!("answers {status} {body}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_leader_quorum_and_fatal_errors() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| config()).await;
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    for node in cluster.running() {
        assert_eq!(get(node, "/healthz").await, (200, r#"{"status":"ok"}"#.to_owned()));
        until(node, "/readyz", |s, _| s == 200).await;
    }
    let (_, ready) = get(cluster.node(follower), "/readyz").await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], serde_json::json!(true));
    assert_eq!(ready["reasons"], serde_json::json!([]));

    // A follower cut off loses its leader: not ready, still alive.
    cluster.net.isolate(cluster.ip(follower));
    let body = until(cluster.node(follower), "/readyz", |s, _| s == 503).await;
    assert!(body.contains("no leader known"), "{body}");
    assert_eq!(get(cluster.node(follower), "/healthz").await.0, 200);
    // A leader cut off from both followers keeps its role in openraft 0.9,
    // but no quorum acknowledges it.
    let other = (leader + 2) % 3;
    cluster.net.isolate(cluster.ip(other));
    let body =
        until(cluster.node(leader), "/readyz", |s, b| s == 503 && b.contains("quorum")).await;
    assert!(body.contains("no quorum has acknowledged it"), "{body}");
    cluster.net.heal_all();
    for node in cluster.running() {
        until(node, "/readyz", |s, _| s == 200).await;
    }

    // A command that makes every state machine panic. The leader that
    // committed it applies it and is fatal; a follower applies it only if
    // it learned the commit before the fatal leader stopped serving. So
    // every node ends either fatal (both endpoints say why) or alive
    // without a leader (not ready), and at least one is fatal.
    let _ = cluster.node(leader).execute(TallyCommand::Panic).await;
    let mut fatal = 0;
    for node in cluster.running() {
        let ready = until(node, "/readyz", |s, _| s == 503).await;
        let (status, health) = get(node, "/healthz").await;
        if status == 503 {
            assert!(health.contains("fatal") && health.contains("asked to panic"), "{health}");
            let ready = until(node, "/readyz", |_, b| b.contains("fatal error")).await;
            assert!(ready.contains("asked to panic"), "{ready}");
            fatal += 1;
        } else {
            assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#), "{ready}");
        }
    }
    assert!(fatal >= 1, "the node that applied the command first is fatal");
    for node in cluster.nodes.into_iter().flatten() {
        let _ = node.stop(consensus::StopMode::Stay).await;
    }
}

/// One sample of a scrape.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: each family's type, and the samples.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
            .value
    }

    /// Every series: (name, labels) → value.
    fn series(&self) -> BTreeMap<(String, Vec<(String, String)>), f64> {
        self.samples
            .iter()
            .map(|s| ((s.name.clone(), s.labels.clone().into_iter().collect()), s.value))
            .collect()
    }
}

/// Parses Prometheus text format 0.0.4, checking its rules: one TYPE per
/// family before its samples, known types, every sample in a typed family
/// (a histogram's `_bucket`, `_sum` and `_count` in theirs), well-formed
/// labels and values, no series twice.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(_), Some(_)) => {}
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("line {n}: unknown type {kind}"));
                    }
                    if scrape.samples.iter().any(|s| family(&s.name, &scrape.types) == name) {
                        return Err(format!("line {n}: TYPE of {name} after its samples"));
                    }
                    if scrape.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("line {n}: second TYPE for {name}"));
                    }
                }
                _ => return Err(format!("line {n}: malformed comment {line:?}")),
            }
            continue;
        }
        let (series, value) =
            line.rsplit_once(' ').ok_or_else(|| format!("line {n}: no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|e| format!("line {n}: value {v:?}: {e}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body =
                    rest.strip_suffix('}').ok_or_else(|| format!("line {n}: unclosed labels"))?;
                (name.to_owned(), parse_labels(body).map_err(|e| format!("line {n}: {e}"))?)
            }
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        if !scrape.types.contains_key(family(&name, &scrape.types)) {
            return Err(format!("line {n}: {name} has no TYPE"));
        }
        if !seen.insert((name.clone(), labels.clone().into_iter().collect::<Vec<_>>())) {
            return Err(format!("line {n}: series {series} twice"));
        }
        scrape.samples.push(Sample { name, labels, value });
    }
    Ok(scrape)
}

/// The family a sample belongs to: a histogram's parts belong to it.
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

fn parse_labels(mut text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"").ok_or("a label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
    Ok(labels)
}

/// Counters end in `_total`; histograms have increasing bounds ending in
/// +Inf, cumulative counts that never decrease, +Inf equal to `_count`, and
/// a `_sum`.
fn check_shapes(scrape: &Scrape) {
    for (name, kind) in &scrape.types {
        let samples: Vec<&Sample> = scrape.samples.iter().filter(|s| &s.name == name).collect();
        match kind.as_str() {
            "counter" => {
                assert!(name.ends_with("_total"), "counter {name} does not end in _total");
                assert!(samples.iter().all(|s| s.value >= 0.0), "{name}: {samples:?}");
            }
            "histogram" => {
                let buckets: Vec<&Sample> =
                    scrape.samples.iter().filter(|s| s.name == format!("{name}_bucket")).collect();
                let bounds: Vec<f64> = buckets
                    .iter()
                    .map(|b| match b.labels["le"].as_str() {
                        "+Inf" => f64::INFINITY,
                        le => le.parse().unwrap_or_else(|e| panic!("{name} le {le:?}: {e}")),
                    })
                    .collect();
                assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name} bounds {bounds:?}");
                assert_eq!(bounds.last(), Some(&f64::INFINITY), "{name} has no +Inf bucket");
                assert!(
                    buckets.windows(2).all(|w| w[0].value <= w[1].value),
                    "{name} buckets decrease: {buckets:?}"
                );
                assert_eq!(
                    buckets.last().unwrap().value,
                    scrape.value(&format!("{name}_count"), &[]),
                    "{name}: +Inf bucket and _count differ"
                );
                assert!(scrape.value(&format!("{name}_sum"), &[]) >= 0.0);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_each_counter_counts_what_it_says() {
    let cluster =
        MemCluster::<Tally>::start(Tailnet::of(3), |_| Config { snapshot_every: 10, ..config() })
            .await;
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    for k in 0..10 {
        cluster.node(follower).execute(add(&format!("f{k}"), 1)).await.unwrap();
        cluster.node(leader).execute(add(&format!("l{k}"), 1)).await.unwrap();
    }
    // One that fails: a deadline too short to be met. No attempt was
    // made, so it was not applied, and says so (issue 12: before, it was
    // a `timeout`, "may still be applied").
    let short = cluster.node(follower).execute_within(add("late", 1), Duration::ZERO).await;
    let short = short.expect_err("no time for an attempt").to_string();
    assert!(short.starts_with("not applied"), "{short}");
    // Refused peers: a stranger dials the raft and command ports.
    let stranger = cluster.net.node(std::net::IpAddr::from([10, 9, 9, 9]));
    for port in [Config::default().raft_port, Config::default().command_port] {
        if let Ok(mut stream) =
            stranger.dial(cluster.ip(leader), port, Duration::from_secs(2)).await
        {
            let _ = stream.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
            })
            .await;
        }
    }
    let scrape = |i: usize| {
        let node = cluster.node(i);
        async move {
            let (status, text) = get(node, "/metrics").await;
            assert_eq!(status, 200);
            let scrape = parse(&text).unwrap_or_else(|e| panic!("node {i}: {e}\n{text}"));
            check_shapes(&scrape);
            scrape
        }
    };
    // A write is acknowledged once a majority has it: the third node may
    // still be applying the last of the 20 when the writer returns.
    let mut first = Vec::new();
    for i in 0..3 {
        let applied = eventually_every(
            WAIT,
            Duration::from_millis(50),
            format_args!("node {i} applies the 20 commands"),
            async || {
                let s = scrape(i).await;
                (s.value("tsconsensus_commands_applied_total", &[]) >= 20.0).then_some(s)
            },
        )
        .await;
        first.push(applied);
    }
    let f = &first[follower];
    assert_eq!(f.value("tsconsensus_commands_total", &[("outcome", "ok")]), 10.0);
    assert_eq!(f.value("tsconsensus_commands_total", &[("outcome", "not_applied")]), 1.0);
    assert_eq!(f.value("tsconsensus_commands_total", &[("outcome", "timeout")]), 0.0);
    assert_eq!(f.value("tsconsensus_command_duration_seconds_count", &[]), 11.0);
    assert!(f.value("tsconsensus_commands_forwarded_total", &[]) >= 10.0);
    let l = &first[leader];
    assert_eq!(l.value("tsconsensus_commands_forwarded_total", &[]), 0.0);
    assert!(l.value("tsconsensus_proposal_batch_size_count", &[]) >= 1.0);
    assert!(l.value("tsconsensus_proposal_batch_size_sum", &[]) >= 20.0);
    for s in &first {
        assert!(s.value("tsconsensus_commands_applied_total", &[]) >= 20.0);
        assert!(s.value("tsconsensus_elections_total", &[]) >= 1.0);
        assert!(s.value("tsconsensus_leader_changes_total", &[]) >= 1.0);
        // snapshot_every is 10 here: every node built its own.
        assert!(s.value("tsconsensus_snapshots_built_total", &[]) >= 1.0);
        assert_eq!(s.types["tsconsensus_snapshots_installed_total"], "counter");
        assert_eq!(s.types["tsconsensus_term"], "gauge");
    }
    assert!(l.value("tsconsensus_peers_refused_total", &[("port", "raft")]) >= 1.0);
    assert!(l.value("tsconsensus_peers_refused_total", &[("port", "command")]) >= 1.0);
    // Bytes both ways with every peer.
    for (i, s) in first.iter().enumerate() {
        for j in (0..3).filter(|&j| j != i) {
            let peer = cluster.ip(j).to_string();
            assert!(s.value("tsconsensus_peer_sent_bytes_total", &[("peer", &peer)]) > 0.0);
            assert!(s.value("tsconsensus_peer_received_bytes_total", &[("peer", &peer)]) > 0.0);
        }
    }

    // More traffic: nothing goes down, and what moved moved.
    for k in 0..5 {
        cluster.node(follower).execute(add(&format!("g{k}"), 1)).await.unwrap();
    }
    let second: Vec<Scrape> = vec![scrape(0).await, scrape(1).await, scrape(2).await];
    for (before, after) in first.iter().zip(&second) {
        let after_series = after.series();
        for ((name, labels), value) in before.series() {
            let kind = before.types.get(family(&name, &before.types)).unwrap();
            if kind == "counter" || kind == "histogram" {
                let now = after_series.get(&(name.clone(), labels.clone())).copied().unwrap_or(0.0);
                assert!(now >= value, "{name}{labels:?} went from {value} to {now}");
            }
        }
    }
    assert_eq!(second[follower].value("tsconsensus_commands_total", &[("outcome", "ok")]), 15.0);
    cluster.shutdown().await;
}

/// Issue 12: an operation keeps its answer and gives it again on every
/// later call; each of those calls counted one more `ok` in
/// `tsconsensus_commands_total`, for a command applied once. Its outcome
/// counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_operation_counts_its_outcome_once() {
    let cluster = MemCluster::<Tally>::start(Tailnet::of(3), |_| config()).await;
    let leader = cluster.leader();
    let ok = async || {
        let (status, text) = get(cluster.node(leader), "/metrics").await;
        assert_eq!(status, 200);
        let scrape = parse(&text).expect("Prometheus text");
        scrape.value("tsconsensus_commands_total", &[("outcome", "ok")])
    };
    let before = ok().await;
    let mut operation = cluster.node(leader).prepare(add("once", 1)).expect("prepared");
    for _ in 0..3 {
        assert_eq!(operation.execute().await.expect("the answer"), 1);
    }
    assert_eq!(ok().await, before + 1.0, "one command, one `ok`");
    drop(operation);
    cluster.shutdown().await;
}

/// The localhost monitor answers only requests addressed to it as
/// 127.0.0.1 or localhost: a web page whose own name was rebound to
/// 127.0.0.1 (DNS rebinding) sends that name and reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_localhost_monitor_refuses_other_host_names() {
    let mut cluster = MemCluster::<Tally>::new(Tailnet::of(1));
    cluster.start_one(0, config()).await;
    let node = cluster.node(0);
    let port = node.monitor_localhost_port().expect("a localhost monitor");
    for path in ["/status", "/readyz", "/healthz", "/metrics", "/"] {
        for host in [format!("rebound.example:{port}"), "127.0.0.1".to_owned(), String::new()] {
            let (status, body) = raw_get(port, path, &host).await;
            assert_eq!(status, 421, "{path} with Host {host:?}: {body}");
            assert!(!body.contains("applied"), "{path} leaked: {body}");
        }
        for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let (status, body) = raw_get(port, path, &host).await;
            assert!(status == 200 || status == 503, "{path} with Host {host:?}: {status} {body}");
        }
    }
    cluster.shutdown().await;
}

/// `GET path` on 127.0.0.1:`port` with `Host: host` (none if empty).
async fn raw_get(port: u16, path: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let host = if host.is_empty() { String::new() } else { format!("Host: {host}\r\n") };
    let request = format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).expect("a status");
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}
