//! The counters and histograms behind `/metrics`, next to the monitor's
//! gauges, and their Prometheus text exposition (format 0.0.4).
//!
//! Recording is relaxed atomics only: no lock and no allocation per
//! command. What the lower layers count (proposals per batch, commands
//! applied, snapshots built and installed in raft-core; execute attempts
//! forwarded in cmd-rpc) is read from them when `/metrics` is scraped.
//! What only the facade sees is counted here:
//!
//! - commands executed through this node's API, by outcome, and their
//!   latency, in [`Operation::execute_within`](crate::Operation) (a call
//!   that only repeats an outcome the operation already gave is not
//!   counted again);
//! - elections (terms) and leader changes, by a task that follows the
//!   node's metrics;
//! - authorization refusals on each port, by wrapping the authorizer;
//! - bytes sent to and received from each peer, by wrapping the transport
//!   ([`CountingTransport`]); at most [`MAX_PEERS`] peer addresses get a
//!   series of their own, the rest share `peer="other"`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raft_core::{Counter, Histogram, HistogramSnapshot};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use ts_transport::{BoxFuture, BoxStream, Listener, PeerAddr, Transport, TransportError};

use crate::error::Error;

/// Outcomes commands are counted by; the last is for errors added later.
pub(crate) const OUTCOMES: [&str; 14] = [
    "ok",
    "timeout",
    "no_leader",
    "outcome_unknown",
    "answer_not_kept",
    "rejected",
    "invalid",
    "storage",
    "network",
    "stopped",
    "unavailable",
    "fatal",
    "not_applied",
    "other",
];

fn outcome_of<T>(result: &Result<T, Error>) -> usize {
    match result {
        Ok(_) => 0,
        Err(Error::Timeout(_)) => 1,
        Err(Error::NoLeader { .. }) => 2,
        Err(Error::OutcomeUnknown(_)) => 3,
        Err(Error::AnswerNotKept) => 4,
        Err(Error::Rejected { .. }) => 5,
        Err(Error::Invalid { .. }) => 6,
        Err(Error::Storage { .. }) => 7,
        Err(Error::Network { .. }) => 8,
        Err(Error::Stopped) => 9,
        Err(Error::Unavailable(_)) => 10,
        Err(Error::Fatal { .. }) => 11,
        Err(Error::NotApplied(_)) => 12,
        Err(_) => 13,
    }
}

/// Upper bounds of the command latency histogram, in microseconds.
const LATENCY_BOUNDS_US: &[u64] = &[
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// The ports whose authorization refusals are counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Port {
    Raft = 0,
    Command = 1,
    Monitor = 2,
}

const PORTS: [&str; 3] = ["raft", "command", "monitor"];

/// Peer addresses with a series of their own; more share one.
pub(crate) const MAX_PEERS: usize = 256;

/// Bytes exchanged with one peer.
#[derive(Debug, Default)]
pub(crate) struct PeerBytes {
    sent: Counter,
    received: Counter,
}

/// What the facade counts.
#[derive(Debug)]
pub(crate) struct Counters {
    commands: [Counter; OUTCOMES.len()],
    command_latency: Histogram,
    elections: Counter,
    leader_changes: Counter,
    refused: [Counter; PORTS.len()],
    peers: Mutex<HashMap<IpAddr, Arc<PeerBytes>>>,
    other_peers: Arc<PeerBytes>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            commands: std::array::from_fn(|_| Counter::new()),
            command_latency: Histogram::new(LATENCY_BOUNDS_US),
            elections: Counter::new(),
            leader_changes: Counter::new(),
            refused: std::array::from_fn(|_| Counter::new()),
            peers: Mutex::new(HashMap::new()),
            other_peers: Arc::default(),
        }
    }
}

