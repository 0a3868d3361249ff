//! The replicated state: a map from string keys to string values.
//!
//! A [`StateMachine`] is the one thing a user of `consensus` writes. It
//! must be deterministic: every node applies the same commands in the same
//! order and must end in the same state, so `apply` looks at nothing but
//! the command and the state (no clock, no randomness, no I/O).
//!
//! Commands and queries are plain serde types: they travel as JSON between
//! nodes, so keep their shapes compatible across the versions of the
//! program a cluster runs at once.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use consensus::StateMachine;
use serde::{Deserialize, Serialize};

/// A change to the map, applied on every node in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Sets `key` to `value`.
    Put { key: String, value: String },
    /// Sets `key` to `value` if it holds `expected` now (`None`: if it is
    /// absent).
    Cas { key: String, expected: Option<String>, value: String },
    /// Removes `key`.
    Delete { key: String },
}

/// What applying a [`Command`] answers. On the line interface it reads
/// `{"previous": ...}` or `{"mismatch": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    /// The command took effect; the key's value before it (`None`: absent).
    Previous(Option<String>),
    /// A compare-and-set found another value (`None`: absent) and changed
    /// nothing.
    Mismatch(Option<String>),
}

/// A read-only question; it never goes into the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Query {
    /// The value of `key` (`None`: absent).
    Get { key: String },
}

/// The map. A `BTreeMap`, not a `HashMap`, so that its snapshot is the
/// same bytes on every node.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct KvStore {
    map: BTreeMap<String, String>,
}

impl StateMachine for KvStore {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = Option<String>;

    fn apply(&mut self, command: Command) -> Response {
        match command {
            Command::Put { key, value } => Response::Previous(self.map.insert(key, value)),
            Command::Cas { key, expected, value } => {
                let current = self.map.get(&key);
                if current != expected.as_ref() {
                    return Response::Mismatch(current.cloned());
                }
                Response::Previous(self.map.insert(key, value))
            }
            Command::Delete { key } => Response::Previous(self.map.remove(&key)),
        }
    }

    fn query(&self, query: &Query) -> Option<String> {
        match query {
            Query::Get { key } => self.map.get(key).cloned(),
        }
    }

    /// The whole map as JSON: raft writes it when it compacts its log and
    /// sends it to a node too far behind to catch up from the log.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::other)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        *self = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Command {
        Command::Put { key: key.into(), value: value.into() }
    }

    fn cas(key: &str, expected: Option<&str>, value: &str) -> Command {
        Command::Cas { key: key.into(), expected: expected.map(Into::into), value: value.into() }
    }

    fn get(store: &KvStore, key: &str) -> Option<String> {
        store.query(&Query::Get { key: key.into() })
    }

    /// Each command answers the value it found, and only a matching
    /// compare-and-set writes.
    #[test]
    fn commands_answer_what_they_found() {
        let mut store = KvStore::default();
        assert_eq!(store.apply(put("a", "1")), Response::Previous(None));
        assert_eq!(store.apply(put("a", "2")), Response::Previous(Some("1".into())));
        assert_eq!(store.apply(cas("a", Some("1"), "3")), Response::Mismatch(Some("2".into())));
        assert_eq!(get(&store, "a").as_deref(), Some("2"));
        assert_eq!(store.apply(cas("a", Some("2"), "3")), Response::Previous(Some("2".into())));
        assert_eq!(store.apply(cas("b", None, "x")), Response::Previous(None));
        assert_eq!(store.apply(cas("b", None, "y")), Response::Mismatch(Some("x".into())));
        assert_eq!(
            store.apply(Command::Delete { key: "a".into() }),
            Response::Previous(Some("3".into()))
        );
        assert_eq!(store.apply(Command::Delete { key: "a".into() }), Response::Previous(None));
        assert_eq!(store.apply(cas("a", Some("3"), "4")), Response::Mismatch(None));
        assert_eq!(get(&store, "a"), None);
    }

    /// The answers have the JSON shapes the line interface's readers (the
    /// benchmarks, the headscale suite) parse.
    #[test]
    fn answers_have_the_line_interface_shapes() {
        let json = |r: Response| serde_json::to_string(&r).unwrap();
        assert_eq!(json(Response::Previous(Some("a".into()))), r#"{"previous":"a"}"#);
        assert_eq!(json(Response::Previous(None)), r#"{"previous":null}"#);
        assert_eq!(json(Response::Mismatch(Some("b".into()))), r#"{"mismatch":"b"}"#);
        assert_eq!(json(Response::Mismatch(None)), r#"{"mismatch":null}"#);
    }

    /// A restored snapshot is the same state.
    #[test]
    fn snapshot_restores_the_map() {
        let mut store = KvStore::default();
        store.apply(put("a", "1"));
        store.apply(put("b", "2"));
        let mut bytes = Vec::new();
        store.snapshot(&mut bytes).unwrap();
        let mut restored = KvStore::default();
        restored.apply(put("c", "3"));
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.map, store.map);
        assert!(restored.restore(&mut &b"not json"[..]).is_err(), "garbage restored");
    }
}
