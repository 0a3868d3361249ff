//! The user's state machine in typed form, and the adapter that turns it
//! into raft-core's byte-level one. Commands, answers and queries travel as
//! JSON, so a node can forward them without knowing their types.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A deterministic state machine replicated on every member.
///
/// `apply` must depend only on the state and the command: no clocks, no
/// randomness, no IO. A panic in `apply` stops the node (a fatal error) so
/// that replicas cannot diverge.
pub trait StateMachine: Send + Sync + 'static {
    /// A command that changes the state.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command answers.
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// A read-only question.
    type Query: Serialize + DeserializeOwned + Send + 'static;
    /// Its answer.
    type QueryResponse: Serialize + DeserializeOwned + Send + 'static;

    /// Applies one command.
    fn apply(&mut self, command: Self::Command) -> Self::Response;
    /// Answers a query from the current state.
    fn query(&self, query: &Self::Query) -> Self::QueryResponse;
    /// Writes the whole state.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()>;
    /// Replaces the state with one written by `snapshot`.
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;
}

/// The Go package's command shape: a name for dispatch and JSON arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicCommand {
    /// What to do.
    pub name: String,
    /// Its arguments.
    pub args: serde_json::Value,
}

/// The Go package's result shape: the state machine's error as a string, or
/// a JSON result. Unlike the Go package, the error survives forwarding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicResult {
    /// The state machine's error, if the command failed.
    pub error: Option<String>,
    /// The result.
    pub result: serde_json::Value,
}

/// What the adapter stores as an answer: the response, or why the command
/// could not even be decoded (a node with another version of the types).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer<R> {
    Ok(R),
    Undecodable(String),
}

/// raft-core's state machine over a typed one.
pub(crate) struct Adapter<S>(pub(crate) S);

impl<S: StateMachine> raft_core::StateMachine for Adapter<S> {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let answer = match serde_json::from_slice::<S::Command>(command) {
            Ok(command) => Answer::Ok(self.0.apply(command)),
            Err(err) => Answer::Undecodable(format!("command does not decode: {err}")),
        };
        serde_json::to_vec(&answer).unwrap_or_else(|err| {
            serde_json::to_vec(&Answer::<()>::Undecodable(format!("answer does not encode: {err}")))
                .unwrap_or_default()
        })
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let answer = match serde_json::from_slice::<S::Query>(query) {
            Ok(query) => Answer::Ok(self.0.query(&query)),
            Err(err) => Answer::Undecodable(format!("query does not decode: {err}")),
        };
        serde_json::to_vec(&answer).unwrap_or_default()
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        self.0.snapshot(out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0.restore(input)
    }
}

/// Decodes a state machine answer.
pub(crate) fn decode_answer<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    match serde_json::from_str::<Answer<T>>(json) {
        Ok(Answer::Ok(value)) => Ok(value),
        Ok(Answer::Undecodable(why)) => Err(Error::rejected(why)),
        Err(e) => Err(Error::rejected_from(format!("answer does not decode: {e}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Before: `Rejected(String)`, the JSON error flattened to text. An
    /// answer this node cannot decode keeps it as the source; a command
    /// the state machine refused says why in its answer, as text only.
    #[test]
    fn an_answer_that_does_not_decode_keeps_the_json_error() {
        let err = decode_answer::<u64>("{\"ok\": \"not a number\"}").unwrap_err();
        assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
        let json = err.source().and_then(|s| s.downcast_ref::<serde_json::Error>());
        assert!(json.is_some(), "no serde_json::Error underneath {err:?}");
        assert!(
            err.to_string().starts_with("rejected by the state machine: answer does not decode: ")
        );

        let refused = serde_json::to_string(&Answer::<u64>::Undecodable("bad".to_owned())).unwrap();
        let err = decode_answer::<u64>(&refused).unwrap_err();
        assert!(matches!(err, Error::Rejected { .. }) && err.source().is_none(), "{err:?}");
        assert_eq!(err.to_string(), "rejected by the state machine: bad");
    }
}
