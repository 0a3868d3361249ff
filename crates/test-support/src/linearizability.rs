//! A linearizability checker for key-value histories, in the style of
//! Wing & Gong with the memoization porcupine uses.
//!
//! A history is what clients saw: each operation's invocation time, its
//! completion time (or none, when the outcome is unknown, as after a
//! timeout), its input and its output. The history is linearizable if every
//! completed operation can be given a single point between its invocation
//! and its completion such that, in the order of those points, each output
//! is what a sequential key-value store would have answered. An operation
//! with an unknown outcome may take effect at any point after its
//! invocation, or never.
//!
//! Operations on different keys are independent, so the history is checked
//! one key at a time: the search is exponential only in the concurrency on
//! one key.

use std::collections::{BTreeMap, HashSet};

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read the key.
    Get,
    /// Write the key.
    Put(String),
    /// Write `new` if the key holds `expected` (`None`: absent).
    Cas {
        /// The value required.
        expected: Option<String>,
        /// The value written.
        new: String,
    },
    /// Remove the key.
    Delete,
}

/// What an operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A read's value.
    Value(Option<String>),
    /// A write's report of the value before it.
    Previous(Option<String>),
    /// A compare-and-set that did not match, and the value it found.
    Mismatch(Option<String>),
}

/// One operation as a client saw it.
#[derive(Clone, Debug)]
pub struct Operation {
    /// Which client (for reports).
    pub client: usize,
    /// The key.
    pub key: String,
    /// When it was invoked.
    pub call: u64,
    /// When it completed and what it answered; `None` if the outcome is
    /// unknown.
    pub outcome: Option<(u64, Output)>,
    /// What it asked.
    pub input: Input,
}

/// A key whose operations cannot be linearized.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Its operations, in invocation order.
    pub operations: Vec<Operation>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "key {:?} has no linearization of its {} operations:",
            self.key,
            self.operations.len()
        )?;
        for op in &self.operations {
            match &op.outcome {
                Some((ret, out)) => writeln!(
                    f,
                    "  client {} [{}, {}] {:?} -> {:?}",
                    op.client, op.call, ret, op.input, out
                )?,
                None => writeln!(
                    f,
                    "  client {} [{}, ?] {:?} -> unknown",
                    op.client, op.call, op.input
                )?,
            }
        }
        Ok(())
    }
}

/// Applies `input` to `state`: `None` if `output` is not what a sequential
/// store would answer, else the new state. `output` `None`: unknown outcome.
fn step(state: &Option<String>, input: &Input, output: Option<&Output>) -> Option<Option<String>> {
    match input {
        Input::Get => match output {
            None => Some(state.clone()),
            Some(Output::Value(v)) if v == state => Some(state.clone()),
            Some(_) => None,
        },
        Input::Put(value) => match output {
            None => Some(Some(value.clone())),
            Some(Output::Previous(prev)) if prev == state => Some(Some(value.clone())),
            Some(_) => None,
        },
        Input::Delete => match output {
            None => Some(None),
            Some(Output::Previous(prev)) if prev == state => Some(None),
            Some(_) => None,
        },
        Input::Cas { expected, new } => match output {
            None if state == expected => Some(Some(new.clone())),
            None => Some(state.clone()),
            Some(Output::Previous(prev)) if prev == state && state == expected => {
                Some(Some(new.clone()))
            }
            Some(Output::Mismatch(current)) if current == state && state != expected => {
                Some(state.clone())
            }
            Some(_) => None,
        },
    }
}

/// For `key`: the writes acknowledged as applied (puts, and compare-and-sets
/// that matched) and the writes with an unknown outcome. The number of
/// writes the store applied to the key must lie between the first and the
/// sum: fewer means an acknowledged write was lost, more that one was
/// applied twice.
pub fn write_bounds(history: &[Operation], key: &str) -> (u64, u64) {
    let ops = history.iter().filter(|op| op.key == key);
    let acked = ops
        .clone()
        .filter(|op| {
            matches!(op.input, Input::Put(_) | Input::Cas { .. })
                && matches!(op.outcome, Some((_, Output::Previous(_))))
        })
        .count() as u64;
    let unknown = ops
        .filter(|op| op.outcome.is_none() && matches!(op.input, Input::Put(_) | Input::Cas { .. }))
        .count() as u64;
    (acked, unknown)
}

