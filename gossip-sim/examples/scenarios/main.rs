//! Runs a simulation scenario and prints its figures.
//!
//! ```text
//! cargo xtask sim detect --nodes 1000 --rng-seeds 20 [--loss 0.01] [--json] [--plot detection.svg]
//! cargo xtask sim disseminate --nodes 1000 --rng-seeds 20 [--plot informed.svg]
//! cargo xtask sim load --nodes 100,2000 --rng-seeds 3
//! cargo xtask sim bootstrap --nodes 500 --rng-seeds 3
//! cargo xtask sim disseminate --nodes 100,1000,10000 --fanout 1,2,3,4 --rng-seeds 5 --plot rounds.svg   (rounds to everyone beside log_F(N) and the push-gossip model)
//! cargo xtask sim weighted --nodes 90 --rng-seeds 3 --periods 300 --cross-zone-share 0.2   (where weighted peer selection sends pushes: the cross-zone share and the weights)
//! cargo xtask sim partition --nodes 100 --rng-seeds 3 --partition-s 7200 --json   (split for two hours; heal_s: from the network's healing to one whole view)
//! cargo xtask sim sweep --rng-seeds 10000   (the fault tier over many seeds; --nodes is ignored)
//! cargo xtask sim sweep --first-rng-seed 238 --rng-seeds 1   (one seed of it again)
//! cargo xtask sim detect --nodes 64 --rng-seeds 20 --failure process   (a killed process whose host answers with ICMP; `host`, the default, answers nothing)
//! cargo xtask sim falsepos --nodes 100 --rng-seeds 2 --loss 0.05 --periods 600   (10 minutes)
//! cargo xtask sim falsepos --nodes 64 --rng-seeds 3 --loss 0.01 --rtt-ms 10,200 --periods 600   (round trips from 10 to 200 ms between pairs)
//! cargo xtask sim memory --nodes 1000,10000   (resident memory of a converged cluster, per member per view)
//! cargo xtask sim memory --nodes 1000 --join --periods 60   (the same, 60 s after all joined through one seed)
//! cargo xtask sim restart --nodes 1000 --rng-seeds 1 --periods 600 --json   (every node restarted, all at once and rolling, with and without data directories; all alive within --periods s)
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a measurement tool: it prints, and reports its own wall time"
)]

mod plot;

use std::time::{Duration, Instant};

use gossip_sim::scenarios::{self, Params};
use gossip_sim::{NetConfig, Sim};

