//! Measurement scenarios: each runs whole clusters over several seeds and
//! reports what users choosing a membership library want to know.

use std::time::Duration;

use gossip_core::{ClusterId, GossipRng, Incarnation, MemberMeta, MemberStatus, Timestamp};
use gossip_swim::{Config, Event};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::sim::{NetConfig, Sim, id_of};

/// Parameters shared by the scenarios.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Params {
    /// Cluster size.
    pub nodes: usize,
    /// How many RNG seeds to run: `first_rng_seed .. first_rng_seed + rng_seeds`.
    pub rng_seeds: u64,
    /// The first RNG seed.
    pub first_rng_seed: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// The SWIM configuration (LAN preset for `nodes` by default).
    pub swim: Config,
    /// How `detect`'s victim fails. Default [`Failure::HostLoss`].
    pub failure: Failure,
    /// Round trips that differ between pairs, drawn from this range (see
    /// [`NetConfig::pair_round_trip`]); `None` for a uniform LAN.
    pub pair_round_trip: Option<(Duration, Duration)>,
}

/// How a member fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failure {
    /// Its process is gone and its host answers for it with ICMP port
    /// unreachable ([`Sim::kill`]).
    ProcessCrash,
    /// Nothing answers for it at all ([`Sim::crash`]).
    #[default]
    HostLoss,
}

impl Params {
    /// `nodes` nodes on the LAN preset, `rng_seeds` RNG seeds from 1, no loss.
    ///
    /// SWIM's own push-pull backstop is off, as in a node that runs Merkle
    /// anti-entropy instead: the backstop ships whole tables (about 80 bytes
    /// a member) every 30 s, which at 100 members alone adds one datagram and
    /// a kilobyte per member per period.
    pub fn new(nodes: usize, rng_seeds: u64) -> Self {
        let mut swim = Config::lan(ClusterId::from_name("sim"), nodes);
        swim.push_pull_interval = None;
        Params {
            nodes,
            rng_seeds,
            first_rng_seed: 1,
            loss: 0.0,
            swim,
            failure: Failure::HostLoss,
            pair_round_trip: None,
        }
    }

    fn net(&self) -> NetConfig {
        NetConfig {
            loss: self.loss,
            pair_round_trip: self.pair_round_trip,
            ..NetConfig::default()
        }
    }

    /// The probe interval in seconds: a period, the unit the scenarios
    /// report times in.
    pub fn interval_seconds(&self) -> f64 {
        self.swim.probe_interval.as_secs_f64()
    }

    fn rng_seeds(&self) -> impl Iterator<Item = u64> {
        self.first_rng_seed..self.first_rng_seed + self.rng_seeds
    }
}

/// The outcome of `detect`: one node crashes in a converged cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Detect {
    /// Mean over seeds of the time, in probe periods, until the first
    /// member suspects the crashed one.
    pub first_detection_periods: f64,
    /// Mean over seeds of the protocol periods the first member to suspect
    /// the crashed one ran, counted from its first probe after the crash up
    /// to the end of the probe that failed: the quantity of SWIM's section
    /// 3.1, whose model gives `e / (e - 1)`. `first_detection_periods` adds
    /// the wait for that member's first probe, since members' periods start
    /// at independent phases and the crash falls anywhere in them.
    pub first_detection_rounds: f64,
    /// Mean over seeds of the time, in probe periods, from the first
    /// datagram anyone sent the victim after its failure (the first chance
    /// to notice it) to the first suspicion: what probe timeouts decide,
    /// without the luck of the probe rotation.
    pub first_detection_after_contact_periods: f64,
    /// Mean over seeds of the time, in probe periods, from the first
    /// datagram the first accuser sent the victim after its failure (the
    /// ping of its probe that failed, unless it had pinged the victim for
    /// another member first) to its suspicion: how long the probe took,
    /// which is what probe timeouts decide.
    pub first_detection_after_probe_periods: f64,
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
    /// Each detected seed's time to the first suspicion, in probe periods,
    /// in seed order.
    pub first_detection_samples: Vec<f64>,
    /// Each detected seed's time until every survivor held the crashed node
    /// dead, in probe periods, in seed order.
    pub all_know_dead_samples: Vec<f64>,
}

/// The distribution of `samples` as `(value, fraction of samples at or
/// below it)` steps, for plotting: starts at `(0, 0)`.
pub fn cumulative(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut points = vec![(0.0, 0.0)];
    for (i, v) in sorted.iter().enumerate() {
        points.push((*v, i as f64 / n));
        points.push((*v, (i + 1) as f64 / n));
    }
    points
}

