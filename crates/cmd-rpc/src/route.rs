//! Where a call goes next and what a failed attempt means for it: pure
//! decisions over plain data (this node's metrics, a leader hint, an
//! error, a reading of the clock), with no IO and no async, so their tests
//! run without a runtime. `service.rs` is the shell that acts on them.

use std::time::Duration;

use raft_core::{NodeId, NodeInfo, NodeMetrics, Role};
use tokio::time::Instant;

use crate::api::LeaderHint;
use crate::code::ErrorCode;
use crate::error::RpcError;

/// Who handed a call to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node (the facade, or a caller over HTTP): the call
    /// runs here on the leader or is forwarded to it.
    Client,
    /// Another node, forwarding its client's call to this node as the
    /// leader (`x-tsc-forwarded`): answered here or bounced back, never
    /// forwarded again, so there are no chains or loops.
    Forwarded,
}

/// Where one attempt runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Here: this node leads.
    Local,
    /// At the leader: its raft id and record.
    Leader(NodeId, NodeInfo),
}

/// What a call does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Run an attempt there.
    Attempt(Target),
    /// Wait for a leader this node can route to: none is known, or the
    /// one known is not in its configuration (an incarnation change).
    Wait,
    /// Answer the caller now: a forwarded call this node cannot run as
    /// the leader.
    Bounce,
}

/// Where an attempt goes, given this node's metrics and a leader hint from
/// an earlier attempt; `None` while no leader is known that this node can
/// route to.
pub(crate) fn target(
    metrics: &NodeMetrics,
    me: NodeId,
    hint: Option<&LeaderHint>,
) -> Option<Target> {
    if metrics.role == Role::Leader {
        return Some(Target::Local);
    }
    if let Some(hint) = hint {
        if hint.id == me {
            return Some(Target::Local);
        }
        return Some(Target::Leader(hint.id, hint.node.clone()));
    }
    match metrics.leader {
        Some(id) if id == me => Some(Target::Local),
        Some(id) => metrics.nodes.get(&id).map(|node| Target::Leader(id, node.clone())),
        None => None,
    }
}

/// What a call from `origin` does next.
pub(crate) fn step(
    origin: Origin,
    metrics: &NodeMetrics,
    me: NodeId,
    hint: Option<&LeaderHint>,
) -> Step {
    match (origin, target(metrics, me, hint)) {
        (_, Some(Target::Local)) => Step::Attempt(Target::Local),
        (Origin::Forwarded, _) => Step::Bounce,
        (Origin::Client, Some(leader)) => Step::Attempt(leader),
        (Origin::Client, None) => Step::Wait,
    }
}

/// What a failed attempt means for the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again, at `leader` if named; if the deadline passes first, the
    /// call reports this error when `report`, else why it found no leader.
    Retry {
        /// The leader to try, if the error named one.
        leader: Option<LeaderHint>,
        /// Whether this error is what the call reports at its deadline.
        report: bool,
    },
    /// The error is the call's answer.
    Fail,
}

/// What an error from an attempt forwarded to the leader means: a leader
/// moved or not yet elected, a leader that stopped, timed out, cannot
/// answer now or cannot be reached, is tried again; anything else (a
/// refusal, the state machine's answer) ends the call.
pub(crate) fn after_forward(err: &RpcError) -> Next {
    match err {
        RpcError::Remote { body, .. } => match body.code {
            ErrorCode::NotLeader | ErrorCode::NoLeader => {
                Next::Retry { leader: body.leader.clone(), report: false }
            }
            // The leader stopped on a fatal error: another will be elected.
            // Or it lacks a quorum for now.
            ErrorCode::Fatal
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::NotStarted
            | ErrorCode::NoQuorum => Next::Retry { leader: None, report: true },
            _ => Next::Fail,
        },
        // The leader may have died or be unreachable for a moment.
        RpcError::Unreachable { .. } | RpcError::Timeout { .. } => {
            Next::Retry { leader: None, report: true }
        }
        _ => Next::Fail,
    }
}

