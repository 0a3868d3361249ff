//! Switchable faults in front of a node's raft log storage, for tests and
//! the chaos harness: failed fsyncs, a disk that refuses every write, a slow
//! disk, a panicking storage layer.
//!
//! [`StorageFaults`] is the handle (cloned freely, switched at any time);
//! [`FaultyBackend`] wraps a log backend and consults it on every write.
//! A write that fails is never acknowledged to openraft, which then stops
//! the node with a fatal storage error; and once a write failed, the
//! backend refuses every later one (after a failed fsync nothing about the
//! file can be trusted), so the node can never acknowledge anything more
//! until it restarts.

use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::LogId;

use super::log::LogBackend;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Switchable storage faults for one node's raft log (the log, the vote and
/// the committed index; snapshots are not affected). **For tests and the
/// chaos harness only.**
///
/// Give it to a node with [`Storage::with_faults`](crate::Storage::with_faults)
/// (or the facade's `Config::storage_faults`) and keep a clone to switch
/// faults on while the node runs. Every switch acts on the next write:
///
/// - [`fail_next_fsync`](StorageFaults::fail_next_fsync): the next write is
///   made but its fsync reported failed;
/// - [`fail_all_writes`](StorageFaults::fail_all_writes): every write fails
///   before reaching the disk (a full or read-only disk);
/// - [`set_delay`](StorageFaults::set_delay): every write waits first (a
///   slow disk);
/// - [`panic_next_write`](StorageFaults::panic_next_write): the next write
///   panics (a bug in the storage layer).
///
/// A failed write is never acknowledged; the node stops with a fatal error
/// and refuses every later write until it is restarted (a restart builds a
/// new backend; [`clear`](StorageFaults::clear) the switches first if the
/// same handle is used again).
#[derive(Clone, Default)]
pub struct StorageFaults {
    switches: Arc<Switches>,
}

#[derive(Default)]
struct Switches {
    fail_next_fsync: AtomicBool,
    fail_all_writes: AtomicBool,
    panic_next_write: AtomicBool,
    delay_micros: AtomicU64,
    failures: AtomicU64,
}

impl fmt::Debug for StorageFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.switches;
        f.debug_struct("StorageFaults")
            .field("fail_next_fsync", &s.fail_next_fsync.load(Ordering::Relaxed))
            .field("fail_all_writes", &s.fail_all_writes.load(Ordering::Relaxed))
            .field("panic_next_write", &s.panic_next_write.load(Ordering::Relaxed))
            .field("delay", &self.delay())
            .field("failures", &self.failures())
            .finish()
    }
}

impl StorageFaults {
    /// A handle with every fault off.
    pub fn new() -> StorageFaults {
        StorageFaults::default()
    }

    /// The next write (an append, truncation, purge, vote or committed
    /// index) is carried out, but its fsync is reported failed: it may or
    /// may not be on disk, it is never acknowledged, and the node stops.
    pub fn fail_next_fsync(&self) {
        self.switches.fail_next_fsync.store(true, Ordering::SeqCst);
    }

    /// From now on (`true`) every write fails before it reaches the disk;
    /// `false` switches that off for backends that have not failed yet.
    pub fn fail_all_writes(&self, on: bool) {
        self.switches.fail_all_writes.store(on, Ordering::SeqCst);
    }

    /// Every write first waits `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.switches.delay_micros.store(micros, Ordering::SeqCst);
    }

    /// The next write panics inside the storage layer. With memory storage
    /// the panic unwinds through openraft's core task (the node's raft core
    /// dies); with durable storage the write runs on the blocking pool and
    /// the panic becomes a storage error. Either way the node stops.
    pub fn panic_next_write(&self) {
        self.switches.panic_next_write.store(true, Ordering::SeqCst);
    }

    /// Switches every fault off. A backend that already failed stays
    /// failed.
    pub fn clear(&self) {
        let s = &self.switches;
        s.fail_next_fsync.store(false, Ordering::SeqCst);
        s.fail_all_writes.store(false, Ordering::SeqCst);
        s.panic_next_write.store(false, Ordering::SeqCst);
        s.delay_micros.store(0, Ordering::SeqCst);
    }

    /// Writes failed or refused so far, by every backend using this handle.
    pub fn failures(&self) -> u64 {
        self.switches.failures.load(Ordering::SeqCst)
    }

    /// The delay each write waits first.
    pub(crate) fn delay(&self) -> Duration {
        Duration::from_micros(self.switches.delay_micros.load(Ordering::SeqCst))
    }

    /// Panics if a panic was asked for (once).
    pub(crate) fn maybe_panic(&self) {
        if self.switches.panic_next_write.swap(false, Ordering::SeqCst) {
            panic!("injected storage fault: a log write panicked");
        }
    }
}