impl Counters {
    /// Records one command executed through this node's API.
    pub(crate) fn command_done<T>(&self, result: &Result<T, Error>, took: Duration) {
        self.commands[outcome_of(result)].inc();
        self.command_latency.observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records an authorization refusal on `port`.
    pub(crate) fn refused(&self, port: Port) {
        self.refused[port as usize].inc();
    }

    /// The byte counters of `peer` (one lookup per connection).
    fn peer(&self, peer: IpAddr) -> Arc<PeerBytes> {
        let peer = peer.to_canonical();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = peers.get(&peer) {
            return bytes.clone();
        }
        if peers.len() >= MAX_PEERS {
            return self.other_peers.clone();
        }
        peers.entry(peer).or_default().clone()
    }
}

/// Counts elections (term increments) and leader changes as the node's
/// metrics change, until they end.
pub(crate) async fn follow_leadership(
    counters: Arc<Counters>,
    mut metrics: watch::Receiver<raft_core::NodeMetrics>,
) {
    let (mut term, mut leader) = {
        let m = metrics.borrow_and_update();
        (m.term, m.leader)
    };
    while metrics.changed().await.is_ok() {
        let m = metrics.borrow_and_update();
        if m.term > term {
            counters.elections.add(m.term - term);
            term = m.term;
        }
        if let Some(now) = m.leader
            && leader != Some(now)
        {
            counters.leader_changes.inc();
            leader = Some(now);
        }
    }
}

/// A transport whose streams count their bytes per peer address.
pub(crate) struct CountingTransport {
    inner: Arc<dyn Transport>,
    counters: Arc<Counters>,
}

impl CountingTransport {
    pub(crate) fn wrap(inner: Arc<dyn Transport>, counters: Arc<Counters>) -> Arc<dyn Transport> {
        Arc::new(CountingTransport { inner, counters })
    }
}

impl Transport for CountingTransport {
    fn listen(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Listener>, TransportError>> {
        Box::pin(async move {
            let inner = self.inner.listen(port).await?;
            Ok(Box::new(CountingListener { inner, counters: self.counters.clone() })
                as Box<dyn Listener>)
        })
    }

    fn dial(
        &self,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<BoxStream, TransportError>> {
        Box::pin(async move {
            let stream = self.inner.dial(addr, port, timeout).await?;
            Ok(Box::new(CountingStream { inner: stream, bytes: self.counters.peer(addr) })
                as BoxStream)
        })
    }

    fn local_addrs(&self) -> Vec<IpAddr> {
        self.inner.local_addrs()
    }
}

struct CountingListener {
    inner: Box<dyn Listener>,
    counters: Arc<Counters>,
}

impl Listener for CountingListener {
    fn accept(&self) -> BoxFuture<'_, Result<(BoxStream, PeerAddr), TransportError>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            let bytes = self.counters.peer(peer.ip());
            Ok((Box::new(CountingStream { inner: stream, bytes }) as BoxStream, peer))
        })
    }

    fn local_port(&self) -> u16 {
        self.inner.local_port()
    }

    fn close(&self) {
        self.inner.close();
    }
}

