//! Who this node is to raft (decision 0003): its incarnation, the raft id
//! derived from it, and the cluster it belongs to.
//!
//! The identity record lives in the log store's meta table (redb for
//! durable storage, memory otherwise) and is written, durably, before the
//! raft port opens. Storage without a record is fresh: a new random
//! incarnation is drawn, so a node that lost its state comes back under a
//! new raft id and never votes in, or counts toward, a configuration its
//! old incarnation was part of. Memory storage is fresh at every start.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StartError;
use crate::storage::LogStore;
use crate::types::{ClusterId, NodeId, NodeInfo, node_id};

/// Meta key of the record.
const KEY: &str = "identity";
/// Version of the record: its layout and how its raft id is derived (1:
/// FNV-1a 64, refused since raft ids are SHA-256-derived, see
/// [`node_id`]; 2: SHA-256).
const FORMAT: u8 = 2;
/// The format whose raft ids were FNV-1a-derived.
const FORMAT_FNV: u8 = 1;
/// Meta key of the binding record.
const BINDING_KEY: &str = "binding";
/// Version of the binding record's layout (1: without `sealed`, read as
/// not sealed).
const BINDING_FORMAT: u8 = 2;
/// Longest stable id accepted (tailnet stable ids are about 20 bytes).
pub(crate) const MAX_STABLE_ID: usize = 256;

/// The stored identity of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// Layout version ([`FORMAT`]).
    pub(crate) format: u8,
    /// The tailnet stable id the state belongs to.
    pub(crate) stable_id: String,
    /// Drawn at random when the storage was fresh; never 0.
    pub(crate) incarnation: u64,
    /// `node_id(stable_id, incarnation)`.
    pub(crate) node_id: NodeId,
    /// The cluster this node formed or decided to join, once it has.
    pub(crate) cluster_id: Option<ClusterId>,
}

/// Who formed (or is forming) the cluster a node bound itself to before
/// that cluster existed (decision 0003's confirm round). Stored before the
/// cluster id it belongs to, and valid only while the identity record
/// carries that cluster id, so a record left by a cluster id that changed
/// (or was never stored) is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    /// Layout version ([`BINDING_FORMAT`]).
    pub(crate) format: u8,
    /// The cluster bound to.
    pub(crate) cluster_id: ClusterId,
    /// The former's raft id when it asked.
    pub(crate) former_id: NodeId,
    /// Where the former is reached (its stable id included).
    pub(crate) former: NodeInfo,
    /// The node answered the former's last round before initializing
    /// (decision 0003, "bound for good"): the former (as `former_id`) may
    /// have initialized the cluster with it, so it never unbinds.
    pub(crate) sealed: bool,
}

/// A binding record of format 1 (before seals).
#[derive(Serialize, Deserialize)]
struct BindingV1 {
    format: u8,
    cluster_id: ClusterId,
    former_id: NodeId,
    former: NodeInfo,
}

impl Binding {
    pub(crate) fn new(
        cluster_id: ClusterId,
        former_id: NodeId,
        former: NodeInfo,
        sealed: bool,
    ) -> Binding {
        Binding { format: BINDING_FORMAT, cluster_id, former_id, former, sealed }
    }
}

/// Writes `binding` durably.
pub(crate) async fn store_binding(log: &LogStore, binding: &Binding) -> Result<(), String> {
    log.put_meta_durably(BINDING_KEY, codec::encode(binding)).await
}

/// The binding record that belongs to `cluster_id`, if one is stored.
pub(crate) async fn load_binding(
    log: &LogStore,
    cluster_id: Option<ClusterId>,
    place: &str,
) -> Result<Option<Binding>, StartError> {
    let Some(bytes) = log.meta_bytes(BINDING_KEY).await.map_err(StartError::storage)? else {
        return Ok(None);
    };
    let bad = |e: codec::DecodeError| {
        StartError::storage_from(format!("{place}: binding record: {e}"), e)
    };
    // The layout version is the first byte (a u8).
    let binding: Binding = if bytes.first() == Some(&1) {
        let old: BindingV1 =
            codec::decode(&bytes, codec::stored_limit(bytes.len()), BINDING_KEY).map_err(bad)?;
        debug_assert_eq!(old.format, 1);
        Binding::new(old.cluster_id, old.former_id, old.former, false)
    } else {
        codec::decode(&bytes, codec::stored_limit(bytes.len()), BINDING_KEY).map_err(bad)?
    };
    if binding.format != BINDING_FORMAT {
        return Err(StartError::storage(format!(
            "{place}: binding record of format {} (this version reads {BINDING_FORMAT})",
            binding.format
        )));
    }
    Ok((Some(binding.cluster_id) == cluster_id).then_some(binding))
}

