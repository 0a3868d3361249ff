//! [`Tally`]: a state machine that keeps a total and the tag of every
//! command it applied, in order, so that a test sees what was applied and
//! how often; one of its commands panics inside `apply`.

use std::io::{self, Read, Write};

use consensus::StateMachine;
use serde::{Deserialize, Serialize};

/// Commands of [`Tally`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TallyCommand {
    /// Adds to the total and records the tag.
    Add {
        /// Recorded in [`Tally::applied`].
        tag: String,
        /// Added to [`Tally::total`].
        n: i64,
    },
    /// Panics inside `apply`.
    Panic,
}

/// A total, and every command tag applied, in order. A query answers both.
#[derive(Default)]
pub struct Tally {
    /// The sum of every `n` added.
    pub total: i64,
    /// The tag of every command applied, in order.
    pub applied: Vec<String>,
}

impl StateMachine for Tally {
    type Command = TallyCommand;
    type Response = i64;
    type Query = ();
    type QueryResponse = (i64, Vec<String>);

    fn apply(&mut self, command: TallyCommand) -> i64 {
        match command {
            TallyCommand::Add { tag, n } => {
                self.total += n;
                self.applied.push(tag);
                self.total
            }
            TallyCommand::Panic => panic!("asked to panic by the test"),
        }
    }
    fn query(&self, _: &()) -> (i64, Vec<String>) {
        (self.total, self.applied.clone())
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, &(self.total, &self.applied)).map_err(io::Error::other)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        (self.total, self.applied) = serde_json::from_reader(input).map_err(io::Error::other)?;
        Ok(())
    }
}

/// The command that adds `n` under `tag`.
pub fn add(tag: &str, n: i64) -> TallyCommand {
    TallyCommand::Add { tag: tag.to_owned(), n }
}
