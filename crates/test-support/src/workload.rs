//! The key-value workload of the nemesis runs, and the recorder of the
//! history [`crate::linearizability`] checks.
//!
//! Both nemesis runs drive the same clients: the multi-process one
//! (the `tests` package's `chaos`, over `chaos-node`'s line interface) and the in-process
//! one (`tests/nemesis.rs`, through the facade). A [`Client`] draws every
//! operation from its seeded RNG: a put (4 in 10), a compare-and-set (3 in
//! 10) expecting the value the client last saw on that key (or absence,
//! one time in three), or a read (3 in 10), on one of `keys` keys
//! (`k0`, `k1`, ...). Every value written is unique (`c<client>-<n>`), so a
//! read names the write it saw. The same seed gives the same stream of
//! draws; what the operations answer, and so what compare-and-sets expect,
//! depends on the interleaving, which no seed replays.
//!
//! The harness carries each operation out its own way and says how it
//! ended, as an [`Outcome`]:
//!
//! - [`Outcome::Answered`]: the history gets the operation, completed;
//! - [`Outcome::Failed`]: the harness knows the command never ran (the
//!   node's consensus was not running yet, or the library said it was not
//!   applied: `Error::NotApplied`): the history does not get it, so a
//!   command reported not applied that took effect after all shows up as a
//!   value from nowhere;
//! - [`Outcome::Unknown`]: anything else (a timeout, a broken connection, a
//!   crash mid-call, any error that does not prove the command never ran).
//!   A write is recorded without a completion: it may take effect at any
//!   time after its invocation, or never. A read that did not answer
//!   constrains nothing and is left out. Recording a failure as unknown is
//!   always sound; recording an unknown one as failed is not, so only an
//!   answer that proves it is [`Outcome::Failed`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Rng;
use crate::kv::KvResponse;
use serde_json::Value;

use crate::linearizability::{Input, Operation, Output};

/// How an operation ended, as far as its client can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered.
    Answered(Output),
    /// It certainly never ran.
    Failed,
    /// It may have run, or may still run, or never.
    Unknown,
}

impl Outcome {
    /// The outcome of `input` from a line-interface answer: the `ok` value,
    /// or the `error` text (`crate::nodes::ok_of` splits an answer so).
    /// A write's `ok` value is a [`KvResponse`]; a value in any other shape
    /// is unknown, not failed.
    pub fn of_answer(answer: Result<Value, String>, input: &Input) -> Outcome {
        match answer {
            Ok(value) if *input == Input::Get => {
                Outcome::Answered(Output::Value(value.as_str().map(str::to_owned)))
            }
            Ok(value) => serde_json::from_value::<KvResponse>(value)
                .map_or(Outcome::Unknown, |response| Outcome::Answered(response.into())),
            Err(error) if never_ran(&error) => Outcome::Failed,
            Err(_) => Outcome::Unknown,
        }
    }
}

impl From<KvResponse> for Output {
    fn from(response: KvResponse) -> Output {
        match response {
            KvResponse::Previous(previous) => Output::Previous(previous),
            KvResponse::Mismatch(current) => Output::Mismatch(current),
        }
    }
}

/// Whether an error answer says the command never ran: the node's
/// consensus was not running yet (`chaos-node` answers so before it has
/// started), or the library said so (`Error::NotApplied`'s text).
fn never_ran(error: &str) -> bool {
    error.starts_with("starting:") || error.starts_with(NOT_APPLIED)
}

/// How `consensus::Error::NotApplied` reads.
const NOT_APPLIED: &str = "not applied within the deadline:";

/// The history of one run, with its invocation and completion times (in
/// microseconds since the recorder was made).
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<Vec<Operation>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), history: Mutex::new(Vec::new()) }
    }

    /// When the clock started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Microseconds since the clock started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records `input` on `key` by `client`, invoked at `call`, completed
    /// now as `outcome` says (see the module's rules).
    pub fn record(&self, client: usize, key: String, input: Input, call: u64, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Answered(output) => Some((self.now(), output)),
            Outcome::Failed => return,
            Outcome::Unknown if input == Input::Get => return,
            Outcome::Unknown => None,
        };
        let operation = Operation { client, key, call, outcome, input };
        self.history.lock().unwrap_or_else(|p| p.into_inner()).push(operation);
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Operation> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An operation a [`Client`] has invoked: what the harness carries out.
#[derive(Debug)]
pub struct Invocation {
    /// The key.
    pub key: String,
    /// What it asks.
    pub input: Input,
    call: u64,
}

/// One client of the workload: its RNG, the values it wrote and saw, and
/// the recorder its operations go to.
#[derive(Debug)]
pub struct Client {
    id: usize,
    rng: Rng,
    keys: u64,
    n: u64,
    last_seen: BTreeMap<String, Option<String>>,
    recorder: Arc<Recorder>,
}

impl Client {
    /// Client `id` of a run seeded `seed`, on `keys` keys.
    pub fn new(id: usize, seed: u64, keys: usize, recorder: Arc<Recorder>) -> Client {
        Client {
            id,
            rng: Rng::new(seed ^ (0x5eed_0000 + id as u64)),
            keys: keys as u64,
            n: 0,
            last_seen: BTreeMap::new(),
            recorder,
        }
    }

    /// The next operation, invoked now.
    pub fn invoke(&mut self) -> Invocation {
        let key = format!("k{}", self.rng.below(self.keys));
        self.n += 1;
        let value = format!("c{}-{}", self.id, self.n);
        let input = match self.rng.below(10) {
            0..=3 => Input::Put(value),
            4..=6 => {
                let expected = match self.rng.below(3) {
                    0 => None,
                    _ => self.last_seen.get(&key).cloned().flatten(),
                };
                Input::Cas { expected, new: value }
            }
            _ => Input::Get,
        };
        Invocation { key, input, call: self.recorder.now() }
    }

