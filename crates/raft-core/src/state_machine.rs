//! The user's state machine, and the adapter that makes it openraft's.
//!
//! The adapter owns everything raft needs around the user's state: the last
//! applied log id, the membership, the snapshots, and the session table that
//! makes commands exactly-once. All of it is replicated state: it changes
//! only by applying log entries, in order, and it travels in snapshots.

use std::io::{self, Cursor, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::sessions::{Check, SessionLimits, Sessions, SessionsImage};
use crate::stats::RaftStats;
use crate::storage::floor::SnapshotFloor;
use crate::storage::snapshot::{SnapshotStore, StoredSnapshot};
use crate::types::{Batch, BatchResponse, NodeId, NodeInfo, Outcome, Proposal, TypeConfig};

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

/// What precedes the user's bytes in a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    sessions: SessionsImage,
}

/// Snapshot data layout version; the first byte. Version 2: sessions are
/// registered (with the id counter), keep a command hash and a bounded
/// answer.
const SNAPSHOT_FORMAT: u8 = 2;

struct Replicated<S> {
    user: S,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    sessions: Sessions,
}

pub(crate) struct Shared<S> {
    state: RwLock<Replicated<S>>,
    /// Set when the user's `apply` panicked or a snapshot install failed:
    /// the state is suspect and the node must stop. Outside the state's
    /// lock, so that asking never waits for an apply.
    poisoned: Mutex<Option<String>>,
    snapshots: SnapshotStore,
    limits: SessionLimits,
    snapshot_counter: AtomicU64,
    stats: Arc<RaftStats>,
    /// Snapshots larger than this cannot reach a peer with the same
    /// `network.max_snapshot_bytes`; 0 before the node sets it.
    max_snapshot_bytes: AtomicU64,
}

/// Held by the store openraft's state machine worker owns (and by its
/// clones: snapshot builders, blocking installs). When the last one goes,
/// the worker has stopped, however it stopped (an error, a panic, a
/// shutdown): no snapshot will be saved, so an append waiting for one
/// (`SnapshotFloor::covers`) fails instead of waiting for ever.
struct WorkerLife {
    floor: SnapshotFloor,
}

impl Drop for WorkerLife {
    fn drop(&mut self) {
        self.floor.fail("the state machine worker stopped");
    }
}

/// The openraft state machine around a user's [`StateMachine`]. Cloning
/// shares the same state.
pub(crate) struct StateMachineStore<S> {
    shared: Arc<Shared<S>>,
    /// Set on the store given to openraft (see [`StateMachineStore::worker`]).
    life: Option<Arc<WorkerLife>>,
}

impl<S> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        StateMachineStore { shared: self.shared.clone(), life: self.life.clone() }
    }
}

