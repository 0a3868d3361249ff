//! Where the current snapshot lives: in memory, or in a directory as one
//! file replaced atomically (write a temporary file, fsync it, rename it over
//! the old one, fsync the directory).
//!
//! Saves are serialized, and a save never replaces a stored snapshot that
//! covers a later log id: a snapshot build that started before a newer
//! snapshot was installed must not put the older one back once the log
//! behind the newer one is purged (the node could not restart from it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::{LogId, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::floor::SnapshotFloor;
use crate::codec;
use crate::types::{NodeId, NodeInfo};

const CURRENT: &str = "current.snapshot";
/// Temporary files are `current.snapshot.tmp.<n>`: a name per save, so no
/// two writes ever share a file.
const TEMP_PREFIX: &str = "current.snapshot.tmp.";
/// File format version; the first byte of the file.
const FORMAT: u8 = 1;

/// A snapshot as stored: its meta and its bytes.
#[derive(Clone, Debug)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta<NodeId, NodeInfo>,
    pub(crate) data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct FileHeader {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data_len: u64,
}

/// What a save did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// The snapshot is now the current one.
    Replaced,
    /// The stored snapshot covers a later log id; it was kept and the
    /// snapshot given was not written.
    KeptNewer {
        /// The stored snapshot's last log id.
        stored: Option<LogId<NodeId>>,
    },
}

/// Where the snapshot lives.
#[derive(Debug)]
enum Place {
    Memory(Option<StoredSnapshot>),
    Dir { dir: PathBuf, next_temp: AtomicU64 },
}

/// The current snapshot's home. Saves and loads are serialized by one lock,
/// which also remembers the stored snapshot's last log id.
#[derive(Debug)]
pub(crate) struct SnapshotStore {
    inner: Mutex<Inner>,
    /// The stored snapshot's last log id, for the log store, which never
    /// purges past it; set whenever a save or a load learns it.
    floor: SnapshotFloor,
}

#[derive(Debug)]
struct Inner {
    place: Place,
    /// The stored snapshot's last log id, once known (`None` inside: the
    /// store holds no snapshot, or one covering nothing).
    stored: Option<Option<LogId<NodeId>>>,
}

impl SnapshotStore {
    /// A store kept in memory; gone with the process.
    pub(crate) fn memory() -> SnapshotStore {
        SnapshotStore::new(Place::Memory(None), Some(None))
    }

    /// A store kept in `dir/current.snapshot`. Temporary files a crash left
    /// behind are removed.
    pub(crate) fn dir(dir: PathBuf) -> SnapshotStore {
        remove_temporaries(&dir);
        SnapshotStore::new(Place::Dir { dir, next_temp: AtomicU64::new(0) }, None)
    }

    fn new(place: Place, stored: Option<Option<LogId<NodeId>>>) -> SnapshotStore {
        let floor = SnapshotFloor::default();
        if let Some(stored) = stored {
            floor.set(stored);
        }
        SnapshotStore { inner: Mutex::new(Inner { place, stored }), floor }
    }

    /// How far the stored snapshot reaches: the log must not be purged
    /// past it.
    pub(crate) fn floor(&self) -> &SnapshotFloor {
        &self.floor
    }

    /// Saves `snapshot` as the current one, unless the stored one covers a
    /// later log id. Durable when this returns.
    pub(crate) fn save(&self, snapshot: &StoredSnapshot) -> io::Result<Saved> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let stored = match inner.stored {
            Some(stored) => stored,
            None => {
                let stored = match &inner.place {
                    Place::Memory(slot) => slot.as_ref().and_then(|s| s.meta.last_log_id),
                    Place::Dir { dir, .. } => read_meta(dir)?.and_then(|meta| meta.last_log_id),
                };
                inner.stored = Some(stored);
                self.floor.set(stored);
                stored
            }
        };
        if snapshot.meta.last_log_id < stored {
            tracing::info!(
                kept = ?stored,
                offered = ?snapshot.meta.last_log_id,
                "not replacing the stored snapshot with an older one"
            );
            return Ok(Saved::KeptNewer { stored });
        }
        match &mut inner.place {
            Place::Memory(slot) => *slot = Some(snapshot.clone()),
            Place::Dir { dir, next_temp } => {
                let temp =
                    dir.join(format!("{TEMP_PREFIX}{}", next_temp.fetch_add(1, Ordering::Relaxed)));
                let written = write_atomically(dir, &temp, snapshot);
                if written.is_err() {
                    let _ = fs::remove_file(&temp);
                    // The file may or may not have been replaced: read it
                    // again next time.
                    inner.stored = None;
                    return written.map(|()| Saved::Replaced);
                }
            }
        }
        inner.stored = Some(snapshot.meta.last_log_id);
        self.floor.set(snapshot.meta.last_log_id);
        Ok(Saved::Replaced)
    }

    /// The current snapshot, if any. A file that cannot be read is an error,
    /// never silently ignored.
    pub(crate) fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = match &inner.place {
            Place::Memory(slot) => slot.clone(),
            Place::Dir { dir, .. } => read(dir)?,
        };
        let stored = loaded.as_ref().and_then(|s| s.meta.last_log_id);
        inner.stored = Some(stored);
        self.floor.set(stored);
        Ok(loaded)
    }
}

fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && let Err(err) = fs::remove_file(entry.path())
        {
            tracing::warn!(file = %entry.path().display(), error = %err, "cannot remove a leftover temporary snapshot");
        }
    }
}

