//! The raft log, vote and committed index: [`LogStore`] over an in-memory
//! or a redb backend, implementing openraft's traits once. Durable writes run on the blocking pool, one at a
//! time, in submission order (openraft 0.9 issues them serially), and each
//! is fsynced before it is acknowledged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::faults::{FaultyBackend, StorageFaults};
use super::floor::{SnapshotFloor, reaches};
use crate::codec;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// Log index → encoded entry.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// "vote", "committed", "last_purged", "identity" → encoded value.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// What a log backend must provide; synchronous, called from the blocking
/// pool for the durable backend.
pub(crate) trait LogBackend: Send + Sync + 'static {
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, String>;
    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, String>;
    fn append(&self, entries: Vec<Entry>) -> Result<(), String>;
    /// Deletes `[index, ∞)`.
    fn truncate_from(&self, index: u64) -> Result<(), String>;
    /// Deletes `(-∞, log_id.index]` and records `log_id` as last purged, atomically.
    fn purge_to(&self, log_id: LogId<NodeId>) -> Result<(), String>;
    fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), String>;
    /// Like `put_meta`, but need not be durable before it returns: it
    /// becomes durable with the next durable write.
    fn put_meta_lazily(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        self.put_meta(key, value)
    }
    fn get_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, String>;
    /// Stores meta `key` and deletes meta `remove`, in one durable write.
    fn put_meta_removing(
        &self,
        key: &'static str,
        value: Vec<u8>,
        remove: &'static str,
    ) -> Result<(), String>;
    /// Whether calls may block on disk (and so belong on the blocking pool).
    fn blocking(&self) -> bool;
}

/// The in-memory backend.
#[derive(Debug, Default)]
pub(crate) struct MemBackend {
    log: Mutex<BTreeMap<u64, Entry>>,
    meta: Mutex<BTreeMap<&'static str, Vec<u8>>>,
}

impl LogBackend for MemBackend {
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, String> {
        Ok(self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, String> {
        Ok(self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .next_back()
            .map(|e| e.log_id))
    }
    fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            log.insert(entry.log_id.index, entry);
        }
        Ok(())
    }
    fn truncate_from(&self, index: u64) -> Result<(), String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).split_off(&index);
        Ok(())
    }
    fn purge_to(&self, log_id: LogId<NodeId>) -> Result<(), String> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        *log = log.split_off(&(log_id.index + 1));
        self.meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("last_purged", codec::encode(&log_id));
        Ok(())
    }
    fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).insert(key, value);
        Ok(())
    }
    fn get_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.meta.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }
    fn put_meta_removing(
        &self,
        key: &'static str,
        value: Vec<u8>,
        remove: &'static str,
    ) -> Result<(), String> {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.remove(remove);
        meta.insert(key, value);
        Ok(())
    }
    fn blocking(&self) -> bool {
        false
    }
}