/// mimalloc rather than the system allocator: a simulation of thousands of
/// nodes is millions of small table nodes, for which glibc's malloc held
/// more than a third more resident memory (153 against 112 bytes per member
/// per view at 4,000 nodes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident memory (Linux), in bytes; 0 where unknown.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| {
        eprintln!("usage: scenarios <detect|disseminate|load|bootstrap|partition|falsepos|restart|weighted|memory|sweep> [--nodes N,..] [--rng-seeds S] [--first-rng-seed F] [--loss P] [--plot FILE.svg] [--periods P] [--partition-s S] [--fanout F,.. (disseminate: rounds)] [--cross-zone-share S (weighted)] [--suspicion-mult M] [--confirmations K] [--failure process|host (detect, falsepos)] [--rtt-ms MIN,MAX (round trips by pair)] [--stall-patience-ms MS] [--join (memory: after a real join)] [--case NAME (restart: one case)] [--json]");
        std::process::exit(2);
    });
    let (mut nodes, mut seeds, mut loss, mut periods, mut json) =
        (vec![100usize], 5u64, 0.0f64, 60u32, false);
    let mut suspicion_mult = None;
    let mut confirmations = None;
    let mut first_seed = None;
    let mut plot_to: Option<String> = None;
    let mut join = false;
    let mut case: Option<String> = None;
    let mut partition_s: Option<u64> = None;
    let mut fanouts: Vec<usize> = Vec::new();
    let mut cross_zone_share = 0.2;
    let mut failure = scenarios::Failure::HostLoss;
    let mut pair_round_trip = None;
    let mut stall_patience = None;
    let mut rounds_table: Vec<(usize, scenarios::Rounds)> = Vec::new();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--nodes" => nodes = value().split(',').map(|v| v.parse().unwrap()).collect(),
            "--rng-seeds" | "--seeds" => seeds = value().parse().unwrap(),
            "--first-rng-seed" | "--first-seed" => first_seed = Some(value().parse().unwrap()),
            "--plot" => plot_to = Some(value()),
            "--loss" => loss = value().parse().unwrap(),
            "--periods" => periods = value().parse().unwrap(),
            "--partition-s" => partition_s = Some(value().parse().unwrap()),
            "--cross-zone-share" => cross_zone_share = value().parse().unwrap(),
            "--fanout" => fanouts = value().split(',').map(|v| v.parse().unwrap()).collect(),
            "--json" => json = true,
            "--failure" => {
                failure = match value().as_str() {
                    "process" => scenarios::Failure::ProcessCrash,
                    "host" => scenarios::Failure::HostLoss,
                    other => panic!("--failure is process or host, not {other}"),
                }
            }
            "--stall-patience-ms" => {
                stall_patience = Some(Duration::from_millis(value().parse().unwrap()));
            }
            "--rtt-ms" => {
                let ms: Vec<u64> = value().split(',').map(|v| v.parse().unwrap()).collect();
                assert_eq!(ms.len(), 2, "--rtt-ms takes MIN,MAX");
                pair_round_trip =
                    Some((Duration::from_millis(ms[0]), Duration::from_millis(ms[1])));
            }
            "--join" => join = true,
            "--case" => case = Some(value()),
            "--suspicion-mult" => suspicion_mult = Some(value().parse().unwrap()),
            "--confirmations" => confirmations = Some(value().parse().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    if !fanouts.is_empty() && scenario != "disseminate" {
        eprintln!("--fanout is for the disseminate scenario");
        std::process::exit(2);
    }
    if plot_to.is_some() && !["disseminate", "detect"].contains(&scenario.as_str()) {
        eprintln!("--plot draws the disseminate and detect scenarios only");
        std::process::exit(2);
    }
    let nodes_count = nodes.len();
    for n in nodes {
        let mut params = Params::new(n, seeds);
        params.loss = loss;
        params.failure = failure;
        params.pair_round_trip = pair_round_trip;
        if let Some(patience) = stall_patience {
            params.swim.stall_patience = patience;
        }
        if let Some(first) = first_seed {
            params.first_rng_seed = first;
        }
        if let Some(mult) = suspicion_mult {
            params.swim.suspicion_mult = mult;
        }
        if let Some(k) = confirmations {
            params.swim.suspicion_confirmations = k;
        }
        let started = Instant::now();
        let result = match scenario.as_str() {
            "detect" => {
                let r = scenarios::detect(&params);
                if let Some(path) = &plot_to {
                    // Each member's probe ticks keep their own phase, so the
                    // first probe of the crashed node comes after about
                    // Exp(1) periods, and the suspicion one period later.
                    let model: Vec<(f64, f64)> = (0..=100)
                        .map(|i| {
                            let t = f64::from(i) * 0.1;
                            (t, if t < 1.0 { 0.0 } else { 1.0 - (1.0 - t).exp() })
                        })
                        .collect();
                    let svg = plot::line_chart(
                        &format!(
                            "Detection of a crash among {n} members ({seeds} seeds, loss {loss})"
                        ),
                        "probe periods since the crash",
                        "fraction of seeds",
                        &[
                            plot::Series {
                                label: "first suspicion",
                                color: "#1f77b4",
                                dashed: false,
                                points: &scenarios::cumulative(&r.first_detection_samples),
                            },
                            plot::Series {
                                label: "all survivors hold it dead",
                                color: "#2ca02c",
                                dashed: false,
                                points: &scenarios::cumulative(&r.all_know_dead_samples),
                            },
                            plot::Series {
                                label: "model: 1 + Exp(1)",
                                color: "#d62728",
                                dashed: true,
                                points: &model,
                            },
                        ],
                    );
                    write_plot(path, n, nodes_count, &svg);
                }
                serde_json::json!({
                    "first_detection_periods": r.first_detection_periods,
                    "first_detection_rounds": r.first_detection_rounds,
                    "first_detection_after_contact_periods": r.first_detection_after_contact_periods,
                    "first_detection_after_probe_periods": r.first_detection_after_probe_periods,
                    "model_first_detection_rounds": std::f64::consts::E / (std::f64::consts::E - 1.0),
                    "all_know_dead_periods": r.all_know_dead_periods,
                    "all_know_dead_periods_max": r.all_know_dead_periods_max,
                    "false_deaths": r.false_deaths,
                    "undetected": r.undetected,
                    "invariant_violations": r.violations,
                })
            }
            "disseminate" if !fanouts.is_empty() => {
                let mut rows = Vec::new();
                for &fanout in &fanouts {
                    let r = scenarios::rounds(&params, fanout);
                    rounds_table.push((n, r.clone()));
                    rows.push(serde_json::json!({
                        "fanout": fanout,
                        "push_rounds_mean": r.push_rounds_mean,
                        "push_reach_mean": r.push_reach_mean,
                        "rounds_to_all_mean": r.rounds_to_all_mean,
                        "rounds_to_all_worst": r.rounds_to_all_worst,
                        "periods_to_all_mean": r.periods_to_all_mean,
                        "log_f_n": r.log_f,
                        "model_rounds": r.model_rounds,
                        "incomplete": r.incomplete,
                    }));
                }
                serde_json::json!({ "rounds": rows })
            }
            "disseminate" => {
                let r = scenarios::disseminate(&params);
                if let Some(path) = plot_to.as_ref().filter(|_| fanouts.is_empty()) {
                    let svg = plot::line_chart(
                        &format!("One update among {n} members ({seeds} seeds, loss {loss})"),
                        "probe periods since the update",
                        "fraction of members informed",
                        &[
                            plot::Series {
                                label: "simulated (mean over seeds)",
                                color: "#1f77b4",
                                dashed: false,
                                points: &r.informed,
                            },
                            plot::Series {
                                label: "push gossip model (Pittel)",
                                color: "#d62728",
                                dashed: true,
                                points: &r.model_informed,
                            },
                        ],
                    );
                    write_plot(path, n, nodes_count, &svg);
                }
                serde_json::json!({
                    "periods_to_all": r.periods_to_all,
                    "periods_to_all_mean": r.periods_to_all_mean,
                    "model_periods_to_all": r.model_periods_to_all,
                    "incomplete": r.incomplete,
                })
            }
            "weighted" => {
                let r = scenarios::weighted(&params, cross_zone_share, periods);
                serde_json::json!({
                    "periods": periods,
                    "cross_zone_share": r.cross_zone_share,
                    "pushes": r.pushes,
                    "measured_cross_zone_share": r.measured_cross_zone_share,
                    "weight_3_over_weight_1": r.weight_3_over_weight_1,
                })
            }
            "load" => {
                let r = scenarios::load(&params, periods);
                serde_json::json!({
                    "messages_per_member_per_period": r.messages_per_member_per_period,
                    "sync_messages_per_member_per_period": r.sync_messages_per_member_per_period,
                    "bytes_per_member_per_period": r.bytes_per_member_per_period,
                    "periods": periods,
                })
            }
            "sweep" => {
                let failures: Vec<String> = (params.first_rng_seed..params.first_rng_seed + seeds)
                    .filter_map(|seed| {
                        scenarios::faults(seed)
                            .err()
                            .map(|e| format!("seed {seed}: {e}"))
                    })
                    .collect();
                serde_json::json!({ "failures": failures.len(), "failed_seeds": failures })
            }
            "bootstrap" => {
                let r = scenarios::bootstrap(&params);
                serde_json::json!({
                    "full_view_seconds": r.full_view_seconds,
                    "full_view_seconds_mean": r.full_view_seconds_mean,
                    "incomplete": r.incomplete,
                })
            }
            "partition" => {
                let split = partition_s.unwrap_or(u64::from(periods));
                let r = scenarios::partition(&params, std::time::Duration::from_secs(split));
                serde_json::json!({
                    "partition_s": split,
                    "seeds": scenarios::PARTITION_SEEDS,
                    "heal_s": r.heal_seconds,
                    "heal_s_mean": r.heal_seconds_mean,
                    "incomplete": r.incomplete,
                })
            }
            "falsepos" => {
                let minutes = periods.div_ceil(60).max(1);
                let r = scenarios::falsepos(&params, minutes);
                serde_json::json!({
                    "minutes": minutes,
                    "false_suspicions_per_node_hour_lifeguard": r.false_suspicions_per_node_hour_lifeguard,
                    "false_suspicions_per_node_hour_plain": r.false_suspicions_per_node_hour_plain,
                    "lifeguard_reduction": r.false_suspicions_per_node_hour_plain / r.false_suspicions_per_node_hour_lifeguard,
                    "stalled_suspicions_per_node_hour_lifeguard": r.stalled_suspicions_per_node_hour_lifeguard,
                    "stalled_suspicions_per_node_hour_plain": r.stalled_suspicions_per_node_hour_plain,
                    "false_deaths_lifeguard": r.false_deaths_lifeguard,
                    "false_deaths_plain": r.false_deaths_plain,
                    "first_detection_periods_lifeguard": r.detect_lifeguard.first_detection_periods,
                    "first_detection_periods_plain": r.detect_plain.first_detection_periods,
                    "all_know_dead_periods_lifeguard": r.detect_lifeguard.all_know_dead_periods,
                    "all_know_dead_periods_plain": r.detect_plain.all_know_dead_periods,
                    "detection_false_deaths": r.detect_lifeguard.false_deaths + r.detect_plain.false_deaths + r.detect_fixed_timeout.false_deaths,
                    "longest_stall_s": scenarios::LONGEST_STALL.as_secs_f64(),
                    "false_suspicions_per_node_hour_fixed_timeout": r.false_suspicions_per_node_hour_fixed_timeout,
                    "stalled_suspicions_per_node_hour_fixed_timeout": r.stalled_suspicions_per_node_hour_fixed_timeout,
                    "false_deaths_fixed_timeout": r.false_deaths_fixed_timeout,
                    "first_detection_periods_fixed_timeout": r.detect_fixed_timeout.first_detection_periods,
                    "first_detection_after_contact_periods_adaptive": r.detect_lifeguard.first_detection_after_contact_periods,
                    "first_detection_after_contact_periods_fixed_timeout": r.detect_fixed_timeout.first_detection_after_contact_periods,
                    "adaptive_first_detection_speedup": 1.0 - r.detect_lifeguard.first_detection_periods / r.detect_fixed_timeout.first_detection_periods,
                    "adaptive_after_contact_speedup": 1.0 - r.detect_lifeguard.first_detection_after_contact_periods / r.detect_fixed_timeout.first_detection_after_contact_periods,
                    "first_detection_after_probe_periods_adaptive": r.detect_lifeguard.first_detection_after_probe_periods,
                    "first_detection_after_probe_periods_fixed_timeout": r.detect_fixed_timeout.first_detection_after_probe_periods,
                    "adaptive_after_probe_speedup": 1.0 - r.detect_lifeguard.first_detection_after_probe_periods / r.detect_fixed_timeout.first_detection_after_probe_periods,
                    "all_know_dead_periods_fixed_timeout": r.detect_fixed_timeout.all_know_dead_periods,
                    "first_detection_slowdown": r.detect_lifeguard.first_detection_periods / r.detect_plain.first_detection_periods,
                    "all_know_dead_slowdown": r.detect_lifeguard.all_know_dead_periods / r.detect_plain.all_know_dead_periods,
                })
            }
            "restart" => {
                // The anti-entropy backstop of every simulated node.
                let backstop = gossip_member::ReplicaConfig::new(params.swim.cluster).sync_interval;
                let limit = Duration::from_secs(u64::from(periods));
                let mut cases = serde_json::Map::new();
                for (name, kind, data_dir) in [
                    (
                        "all_at_once_with_data_dir",
                        scenarios::RestartKind::AllAtOnce,
                        true,
                    ),
                    (
                        "all_at_once_without_data_dir",
                        scenarios::RestartKind::AllAtOnce,
                        false,
                    ),
                    (
                        "rolling_with_data_dir",
                        scenarios::RestartKind::Rolling,
                        true,
                    ),
                    (
                        "rolling_without_data_dir",
                        scenarios::RestartKind::Rolling,
                        false,
                    ),
                ] {
                    if case.as_deref().is_some_and(|wanted| wanted != name) {
                        continue;
                    }
                    let r = scenarios::restart(&params, kind, data_dir, limit);
                    let within = r
                        .all_alive_seconds
                        .is_some_and(|s| s <= 2.0 * backstop.as_secs_f64());
                    cases.insert(
                        name.to_string(),
                        serde_json::json!({
                            "wrongly_dead": r.wrongly_dead,
                            "all_alive_s": r.all_alive_seconds,
                            "all_alive_s_mean": r.all_alive_seconds_mean,
                            "within_twice_the_backstop": within,
                        }),
                    );
                }
                serde_json::json!({
                    "backstop_s": backstop.as_secs_f64(),
                    "limit_s": periods,
                    "cases": cases,
                })
            }
            "memory" => {
                // Resident memory, not allocations: what a deployment pays,
                // allocator slack included.
                let before = resident_bytes();
                let mut sim = Sim::new(
                    n,
                    params.swim.clone(),
                    NetConfig::default(),
                    params.first_rng_seed,
                );
                if join {
                    // As a cluster really forms: every node's records are
                    // its own decoded copies, and the rumors of the join
                    // are still being passed on.
                    sim.join_through(0);
                    sim.run_for(Duration::from_secs(u64::from(periods)));
                } else {
                    // The records are shared by every node, as restored
                    // from one snapshot: what the tables themselves cost.
                    sim.converge_instantly();
                    sim.run_for(Duration::from_secs(u64::from(periods.min(10))));
                }
                // The event log is the caller's to drain; scenarios do.
                drop(sim.take_events());
                let after = resident_bytes();
                let views = (n * n) as f64;
                let grown = after.saturating_sub(before) as f64;
                drop(sim);
                serde_json::json!({
                    "start": if join { "join" } else { "converged" },
                    "resident_mib": after as f64 / f64::from(1 << 20),
                    "simulation_mib": grown / f64::from(1 << 20),
                    "bytes_per_member_per_view": grown / views,
                })
            }
            other => {
                eprintln!(
                    "unknown scenario {other}; known: detect, disseminate, load, bootstrap, partition, falsepos, restart, weighted, memory, sweep"
                );
                std::process::exit(2);
            }
        };
        let mut object = serde_json::json!({
            "scenario": scenario,
            "nodes": n,
            "rng_seeds": seeds,
            "first_rng_seed": params.first_rng_seed,
            "loss": loss,
            "probe_interval_ms": params.swim.probe_interval.as_millis() as u64,
            "swim_push_pull": params.swim.push_pull_interval.is_some(),
            "wall_seconds": started.elapsed().as_secs_f64(),
        });
        if let (Some(out), Some(fields)) = (object.as_object_mut(), result.as_object()) {
            out.extend(fields.clone());
        }
        if json {
            println!("{object}");
        } else {
            println!("{}", serde_json::to_string_pretty(&object).unwrap());
        }
    }
    report_rounds(&rounds_table, plot_to.as_deref());
}

