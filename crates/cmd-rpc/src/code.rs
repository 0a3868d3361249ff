//! The machine-readable error codes of the wire (`code` in `{code,
//! message, leader}`), as an enum with the same strings.
//!
//! Codes come from other nodes, so decoding never fails: a code this
//! version does not know becomes [`ErrorCode::Other`], cut to
//! [`MAX_CODE_LEN`] bytes, and is passed on as such.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest unknown code kept, in bytes; longer ones are cut.
pub const MAX_CODE_LEN: usize = 64;

/// What kind of error a command-API answer reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `no_leader`: no leader was elected within the deadline.
    NoLeader,
    /// `not_leader`: this node is not the leader (the body may name it).
    NotLeader,
    /// `timeout`: no outcome within the deadline.
    Timeout,
    /// `forbidden`: the caller may not do this.
    Forbidden,
    /// `too_large`: a body larger than allowed.
    TooLarge,
    /// `bad_request`: the request is malformed.
    BadRequest,
    /// `slow_body`: the body did not arrive in time.
    SlowBody,
    /// `not_found`: no such endpoint.
    NotFound,
    /// `method_not_allowed`: the endpoint exists, the method does not.
    MethodNotAllowed,
    /// `stale_sequence`: the session has moved past this sequence number.
    StaleSequence,
    /// `session_expired`: the session expired; the command was not applied.
    SessionExpired,
    /// `session_expired_outcome_unknown`: the session expired after an
    /// attempt whose outcome is unknown.
    SessionExpiredOutcomeUnknown,
    /// `unknown_session`: no such session was ever registered.
    UnknownSession,
    /// `sequence_reused`: the sequence number was used for another command.
    SequenceReused,
    /// `answer_not_kept`: applied once; its answer cannot be given (it was
    /// not kept for retries, or is larger than the node that asked reads).
    AnswerNotKept,
    /// `not_confirmed`: a node refused to confirm a cluster being formed.
    NotConfirmed,
    /// `not_started`: the command was never sent to the leader within its
    /// deadline, and no earlier attempt of the call may have been applied:
    /// not applied. A leader that cannot start a batched command within its
    /// budget answers it too, unless the command says an earlier attempt
    /// may have been applied (`retry`): then `unavailable`, an unknown
    /// outcome.
    NotStarted,
    /// `unavailable`: the service cannot answer now (another membership
    /// change is in progress, the node is starting or shutting down).
    /// Callers retry it elsewhere (`route::after_forward`), so a more
    /// precise reason gets no code of its own: an older node would take a
    /// code it does not know for a final answer. Locally, shutting down is
    /// told apart by [`RpcError::ShuttingDown`](crate::RpcError::ShuttingDown).
    Unavailable,
    /// `no_quorum`: the leader could not confirm its leadership with a
    /// quorum of voters (too many of them stopped or unreachable).
    NoQuorum,
    /// `unreachable`: another node could not be reached.
    Unreachable,
    /// `fatal`: the node stopped on a fatal error.
    Fatal,
    /// `http_error`: another node answered with an HTTP error and no
    /// error body this API knows.
    HttpError,
    /// A code this version does not know (a newer node's, or garbage).
    Other(UnknownCode),
}

/// A code [`ErrorCode`] does not know, at most [`MAX_CODE_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnknownCode(Box<str>);

impl UnknownCode {
    /// The code as received (cut to [`MAX_CODE_LEN`] bytes).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ErrorCode {
    /// The code `text` names; an unknown one is kept, cut to
    /// [`MAX_CODE_LEN`] bytes at a character boundary.
    pub fn from_wire(text: &str) -> ErrorCode {
        match text {
            "no_leader" => ErrorCode::NoLeader,
            "not_leader" => ErrorCode::NotLeader,
            "timeout" => ErrorCode::Timeout,
            "forbidden" => ErrorCode::Forbidden,
            "too_large" => ErrorCode::TooLarge,
            "bad_request" => ErrorCode::BadRequest,
            "slow_body" => ErrorCode::SlowBody,
            "not_found" => ErrorCode::NotFound,
            "method_not_allowed" => ErrorCode::MethodNotAllowed,
            "stale_sequence" => ErrorCode::StaleSequence,
            "session_expired" => ErrorCode::SessionExpired,
            "session_expired_outcome_unknown" => ErrorCode::SessionExpiredOutcomeUnknown,
            "unknown_session" => ErrorCode::UnknownSession,
            "sequence_reused" => ErrorCode::SequenceReused,
            "answer_not_kept" => ErrorCode::AnswerNotKept,
            "not_confirmed" => ErrorCode::NotConfirmed,
            "not_started" => ErrorCode::NotStarted,
            "unavailable" => ErrorCode::Unavailable,
            "no_quorum" => ErrorCode::NoQuorum,
            "unreachable" => ErrorCode::Unreachable,
            "fatal" => ErrorCode::Fatal,
            "http_error" => ErrorCode::HttpError,
            _ => ErrorCode::Other(UnknownCode(cut(text))),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::SlowBody => "slow_body",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::StaleSequence => "stale_sequence",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::SessionExpiredOutcomeUnknown => "session_expired_outcome_unknown",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::SequenceReused => "sequence_reused",
            ErrorCode::AnswerNotKept => "answer_not_kept",
            ErrorCode::NotConfirmed => "not_confirmed",
            ErrorCode::NotStarted => "not_started",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoQuorum => "no_quorum",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Fatal => "fatal",
            ErrorCode::HttpError => "http_error",
            ErrorCode::Other(code) => code.as_str(),
        }
    }