/// The redb backend: one file, one writer, every commit fsynced.
pub(crate) struct RedbBackend {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl RedbBackend {
    pub(crate) fn open(path: &Path) -> Result<RedbBackend, String> {
        let db = Database::create(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // Create the tables so readers never see them missing.
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(LOG).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(RedbBackend { db })
    }
}

impl LogBackend for RedbBackend {
    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, String> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(LOG).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range::<u64>((start, end)).map_err(err)? {
            let (index, value) = row.map_err(err)?;
            let bytes = value.value();
            let entry: Entry = codec::decode(bytes, codec::stored_limit(bytes.len()), "log entry")
                .map_err(|e| format!("log entry {}: {e}", index.value()))?;
            out.push(entry);
        }
        Ok(out)
    }
    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, String> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(LOG).map_err(err)?;
        match table.last().map_err(err)? {
            None => Ok(None),
            Some((_, value)) => {
                let bytes = value.value();
                let entry: Entry =
                    codec::decode(bytes, codec::stored_limit(bytes.len()), "last log entry")
                        .map_err(err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
    fn append(&self, entries: Vec<Entry>) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(LOG).map_err(err)?;
            for entry in &entries {
                table.insert(entry.log_id.index, codec::encode(entry).as_slice()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }
    fn truncate_from(&self, index: u64) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(LOG).map_err(err)?.retain_in(index.., |_, _| false).map_err(err)?;
        txn.commit().map_err(err)
    }
    fn purge_to(&self, log_id: LogId<NodeId>) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(LOG).map_err(err)?.retain_in(..=log_id.index, |_, _| false).map_err(err)?;
        txn.open_table(META)
            .map_err(err)?
            .insert("last_purged", codec::encode(&log_id).as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }
    fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(META).map_err(err)?.insert(key, value.as_slice()).map_err(err)?;
        txn.commit().map_err(err)
    }
    fn put_meta_lazily(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(redb::Durability::None).map_err(err)?;
        txn.open_table(META).map_err(err)?.insert(key, value.as_slice()).map_err(err)?;
        txn.commit().map_err(err)
    }
    fn get_meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, String> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(META).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }
    fn put_meta_removing(
        &self,
        key: &'static str,
        value: Vec<u8>,
        remove: &'static str,
    ) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(META).map_err(err)?;
            table.remove(remove).map_err(err)?;
            table.insert(key, value.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }
    fn blocking(&self) -> bool {
        true
    }
}

/// Layout of the stored entries, recorded under `format` in `meta` when a
/// log is created. Format 2: proposals are session registrations or
/// commands in registered sessions. (Format 1 logs have no record.)
const LOG_FORMAT: u32 = 2;

/// Refuses a log in another format; records the format in a new one.
fn check_format(backend: &dyn LogBackend) -> Result<(), String> {
    if let Some(bytes) = backend.get_meta("format")? {
        let format: u32 = codec::decode(&bytes, codec::MIN_LIMIT, "log format").map_err(err)?;
        if format != LOG_FORMAT {
            return Err(format!(
                "the raft log is in format {format}; this version reads format {LOG_FORMAT}"
            ));
        }
        return Ok(());
    }
    for key in ["vote", "committed", "last_purged"] {
        if backend.get_meta(key)?.is_some() {
            return Err(format!(
                "the raft log was written by an older version (format 1, sessions chosen by \
                 clients); this version reads format {LOG_FORMAT} and cannot convert it: start \
                 this node with an empty state directory and let it join again"
            ));
        }
    }
    backend.put_meta("format", codec::encode(&LOG_FORMAT))
}

/// openraft's log storage: the log, the vote and the committed log id.
///
/// [`LogStore::in_memory`] keeps them in memory (tests); [`LogStore::durable`]
/// keeps them in one redb file, fsyncing every write before acknowledging it.
/// Cloning shares the same store (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn LogBackend>,
    /// Injected faults (tests only): the backend is wrapped, and writes
    /// wait the injected delay.
    faults: Option<StorageFaults>,
    /// Set by [`LogStore::purging_behind`]: purges wait for the snapshot
    /// that covers them to be stored.
    behind: Option<Arc<PurgeBehind>>,
}

/// A purge raft asked for that the stored snapshot does not cover yet.
struct PurgeBehind {
    floor: SnapshotFloor,
    /// How far raft has purged the log; physically done only as far as
    /// `floor` reaches.
    wanted: Mutex<Option<LogId<NodeId>>>,
}

impl PurgeBehind {
    fn wanted(&self) -> Option<LogId<NodeId>> {
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether raft has purged past the stored snapshot.
    fn ahead_of_floor(&self) -> Option<LogId<NodeId>> {
        self.wanted().filter(|wanted| !reaches(self.floor.durable(), *wanted))
    }
}

/// Purges the log up to `log_id`, unless it is purged that far already:
/// the purge mark never moves back.
fn purge_forward(backend: &dyn LogBackend, log_id: LogId<NodeId>) -> Result<(), String> {
    let purged: Option<LogId<NodeId>> = match backend.get_meta("last_purged")? {
        None => None,
        Some(bytes) => Some(
            codec::decode(&bytes, codec::stored_limit(bytes.len()), "last_purged").map_err(err)?,
        ),
    };
    if purged.is_some_and(|purged| purged.index >= log_id.index) {
        return Ok(());
    }
    backend.purge_to(log_id)
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("durable", &self.backend.blocking()).finish()
    }
}

impl LogStore {
    /// A log kept in memory.
    pub fn in_memory() -> LogStore {
        LogStore { backend: Arc::new(MemBackend::default()), faults: None, behind: None }
    }

