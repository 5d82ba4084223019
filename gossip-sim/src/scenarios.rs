//! Measurement scenarios: each runs whole clusters over several seeds and
//! reports what users choosing a membership library want to know.

use gossip_core::{ClusterId, MemberMeta, MemberStatus};
use gossip_swim::{Config, Event};

use crate::sim::{NetConfig, Sim, id_of};

/// Parameters shared by the scenarios.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Params {
    /// Cluster size.
    pub nodes: usize,
    /// Seeds to run: `first_seed .. first_seed + seeds`.
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// The SWIM configuration (LAN preset for `nodes` by default).
    pub swim: Config,
}

impl Params {
    /// `nodes` nodes on the LAN preset, `seeds` seeds from 1, no loss.
    ///
    /// SWIM's own push-pull backstop is off, as in a node that runs Merkle
    /// anti-entropy instead: the backstop ships whole tables (about 80 bytes
    /// a member) every 30 s, which at 100 members alone adds one datagram and
    /// a kilobyte per member per period.
    pub fn new(nodes: usize, seeds: u64) -> Self {
        let mut swim = Config::lan(ClusterId::from_name("sim"), nodes);
        swim.sync_interval = None;
        Params {
            nodes,
            seeds,
            first_seed: 1,
            loss: 0.0,
            swim,
        }
    }

    fn net(&self) -> NetConfig {
        NetConfig {
            loss: self.loss,
            ..NetConfig::default()
        }
    }

    fn interval(&self) -> f64 {
        self.swim.probe_interval.as_secs_f64()
    }

    fn seeds(&self) -> impl Iterator<Item = u64> {
        self.first_seed..self.first_seed + self.seeds
    }
}

/// The outcome of `detect`: one node crashes in a converged cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Detect {
    /// Mean over seeds of the time, in probe periods, until the first
    /// member suspects the crashed one.
    pub first_detection_periods: f64,
    /// Mean over seeds of the time until every survivor holds it dead.
    pub all_know_dead_periods: f64,
    /// The worst seed's time until every survivor holds it dead.
    pub all_know_dead_periods_max: f64,
    /// Deaths declared of nodes that were running (summed over seeds).
    pub false_deaths: u64,
    /// Seeds in which not every survivor learned of the death in time.
    pub undetected: u64,
    /// Invariant violations (summed over seeds).
    pub violations: u64,
}

/// Crashes one node of a converged cluster, per seed, and measures when
/// the others notice.
pub fn detect(params: &Params) -> Detect {
    let interval = params.interval();
    let (mut first, mut all, mut worst) = (Vec::new(), Vec::new(), 0f64);
    let (mut false_deaths, mut undetected, mut violations) = (0, 0, 0);
    for seed in params.seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        // Let the first probe ticks spread out over the period.
        sim.run_for(params.swim.probe_interval * 3);
        sim.take_events();
        let victim = (seed as usize * 7919) % params.nodes;
        let crashed_at = sim.now();
        sim.crash(victim);
        let survivors: Vec<usize> = (0..params.nodes).filter(|i| *i != victim).collect();
        let limit = params.swim.probe_interval.mul_f64(400.0);
        let took = sim.run_while(limit, |sim| {
            survivors
                .iter()
                .all(|&o| sim.view(o, victim) == Some(MemberStatus::Dead))
        });
        let events = sim.take_events();
        let victim_id = id_of(victim);
        let first_suspect = events.iter().find_map(|seen| match &seen.event {
            Event::Suspected { member, .. } if member.id == victim_id => Some(seen.at),
            _ => None,
        });
        false_deaths += events
            .iter()
            .filter(|seen| matches!(&seen.event, Event::Failed { member, .. } if member.id != victim_id))
            .count() as u64;
        violations += sim.violations().len() as u64;
        match (first_suspect, took) {
            (Some(at), Some(took)) => {
                first.push(at.saturating_duration_since(crashed_at).as_secs_f64() / interval);
                let periods = took.as_secs_f64() / interval;
                all.push(periods);
                worst = worst.max(periods);
            }
            _ => undetected += 1,
        }
    }
    Detect {
        first_detection_periods: mean(&first),
        all_know_dead_periods: mean(&all),
        all_know_dead_periods_max: worst,
        false_deaths,
        undetected,
        violations,
    }
}

/// The outcome of `disseminate`: one member's update spreads.
#[derive(Debug, Clone, PartialEq)]
pub struct Disseminate {
    /// The worst seed's time, in probe periods, until every member holds
    /// the update.
    pub periods_to_all: f64,
    /// The mean over seeds.
    pub periods_to_all_mean: f64,
    /// The SWIM paper's infection bound for the same cluster size:
    /// `ceil(log2 n) + ceil(ln n)` periods.
    pub model_periods_to_all: f64,
    /// Seeds in which the update did not reach everyone in time.
    pub incomplete: u64,
}

/// One member changes its metadata in a converged cluster; measures how
/// long until everyone has it.
pub fn disseminate(params: &Params) -> Disseminate {
    let interval = params.interval();
    let n = params.nodes as f64;
    let mut times = Vec::new();
    let mut incomplete = 0;
    for seed in params.seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        sim.run_for(params.swim.probe_interval * 3);
        let source = (seed as usize * 104_729) % params.nodes;
        sim.with_node(source, |swim, now| {
            // The metadata is a name and address: within every cap.
            let _ = swim.update_meta(
                now,
                MemberMeta::new("updated", [crate::sim::addr_of(source)]),
            );
        });
        let source_id = id_of(source);
        let limit = params.swim.probe_interval.mul_f64(200.0);
        let took = sim.run_while(limit, |sim| {
            (0..params.nodes).all(|o| {
                o == source
                    || sim
                        .node(o)
                        .and_then(|s| s.members().get(&source_id))
                        .is_some_and(|m| m.meta.name() == "updated")
            })
        });
        match took {
            Some(took) => times.push(took.as_secs_f64() / interval),
            None => incomplete += 1,
        }
    }
    Disseminate {
        periods_to_all: times.iter().copied().fold(0.0, f64::max),
        periods_to_all_mean: mean(&times),
        model_periods_to_all: n.log2().ceil() + n.ln().ceil(),
        incomplete,
    }
}

/// The outcome of `load`: a cluster at rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Datagrams sent per member per probe period, mean over seeds.
    pub messages_per_member_per_period: f64,
    /// Bytes sent per member per probe period, mean over seeds.
    pub bytes_per_member_per_period: f64,
}

/// Measures steady-state traffic: a converged cluster with no news, over
/// `periods` probe periods (after the start-up has settled).
pub fn load(params: &Params, periods: u32) -> Load {
    let (mut messages, mut bytes) = (Vec::new(), Vec::new());
    for seed in params.seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        sim.run_for(params.swim.probe_interval * 5);
        let before = sim.traffic();
        sim.run_for(params.swim.probe_interval * periods);
        let after = sim.traffic();
        let per = f64::from(periods) * params.nodes as f64;
        messages.push((after.sent - before.sent) as f64 / per);
        bytes.push((after.bytes - before.bytes) as f64 / per);
    }
    Load {
        messages_per_member_per_period: mean(&messages),
        bytes_per_member_per_period: mean(&bytes),
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}
