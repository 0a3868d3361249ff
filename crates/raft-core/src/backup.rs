//! Backups of the replicated state, and restoring one as a new cluster:
//! the way back when a cluster has lost its quorum for good.
//!
//! A backup ([`RaftNode::backup`](crate::RaftNode::backup)) is the state
//! machine and its exactly-once session table, exactly as a snapshot holds
//! them, plus what an operator needs to know about where it came from
//! ([`BackupInfo`]: cluster, node, log index, members, leader). The file:
//!
//! ```text
//! "TSCBKUP" 0x01 | u32 LE header length | header (JSON, BackupInfo)
//!                | u64 LE state length  | state (snapshot data)
//!                | u64 LE FNV-1a 64 of everything before it
//! ```
//!
//! Restoring is staged. [`stage_restore`] checks a backup and writes it as
//! [`PENDING_RESTORE`] in a node's state directory; the node applies it the
//! next time it starts ([`RaftNode::start`](crate::RaftNode::start)): its
//! raft state (`raft.redb`, `snapshots/`) is moved aside into
//! `pre-restore-<unix seconds>/` (nothing is deleted), it draws a new
//! incarnation (so a new raft id), and it starts as the only voter, and
//! the leader, of a **new** cluster (a new cluster id) whose state is the
//! backup's, at the backup's log index. Other nodes join it as new nodes,
//! with empty state directories; nodes that still hold the old cluster's
//! state never talk to it (decision 0003: raft connections carry the
//! cluster id).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use serde::{Deserialize, Serialize};

use crate::error::{BoxError, StartError};
use crate::identity::{self, Identity};
use crate::state_machine::{check_snapshot_data, rebase_snapshot_data};
use crate::storage::LogStore;
use crate::storage::snapshot::{SnapshotStore, StoredSnapshot};
use crate::types::{ClusterId, NodeId, NodeInfo, fnv1a64};

/// The staged restore, in a node's state directory.
pub const PENDING_RESTORE: &str = "restore.pending";
/// First bytes of a backup file: a name and the format version.
const MAGIC: &[u8; 8] = b"TSCBKUP\x01";
/// Largest backup header accepted (the member list is small).
const MAX_HEADER: usize = 1 << 20;
/// Where the log lives in a state directory (as `RaftNode::start` puts it).
const LOG_FILE: &str = "raft.redb";
/// Where the snapshots live in a state directory.
const SNAPSHOT_DIR: &str = "snapshots";

/// Why a backup could not be read, staged or looked for, or a state
/// directory looked at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup is not one this version restores: another format,
    /// truncated, damaged, or with a header or state that does not check
    /// out. The message says what is wrong.
    #[error("{message}")]
    Invalid {
        /// What is wrong, in words (the cause's own included).
        message: String,
        /// The JSON error, for a header that does not parse; for the
        /// file's own checks the message is all there is.
        #[source]
        source: Option<BoxError>,
    },
    /// Reading or writing a file failed.
    #[error("{message}")]
    Io {
        /// What failed, and where, in words (the cause's own included).
        message: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The state directory's raft log could not be read, or holds raft
    /// state without a node identity. Text only: the log store reports
    /// its failures as openraft's `StorageError`, which stays in this
    /// crate, and the identity record's checks are this crate's own.
    #[error("{0}")]
    Storage(String),
}

impl BackupError {
    fn invalid(message: impl Into<String>) -> BackupError {
        BackupError::Invalid { message: message.into(), source: None }
    }

    fn io(message: impl Into<String>, source: io::Error) -> BackupError {
        BackupError::Io { message: message.into(), source }
    }
}

/// A member of the cluster a backup was taken in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupMember {
    /// Its raft id.
    pub id: NodeId,
    /// Its stable tailnet id.
    pub stable_id: String,
    /// Whether it voted.
    pub voter: bool,
}

/// Where a backup came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupInfo {
    /// The cluster it was taken in.
    pub cluster_id: Option<ClusterId>,
    /// The node that took it.
    pub taken_by: NodeId,
    /// That node's stable id.
    pub stable_id: String,
    /// When (seconds since the Unix epoch, by that node's clock).
    pub taken_at_unix: u64,
    /// The last log index the state reflects.
    pub applied_index: Option<u64>,
    /// The term of that entry.
    pub applied_term: Option<u64>,
    /// The leader the node knew.
    pub leader: Option<NodeId>,
    /// The configuration as the node knew it.
    pub members: Vec<BackupMember>,
    /// Whether the state was read after a linearizable barrier: it holds
    /// every command acknowledged before the backup began. A backup taken
    /// without a quorum holds what this node had applied.
    pub linearizable: bool,
    /// Size of the state in bytes.
    pub state_bytes: u64,
}