/// What an error from this node's own read index (as the leader) means:
/// leadership moved, or it could not confirm it in time, so try again.
pub(crate) fn after_read_index(err: &RpcError) -> Next {
    match err {
        RpcError::NotLeader { leader } => Next::Retry { leader: leader.clone(), report: false },
        RpcError::Unavailable(_) | RpcError::NoQuorum(_) | RpcError::Timeout { .. } => {
            Next::Retry { leader: None, report: true }
        }
        _ => Next::Fail,
    }
}

/// What a call has to report when its deadline passes (or too little of
/// its time is left for another attempt).
#[derive(Debug)]
pub(crate) enum Deadline {
    /// An error an attempt returned, kept by the call (`keep_unknown`):
    /// it says what became of that attempt, and reaches the caller as it is.
    Kept(RpcError),
    /// An error made here for a call that ended without an answer it
    /// could keep: no leader known (`NoLeader`), or none it could route
    /// to or that answered in time (`Timeout`).
    Unanswered(RpcError),
}

impl Deadline {
    /// The error the caller hears, as it is.
    pub(crate) fn into_error(self) -> RpcError {
        match self {
            Deadline::Kept(err) | Deadline::Unanswered(err) => err,
        }
    }
}

/// What a call reports when its deadline passes: whether it was waiting
/// for a leader, the last attempt's error it kept, the leader this node
/// knows, and how long it tried.
pub(crate) fn at_deadline(
    what: &str,
    waiting_for_leader: bool,
    last_error: Option<RpcError>,
    known_leader: Option<NodeId>,
    waited: Duration,
) -> Deadline {
    match (waiting_for_leader, last_error) {
        // An attempt may have been applied: the caller hears that (and
        // why), whatever happened since; "no leader" would drop the
        // message, and its code says nothing of the earlier attempt.
        (_, Some(err)) if err.outcome_unknown() => Deadline::Kept(err),
        // Known not applied, and why (every dial failed, ...), then no
        // leader: "no leader" alone would drop the reason; the caller
        // hears both.
        (_, Some(err)) if err.code() == ErrorCode::NotStarted && known_leader.is_none() => {
            let earlier = match err {
                RpcError::NotStarted(why) => why,
                err => err.to_string(),
            };
            Deadline::Kept(RpcError::NoLeaderNotStarted { waited, earlier: Some(earlier) })
        }
        (true, _) | (false, None) if known_leader.is_none() => {
            Deadline::Unanswered(RpcError::NoLeader { waited })
        }
        (_, Some(err)) => Deadline::Kept(err),
        // The node runs; it found no leader it can route to in time (not
        // `unavailable`, which a caller reads as "this node stops").
        (true, None) => Deadline::Unanswered(RpcError::Timeout {
            what: format!(
                "{what}: the leader this node knows ({}) is not in its configuration yet",
                known_leader.unwrap_or_default(),
            ),
            after: waited,
        }),
        (false, None) => {
            Deadline::Unanswered(RpcError::Timeout { what: what.to_owned(), after: waited })
        }
    }
}

/// What a call keeps to report after an attempt that asks to be tried
/// again with `new` (or nothing) to report: `new`, unless an earlier
/// attempt left the outcome unknown and `new` does not. An attempt that
/// timed out may still be committed, so a later "not the leader" (or a
/// deadline with nothing to report) must not turn that into "not applied".
///
/// Nor does a later attempt's bare timeout replace a leader's `no_quorum`
/// (both unknown outcomes): the leader said why it could not answer, and
/// a read that then ran out of time (a leader gone silent, or an attempt
/// with little time left) should still hear it.
pub(crate) fn keep_unknown(last: Option<RpcError>, new: Option<RpcError>) -> Option<RpcError> {
    match (last, new) {
        (Some(last), new)
            if last.outcome_unknown() && !new.as_ref().is_some_and(RpcError::outcome_unknown) =>
        {
            Some(last)
        }
        (Some(last), Some(new))
            if last.code() == ErrorCode::NoQuorum && new.code() == ErrorCode::Timeout =>
        {
            Some(last)
        }
        (_, new) => new,
    }
}

