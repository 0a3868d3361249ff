//! The smallest useful state machine.

use std::io::{self, Read, Write};

use consensus::StateMachine;

/// A sum: every command adds to it and answers the new total; the query
/// reads it.
#[derive(Debug, Default)]
pub struct Counter(pub i64);

impl StateMachine for Counter {
    type Command = i64;
    type Response = i64;
    type Query = ();
    type QueryResponse = i64;

    fn apply(&mut self, n: i64) -> i64 {
        self.0 += n;
        self.0
    }
    fn query(&self, _: &()) -> i64 {
        self.0
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut bytes = [0u8; 8];
        input.read_exact(&mut bytes)?;
        self.0 = i64::from_le_bytes(bytes);
        Ok(())
    }
}
