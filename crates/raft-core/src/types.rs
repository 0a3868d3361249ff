//! The one openraft type configuration, and the data that travels through
//! the log. Everything here is part of the on-disk and wire format.

use std::fmt;
use std::io::Cursor;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A node's raft id: [`node_id`] of its stable tailnet id and its
/// incarnation. A node that loses its raft state gets a new incarnation, so
/// a new id: an id never forgets what it voted for or acknowledged.
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

/// The raft id of incarnation `incarnation` of the node with stable
/// tailnet id `stable_id`: FNV-1a (64 bit) over
/// `"<stable_id>#<incarnation as 16 lowercase hex digits>"`. Deterministic
/// across platforms and versions (ids are stored in logs and snapshots);
/// never 0.
pub fn node_id(stable_id: &str, incarnation: u64) -> NodeId {
    let incarnation = format!("{incarnation:016x}");
    let bytes = stable_id.bytes().chain(std::iter::once(b'#')).chain(incarnation.bytes());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// A cluster's identity: 128 random bits drawn when the cluster forms. A
/// node refuses raft connections from nodes of another cluster, and every
/// raft connection while it has none.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u128);

impl ClusterId {
    /// A new random cluster id (never 0).
    pub fn random() -> Result<ClusterId, String> {
        loop {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes)
                .map_err(|e| format!("no randomness for a cluster id: {e}"))?;
            let id = u128::from_le_bytes(bytes);
            if id != 0 {
                return Ok(ClusterId(id));
            }
        }
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl std::str::FromStr for ClusterId {
    type Err = String;

    /// Exactly 32 hex digits.
    fn from_str(text: &str) -> Result<ClusterId, String> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a cluster id is 32 hex digits, not {:?}",
                text.chars().take(40).collect::<String>()
            ));
        }
        u128::from_str_radix(text, 16).map(ClusterId).map_err(|e| e.to_string())
    }
}

/// As 32 hex digits in human-readable formats (JSON), as a `u128` in
/// binary ones.
impl Serialize for ClusterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ClusterId, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(deserializer).map(ClusterId)
        }
    }
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
        // never change. Values computed independently (FNV-1a 64 over
        // "<stable id>#<incarnation as 16 lowercase hex digits>").
        assert_eq!(node_id("TESTCTRL00000001", 1), 0xec78_9f88_0764_04af);
        assert_eq!(node_id("TESTCTRL00000001", 2), 0xec78_a088_0764_0662);
        assert_eq!(node_id("TESTCTRL00000002", 0xdead_beef_cafe_f00d), 0xf441_67ce_547e_7754);
        assert_eq!(node_id("", 0), 0xab5f_618c_121e_bbb2);
    }

    #[test]
    fn cluster_ids_are_32_hex_digits_in_json_and_a_u128_in_bincode() {
        let id = ClusterId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""0123456789abcdef0011223344556677""#);
        assert_eq!(serde_json::from_str::<ClusterId>(&json).unwrap(), id);
        for bad in [
            r#""0123""#,
            r#""0123456789abcdef001122334455667g""#,
            "17",
            r#""+123456789abcdef0011223344556677""#,
        ] {
            let err = serde_json::from_str::<ClusterId>(bad).unwrap_err();
            assert!(err.to_string().contains("32 hex digits") || err.is_data(), "{bad}: {err}");
        }
        let bytes = crate::codec::encode(&id);
        assert_eq!(crate::codec::decode::<ClusterId>(&bytes, 1 << 16, "id").unwrap(), id);
        assert_ne!(ClusterId::random().unwrap(), ClusterId::random().unwrap());
    }
}
