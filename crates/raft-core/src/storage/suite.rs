//! openraft's storage conformance suite, run against the in-memory and the
//! durable (redb + snapshot files) stores.

use std::io::{self, Read, Write};

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use super::LogStore;
use super::snapshot::SnapshotStore;
use crate::sessions::SessionLimits;
use crate::state_machine::{StateMachine, StateMachineStore};
use crate::types::{NodeId, TypeConfig};

/// Counts applied commands; enough for the suite, which checks raft state.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn apply(&mut self, _command: &[u8]) -> Vec<u8> {
        self.0 += 1;
        self.0.to_le_bytes().to_vec()
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut bytes = [0u8; 8];
        input.read_exact(&mut bytes)?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

struct Memory;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Counter>, ()> for Memory {
    async fn build(
        &self,
    ) -> Result<((), LogStore, StateMachineStore<Counter>), StorageError<NodeId>> {
        Ok(((), LogStore::in_memory(), StateMachineStore::in_memory(Counter::default())))
    }
}

struct Durable;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Counter>, tempfile::TempDir> for Durable {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<Counter>), StorageError<NodeId>>
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::durable(&dir.path().join("raft.redb"))?;
        let sm = StateMachineStore::open(
            Counter::default(),
            SnapshotStore::dir(dir.path().join("snapshots")),
            SessionLimits::default(),
        )
        .expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn memory_store_passes_the_openraft_suite() {
    Suite::test_all(Memory).expect("openraft storage suite");
}

#[test]
fn durable_store_passes_the_openraft_suite() {
    Suite::test_all(Durable).expect("openraft storage suite");
}