fn write_atomically(dir: &Path, temp: &Path, snapshot: &StoredSnapshot) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let header = codec::framed_header(
        FORMAT,
        &FileHeader { meta: snapshot.meta.clone(), data_len: snapshot.data.len() as u64 },
    );
    {
        let mut file = OpenOptions::new().write(true).create_new(true).open(temp)?;
        file.write_all(&header)?;
        file.write_all(&snapshot.data)?;
        file.sync_all()?;
    }
    fs::rename(temp, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()
}

fn corrupt(dir: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot file in {}: {what}", dir.display()),
    )
}

/// Only the stored snapshot's meta: the header, without reading the data.
fn read_meta(dir: &Path) -> io::Result<Option<SnapshotMeta<NodeId, NodeInfo>>> {
    let mut file = match File::open(dir.join(CURRENT)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut prefix = [0u8; 5];
    file.read_exact(&mut prefix).map_err(|e| corrupt(dir, format!("truncated header: {e}")))?;
    let len = u32::from_le_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > codec::MAX_STORED_VALUE {
        return Err(corrupt(dir, format!("header of {len} bytes")));
    }
    let mut bytes = prefix.to_vec();
    bytes.resize(5 + len, 0);
    file.read_exact(&mut bytes[5..]).map_err(|e| corrupt(dir, format!("truncated header: {e}")))?;
    let (header, _): (FileHeader, &[u8]) =
        codec::split_framed(&bytes, FORMAT, "snapshot file").map_err(|e| corrupt(dir, e))?;
    Ok(Some(header.meta))
}

fn read(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    let bytes = match fs::read(dir.join(CURRENT)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let (header, data): (FileHeader, &[u8]) =
        codec::split_framed(&bytes, FORMAT, "snapshot file").map_err(|e| corrupt(dir, e))?;
    if data.len() as u64 != header.data_len {
        return Err(corrupt(
            dir,
            format!("{} data bytes, header says {}", data.len(), header.data_len),
        ));
    }
    Ok(Some(StoredSnapshot { meta: header.meta, data: data.to_vec() }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::CommittedLeaderId;

    use super::*;

    fn snapshot(id: &str, data: &[u8]) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: id.to_owned(),
            },
            data: data.to_vec(),
        }
    }

    fn at(index: u64) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
                last_membership: Default::default(),
                snapshot_id: format!("1-{index}-0"),
            },
            data: index.to_le_bytes().to_vec(),
        }
    }

    fn temporaries(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn dir_store_replaces_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::dir(dir.path().to_owned());
        assert!(store.load().unwrap().is_none());
        store.save(&snapshot("one", b"first")).unwrap();
        store.save(&snapshot("two", b"second")).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(
            (loaded.meta.snapshot_id.as_str(), loaded.data.as_slice()),
            ("two", &b"second"[..])
        );
        assert!(temporaries(dir.path()).is_empty(), "temporary file left behind");

        let path = dir.path().join(CURRENT);
        let mut bytes = fs::read(&path).unwrap();
        bytes.pop();
        fs::write(&path, &bytes).unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("data bytes"), "{err}");
        fs::write(&path, b"\x09junk").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("unknown format"));
    }

    /// A snapshot build that started before a newer snapshot was installed
    /// must not put the older one back (issue 12, item 3).
    #[test]
    fn a_save_never_replaces_a_snapshot_covering_a_later_log_id() {
        let dir = tempfile::tempdir().unwrap();
        for store in [SnapshotStore::memory(), SnapshotStore::dir(dir.path().to_owned())] {
            assert_eq!(store.save(&at(50)).unwrap(), Saved::Replaced);
            let kept = store.save(&at(10)).unwrap();
            assert!(matches!(kept, Saved::KeptNewer { .. }), "{kept:?}");
            let loaded = store.load().unwrap().unwrap();
            assert_eq!(
                loaded.meta.last_log_id.map(|l| l.index),
                Some(50),
                "a stale save replaced a newer snapshot"
            );
            // The same log id again, or a later one, replaces it.
            assert_eq!(store.save(&at(50)).unwrap(), Saved::Replaced);
            assert_eq!(store.save(&at(60)).unwrap(), Saved::Replaced);
        }
    }

    #[test]
    fn a_reopened_store_knows_the_stored_snapshot_before_loading_it() {
        let dir = tempfile::tempdir().unwrap();
        SnapshotStore::dir(dir.path().to_owned()).save(&at(50)).unwrap();
        let reopened = SnapshotStore::dir(dir.path().to_owned());
        assert!(matches!(reopened.save(&at(10)).unwrap(), Saved::KeptNewer { .. }));
        assert_eq!(reopened.load().unwrap().unwrap().meta.last_log_id.map(|l| l.index), Some(50));
    }

    #[test]
    fn concurrent_saves_leave_the_latest_snapshot_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SnapshotStore::dir(dir.path().to_owned()));
        let threads: Vec<_> = (1..=8u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for round in 0..10u64 {
                        let mut snapshot = at(round * 8 + t);
                        snapshot.data = vec![t as u8; 64 << 10];
                        store.save(&snapshot).expect("save");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let loaded = SnapshotStore::dir(dir.path().to_owned()).load().unwrap().unwrap();
        assert_eq!(loaded.meta.last_log_id.map(|l| l.index), Some(9 * 8 + 8));
        assert_eq!(loaded.data, vec![8u8; 64 << 10]);
        assert!(temporaries(dir.path()).is_empty(), "temporary files left behind");
    }

    #[test]
    fn leftover_temporary_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}3")), b"half a snapshot").unwrap();
        let _store = SnapshotStore::dir(dir.path().to_owned());
        assert!(temporaries(dir.path()).is_empty());
    }
}
