//! Settings of the command API.

use std::time::Duration;

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