/// Crashes one node of a converged cluster, per seed, and measures when
/// the others notice.
pub fn detect(params: &Params) -> Detect {
    let interval = params.interval_seconds();
    let (mut first, mut all, mut worst) = (Vec::new(), Vec::new(), 0f64);
    let (mut rounds, mut after_contact, mut after_probe) = (Vec::new(), Vec::new(), Vec::new());
    let (mut false_deaths, mut undetected, mut violations) = (0, 0, 0);
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        // Let the probe ticks spread out over the period, and every member
        // probe the others once (up to 100), so probe timeouts come from
        // measured round trips as in a cluster that has run a while.
        sim.run_for(params.swim.probe_interval * params.nodes.clamp(3, 100) as u32);
        sim.take_events();
        let victim = (seed as usize * 7919) % params.nodes;
        let crashed_at = sim.now();
        match params.failure {
            Failure::ProcessCrash => sim.kill(victim),
            Failure::HostLoss => sim.crash(victim),
        }
        let survivors: Vec<usize> = (0..params.nodes).filter(|i| *i != victim).collect();
        let limit = params.swim.probe_interval.mul_f64(400.0);
        let probes = |sim: &Sim, i: usize| sim.node(i).map_or(0, |n| n.stats().probes);
        let probes_at_crash: Vec<u64> = (0..params.nodes).map(|i| probes(&sim, i)).collect();
        // When each survivor began its first probe after the crash (to the
        // millisecond the checks run at).
        let mut first_probe = vec![None; params.nodes];
        let took = sim.run_while(limit, |sim| {
            for &o in &survivors {
                if first_probe[o].is_none() && probes(sim, o) > probes_at_crash[o] {
                    first_probe[o] = Some(sim.now());
                }
            }
            survivors
                .iter()
                .all(|&o| sim.view(o, victim) == Some(MemberStatus::Dead))
        });
        let events = sim.take_events();
        let victim_id = id_of(victim);
        let first_suspect = events.iter().find_map(|seen| match &seen.event {
            Event::Suspected { member, by, .. } if member.id == victim_id => Some((seen.at, *by)),
            _ => None,
        });
        false_deaths += events
            .iter()
            .filter(|seen| matches!(&seen.event, Event::Failed { member, .. } if member.id != victim_id))
            .count() as u64;
        // The failed probe is concluded within the period it began in (at
        // its end, or sooner once every helper has nacked), so the periods
        // the accuser began from its first probe after the crash to the
        // suspicion are the whole ones up to it (the millisecond of check
        // granularity is taken away first).
        if let Some((at, by)) = first_suspect
            && let Some(accuser) = sim.index(&by)
        {
            if let Some(began) = first_probe[accuser] {
                let periods = at.saturating_duration_since(began).as_secs_f64() / interval;
                rounds.push((periods - 0.005).ceil().max(1.0));
            }
            if let Some(pinged) = sim.first_sent_while_down_by(victim, accuser) {
                after_probe.push(at.saturating_duration_since(pinged).as_secs_f64() / interval);
            }
        }
        let first_suspect = first_suspect.map(|(at, _)| at);
        if let (Some(at), Some(contact)) = (first_suspect, sim.first_sent_while_down(victim)) {
            after_contact.push(at.saturating_duration_since(contact).as_secs_f64() / interval);
        }
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
        first_detection_rounds: mean(&rounds),
        first_detection_after_contact_periods: mean(&after_contact),
        first_detection_after_probe_periods: mean(&after_probe),
        all_know_dead_periods: mean(&all),
        all_know_dead_periods_max: worst,
        false_deaths,
        undetected,
        violations,
        first_detection_samples: first,
        all_know_dead_samples: all,
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
    /// The fraction of members that had the update, mean over seeds, every
    /// tenth of a period from the update until the last seed was done:
    /// `(periods, fraction)`.
    pub informed: Vec<(f64, f64)>,
    /// The same for push gossip with one contact per member per period
    /// (Pittel's model, whose completion time is `model_periods_to_all`):
    /// `x' = 1 - (1 - x) e^-x` from one informed member.
    pub model_informed: Vec<(f64, f64)>,
}

/// Converges `sim` at once, lets three probe periods pass, and has one
/// member (chosen by `seed`) rename itself `updated`: the update that
/// `disseminate` and `rounds` follow. Returns that member.
fn update_in_converged_cluster(sim: &mut Sim, seed: u64) -> usize {
    sim.converge_instantly();
    let period = sim
        .node(0)
        .map_or(Duration::from_secs(1), |s| s.config().probe_interval);
    sim.run_for(period * 3);
    let source = (seed as usize * 104_729) % sim.len();
    sim.with_node(source, |swim, now| {
        // The metadata is a name and address: within every cap.
        let _ = swim.update_meta(
            now,
            MemberMeta::new("updated", [crate::sim::addr_of(source)]),
        );
    });
    source
}

/// Steps of the informed curves, in probe periods.
const CURVE_STEP: f64 = 0.1;

