//! The key-value state machine of the chaos node and of the tests that
//! check replicas against each other: get, put, compare-and-set and delete
//! over string keys and values, like the `kv` example's store
//! (`crates/consensus/examples/kv/store.rs`), with what checking needs on
//! top: every key counts the writes applied to it (its version), and the
//! whole state has a digest, so that replicas can be compared and lost or
//! repeated writes noticed. Its commands and their answers have the
//! example's JSON shapes, so one client speaks to both.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// A command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Sets `key` to `value` if it currently holds `expected`.
    Cas {
        /// The key.
        key: String,
        /// The value it must hold (`None`: absent).
        expected: Option<String>,
        /// Its new value.
        value: String,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

/// What a command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvResponse {
    /// The value before the command.
    Previous(Option<String>),
    /// A compare-and-set did not match; the current value.
    Mismatch(Option<String>),
}

/// A query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvQuery {
    /// The value of `key`.
    Get {
        /// The key.
        key: String,
    },
    /// How many keys there are.
    Len,
    /// How many writes (puts, compare-and-sets that matched, deletes of a
    /// present key) have been applied to `key`; deleting keeps the count.
    Version {
        /// The key.
        key: String,
    },
    /// A digest of the whole state (values and versions), equal on
    /// replicas that applied the same commands.
    Digest,
}

/// The store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KvStore {
    map: BTreeMap<String, String>,
    versions: BTreeMap<String, u64>,
}

impl KvCommand {
    /// A put of `value` at `key`.
    pub fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put { key: key.to_owned(), value: value.to_owned() }
    }
}

/// `key`'s value read linearizably on `kv` (`null` when absent); panics,
/// naming the key and the node, if the read fails.
pub async fn read_key(kv: &consensus::Consensus<KvStore>, key: &str) -> serde_json::Value {
    kv.read(KvQuery::Get { key: key.to_owned() }, consensus::Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("linearizable read of {key} on {}: {e}", kv.id()))
}

impl KvStore {
    fn wrote(&mut self, key: &str) {
        *self.versions.entry(key.to_owned()).or_default() += 1;
    }

    /// FNV-1a over the serialized state: stable across processes and runs.
    fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

impl consensus::StateMachine for KvStore {
    type Command = KvCommand;
    type Response = KvResponse;
    type Query = KvQuery;
    type QueryResponse = serde_json::Value;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Put { key, value } => {
                self.wrote(&key);
                KvResponse::Previous(self.map.insert(key, value))
            }
            KvCommand::Cas { key, expected, value } => {
                let current = self.map.get(&key).cloned();
                if current == expected {
                    self.wrote(&key);
                    KvResponse::Previous(self.map.insert(key, value))
                } else {
                    KvResponse::Mismatch(current)
                }
            }
            KvCommand::Delete { key } => {
                let previous = self.map.remove(&key);
                if previous.is_some() {
                    self.wrote(&key);
                }
                KvResponse::Previous(previous)
            }
        }
    }

    fn query(&self, query: &KvQuery) -> serde_json::Value {
        match query {
            KvQuery::Get { key } => serde_json::json!(self.map.get(key)),
            KvQuery::Len => serde_json::json!(self.map.len()),
            KvQuery::Version { key } => serde_json::json!(self.versions.get(key).unwrap_or(&0)),
            KvQuery::Digest => serde_json::json!(self.digest()),
        }
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::other)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        *self = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}
