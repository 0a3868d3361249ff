//! An exhaustive, deterministic breadth-first explorer.
//!
//! Every state reached from the initial ones is visited once (a 64-bit
//! fingerprint stands for it), its properties are checked, and its
//! successors are queued, level by level, until no new state is found or a
//! bound is reached. Breadth first, so the first violation found of each
//! property has a shortest trace. Only fingerprints and parent fingerprints
//! are kept for visited states; a trace is rebuilt by replaying the model
//! from the initial state along the parent chain.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// A transition system to explore.
pub(crate) trait Model {
    /// One state of the whole system.
    type State: Clone + Hash + Eq + Debug;
    /// One step that may be taken from a state.
    type Action: Clone + Debug;

    /// The initial states.
    fn init(&self) -> Vec<Self::State>;
    /// The steps that may be taken from `state` (some may turn out to
    /// change nothing: `next` answers `None` for those).
    fn actions(&self, state: &Self::State, out: &mut Vec<Self::Action>);
    /// The state after `action`, or `None` if it is not enabled or changes
    /// nothing.
    fn next(&self, state: &Self::State, action: &Self::Action) -> Option<Self::State>;
    /// One line of a counterexample trace: `action` taken from `before`.
    fn describe(&self, before: &Self::State, action: &Self::Action) -> String;
    /// The properties, each a name and a check that answers why `state`
    /// violates it.
    fn properties(&self) -> Vec<Property<Self::State>>;
}

/// A named property checked in every reachable state.
pub(crate) struct Property<S> {
    /// Short name, used to ask for or report a violation.
    pub(crate) name: &'static str,
    /// Why `state` violates the property, or `None` if it holds.
    pub(crate) check: fn(&S) -> Option<String>,
}

/// Limits of one exploration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Stop after this many distinct states.
    pub(crate) max_states: usize,
    /// Do not expand states deeper than this many steps.
    pub(crate) max_depth: usize,
    /// Stop as soon as every property has a counterexample (or this one has).
    pub(crate) stop_when_found: Option<&'static str>,
}

/// A property violation with the trace that leads to it.
#[derive(Debug)]
pub(crate) struct Violation {
    /// The property violated.
    pub(crate) property: &'static str,
    /// Why the last state violates it.
    pub(crate) why: String,
    /// The steps from an initial state, one readable line each.
    pub(crate) trace: Vec<String>,
}

/// What an exploration did and found.
#[derive(Debug)]
pub(crate) struct Report {
    /// Distinct states visited.
    pub(crate) states: usize,
    /// Transitions taken (including ones to known states).
    pub(crate) transitions: u64,
    /// The deepest level expanded.
    pub(crate) depth: usize,
    /// True if every reachable state within `max_depth` was visited; false
    /// if `max_states` cut the exploration short.
    pub(crate) complete: bool,
    /// True if some state at `max_depth` had successors that were not
    /// explored.
    pub(crate) depth_cut: bool,
    /// Wall time.
    pub(crate) elapsed: Duration,
    /// New states found at each depth.
    pub(crate) levels: Vec<usize>,
    /// The first (shortest) violation of each violated property.
    pub(crate) violations: Vec<Violation>,
}

impl Report {
    /// The violation of `property`, if one was found.
    pub(crate) fn violation(&self, property: &str) -> Option<&Violation> {
        self.violations.iter().find(|v| v.property == property)
    }