    /// A log kept in the redb file at `path` (created if missing). A log
    /// written in another format is refused.
    pub fn durable(path: &Path) -> Result<LogStore, StorageError<NodeId>> {
        let backend = RedbBackend::open(path)
            .and_then(|backend| check_format(&backend).map(|()| backend))
            .map_err(|e| StorageIOError::<NodeId>::write_logs(AnyError::error(e)))?;
        Ok(LogStore { backend: Arc::new(backend), faults: None, behind: None })
    }

    /// The same store behind switchable faults (tests and the chaos harness
    /// only; see [`StorageFaults`]).
    pub fn with_faults(self, faults: StorageFaults) -> LogStore {
        let backend = Arc::new(FaultyBackend::new(self.backend, faults.clone()));
        LogStore { backend, faults: Some(faults), behind: self.behind }
    }

    /// The same store, never purging past the snapshot `floor` says is
    /// stored.
    ///
    /// openraft purges a follower's log up to a snapshot it receives when it
    /// queues the install, not after it (0.9.25: `PurgeLog` has no wait
    /// condition). Purged at once, a crash or a failed install before the
    /// snapshot is saved leaves the old snapshot and a log purged past it:
    /// the entries between are gone and the node cannot start. So a purge
    /// deletes only what the stored snapshot covers and remembers the rest,
    /// done by the next purge or append once the snapshot is saved. The
    /// purge mark stays what is physically purged, so a restart sees a log
    /// that continues the stored snapshot; openraft never reads the entries
    /// kept (it counts them purged).
    ///
    /// Entries appended after the snapshot while it is not saved would leave
    /// a hole behind them on disk (the stored snapshot, then the kept
    /// entries, then a gap up to the new snapshot): such an append waits
    /// until the snapshot is saved, or fails if the install fails.
    pub(crate) fn purging_behind(self, floor: SnapshotFloor) -> LogStore {
        let behind = Arc::new(PurgeBehind { floor, wanted: Mutex::new(None) });
        LogStore { behind: Some(behind), ..self }
    }

    /// Physically purges what raft purged, as far as the stored snapshot
    /// covers it.
    async fn purge_covered(&self) -> Result<(), StorageError<NodeId>> {
        let Some(behind) = &self.behind else { return Ok(()) };
        let Some(wanted) = behind.wanted() else { return Ok(()) };
        let Some(durable) = behind.floor.durable() else { return Ok(()) };
        let upto = if durable.index < wanted.index { durable } else { wanted };
        self.run(move |b| purge_forward(b, upto), write_logs).await?;
        if upto == wanted {
            let mut slot = behind.wanted.lock().unwrap_or_else(|p| p.into_inner());
            if *slot == Some(wanted) {
                *slot = None;
            }
        }
        Ok(())
    }

    /// Before appending: if raft purged past the stored snapshot (a
    /// snapshot is being installed), waits for it to be stored and purges
    /// behind it, so that the log on disk never has a hole.
    async fn before_append(&self) -> Result<(), StorageError<NodeId>> {
        let Some(behind) = &self.behind else { return Ok(()) };
        if let Some(wanted) = behind.ahead_of_floor() {
            tracing::info!(
                snapshot = %wanted,
                "appending after a snapshot being installed: waiting for it to be saved"
            );
            behind.floor.covers(wanted).await.map_err(|why| {
                StorageError::from(write_logs(AnyError::error(format!(
                    "cannot append after snapshot {wanted}, which was not saved: {why}"
                ))))
            })?;
        }
        self.purge_covered().await
    }