/// One member changes its metadata in a converged cluster; measures how
/// long until everyone has it.
pub fn disseminate(params: &Params) -> Disseminate {
    let interval = params.interval_seconds();
    let n = params.nodes as f64;
    let mut times = Vec::new();
    let mut curves = Vec::new();
    let mut incomplete = 0;
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        let source = update_in_converged_cluster(&mut sim, seed);
        let source_id = id_of(source);
        let limit = params.swim.probe_interval.mul_f64(200.0);
        let started = sim.now();
        // (periods since the update, members informed) at each change.
        let mut counts = vec![(0.0, 1usize)];
        let took = sim.run_while(limit, |sim| {
            let informed = (0..params.nodes)
                .filter(|&o| {
                    o == source
                        || sim
                            .node(o)
                            .and_then(|s| s.members().get(&source_id))
                            .is_some_and(|m| m.meta.name() == "updated")
                })
                .count();
            if counts.last().is_some_and(|&(_, c)| c != informed) {
                let at = sim.now().saturating_duration_since(started).as_secs_f64() / interval;
                counts.push((at, informed));
            }
            informed == params.nodes
        });
        match took {
            Some(took) => times.push(took.as_secs_f64() / interval),
            None => incomplete += 1,
        }
        curves.push(counts);
    }
    let periods_to_all = times.iter().copied().fold(0.0, f64::max);
    let steps = (periods_to_all / CURVE_STEP).ceil() as usize + 1;
    let informed = (0..=steps)
        .map(|step| {
            let at = step as f64 * CURVE_STEP;
            let fractions: Vec<f64> = curves
                .iter()
                .map(|counts| {
                    let count = counts
                        .iter()
                        .take_while(|&&(t, _)| t <= at)
                        .last()
                        .map_or(1, |&(_, c)| c);
                    count as f64 / n
                })
                .collect();
            (at, mean(&fractions))
        })
        .collect();
    let model_periods_to_all = n.log2().ceil() + n.ln().ceil();
    let mut model_informed = vec![(0.0, 1.0 / n)];
    let mut x = 1.0 / n;
    for period in 1..=(model_periods_to_all.max(periods_to_all).ceil() as usize) {
        x = 1.0 - (1.0 - x) * (-x).exp();
        model_informed.push((period as f64, x));
    }
    Disseminate {
        periods_to_all,
        periods_to_all_mean: mean(&times),
        model_periods_to_all,
        incomplete,
        informed,
        model_informed,
    }
}

/// The outcome of `rounds`: how many gossip rounds one update takes to
/// reach the members, at one fanout.
///
/// A member pushes a piece of news once, to F members, when it first hears
/// it; the rumor then rides the member's next datagrams (probes and acks)
/// until its retransmit budget is spent. So the news spreads in two phases:
/// a push epidemic, one round per hop, that reaches all but a few members;
/// then the probes, one round a probe period, reach the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounds {
    /// The fanout F.
    pub fanout: usize,
    /// Mean over seeds of the rounds the push epidemic lasted: the round
    /// of the last member it informed.
    pub push_rounds_mean: f64,
    /// Mean over seeds of the share of members the push epidemic informed
    /// (the source included); probes carried the update to the rest.
    pub push_reach_mean: f64,
    /// Mean over seeds of the rounds until every member held the update,
    /// the probes' tail included.
    pub rounds_to_all_mean: f64,
    /// The worst seed's rounds until every member held it.
    pub rounds_to_all_worst: f64,
    /// The same in probe periods (mean), the time the tail costs.
    pub periods_to_all_mean: f64,
    /// `log_F(n)` (`log2(n)` for F = 1): the rounds of a perfect F-ary tree
    /// from one member.
    pub log_f: f64,
    /// The push-gossip model's rounds to everyone: each informed member
    /// pushes to F members drawn at random every round, `x' = 1 - (1 - x)
    /// e^(-F x)`, until fewer than half a member is expected uninformed.
    pub model_rounds: f64,
    /// Seeds in which the update did not reach everyone in time.
    pub incomplete: u64,
}

/// One round of `rounds`: every datagram takes exactly this long, so a
/// member informed in round r pushes in round r + 1.
const HOP: Duration = Duration::from_millis(10);

/// One member updates its metadata in a converged cluster whose every link
/// takes exactly 10 ms, and the spread is counted in hops (rounds).
pub fn rounds(params: &Params, fanout: usize) -> Rounds {
    let mut swim = params.swim.clone();
    swim.gossip_fanout = fanout;
    let net = NetConfig {
        latency_min: HOP,
        latency_max: HOP,
        loss: params.loss,
        duplicate: 0.0,
        pair_round_trip: None,
    };
    let n = params.nodes;
    let (mut push_rounds, mut push_reach, mut to_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut incomplete = 0;
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(n, swim.clone(), net.clone(), seed);
        let source = update_in_converged_cluster(&mut sim, seed);
        let source_id = id_of(source);
        let started = sim.now();
        let end = started + swim.probe_interval * 200;
        let _ = sim.take_events();
        let mut informed = vec![false; n];
        informed[source] = true;
        let (mut count, mut by_push, mut last_push_round) = (1, 1, 0);
        let mut took = None;
        while sim.next_moment().is_some_and(|at| at <= end) {
            sim.step();
            for seen in sim.take_events() {
                let Event::Updated(member) = &seen.event else {
                    continue;
                };
                if member.id != source_id || member.meta.name() != "updated" || informed[seen.node]
                {
                    continue;
                }
                informed[seen.node] = true;
                count += 1;
                let since = seen.at.saturating_duration_since(started);
                // Pushes go out on receipt, so the push epidemic arrives
                // exactly on the rounds' edges; what a probe carried (or a
                // push it set off) arrives between them.
                if since.as_nanos() % HOP.as_nanos() == 0 {
                    by_push += 1;
                    last_push_round = last_push_round.max(hops(since));
                }
            }
            if count == n {
                took = Some(sim.now().saturating_duration_since(started));
                break;
            }
        }
        push_rounds.push(last_push_round as f64);
        push_reach.push(by_push as f64 / n as f64);
        match took {
            Some(took) => to_all.push(took),
            None => incomplete += 1,
        }
    }
    let nodes = n as f64;
    let log_f = if fanout <= 1 {
        nodes.log2()
    } else {
        nodes.ln() / (fanout as f64).ln()
    };
    let mut x = 1.0 / nodes;
    let mut model_rounds = 0.0;
    while nodes * (1.0 - x) >= 0.5 && model_rounds < 10_000.0 {
        x = 1.0 - (1.0 - x) * (-(fanout as f64) * x).exp();
        model_rounds += 1.0;
    }
    let rounds_to_all: Vec<f64> = to_all.iter().map(|&t| hops(t) as f64).collect();
    let periods: Vec<f64> = to_all
        .iter()
        .map(|t| t.as_secs_f64() / swim.probe_interval.as_secs_f64())
        .collect();
    Rounds {
        fanout,
        push_rounds_mean: mean(&push_rounds),
        push_reach_mean: mean(&push_reach),
        rounds_to_all_mean: mean(&rounds_to_all),
        rounds_to_all_worst: rounds_to_all.iter().copied().fold(0.0, f64::max),
        periods_to_all_mean: mean(&periods),
        log_f,
        model_rounds,
        incomplete,
    }
}