struct CountingStream {
    inner: BoxStream,
    bytes: Arc<PeerBytes>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.bytes.received.add((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.bytes.sent.add(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.bytes.sent.add(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Everything counted, read at one scrape.
pub(crate) struct Scrape<'a> {
    pub(crate) counters: &'a Counters,
    pub(crate) raft: &'a raft_core::RaftStats,
    pub(crate) commands: &'a cmd_rpc::CommandStats,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes `h` (in `unit`s per observed unit: 1e-6 turns microseconds into
/// seconds) as a Prometheus histogram.
fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot, scale: f64) {
    family(out, name, "histogram", help);
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", *bound as f64 * scale);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum as f64 * scale);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// Appends the counters and histograms to a `/metrics` page.
pub(crate) fn render(out: &mut String, scrape: &Scrape<'_>) {
    let c = scrape.counters;
    family(
        out,
        "tsconsensus_commands_total",
        "counter",
        "Commands executed through this node's API, by outcome.",
    );
    for (outcome, count) in OUTCOMES.iter().zip(&c.commands) {
        let _ =
            writeln!(out, "tsconsensus_commands_total{{outcome=\"{outcome}\"}} {}", count.get());
    }
    histogram(
        out,
        "tsconsensus_command_duration_seconds",
        "Time to execute a command through this node's API, retries included.",
        &c.command_latency.snapshot(),
        1e-6,
    );
    counter(
        out,
        "tsconsensus_commands_forwarded_total",
        "Execute attempts this node forwarded to the leader.",
        scrape.commands.forwarded.get(),
    );
    histogram(
        out,
        "tsconsensus_proposal_batch_size",
        "Proposals coalesced into each log entry this node handed to raft as leader (not the batches refused at hand-off).",
        &scrape.raft.batch_size.snapshot(),
        1.0,
    );
    counter(
        out,
        "tsconsensus_proposals_refused_at_handoff_total",
        "Queued proposals refused (not applied) because this node stopped leading or began a leadership transfer while they waited.",
        scrape.raft.proposals_refused_at_handoff.get(),
    );
    counter(
        out,
        "tsconsensus_commands_applied_total",
        "Commands this node's state machine applied (retries answered from a session excluded).",
        scrape.raft.commands_applied.get(),
    );
    counter(
        out,
        "tsconsensus_elections_total",
        "Elections this node saw (each new term counts one).",
        c.elections.get(),
    );
    counter(
        out,
        "tsconsensus_leader_changes_total",
        "Times the leader this node knows changed to another node.",
        c.leader_changes.get(),
    );
    counter(
        out,
        "tsconsensus_snapshots_built_total",
        "Snapshots this node built.",
        scrape.raft.snapshots_built.get(),
    );
    counter(
        out,
        "tsconsensus_snapshots_installed_total",
        "Snapshots this node installed from a leader.",
        scrape.raft.snapshots_installed.get(),
    );
    counter(
        out,
        "tsconsensus_raft_refused_settings_total",
        "Raft connections refused because the caller applies entries with other session limits.",
        scrape.raft.refused_settings.get(),
    );
    counter(
        out,
        "tsconsensus_raft_refused_identity_total",
        "Raft connections refused because the caller claimed to be another node.",
        scrape.raft.refused_identity.get(),
    );
    family(
        out,
        "tsconsensus_peers_refused_total",
        "counter",
        "Connections or requests refused because the peer is not a tagged node, by port.",
    );
    for (port, count) in PORTS.iter().zip(&c.refused) {
        let _ = writeln!(out, "tsconsensus_peers_refused_total{{port=\"{port}\"}} {}", count.get());
    }
    let mut peers: Vec<(String, Arc<PeerBytes>)> = c
        .peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(ip, bytes)| (ip.to_string(), bytes.clone()))
        .collect();
    peers.sort_by(|a, b| a.0.cmp(&b.0));
    peers.push(("other".to_owned(), c.other_peers.clone()));
    for (name, help, sent) in [
        ("tsconsensus_peer_sent_bytes_total", "Bytes sent to each peer address.", true),
        ("tsconsensus_peer_received_bytes_total", "Bytes received from each peer address.", false),
    ] {
        family(out, name, "counter", help);
        for (peer, bytes) in &peers {
            let value = if sent { bytes.sent.get() } else { bytes.received.get() };
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_an_outcome_label() {
        let cases: Vec<(Result<(), Error>, &str)> = vec![
            (Ok(()), "ok"),
            (Err(Error::Timeout(String::new())), "timeout"),
            (Err(Error::NoLeader { waited: Duration::ZERO }), "no_leader"),
            (Err(Error::OutcomeUnknown(String::new())), "outcome_unknown"),
            (Err(Error::AnswerNotKept), "answer_not_kept"),
            (Err(Error::rejected("")), "rejected"),
            (Err(Error::invalid("")), "invalid"),
            (Err(Error::Storage { message: String::new(), source: None }), "storage"),
            (Err(Error::network(String::new())), "network"),
            (Err(Error::Stopped), "stopped"),
            (Err(Error::Unavailable(String::new())), "unavailable"),
            (Err(Error::fatal("")), "fatal"),
            (Err(Error::NotApplied(String::new())), "not_applied"),
            (Err(Error::NotTagged { tag: String::new() }), "other"),
        ];
        for (result, label) in cases {
            assert_eq!(OUTCOMES[outcome_of(&result)], label, "{result:?}");
        }
    }

    #[test]
    fn peers_beyond_the_bound_share_one_series() {
        let counters = Counters::default();
        for i in 0..MAX_PEERS + 10 {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            counters.peer(ip).sent.inc();
        }
        assert_eq!(counters.peers.lock().unwrap().len(), MAX_PEERS);
        assert_eq!(counters.other_peers.sent.get(), 10);
        // A known peer keeps its own series.
        counters.peer(IpAddr::from([10, 0, 0, 0])).sent.inc();
        assert_eq!(counters.peers.lock().unwrap()[&IpAddr::from([10, 0, 0, 0])].sent.get(), 2);
    }
}