    /// Waits the injected write delay, if any.
    async fn before_write(&self) {
        let delay = self.faults.as_ref().map(StorageFaults::delay).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs `f` on the backend: inline for memory, on the blocking pool for
    /// disk.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn LogBackend) -> Result<T, String> + Send + 'static,
        on_error: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<T, StorageError<NodeId>> {
        let result = if self.backend.blocking() {
            let backend = self.backend.clone();
            tokio::task::spawn_blocking(move || f(&*backend))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        } else {
            f(&*self.backend)
        };
        result.map_err(|e| on_error(AnyError::error(e)).into())
    }

    async fn meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
        on_error: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        self.run(
            move |b| match b.get_meta(key)? {
                None => Ok(None),
                Some(bytes) => codec::decode(&bytes, codec::stored_limit(bytes.len()), key)
                    .map(Some)
                    .map_err(err),
            },
            on_error,
        )
        .await
    }
}

fn read_logs(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(e)
}
fn write_logs(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(e)
}
fn read_vote(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_vote(e)
}
fn write_vote(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_vote(e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.run(move |b| b.entries(start, end), read_logs).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta("last_purged", read_logs).await?;
        let last = self.run(|b| b.last_entry_id(), read_logs).await?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.before_write().await;
        let bytes = codec::encode(vote);
        self.run(move |b| b.put_meta("vote", bytes), write_vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta("vote", read_vote).await
    }

    /// The committed log id is written without waiting for the disk: it is
    /// only a hint of how far to re-apply the log at start, a stored value
    /// that lags is safe (the rest is applied once the cluster commits it
    /// again), and it becomes durable with the next append. Waiting for it
    /// would add an fsync to every commit.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.before_write().await;
        let bytes = codec::encode(&committed);
        self.run(move |b| b.put_meta_lazily("committed", bytes), write_logs).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta::<Option<LogId<NodeId>>>("committed", read_logs).await?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.before_write().await;
        // The write is durable (fsynced) when it returns, so the entries are
        // both readable and flushed here.
        let result = match self.before_append().await {
            Ok(()) => self.run(move |b| b.append(entries), write_logs).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.before_write().await;
        self.run(move |b| b.truncate_from(log_id.index), write_logs).await
    }

    /// Purges only as far as the stored snapshot reaches (see
    /// `LogStore::purging_behind`).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.before_write().await;
        let Some(behind) = &self.behind else {
            return self.run(move |b| b.purge_to(log_id), write_logs).await;
        };
        {
            let mut wanted = behind.wanted.lock().unwrap_or_else(|p| p.into_inner());
            *wanted = (*wanted).max(Some(log_id));
        }
        if !reaches(behind.floor.durable(), log_id) {
            tracing::info!(
                purge = %log_id,
                snapshot = ?behind.floor.durable(),
                "keeping the log behind a snapshot not yet saved"
            );
        }
        self.purge_covered().await
    }
}

/// The node's identity record (decision 0003) lives in the meta table next
/// to the vote, so that the two can never come from different nodes.
impl LogStore {
    /// The stored value of meta `key`, undecoded.
    pub(crate) async fn meta_bytes(&self, key: &'static str) -> Result<Option<Vec<u8>>, String> {
        self.run(move |b| b.get_meta(key), read_logs).await.map_err(|e| e.to_string())
    }

    /// Stores meta `key`, durably (fsynced) before it returns.
    pub(crate) async fn put_meta_durably(
        &self,
        key: &'static str,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.run(move |b| b.put_meta(key, value), write_logs).await.map_err(|e| e.to_string())
    }

