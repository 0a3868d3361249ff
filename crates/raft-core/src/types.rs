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

/// FNV-1a, 64 bits, over `bytes`: pinned (stored in logs and snapshots), so
/// it must never change.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The raft id of incarnation `incarnation` of the node with stable
/// tailnet id `stable_id`: the first 8 bytes (big-endian) of SHA-256 over
/// `"tsconsensus raft id\n<stable_id>#<incarnation as 16 lowercase hex
/// digits>"`. Deterministic across platforms and versions (ids are stored
/// in logs and snapshots); never 0.
///
/// A node chooses its incarnation, so the hash must make it infeasible to
/// choose one that gives another node's raft id (a second preimage of 64
/// bits: about 2^64 hashes). FNV-1a, used before identity format 2, is
/// invertible step by step and gave that up to a meet-in-the-middle search
/// of about 2^32 steps.
pub fn node_id(stable_id: &str, incarnation: u64) -> NodeId {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"tsconsensus raft id\n");
    hash.update(format!("{stable_id}#{incarnation:016x}").as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
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
    #[cfg_attr(
        not(feature = "testing"),
        allow(unreachable_pub, reason = "public only through `crate::testing`")
    )]
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
        // never change by accident. Values computed independently (Python:
        // int(hashlib.sha256(b"tsconsensus raft id\n" + text).hexdigest()[:16], 16)
        // with text "<stable id>#<incarnation as 16 lowercase hex digits>").
        assert_eq!(node_id("TESTCTRL00000001", 1), 0xf007_bbf6_be5c_fd0e);
        assert_eq!(node_id("TESTCTRL00000001", 2), 0x4f6f_b977_1da8_fc99);
        assert_eq!(node_id("TESTCTRL00000002", 0xdead_beef_cafe_f00d), 0xdda2_55f7_8776_962d);
        assert_eq!(node_id("", 0), 0x1fe5_5852_74e2_6869);
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
