//! Whole-cluster runs: determinism, invariants under faults, convergence
//! after faults stop.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::time::Duration;

use gossip_core::{ClusterId, MemberStatus};
use gossip_sim::{NetConfig, Sim};
use gossip_swim::Config;

fn seed(default: u64) -> u64 {
    std::env::var("GOSSIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Prints the seed and the replay command if the test panics while alive.
struct SeedGuard(u64, &'static str);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "failing seed {0}: replay with GOSSIP_TEST_SEED={0} cargo test -p gossip-sim --test runs {1}",
                self.0, self.1
            );
        }
    }
}

fn config(n: usize) -> Config {
    Config::lan(ClusterId::from_name("sim-tests"), n)
}

fn all_alive(sim: &Sim) -> bool {
    let running: Vec<usize> = (0..sim.len()).filter(|i| sim.is_running(*i)).collect();
    running.iter().all(|&o| {
        running
            .iter()
            .all(|&s| sim.view(o, s) == Some(MemberStatus::Alive))
    })
}

#[test]
fn the_same_seed_gives_the_same_run_bit_for_bit() {
    let run = |s: u64| {
        let mut sim = Sim::new(
            12,
            config(12),
            NetConfig {
                loss: 0.05,
                duplicate: 0.01,
                ..NetConfig::default()
            },
            s,
        );
        sim.join_through(0);
        sim.run_for(Duration::from_secs(20));
        sim.crash(5);
        sim.pause(7, Duration::from_secs(3));
        sim.run_for(Duration::from_secs(40));
        sim.trace_hash()
    };
    let s = seed(11);
    let _guard = SeedGuard(s, "the_same_seed");
    assert_eq!(run(s), run(s));
    assert_ne!(run(s), run(s + 1));
}

#[test]
fn a_cluster_joining_through_one_seed_converges() {
    let s = seed(12);
    let _guard = SeedGuard(s, "a_cluster_joining");
    let mut sim = Sim::new(50, config(50), NetConfig::default(), s);
    sim.join_through(0);
    let took = sim
        .run_while(Duration::from_secs(60), all_alive)
        .expect("no full view within 60 s");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// Many short runs under loss, duplication, reordering, a partition and a
/// pause: incarnations never go back, nobody reachable is declared dead
/// while the faults are within bounds, and everything converges after.
#[test]
fn seeds_under_faults_keep_the_invariants_and_converge_after() {
    let first = seed(1000);
    for s in first..first + 48 {
        let _guard = SeedGuard(s, "seeds_under_faults");
        let n = 8 + (s % 9) as usize;
        let net = NetConfig {
            loss: 0.02 * (s % 6) as f64,
            duplicate: 0.01,
            ..NetConfig::default()
        };
        let mut sim = Sim::new(n, config(n), net, s);
        sim.converge_instantly();
        sim.run_for(Duration::from_secs(30));
        // A node stalls for less than the suspicion timeout.
        sim.pause(s as usize % n, Duration::from_millis(1500));
        sim.run_for(Duration::from_secs(60));
        let events = sim.take_events();
        let deaths: Vec<_> = events
            .iter()
            .filter(|e| matches!(e.event, gossip_swim::Event::Failed { .. }))
            .collect();
        assert!(deaths.is_empty(), "seed {s}: false deaths {deaths:?}");

        // A partition long enough to declare the halves dead, then a heal.
        let (left, right): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == 0);
        sim.partition(&left, &right);
        sim.run_for(Duration::from_secs(90));
        sim.heal();
        sim.set_net(NetConfig::default());
        let took = sim.run_while(Duration::from_secs(180), all_alive);
        assert!(
            took.is_some(),
            "seed {s}: no convergence within 180 s of the heal"
        );
        assert!(
            sim.violations().is_empty(),
            "seed {s}: {:?}",
            sim.violations()
        );
    }
}
