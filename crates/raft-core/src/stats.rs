//! Counters and histograms a node keeps about itself, for the facade's
//! `/metrics`.
//!
//! Everything is an atomic: recording never locks and never allocates,
//! so it can sit on the per-command path. A reader sees each value on its
//! own (a histogram's buckets are read one by one); every value only
//! grows, so two reads in a row never go backwards. Updates release and
//! reads acquire (on x86 the same instructions as relaxed ones): a value
//! read after another includes every update made before the one that
//! other read saw, so counts updated in a known order (queued before
//! batched) read in the reverse order never look inverted.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at 0.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds 1.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Release);
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Most buckets a histogram has (its `+Inf` bucket not counted).
pub const MAX_BUCKETS: usize = 24;

/// A histogram over fixed upper bounds (inclusive, in the unit of the
/// values observed, strictly increasing), with an implicit `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Non-cumulative counts; the last one is `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
}

/// A histogram as read at one moment, in Prometheus's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Each upper bound with the number of observations at or below it
    /// (cumulative).
    pub buckets: Vec<(u64, u64)>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// The sum of the observations.
    pub sum: u64,
}

impl Histogram {
    /// A histogram with these upper bounds. Panics (at start-up, on a
    /// constant) if they are not strictly increasing or too many.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS, "at most {MAX_BUCKETS} histogram buckets");
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "histogram bounds must increase");
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Release);
        self.sum.fetch_add(value, Ordering::Release);
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// The buckets, cumulative, and the count and sum. The count is the sum
    /// of the buckets read, so the `+Inf` bucket always equals it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Acquire);
            buckets.push((*bound, cumulative));
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Acquire);
        HistogramSnapshot { buckets, count: cumulative, sum: self.sum.load(Ordering::Acquire) }
    }
}

/// Bounds of [`RaftStats::batch_size`]: proposals per log entry.
pub const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// What a raft node counts about itself.
#[derive(Debug)]
pub struct RaftStats {
    /// Proposals coalesced into each log entry the batcher handed to
    /// openraft (on the leader). A batch refused at the hand-off is not
    /// one: its proposals count in `proposals_refused_at_handoff`.
    pub batch_size: Histogram,
    /// Proposals that passed this node's checks (leader, no transfer hold)
    /// and were queued for the batcher, counted before the batcher can
    /// take them. Less `batch_size`'s sum and
    /// `proposals_refused_at_handoff`: those still waiting for a batch, or
    /// dropped unbatched because the node stopped (answered "shutting
    /// down"). Read after those two, it is never the smaller.
    pub proposals_queued: Counter,
    /// Queued proposals the batcher refused before handing them to raft,
    /// because this node stopped leading or began handing its leadership
    /// over while they waited (answered "not the leader": not applied).
    pub proposals_refused_at_handoff: Counter,
    /// Commands the state machine applied (a retry answered from its
    /// session is not applied again and not counted).
    pub commands_applied: Counter,
    /// Snapshots this node built.
    pub snapshots_built: Counter,
    /// Snapshots this node installed from a leader.
    pub snapshots_installed: Counter,
    /// Raft connections refused because the caller applies entries with
    /// other settings (its session limits differ from this node's).
    pub refused_settings: Counter,
    /// Raft connections refused or dropped because the caller claimed to
    /// be a node other than the owner of its address (its hello's stable id
    /// or raft id, or a request's vote, is not its own).
    pub refused_identity: Counter,
}

impl Default for RaftStats {
    fn default() -> RaftStats {
        RaftStats {
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            proposals_queued: Counter::new(),
            proposals_refused_at_handoff: Counter::new(),
            commands_applied: Counter::new(),
            snapshots_built: Counter::new(),
            snapshots_installed: Counter::new(),
            refused_settings: Counter::new(),
            refused_identity: Counter::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        static BOUNDS: &[u64] = &[1, 10, 100];
        let h = Histogram::new(BOUNDS);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1, 2), (10, 4), (100, 6)]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 1 + 2 + 10 + 11 + 100 + 101 + 5000);
    }

    #[test]
    fn counters_only_grow() {
        let c = Counter::new();
        c.inc();
        c.add(4);
        assert_eq!(c.get(), 5);
    }

    #[test]
    #[should_panic(expected = "must increase")]
    fn bounds_must_increase() {
        static BOUNDS: &[u64] = &[5, 5];
        let _ = Histogram::new(BOUNDS);
    }
}