/// Whether an attempt with `remaining` of the call's time is worth
/// making, `attempted` saying whether the call made one already, and
/// `floor` the least any attempt of it needs. None is made with no time
/// left: an execute proposed with a zero budget could still be applied (a
/// timeout polls its future once) while the caller hears "no outcome".
/// Nor with a sliver of it for an execute on the leader itself (`floor`
/// is then `batch::MIN_BUDGET`, 1 ms): its proposal would be queued, the
/// call would time out, and the command could be applied while its caller
/// hears an unknown outcome where `not_started` was known. Any call whose
/// deadline leaves at least `floor` makes its first attempt; reads,
/// registrations and membership changes have no floor. After a first
/// attempt, one needs at least `least` (the minimum back-off, as a
/// membership change's retry needs a whole pause before its deadline):
/// with less it can only time out, and its bare timeout would replace
/// what the earlier attempts said (a read without a quorum reported as
/// "no outcome within 2ms"). The first attempt goes with any time above
/// the floor, for a caller that asked for a short deadline.
pub(crate) fn worth_attempting(
    attempted: bool,
    remaining: Duration,
    least: Duration,
    floor: Duration,
) -> bool {
    !remaining.is_zero() && remaining >= floor && (!attempted || remaining >= least)
}

/// What an execute that ends at its deadline with `deadline` reports,
/// `maybe_applied` saying whether any attempt of it (or of an earlier
/// call, `retry`) may have been applied: proposed here, or written, even
/// in part, to a leader. When none may have been, a call that ended
/// without an answer (no leader known, no answer in time: the errors
/// [`at_deadline`] makes itself) knows the command was not applied:
/// `not_started`, keeping why. Before, such a call answered an unknown
/// outcome, and the facade's operation counted it "maybe applied" for
/// good. An error an attempt returned and the call kept passes as it is,
/// whatever the flag says: a leader's `timeout` or a `LeaderLost` speaks
/// of an attempt that may have been applied, even if the flag missed it.
pub(crate) fn unless_unsent(deadline: Deadline, maybe_applied: bool) -> RpcError {
    match deadline {
        Deadline::Kept(err) => err,
        Deadline::Unanswered(err) if maybe_applied => err,
        Deadline::Unanswered(RpcError::NoLeader { waited }) => {
            RpcError::NoLeaderNotStarted { waited, earlier: None }
        }
        // "No outcome within" would contradict "not applied".
        Deadline::Unanswered(RpcError::Timeout { what, after }) => RpcError::NotStarted(format!(
            "{what}: nothing of it was proposed here or written to a leader within {after:?}"
        )),
        Deadline::Unanswered(err) => err,
    }
}

/// What a call reports when an attempt ends it with `error`, after
/// attempts that left `last`: `last` if that outcome is unknown and `error`
/// is a refusal before the state machine (not the leader, forbidden, too
/// large, malformed, slow, not found, not confirmed), which says nothing
/// about the earlier attempt; otherwise `error`. The state machine's own
/// answers about the session (stale, expired, reused, not kept) pass
/// through: they already account for every earlier attempt.
pub(crate) fn final_error(last: Option<RpcError>, error: RpcError) -> RpcError {
    match last {
        Some(last) if last.outcome_unknown() && error.code().refused_before_applying() => last,
        _ => error,
    }
}

/// Exponential backoff between attempts, doubling from a minimum up to a
/// maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    /// Starting at `min`, never above `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { current: min.min(max), max }
    }

    /// The pause now, cut to what is left before `deadline`.
    pub(crate) fn pause(&self, now: Instant, deadline: Instant) -> Duration {
        self.current.min(deadline.saturating_duration_since(now))
    }

    /// Whether a full pause from `now` still ends before `deadline`.
    pub(crate) fn fits(&self, now: Instant, deadline: Instant) -> bool {
        now + self.current < deadline
    }

    /// Doubles the pause, up to the maximum.
    pub(crate) fn grow(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }
}

/// An error from `leader` answering a request that an earlier address of
/// it may already have received and run: an answer that says "not
/// applied" (a refusal before the state machine, or a session it does not
/// have) speaks only of this copy, so the outcome is unknown. Other
/// answers (applied, a duplicate, the session's own account) pass on.
pub(crate) fn after_resend(err: RpcError, leader: NodeId) -> RpcError {
    let code = err.code();
    let not_applied_here = code.refused_before_applying()
        || matches!(code, ErrorCode::SessionExpired | ErrorCode::UnknownSession);
    if !not_applied_here {
        return err;
    }
    RpcError::Unreachable {
        target: format!("leader {leader}"),
        reason: format!("{err}, after an earlier address may have received it (outcome unknown)"),
        source: None,
    }
}

