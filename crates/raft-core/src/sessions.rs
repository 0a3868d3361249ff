//! The session table that makes commands exactly-once.
//!
//! A client registers a session through the log: applying the registration
//! assigns the next client id from a counter in the replicated state, so
//! every replica assigns the same id and no id is ever handed out twice.
//! Each session remembers the last sequence number it applied, a hash of
//! that command and (if small enough) its answer. Then:
//!
//! - a retry (same sequence number, same command) is answered from the
//!   session and not applied again;
//! - the same sequence number with another command is refused;
//! - an older sequence number is stale: not applied;
//! - a client id that was assigned but is no longer in the table (expired
//!   by age, evicted by the count or answer-bytes bounds) gets "session
//!   expired", never a second application;
//! - a client id never assigned is refused.
//!
//! Expiry depends only on log positions, so every replica forgets the same
//! sessions at the same entry. The table travels in snapshots, and its
//! bounds keep a snapshot's header well inside what the codec decodes.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{ClientId, Outcome, command_hash, serde_bytes_compat};

/// Bounds of the session table.
///
/// These bounds decide which sessions exist, and so whether a command is
/// applied: every member of a cluster must use the same values (like the
/// same state machine). The defaults fit a snapshot header in the codec's
/// limit with room to spare ([`SessionLimits::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// A session not used for this many log entries is forgotten.
    pub ttl_entries: u64,
    /// At most this many sessions are kept; beyond it the least recently
    /// used are forgotten.
    pub max_sessions: usize,
    /// An answer larger than this is not kept for retries: a retry of its
    /// command learns it was applied, not what it answered.
    pub max_answer_bytes: usize,
    /// The answers kept by all sessions together stay within this many
    /// bytes; beyond it the least recently used sessions are forgotten.
    pub max_answer_total_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            ttl_entries: 1_000_000,
            max_sessions: 100_000,
            max_answer_bytes: 64 << 10,
            max_answer_total_bytes: 64 << 20,
        }
    }
}

/// What one session can cost in a snapshot header beyond its answer, in
/// encoded bytes and in the bytes the decoder claims (the larger): client
/// id, sequence number, hash and log index as integers, the answer's
/// presence and length.
const SESSION_OVERHEAD: usize = 64;
/// Room for the rest of the header: the membership and the last log id.
const HEADER_SLACK: usize = 4 << 20;

impl SessionLimits {
    /// Checks that the bounds make sense and that a table filled to them
    /// still fits a snapshot header within half of the codec's limit.
    pub fn check(&self) -> Result<(), String> {
        if self.max_sessions == 0 || self.ttl_entries == 0 {
            return Err("sessions: max_sessions and ttl_entries must be positive".to_owned());
        }
        if self.max_answer_bytes > self.max_answer_total_bytes {
            return Err(format!(
                "sessions: max_answer_bytes ({}) exceeds max_answer_total_bytes ({})",
                self.max_answer_bytes, self.max_answer_total_bytes
            ));
        }
        let worst = self.worst_case_header_bytes();
        if worst > codec::MAX_STORED_VALUE / 2 {
            return Err(format!(
                "sessions: a full table could need a {worst}-byte snapshot header, over half the \
                 {}-byte limit; lower max_sessions or max_answer_total_bytes",
                codec::MAX_STORED_VALUE
            ));
        }
        Ok(())
    }

    /// The most a snapshot header can take with a table full to these
    /// bounds, encoded or decoded.
    pub(crate) fn worst_case_header_bytes(&self) -> usize {
        self.max_sessions
            .saturating_mul(SESSION_OVERHEAD)
            .saturating_add(self.max_answer_total_bytes)
            .saturating_add(HEADER_SLACK)
    }
}

/// A kept answer, encoded as bytes (one length and a copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Answer(#[serde(with = "serde_bytes_compat")] Vec<u8>);

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The last sequence number applied (0: none yet).
    last_seq: u64,
    /// [`command_hash`] of the command applied at `last_seq`.
    command_hash: u64,
    /// Its answer, unless it was larger than the per-answer bound.
    answer: Option<Answer>,
    /// Log index of the entry that last used the session.
    last_index: u64,
}

impl Session {
    fn answer_len(&self) -> usize {
        self.answer.as_ref().map_or(0, |a| a.0.len())
    }
}

/// The table as a snapshot carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionsImage {
    /// Client ids `1..=assigned` have been handed out.
    assigned: u64,
    /// The live sessions, by client id.
    sessions: Vec<(ClientId, Session)>,
}

/// What a command is, to the table, before it is applied.
pub(crate) enum Check {
    /// Apply it (then call [`Sessions::record`]).
    Apply,
    /// Do not apply it; answer this.
    Answer(Outcome),
}