/// A backup: where it came from, and the state.
#[derive(Clone, Debug)]
pub struct Backup {
    info: BackupInfo,
    data: Vec<u8>,
}

impl Backup {
    pub(crate) fn new(info: BackupInfo, data: Vec<u8>) -> Backup {
        Backup { info: BackupInfo { state_bytes: data.len() as u64, ..info }, data }
    }

    /// Where it came from.
    pub fn info(&self) -> &BackupInfo {
        &self.info
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.info)
            .unwrap_or_else(|err| unreachable!("backup info always encodes: {err}"));
        let mut out = Vec::with_capacity(8 + 4 + header.len() + 8 + self.data.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.data);
        let checksum = fnv1a64(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Reads a backup file's bytes, checking everything: the name and
    /// version, the lengths, the checksum, the header, and that the state
    /// is snapshot data this version reads.
    pub fn from_bytes(bytes: &[u8]) -> Result<Backup, BackupError> {
        if bytes.len() < MAGIC.len() || bytes[..7] != MAGIC[..7] {
            return Err(BackupError::invalid(
                "not a tsconsensus backup (it does not start with \"TSCBKUP\")",
            ));
        }
        if bytes[7] != MAGIC[7] {
            return Err(BackupError::invalid(format!(
                "backup format {} (this version reads format {})",
                bytes[7], MAGIC[7]
            )));
        }
        let truncated =
            |what: &str| BackupError::invalid(format!("backup truncated ({what} missing)"));
        let (body, checksum) = bytes
            .len()
            .checked_sub(8)
            .filter(|end| *end >= MAGIC.len())
            .map(|end| bytes.split_at(end))
            .ok_or_else(|| truncated("checksum"))?;
        let header_len = body
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| truncated("header length"))?;
        if header_len > MAX_HEADER {
            return Err(BackupError::invalid(format!(
                "backup header of {header_len} bytes (at most {MAX_HEADER})"
            )));
        }
        let header = body.get(12..12 + header_len).ok_or_else(|| truncated("header"))?;
        let rest = &body[12 + header_len..];
        let data_len = rest
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| truncated("state length"))?;
        let data = &rest[8..];
        if data.len() as u64 != data_len {
            return Err(BackupError::invalid(format!(
                "backup state is {} bytes, its header says {data_len}: the file is truncated or \
                 has trailing bytes",
                data.len()
            )));
        }
        let expected = u64::from_le_bytes(checksum.try_into().unwrap_or_default());
        if fnv1a64(body) != expected {
            return Err(BackupError::invalid(
                "backup checksum does not match: the file is damaged",
            ));
        }
        let info: BackupInfo =
            serde_json::from_slice(header).map_err(|e| BackupError::Invalid {
                message: format!("backup header: {e}"),
                source: Some(Box::new(e)),
            })?;
        if info.state_bytes != data_len {
            return Err(BackupError::invalid(format!(
                "backup header says {} state bytes, the file holds {data_len}",
                info.state_bytes
            )));
        }
        check_snapshot_data(data)
            .map_err(|e| BackupError::invalid(format!("backup state: {e}")))?;
        Ok(Backup { info, data: data.to_vec() })
    }
}

/// What a state directory holds, as far as restoring is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateDir {
    /// No raft state.
    Empty,
    /// The raft state of a node (of a cluster, once it has one).
    Member {
        /// The node's stable id.
        stable_id: String,
        /// Its raft id.
        node_id: NodeId,
        /// Its cluster.
        cluster_id: Option<ClusterId>,
    },
    /// A running node holds it (its log is locked).
    InUse,
}

/// Looks at a state directory without changing it: whether it holds raft
/// state, and whose, or whether a running node holds it.
pub async fn inspect_state_dir(dir: &Path) -> Result<StateDir, BackupError> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Ok(StateDir::Empty);
    }
    let log = match LogStore::durable(&path) {
        Ok(log) => log,
        // redb takes an exclusive lock on the file while it is open.
        Err(err) if err.to_string().contains("already open") => return Ok(StateDir::InUse),
        Err(err) => return Err(BackupError::Storage(format!("{}: {err}", path.display()))),
    };
    match identity::load(&log).await.map_err(BackupError::Storage)? {
        Some(identity) => Ok(StateDir::Member {
            stable_id: identity.stable_id,
            node_id: identity.node_id,
            cluster_id: identity.cluster_id,
        }),
        None if log.has_raft_state().await.map_err(BackupError::Storage)? => {
            Err(BackupError::Storage(format!(
                "{} holds raft state without a node identity (written before decision 0003)",
                path.display()
            )))
        }
        None => Ok(StateDir::Empty),
    }
}

