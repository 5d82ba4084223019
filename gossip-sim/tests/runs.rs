//! Whole-cluster runs: determinism, invariants under faults, convergence
//! after faults stop.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::time::Duration;

use gossip_core::{ClusterId, Incarnation, Refusal, Refusals};
use gossip_sim::{NetConfig, Sim, scenarios};
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
        .run_while(Duration::from_secs(60), gossip_sim::scenarios::converged)
        .expect("no full view within 60 s");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

/// Runs `scenarios::faults` (ten simulated minutes under loss, duplication,
/// reordering, two stalls and a partition) for seeds `offset..offset + 64`
/// after the base seed: incarnations never go back, nobody reachable is
/// declared dead while the faults are within bounds, and everything
/// converges after the heal. Four such tests make the CI tier of 256 seeds,
/// split so the test runner can spread them over the cores;
/// `cargo xtask sim sweep --rng-seeds 10000` runs many more.
fn fault_seeds(offset: u64) {
    let first = seed(0) + offset;
    for s in first..first + 64 {
        let _guard = SeedGuard(s, "fault_seeds");
        if let Err(failure) = gossip_sim::scenarios::faults(s) {
            panic!(
                "seed {s}: {failure}\n(this seed alone: cargo xtask sim sweep --first-rng-seed {s} --rng-seeds 1)"
            );
        }
    }
}

#[test]
fn fault_seeds_0_to_63_keep_the_invariants_and_converge() {
    fault_seeds(0);
}

#[test]
fn fault_seeds_64_to_127_keep_the_invariants_and_converge() {
    fault_seeds(64);
}

#[test]
fn fault_seeds_128_to_191_keep_the_invariants_and_converge() {
    fault_seeds(128);
}

#[test]
fn fault_seeds_192_to_255_keep_the_invariants_and_converge() {
    fault_seeds(192);
}

/// A `falsepos` spell that ends in a false death unless a declarer waits
/// while its input lags by more than half a probe timeout (64 members, 1%
/// loss, seed 81, one minute): member 60 stalls 5.96 s, and member 50,
/// whose input is handled 1.02 s late from a second into that stall, would
/// declare it with member 60's refutation still queued.
#[test]
fn a_stall_declared_by_a_member_whose_input_lagged_is_no_death_now() {
    let mut params = scenarios::Params::new(64, 1);
    params.first_rng_seed = 81;
    params.loss = 0.01;
    params.pair_round_trip = Some((Duration::from_millis(10), Duration::from_millis(200)));
    let run = scenarios::falsepos(&params, 1);
    assert_eq!(
        run.false_deaths_lifeguard, 0,
        "(this seed alone: cargo xtask sim falsepos --nodes 64 --first-rng-seed 81 --rng-seeds 1 --loss 0.01 --rtt-ms 10,200 --periods 60)"
    );
}

/// Fault-tier seeds that once ended in a false death, kept as regressions:
/// 238, a slow node that never probed its suspect again before the
/// suspicion ran out, and 271, a refutation that reached every node but
/// one. Both are answered by pinging a suspect with its suspicion (when it
/// speaks to us, and as a last call before it dies).
#[test]
fn fault_seeds_that_once_failed_keep_the_invariants() {
    for s in [238, 271] {
        if let Err(failure) = gossip_sim::scenarios::faults(s) {
            panic!(
                "seed {s}: {failure}\n(this seed alone: cargo xtask sim sweep --first-rng-seed {s} --rng-seeds 1)"
            );
        }
    }
}

/// The informed curve `--plot` draws starts at the source alone, never
/// falls, and ends with everyone; by the model's own bound, the model's
/// curve leaves less than one member uninformed.
#[test]
fn the_informed_curve_rises_from_one_member_to_all() {
    let params = gossip_sim::scenarios::Params::new(50, 2);
    let run = gossip_sim::scenarios::disseminate(&params);
    assert_eq!(run.incomplete, 0);
    assert_eq!(run.informed.first(), Some(&(0.0, 1.0 / 50.0)));
    assert_eq!(run.informed.last().map(|p| p.1), Some(1.0));
    assert!(
        run.informed
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0)
    );
    let by_bound = run
        .model_informed
        .iter()
        .find(|p| p.0 >= run.model_periods_to_all)
        .map(|p| p.1);
    assert!(
        by_bound.is_some_and(|x| x >= 1.0 - 1.0 / 50.0),
        "{:?}",
        run.model_informed
    );
}