/// The rounds table (Markdown, for the README) and its chart, from the
/// `disseminate --fanout` runs.
fn report_rounds(rows: &[(usize, scenarios::Rounds)], plot_to: Option<&str>) {
    if rows.is_empty() {
        return;
    }
    eprintln!(
        "| members | F | log_F(N) | push-gossip model | push phase: rounds | push phase: reach | to everyone: rounds (mean / worst) | to everyone: probe periods |"
    );
    eprintln!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in rows {
        eprintln!(
            "| {n} | {} | {:.1} | {:.0} | {:.1} | {:.1}% | {:.0} / {:.0} | {:.2} |",
            r.fanout,
            r.log_f,
            r.model_rounds,
            r.push_rounds_mean,
            r.push_reach_mean * 100.0,
            r.rounds_to_all_mean,
            r.rounds_to_all_worst,
            r.periods_to_all_mean
        );
    }
    let Some(path) = plot_to else {
        return;
    };
    const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let mut fanouts: Vec<usize> = rows.iter().map(|(_, r)| r.fanout).collect();
    fanouts.sort_unstable();
    fanouts.dedup();
    let points = |fanout: usize, of: fn(&scenarios::Rounds) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|(_, r)| r.fanout == fanout)
            .map(|(n, r)| ((*n as f64).log10(), of(r)))
            .collect()
    };
    let labels: Vec<(String, String)> = fanouts
        .iter()
        .map(|f| {
            (
                format!("F = {f}, push phase (mean)"),
                format!("F = {f}, push-gossip model"),
            )
        })
        .collect();
    let measured: Vec<Vec<(f64, f64)>> = fanouts
        .iter()
        .map(|&f| points(f, |r| r.push_rounds_mean))
        .collect();
    let model: Vec<Vec<(f64, f64)>> = fanouts
        .iter()
        .map(|&f| points(f, |r| r.model_rounds))
        .collect();
    let mut series = Vec::new();
    for (i, _) in fanouts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        series.push(plot::Series {
            label: &labels[i].0,
            color,
            dashed: false,
            points: &measured[i],
        });
        series.push(plot::Series {
            label: &labels[i].1,
            color,
            dashed: true,
            points: &model[i],
        });
    }
    let svg = plot::line_chart(
        "Rounds of an update's push phase, beside the push-gossip model",
        "log10 of the number of members",
        "gossip rounds",
        &series,
    );
    std::fs::write(path, svg).unwrap_or_else(|e| panic!("{path}: {e}"));
    eprintln!("wrote {path}");
}

/// Writes a chart to `path`, or to `path.N.svg` per cluster size when
/// several sizes were asked for.
fn write_plot(path: &str, n: usize, sizes: usize, svg: &str) {
    let path = if sizes > 1 {
        format!("{path}.{n}.svg")
    } else {
        path.to_owned()
    };
    std::fs::write(&path, svg).unwrap_or_else(|e| panic!("{path}: {e}"));
    eprintln!("wrote {path}");
}
