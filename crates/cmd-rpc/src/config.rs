//! Settings of the command API.

use std::time::Duration;

use raft_core::SessionLimits;

/// Bytes an execute's answer adds around the state machine's answer
/// (`{"result":` and `,"duplicate":false}`, 29), with room to spare.
pub const ANSWER_ENVELOPE: usize = 64;

/// Settings of the command API, server and client.
#[derive(Clone, Debug)]
pub struct CommandConfig {
    /// Largest request body accepted (413 beyond).
    pub max_request: usize,
    /// Largest response body read from another node.
    pub max_response: usize,
    /// Time a client has to send its request headers (and the longest an
    /// idle connection is kept).
    pub header_timeout: Duration,
    /// Time a client has to send its whole request body.
    pub body_timeout: Duration,
    /// Deadline of a request that does not bring its own.
    pub default_deadline: Duration,
    /// Longest deadline a caller may ask for.
    pub max_deadline: Duration,
    /// Time a joining learner has to catch up before it is made a voter.
    pub catch_up_timeout: Duration,
    /// First wait between retries while no leader is known; doubles up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Time each of a peer's addresses gets to accept a connection; a peer
    /// that vanished leaves the rest of the call to its other addresses and
    /// to retries.
    pub connect_timeout: Duration,
    /// Longest one forwarded attempt (an execute, a session, a read index)
    /// waits for the leader's answer before it is tried again (same client
    /// and sequence number, so never applied twice). The leader is given
    /// this as its deadline; an attempt also ends as soon as this node
    /// learns of a newer leader.
    pub attempt_timeout: Duration,
    /// Most connections one peer address may hold on the command port (a
    /// new one beyond it closes that peer's oldest); peers not authorized
    /// are closed at accept. Each costs the tsnet side buffers.
    pub max_connections_per_peer: usize,
    /// Most requests this node has in flight to one peer address at once
    /// (each holds a connection; at most 8 more are kept idle). Below
    /// `max_connections_per_peer`, so a busy node never has its own
    /// connections closed by the peer's bound.
    pub max_requests_per_peer: usize,
}

impl Default for CommandConfig {
    fn default() -> CommandConfig {
        CommandConfig {
            max_request: 2 << 20,
            max_response: 4 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(300),
            catch_up_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
            max_connections_per_peer: 32,
            max_requests_per_peer: 16,
        }
    }
}

impl CommandConfig {
    /// Most bytes of a `/v1/execute` answer this node reads from the leader
    /// when sessions keep answers up to `sessions.max_answer_bytes`:
    /// `max_response`, or a kept answer in its envelope when that is larger.
    /// A retry in the session is answered the kept answer, so a follower
    /// that could not read it would never learn more than "applied". Every
    /// other read (batches, probes, confirms, reads) keeps `max_response`.
    pub fn execute_answer_limit(&self, sessions: &SessionLimits) -> usize {
        self.max_response.max(sessions.max_answer_bytes.saturating_add(ANSWER_ENVELOPE))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::api::ExecuteResponse;

    #[test]
    fn the_envelope_covers_an_execute_answer() {
        let answer = "[1,2,3]";
        let response = ExecuteResponse {
            result: RawValue::from_string(answer.to_owned()).unwrap(),
            duplicate: false,
        };
        let encoded = serde_json::to_vec(&response).unwrap();
        assert!(encoded.len() - answer.len() <= ANSWER_ENVELOPE, "{}", encoded.len());
    }

    #[test]
    fn a_kept_answer_is_always_within_the_execute_answer_limit() {
        let config = CommandConfig { max_response: 64 << 10, ..CommandConfig::default() };
        let small = SessionLimits { max_answer_bytes: 1 << 10, ..Default::default() };
        assert_eq!(config.execute_answer_limit(&small), 64 << 10);
        let large = SessionLimits { max_answer_bytes: 256 << 10, ..Default::default() };
        assert_eq!(config.execute_answer_limit(&large), (256 << 10) + ANSWER_ENVELOPE);
        let defaults = CommandConfig::default();
        assert_eq!(defaults.execute_answer_limit(&SessionLimits::default()), defaults.max_response);
    }
}
