//! Configuration shared by the property tests.

use proptest::test_runner::{Config, RngSeed};

/// Deterministic by default (`seed`; `PROPTEST_RNG_SEED` overrides it to
/// explore or replay), and never writes regression files into the tree.
pub(crate) fn config(cases: u32, seed: u64) -> Config {
    let mut config = Config { cases, failure_persistence: None, ..Config::default() };
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    config
}