/// What a caught panic says.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
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
                }),
                poisoned: Mutex::new(None),
                snapshots,
                limits,
                snapshot_counter: AtomicU64::new(0),
                stats: Arc::new(RaftStats::default()),
                max_snapshot_bytes: AtomicU64::new(0),
            }),
            life: None,
        };
        if let Some(snapshot) = store.shared.snapshots.load()? {
            store.restore_from(&snapshot.data)?;
        }
        Ok(store)
    }

    /// The same state, for openraft's state machine worker: when the
    /// worker and every clone of this store are gone, appends waiting for a
    /// snapshot to be saved fail (see [`WorkerLife`]).
    pub(crate) fn worker(&self) -> StateMachineStore<S> {
        let life = WorkerLife { floor: self.shared.snapshots.floor().clone() };
        StateMachineStore { shared: self.shared.clone(), life: Some(Arc::new(life)) }
    }

    /// Records the largest snapshot a peer accepts
    /// (`network.max_snapshot_bytes`): building a larger one is reported.
    pub(crate) fn set_max_snapshot_bytes(&self, bytes: u64) {
        self.shared.max_snapshot_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The node is shutting down: an append waiting for a snapshot to be
    /// saved fails now rather than hold the shutdown for a restore and its
    /// fsync, which have no bound. Safe: that append was never
    /// acknowledged.
    pub(crate) fn release_waiters(&self) {
        self.shared.snapshots.floor().fail("the node is shutting down");
    }

    /// A state machine kept in memory only.
    #[cfg(test)]
    pub(crate) fn in_memory(user: S) -> StateMachineStore<S> {
        // Memory holds no snapshot yet, so opening cannot fail.
        StateMachineStore::open(user, SnapshotStore::memory(), SessionLimits::default())
            .unwrap_or_else(|err| unreachable!("empty in-memory snapshot store failed: {err}"))
    }

    /// Runs `f` on the user's state machine as it is now on this node.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.shared.state.read().unwrap_or_else(|p| p.into_inner()).user)
    }

    /// What this node counts about itself (applies, snapshots, batches).
    pub(crate) fn stats(&self) -> &Arc<RaftStats> {
        &self.shared.stats
    }

    fn restore_from(&self, data: &[u8]) -> io::Result<()> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        match data.first() {
            Some(&format) if format < SNAPSHOT_FORMAT => {
                return Err(invalid(format!(
                    "snapshot data format {format} was written by an older version; this version \
                     reads format {SNAPSHOT_FORMAT} and cannot convert it (its session table has \
                     another shape)"
                )));
            }
            _ => {}
        }
        let (header, user_bytes): (SnapshotHeader, &[u8]) =
            codec::split_framed(data, SNAPSHOT_FORMAT, "snapshot").map_err(invalid)?;
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
        let user = &mut state.user;
        // A panic is a failed restore: the caller stops the node.
        catch_unwind(AssertUnwindSafe(|| user.restore(&mut Cursor::new(user_bytes)))).map_err(
            |panic| {
                io::Error::other(format!(
                    "state machine panicked restoring a snapshot: {}",
                    panic_message(&*panic)
                ))
            },
        )??;
        state.last_applied = header.last_applied;
        state.membership = header.membership;
        state.sessions = Sessions::from_image(header.sessions);
        Ok(())
    }

    fn apply_proposal(
        state: &mut Replicated<S>,
        proposal: Proposal,
        index: u64,
        limits: SessionLimits,
    ) -> Result<Outcome, String> {
        let (client, seq, command) = match proposal {
            Proposal::Register => return Ok(Outcome::Registered(state.sessions.register(index))),
            Proposal::Command { client, seq, command } => (client, seq, command),
        };
        if let Check::Answer(outcome) = state.sessions.check(client, seq, &command) {
            return Ok(outcome);
        }
        // The command's request id is its (client, seq).
        let _span = tracing::debug_span!("apply", index, client = %client, seq).entered();
        let user = &mut state.user;
        let response = catch_unwind(AssertUnwindSafe(|| user.apply(&command))).map_err(|panic| {
            let what = panic_message(&*panic);
            format!(
                "state machine panicked applying entry {index} (client {client}, seq {seq}): {what}"
            )
        })?;
        state.sessions.record(client, seq, &command, &response, index, limits);
        Ok(Outcome::Applied(response))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        if let Some(why) = self.fatal() {
            return Err(sm_error(why));
        }
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        let data = match catch_unwind(AssertUnwindSafe(|| encode_state(&state))) {
            Ok(encoded) => encoded.map_err(sm_error)?,
            Err(panic) => {
                let why = format!(
                    "state machine panicked writing a snapshot: {}",
                    panic_message(&*panic)
                );
                drop(state);
                self.poison(&why);
                return Err(sm_error(why));
            }
        };
        self.warn_if_too_large(data.len());
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
        self.shared.stats.snapshots_built.inc();
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }

    /// Reports a snapshot no peer with this node's
    /// `network.max_snapshot_bytes` would accept: followers that need it
    /// cannot catch up until the limit is raised on every node.
    fn warn_if_too_large(&self, len: usize) {
        let limit = self.shared.max_snapshot_bytes.load(Ordering::Relaxed);
        if limit > 0 && len as u64 > limit {
            tracing::error!(
                snapshot_bytes = len,
                limit,
                "built a snapshot larger than network.max_snapshot_bytes: peers refuse it, and a \
                 follower that needs it cannot catch up; raise the limit on every node"
            );
        }
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
        self.shared.stats.snapshots_installed.inc();
        Ok(())
    }

    /// The whole replicated state now, encoded as snapshot data, with the
    /// log id it reflects and the membership: what a backup carries.
    /// Nothing is saved.
    pub(crate) fn image(&self) -> io::Result<StateImage> {
        if let Some(why) = self.fatal() {
            return Err(io::Error::other(format!("the state machine stopped: {why}")));
        }
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(StateImage {
            last_applied: state.last_applied,
            membership: state.membership.clone(),
            data: encode_state(&state)?,
        })
    }

    /// Marks the state as unusable: every later apply or build fails, so
    /// openraft stops the node.
    fn poison(&self, why: &str) {
        tracing::error!(%why, "fatal: stopping this node");
        self.shared
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| why.to_owned());
        // No snapshot will be saved now: an append waiting for one fails.
        self.shared.snapshots.floor().fail(why);
    }

    /// A blocking task died (a panic that escaped, or a cancelled task):
    /// the state may be half changed, so the node stops.
    fn stopped(&self, why: String) -> StorageError<NodeId> {
        self.poison(&why);
        sm_error(why)
    }

    /// Why the state machine stopped, if it did (a panic in `apply`, a
    /// failed snapshot install).
    pub(crate) fn fatal(&self) -> Option<String> {
        self.shared.poisoned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The replicated state as snapshot data, and what it reflects.
pub(crate) struct StateImage {
    /// The last log id applied.
    pub(crate) last_applied: Option<LogId<NodeId>>,
    /// The membership.
    pub(crate) membership: StoredMembership<NodeId, NodeInfo>,
    /// Snapshot data: header (applied, membership, sessions), then the
    /// user's bytes.
    pub(crate) data: Vec<u8>,
}

fn encode_state<S: StateMachine>(state: &Replicated<S>) -> io::Result<Vec<u8>> {
    let mut data = codec::framed_header(
        SNAPSHOT_FORMAT,
        &SnapshotHeader {
            last_applied: state.last_applied,
            membership: state.membership.clone(),
            sessions: state.sessions.image(),
        },
    );
    state.user.snapshot(&mut data)?;
    Ok(data)
}

/// Checks that `data` is snapshot data this version reads (its header
/// decodes; the user's bytes are the state machine's to judge).
pub(crate) fn check_snapshot_data(data: &[u8]) -> Result<(), String> {
    if let Some(&format) = data.first()
        && format != SNAPSHOT_FORMAT
    {
        return Err(format!(
            "snapshot data format {format}; this version reads format {SNAPSHOT_FORMAT}"
        ));
    }
    let _: (SnapshotHeader, &[u8]) = codec::split_framed(data, SNAPSHOT_FORMAT, "snapshot")?;
    Ok(())
}

/// The same snapshot data, with the user's bytes and the sessions
/// unchanged, as if taken at `last_applied` under `membership` (a restore
/// into a new cluster).
pub(crate) fn rebase_snapshot_data(
    data: &[u8],
    last_applied: LogId<NodeId>,
    membership: StoredMembership<NodeId, NodeInfo>,
) -> Result<Vec<u8>, String> {
    let (header, user): (SnapshotHeader, &[u8]) =
        codec::split_framed(data, SNAPSHOT_FORMAT, "snapshot")?;
    let mut out = codec::framed_header(
        SNAPSHOT_FORMAT,
        &SnapshotHeader { last_applied: Some(last_applied), membership, sessions: header.sessions },
    );
    out.extend_from_slice(user);
    Ok(out)
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Serializing a large state is CPU work; keep it off the async workers.
        let store = self.clone();
        let built = tokio::task::spawn_blocking(move || store.build()).await;
        built.unwrap_or_else(|join| Err(self.stopped(format!("building a snapshot: {join}"))))
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
        if let Some(why) = self.fatal() {
            return Err(sm_error(why));
        }
        let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
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
                        match Self::apply_proposal(&mut state, proposal, index, self.shared.limits)
                        {
                            Ok(outcome) => {
                                if matches!(outcome, Outcome::Applied(_)) {
                                    self.shared.stats.commands_applied.inc();
                                }
                                outcomes.push(outcome)
                            }
                            Err(why) => {
                                self.poison(&why);
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
        let installed = tokio::task::spawn_blocking(move || store.install(&meta, &stored)).await;
        installed.unwrap_or_else(|join| Err(self.stopped(format!("installing a snapshot: {join}"))))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self.shared.snapshots.load().map_err(|err| {
            // openraft's state machine worker stops on this error, and
            // with it any snapshot install queued behind it.
            self.poison(&format!("reading the stored snapshot failed: {err}"));
            StorageIOError::read_snapshot(None, &err)
        })?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry};

    use super::*;
    use crate::types::ClientId;

    /// Records commands; answers with the command, or with 1 MiB for a
    /// command starting with `big`. Its restore can be made to fail.
    #[derive(Default)]
    struct Probe {
        applied: Vec<Vec<u8>>,
        refuse_restore: bool,
        panic_restore: bool,
        panic_snapshot: bool,
        /// A restore waits until this is opened: a stalled install.
        stall_restore: Option<Arc<Gate>>,
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
            assert!(!self.panic_snapshot, "snapshot panicked on purpose");
            out.write_all(&(self.applied.len() as u64).to_le_bytes())
        }
        fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
            // Change the state before failing, as a real restore might.
            self.applied.clear();
            if let Some(stall) = &self.stall_restore {
                stall.wait();
            }
            assert!(!self.panic_restore, "restore panicked on purpose");
            if self.refuse_restore {
                return Err(io::Error::other("refused by the user's restore"));
            }
            let mut n = [0u8; 8];
            input.read_exact(&mut n)?;
            self.applied = vec![Vec::new(); u64::from_le_bytes(n) as usize];
            Ok(())
        }
    }

    /// Closed until opened; waiting on it blocks the thread.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            drop(self.opened.wait_while(open, |open| !*open));
        }

        fn open(&self) {
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.opened.notify_all();
        }
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64, proposals: Vec<Proposal>) -> Entry<TypeConfig> {
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(Batch(proposals)) }
    }

    fn command(client: u128, seq: u64, command: &[u8]) -> Proposal {
        Proposal::Command { client: ClientId(client), seq, command: command.to_vec() }
    }

    /// Applies one entry of `proposals` at `index`; its outcomes.
    async fn apply_at<S: StateMachine>(
        sm: &mut StateMachineStore<S>,
        index: u64,
        proposals: Vec<Proposal>,
    ) -> Vec<Outcome> {
        let mut responses = sm.apply([entry(index, proposals)]).await.expect("applied");
        responses.pop().expect("one response").0
    }

    /// Registers `n` sessions at `index`; their client ids.
    async fn register<S: StateMachine>(
        sm: &mut StateMachineStore<S>,
        index: u64,
        n: usize,
    ) -> Vec<u128> {
        apply_at(sm, index, vec![Proposal::Register; n])
            .await
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Registered(client) => client.0,
                other => panic!("registration answered {other:?}"),
            })
            .collect()
    }

    fn times_applied(sm: &StateMachineStore<Probe>, command: &[u8]) -> usize {
        sm.read(|p| p.applied.iter().filter(|c| c.as_slice() == command).count())
    }

    fn limits(ttl_entries: u64, max_sessions: usize) -> SessionLimits {
        SessionLimits { ttl_entries, max_sessions, ..SessionLimits::default() }
    }

    fn open_with(limits: SessionLimits) -> StateMachineStore<Probe> {
        StateMachineStore::open(Probe::default(), SnapshotStore::memory(), limits).unwrap()
    }

    /// A retry in a session the count cap evicted must not be applied
    /// again (issue 12, item 7).
    #[tokio::test]
    async fn a_retry_in_an_evicted_session_is_not_applied_again() {
        let mut sm = open_with(limits(1000, 2));
        let ids = register(&mut sm, 1, 1).await;
        let first = apply_at(&mut sm, 2, vec![command(ids[0], 1, b"x")]).await;
        assert_eq!(first, vec![Outcome::Applied(b"x".to_vec())]);
        // Two more sessions: over the cap, the least recently used goes.
        register(&mut sm, 3, 2).await;
        let retry = apply_at(&mut sm, 4, vec![command(ids[0], 1, b"x")]).await;
        assert_eq!(retry, vec![Outcome::SessionExpired]);
        assert_eq!(times_applied(&sm, b"x"), 1, "evicted session's retry applied again");
    }

    /// The same for a session unused past its time to live.
    #[tokio::test]
    async fn a_retry_in_an_expired_session_is_not_applied_again() {
        let mut sm = open_with(limits(5, 100));
        let ids = register(&mut sm, 1, 1).await;
        apply_at(&mut sm, 2, vec![command(ids[0], 1, b"x")]).await;
        // Entries go by without the session.
        for index in 3..10 {
            apply_at(&mut sm, index, Vec::new()).await;
        }
        let retry = apply_at(&mut sm, 10, vec![command(ids[0], 1, b"x")]).await;
        assert_eq!(retry, vec![Outcome::SessionExpired]);
        // A new command in it is not applied either.
        let next = apply_at(&mut sm, 11, vec![command(ids[0], 2, b"y")]).await;
        assert_eq!(next, vec![Outcome::SessionExpired]);
        assert_eq!(times_applied(&sm, b"x"), 1);
        assert_eq!(times_applied(&sm, b"y"), 0);
    }

    #[tokio::test]
    async fn a_client_id_never_assigned_is_refused() {
        let mut sm = open_with(SessionLimits::default());
        let ids = register(&mut sm, 1, 2).await;
        assert_eq!(ids, vec![1, 2], "ids are assigned in log order");
        let outcomes =
            apply_at(&mut sm, 2, vec![command(3, 1, b"a"), command(u128::MAX, 1, b"b")]).await;
        assert_eq!(outcomes, vec![Outcome::UnknownSession, Outcome::UnknownSession]);
        assert_eq!(sm.read(|p| p.applied.len()), 0);
    }

    /// The same (client, seq) with another command is refused, not answered
    /// with the first command's answer (issue 12, item 7).
    #[tokio::test]
    async fn a_sequence_number_reused_for_another_command_is_refused() {
        let mut sm = open_with(SessionLimits::default());
        let ids = register(&mut sm, 1, 1).await;
        apply_at(&mut sm, 2, vec![command(ids[0], 1, b"a")]).await;
        let second = apply_at(&mut sm, 3, vec![command(ids[0], 1, b"b")]).await;
        assert_eq!(second, vec![Outcome::SequenceReused { seq: 1 }]);
        let retry = apply_at(&mut sm, 4, vec![command(ids[0], 1, b"a")]).await;
        assert_eq!(retry, vec![Outcome::Duplicate(b"a".to_vec())]);
        assert_eq!(times_applied(&sm, b"b"), 0);
    }

    /// Answers over the per-answer bound are not kept: a snapshot never
    /// outgrows what it can be loaded with. On the old code, 260 answers of
    /// 1 MiB made a snapshot that could not be decoded (issue 12, item 7).
    #[tokio::test]
    async fn a_snapshot_after_large_answers_can_be_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            StateMachineStore::open(
                Probe::default(),
                SnapshotStore::dir(dir.path().to_owned()),
                SessionLimits::default(),
            )
        };
        let mut sm = open().unwrap();
        let ids = register(&mut sm, 1, 260).await;
        for (i, id) in ids.iter().enumerate() {
            let outcome = apply_at(&mut sm, i as u64 + 2, vec![command(*id, 1, b"big")]).await;
            assert!(matches!(&outcome[..], [Outcome::Applied(a)] if a.len() == 1 << 20));
        }
        let retry = apply_at(&mut sm, 300, vec![command(ids[259], 1, b"big")]).await;
        // Applied, answer not kept (printed without the megabyte).
        let shape: Vec<_> = retry
            .iter()
            .map(|o| match o {
                Outcome::Duplicate(a) => format!("Duplicate({} bytes)", a.len()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(shape, ["DuplicateAnswerNotKept"]);
        sm.build_snapshot().await.unwrap();
        drop(sm);
        let reopened = open();
        assert!(reopened.is_ok(), "{}", reopened.err().unwrap());
        assert_eq!(reopened.unwrap().read(|p| p.applied.len()), 260);
    }

    /// A session table filled to the default bounds (every session, every
    /// kept answer byte) still makes a snapshot that loads.
    #[tokio::test]
    async fn a_table_full_to_the_default_bounds_round_trips_through_a_snapshot() {
        let defaults = SessionLimits::default();
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            StateMachineStore::open(
                Probe::default(),
                SnapshotStore::dir(dir.path().to_owned()),
                defaults,
            )
        };
        let mut sm = open().unwrap();
        let mut index = 1;
        let mut ids = Vec::new();
        while ids.len() < defaults.max_sessions {
            ids.extend(register(&mut sm, index, 5000).await);
            index += 1;
        }
        // The largest answers kept, until the answer bytes are at their bound.
        let answer = vec![b'a'; defaults.max_answer_bytes];
        let fill = defaults.max_answer_total_bytes / defaults.max_answer_bytes;
        let mut seqs = vec![0u64; ids.len()];
        for chunk in ids[ids.len() - fill..].chunks(256) {
            let proposals = chunk
                .iter()
                .map(|id| {
                    seqs[*id as usize - 1] = u64::MAX - 1;
                    command(*id, u64::MAX - 1, &answer)
                })
                .collect();
            apply_at(&mut sm, index, proposals).await;
            index += 1;
        }
        let kept = sm.shared.state.read().unwrap().sessions.clone();
        assert_eq!(kept.len(), defaults.max_sessions, "every session is live");
        assert_eq!(kept.answer_bytes(), defaults.max_answer_total_bytes, "answers at their bound");

        let snapshot = sm.build_snapshot().await.unwrap();
        let data = snapshot.snapshot.into_inner();
        let header_len = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
        assert!(
            header_len <= defaults.worst_case_header_bytes(),
            "a {header_len}-byte header exceeds the {} bytes its bounds allow",
            defaults.worst_case_header_bytes()
        );
        drop(sm);
        let reopened = open().expect("a full table loads");
        let restored = reopened.shared.state.read().unwrap().sessions.clone();
        assert_eq!(restored.image(), kept.image());
        // And it still answers from the sessions.
        let mut reopened = reopened;
        let last = *ids.last().unwrap();
        let retry =
            apply_at(&mut reopened, index, vec![command(last, u64::MAX - 1, &answer)]).await;
        assert_eq!(retry, vec![Outcome::Duplicate(answer.clone())]);
    }

    /// Many sessions with nothing kept: the header decodes to several times
    /// its encoded size, and must load all the same.
    #[tokio::test]
    async fn a_table_full_of_fresh_sessions_round_trips_through_a_snapshot() {
        let defaults = SessionLimits::default();
        let mut sm = open_with(defaults);
        let mut index = 1;
        while index as usize * 5000 <= defaults.max_sessions {
            register(&mut sm, index, 5000).await;
            index += 1;
        }
        let snapshot = sm.build_snapshot().await.unwrap();
        let mut copy = open_with(defaults);
        copy.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("installs");
        let image =
            |sm: &StateMachineStore<Probe>| sm.shared.state.read().unwrap().sessions.image();
        assert_eq!(image(&copy), image(&sm));
    }

    #[tokio::test]
    async fn a_snapshot_in_the_old_format_is_refused_with_a_clear_error() {
        let mut source = StateMachineStore::in_memory(Probe::default());
        apply_at(&mut source, 1, vec![Proposal::Register]).await;
        let snapshot = source.build_snapshot().await.unwrap();
        let mut data = snapshot.snapshot.into_inner();
        data[0] = 1;
        let mut target = StateMachineStore::in_memory(Probe::default());
        let err = target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(data))).await;
        let err = err.expect_err("format 1 is refused").to_string();
        assert!(err.contains("format 1 was written by an older version"), "{err}");
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

    /// A snapshot of one entry, and a store to install it in, made from
    /// `target`, with a task waiting (as an append does) for it to be saved.
    async fn install_target(
        target: Probe,
    ) -> (Snapshot<TypeConfig>, StateMachineStore<Probe>, tokio::task::JoinHandle<Result<(), String>>)
    {
        let mut source = StateMachineStore::in_memory(Probe::default());
        source.apply([entry(1, vec![command(1, 1, b"a")])]).await.unwrap();
        let snapshot = source.build_snapshot().await.unwrap();
        let target = StateMachineStore::open(target, SnapshotStore::memory(), limits(100, 100))
            .unwrap()
            .worker();
        let floor = target.shared.snapshots.floor().clone();
        let waiting = tokio::spawn(async move { floor.covers(log_id(1)).await });
        (snapshot, target, waiting)
    }

    /// How long a released waiter may take to see it.
    const RELEASED: std::time::Duration = std::time::Duration::from_secs(10);

    /// A panic in the user's restore stops the node, and an append waiting
    /// for the snapshot fails. It was a JoinError without poisoning: the
    /// append waited for ever, and with it raft's core and the node's
    /// shutdown (hostile review of issue 12, finding 1).
    #[tokio::test]
    async fn a_panicking_restore_stops_the_node_and_fails_a_waiting_append() {
        let target = Probe { panic_restore: true, ..Probe::default() };
        let (snapshot, mut target, waiting) = install_target(target).await;
        let installed = target.install_snapshot(&snapshot.meta, snapshot.snapshot).await;
        let err = installed.expect_err("a panicking restore fails the install").to_string();
        assert!(err.contains("panicked restoring"), "{err}");
        let fatal = target.fatal().expect("the state machine is stopped");
        assert!(fatal.contains("restore panicked on purpose"), "{fatal}");
        let waited = tokio::time::timeout(RELEASED, waiting).await;
        let waited = waited.expect("the waiting append is released").unwrap();
        assert!(waited.is_err_and(|why| why.contains("panicked")));
    }

    /// A panic in the user's snapshot stops the node as well.
    #[tokio::test]
    async fn a_panicking_snapshot_stops_the_node() {
        let mut sm = open_with(limits(100, 100));
        sm.shared.state.write().unwrap().user.panic_snapshot = true;
        let built = sm.build_snapshot().await;
        let err = built.expect_err("a panicking snapshot fails the build").to_string();
        assert!(err.contains("panicked writing a snapshot"), "{err}");
        assert!(sm.fatal().is_some_and(|why| why.contains("snapshot panicked on purpose")));
    }

    /// However openraft's state machine worker ends, an append waiting for
    /// a snapshot it will never save fails once the worker's store (and
    /// every clone of it) is gone.
    #[tokio::test]
    async fn the_worker_store_gone_fails_a_waiting_append() {
        let (_snapshot, target, waiting) = install_target(Probe::default()).await;
        let builder = target.clone();
        drop(target);
        drop(builder);
        let waited = tokio::time::timeout(RELEASED, waiting).await;
        let waited = waited.expect("the waiting append is released").unwrap();
        assert!(waited.is_err_and(|why| why.contains("worker stopped")));
    }

    /// A shutdown does not wait for a stalled restore: the waiting append
    /// fails at once, while the restore still runs (hostile review of
    /// issue 12, finding 2).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_fails_an_append_waiting_for_a_stalled_install() {
        let stall = Arc::new(Gate::default());
        let target = Probe { stall_restore: Some(stall.clone()), ..Probe::default() };
        let (snapshot, target, waiting) = install_target(target).await;
        let mut installer = target.clone();
        let install = tokio::spawn(async move {
            installer.install_snapshot(&snapshot.meta, snapshot.snapshot).await
        });
        target.release_waiters();
        let waited = tokio::time::timeout(RELEASED, waiting).await;
        let waited = waited.expect("the waiting append is released").unwrap();
        assert!(waited.is_err_and(|why| why.contains("shutting down")));
        assert!(!install.is_finished(), "the restore was still stalled");
        stall.open();
        install.await.unwrap().expect("the stalled install completes");
    }
}