/// Checks a whole history; the first key that fails, if any.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_key(&ops) {
            let mut operations: Vec<Operation> = ops.into_iter().cloned().collect();
            operations.sort_by_key(|op| op.call);
            return Err(Violation { key: key.to_owned(), operations });
        }
    }
    Ok(())
}

/// One key: a depth-first search over which operation takes effect next,
/// memoizing (set of operations done, state) pairs already explored.
fn check_key(ops: &[&Operation]) -> bool {
    // Every value some operation saw or expected.
    let mut mentioned: HashSet<&str> = HashSet::new();
    for op in ops {
        if let Some((
            _,
            Output::Value(Some(v)) | Output::Previous(Some(v)) | Output::Mismatch(Some(v)),
        )) = &op.outcome
        {
            mentioned.insert(v);
        }
        if let Input::Cas { expected: Some(v), .. } = &op.input {
            mentioned.insert(v);
        }
    }
    // Reads with unknown outcomes constrain nothing. Neither does a write
    // with an unknown outcome whose value nobody saw or expected: every
    // completed operation reveals the state it saw, so if such a write took
    // effect, operations with unknown outcomes overwrote it before anyone
    // looked, and none of them depended on it (none expected its value).
    // Leaving it out keeps unknown writes from multiplying the search.
    let unseen_write = |op: &Operation| match &op.input {
        Input::Put(v) | Input::Cas { new: v, .. } => !mentioned.contains(v.as_str()),
        Input::Get | Input::Delete => false,
    };
    let ops: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|op| !(op.outcome.is_none() && (op.input == Input::Get || unseen_write(op))))
        .collect();
    let n = ops.len();
    let ret = |op: &Operation| op.outcome.as_ref().map_or(u64::MAX, |(t, _)| *t);
    let required = ops.iter().filter(|op| op.outcome.is_some()).count();
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // Iterative DFS: (done set, number of completed ops done, state).
    let words = n.div_ceil(64);
    let mut stack: Vec<(Vec<u64>, usize, Option<String>)> = vec![(vec![0; words], 0, None)];
    while let Some((done, completed, state)) = stack.pop() {
        if completed == required {
            return true;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An operation may go next only if no pending operation completed
        // before it was invoked.
        let horizon =
            (0..n).filter(|&i| !is_done(i)).map(|i| ret(ops[i])).min().unwrap_or(u64::MAX);
        for i in (0..n).filter(|&i| !is_done(i)) {
            let op = ops[i];
            if op.call > horizon {
                continue;
            }
            let Some(next) = step(&state, &op.input, op.outcome.as_ref().map(|(_, out)| out))
            else {
                continue;
            };
            // An operation with an unknown outcome that would change nothing
            // here is the same as one that never took effect; trying it
            // would only multiply the states to no end.
            if op.outcome.is_none() && next == state {
                continue;
            }
            let mut now = done.clone();
            now[i / 64] |= 1 << (i % 64);
            if seen.insert((now.clone(), next.clone())) {
                stack.push((now, completed + usize::from(op.outcome.is_some()), next));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: usize,
        call: u64,
        ret: Option<u64>,
        input: Input,
        output: Option<Output>,
    ) -> Operation {
        Operation { client, key: "k".to_owned(), call, outcome: ret.zip(output), input }
    }
    fn some(v: &str) -> Option<String> {
        Some(v.to_owned())
    }
    fn put(c: usize, call: u64, ret: u64, v: &str, prev: Option<String>) -> Operation {
        op(c, call, Some(ret), Input::Put(v.to_owned()), Some(Output::Previous(prev)))
    }
    fn get(c: usize, call: u64, ret: u64, v: Option<String>) -> Operation {
        op(c, call, Some(ret), Input::Get, Some(Output::Value(v)))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            put(0, 0, 1, "a", None),
            get(1, 2, 3, some("a")),
            put(0, 4, 5, "b", some("a")),
            get(1, 6, 7, some("b")),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        let h = [put(0, 0, 1, "a", None), put(0, 2, 3, "b", some("a")), get(1, 4, 5, some("a"))];
        let violation = check(&h).unwrap_err();
        assert_eq!(violation.key, "k");
        assert!(violation.to_string().contains("no linearization"));
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either_value() {
        for seen in [None, some("a")] {
            let h = [put(0, 0, 10, "a", None), get(1, 2, 3, seen)];
            assert!(check(&h).is_ok());
        }
    }

    #[test]
    fn reads_must_agree_on_one_order_of_concurrent_writes() {
        // Two concurrent writes; one reader sees a then b, another b then a.
        let h = [
            put(0, 0, 10, "a", None),
            put(1, 0, 10, "b", None),
            get(2, 11, 12, some("b")),
            get(3, 13, 14, some("a")),
        ];
        assert!(check(&h).is_err(), "a value came back after being overwritten");
        // The previous values reported by the writes also pin the order.
        let h = [put(0, 0, 10, "a", some("b")), put(1, 0, 10, "b", some("a"))];
        assert!(check(&h).is_err(), "each write claims to follow the other");
    }

    #[test]
    fn many_unknown_compare_and_sets_that_cannot_match_stay_cheap() {
        // Each could take effect (as a no-op) anywhere: without folding
        // no-op unknowns into "never", this is 2^60 orders.
        let mut h = vec![put(0, 0, 1, "a", None)];
        for i in 0..60u64 {
            let cas = Input::Cas { expected: some("zzz"), new: format!("n{i}") };
            h.push(op(1, 2 + i, None, cas, None));
        }
        h.push(get(2, 100, 101, some("a")));
        assert!(check(&h).is_ok());
        h.push(get(2, 102, 103, some("n7")));
        assert!(check(&h).is_err(), "a compare-and-set that cannot match took effect");
    }

    #[test]
    fn many_concurrent_unknown_writes_nobody_saw_stay_cheap() {
        let mut h = vec![put(0, 0, 1, "a", None)];
        for i in 0..200u64 {
            h.push(op(1 + i as usize, 2, None, Input::Put(format!("u{i}")), None));
        }
        h.push(get(300, 10, 11, some("a")));
        h.push(put(300, 12, 13, "b", some("a")));
        assert!(check(&h).is_ok());
        // One of them seen: it must have taken effect between the two.
        h.push(get(300, 14, 15, some("u42")));
        h.push(put(300, 16, 17, "c", some("u42")));
        assert!(check(&h).is_ok());
        // Seen, but then a write reports a previous value that skips back.
        h.push(put(300, 18, 19, "d", some("b")));
        assert!(check(&h).is_err(), "a completed write reported an overwritten previous value");
    }

    #[test]
    fn an_unknown_write_only_a_compare_and_set_expected_is_still_considered() {
        // The cas matched, so the unknown write must have happened first.
        let h = [
            op(0, 0, None, Input::Put("u".to_owned()), None),
            op(
                1,
                5,
                Some(6),
                Input::Cas { expected: some("u"), new: "v".to_owned() },
                Some(Output::Previous(some("u"))),
            ),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn write_bounds_count_applied_and_unknown_writes_of_one_key() {
        let cas =
            |expected: Option<String>, new: &str| Input::Cas { expected, new: new.to_owned() };
        let h = [
            put(0, 0, 1, "a", None),
            op(0, 2, Some(3), cas(some("a"), "b"), Some(Output::Previous(some("a")))),
            op(0, 4, Some(5), cas(some("zz"), "c"), Some(Output::Mismatch(some("b")))),
            op(1, 6, None, Input::Put("d".to_owned()), None),
            op(1, 7, None, Input::Get, None),
            get(2, 8, 9, some("b")),
            Operation { key: "other".to_owned(), ..put(3, 0, 1, "x", None) },
        ];
        assert_eq!(write_bounds(&h, "k"), (2, 1));
        assert_eq!(write_bounds(&h, "other"), (1, 0));
        assert_eq!(write_bounds(&h, "none"), (0, 0));
    }

    #[test]
    fn a_value_never_written_is_rejected() {
        let h = [put(0, 0, 1, "a", None), get(1, 2, 3, some("zzz"))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_take_effect() {
        let unknown = op(0, 0, None, Input::Put("a".to_owned()), None);
        assert!(check(&[unknown.clone(), get(1, 5, 6, some("a"))]).is_ok(), "seen");
        assert!(check(&[unknown.clone(), get(1, 5, 6, None)]).is_ok(), "not seen");
        // But not both ways around once it has been seen.
        assert!(check(&[unknown, get(1, 5, 6, some("a")), get(1, 7, 8, None)]).is_err());
    }

    #[test]
    fn compare_and_set_follows_the_state() {
        let cas = |c, call, ret, expected: Option<String>, new: &str, out| {
            op(c, call, Some(ret), Input::Cas { expected, new: new.to_owned() }, Some(out))
        };
        let ok = [
            put(0, 0, 1, "a", None),
            cas(1, 2, 3, some("a"), "b", Output::Previous(some("a"))),
            get(2, 4, 5, some("b")),
        ];
        assert!(check(&ok).is_ok());
        let wrongly_succeeded =
            [put(0, 0, 1, "a", None), cas(1, 2, 3, some("x"), "b", Output::Previous(some("a")))];
        assert!(check(&wrongly_succeeded).is_err());
        let mismatch = [
            put(0, 0, 1, "a", None),
            cas(1, 2, 3, some("x"), "b", Output::Mismatch(some("a"))),
            get(2, 4, 5, some("a")),
        ];
        assert!(check(&mismatch).is_ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = get(1, 2, 3, some("zzz"));
        other.key = "other".to_owned();
        let h = [put(0, 0, 1, "a", None), get(1, 2, 3, some("a")), other];
        assert_eq!(check(&h).unwrap_err().key, "other");
    }

    /// Histories produced by a real sequential store, with each operation's
    /// interval stretched around its linearization point, are accepted; the
    /// same history with one read answered by a value nobody wrote is not.
    #[test]
    fn generated_histories_are_accepted_and_corrupted_ones_rejected() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for round in 0..200 {
            let mut state: Option<String> = None;
            let mut history = Vec::new();
            for point in 0..30u64 {
                // The operation takes effect at 10 * point; its interval
                // covers it and may overlap its neighbours'.
                let t = 10 * point + 5;
                let call = t - next(15).min(t);
                let ret = t + next(15);
                let client = next(4) as usize;
                let (input, output) = match next(3) {
                    0 => (Input::Get, Output::Value(state.clone())),
                    1 => {
                        let v = format!("v{round}-{point}");
                        let prev = state.replace(v.clone());
                        (Input::Put(v), Output::Previous(prev))
                    }
                    _ => (Input::Delete, Output::Previous(state.take())),
                };
                history.push(Operation {
                    client,
                    key: "k".into(),
                    call,
                    outcome: Some((ret, output)),
                    input,
                });
            }
            assert!(check(&history).is_ok(), "round {round}: a linearizable history was rejected");
            if let Some(read) = history.iter_mut().find(|op| op.input == Input::Get) {
                read.outcome =
                    read.outcome.take().map(|(t, _)| (t, Output::Value(some("never-written"))));
                assert!(
                    check(&history).is_err(),
                    "round {round}: a corrupted history was accepted"
                );
            }
        }
    }
}