/// A log backend behind [`StorageFaults`].
pub(crate) struct FaultyBackend {
    inner: Arc<dyn LogBackend>,
    faults: StorageFaults,
    /// The first failure; every write after it fails too.
    failed: Mutex<Option<String>>,
}

impl FaultyBackend {
    pub(crate) fn new(inner: Arc<dyn LogBackend>, faults: StorageFaults) -> FaultyBackend {
        FaultyBackend { inner, faults, failed: Mutex::new(None) }
    }

    /// Runs one write through the faults.
    fn write(&self, what: &str, write: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        self.faults.maybe_panic();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let switches = &self.faults.switches;
        let failure = if let Some(first) = &*failed {
            format!("{what} refused: an earlier write failed ({first}); restart the node")
        } else if switches.fail_all_writes.load(Ordering::SeqCst) {
            format!("{what} failed: injected fault, the disk refuses writes")
        } else if switches.fail_next_fsync.swap(false, Ordering::SeqCst) {
            // The data went to the file; its fsync "failed".
            let _ = write();
            format!("{what} failed: injected fault, fsync failed")
        } else {
            return write();
        };
        switches.failures.fetch_add(1, Ordering::SeqCst);
        failed.get_or_insert_with(|| failure.clone());
        tracing::error!(%failure, "storage write failed");
        Err(failure)
    }
}

impl LogBackend for FaultyBackend {
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, String> {
        self.inner.entries(start, end)
    }
    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, String> {
        self.inner.last_entry_id()
    }
    fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        self.write("log append", || self.inner.append(entries))
    }
    fn truncate_from(&self, index: u64) -> Result<(), String> {
        self.write("log truncation", || self.inner.truncate_from(index))
    }
    fn purge_to(&self, log_id: LogId<NodeId>) -> Result<(), String> {
        self.write("log purge", || self.inner.purge_to(log_id))
    }
    fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        self.write(key, || self.inner.put_meta(key, value))
    }
    fn put_meta_lazily(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        self.write(key, || self.inner.put_meta_lazily(key, value))
    }
    fn get_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, String> {
        self.inner.get_meta(key)
    }
    fn put_meta_removing(
        &self,
        key: &'static str,
        value: Vec<u8>,
        remove: &'static str,
    ) -> Result<(), String> {
        self.write(key, || self.inner.put_meta_removing(key, value, remove))
    }
    fn blocking(&self) -> bool {
        self.inner.blocking()
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::storage::log::MemBackend;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn faulty() -> (StorageFaults, FaultyBackend) {
        let faults = StorageFaults::new();
        let backend = FaultyBackend::new(Arc::new(MemBackend::default()), faults.clone());
        (faults, backend)
    }

    #[test]
    fn a_failed_fsync_is_reported_and_every_later_write_is_refused() {
        let (faults, backend) = faulty();
        backend.append(vec![entry(1)]).unwrap();
        faults.fail_next_fsync();
        let err = backend.append(vec![entry(2)]).unwrap_err();
        assert!(err.contains("fsync failed"), "{err}");
        // The write reached the log (as it may after a failed fsync)...
        assert_eq!(backend.last_entry_id().unwrap().map(|l| l.index), Some(2));
        // ...but nothing is written any more, even with the switch off.
        faults.clear();
        let err = backend.put_meta("vote", vec![1]).unwrap_err();
        assert!(err.contains("an earlier write failed"), "{err}");
        assert!(backend.append(vec![entry(3)]).is_err());
        assert_eq!(faults.failures(), 3);
        // Reads still work.
        assert_eq!(backend.entries(Bound::Unbounded, Bound::Unbounded).unwrap().len(), 2);
    }

    #[test]
    fn a_disk_that_refuses_writes_writes_nothing() {
        let (faults, backend) = faulty();
        faults.fail_all_writes(true);
        assert!(backend.append(vec![entry(1)]).unwrap_err().contains("refuses writes"));
        assert!(backend.last_entry_id().unwrap().is_none());
        // A fresh backend on the same handle works once the switch is off.
        faults.fail_all_writes(false);
        let fresh = FaultyBackend::new(Arc::new(MemBackend::default()), faults.clone());
        fresh.append(vec![entry(1)]).unwrap();
    }

    #[test]
    fn a_panic_is_asked_for_once() {
        let (faults, backend) = faulty();
        faults.panic_next_write();
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.append(vec![])));
        assert!(panicked.is_err());
        backend.append(vec![entry(1)]).unwrap();
    }
}