/// The live session table.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sessions {
    by_client: HashMap<ClientId, Session>,
    /// (last_index, client): the eviction order, oldest first.
    by_age: BTreeSet<(u64, ClientId)>,
    /// Bytes of all kept answers.
    answer_bytes: usize,
    /// Client ids `1..=assigned` have been handed out.
    assigned: u64,
}

impl Sessions {
    /// Registers a new session at log `index`; its client id.
    pub(crate) fn register(&mut self, index: u64) -> ClientId {
        self.assigned += 1;
        let client = ClientId(u128::from(self.assigned));
        self.put(client, Session { last_seq: 0, command_hash: 0, answer: None, last_index: index });
        client
    }

    /// Whether `(client, seq)` with `command` is to be applied, and what to
    /// answer if not.
    pub(crate) fn check(&self, client: ClientId, seq: u64, command: &[u8]) -> Check {
        let Some(session) = self.by_client.get(&client) else {
            let assigned = client.0 >= 1 && client.0 <= u128::from(self.assigned);
            return Check::Answer(if assigned {
                Outcome::SessionExpired
            } else {
                Outcome::UnknownSession
            });
        };
        if seq == 0 || seq < session.last_seq {
            return Check::Answer(Outcome::Stale { last_seq: session.last_seq });
        }
        if seq == session.last_seq {
            if session.command_hash != command_hash(command) {
                return Check::Answer(Outcome::SequenceReused { seq });
            }
            return Check::Answer(match &session.answer {
                Some(answer) => Outcome::Duplicate(answer.0.clone()),
                None => Outcome::DuplicateAnswerNotKept,
            });
        }
        Check::Apply
    }

    /// Records that `(client, seq)` with `command` was applied at `index`
    /// and answered `answer`.
    pub(crate) fn record(
        &mut self,
        client: ClientId,
        seq: u64,
        command: &[u8],
        answer: &[u8],
        index: u64,
        limits: SessionLimits,
    ) {
        let answer = (answer.len() <= limits.max_answer_bytes).then(|| Answer(answer.to_vec()));
        self.put(
            client,
            Session {
                last_seq: seq,
                command_hash: command_hash(command),
                answer,
                last_index: index,
            },
        );
    }

    fn put(&mut self, client: ClientId, session: Session) {
        if let Some(old) = self.by_client.get(&client) {
            self.by_age.remove(&(old.last_index, client));
            self.answer_bytes -= old.answer_len();
        }
        self.by_age.insert((session.last_index, client));
        self.answer_bytes += session.answer_len();
        self.by_client.insert(client, session);
    }

    /// Forgets sessions unused for `ttl_entries` before `index`, then the
    /// least recently used until the count and answer bytes are within
    /// bounds.
    pub(crate) fn expire(&mut self, index: u64, limits: SessionLimits) {
        let horizon = index.saturating_sub(limits.ttl_entries);
        while let Some(&(last_index, client)) = self.by_age.first() {
            if last_index >= horizon
                && self.by_client.len() <= limits.max_sessions
                && self.answer_bytes <= limits.max_answer_total_bytes
            {
                break;
            }
            self.by_age.pop_first();
            if let Some(old) = self.by_client.remove(&client) {
                self.answer_bytes -= old.answer_len();
            }
        }
    }

    pub(crate) fn image(&self) -> SessionsImage {
        let mut sessions: Vec<_> = self.by_client.iter().map(|(c, s)| (*c, s.clone())).collect();
        sessions.sort_by_key(|(client, _)| *client);
        SessionsImage { assigned: self.assigned, sessions }
    }

    pub(crate) fn from_image(image: SessionsImage) -> Sessions {
        let mut sessions = Sessions { assigned: image.assigned, ..Sessions::default() };
        for (client, session) in image.sessions {
            sessions.put(client, session);
        }
        sessions
    }