/// The round a moment `since` the update falls in: round r ends at r hops.
fn hops(since: Duration) -> usize {
    since.as_nanos().div_ceil(HOP.as_nanos()) as usize
}

/// The outcome of `weighted`: where weighted peer selection sent pushes.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    /// The configured share of pushes to other zones.
    pub cross_zone_share: f64,
    /// Pushes counted.
    pub pushes: u64,
    /// The share of them that went to another zone than the sender's.
    pub measured_cross_zone_share: f64,
    /// Within zone 0 (which holds every weight-3 member), pushes from
    /// the zone per weight-3 member over pushes per weight-1 member (3 if
    /// every pick followed the weights; drawing several distinct targets
    /// per push brings it nearer 1).
    pub weight_3_over_weight_1: f64,
}

/// Zones of the `weighted` scenario: node i is in zone `i % ZONES`.
const ZONES: usize = 3;

/// A converged cluster in three zones (node i in zone `i % 3`, every ninth
/// node of weight 3) publishes its placement in the `zone` and `weight`
/// keys; then a random member updates its metadata every second for
/// `periods` seconds, and every push is counted.
pub fn weighted(params: &Params, cross_zone_share: f64, periods: u32) -> Weighted {
    let mut swim = params.swim.clone();
    swim.peer_selection = gossip_swim::PeerSelection::Weighted { cross_zone_share };
    let n = params.nodes;
    let heavy = |i: usize| i.is_multiple_of(9);
    let (mut near, mut far) = (0u64, 0u64);
    let (mut to_heavy, mut to_light) = (0u64, 0u64);
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(n, swim.clone(), params.net(), seed);
        sim.converge_instantly();
        for i in 0..n {
            sim.set(i, "zone", format!("zone-{}", i % ZONES).as_bytes());
            if heavy(i) {
                sim.set(i, "weight", b"3");
            }
        }
        sim.run_for(Duration::from_secs(30));
        sim.record_pushes();
        let mut rng = GossipRng::seed_from_u64(seed ^ 0x3e16);
        for round in 0..periods {
            let who = rng.random_range(0..n);
            sim.with_node(who, |swim, now| {
                let meta = MemberMeta::new(format!("r{round}"), [crate::sim::addr_of(who)]);
                let _ = swim.update_meta(now, meta);
            });
            sim.run_for(params.swim.probe_interval);
        }
        for (&(from, to), &count) in sim.pushes().into_iter().flatten() {
            if from % ZONES == to % ZONES {
                near += count;
                // Every weight-3 member is in zone 0: compare there.
                if to % ZONES == 0 {
                    if heavy(to) {
                        to_heavy += count;
                    } else {
                        to_light += count;
                    }
                }
            } else {
                far += count;
            }
        }
    }
    let zone_0 = (0..n).filter(|i| i % ZONES == 0);
    let heavy_members = zone_0.clone().filter(|&i| heavy(i)).count().max(1) as f64;
    let light_members = zone_0.filter(|&i| !heavy(i)).count().max(1) as f64;
    Weighted {
        cross_zone_share,
        pushes: near + far,
        measured_cross_zone_share: far as f64 / (near + far).max(1) as f64,
        weight_3_over_weight_1: (to_heavy as f64 / heavy_members)
            / (to_light as f64 / light_members).max(f64::MIN_POSITIVE),
    }
}

/// The outcome of `load`: a cluster at rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Messages sent per member per probe period, mean over seeds: SWIM
    /// datagrams and sync turns.
    pub messages_per_member_per_period: f64,
    /// Of which sync turns (the anti-entropy backstop, and syncs started by
    /// differing state digests).
    pub sync_messages_per_member_per_period: f64,
    /// Bytes sent per member per probe period, mean over seeds, sync turns
    /// included.
    pub bytes_per_member_per_period: f64,
}

/// Measures steady-state traffic: a converged cluster with no news, over
/// `periods` probe periods (after the start-up has settled).
pub fn load(params: &Params, periods: u32) -> Load {
    let (mut messages, mut syncs, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        sim.run_for(params.swim.probe_interval * 5);
        let before = sim.traffic();
        sim.run_for(params.swim.probe_interval * periods);
        let after = sim.traffic();
        let per = f64::from(periods) * params.nodes as f64;
        let sync_sent = (after.sync_sent - before.sync_sent) as f64;
        messages.push(((after.sent - before.sent) as f64 + sync_sent) / per);
        syncs.push(sync_sent / per);
        let sync_bytes = (after.sync_bytes - before.sync_bytes) as f64;
        bytes.push(((after.bytes - before.bytes) as f64 + sync_bytes) / per);
    }
    Load {
        messages_per_member_per_period: mean(&messages),
        sync_messages_per_member_per_period: mean(&syncs),
        bytes_per_member_per_period: mean(&bytes),
    }
}

