//! Why discovery could not read the tailnet.

use std::time::Duration;

/// Why a LocalAPI read failed. The last good view is kept on every error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The LocalAPI could not be reached or dropped the connection.
    #[error("LocalAPI at {addr} unreachable: {reason}")]
    Unreachable {
        /// The LocalAPI address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The LocalAPI did not answer in time.
    #[error("LocalAPI request {path} timed out after {after:?}")]
    Timeout {
        /// The request path.
        path: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The LocalAPI answered with an HTTP error.
    #[error("LocalAPI {path} answered {status}: {body}")]
    Http {
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer was larger than allowed.
    #[error("LocalAPI {path} answer exceeds the {limit}-byte limit")]
    TooLarge {
        /// The request path.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// The answer was not what the LocalAPI documents.
    #[error("malformed LocalAPI answer: {0}")]
    Malformed(String),
    /// The node is not running yet (or any more).
    #[error("node is not running (backend state {0})")]
    NotRunning(String),
}