    /// Live sessions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Bytes of all kept answers.
    #[cfg(test)]
    pub(crate) fn answer_bytes(&self) -> usize {
        self.answer_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits = SessionLimits {
        ttl_entries: 10,
        max_sessions: 2,
        max_answer_bytes: 4,
        max_answer_total_bytes: 6,
    };

    fn applied(sessions: &mut Sessions, client: ClientId, seq: u64, command: &[u8], index: u64) {
        assert!(matches!(sessions.check(client, seq, command), Check::Apply));
        sessions.record(client, seq, command, command, index, LIMITS);
        sessions.expire(index, LIMITS);
    }

    fn answer(sessions: &Sessions, client: ClientId, seq: u64, command: &[u8]) -> Outcome {
        match sessions.check(client, seq, command) {
            Check::Answer(outcome) => outcome,
            Check::Apply => panic!("({client}, {seq}) would be applied"),
        }
    }

    #[test]
    fn ids_are_assigned_in_order_and_unknown_ones_are_refused() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.register(1), ClientId(1));
        assert_eq!(sessions.register(1), ClientId(2));
        assert_eq!(answer(&sessions, ClientId(3), 1, b"x"), Outcome::UnknownSession);
        assert_eq!(answer(&sessions, ClientId(0), 1, b"x"), Outcome::UnknownSession);
        assert_eq!(answer(&sessions, ClientId(u128::MAX), 1, b"x"), Outcome::UnknownSession);
        assert!(matches!(sessions.check(ClientId(2), 1, b"x"), Check::Apply));
        assert_eq!(answer(&sessions, ClientId(2), 0, b"x"), Outcome::Stale { last_seq: 0 });
    }

    #[test]
    fn retries_are_answered_and_reused_sequence_numbers_refused() {
        let mut sessions = Sessions::default();
        let client = sessions.register(1);
        applied(&mut sessions, client, 1, b"put", 2);
        assert_eq!(answer(&sessions, client, 1, b"put"), Outcome::Duplicate(b"put".to_vec()));
        assert_eq!(answer(&sessions, client, 1, b"del"), Outcome::SequenceReused { seq: 1 });
        // Gaps are allowed; older numbers are stale.
        applied(&mut sessions, client, 5, b"get", 3);
        assert_eq!(answer(&sessions, client, 1, b"put"), Outcome::Stale { last_seq: 5 });
    }

    #[test]
    fn expired_and_evicted_sessions_say_so() {
        let mut sessions = Sessions::default();
        let a = sessions.register(1);
        applied(&mut sessions, a, 1, b"a", 1);
        let b = sessions.register(5);
        let c = sessions.register(6);
        sessions.expire(6, LIMITS);
        // Over the count: the least recently used (a) goes.
        assert_eq!(answer(&sessions, a, 1, b"a"), Outcome::SessionExpired);
        assert!(matches!(sessions.check(b, 1, b"b"), Check::Apply));
        // b was last used at 5 < 16 - 10; c at 6.
        sessions.expire(16, LIMITS);
        assert_eq!(answer(&sessions, b, 1, b"b"), Outcome::SessionExpired);
        assert!(matches!(sessions.check(c, 1, b"c"), Check::Apply));
        assert_eq!(sessions.by_age.len(), sessions.by_client.len());
    }

    #[test]
    fn large_answers_are_not_kept_and_kept_ones_are_bounded_in_total() {
        let mut sessions = Sessions::default();
        let a = sessions.register(1);
        let b = sessions.register(1);
        // 5 bytes is over the 4-byte bound: applied, answer not kept.
        applied(&mut sessions, a, 1, b"12345", 2);
        assert_eq!(answer(&sessions, a, 1, b"12345"), Outcome::DuplicateAnswerNotKept);
        assert_eq!(sessions.answer_bytes(), 0);
        applied(&mut sessions, a, 2, b"1234", 3);
        assert_eq!(sessions.answer_bytes(), 4);
        // 4 + 4 > 6: the least recently used session (a) goes.
        applied(&mut sessions, b, 1, b"abcd", 4);
        assert_eq!(answer(&sessions, a, 2, b"1234"), Outcome::SessionExpired);
        assert_eq!(answer(&sessions, b, 1, b"abcd"), Outcome::Duplicate(b"abcd".to_vec()));
        assert_eq!(sessions.answer_bytes(), 4);
    }

    #[test]
    fn the_image_round_trips_with_the_counter() {
        let mut sessions = Sessions::default();
        let a = sessions.register(1);
        applied(&mut sessions, a, 3, b"ab", 2);
        sessions.register(3);
        sessions.register(3);
        sessions.expire(3, LIMITS);
        let image = sessions.image();
        let restored = Sessions::from_image(image.clone());
        assert_eq!(restored.image(), image);
        assert_eq!(restored.answer_bytes(), sessions.answer_bytes());
        let mut next = restored.clone();
        assert_eq!(next.register(4), ClientId(4), "the counter survives a snapshot");
    }

    #[test]
    fn the_default_bounds_pass_their_check_and_bad_ones_do_not() {
        SessionLimits::default().check().unwrap();
        let too_many = SessionLimits { max_sessions: 10_000_000, ..SessionLimits::default() };
        assert!(too_many.check().unwrap_err().contains("snapshot header"));
        let inverted = SessionLimits { max_answer_bytes: 2, max_answer_total_bytes: 1, ..LIMITS };
        assert!(inverted.check().is_err());
    }
}