    /// A short summary line.
    pub(crate) fn summary(&self) -> String {
        let bound = match (self.complete, self.depth_cut) {
            (false, _) => "state bound reached",
            (true, true) => "depth bound reached",
            (true, false) => "exhausted",
        };
        format!(
            "{} states, {} transitions, depth {}, {bound}, {:.1} s",
            self.states,
            self.transitions,
            self.depth,
            self.elapsed.as_secs_f64()
        )
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "property `{}` violated: {}", self.property, self.why)?;
        for (i, step) in self.trace.iter().enumerate() {
            writeln!(f, "  {:>3}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// Explores `model` breadth first within `bounds`.
pub(crate) fn explore<M: Model>(model: &M, bounds: Bounds) -> Report {
    let started = Instant::now();
    let properties = model.properties();
    // Fingerprint -> parent fingerprint (an initial state is its own parent).
    let mut seen: HashMap<u64, u64, BuildFx> = HashMap::with_hasher(BuildFx);
    let mut found: Vec<(usize, u64, String)> = Vec::new();
    let mut frontier: Vec<M::State> = Vec::new();
    for state in model.init() {
        let fp = fingerprint(&state);
        if seen.insert(fp, fp).is_none() {
            frontier.push(state);
        }
    }
    let mut transitions = 0u64;
    let mut depth = 0;
    let mut complete = true;
    let mut depth_cut = false;
    let mut actions = Vec::new();
    let mut levels = vec![frontier.len()];
    'levels: while !frontier.is_empty() {
        let mut next_level = Vec::new();
        for state in frontier.drain(..) {
            let fp = fingerprint(&state);
            let mut broken = false;
            for (i, property) in properties.iter().enumerate() {
                if let Some(why) = (property.check)(&state) {
                    broken = true;
                    if !found.iter().any(|(p, _, _)| *p == i) {
                        found.push((i, fp, why));
                    }
                }
            }
            let done = match bounds.stop_when_found {
                Some(name) => found.iter().any(|(p, _, _)| properties[*p].name == name),
                None => found.len() == properties.len(),
            };
            if done {
                break 'levels;
            }
            // A violating state is reported, not explored further.
            if broken {
                continue;
            }
            actions.clear();
            model.actions(&state, &mut actions);
            if depth >= bounds.max_depth {
                if actions.iter().any(|a| model.next(&state, a).is_some()) {
                    depth_cut = true;
                }
                continue;
            }
            for action in &actions {
                let Some(after) = model.next(&state, action) else { continue };
                transitions += 1;
                let after_fp = fingerprint(&after);
                if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(after_fp) {
                    slot.insert(fp);
                    next_level.push(after);
                    if seen.len() >= bounds.max_states {
                        complete = false;
                        break 'levels;
                    }
                }
            }
        }
        if next_level.is_empty() {
            break;
        }
        levels.push(next_level.len());
        depth += 1;
        frontier = next_level;
    }
    let violations = found
        .into_iter()
        .map(|(p, fp, why)| Violation {
            property: properties[p].name,
            why,
            trace: trace(model, &seen, fp),
        })
        .collect();
    Report {
        states: seen.len(),
        transitions,
        depth,
        complete,
        depth_cut,
        elapsed: started.elapsed(),
        levels,
        violations,
    }
}

/// Rebuilds the steps from an initial state to the state `target`.
fn trace<M: Model>(model: &M, seen: &HashMap<u64, u64, BuildFx>, target: u64) -> Vec<String> {
    let mut chain = vec![target];
    let mut at = target;
    while let Some(&parent) = seen.get(&at) {
        if parent == at {
            break;
        }
        chain.push(parent);
        at = parent;
    }
    chain.reverse();
    let Some(mut state) = model.init().into_iter().find(|s| fingerprint(s) == chain[0]) else {
        return vec!["(initial state not found)".to_owned()];
    };
    let mut lines = Vec::new();
    let mut actions = Vec::new();
    for &want in &chain[1..] {
        actions.clear();
        model.actions(&state, &mut actions);
        let step = actions.iter().find_map(|a| {
            let after = model.next(&state, a)?;
            (fingerprint(&after) == want).then_some((a.clone(), after))
        });
        match step {
            Some((action, after)) => {
                lines.push(model.describe(&state, &action));
                state = after;
            }
            None => {
                lines.push("(trace lost: a fingerprint collision?)".to_owned());
                break;
            }
        }
    }
    lines
}

/// The 64-bit fingerprint of a state.
pub(crate) fn fingerprint<T: Hash>(value: &T) -> u64 {
    let mut hasher = Fx::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A fast hasher with a final mix (states are hashed once each; the map of
/// fingerprints hashes only `u64`s).
#[derive(Default)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        // splitmix64's finalizer, so that nearby states spread.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Builds [`Fx`] hashers for the map of fingerprints.
#[derive(Clone, Copy, Default)]
pub(crate) struct BuildFx;

impl std::hash::BuildHasher for BuildFx {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two counters that count up to 3; "both at 3" is the bad state.
    struct Counters;

    impl Model for Counters {
        type State = (u8, u8);
        type Action = bool;
        fn init(&self) -> Vec<(u8, u8)> {
            vec![(0, 0)]
        }
        fn actions(&self, _: &(u8, u8), out: &mut Vec<bool>) {
            out.extend([true, false]);
        }
        fn next(&self, s: &(u8, u8), first: &bool) -> Option<(u8, u8)> {
            match (*first, s) {
                (true, (a, b)) if *a < 3 => Some((a + 1, *b)),
                (false, (a, b)) if *b < 3 => Some((*a, b + 1)),
                _ => None,
            }
        }
        fn describe(&self, _: &(u8, u8), first: &bool) -> String {
            if *first { "first".to_owned() } else { "second".to_owned() }
        }
        fn properties(&self) -> Vec<Property<(u8, u8)>> {
            vec![Property {
                name: "not both",
                check: |s| (*s == (3, 3)).then(|| "both at 3".to_owned()),
            }]
        }
    }

    #[test]
    fn finds_a_shortest_trace_and_counts_states() {
        let unbounded = Bounds { max_states: 1000, max_depth: 100, stop_when_found: None };
        let report = explore(&Counters, unbounded);
        let violation = report.violation("not both").expect("found");
        assert_eq!(violation.trace.len(), 6);
        assert_eq!(violation.trace.iter().filter(|s| *s == "first").count(), 3);
        // All 16 states are reachable; (3, 3) is found but not expanded.
        assert_eq!(report.states, 16);
        assert!(report.complete);
        assert!(!report.depth_cut);

        let shallow = Bounds { max_depth: 5, ..unbounded };
        let report = explore(&Counters, shallow);
        assert!(report.violations.is_empty());
        assert!(report.depth_cut);
        // States within 5 steps of (0, 0): a + b <= 5, all but (3, 3).
        assert_eq!(report.states, 15);
    }
}