/// Checks `backup` and stages it in `dir` as [`PENDING_RESTORE`] (written
/// atomically, readable by its owner only): the node whose state
/// directory it is restores it the next time it starts. Whether that is
/// wise (a healthy cluster?) is the caller's to decide.
pub fn stage_restore(dir: &Path, backup: &[u8]) -> Result<BackupInfo, BackupError> {
    let info = Backup::from_bytes(backup)?.info;
    fs::create_dir_all(dir)
        .map_err(|e| BackupError::io(format!("create {}: {e}", dir.display()), e))?;
    let temp = dir.join(format!("{PENDING_RESTORE}.tmp"));
    let write = || -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        file.write_all(backup)?;
        file.sync_all()?;
        fs::rename(&temp, dir.join(PENDING_RESTORE))?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        BackupError::io(format!("stage the restore in {}: {e}", dir.display()), e)
    })?;
    Ok(info)
}

/// Where a staged restore that failed at start goes: the next start does
/// not try it again.
pub const FAILED_RESTORE: &str = "restore.failed";

/// The restore staged in `dir`, if any: its header only (the whole file
/// was checked when it was staged, and is again when it is applied).
pub fn pending_restore(dir: &Path) -> Result<Option<BackupInfo>, BackupError> {
    use std::io::Read as _;
    let path = dir.join(PENDING_RESTORE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(BackupError::io(format!("{}: {err}", path.display()), err)),
    };
    let bad = |what: String| format!("{}: {what}", path.display());
    let truncated = |e: io::Error| BackupError::Invalid {
        message: bad(format!("backup truncated ({e})")),
        source: Some(Box::new(e)),
    };
    let mut head = [0u8; 12];
    file.read_exact(&mut head).map_err(truncated)?;
    if head[..8] != MAGIC[..] {
        return Err(BackupError::invalid(
            bad("not a tsconsensus backup of this format".to_owned()),
        ));
    }
    let header_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if header_len > MAX_HEADER {
        return Err(BackupError::invalid(bad(format!(
            "backup header of {header_len} bytes (at most {MAX_HEADER})"
        ))));
    }
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header).map_err(truncated)?;
    serde_json::from_slice(&header).map(Some).map_err(|e| BackupError::Invalid {
        message: bad(format!("backup header: {e}")),
        source: Some(Box::new(e)),
    })
}

/// A staged restore being applied at start.
pub(crate) struct PendingRestore {
    backup: Backup,
    /// Where the previous raft state went.
    aside: PathBuf,
}