/// SWIM's model counts the first detection in the detector's own protocol
/// periods, the failed one included; the time from the crash adds the wait
/// for that detector's first probe (less than a period) and takes away what
/// is left of the failed probe's period when it is concluded early (less
/// than a period).
#[test]
fn first_detection_counts_whole_periods_near_the_swim_model() {
    let params = gossip_sim::scenarios::Params::new(32, 40);
    let run = gossip_sim::scenarios::detect(&params);
    assert_eq!((run.undetected, run.false_deaths), (0, 0));
    let model = std::f64::consts::E / (std::f64::consts::E - 1.0);
    assert!(
        (run.first_detection_rounds - model).abs() < 0.25 * model,
        "{} rounds against the model's {model}, seeds {} to {}",
        run.first_detection_rounds,
        params.first_rng_seed,
        params.first_rng_seed + params.rng_seeds - 1
    );
    let offset = run.first_detection_periods - run.first_detection_rounds;
    assert!(
        (-1.0..1.0).contains(&offset),
        "{offset} periods off the rounds, seeds {} to {}",
        params.first_rng_seed,
        params.first_rng_seed + params.rng_seeds - 1
    );
}

#[test]
fn a_key_written_in_a_quiet_cluster_reaches_most_nodes_at_once_and_all_within_two_periods() {
    // The write rides the owner's immediate push and the pushes of the
    // nodes it reaches; those that no push reaches get it on the next probe
    // to or from them (the probe interval is 1 s). The other way round, the
    // write waits out the push interval before it goes anywhere.
    for s in [seed(1), seed(2), seed(3)] {
        let _guard = SeedGuard(s, "a_key_written");
        let n = 16;
        let mut swim = config(n);
        swim.push_pull_interval = None;
        let mut sim = Sim::new(n, swim, NetConfig::default(), s);
        sim.converge_instantly();
        sim.run_for(Duration::from_secs(30));
        let owner = sim.id(1).unwrap();
        sim.set(1, "bench", b"value");
        let holders = |sim: &Sim| {
            (0..n)
                .filter(|&i| {
                    sim.replica(i)
                        .is_some_and(|r| r.state().kv().get(&owner, "bench").is_some())
                })
                .count()
        };
        sim.run_for(Duration::from_millis(100));
        assert!(
            holders(&sim) * 4 >= n * 3,
            "seed {s}: {} of {n} nodes within 100 ms",
            holders(&sim)
        );
        let took = sim
            .run_while(Duration::from_secs(10), |sim| holders(sim) == n)
            .expect("the key never reached everyone");
        assert!(took <= Duration::from_secs(2), "seed {s}: took {took:?}");
    }
}

/// Every node of a cluster restarts, all at once and in waves held dead by
/// the others, with and without data directories: no member is left held
/// dead anywhere, and all are alive everywhere within twice the
/// anti-entropy backstop.
#[test]
fn every_kind_of_mass_restart_converges_with_no_member_left_dead() {
    use gossip_sim::scenarios::{Params, RestartKind, restart};
    let mut params = Params::new(30, 1);
    params.first_rng_seed = seed(1);
    let backstop = gossip_member::ReplicaConfig::new(params.swim.cluster).sync_interval;
    for kind in [RestartKind::AllAtOnce, RestartKind::Rolling] {
        for data_dir in [true, false] {
            let r = restart(&params, kind, data_dir, Duration::from_secs(600));
            let case = format!(
                "{kind:?}, data_dir={data_dir}, rng seed {}",
                params.first_rng_seed
            );
            assert_eq!(r.wrongly_dead, 0, "{case}: {r:?}");
            let took = r
                .all_alive_seconds
                .unwrap_or_else(|| panic!("{case}: never all alive: {r:?}"));
            assert!(
                took <= 2.0 * backstop.as_secs_f64(),
                "{case}: all alive after {took} s"
            );
        }
    }
}

#[test]
fn an_honest_cluster_under_faults_refuses_no_claim_but_stale_ones() {
    // Loss, a partition and its heal, a crash, restarts with and without a
    // data directory, writes on both sides: every claim an honest member
    // passes on is signed as its maker signed it, and every owner delta
    // reaches the state its owner signed. Only late rumors are refused, as
    // stale.
    let s = seed(7);
    let _guard = SeedGuard(s, "an_honest_cluster");
    let n = 24;
    let mut swim = config(n);
    swim.push_pull_interval = None;
    let net = NetConfig {
        loss: 0.05,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(n, swim, net, s);
    sim.join_through(0);
    sim.run_for(Duration::from_secs(20));
    for i in 0..n {
        sim.set(i, "k", b"v");
    }
    sim.run_for(Duration::from_secs(5));
    let (left, right): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| *i < n / 2);
    sim.partition(&left, &right);
    for i in 0..6 {
        sim.set(i, "k2", b"w");
    }
    sim.run_for(Duration::from_secs(40));
    sim.heal();
    sim.crash(3);
    sim.run_for(Duration::from_secs(20));
    sim.restart(3, Incarnation::new(9), 0);
    sim.restart_without_data_dir(5, 0);
    sim.run_for(Duration::from_secs(60));
    let mut refused = Refusals::default();
    for i in 0..n {
        let replica = sim.replica(i).expect("every node runs");
        refused += replica.swim().stats().refused;
        refused += replica.stats().claims_refused;
    }
    for (reason, count) in refused.iter() {
        if reason != Refusal::Stale {
            assert_eq!(
                count, 0,
                "seed {s}: {count} honest claims refused as {reason}"
            );
        }
    }
}