/// `true` if every running node sees every running node alive: O(n) while
/// every node runs, O(n^2) otherwise.
pub fn converged(sim: &Sim) -> bool {
    let running: Vec<usize> = (0..sim.len()).filter(|i| sim.is_running(*i)).collect();
    if running.len() == sim.len() {
        // A node that counts n alive members, itself included, sees them all.
        return running.iter().all(|&o| {
            sim.node(o)
                .is_some_and(|s| s.members().count(MemberStatus::Alive) == sim.len())
        });
    }
    running.iter().all(|&o| {
        running
            .iter()
            .all(|&s| sim.view(o, s) == Some(MemberStatus::Alive))
    })
}

/// The outcome of `bootstrap`: every node joins through one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The worst seed's simulated seconds until every node sees all others
    /// alive.
    pub full_view_seconds: f64,
    /// The mean over seeds.
    pub full_view_seconds_mean: f64,
    /// Seeds that did not reach a full view within the limit.
    pub incomplete: u64,
}

/// Runs `trial` once per seed and sums up the times it returns: the worst
/// and the mean (in seconds), and how many trials ran out of time.
fn over_seeds(params: &Params, mut trial: impl FnMut(u64) -> Option<Duration>) -> (f64, f64, u64) {
    let mut times = Vec::new();
    let mut incomplete = 0;
    for seed in params.rng_seeds() {
        match trial(seed) {
            Some(took) => times.push(took.as_secs_f64()),
            None => incomplete += 1,
        }
    }
    (
        times.iter().copied().fold(0.0, f64::max),
        mean(&times),
        incomplete,
    )
}

/// All nodes start at once and join through node 0.
pub fn bootstrap(params: &Params) -> Bootstrap {
    let (worst, mean, incomplete) = over_seeds(params, |seed| {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.join_through(0);
        sim.run_while(Duration::from_secs(600), converged)
    });
    Bootstrap {
        full_view_seconds: worst,
        full_view_seconds_mean: mean,
        incomplete,
    }
}

/// The outcome of `partition`: the cluster splits in two, then heals.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// The worst seed's simulated seconds from the network's healing until
    /// every node sees every other alive again.
    pub heal_seconds: f64,
    /// The mean over seeds.
    pub heal_seconds_mean: f64,
    /// Seeds that did not converge within 15 minutes of the healing.
    pub incomplete: u64,
}

/// The seeds every node of the `partition` scenario holds: three, two in
/// one half and one in the other, as a cluster configured with three seeds
/// would hold them.
pub const PARTITION_SEEDS: [usize; 3] = [0, 1, 2];