    /// Records how `invocation` ended, now, and remembers the value it left
    /// on its key, when it answered.
    pub fn complete(&mut self, invocation: Invocation, outcome: Outcome) {
        let Invocation { key, input, call } = invocation;
        if let Outcome::Answered(output) = &outcome {
            let after = match (&input, output) {
                (Input::Put(written), _) => Some(written.clone()),
                (Input::Cas { new, .. }, Output::Previous(_)) => Some(new.clone()),
                (_, Output::Value(v) | Output::Previous(v) | Output::Mismatch(v)) => v.clone(),
            };
            self.last_seen.insert(key.clone(), after);
        }
        self.recorder.record(self.id, key, input, call, outcome);
    }

    /// How long to wait after an operation that did not answer, as a real
    /// client would (drawn from the client's RNG: 50 to 149 ms).
    pub fn backoff(&mut self) -> Duration {
        Duration::from_millis(50 + self.rng.below(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store writes its answers in the shapes the line interface sends,
    /// and the workload reads them back as the checker's outputs: a misread
    /// would corrupt every history it checks.
    #[test]
    fn kv_answers_map_to_checker_outputs() {
        let some = |v: &str| Some(v.to_owned());
        let put = Input::Put("v".to_owned());
        for (response, json, output) in [
            (KvResponse::Previous(some("a")), r#"{"previous":"a"}"#, Output::Previous(some("a"))),
            (KvResponse::Previous(None), r#"{"previous":null}"#, Output::Previous(None)),
            (KvResponse::Mismatch(some("b")), r#"{"mismatch":"b"}"#, Output::Mismatch(some("b"))),
            (KvResponse::Mismatch(None), r#"{"mismatch":null}"#, Output::Mismatch(None)),
        ] {
            assert_eq!(serde_json::to_string(&response).unwrap(), json);
            let value = serde_json::from_str(json).unwrap();
            assert_eq!(Outcome::of_answer(Ok(value), &put), Outcome::Answered(output), "{json}");
        }
        let malformed = serde_json::json!({"other": 1});
        assert_eq!(Outcome::of_answer(Ok(malformed), &put), Outcome::Unknown);
        let read = Outcome::of_answer(Ok(serde_json::json!("x")), &Input::Get);
        assert_eq!(read, Outcome::Answered(Output::Value(some("x"))));
        let absent = Outcome::of_answer(Ok(Value::Null), &Input::Get);
        assert_eq!(absent, Outcome::Answered(Output::Value(None)));
        let not_started = Err("starting: consensus is not running yet".to_owned());
        assert_eq!(Outcome::of_answer(not_started, &put), Outcome::Failed);
        assert_eq!(Outcome::of_answer(Err("no leader".to_owned()), &put), Outcome::Unknown);
        let not_applied = consensus::Error::NotApplied("no free request slot".to_owned());
        assert_eq!(Outcome::of_answer(Err(not_applied.to_string()), &put), Outcome::Failed);
        let timeout = consensus::Error::Timeout("no answer".to_owned());
        assert_eq!(Outcome::of_answer(Err(timeout.to_string()), &put), Outcome::Unknown);
    }

    #[test]
    fn only_answered_operations_and_unknown_writes_are_recorded() {
        let recorder = Arc::new(Recorder::new());
        let put = || Input::Put("v".to_owned());
        recorder.record(0, "k".to_owned(), put(), 1, Outcome::Failed);
        recorder.record(0, "k".to_owned(), Input::Get, 2, Outcome::Unknown);
        recorder.record(0, "k".to_owned(), put(), 3, Outcome::Unknown);
        recorder.record(0, "k".to_owned(), Input::Get, 4, Outcome::Answered(Output::Value(None)));
        let history = recorder.history();
        let calls: Vec<(u64, bool)> =
            history.iter().map(|op| (op.call, op.outcome.is_some())).collect();
        assert_eq!(calls, vec![(3, false), (4, true)]);
    }

    #[test]
    fn a_seed_replays_the_operations_and_compare_and_sets_expect_what_was_seen() {
        let stream = |seed| {
            let mut client = Client::new(1, seed, 3, Arc::new(Recorder::new()));
            (0..64)
                .map(|_| {
                    let invocation = client.invoke();
                    let result = (invocation.key.clone(), invocation.input.clone());
                    client.complete(invocation, Outcome::Unknown);
                    result
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(stream(7), stream(7));
        assert_ne!(stream(7), stream(8));

        let recorder = Arc::new(Recorder::new());
        let mut client = Client::new(0, 7, 1, recorder.clone());
        let mut written = None;
        let mut expectations = 0;
        for _ in 0..64 {
            let invocation = client.invoke();
            if let Input::Cas { expected: Some(expected), .. } = &invocation.input {
                assert_eq!(Some(expected), written.as_ref(), "a CAS expects the last value seen");
                expectations += 1;
            }
            let output = match &invocation.input {
                Input::Get => Output::Value(written.clone()),
                _ => Output::Previous(written.clone()),
            };
            if let Input::Put(value) | Input::Cas { new: value, .. } = &invocation.input {
                written = Some(value.clone());
            }
            client.complete(invocation, Outcome::Answered(output));
        }
        assert!(expectations > 0, "no compare-and-set expected a value");
        assert_eq!(recorder.history().len(), 64);
    }
}