    /// Whether an error with this code says for sure that the command it
    /// answers was not applied by this call (refused, or answered): not a
    /// timeout, a lost leader, an unreachable node or a fatal error on the
    /// way, nor a code this version does not know.
    ///
    /// `stale_sequence` is not one: the session moved past this sequence
    /// number, which another attempt of this very command may have done
    /// (a caller that sends the next command before this one's outcome is
    /// known), so it says nothing of whether this command was applied.
    pub fn outcome_known(&self) -> bool {
        self.refused_before_applying()
            || matches!(
                self,
                ErrorCode::SessionExpired
                    | ErrorCode::UnknownSession
                    | ErrorCode::SequenceReused
                    | ErrorCode::AnswerNotKept
            )
    }

    /// Whether this code refuses a request before the state machine saw
    /// it (not the leader, forbidden, too large, malformed, slow, not
    /// found, not confirmed, not started): it says nothing of an earlier attempt of the
    /// same call. The session's own answers (expired, reused, not kept)
    /// are known outcomes too, but they are not among these.
    pub fn refused_before_applying(&self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Forbidden
                | ErrorCode::TooLarge
                | ErrorCode::BadRequest
                | ErrorCode::SlowBody
                | ErrorCode::NotFound
                | ErrorCode::MethodNotAllowed
                | ErrorCode::NotConfirmed
                | ErrorCode::NotStarted
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ErrorCode, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::from_wire(&text))
    }
}

/// `text` cut to [`MAX_CODE_LEN`] bytes at a character boundary.
fn cut(text: &str) -> Box<str> {
    let mut end = text.len().min(MAX_CODE_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every known code with its wire string.
    const KNOWN: [(ErrorCode, &str); 22] = [
        (ErrorCode::NoLeader, "no_leader"),
        (ErrorCode::NotLeader, "not_leader"),
        (ErrorCode::Timeout, "timeout"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::TooLarge, "too_large"),
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::SlowBody, "slow_body"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::MethodNotAllowed, "method_not_allowed"),
        (ErrorCode::StaleSequence, "stale_sequence"),
        (ErrorCode::SessionExpired, "session_expired"),
        (ErrorCode::SessionExpiredOutcomeUnknown, "session_expired_outcome_unknown"),
        (ErrorCode::UnknownSession, "unknown_session"),
        (ErrorCode::SequenceReused, "sequence_reused"),
        (ErrorCode::AnswerNotKept, "answer_not_kept"),
        (ErrorCode::NotConfirmed, "not_confirmed"),
        (ErrorCode::NotStarted, "not_started"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::NoQuorum, "no_quorum"),
        (ErrorCode::Unreachable, "unreachable"),
        (ErrorCode::Fatal, "fatal"),
        (ErrorCode::HttpError, "http_error"),
    ];

    /// Which codes say for sure whether the command was applied. Before,
    /// `stale_sequence` was among them, though the session's moving past
    /// a sequence number may be an earlier attempt of the same command
    /// (the review of stop 19).
    #[test]
    fn which_codes_know_the_outcome() {
        let known: Vec<&str> =
            KNOWN.iter().filter(|(code, _)| code.outcome_known()).map(|(_, wire)| *wire).collect();
        assert_eq!(
            known,
            [
                "not_leader",
                "forbidden",
                "too_large",
                "bad_request",
                "slow_body",
                "not_found",
                "method_not_allowed",
                "session_expired",
                "unknown_session",
                "sequence_reused",
                "answer_not_kept",
                "not_confirmed",
                "not_started",
            ]
        );
    }

    #[test]
    fn every_known_code_keeps_its_wire_string() {
        for (code, wire) in &KNOWN {
            assert_eq!(code.as_str(), *wire);
            assert_eq!(ErrorCode::from_wire(wire), *code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
    }

    #[test]
    fn unknown_codes_decode_bounded_and_pass_on_unchanged() {
        let cases: [(&str, &str); 4] = [
            ("leader_on_vacation", "leader_on_vacation"),
            ("", ""),
            (&"x".repeat(10_000), &"x".repeat(MAX_CODE_LEN)),
            // A cut never splits a character: 63 bytes, then a 2-byte one.
            (&format!("{}é", "a".repeat(63)), &"a".repeat(63)),
        ];
        for (wire, kept) in cases {
            let code: ErrorCode = serde_json::from_value(serde_json::json!(wire)).unwrap();
            assert!(matches!(code, ErrorCode::Other(_)), "{wire:?} gave {code:?}");
            assert_eq!(code.as_str(), kept);
            assert!(!code.outcome_known());
            assert_eq!(serde_json::to_value(&code).unwrap(), serde_json::json!(kept));
        }
    }

    #[test]
    fn a_code_that_is_not_a_string_is_refused() {
        assert!(serde_json::from_str::<ErrorCode>("17").is_err());
        assert!(serde_json::from_str::<ErrorCode>("null").is_err());
    }
}