/// Splits a converged cluster into halves (even and odd nodes) for `split`,
/// heals the network, and measures how long until the view is whole again.
/// Each half declares the other dead after a few seconds and, after the
/// departed horizon (an hour), forgets it; past that only the seeds join
/// the halves again.
pub fn partition(params: &Params, split: Duration) -> Partition {
    let (worst, mean, incomplete) = over_seeds(params, |seed| {
        let mut sim = Sim::new(params.nodes, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        sim.set_seeds(&PARTITION_SEEDS);
        sim.run_for(params.swim.probe_interval * 3);
        let (left, right): (Vec<usize>, Vec<usize>) = (0..params.nodes).partition(|i| i % 2 == 0);
        sim.partition(&left, &right);
        sim.run_for(split);
        sim.heal();
        sim.run_while(Duration::from_secs(900), converged)
    });
    Partition {
        heal_seconds: worst,
        heal_seconds_mean: mean,
        incomplete,
    }
}

/// The outcome of `falsepos`: healthy but sometimes slow nodes on a lossy
/// network, with Lifeguard on and off.
#[derive(Debug, Clone, PartialEq)]
pub struct FalsePositives {
    /// Suspicions of healthy members (the nodes that never stall), per node
    /// per hour, Lifeguard on, each counted once, by the node that raised
    /// it: the Lifeguard paper's false positives, healthy members accused
    /// because some other member was slow.
    pub false_suspicions_per_node_hour_lifeguard: f64,
    /// The same with Lifeguard off (plain SWIM with suspicion).
    pub false_suspicions_per_node_hour_plain: f64,
    /// Suspicions of the members that stall, per node per hour, Lifeguard
    /// on: a stalled member answers nothing, so these are suspicions of a
    /// member that is briefly unreachable, though it never failed.
    pub stalled_suspicions_per_node_hour_lifeguard: f64,
    /// The same with Lifeguard off.
    pub stalled_suspicions_per_node_hour_plain: f64,
    /// Deaths declared of any member, Lifeguard on (nothing fails, so every
    /// one is false; each counted once, by the node whose timer declared it).
    pub false_deaths_lifeguard: u64,
    /// The same with Lifeguard off.
    pub false_deaths_plain: u64,
    /// Suspicions of healthy members per node per hour with fixed probe
    /// timeouts (Lifeguard on, `adaptive_probe_timeout` off).
    pub false_suspicions_per_node_hour_fixed_timeout: f64,
    /// Suspicions of the members that stall, the same way.
    pub stalled_suspicions_per_node_hour_fixed_timeout: f64,
    /// Deaths declared with fixed probe timeouts.
    pub false_deaths_fixed_timeout: u64,
    /// What Lifeguard costs in detection: [`detect`] on the same nodes,
    /// seeds and loss, Lifeguard on.
    pub detect_lifeguard: Detect,
    /// The same with Lifeguard off.
    pub detect_plain: Detect,
    /// [`detect`] with Lifeguard on and fixed probe timeouts: what the
    /// adaptive ones gain.
    pub detect_fixed_timeout: Detect,
}

/// The longest stall `falsepos` gives a member: the LAN preset's stall
/// patience, which promises that no member silent this long is declared
/// dead.
pub const LONGEST_STALL: Duration = Duration::from_secs(6);

/// Runs `minutes` of simulated time in which a tenth of the nodes have bad
/// spells about once every 20 s, on a network losing `params.loss` of
/// datagrams: a third are stalls of 0.5 to 2.5 s (a process under GC), a
/// third stalls of 2.5 s up to [`LONGEST_STALL`] (a stopped process, a
/// host swapping), in which what arrives is lost; a third are 2 to 10 s of
/// slow processing (CPU starvation), in which what arrives is handled 0.2
/// to 1.5 s late while the node's own timers keep time (and the next spell
/// waits until that backlog is handled). Nothing fails, so
/// every death is false; suspicions are counted apart by whether their
/// subject is one of the nodes that stall. This runs three times: as
/// configured, with Lifeguard off, and with fixed probe timeouts; then
/// [`detect`] runs each way, for what each costs in detection time.
pub fn falsepos(params: &Params, minutes: u32) -> FalsePositives {
    let is_slow = |i: usize| i.is_multiple_of(10);
    let run = |swim: gossip_swim::Config| -> (f64, f64, u64) {
        let (mut healthy, mut stalled, mut deaths) = (0u64, 0u64, 0u64);
        for seed in params.rng_seeds() {
            let mut sim = Sim::new(params.nodes, swim.clone(), params.net(), seed);
            sim.converge_instantly();
            sim.run_for(swim.probe_interval * 3);
            sim.take_events();
            let mut rng = GossipRng::seed_from_u64(seed ^ 0xfa15e);
            let slow: Vec<usize> = (0..params.nodes).filter(|i| is_slow(*i)).collect();
            // When each node's current spell ends: spells never overlap, so
            // no silence is longer than the longest stall. A slow spell ends
            // once what it held back has been handled, its delay after it:
            // a stall begun sooner would silence the node for the rest of
            // that queue as well.
            let mut spell_ends = vec![Timestamp::ZERO; params.nodes];
            for _ in 0..minutes * 60 {
                for &node in &slow {
                    // Each slow node has a bad spell about once every 20
                    // seconds: two thirds are stalls, one third slow
                    // processing.
                    if spell_ends[node] <= sim.now() && rng.random::<f64>() < 0.05 {
                        let kind = rng.random_range(0..3);
                        if kind < 2 {
                            let longest = LONGEST_STALL.as_millis() as u64;
                            let range = if kind == 0 {
                                500..2500
                            } else {
                                2500..longest + 1
                            };
                            let stall = Duration::from_millis(rng.random_range(range));
                            sim.pause(node, stall);
                            spell_ends[node] = sim.now() + stall;
                        } else {
                            let delay = Duration::from_millis(rng.random_range(200..1500));
                            let spell = Duration::from_millis(rng.random_range(2000..10000));
                            sim.slow_down(node, delay, spell);
                            spell_ends[node] = sim.now() + spell + delay;
                        }
                    }
                }
                sim.run_for(Duration::from_secs(1));
            }
            // Count each suspicion and death once, where it was raised (every
            // other member sees it too, as news).
            for seen in sim.take_events() {
                let local = sim.id(seen.node);
                match seen.event {
                    Event::Suspected { member, by, .. } if Some(by) == local => {
                        match sim.index(&member.id) {
                            Some(i) if is_slow(i) => stalled += 1,
                            _ => healthy += 1,
                        }
                    }
                    Event::Failed { provenance, .. } if Some(provenance.declared_by) == local => {
                        deaths += 1
                    }
                    _ => {}
                }
            }
        }
        let node_hours = params.nodes as f64 * f64::from(minutes) / 60.0 * params.rng_seeds as f64;
        (
            healthy as f64 / node_hours,
            stalled as f64 / node_hours,
            deaths,
        )
    };
    let (lifeguard, stalled_lifeguard, false_deaths_lifeguard) = run(params.swim.clone());
    let (plain, stalled_plain, false_deaths_plain) = run(params.swim.clone().without_lifeguard());
    let mut fixed_timeout = params.clone();
    fixed_timeout.swim.adaptive_probe_timeout = false;
    let (fixed, stalled_fixed, false_deaths_fixed) = run(fixed_timeout.swim.clone());
    let without_lifeguard = Params {
        swim: params.swim.clone().without_lifeguard(),
        ..params.clone()
    };
    FalsePositives {
        detect_lifeguard: detect(params),
        detect_plain: detect(&without_lifeguard),
        false_suspicions_per_node_hour_lifeguard: lifeguard,
        false_suspicions_per_node_hour_plain: plain,
        stalled_suspicions_per_node_hour_lifeguard: stalled_lifeguard,
        stalled_suspicions_per_node_hour_plain: stalled_plain,
        false_deaths_lifeguard,
        false_deaths_plain,
        false_suspicions_per_node_hour_fixed_timeout: fixed,
        stalled_suspicions_per_node_hour_fixed_timeout: stalled_fixed,
        false_deaths_fixed_timeout: false_deaths_fixed,
        detect_fixed_timeout: detect(&fixed_timeout),
    }
}

/// One run of the fault tier, for `seed`: ten simulated minutes of 8 to 16
/// nodes under 0 to 10% loss, 1% duplication and reordering from the
/// latency spread. A node stalls for 1.5 s; then a 90 s partition into
/// halves and a heal; then a swizzle-clog (a quarter of the nodes lose
/// their links one at a time in random order, and get them back one at a
/// time in another order); then, under the same loss, another node stalls,
/// until the ten minutes are up, and the network turns clean. Every node
/// writes keys at the start, and nodes on both sides of each cut write and
/// delete keys while it lasts.
///
/// Fails if anyone was declared dead outside the partition and the
/// swizzle-clog (nobody had failed), if an incarnation went back, if a
/// deleted key came back to a node that had seen it deleted, or if within
/// 180 s of each heal (and 60 s of the clean network at the end) the member
/// views and the Merkle roots have not all converged, with no node holding
/// a deleted key.
///
/// # Errors
///
/// A description of the first broken invariant.
pub fn faults(seed: u64) -> Result<(), String> {
    /// Simulated length of one run.
    const RUN: Duration = Duration::from_secs(600);
    let n = 8 + (seed % 9) as usize;
    let net = NetConfig {
        loss: 0.02 * (seed % 6) as f64,
        duplicate: 0.01,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(
        n,
        Config::lan(ClusterId::from_name("sim-faults"), n),
        net.clone(),
        seed,
    );
    sim.converge_instantly();
    for i in 0..n {
        sim.set(i, "role", format!("r{i}").as_bytes());
        sim.set(i, "load", b"0");
    }
    sim.run_for(Duration::from_secs(30));
    // A node stalls for less than the suspicion timeout.
    sim.pause(seed as usize % n, Duration::from_millis(1500));
    sim.run_for(Duration::from_secs(60));
    no_deaths(&mut sim, "before the partition")?;
    // A partition long enough to declare the halves dead, then a heal.
    let (left, right): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == 0);
    sim.partition(&left, &right);
    sim.run_for(Duration::from_secs(10));
    // Both sides write while cut off from each other.
    sim.delete(left[0], "role");
    sim.set(left[1], "load", b"1");
    sim.set(right[0], "load", b"2");
    sim.delete(right[1], "load");
    sim.run_for(Duration::from_secs(80));
    sim.heal();
    sim.set_net(NetConfig::default());
    settles(&mut sim, Duration::from_secs(180), "the heal")?;
    // Swizzle-clog: a quarter of the nodes lose their links one by one, in
    // random order, and get them back one by one, in another order.
    let mut rng = GossipRng::seed_from_u64(seed ^ 0x5717_c10c);
    let clogged = rand::seq::index::sample(&mut rng, n, (n / 4).max(2)).into_vec();
    let mut links: Vec<(usize, usize)> = clogged
        .iter()
        .flat_map(|&a| {
            (0..n)
                .filter(move |&b| b != a)
                .flat_map(move |b| [(a, b), (b, a)])
        })
        .collect();
    links.sort_unstable();
    links.dedup();
    links.shuffle(&mut rng);
    for &(from, to) in &links {
        sim.block(from, to);
        sim.run_for(Duration::from_millis(100));
    }
    // A clogged node and another write while the links are down.
    sim.delete(clogged[0], "load");
    sim.set(clogged[1], "role", b"moved");
    sim.delete((clogged[0] + 1) % n, "role");
    sim.run_for(Duration::from_secs(20));
    links.shuffle(&mut rng);
    for &(from, to) in &links {
        sim.unblock(from, to);
        sim.run_for(Duration::from_millis(100));
    }
    settles(&mut sim, Duration::from_secs(180), "the swizzle-clog")?;
    // The rest of the ten minutes under the run's faults again.
    sim.take_events();
    sim.set_net(net);
    sim.pause((seed as usize / n + 1) % n, Duration::from_millis(1500));
    sim.run_until(Timestamp::ZERO + RUN);
    no_deaths(&mut sim, "after the heals")?;
    sim.set_net(NetConfig::default());
    settles(&mut sim, Duration::from_secs(60), "the faults stopped")?;
    match sim.violations().first() {
        Some(violation) => Err(violation.clone()),
        None => Ok(()),
    }
}

/// Fails unless, within `bound`, every member view and every Merkle root
/// converge; then fails if any node still holds a deleted key.
fn settles(sim: &mut Sim, bound: Duration, after: &str) -> Result<(), String> {
    let settled = |sim: &Sim| converged(sim) && sim.roots_agree();
    let Some(took) = sim.run_while(bound, settled) else {
        let views = if converged(sim) { "agree" } else { "differ" };
        return Err(format!(
            "no convergence within {bound:?} of {after} (member views {views}, Merkle roots differ)"
        ));
    };
    let held = sim.deleted_keys_held();
    if !held.is_empty() {
        return Err(format!(
            "converged {took:?} after {after}, but deleted keys are still held, as (holder, owner, key): {held:?}"
        ));
    }
    Ok(())
}

/// Fails if any death was declared since the events were last taken: no
/// node had failed, so every death is false.
fn no_deaths(sim: &mut Sim, when: &str) -> Result<(), String> {
    let deaths: Vec<_> = sim
        .take_events()
        .into_iter()
        .filter(|e| matches!(e.event, Event::Failed { .. }))
        .collect();
    if deaths.is_empty() {
        Ok(())
    } else {
        Err(format!("false deaths {when}: {deaths:?}"))
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// How long each wave of a rolling restart stays down: past the suspicion
/// timeout of a 1,000-node cluster, so the others hold it dead when it
/// returns (memberlist's issue 311 is a node returning at a low
/// incarnation while others hold it dead at a higher one).
pub const ROLLING_DOWNTIME: Duration = Duration::from_secs(90);

/// Crashes `nodes`, runs `downtime`, and restarts each through `via(i)`:
/// one incarnation up with its keys (`data_dir`), or at 0 without them.
fn down_and_back(
    sim: &mut Sim,
    nodes: &[usize],
    downtime: Duration,
    data_dir: bool,
    via: impl Fn(usize) -> usize,
) {
    let incarnations: Vec<Incarnation> = nodes
        .iter()
        .map(|&i| {
            sim.node(i)
                .map_or(Incarnation::ZERO, |s| s.members().local().incarnation)
        })
        .collect();
    for &i in nodes {
        sim.crash(i);
    }
    sim.run_for(downtime);
    for (&i, last) in nodes.iter().zip(incarnations) {
        if data_dir {
            sim.restart(i, last.next().unwrap_or(last), via(i));
        } else {
            sim.restart_without_data_dir(i, via(i));
        }
    }
}

/// How the nodes of a cluster restart, in [`restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartKind {
    /// Every node crashes at once; a second later all come back together.
    AllAtOnce,
    /// A tenth of the nodes at a time, each wave down for
    /// [`ROLLING_DOWNTIME`] (long enough for the others to declare it dead),
    /// the next wave going down five probe intervals after the last came
    /// back.
    Rolling,
}

/// The outcome of one case of [`restart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// Members that some member held dead, suspect or left when the case
    /// ended, though every member was running: summed over seeds.
    pub wrongly_dead: u64,
    /// The worst seed's simulated seconds from the last node's return until
    /// every member held every other alive; `None` if a seed never got
    /// there within `limit`.
    pub all_alive_seconds: Option<f64>,
    /// The mean over the seeds that got there.
    pub all_alive_seconds_mean: f64,
}

/// Restarts every node of a converged cluster, `kind`, each coming back
/// with its incarnation and keys (a data directory) or without (incarnation
/// 0, no keys), joining through another node (all at once: the next one;
/// rolling: one of another wave, which is up). Then runs until every member
/// holds every other alive, at most `limit`; members still held otherwise
/// by anyone then are the case's wrongly dead.
pub fn restart(params: &Params, kind: RestartKind, data_dir: bool, limit: Duration) -> Restart {
    let n = params.nodes;
    let mut wrongly_dead = 0;
    let mut times = Vec::new();
    let mut incomplete = false;
    for seed in params.rng_seeds() {
        let mut sim = Sim::new(n, params.swim.clone(), params.net(), seed);
        sim.converge_instantly();
        sim.run_for(params.swim.probe_interval * 3);
        match kind {
            RestartKind::AllAtOnce => {
                let everyone: Vec<usize> = (0..n).collect();
                down_and_back(&mut sim, &everyone, Duration::from_secs(1), data_dir, |i| {
                    (i + 1) % n
                });
            }
            RestartKind::Rolling => {
                // A tenth of the nodes at a time, each wave down long enough
                // for the others to declare it dead, as a slow redeploy
                // leaves it: the next wave goes down once the last is back.
                let wave = n.div_ceil(10);
                for first in (0..n).step_by(wave) {
                    let members: Vec<usize> = (first..(first + wave).min(n)).collect();
                    // Through a member of another wave, which is up.
                    let via = |i: usize| {
                        let via = (first + wave + i) % n;
                        if members.contains(&via) {
                            (i + n - 1) % n
                        } else {
                            via
                        }
                    };
                    down_and_back(&mut sim, &members, ROLLING_DOWNTIME, data_dir, via);
                    if first + wave < n {
                        sim.run_for(params.swim.probe_interval * 5);
                    }
                }
            }
        }
        let took = sim.run_while(limit, converged);
        drop(sim.take_events());
        match took {
            Some(took) => times.push(took.as_secs_f64()),
            None => incomplete = true,
        }
        wrongly_dead += (0..n)
            .filter(|&subject| {
                (0..n).any(|observer| {
                    observer != subject
                        && sim
                            .view(observer, subject)
                            .is_some_and(|status| status != MemberStatus::Alive)
                })
            })
            .count() as u64;
    }
    Restart {
        wrongly_dead,
        all_alive_seconds: (!incomplete).then(|| times.iter().copied().fold(0.0, f64::max)),
        all_alive_seconds_mean: mean(&times),
    }
}