/// Two halves of 50 apart for two hours have forgotten each other (the
/// departed horizon is an hour); once the network heals, the seeds, which
/// every node holds, make them one cluster again within a minute.
#[test]
fn a_two_hour_partition_of_two_halves_of_fifty_heals_within_a_minute() {
    let s = seed(41);
    let _guard = SeedGuard(s, "a_two_hour_partition");
    let mut params = scenarios::Params::new(100, 1);
    params.first_rng_seed = s;
    let healed = scenarios::partition(&params, Duration::from_secs(7200));
    assert_eq!(healed.incomplete, 0, "seed {s}: never healed");
    assert!(
        healed.heal_seconds <= 60.0,
        "seed {s}: healed {} s after the network",
        healed.heal_seconds
    );
}

/// Weighted selection in a whole cluster: a fifth of the pushes cross zones,
/// and a member of weight 3 gets about three times the pushes of one of
/// weight 1 in its zone.
#[test]
fn weighted_selection_keeps_its_shares_in_a_whole_cluster() {
    let s = seed(43);
    let _guard = SeedGuard(s, "weighted_selection");
    let mut params = scenarios::Params::new(45, 1);
    params.first_rng_seed = s;
    let shares = scenarios::weighted(&params, 0.2, 60);
    assert!(shares.pushes > 1_000, "seed {s}: {} pushes", shares.pushes);
    let cross = shares.measured_cross_zone_share;
    assert!(
        (cross - 0.2).abs() < 0.03,
        "seed {s}: cross-zone share {cross}"
    );
    let ratio = shares.weight_3_over_weight_1;
    assert!(
        (2.3..3.3).contains(&ratio),
        "seed {s}: weight ratio {ratio}"
    );
}

/// Halves apart past the departed horizon forget each other in SWIM's
/// table and in the sync's state alike: no replica hands a collected
/// member's departure back to one that has collected it (a ghost passed
/// back and forth would never be collected).
#[test]
fn halves_apart_past_the_departed_horizon_leave_no_ghost() {
    let s = seed(44);
    let _guard = SeedGuard(s, "halves_apart");
    let n = 10;
    let mut sim = Sim::new(n, config(n), NetConfig::default(), s);
    sim.converge_instantly();
    sim.run_for(Duration::from_secs(3));
    let (left, right): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == 0);
    sim.partition(&left, &right);
    sim.run_for(Duration::from_secs(3 * 3600 / 2));
    for i in 0..n {
        let replica = sim.replica(i).expect("every node runs");
        let held = replica.swim().members().len();
        let synced = replica.state().members().count();
        assert_eq!(
            (held, synced),
            (n / 2, n / 2),
            "seed {s}: node {i} holds a ghost"
        );
    }
}

#[test]
fn a_killed_process_is_dead_everywhere_within_three_periods_and_a_lost_host_after_the_patience() {
    let mut params = scenarios::Params::new(32, 10);
    params.first_rng_seed = seed(1);
    let _guard = SeedGuard(params.first_rng_seed, "a_killed_process");
    params.failure = scenarios::Failure::ProcessCrash;
    let killed = scenarios::detect(&params);
    assert_eq!((killed.undetected, killed.false_deaths), (0, 0));
    assert!(
        killed.all_know_dead_periods <= 3.0,
        "{} periods",
        killed.all_know_dead_periods
    );
    params.failure = scenarios::Failure::HostLoss;
    let lost = scenarios::detect(&params);
    assert_eq!((lost.undetected, lost.false_deaths), (0, 0));
    let patience = params.swim.stall_patience.as_secs_f64() / params.interval_seconds();
    assert!(
        lost.all_know_dead_samples.iter().all(|p| *p >= patience),
        "{:?}",
        lost.all_know_dead_samples
    );
}

#[test]
fn stalls_up_to_the_patience_on_mixed_round_trips_and_lossy_links_kill_no_one() {
    for loss in [0.01, 0.05] {
        let mut params = scenarios::Params::new(32, 1);
        params.first_rng_seed = seed(3);
        let _guard = SeedGuard(params.first_rng_seed, "stalls_up_to_the_patience");
        params.loss = loss;
        params.pair_round_trip = Some((Duration::from_millis(10), Duration::from_millis(200)));
        let run = scenarios::falsepos(&params, 3);
        assert_eq!(run.false_deaths_lifeguard, 0, "loss {loss}");
        assert_eq!(run.false_deaths_fixed_timeout, 0, "loss {loss}");
        assert!(
            run.stalled_suspicions_per_node_hour_lifeguard > 0.0,
            "the stalls raised no suspicion at all: loss {loss}"
        );
    }
}
