//! The one openraft type configuration, and the data that travels through
//! the log. Everything here is part of the on-disk and wire format.

use std::fmt;
use std::io::Cursor;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A node's raft identity: a stable u64 derived from its tailnet identity
/// with [`node_id_from_stable_id`].
pub type NodeId = u64;

/// Where to reach a member; stored in the replicated membership, so each
/// node carries its own ports and nodes need not share port numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// The node's stable tailnet identity (for humans and for checks).
    pub stable_id: String,
    /// The node's addresses, preferred first. IPv6-only nodes have only
    /// IPv6 addresses here.
    pub addrs: Vec<IpAddr>,
    /// The port its raft RPC server listens on.
    pub raft_port: u16,
    /// The port its command API listens on.
    pub command_port: u16,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addrs.first() {
            Some(addr) => write!(
                f,
                "{} at {addr} (raft {}, command {})",
                self.stable_id, self.raft_port, self.command_port
            ),
            None => write!(f, "{} (no address)", self.stable_id),
        }
    }
}

/// FNV-1a, 64 bits, over `bytes`: pinned (stored in logs and snapshots), so
/// it must never change.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Derives a node id from a stable tailnet identity: FNV-1a over its bytes.
/// Deterministic across platforms and versions; never 0.
pub fn node_id_from_stable_id(stable_id: &str) -> NodeId {
    fnv1a64(stable_id.as_bytes()).max(1)
}

/// The fingerprint a session keeps of the command it applied last, so that
/// a retry carrying the same sequence number but another command is told
/// apart from a true retry: FNV-1a 64 over the command's bytes. Part of the
/// snapshot format; never changes. (It guards against mistakes, not against
/// an adversary: a caller that can execute commands can do worse.)
pub fn command_hash(command: &[u8]) -> u64 {
    fnv1a64(command)
}

/// Identifies a client session for exactly-once commands. Ids are assigned
/// by the cluster when a session is registered (1, 2, 3, … in log order), so
/// every replica agrees on them and none is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u128);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One entry of a [`Batch`]: a user command in a session, or the
/// registration of a new session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A user command. A retry carries the same session, sequence number
    /// and command, and is answered from the session instead of applied
    /// again.
    Command {
        /// The session, as registered.
        client: ClientId,
        /// Position in the session, from 1; each new command uses a higher
        /// number than the last (gaps are allowed).
        seq: u64,
        /// The command, opaque to raft.
        #[serde(with = "serde_bytes_compat")]
        command: Vec<u8>,
    },
    /// Opens a session: applying it assigns the next client id.
    Register,
}

impl Proposal {
    /// Bytes of user data it carries (for batching limits).
    pub fn size(&self) -> usize {
        match self {
            Proposal::Command { command, .. } => command.len(),
            Proposal::Register => 0,
        }
    }
}

/// What a log entry carries: proposals coalesced by the batcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

/// What applying one proposal gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied now; the state machine's answer.
    Applied(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Already applied earlier; the answer it gave then.
    Duplicate(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// Already applied earlier, but its answer was larger than a session
    /// keeps, so it cannot be given again. Not applied again.
    DuplicateAnswerNotKept,
    /// The session has moved past this sequence number: not applied now.
    /// (Whether an earlier attempt was applied, the session no longer says.)
    Stale {
        /// The last sequence number the session applied.
        last_seq: u64,
    },
    /// The session was registered but has expired or been evicted since:
    /// not applied. Nothing in this session can be applied any more; a new
    /// command may use a new session.
    SessionExpired,
    /// No session with this client id was ever registered: not applied.
    UnknownSession,
    /// This sequence number was already used in the session for another
    /// command: not applied.
    SequenceReused {
        /// The sequence number.
        seq: u64,
    },
    /// A session was registered; its client id.
    Registered(ClientId),
}

/// The answers for one entry, in proposal order (empty for blank and
/// membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse(pub Vec<Outcome>);

openraft::declare_raft_types!(
    /// The openraft type configuration of this crate.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Serializes `Vec<u8>` as bytes (one length and a copy) rather than a
/// sequence of integers, in formats that distinguish them.
pub(crate) mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_hashes_are_pinned() {
        // Stored in snapshots: FNV-1a 64, published test vectors.
        assert_eq!(command_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(command_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(command_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Entries are stored in the log and sent to followers: their encoding
    /// must only change on purpose (with the log format and the raft
    /// protocol version).
    #[test]
    fn proposal_encoding_is_pinned() {
        let batch = Batch(vec![
            Proposal::Command { client: ClientId(5), seq: 7, command: b"hi".to_vec() },
            Proposal::Register,
        ]);
        let bytes = crate::codec::encode(&batch);
        assert_eq!(bytes, [2, 0, 5, 7, 2, b'h', b'i', 1], "{bytes:?}");
        let decoded: Batch = crate::codec::decode(&bytes, 1 << 16, "batch").unwrap();
        assert_eq!(decoded, batch);
    }

    #[test]
    fn node_ids_are_pinned() {
        // Node ids are stored in logs and snapshots: the derivation must
        // never change. Values computed independently (FNV-1a 64).
        assert_eq!(node_id_from_stable_id("TESTCTRL00000001"), 0x788b_3599_804a_df37);
        assert_eq!(node_id_from_stable_id("TESTCTRL00000002"), 0x788b_3699_804a_e0ea);
        assert_eq!(node_id_from_stable_id(""), 0xcbf2_9ce4_8422_2325);
    }
}
