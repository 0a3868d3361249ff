#![allow(unreachable_pub, reason = "also included as a module by the tests crate")]

//! The key-value state machine of the `kv` example: get, put,
//! compare-and-set and delete over string keys and values.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// A command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put { key: String, value: String },
    /// Sets `key` to `value` if it currently holds `expected` (`None`:
    /// absent).
    Cas { key: String, expected: Option<String>, value: String },
    /// Removes `key`.
    Delete { key: String },
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
    Get { key: String },
    /// How many keys there are.
    Len,
}

/// The store.
#[derive(Debug, Default)]
pub struct KvStore {
    map: BTreeMap<String, String>,
}

impl consensus::StateMachine for KvStore {
    type Command = KvCommand;
    type Response = KvResponse;
    type Query = KvQuery;
    type QueryResponse = serde_json::Value;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Put { key, value } => KvResponse::Previous(self.map.insert(key, value)),
            KvCommand::Cas { key, expected, value } => {
                let current = self.map.get(&key).cloned();
                if current == expected {
                    KvResponse::Previous(self.map.insert(key, value))
                } else {
                    KvResponse::Mismatch(current)
                }
            }
            KvCommand::Delete { key } => KvResponse::Previous(self.map.remove(&key)),
        }
    }

    fn query(&self, query: &KvQuery) -> serde_json::Value {
        match query {
            KvQuery::Get { key } => serde_json::json!(self.map.get(key)),
            KvQuery::Len => serde_json::json!(self.map.len()),
        }
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &self.map).map_err(io::Error::other)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.map = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}