    /// Stores meta `key` and deletes meta `remove` in one write, durably
    /// (fsynced) before it returns: a crash leaves both or neither.
    pub(crate) async fn put_meta_durably_removing(
        &self,
        key: &'static str,
        value: Vec<u8>,
        remove: &'static str,
    ) -> Result<(), String> {
        self.run(move |b| b.put_meta_removing(key, value, remove), write_logs)
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether any raft state is stored: a log entry, a purge mark or a
    /// vote.
    pub(crate) async fn has_raft_state(&self) -> Result<bool, String> {
        self.run(
            |b| {
                Ok(b.last_entry_id()?.is_some()
                    || b.get_meta("last_purged")?.is_some()
                    || b.get_meta("vote")?.is_some())
            },
            read_logs,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// What is physically stored: the purge mark and the first and last
    /// entries.
    async fn stored(log: &mut LogStore) -> (Option<u64>, Option<u64>, Option<u64>) {
        let purged = log.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index);
        let entries = log.try_get_log_entries(..).await.unwrap();
        let first = entries.first().map(|e| e.log_id.index);
        (purged, first, entries.last().map(|e| e.log_id.index))
    }

    /// openraft purges a follower's log up to a snapshot before the
    /// snapshot is saved (issue 12). The log keeps what the stored snapshot
    /// does not cover, purges it once the snapshot is stored, and an append
    /// after the new snapshot waits for it, so that the log on disk never
    /// has a hole after what a restart would start from.
    #[tokio::test]
    async fn the_log_is_never_purged_past_the_stored_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let floor = SnapshotFloor::default();
        let mut log =
            LogStore::durable(&dir.path().join("raft.redb")).unwrap().purging_behind(floor.clone());
        let entries = (1..=20).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank });
        let entries: Vec<Entry> = entries.collect();
        log.run(move |b| b.append(entries), write_logs).await.unwrap();

        // A snapshot up to 5 is stored; raft purges to 15 for one at 15.
        floor.set(Some(log_id(5)));
        log.purge(log_id(15)).await.unwrap();
        assert_eq!(stored(&mut log).await, (Some(5), Some(6), Some(20)));

        // Appending after 15 waits until the snapshot at 15 is stored.
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.before_append().await }
        });
        test_support::never(
            Duration::from_millis(300),
            "appended before the snapshot was stored",
            async || waiting.is_finished(),
        )
        .await;
        floor.set(Some(log_id(15)));
        waiting.await.unwrap().expect("the append goes on once the snapshot is stored");
        assert_eq!(stored(&mut log).await, (Some(15), Some(16), Some(20)));

        // A purge the stored snapshot covers is done at once; the purge
        // mark never moves back.
        floor.set(Some(log_id(18)));
        log.purge(log_id(17)).await.unwrap();
        assert_eq!(stored(&mut log).await, (Some(17), Some(18), Some(20)));
        log.purge(log_id(12)).await.unwrap();
        assert_eq!(stored(&mut log).await, (Some(17), Some(18), Some(20)));

        // If the next install fails instead, the waiting append fails.
        log.purge(log_id(30)).await.unwrap();
        assert_eq!(stored(&mut log).await, (Some(18), Some(19), Some(20)));
        floor.fail("the restore was refused");
        let err = log.before_append().await.expect_err("no snapshot will be stored");
        assert!(err.to_string().contains("the restore was refused"), "{err}");
    }

    #[test]
    fn a_log_from_an_older_version_is_refused_and_a_new_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        // New: marked with the format, and opens again.
        drop(LogStore::durable(&path).expect("a new log opens"));
        LogStore::durable(&path).expect("a log in this format opens again");

        // Written by the old version: a vote and no format record.
        let old = dir.path().join("old.redb");
        let backend = RedbBackend::open(&old).unwrap();
        backend.put_meta("vote", codec::encode(&Vote::<NodeId>::new(3, 1))).unwrap();
        drop(backend);
        let err = LogStore::durable(&old).expect_err("an old log is refused").to_string();
        assert!(err.contains("written by an older version"), "{err}");

        // Another format number.
        let other = dir.path().join("other.redb");
        let backend = RedbBackend::open(&other).unwrap();
        backend.put_meta("format", codec::encode(&7u32)).unwrap();
        drop(backend);
        let err = LogStore::durable(&other).expect_err("format 7 is refused").to_string();
        assert!(err.contains("format 7"), "{err}");
    }
}