/// If `dir` holds a staged restore: checks it, and moves the node's raft
/// state aside, so that the node starts on fresh storage (a new
/// incarnation). Nothing is deleted.
pub(crate) fn take_pending(dir: &Path) -> Result<Option<PendingRestore>, StartError> {
    let path = dir.join(PENDING_RESTORE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(StartError::storage_from(format!("{}: {err}", path.display()), err));
        }
    };
    let backup = Backup::from_bytes(&bytes).map_err(|e| {
        StartError::storage_from(
            format!(
                "the staged restore {} is not a valid backup: {e}; remove it to start without \
                 restoring",
                path.display()
            ),
            e,
        )
    })?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut aside = dir.join(format!("pre-restore-{now}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("pre-restore-{now}-{n}"));
        n += 1;
    }
    let moved = || -> io::Result<()> {
        fs::create_dir(&aside)?;
        for name in [LOG_FILE, SNAPSHOT_DIR] {
            match fs::rename(dir.join(name), aside.join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        File::open(&aside)?.sync_all()?;
        File::open(dir)?.sync_all()
    };
    moved().map_err(|e| {
        StartError::storage_from(
            format!("move the raft state aside into {}: {e}", aside.display()),
            e,
        )
    })?;
    tracing::warn!(
        aside = %aside.display(),
        from_cluster = ?backup.info.cluster_id,
        index = ?backup.info.applied_index,
        "restoring a backup: the previous raft state was moved aside"
    );
    Ok(Some(PendingRestore { backup, aside }))
}

impl PendingRestore {
    /// Writes the backup into the node's fresh storage as the state of a
    /// new cluster whose only voter is this node (`identity`, `self_node`):
    /// the snapshot, a purge mark at its log id, and this node's committed
    /// vote, so that it starts as the leader; then the identity with a new
    /// cluster id, which it returns.
    pub(crate) async fn apply(
        &self,
        mut log: LogStore,
        snapshots: &SnapshotStore,
        identity: &Identity,
        self_node: &NodeInfo,
    ) -> Result<Identity, StartError> {
        let storage = |what: &str, e: String| StartError::storage(format!("restore: {what}: {e}"));
        let storage_from =
            |what: &str, e: BoxError| StartError::storage_from(format!("restore: {what}: {e}"), e);
        let id = identity.node_id;
        let cluster_id = ClusterId::random().map_err(|e| storage("cluster id", e))?;
        let index = self.backup.info.applied_index.unwrap_or(0).max(1);
        let log_id = LogId::new(CommittedLeaderId::new(1, id), index);
        let membership = StoredMembership::new(
            Some(log_id),
            Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, self_node.clone())])),
        );
        let data = rebase_snapshot_data(&self.backup.data, log_id, membership.clone())
            .map_err(|e| storage("backup state", e))?;
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: membership,
            snapshot_id: format!("restored-1-{index}"),
        };
        snapshots
            .save(&StoredSnapshot { meta, data })
            .map_err(|e| storage_from("write the snapshot", e.into()))?;
        log.purge(log_id).await.map_err(|e| storage_from("mark the log", e.into()))?;
        log.save_committed(Some(log_id))
            .await
            .map_err(|e| storage_from("mark the log", e.into()))?;
        log.save_vote(&Vote::new_committed(1, id))
            .await
            .map_err(|e| storage_from("write the vote", e.into()))?;
        let restored = Identity { cluster_id: Some(cluster_id), ..identity.clone() };
        identity::store(&log, &restored).await.map_err(|e| storage("write the identity", e))?;
        tracing::warn!(
            id,
            cluster = %cluster_id,
            index,
            from_cluster = ?self.backup.info.cluster_id,
            "restored a backup as a new one-node cluster"
        );
        Ok(restored)
    }

    /// After a failed restore: renames the staged file [`FAILED_RESTORE`],
    /// so that a supervisor restarting the node does not move the state
    /// aside again at every start; says so, and how to retry or undo, in
    /// `err`.
    pub(crate) fn abandon(&self, dir: &Path, err: StartError) -> StartError {
        let failed = dir.join(FAILED_RESTORE);
        let renamed = fs::rename(dir.join(PENDING_RESTORE), &failed)
            .and_then(|()| File::open(dir)?.sync_all());
        let what = match renamed {
            Ok(()) => format!(
                "the staged restore was renamed {} and is not tried again; the previous raft \
                 state is in {}. To undo, stop the node and move that state back; to retry, \
                 rename the file back to {PENDING_RESTORE}",
                failed.display(),
                self.aside.display()
            ),
            Err(e) => {
                format!("renaming the staged restore to {} failed too: {e}", failed.display())
            }
        };
        tracing::error!(error = %err, "restore failed at start: {what}");
        StartError::storage_from(format!("{err}; {what}"), err)
    }

    /// Moves the staged file next to the state it replaced, once the
    /// restored state is durable: the next start does not restore again.
    pub(crate) fn finish(&self, dir: &Path) -> Result<(), StartError> {
        let done = || -> io::Result<()> {
            fs::rename(dir.join(PENDING_RESTORE), self.aside.join("restored.backup"))?;
            File::open(dir)?.sync_all()
        };
        done().map_err(|e| {
            let message = format!(
                "restore: move {} into {}: {e}",
                dir.join(PENDING_RESTORE).display(),
                self.aside.display()
            );
            StartError::storage_from(message, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        let data = {
            // Real snapshot data: an empty state machine's.
            let store = crate::state_machine::StateMachineStore::in_memory(Nothing);
            store.image().unwrap().data
        };
        Backup::new(
            BackupInfo {
                cluster_id: Some(ClusterId(7)),
                taken_by: 3,
                stable_id: "n1".into(),
                taken_at_unix: 1,
                applied_index: Some(10),
                applied_term: Some(2),
                leader: Some(3),
                members: vec![BackupMember { id: 3, stable_id: "n1".into(), voter: true }],
                linearizable: true,
                state_bytes: 0,
            },
            data,
        )
    }

    struct Nothing;

    impl crate::StateMachine for Nothing {
        fn apply(&mut self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn query(&self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
            out.write_all(b"state")
        }
        fn restore(&mut self, _: &mut dyn io::Read) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_backup_reads_back() {
        let backup = sample();
        let bytes = backup.to_bytes();
        let read = Backup::from_bytes(&bytes).unwrap();
        assert_eq!(read.info, backup.info);
        assert_eq!(read.data, backup.data);
        assert_eq!(read.info.state_bytes, backup.data.len() as u64);
    }

    #[test]
    fn damaged_backups_are_refused_with_the_reason() {
        let bytes = sample().to_bytes();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "not a tsconsensus backup"),
            ("other file", b"hello world, not a backup".to_vec(), "not a tsconsensus backup"),
            (
                "newer format",
                {
                    let mut b = bytes.clone();
                    b[7] = 9;
                    b
                },
                "format 9",
            ),
            ("truncated", bytes[..bytes.len() - 20].to_vec(), "truncated"),
            ("cut after the magic", bytes[..10].to_vec(), "truncated"),
            (
                "one bit flipped",
                {
                    let mut b = bytes.clone();
                    let n = b.len() - 12;
                    b[n] ^= 1;
                    b
                },
                "checksum",
            ),
            (
                "trailing bytes",
                {
                    let mut b = bytes.clone();
                    b.push(0);
                    b
                },
                "trailing bytes",
            ),
            (
                "huge header",
                {
                    let mut b = bytes.clone();
                    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                    b
                },
                "header of",
            ),
        ];
        for (what, bytes, expected) in cases {
            let err = Backup::from_bytes(&bytes).expect_err(what);
            assert!(matches!(err, BackupError::Invalid { .. }), "{what}: {err:?}");
            assert!(err.to_string().contains(expected), "{what}: {err}");
        }
    }

    #[tokio::test]
    async fn staging_writes_an_owner_only_file_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let backup = sample();
        assert_eq!(pending_restore(dir.path()).unwrap(), None);
        let info = stage_restore(dir.path(), &backup.to_bytes()).unwrap();
        assert_eq!(info, backup.info);
        assert_eq!(pending_restore(dir.path()).unwrap(), Some(backup.info.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(PENDING_RESTORE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
        let err = stage_restore(dir.path(), b"garbage").unwrap_err();
        assert!(matches!(err, BackupError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("not a tsconsensus backup"), "{err}");
    }

    /// Before: `Result<_, String>`, the `io::Error` of a failed write
    /// flattened to text. Now it is the source.
    #[test]
    fn a_restore_that_cannot_be_staged_keeps_its_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"not a directory").unwrap();
        let err = stage_restore(&file.join("state"), &sample().to_bytes()).unwrap_err();
        assert!(matches!(err, BackupError::Io { .. }), "{err:?}");
        let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<io::Error>());
        assert!(io.is_some(), "no io::Error underneath {err:?}");
        assert!(err.to_string().starts_with("create "), "{err}");
    }

    /// A header that is not JSON keeps the JSON error underneath.
    #[test]
    fn a_header_that_does_not_parse_keeps_the_json_error() {
        let mut bytes = MAGIC.to_vec();
        let header = b"{not json";
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let checksum = fnv1a64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        let err = Backup::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().starts_with("backup header: "), "{err}");
        let json =
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<serde_json::Error>());
        assert!(json.is_some(), "no serde_json::Error underneath {err:?}");
    }

    #[test]
    fn a_staged_restore_is_described_from_its_header_alone() {
        let dir = tempfile::tempdir().unwrap();
        let backup = sample();
        let mut bytes = backup.to_bytes();
        // Damage the state: only a full read would notice.
        let n = bytes.len() - 12;
        bytes[n] ^= 1;
        fs::write(dir.path().join(PENDING_RESTORE), &bytes).unwrap();
        assert_eq!(pending_restore(dir.path()).unwrap(), Some(backup.info.clone()));
        fs::write(dir.path().join(PENDING_RESTORE), b"TSCBKUP\x01\xff\xff\xff\xff").unwrap();
        assert!(pending_restore(dir.path()).unwrap_err().to_string().contains("header of"));
        fs::write(dir.path().join(PENDING_RESTORE), b"junk").unwrap();
        assert!(pending_restore(dir.path()).unwrap_err().to_string().contains("truncated"));
    }

    #[tokio::test]
    async fn a_state_directory_in_use_is_told_apart_from_a_stopped_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(inspect_state_dir(dir.path()).await.unwrap(), StateDir::Empty);
        let log = LogStore::durable(&dir.path().join(LOG_FILE)).unwrap();
        let identity = identity::establish(&log, "n1", "test", None).await.unwrap();
        assert_eq!(inspect_state_dir(dir.path()).await.unwrap(), StateDir::InUse);
        drop(log);
        assert_eq!(
            inspect_state_dir(dir.path()).await.unwrap(),
            StateDir::Member {
                stable_id: "n1".into(),
                node_id: identity.node_id,
                cluster_id: None
            }
        );
    }
}