/// Checks a stable id given to the node: non-empty, bounded, printable.
pub(crate) fn check_stable_id(stable_id: &str) -> Result<(), StartError> {
    if stable_id.is_empty()
        || stable_id.len() > MAX_STABLE_ID
        || stable_id.chars().any(|c| c.is_control())
    {
        return Err(StartError::Config(format!(
            "the stable id must be 1 to {MAX_STABLE_ID} printable bytes, got {:?}",
            stable_id.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

fn random_incarnation() -> Result<u64, StartError> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| StartError::storage(format!("no randomness for an incarnation: {e}")))?;
        let incarnation = u64::from_le_bytes(bytes);
        if incarnation != 0 {
            return Ok(incarnation);
        }
    }
}

/// Writes `identity` durably.
pub(crate) async fn store(log: &LogStore, identity: &Identity) -> Result<(), String> {
    log.put_meta_durably(KEY, codec::encode(identity)).await
}

/// Writes `identity` (with no cluster id) and deletes the binding record,
/// in one durable write: a node that gave its binding up never reads it
/// back, even if it later stores the same cluster id (joining it through
/// a leader).
pub(crate) async fn store_unbound(log: &LogStore, identity: &Identity) -> Result<(), String> {
    log.put_meta_durably_removing(KEY, codec::encode(identity), BINDING_KEY).await
}

/// The identity stored in `log`, if any (its format checked, not whose it
/// is).
pub(crate) async fn load(log: &LogStore) -> Result<Option<Identity>, String> {
    let Some(bytes) = log.meta_bytes(KEY).await? else { return Ok(None) };
    let identity: Identity = codec::decode(&bytes, codec::stored_limit(bytes.len()), KEY)
        .map_err(|e| format!("identity record: {e}"))?;
    check_format(&identity)?;
    Ok(Some(identity))
}

/// Refuses a record this version cannot use, saying why.
fn check_format(identity: &Identity) -> Result<(), String> {
    match identity.format {
        FORMAT => Ok(()),
        FORMAT_FNV => Err(format!(
            "the identity record (raft id {}) was written by an older version, which derived \
             raft ids with FNV-1a; this version derives them with SHA-256 and its peers \
             refuse the old id, so this raft state cannot be used. Upgrade the whole cluster \
             at once: take a backup with the old version, then start every node with an \
             empty state directory (one of them restoring the backup as a new cluster)",
            identity.node_id
        )),
        other => Err(format!("identity record of format {other} (this version reads {FORMAT})")),
    }
}

/// Loads this node's identity from `log`, or makes a new one if the storage
/// is fresh. `place` names the storage in errors; `snapshots` is the
/// snapshot directory of durable storage.
///
/// Refuses storage that belongs to another stable id, and storage written
/// before identities existed (raft state without a record). For fresh
/// storage, any snapshot left in `snapshots` is removed before the new
/// record is written, so that state from an old incarnation never comes
/// back under a new one.
pub(crate) async fn establish(
    log: &LogStore,
    stable_id: &str,
    place: &str,
    snapshots: Option<&Path>,
) -> Result<Identity, StartError> {
    check_stable_id(stable_id)?;
    let stored = log.meta_bytes(KEY).await.map_err(StartError::storage)?;
    if let Some(bytes) = stored {
        let identity: Identity = codec::decode(&bytes, codec::stored_limit(bytes.len()), KEY)
            .map_err(|e| StartError::storage_from(format!("{place}: identity record: {e}"), e))?;
        check_format(&identity).map_err(|why| match identity.format {
            FORMAT_FNV => StartError::Identity(format!("{place}: {why}")),
            _ => StartError::storage(format!("{place}: {why}")),
        })?;
        if identity.stable_id != stable_id {
            return Err(StartError::Identity(format!(
                "{place} holds the raft state of node {:?}, but this node is {stable_id:?}: it was \
                 copied from another node. Give this node its own (or an empty) state directory",
                identity.stable_id
            )));
        }
        if identity.incarnation == 0 || identity.node_id != node_id(stable_id, identity.incarnation)
        {
            return Err(StartError::storage(format!(
                "{place}: identity record is inconsistent (incarnation {:016x}, node id {})",
                identity.incarnation, identity.node_id
            )));
        }
        return Ok(identity);
    }
    if log.has_raft_state().await.map_err(StartError::storage)? {
        return Err(StartError::Identity(format!(
            "{place} holds raft state written before node incarnations existed (decision 0003) \
             and cannot be used: move it away and start the node with an empty state directory; \
             it joins as a new node and the cluster replicates its data back"
        )));
    }
    if let Some(dir) = snapshots {
        remove_leftover_snapshots(dir)
            .map_err(|e| StartError::storage_from(format!("remove {}: {e}", dir.display()), e))?;
    }
    let incarnation = random_incarnation()?;
    let identity = Identity {
        format: FORMAT,
        stable_id: stable_id.to_owned(),
        incarnation,
        node_id: node_id(stable_id, incarnation),
        cluster_id: None,
    };
    store(log, &identity).await.map_err(|e| StartError::storage(format!("{place}: {e}")))?;
    Ok(identity)
}

/// Removes the snapshot directory of fresh storage, durably (its parent is
/// fsynced).
fn remove_leftover_snapshots(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::warn!(dir = %dir.display(), "removed snapshots left without a node identity");
            if let Some(parent) = dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fresh_memory_storage_gets_a_new_incarnation_every_time() {
        let a = establish(&LogStore::in_memory(), "n1", "memory", None).await.unwrap();
        let b = establish(&LogStore::in_memory(), "n1", "memory", None).await.unwrap();
        assert_ne!(a.incarnation, b.incarnation);
        assert_ne!(a.node_id, b.node_id);
        assert_eq!(a.node_id, node_id("n1", a.incarnation));
        assert_eq!(a.cluster_id, None);
    }

    #[tokio::test]
    async fn a_stored_identity_is_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let first = {
            let log = LogStore::durable(&path).unwrap();
            establish(&log, "n1", "dir", None).await.unwrap()
        };
        let log = LogStore::durable(&path).unwrap();
        assert_eq!(establish(&log, "n1", "dir", None).await.unwrap(), first);
        let err = establish(&log, "n2", "dir", None).await.unwrap_err().to_string();
        assert!(err.contains("\"n1\"") && err.contains("\"n2\""), "{err}");
    }

    /// Raft ids were once FNV-1a 64 of the same text (format 1): a node
    /// that finds such a record cannot keep that id (peers derive ids the
    /// new way and refuse it), and must say so rather than start.
    #[tokio::test]
    async fn an_identity_with_an_fnv_raft_id_is_refused_with_advice() {
        let log = LogStore::in_memory();
        let incarnation = 0x1234_5678_9abc_def0;
        let fnv = crate::types::fnv1a64(format!("n1#{incarnation:016x}").as_bytes()).max(1);
        let old = Identity {
            format: 1,
            stable_id: "n1".to_owned(),
            incarnation,
            node_id: fnv,
            cluster_id: Some(ClusterId(7)),
        };
        store(&log, &old).await.unwrap();
        let err = establish(&log, "n1", "dir", None).await.unwrap_err();
        assert!(matches!(err, StartError::Identity(_)), "{err:?}");
        let why = err.to_string();
        assert!(why.contains(&fnv.to_string()) && why.contains("empty state directory"), "{why}");
    }

    #[tokio::test]
    async fn a_binding_counts_only_for_its_cluster_id() {
        let log = LogStore::in_memory();
        let former = NodeInfo { stable_id: "f".to_owned(), ..NodeInfo::default() };
        let binding = Binding::new(ClusterId(7), 42, former, true);
        assert_eq!(load_binding(&log, Some(ClusterId(7)), "memory").await.unwrap(), None);
        store_binding(&log, &binding).await.unwrap();
        assert_eq!(
            load_binding(&log, Some(ClusterId(7)), "memory").await.unwrap(),
            Some(binding.clone())
        );
        assert_eq!(load_binding(&log, Some(ClusterId(8)), "memory").await.unwrap(), None);
        assert_eq!(load_binding(&log, None, "memory").await.unwrap(), None);
    }

    /// A binding written before seals existed reads as not sealed.
    #[tokio::test]
    async fn a_binding_of_format_1_is_not_sealed() {
        let log = LogStore::in_memory();
        let former = NodeInfo { stable_id: "f".to_owned(), ..NodeInfo::default() };
        let old = BindingV1 {
            format: 1,
            cluster_id: ClusterId(7),
            former_id: 42,
            former: former.clone(),
        };
        log.put_meta_durably(BINDING_KEY, codec::encode(&old)).await.unwrap();
        assert_eq!(
            load_binding(&log, Some(ClusterId(7)), "memory").await.unwrap(),
            Some(Binding::new(ClusterId(7), 42, former, false))
        );
    }

    #[tokio::test]
    async fn bad_stable_ids_are_refused() {
        for bad in ["", "a\nb", &"x".repeat(MAX_STABLE_ID + 1)] {
            let err = establish(&LogStore::in_memory(), bad, "memory", None).await.unwrap_err();
            assert!(matches!(err, StartError::Config(_)), "{bad:?}: {err}");
        }
    }
}
