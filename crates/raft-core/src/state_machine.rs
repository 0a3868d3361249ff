//! The user's state machine, and the adapter that makes it openraft's.
//!
//! The adapter owns everything raft needs around the user's state: the last
//! applied log id, the membership, the snapshots, and the session table that
//! makes commands exactly-once. All of it is replicated state: it changes
//! only by applying log entries, in order, and it travels in snapshots.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Cursor, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::storage::snapshot::{SnapshotStore, StoredSnapshot};
use crate::types::{
    Batch, BatchResponse, ClientId, NodeId, NodeInfo, Outcome, Proposal, TypeConfig,
};

/// A deterministic state machine supplied by the user.
///
/// Every node applies the same commands in the same order, so `apply` must
/// depend only on the current state and the command: no clocks, no
/// randomness, no IO. A panic in `apply` stops the node with a fatal error
/// rather than let replicas diverge.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one command and returns the answer for its caller.
    fn apply(&mut self, command: &[u8]) -> Vec<u8>;

    /// Answers a read-only query from the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// Writes the whole state.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the whole state with one written by [`StateMachine::snapshot`].
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;
}

/// Bounds of the session table.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// A session not used for this many log entries is forgotten.
    pub ttl_entries: u64,
    /// At most this many sessions are kept; beyond it the least recently
    /// used are forgotten.
    pub max_sessions: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits { ttl_entries: 1_000_000, max_sessions: 100_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    response: Vec<u8>,
    /// Log index of the entry that last used the session.
    last_index: u64,
}

/// Per-client last sequence number and answer. Expiry depends only on log
/// positions, so every replica forgets the same sessions at the same point.
#[derive(Clone, Debug, Default)]
struct Sessions {
    by_client: HashMap<ClientId, Session>,
    /// (last_index, client): the eviction order.
    by_age: BTreeSet<(u64, ClientId)>,
}

impl Sessions {
    fn touch(&mut self, client: ClientId, session: Session) {
        if let Some(old) = self.by_client.get(&client) {
            self.by_age.remove(&(old.last_index, client));
        }
        self.by_age.insert((session.last_index, client));
        self.by_client.insert(client, session);
    }

    fn expire(&mut self, index: u64, limits: SessionLimits) {
        let horizon = index.saturating_sub(limits.ttl_entries);
        while let Some(&(last_index, client)) = self.by_age.first() {
            if last_index >= horizon && self.by_client.len() <= limits.max_sessions {
                break;
            }
            self.by_age.pop_first();
            self.by_client.remove(&client);
        }
    }

    fn to_list(&self) -> Vec<(ClientId, Session)> {
        let mut list: Vec<_> = self.by_client.iter().map(|(c, s)| (*c, s.clone())).collect();
        list.sort_by_key(|(client, _)| *client);
        list
    }

    fn from_list(list: Vec<(ClientId, Session)>) -> Sessions {
        let mut sessions = Sessions::default();
        for (client, session) in list {
            sessions.touch(client, session);
        }
        sessions
    }
}

/// What precedes the user's bytes in a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    sessions: Vec<(ClientId, Session)>,
}

/// Snapshot data layout version; the first byte.
const SNAPSHOT_FORMAT: u8 = 1;

struct Replicated<S> {
    user: S,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    sessions: Sessions,
    /// Set when the user's `apply` panicked: the state is suspect and the
    /// node must stop.
    poisoned: Option<String>,
}

pub(crate) struct Shared<S> {
    state: RwLock<Replicated<S>>,
    snapshots: SnapshotStore,
    limits: SessionLimits,
    snapshot_counter: AtomicU64,
}

/// The openraft state machine around a user's [`StateMachine`]. Cloning
/// shares the same state.
pub struct StateMachineStore<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore { shared: self.shared.clone() }
    }
}

fn sm_error(err: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(err.to_string())).into()
}

impl<S: StateMachine> StateMachineStore<S> {
    /// Wraps `user`, restoring it from the stored snapshot if there is one.
    pub(crate) fn open(
        user: S,
        snapshots: SnapshotStore,
        limits: SessionLimits,
    ) -> io::Result<StateMachineStore<S>> {
        let store = StateMachineStore {
            shared: Arc::new(Shared {
                state: RwLock::new(Replicated {
                    user,
                    last_applied: None,
                    membership: StoredMembership::default(),
                    sessions: Sessions::default(),
                    poisoned: None,
                }),
                snapshots,
                limits,
                snapshot_counter: AtomicU64::new(0),
            }),
        };
        if let Some(snapshot) = store.shared.snapshots.load()? {
            store.restore_from(&snapshot.data)?;
        }
        Ok(store)
    }

