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

/// Derives a node id from a stable tailnet identity: FNV-1a over its bytes.
/// Deterministic across platforms and versions; never 0.
pub fn node_id_from_stable_id(stable_id: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stable_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// Identifies a client session for exactly-once commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u128);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One user command with its session and sequence number. A retry carries
/// the same pair and is answered from the session instead of applied again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The session.
    pub client: ClientId,
    /// Position in the session, starting at 1; each new command uses the
    /// next number.
    pub seq: u64,
    /// The command, opaque to raft.
    #[serde(with = "serde_bytes_compat")]
    pub command: Vec<u8>,
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
    /// The session has moved past this sequence number (or forgot it): the
    /// command was applied once, but its answer is no longer kept.
    Stale {
        /// The last sequence number the session applied.
        last_seq: u64,
    },
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
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
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
    fn node_ids_are_pinned() {
        // Node ids are stored in logs and snapshots: the derivation must
        // never change. Values computed independently (FNV-1a 64).
        assert_eq!(node_id_from_stable_id("TESTCTRL00000001"), 0x788b_3599_804a_df37);
        assert_eq!(node_id_from_stable_id("TESTCTRL00000002"), 0x788b_3699_804a_e0ea);
        assert_eq!(node_id_from_stable_id(""), 0xcbf2_9ce4_8422_2325);
    }
}
