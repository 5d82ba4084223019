//! Shared helpers for gossip-core's scenario and property tests.

#![allow(dead_code, reason = "each test file uses a different subset")]

use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

/// The seed every property test runs from: `GOSSIP_TEST_SEED` if set, else a
/// fixed default, so runs are deterministic and a failure replays with
/// `GOSSIP_TEST_SEED=<seed> cargo test`.
pub(crate) fn seed() -> u64 {
    std::env::var("GOSSIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001)
}

/// Proptest configuration: deterministic ChaCha from [`seed`], `cases` cases,
/// no regression files. Prints the seed, which the harness shows only when
/// the test fails.
pub(crate) fn config(cases: u32) -> Config {
    let seed = seed();
    eprintln!("property test seed: {seed} (replay with GOSSIP_TEST_SEED={seed})");
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}