    /// A state machine kept in memory only.
    pub fn in_memory(user: S) -> StateMachineStore<S> {
        // Memory holds no snapshot yet, so opening cannot fail.
        StateMachineStore::open(user, SnapshotStore::memory(), SessionLimits::default())
            .unwrap_or_else(|err| unreachable!("empty in-memory snapshot store failed: {err}"))
    }

    /// Runs `f` on the user's state machine as it is now on this node.
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.shared.state.read().unwrap_or_else(|p| p.into_inner()).user)
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner()).last_applied.map(|id| id.index)
    }

    fn restore_from(&self, data: &[u8]) -> io::Result<()> {
        let (header, user_bytes): (SnapshotHeader, &[u8]) =
            codec::split_framed(data, SNAPSHOT_FORMAT, "snapshot")
                .map_err(|what| io::Error::new(io::ErrorKind::InvalidData, what))?;
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        state.user.restore(&mut Cursor::new(user_bytes))?;
        state.last_applied = header.last_applied;
        state.membership = header.membership;
        state.sessions = Sessions::from_list(header.sessions);
        Ok(())
    }

    fn apply_proposal(
        state: &mut Replicated<S>,
        proposal: Proposal,
        index: u64,
    ) -> Result<Outcome, String> {
        if let Some(session) = state.sessions.by_client.get(&proposal.client) {
            if proposal.seq == session.last_seq {
                return Ok(Outcome::Duplicate(session.response.clone()));
            }
            if proposal.seq < session.last_seq {
                return Ok(Outcome::Stale { last_seq: session.last_seq });
            }
        }
        let user = &mut state.user;
        let response =
            catch_unwind(AssertUnwindSafe(|| user.apply(&proposal.command))).map_err(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                format!(
                    "state machine panicked applying entry {index} (client {}, seq {}): {what}",
                    proposal.client, proposal.seq
                )
            })?;
        state.sessions.touch(
            proposal.client,
            Session { last_seq: proposal.seq, response: response.clone(), last_index: index },
        );
        Ok(Outcome::Applied(response))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &state.poisoned {
            return Err(sm_error(why));
        }
        let mut data = codec::framed_header(
            SNAPSHOT_FORMAT,
            &SnapshotHeader {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                sessions: state.sessions.to_list(),
            },
        );
        state.user.snapshot(&mut data).map_err(sm_error)?;
        let counter = self.shared.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, counter),
            None => format!("0-0-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        drop(state);
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.shared
            .snapshots
            .save(&stored)
            .map_err(|err| StorageIOError::write_snapshot(Some(meta.signature()), &err))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }

    /// Replaces the state with `stored`, then persists it. Restoring comes
    /// first: a snapshot the state machine cannot take is never persisted,
    /// so the node still starts from what it had. A failed restore may leave
    /// the user's state half replaced, so it stops the node (the state is
    /// poisoned and openraft goes fatal); so does a failed save, since the
    /// state in memory is then ahead of the disk.
    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        stored: &StoredSnapshot,
    ) -> Result<(), StorageError<NodeId>> {
        if let Err(err) = self.restore_from(&stored.data) {
            let why = format!(
                "installing snapshot {} failed: {err}; the state machine may be half restored",
                meta.snapshot_id
            );
            self.poison(&why);
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &io::Error::other(why),
            )
            .into());
        }
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        // A crash before this line restarts from the old snapshot plus the
        // log; after it, from the new one.
        if let Err(err) = self.shared.snapshots.save(stored) {
            let why = format!("persisting installed snapshot {} failed: {err}", meta.snapshot_id);
            self.poison(&why);
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), &err).into());
        }
        Ok(())
    }

    /// Marks the state as unusable: every later apply or build fails, so
    /// openraft stops the node.
    fn poison(&self, why: &str) {
        tracing::error!(%why, "fatal: stopping this node");
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        state.poisoned.get_or_insert_with(|| why.to_owned());
    }

    /// Why the state machine stopped, if it did (a panic in `apply`, a
    /// failed snapshot install).
    pub fn fatal(&self) -> Option<String> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner()).poisoned.clone()
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Serializing a large state is CPU work; keep it off the async workers.
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.build()).await.map_err(sm_error)?
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &state.poisoned {
            return Err(sm_error(why));
        }
        let mut responses = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchResponse::default()
                }
                EntryPayload::Normal(Batch(proposals)) => {
                    let mut outcomes = Vec::with_capacity(proposals.len());
                    for proposal in proposals {
                        match Self::apply_proposal(&mut state, proposal, index) {
                            Ok(outcome) => outcomes.push(outcome),
                            Err(why) => {
                                tracing::error!(%why, "fatal: stopping this node so replicas cannot diverge");
                                state.poisoned = Some(why.clone());
                                return Err(StorageIOError::apply(
                                    entry.log_id,
                                    AnyError::error(why),
                                )
                                .into());
                            }
                        }
                    }
                    BatchResponse(outcomes)
                }
            };
            state.sessions.expire(index, self.shared.limits);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot.into_inner() };
        let store = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || store.install(&meta, &stored))
            .await
            .map_err(sm_error)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self
            .shared
            .snapshots
            .load()
            .map_err(|err| StorageIOError::read_snapshot(None, &err))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry};

    use super::*;

    /// Records commands; answers with the command, or with 1 MiB for a
    /// command starting with `big`. Its restore can be made to fail.
    #[derive(Default)]
    struct Probe {
        applied: Vec<Vec<u8>>,
        refuse_restore: bool,
    }

    impl StateMachine for Probe {
        fn apply(&mut self, command: &[u8]) -> Vec<u8> {
            self.applied.push(command.to_vec());
            if command.starts_with(b"big") { vec![7u8; 1 << 20] } else { command.to_vec() }
        }
        fn query(&self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
            out.write_all(&(self.applied.len() as u64).to_le_bytes())
        }
        fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
            // Change the state before failing, as a real restore might.
            self.applied.clear();
            if self.refuse_restore {
                return Err(io::Error::other("refused by the user's restore"));
            }
            let mut n = [0u8; 8];
            input.read_exact(&mut n)?;
            self.applied = vec![Vec::new(); u64::from_le_bytes(n) as usize];
            Ok(())
        }
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64, proposals: Vec<Proposal>) -> Entry<TypeConfig> {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(Batch(proposals)) }
    }

    fn command(client: u128, seq: u64, command: &[u8]) -> Proposal {
        Proposal { client: ClientId(client), seq, command: command.to_vec() }
    }

    /// A snapshot the user's restore refuses must not be persisted: the node
    /// stops, and starts again from what it had (issue 12, item 4).
    #[tokio::test]
    async fn a_failed_restore_stops_the_node_and_leaves_it_startable() {
        let mut source = StateMachineStore::in_memory(Probe::default());
        source.apply([entry(1, vec![command(1, 1, b"a")])]).await.unwrap();
        let snapshot = source.build_snapshot().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let open = || {
            StateMachineStore::open(
                Probe { refuse_restore: true, ..Probe::default() },
                SnapshotStore::dir(dir.path().to_owned()),
                SessionLimits::default(),
            )
        };
        let mut target = open().unwrap();
        let installed = target.install_snapshot(&snapshot.meta, snapshot.snapshot).await;
        let err = installed.expect_err("a refused restore fails the install");
        assert!(err.to_string().contains("refused by the user's restore"), "{err}");
        let fatal = target.fatal().expect("the state machine is stopped");
        assert!(fatal.contains("half restored"), "{fatal}");
        // It stops: nothing more is applied or built.
        assert!(target.apply([entry(2, vec![command(1, 2, b"b")])]).await.is_err());
        assert!(target.build_snapshot().await.is_err());
        drop(target);
        // And it can start again.
        let reopened = open();
        assert!(
            reopened.is_ok(),
            "node cannot start after a failed restore: {}",
            reopened.err().unwrap()
        );
    }

    fn session(seq: u64, index: u64) -> Session {
        Session { last_seq: seq, response: vec![seq as u8], last_index: index }
    }

    #[test]
    fn sessions_expire_by_log_position_and_count() {
        let limits = SessionLimits { ttl_entries: 10, max_sessions: 2 };
        let mut sessions = Sessions::default();
        sessions.touch(ClientId(1), session(1, 1));
        sessions.touch(ClientId(2), session(1, 5));
        sessions.expire(5, limits);
        assert_eq!(sessions.by_client.len(), 2);
        sessions.touch(ClientId(3), session(1, 6));
        sessions.expire(6, limits);
        // Over the count: the oldest (client 1) goes.
        assert!(!sessions.by_client.contains_key(&ClientId(1)));
        sessions.expire(16, limits);
        // Client 2 was last used at 5 < 16 - 10.
        assert!(!sessions.by_client.contains_key(&ClientId(2)));
        assert!(sessions.by_client.contains_key(&ClientId(3)));
        assert_eq!(sessions.by_age.len(), sessions.by_client.len());
        // Touching moves a session to the young end.
        sessions.touch(ClientId(3), session(2, 20));
        assert_eq!(sessions.by_age.first(), Some(&(20, ClientId(3))));
    }
}
