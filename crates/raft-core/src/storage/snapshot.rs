//! Where the current snapshot lives: in memory, or in a directory as one
//! file replaced atomically (write a temporary file, fsync it, rename it over
//! the old one, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{NodeId, NodeInfo};

const CURRENT: &str = "current.snapshot";
const TEMP: &str = "current.snapshot.tmp";
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

/// The current snapshot's home.
#[derive(Debug)]
pub(crate) enum SnapshotStore {
    /// Kept in memory; gone with the process.
    Memory(Mutex<Option<StoredSnapshot>>),
    /// Kept in `dir/current.snapshot`.
    Dir(PathBuf),
}

impl SnapshotStore {
    /// Saves `snapshot` as the current one. Durable when this returns.
    pub(crate) fn save(&self, snapshot: &StoredSnapshot) -> io::Result<()> {
        match self {
            SnapshotStore::Memory(slot) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
                Ok(())
            }
            SnapshotStore::Dir(dir) => write_atomically(dir, snapshot),
        }
    }

    /// The current snapshot, if any. A file that cannot be read is an error,
    /// never silently ignored.
    pub(crate) fn load(&self) -> io::Result<Option<StoredSnapshot>> {
        match self {
            SnapshotStore::Memory(slot) => {
                Ok(slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            SnapshotStore::Dir(dir) => read(dir),
        }
    }
}

fn write_atomically(dir: &Path, snapshot: &StoredSnapshot) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let header = codec::framed_header(
        FORMAT,
        &FileHeader { meta: snapshot.meta.clone(), data_len: snapshot.data.len() as u64 },
    );
    let temp = dir.join(TEMP);
    {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        file.write_all(&header)?;
        file.write_all(&snapshot.data)?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()
}

fn read(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    let bytes = match fs::read(dir.join(CURRENT)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let corrupt = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot file in {}: {what}", dir.display()),
        )
    };
    let (header, data): (FileHeader, &[u8]) =
        codec::split_framed(&bytes, FORMAT, "snapshot file").map_err(corrupt)?;
    if data.len() as u64 != header.data_len {
        return Err(corrupt(format!("{} data bytes, header says {}", data.len(), header.data_len)));
    }
    Ok(Some(StoredSnapshot { meta: header.meta, data: data.to_vec() }))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn dir_store_replaces_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::Dir(dir.path().to_owned());
        assert!(store.load().unwrap().is_none());
        store.save(&snapshot("one", b"first")).unwrap();
        store.save(&snapshot("two", b"second")).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(
            (loaded.meta.snapshot_id.as_str(), loaded.data.as_slice()),
            ("two", &b"second"[..])
        );
        assert!(!dir.path().join(TEMP).exists(), "temporary file left behind");

        let path = dir.path().join(CURRENT);
        let mut bytes = fs::read(&path).unwrap();
        bytes.pop();
        fs::write(&path, &bytes).unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("data bytes"), "{err}");
        fs::write(&path, b"\x09junk").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("unknown format"));
    }
}