/// An error from `leader` answering a forwarded `/v1/execute`, seen
/// through what its status says: an answer this node did not read because
/// it is longer than `max_response` is, when its status is 200, the
/// command applied (a leader answers 200 only for a command applied now or
/// before in the session; what was read must begin as an execute answer
/// does), so [`RpcError::AnswerTooLarge`]: every retry in the session would
/// read the same kept answer, and meet the same limit, until the caller's
/// deadline. Any other error passes on.
pub(crate) fn after_execute(err: RpcError, leader: NodeId) -> RpcError {
    let oversized = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<crate::client::Oversized>());
    match oversized {
        Some(oversized) if oversized.status == 200 && oversized.answer_shaped => {
            RpcError::AnswerTooLarge { leader: format!("leader {leader}"), limit: oversized.limit }
        }
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::ErrorBody;

    const ME: NodeId = 1;
    const OTHER: NodeId = 2;
    const STRANGER: NodeId = 9;

    fn info(stable_id: &str) -> NodeInfo {
        NodeInfo {
            stable_id: stable_id.to_owned(),
            addrs: vec!["100.64.0.1".parse().unwrap()],
            raft_port: 6270,
            command_port: 6271,
        }
    }

    fn metrics(role: Role, leader: Option<NodeId>) -> NodeMetrics {
        NodeMetrics {
            id: ME,
            role,
            term: 3,
            leader,
            last_log_index: None,
            last_applied: None,
            snapshot: None,
            purged: None,
            voters: [ME, OTHER].into(),
            final_voters: [ME, OTHER].into(),
            learners: Default::default(),
            nodes: BTreeMap::from([(ME, info("me")), (OTHER, info("other"))]),
            membership_index: None,
            replication: None,
            millis_since_quorum_ack: None,
            fatal: None,
        }
    }

    fn hint_at(id: NodeId) -> LeaderHint {
        LeaderHint { id, node: info("hinted") }
    }

    #[test]
    fn where_a_call_goes() {
        let leader = || Target::Leader(OTHER, info("other"));
        let hinted = |id| Target::Leader(id, info("hinted"));
        let cases: Vec<(&str, NodeMetrics, Option<LeaderHint>, Origin, Step)> = vec![
            (
                "leader, client",
                metrics(Role::Leader, Some(ME)),
                None,
                Origin::Client,
                Step::Attempt(Target::Local),
            ),
            (
                "leader, forwarded",
                metrics(Role::Leader, Some(ME)),
                None,
                Origin::Forwarded,
                Step::Attempt(Target::Local),
            ),
            // The role decides, whatever an old hint says.
            (
                "leader, stale hint",
                metrics(Role::Leader, Some(ME)),
                Some(hint_at(OTHER)),
                Origin::Client,
                Step::Attempt(Target::Local),
            ),
            (
                "follower",
                metrics(Role::Follower, Some(OTHER)),
                None,
                Origin::Client,
                Step::Attempt(leader()),
            ),
            (
                "follower, forwarded",
                metrics(Role::Follower, Some(OTHER)),
                None,
                Origin::Forwarded,
                Step::Bounce,
            ),
            // A hint from an attempt beats the metrics, even naming a stranger.
            (
                "hint",
                metrics(Role::Follower, Some(OTHER)),
                Some(hint_at(STRANGER)),
                Origin::Client,
                Step::Attempt(hinted(STRANGER)),
            ),
            (
                "hint names me",
                metrics(Role::Follower, None),
                Some(hint_at(ME)),
                Origin::Client,
                Step::Attempt(Target::Local),
            ),
            (
                "hint names me, forwarded",
                metrics(Role::Follower, None),
                Some(hint_at(ME)),
                Origin::Forwarded,
                Step::Attempt(Target::Local),
            ),
            (
                "metrics name me",
                metrics(Role::Follower, Some(ME)),
                None,
                Origin::Client,
                Step::Attempt(Target::Local),
            ),
            ("no leader", metrics(Role::Candidate, None), None, Origin::Client, Step::Wait),
            (
                "no leader, forwarded",
                metrics(Role::Candidate, None),
                None,
                Origin::Forwarded,
                Step::Bounce,
            ),
            // A leader outside the configuration: no address to call.
            (
                "leader not a member",
                metrics(Role::Follower, Some(STRANGER)),
                None,
                Origin::Client,
                Step::Wait,
            ),
            (
                "leader not a member, forwarded",
                metrics(Role::Follower, Some(STRANGER)),
                None,
                Origin::Forwarded,
                Step::Bounce,
            ),
        ];
        for (name, metrics, hint, origin, want) in cases {
            assert_eq!(step(origin, &metrics, ME, hint.as_ref()), want, "{name}");
        }
    }

    fn remote(code: &str, leader: Option<LeaderHint>) -> RpcError {
        let body = ErrorBody { code: ErrorCode::from_wire(code), message: "m".to_owned(), leader };
        RpcError::from_remote(503, body)
    }

    fn timeout() -> RpcError {
        RpcError::Timeout { what: "w".to_owned(), after: Duration::from_secs(1) }
    }

    #[test]
    fn an_unknown_outcome_is_kept_until_another_unknown_replaces_it() {
        let not_leader = || remote("not_leader", None);
        let code = |e: Option<RpcError>| e.map(|e| e.code().to_string());
        let kept = keep_unknown(Some(timeout()), None);
        assert_eq!(code(kept), Some("timeout".to_owned()), "nothing new to report");
        let kept = keep_unknown(Some(timeout()), Some(not_leader()));
        assert_eq!(code(kept), Some("timeout".to_owned()), "a known outcome after an unknown");
        let replaced = keep_unknown(Some(timeout()), Some(remote("fatal", None)));
        assert_eq!(code(replaced), Some("fatal".to_owned()), "a newer unknown outcome");
        let replaced = keep_unknown(Some(not_leader()), None);
        assert_eq!(code(replaced), None, "a known outcome is not kept");
        assert_eq!(code(keep_unknown(None, Some(timeout()))), Some("timeout".to_owned()));
        // Issue 12: a leader's "no quorum" says more than a later bare
        // timeout (a read reported "no outcome within 2ms"); a newer
        // "no quorum" or another failure of the leader replaces it.
        let no_quorum = || RpcError::NoQuorum("q".to_owned());
        for later in [timeout(), remote("timeout", None)] {
            let kept = keep_unknown(Some(no_quorum()), Some(later));
            assert_eq!(code(kept), Some("no_quorum".to_owned()), "a timeout after no_quorum");
        }
        let kept = keep_unknown(Some(remote("no_quorum", None)), Some(timeout()));
        assert_eq!(code(kept), Some("no_quorum".to_owned()), "the leader's own no_quorum");
        let replaced = keep_unknown(Some(no_quorum()), Some(remote("fatal", None)));
        assert_eq!(code(replaced), Some("fatal".to_owned()));
        let replaced = keep_unknown(Some(timeout()), Some(no_quorum()));
        assert_eq!(code(replaced), Some("no_quorum".to_owned()));
    }

    /// Issue 12: an attempt needs time. Before, a turn whose pause ran to
    /// (or nearly to) the deadline still made one: its timeout replaced a
    /// read's `no_quorum`, and an execute could be proposed with a zero
    /// budget (and applied, its caller told "no outcome").
    #[test]
    fn an_attempt_is_made_only_with_time_for_it() {
        let ms = Duration::from_millis;
        let least = ms(20);
        // (attempted before, remaining) -> worth it.
        let cases = [
            (false, ms(0), false),
            (false, Duration::from_nanos(1), true),
            (false, ms(5), true),
            (false, ms(30), true),
            (true, ms(0), false),
            (true, ms(5), false),
            (true, ms(19), false),
            (true, ms(20), true),
            (true, ms(30), true),
        ];
        for (attempted, remaining, want) in cases {
            assert_eq!(
                worth_attempting(attempted, remaining, least, Duration::ZERO),
                want,
                "attempted {attempted}, {remaining:?} left"
            );
        }
        assert!(!worth_attempting(true, ms(0), Duration::ZERO, Duration::ZERO), "no time");
        // Review (F2): an execute on the leader needs 1 ms even for its
        // first attempt; with that, it makes one.
        let floor = crate::batch::MIN_BUDGET;
        let cases = [
            (false, Duration::from_micros(1), false),
            (false, Duration::from_micros(999), false),
            (false, ms(1), true),
            (false, ms(5), true),
            (true, ms(5), false),
            (true, ms(20), true),
        ];
        for (attempted, remaining, want) in cases {
            assert_eq!(
                worth_attempting(attempted, remaining, least, floor),
                want,
                "floor: attempted {attempted}, {remaining:?} left"
            );
        }
        assert!(worth_attempting(true, ms(1), Duration::ZERO, floor), "a floor above least");
        assert!(!worth_attempting(true, Duration::from_micros(500), Duration::ZERO, floor));
    }

    /// Issue 12: an execute none of whose attempts may have been applied
    /// (nothing proposed here, nothing written to a leader) and that ended
    /// without an answer was not applied: `not_started`, keeping why.
    /// With an attempt that may have been, or for another failure, the
    /// error stays.
    #[test]
    fn an_execute_never_sent_anywhere_was_not_started() {
        let waited = Duration::from_secs(3);
        let unanswered = |leader| at_deadline("execute", false, None, leader, waited);
        let unsent = unless_unsent(unanswered(None), false);
        assert!(
            matches!(unsent, RpcError::NoLeaderNotStarted { waited, earlier: None } if waited.as_secs() == 3),
            "{unsent:?}"
        );
        let text = unanswered(None).into_error().to_string();
        let unsent = unless_unsent(unanswered(None), false);
        assert_eq!(unsent.code(), ErrorCode::NotStarted, "{unsent}");
        assert!(!unsent.outcome_unknown());
        assert!(unsent.to_string().contains(&text[..text.find(';').unwrap()]), "{unsent}");
        // Review (F4): no time left, or no answer in time, with nothing
        // sent: the text says not applied, never "no outcome".
        let unsent = unless_unsent(unanswered(Some(OTHER)), false);
        assert_eq!(unsent.code(), ErrorCode::NotStarted, "{unsent}");
        assert_eq!(
            unsent.to_string(),
            "not started: execute: nothing of it was proposed here or written to a leader \
             within 3s; the command was not applied"
        );
        let unsent =
            unless_unsent(at_deadline("execute", true, None, Some(STRANGER), waited), false);
        assert_eq!(unsent.code(), ErrorCode::NotStarted, "{unsent}");
        let text = unsent.to_string();
        assert!(text.contains("(9) is not in its configuration yet"), "{text}");
        assert!(!text.contains("no outcome"), "{text}");
        for leader in [None, Some(OTHER)] {
            let code = unanswered(leader).into_error().code();
            assert_eq!(
                unless_unsent(unanswered(leader), true).code(),
                code,
                "may have been applied"
            );
        }
        let kept = |err| at_deadline("execute", false, Some(err), Some(OTHER), waited);
        assert_eq!(
            unless_unsent(kept(remote("unavailable", None)), true).code(),
            ErrorCode::Unavailable
        );
        // Review: only what `at_deadline` made itself is "not started". An
        // error an attempt returned speaks of that attempt, even if the flag
        // missed it: a leader's own `timeout`, a lost leadership, a local
        // timeout waiting for an answer, pass unchanged.
        let returned: [fn() -> RpcError; 3] = [
            || remote("timeout", None),
            || RpcError::LeaderLost { what: "execute".to_owned() },
            timeout,
        ];
        for err in returned {
            let text = err().to_string();
            for leader in [None, Some(OTHER)] {
                let deadline = at_deadline("execute", false, Some(err()), leader, waited);
                let passed = unless_unsent(deadline, false);
                assert_eq!(passed.code(), ErrorCode::Timeout, "{passed}");
                assert!(passed.outcome_unknown(), "{passed}");
                assert_eq!(passed.to_string(), text);
            }
        }
        let passed = [
            RpcError::fatal("f"),
            RpcError::Unavailable("stopping".to_owned()),
            remote("not_leader", None),
            RpcError::NotStarted("n".to_owned()),
        ];
        for err in passed {
            let code = err.code();
            assert_eq!(unless_unsent(Deadline::Kept(err), false).code(), code);
        }
    }

    #[test]
    fn a_refusal_that_ends_a_call_does_not_hide_an_unknown_outcome() {
        let code = |e: RpcError| e.code().to_string();
        for refusal in ["forbidden", "not_leader", "too_large", "bad_request", "not_found"] {
            let kept = final_error(Some(timeout()), remote(refusal, None));
            assert_eq!(code(kept), "timeout", "{refusal} after an unknown attempt");
            assert_eq!(code(final_error(None, remote(refusal, None))), refusal);
        }
        // The session's own answers account for every earlier attempt.
        for answer in ["session_expired", "stale_sequence", "answer_not_kept"] {
            assert_eq!(code(final_error(Some(timeout()), remote(answer, None))), answer);
        }
        let known = final_error(Some(remote("not_leader", None)), remote("forbidden", None));
        assert_eq!(code(known), "forbidden", "nothing unknown to keep");
    }

    #[test]
    fn what_an_error_from_the_leader_means() {
        let retry = |leader, report| Next::Retry { leader, report };
        let unreachable = RpcError::Unreachable {
            target: "n".to_owned(),
            reason: "refused".to_owned(),
            source: None,
        };
        let cases: Vec<(RpcError, Next)> = vec![
            (remote("not_leader", Some(hint_at(OTHER))), retry(Some(hint_at(OTHER)), false)),
            (remote("not_leader", None), retry(None, false)),
            (remote("no_leader", None), retry(None, false)),
            (remote("fatal", None), retry(None, true)),
            (remote("timeout", None), retry(None, true)),
            (remote("unavailable", None), retry(None, true)),
            (remote("no_quorum", None), retry(None, true)),
            // Local failures on the way: the leader may be back soon.
            (unreachable, retry(None, true)),
            (timeout(), retry(None, true)),
            // The leader's own answers end the call.
            (remote("unreachable", None), Next::Fail),
            (remote("forbidden", None), Next::Fail),
            (remote("session_expired", None), Next::Fail),
            (remote("stale_sequence", None), Next::Fail),
            (remote("http_error", None), Next::Fail),
            // A code from a newer node (or garbage) is not retried blindly.
            (remote("leader_on_vacation", Some(hint_at(OTHER))), Next::Fail),
            (RpcError::bad_request("b"), Next::Fail),
            (RpcError::fatal("f"), Next::Fail),
        ];
        for (err, want) in cases {
            assert_eq!(after_forward(&err), want, "{err:?}");
        }
    }

    /// A 200 answer too long to read is the command applied; any other
    /// answer too long to read, or other failure, stays what it was.
    #[test]
    fn an_execute_answered_200_but_too_long_to_read_was_applied() {
        let shaped = |status, answer_shaped| RpcError::Unreachable {
            target: "10.0.0.2:6271".to_owned(),
            reason: "too long".to_owned(),
            source: Some(Box::new(crate::client::Oversized { status, limit: 4096, answer_shaped })),
        };
        let oversized = |status| shaped(status, true);
        let applied = after_execute(oversized(200), OTHER);
        assert!(matches!(&applied, RpcError::AnswerTooLarge { limit: 4096, .. }), "{applied:?}");
        assert_eq!(applied.code(), ErrorCode::AnswerNotKept);
        assert!(!applied.outcome_unknown());
        assert!(applied.to_string().contains("4096-byte limit (max_response)"), "{applied}");
        let cases: Vec<RpcError> = vec![
            // A 200 whose body is not an execute answer (not a leader of
            // this protocol answering): nothing known (review finding).
            shaped(200, false),
            oversized(503),
            oversized(409),
            RpcError::Unreachable { target: "t".to_owned(), reason: "r".to_owned(), source: None },
            timeout(),
            remote("not_leader", None),
        ];
        for err in cases {
            let code = err.code();
            let after = after_execute(err, OTHER);
            assert_eq!(after.code(), code, "{after:?}");
        }
    }

    #[test]
    fn what_an_error_from_the_own_read_index_means() {
        let cases: Vec<(RpcError, Next)> = vec![
            (
                RpcError::NotLeader { leader: Some(hint_at(OTHER)) },
                Next::Retry { leader: Some(hint_at(OTHER)), report: false },
            ),
            (RpcError::Unavailable("u".to_owned()), Next::Retry { leader: None, report: true }),
            (RpcError::NoQuorum("q".to_owned()), Next::Retry { leader: None, report: true }),
            (timeout(), Next::Retry { leader: None, report: true }),
            (RpcError::fatal("f"), Next::Fail),
        ];
        for (err, want) in cases {
            assert_eq!(after_read_index(&err), want, "{err:?}");
        }
    }

    #[test]
    fn what_a_call_reports_at_its_deadline() {
        let waited = Duration::from_secs(3);
        let kept = || Some(remote("unavailable", None));
        // (waiting for a leader, kept error, known leader) -> code.
        let cases: Vec<(bool, Option<RpcError>, Option<NodeId>, ErrorCode)> = vec![
            (true, None, None, ErrorCode::NoLeader),
            // An attempt that may have been applied, then no leader: the
            // caller hears that attempt's unknown outcome (issue 12: it
            // heard `no_leader`, the message lost).
            (true, kept(), None, ErrorCode::Unavailable),
            (true, Some(timeout()), None, ErrorCode::Timeout),
            // A known outcome kept ("not sent"), then no leader: "no
            // leader", not started, with the kept reason (review, F4:
            // before, `no_leader` alone).
            (true, Some(RpcError::NotStarted("n".to_owned())), None, ErrorCode::NotStarted),
            (false, Some(RpcError::NotStarted("n".to_owned())), None, ErrorCode::NotStarted),
            (false, Some(remote("not_started", None)), None, ErrorCode::NotStarted),
            (true, Some(remote("not_started", None)), None, ErrorCode::NotStarted),
            (false, None, None, ErrorCode::NoLeader),
            (false, kept(), None, ErrorCode::Unavailable),
            (true, kept(), Some(STRANGER), ErrorCode::Unavailable),
            (false, kept(), Some(OTHER), ErrorCode::Unavailable),
            (false, Some(timeout()), Some(OTHER), ErrorCode::Timeout),
            // No leader it can route to in time: the node runs, so a
            // timeout, not `unavailable` (which the facade reports as the
            // node stopped; review finding).
            (true, None, Some(STRANGER), ErrorCode::Timeout),
            (false, None, Some(OTHER), ErrorCode::Timeout),
        ];
        for (waiting, last, known, want) in cases {
            let err = at_deadline("put", waiting, last, known, waited).into_error();
            assert_eq!(err.code(), want, "{waiting} {known:?}: {err}");
        }
        let err = at_deadline("put", true, None, Some(STRANGER), waited).into_error();
        assert!(err.to_string().contains("(9) is not in its configuration"), "{err}");
        let err = at_deadline("put", false, None, None, waited).into_error();
        assert!(matches!(err, RpcError::NoLeader { waited: w } if w == waited), "{err}");
        let err = at_deadline("put", true, Some(timeout()), None, waited).into_error();
        assert_eq!(err.to_string(), timeout().to_string(), "the kept message");
        let refused = RpcError::NotStarted("every dial failed: refused".to_owned());
        let err = at_deadline("put", true, Some(refused), None, waited).into_error();
        assert!(matches!(err, RpcError::NoLeaderNotStarted { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not started: no leader elected within 3s; the cluster may have lost its quorum \
             (earlier: every dial failed: refused) (the command was not applied)"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_never_passes_the_deadline() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut backoff = Backoff::new(ms(10), ms(100));
        let mut pauses = Vec::new();
        for _ in 0..6 {
            pauses.push(backoff.pause(now, far));
            backoff.grow();
        }
        assert_eq!(pauses, [ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
        // Cut to the time left, zero once it is gone.
        assert_eq!(backoff.pause(now, now + ms(30)), ms(30));
        assert_eq!(backoff.pause(now + ms(50), now), Duration::ZERO);
        assert!(backoff.fits(now, now + ms(101)));
        assert!(!backoff.fits(now, now + ms(100)));
        // A minimum above the maximum starts at the maximum.
        assert_eq!(Backoff::new(ms(500), ms(100)).pause(now, far), ms(100));
    }
}
