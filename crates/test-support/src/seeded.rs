//! Seeded randomness: one small generator, and seeds that are printed and
//! can be replayed through an environment variable.

use std::time::Duration;

/// xorshift64*: small, fast, and the same sequence for the same seed on
/// every machine. Not for anything but tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; it is mixed so that nearby seeds
    /// give unrelated sequences).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration from `low` to `high` milliseconds, both included.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }

    /// One of `items`, or `None` if there are none.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize].clone())
    }
}

/// The seed of a randomized test: the one in the environment variable
/// `var` (a replay), else a fresh one. Printed either way, with how to
/// replay it.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = parse(var).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    eprintln!("seed {seed} (replay with {var}={seed})");
    seed
}

/// The seeds of a test that runs a fixed set of them: the one in the
/// environment variable `var` (a replay), else `fixed`. Printed, with how
/// to replay one.
pub fn seeds_from_env(var: &str, fixed: &[u64]) -> Vec<u64> {
    let seeds = parse(var).map_or_else(|| fixed.to_vec(), |seed| vec![seed]);
    eprintln!("seeds {seeds:?} (replay one with {var}=<seed>)");
    seeds
}

fn parse(var: &str) -> Option<u64> {
    let value = std::env::var(var).ok()?;
    Some(value.trim().parse().unwrap_or_else(|e| panic!("{var}={value:?} is not a seed: {e}")))
}

/// proptest's configuration for `cases` cases: deterministic by default
/// (`seed`; `PROPTEST_RNG_SEED` overrides it to explore or replay), and
/// never writing regression files into the tree.
#[cfg(feature = "proptest")]
pub fn proptest_config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let mut config = Config { cases, failure_persistence: None, ..Config::default() };
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let first: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let again: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(first, again);
        assert!(first.iter().all(|&n| n < 10));
        assert!(first.iter().any(|&n| n != first[0]), "{first:?}");
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
        let d = Rng::new(3).millis(100, 200);
        assert!((100..=200).contains(&(d.as_millis() as u64)), "{d:?}");
    }
}
