//! Probing, indirect probing, suspicion, death and refutation.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::time::Duration;

use common::{Net, addr, cluster_id, frame_for, node_id, node_key, seed};
use gossip_core::{Incarnation, MemberStatus, Timestamp};
use gossip_swim::{Config, Event, Message};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn two_nodes_ping_and_ack() {
    let mut net = Net::lan(2, seed(1));
    assert!(
        net.run_until(5 * SECOND, Net::converged).is_some(),
        "join did not converge"
    );
    net.run_for(30 * SECOND);
    for i in 0..2 {
        let stats = net.get(i).stats().clone();
        assert!(
            stats.probes >= 25,
            "node {i} sent {} probes in 30 s",
            stats.probes
        );
        assert_eq!(
            stats.indirect_probes, 0,
            "node {i}: every direct probe should be acked"
        );
        assert_eq!(net.get(i).local_health(), 0);
    }
    assert!(net.converged());
}

#[test]
fn unreachable_directly_but_reachable_indirectly_stays_alive() {
    let mut net = Net::lan(5, seed(2));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.cut(0, 4);
    net.run_for(120 * SECOND);
    assert!(
        net.get(0).stats().indirect_probes > 0,
        "node 0 never needed an indirect probe"
    );
    for i in 0..5 {
        for j in 0..5 {
            assert_eq!(
                net.view(i, j),
                Some(MemberStatus::Alive),
                "{i} sees {j} as {:?}",
                net.view(i, j)
            );
        }
    }
    let suspected = net.events[0]
        .iter()
        .any(|(_, e)| matches!(e, Event::Suspected { member, .. } if member.id == node_id(4)));
    assert!(
        !suspected,
        "indirect acks should have kept 4 from suspicion"
    );
}

#[test]
fn a_crashed_node_is_suspected_then_declared_dead_everywhere() {
    let mut net = Net::lan(5, seed(3));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.crash(4);
    let crashed_at = net.now;
    let took = net.run_until_dead_everywhere(4, 60 * SECOND);
    let took = took.expect("not every survivor declared node 4 dead within 60 s");
    // Suspicion timeout for 5 live members is 4 s at the minimum and 24 s at
    // the most; with confirmations, death lands in between, plus detection.
    assert!(took <= 30 * SECOND, "took {took:?}");
    for i in 0..4 {
        let suspected = net.events[i]
            .iter()
            .find(|(_, e)| matches!(e, Event::Suspected { member, .. } if member.id == node_id(4)));
        let failed = net.events[i].iter().find_map(|(at, e)| match e {
            Event::Failed { member, provenance } if member.id == node_id(4) => {
                Some((*at, provenance.clone()))
            }
            _ => None,
        });
        let (failed_at, provenance) =
            failed.unwrap_or_else(|| panic!("node {i} has no Failed event"));
        assert!(
            suspected.is_some_and(|(at, _)| *at <= failed_at),
            "node {i}: suspected before failed"
        );
        assert!(failed_at > crashed_at);
        assert!(
            provenance.suspected_by.is_some() || provenance.declared_by != node_id(i),
            "{provenance:?}"
        );
    }
    // Survivors stay alive in each other's eyes.
    for i in 0..4 {
        for j in 0..4 {
            assert_eq!(net.view(i, j), Some(MemberStatus::Alive));
        }
    }
}

#[test]
fn confirmations_shorten_the_suspicion() {
    // With many members, several independent accusers confirm the suspicion,
    // so death comes well before the 6x maximum timeout.
    let mut net = Net::lan(8, seed(4));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.crash(7);
    net.run_until_dead_everywhere(7, 120 * SECOND)
        .expect("crash not detected");
    // min = 4 * max(1, log10 8) s = 4 s; max = 24 s.
    let (max_timeout, min_timeout) = (24 * SECOND, 4 * SECOND);
    let mut confirmed = 0;
    for i in 0..7 {
        let suspected_at = net.events[i]
            .iter()
            .find_map(|(at, e)| {
                matches!(e, Event::Suspected { member, .. } if member.id == node_id(7))
                    .then_some(*at)
            })
            .unwrap();
        let (failed_at, provenance) = net.events[i]
            .iter()
            .find_map(|(at, e)| match e {
                Event::Failed { member, provenance } if member.id == node_id(7) => {
                    Some((*at, provenance.clone()))
                }
                _ => None,
            })
            .unwrap();
        let held = failed_at.saturating_duration_since(suspected_at);
        if provenance.declared_by == node_id(i) {
            // This node's own timer ran out: its length followed its confirmations.
            assert!(
                held >= min_timeout,
                "node {i} held the suspicion only {held:?}"
            );
            if provenance.confirmations >= 1 {
                confirmed += 1;
                assert!(
                    held < max_timeout,
                    "node {i}: {} confirmations but held {held:?}",
                    provenance.confirmations
                );
            }
        }
    }
    let first_death = (0..7)
        .filter_map(|i| {
            net.events[i]
                .iter()
                .find_map(|(at, e)| matches!(e, Event::Failed { .. }).then_some(*at))
        })
        .min()
        .unwrap();
    let first_suspicion = (0..7)
        .filter_map(|i| {
            net.events[i]
                .iter()
                .find_map(|(at, e)| matches!(e, Event::Suspected { .. }).then_some(*at))
        })
        .min()
        .unwrap();
    assert!(
        first_death.saturating_duration_since(first_suspicion) < max_timeout,
        "death took the full maximum timeout"
    );
    assert!(
        confirmed >= 1,
        "no node declared the death after a confirmation"
    );
}

#[test]
fn a_suspected_node_refutes_and_stays_alive() {
    let mut net = Net::lan(4, seed(5));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    // Node 3 cannot hear node 0, so node 0's probes of 3 fail directly; the
    // indirect ones still work, but cut 3 from everyone long enough for a
    // suspicion, then restore: 3 must refute rather than die.
    for j in 0..3 {
        net.blocked.insert((j, 3));
    }
    net.run_until(30 * SECOND, |net| {
        (0..3).any(|i| net.view(i, 3) == Some(MemberStatus::Suspect))
    })
    .expect("nobody suspected node 3");
    net.blocked.clear();
    let took = net.run_until(30 * SECOND, |net| {
        (0..3).all(|i| net.view(i, 3) == Some(MemberStatus::Alive))
    });
    assert!(took.is_some(), "node 3 did not recover everywhere");
    let refuted = net.events[3]
        .iter()
        .any(|(_, e)| matches!(e, Event::Refuted { .. }));
    assert!(refuted, "node 3 never refuted");
    assert!(net.get(3).members().local().incarnation > Incarnation::ZERO);
    assert!((0..4).all(|i| net.view(i, 3) != Some(MemberStatus::Dead)));
}

#[test]
fn missed_nacks_raise_the_health_score_and_stretch_the_probe_interval() {
    let mut net = Net::lan(5, seed(6));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    let healthy = net.get(0).probe_interval();
    // Node 0 can send but hears nothing: its probes fail and its helpers'
    // nacks never arrive, which Lifeguard reads as node 0 being the problem.
    for j in 1..5 {
        net.blocked.insert((j, 0));
    }
    let probes_before = net.get(0).stats().probes;
    net.run_for(20 * SECOND);
    let health = net.get(0).local_health();
    assert!(health >= 3, "health score only {health}");
    assert!(
        net.get(0).probe_interval() > healthy,
        "interval did not stretch"
    );
    let probes = net.get(0).stats().probes - probes_before;
    assert!(
        probes < 12,
        "a stretched interval should send far fewer than 20 probes in 20 s, sent {probes}"
    );
    // Healed, the score comes back down.
    net.blocked.clear();
    net.run_for(120 * SECOND);
    assert!(net.get(0).local_health() < health, "health never recovered");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |s| {
        let mut net = Net::lan(6, s);
        net.run_for(10 * SECOND);
        net.crash(5);
        net.run_for(40 * SECOND);
        net.events
            .iter()
            .map(|events| format!("{events:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(seed(7)), run(seed(7)));
}

#[test]
fn at_steady_state_the_only_packets_are_probes_and_acks() {
    let mut config = gossip_swim::Config::lan(common::cluster_id(), 8);
    config.push_pull_interval = None;
    let mut net = Net::new(8, config, seed(8));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.run_for(30 * SECOND); // let the join news run out
    let before: Vec<_> = (0..8).map(|i| net.get(i).stats().clone()).collect();
    let periods = 60;
    net.run_for(periods * SECOND);
    let (mut sent, mut probes, mut pushes) = (0, 0, 0);
    for (i, before) in before.iter().enumerate() {
        let after = net.get(i).stats();
        sent += after.datagrams_out - before.datagrams_out;
        probes += after.probes - before.probes;
        pushes += after.gossip_pushes - before.gossip_pushes;
    }
    assert_eq!(pushes, 0, "gossip pushed with no news");
    assert_eq!(sent, 2 * probes, "every datagram is a probe or its ack");
    let per_member_period = sent as f64 / (8.0 * periods as f64);
    assert!(
        per_member_period <= 2.1,
        "{per_member_period} datagrams per member per period"
    );
}

#[test]
fn a_probe_of_a_suspect_carries_the_suspicion_unless_lifeguard_is_off() {
    for lifeguard in [true, false] {
        let mut config = gossip_swim::Config::lan(common::cluster_id(), 2);
        if !lifeguard {
            config = config.without_lifeguard();
        }
        let mut net = Net::new(2, config, seed(9));
        assert!(net.run_until(5 * SECOND, Net::converged).is_some());
        // Cut both ways: node 0 suspects node 1, and node 1 cannot hear of it.
        net.cut(0, 1);
        net.run_until(10 * SECOND, |net| {
            net.view(0, 1) == Some(MemberStatus::Suspect)
        })
        .expect("no suspicion");
        net.blocked.clear();
        net.drain(1);
        assert_eq!(net.get(1).members().local().incarnation, Incarnation::ZERO);
        // The next probe of node 1 carries the suspicion, and node 1 refutes
        // on reading it, without waiting for the rumor.
        let mut carried = false;
        for _ in 0..5 {
            if carried {
                break;
            }
            let at = net.now + net.get(0).probe_interval();
            net.now = at;
            net.node(0).handle_timeout(at);
            while let Some(t) = net.node(0).poll_transmit() {
                let limits = gossip_core::Limits::default();
                let frame =
                    gossip_core::decode_frame::<Message>(&t.payload, common::cluster_id(), &limits)
                        .unwrap();
                let Message::Ping {
                    suspicion: Some(claim),
                    ..
                } = frame.body
                else {
                    continue;
                };
                assert_eq!(
                    (claim.id, claim.status),
                    (node_id(1), MemberStatus::Suspect)
                );
                carried = true;
                net.node(1)
                    .handle_datagram(at, node_id(0), common::addr(0), &t.payload)
                    .unwrap();
                let refuted = std::iter::from_fn(|| net.node(1).poll_event())
                    .any(|e| matches!(e, Event::Refuted { .. }));
                assert!(refuted, "node 1 did not refute at once");
            }
        }
        assert_eq!(carried, lifeguard, "lifeguard={lifeguard}");
    }
}

#[test]
fn updated_metadata_reaches_everyone_with_a_higher_incarnation() {
    let mut net = Net::lan(5, seed(10));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    let now = net.now;
    let meta = gossip_core::MemberMeta::new("renamed", [common::addr(2)]);
    net.node(2).update_meta(now, meta).unwrap();
    net.drain(2);
    // Pushed at once and piggybacked; a member the rumor's retransmit budget
    // missed is repaired by the push-pull backstop (every 30 s).
    let took = net.run_until(40 * SECOND, |net| {
        (0..5).all(|i| {
            net.get(i)
                .members()
                .get(&node_id(2))
                .is_some_and(|m| m.meta.name() == "renamed")
        })
    });
    assert!(took.is_some(), "the new name did not reach everyone");
    assert_eq!(
        net.get(0).members().get(&node_id(2)).unwrap().incarnation,
        Incarnation::new(1)
    );
}

/// Node 0 of a converged three-node network hears from node 2 that node 1
/// is suspect, and from then on hears nothing unless `answer` says when, and
/// over which channel (reliable or not), node 1 gets node 0's ping of that
/// moment and answers it. Returns node 0's pings of node 1 carrying the
/// suspicion (when, and whether over the reliable channel), when node 0
/// declared node 1 dead (if it did within 30 s), and the network.
fn isolated_suspicion(
    answer: Option<(Timestamp, bool)>,
) -> (Vec<(Timestamp, bool)>, Option<Timestamp>, Net) {
    let mut net = Net::lan(3, seed(31));
    assert!(net.run_until(5 * SECOND, Net::converged).is_some());
    let limits = gossip_core::Limits::default();
    let suspect = net
        .get(0)
        .members()
        .get(&node_id(1))
        .unwrap()
        .clone()
        .accused(&node_key(2), cluster_id(), MemberStatus::Suspect);
    let frame = frame_for(
        cluster_id(),
        2,
        Message::Gossip { state_digest: None },
        vec![gossip_core::Rumor::Member { member: suspect }],
    );
    let start = net.now;
    net.node(0)
        .handle_datagram(start, node_id(2), addr(2), &frame)
        .unwrap();
    let (mut pings, mut death) = (Vec::new(), None);
    let mut outbox: Vec<_> = std::iter::from_fn(|| net.node(0).poll_transmit()).collect();
    loop {
        let now = net.now;
        for t in outbox.drain(..) {
            let body = gossip_core::decode_frame::<Message>(&t.payload, cluster_id(), &limits)
                .unwrap()
                .body;
            if t.addr != addr(1)
                || !matches!(
                    body,
                    Message::Ping {
                        suspicion: Some(_),
                        ..
                    }
                )
            {
                continue;
            }
            pings.push((now, t.reliable));
            if answer == Some((now, t.reliable)) {
                net.node(1)
                    .handle_datagram(now, node_id(0), addr(0), &t.payload)
                    .unwrap();
                let ack = net.node(1).poll_transmit().expect("an ack");
                net.node(0)
                    .handle_datagram(now, node_id(1), addr(1), &ack.payload)
                    .unwrap();
            }
        }
        while let Some(event) = net.node(0).poll_event() {
            if matches!(event, Event::Failed { member, .. } if member.id == node_id(1)) {
                death = Some(now);
            }
        }
        match net.get(0).poll_timeout() {
            Some(at) if at <= start + 30 * SECOND && death.is_none() => {
                net.now = at;
                net.node(0).handle_timeout(at);
                outbox.extend(std::iter::from_fn(|| net.node(0).poll_transmit()));
            }
            _ => return (pings, death, net),
        }
    }
}

/// Lifeguard's buddy system, at the last moment: a suspect whose refutation
/// this node missed is pinged with the suspicion one probe timeout before
/// the suspicion runs out, and the refutation on its ack keeps it alive.
#[test]
fn a_suspect_whose_refutation_was_missed_is_called_once_more_before_it_dies() {
    let (pings, death, _) = isolated_suspicion(None);
    let death = death.expect("with no answer, the suspect dies");
    let (last_call, _) = *pings.last().expect("node 0 pinged its suspect");
    // One probe timeout before the death, stretched by node 0's local
    // health (at most 8 x 500 ms): node 0 heard no ack in all that time.
    let ahead = death.saturating_duration_since(last_call);
    assert!(
        ahead > Duration::ZERO && ahead <= 4 * SECOND,
        "the last ping of the suspect went {ahead:?} before its death; pings at {pings:?}"
    );
    // The same run, but node 1 answers that last ping.
    let (_, death, net) = isolated_suspicion(Some((last_call, false)));
    assert_eq!(death, None, "the answered suspect died");
    // Node 0 took the refutation (it may suspect node 1 again since, at the
    // new incarnation: it still hears nothing).
    let record = net.get(0).members().get(&node_id(1)).unwrap().clone();
    assert_eq!(record.incarnation, Incarnation::new(1));
}

#[test]
fn a_last_call_whose_datagram_is_lost_still_reaches_the_suspect_over_the_reliable_channel() {
    let (pings, death, _) = isolated_suspicion(None);
    assert!(death.is_some(), "with no answer, the suspect dies");
    let (last_call, _) = *pings.last().expect("node 0 pinged its suspect");
    let channels: Vec<bool> = pings
        .iter()
        .filter(|(at, _)| *at == last_call)
        .map(|(_, reliable)| *reliable)
        .collect();
    assert!(
        channels.contains(&true) && channels.contains(&false),
        "the last call went {channels:?} (reliable or not); pings {pings:?}"
    );
    // The same run, but only the reliable copy reaches node 1.
    let (_, death, _) = isolated_suspicion(Some((last_call, true)));
    assert_eq!(
        death, None,
        "the suspect that answered over the reliable channel died"
    );
}

#[test]
fn a_failed_probe_accuses_only_the_life_it_probed() {
    let mut net = Net::lan(3, seed(98));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.run_for(5 * SECOND);
    // Node 2 announces a new life (here a new name, at incarnation 1), and
    // stops before anyone hears of it.
    let now = net.now;
    let meta = gossip_core::MemberMeta::new("renamed", [addr(2)]);
    net.node(2).update_meta(now, meta).unwrap();
    let new_life = net.get(2).members().local().clone();
    net.crash(2);
    // Node 0's probe of node 2 goes unanswered...
    let indirect = net.get(0).stats().indirect_probes;
    net.run_until(5 * SECOND, |net| {
        net.get(0).stats().indirect_probes > indirect
    })
    .expect("node 0 never probed node 2");
    // ...and before it ends, node 0 hears of node 2's new life.
    let heard_at = net.now;
    let rumor = frame_for(
        cluster_id(),
        1,
        Message::Gossip { state_digest: None },
        vec![gossip_core::Rumor::Member { member: new_life }],
    );
    net.node(0)
        .handle_datagram(heard_at, node_id(1), addr(1), &rumor)
        .unwrap();
    net.drain(0);
    net.run_for(SECOND);
    let accused_by_node_0 = net.events[0].iter().any(|(at, event)| {
        *at >= heard_at
            && matches!(event, Event::Suspected { member, by, .. }
                if member.id == node_id(2) && *by == node_id(0))
    });
    assert!(
        !accused_by_node_0,
        "node 0's probe of the earlier life accused the new one"
    );
    assert_eq!(net.get(0).stats().probes_outlived, 1);
}

#[test]
fn helpers_nack_before_the_probe_ends_so_probing_a_dead_node_costs_no_health() {
    let mut net = Net::lan(6, seed(31));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.crash(5);
    // Until everyone holds node 5 dead, every survivor's probe of it fails;
    // the helpers' nacks say the target is silent, not the prober.
    net.run_until_dead_everywhere(5, 60 * SECOND)
        .expect("node 5 was never declared dead everywhere");
    for i in 0..5 {
        let stats = net.get(i).stats();
        assert_eq!(net.get(i).local_health(), 0, "node {i}: {stats:?}");
        assert_eq!(stats.inconclusive_probes, 0, "node {i}");
    }
}

#[test]
fn a_node_that_hears_no_one_raises_no_suspicion_until_its_health_bottoms_out() {
    // Node 0 can send but hears nothing (a slow or half-cut node): its
    // probes fail and not one helper answers.
    let deaf = |config: gossip_swim::Config| {
        let mut net = Net::new(5, config, seed(32));
        assert!(net.run_until(10 * SECOND, Net::converged).is_some());
        for j in 1..5 {
            net.blocked.insert((j, 0));
        }
        let raised_before = net.get(0).stats().suspicions_raised;
        net.run_for(4 * SECOND);
        let stats = net.get(0).stats().clone();
        (
            stats.suspicions_raised - raised_before,
            stats.inconclusive_probes,
            net,
        )
    };
    let config = gossip_swim::Config::lan(cluster_id(), 5);
    let (raised, inconclusive, mut net) = deaf(config.clone());
    assert_eq!(raised, 0, "with Lifeguard, node 0 accused a healthy member");
    assert!(inconclusive >= 1);
    // Cut off for good, it reaches the top of its health scale and suspects.
    net.run_for(60 * SECOND);
    assert!(net.get(0).stats().suspicions_raised > 0);
    let (raised, inconclusive, _) = deaf(config.without_lifeguard());
    assert!(raised >= 1, "plain SWIM suspects on every failed probe");
    assert_eq!(inconclusive, 0);
}

/// Node 2's links lose every datagram both ways, but reliable frames get
/// through: the fallback probe keeps it from suspicion; without it, it is
/// suspected.
fn suspicions_of_a_member_behind_lossy_links(fallback_probe: bool) -> (usize, u64) {
    let mut config = gossip_swim::Config::lan(cluster_id(), 3);
    config.fallback_probe = fallback_probe;
    let mut net = Net::new(3, config, seed(41));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    for other in [0, 1] {
        net.lossy.insert((other, 2));
        net.lossy.insert((2, other));
    }
    net.run_for(60 * SECOND);
    let suspicions = (0..3)
        .flat_map(|i| net.events[i].iter())
        .filter(|(_, e)| matches!(e, Event::Suspected { .. }))
        .count();
    let fallbacks = (0..3).map(|i| net.get(i).stats().fallback_probes).sum();
    (suspicions, fallbacks)
}

#[test]
fn the_fallback_probe_over_a_reliable_channel_keeps_a_member_behind_lossy_links_alive() {
    let (suspicions, fallbacks) = suspicions_of_a_member_behind_lossy_links(true);
    assert!(fallbacks > 0, "no fallback probe was sent");
    assert_eq!(
        suspicions, 0,
        "suspected although its reliable acks came back"
    );
    let (suspicions, fallbacks) = suspicions_of_a_member_behind_lossy_links(false);
    assert_eq!(fallbacks, 0);
    assert!(
        suspicions > 0,
        "without the fallback, lost datagrams should mean suspicion"
    );
}

/// When each survivor first suspected, and when each held dead, the member
/// `victim` (as offsets from `since`).
fn detection(net: &Net, victim: usize, since: Timestamp) -> (Vec<Duration>, Vec<Duration>) {
    let (mut suspected, mut failed) = (Vec::new(), Vec::new());
    for i in net.running().filter(|&i| i != victim) {
        for (at, event) in &net.events[i] {
            let offset = at.saturating_duration_since(since);
            match event {
                Event::Suspected { member, .. } if member.id == node_id(victim) && *at >= since => {
                    suspected.push(offset);
                }
                Event::Failed { member, .. } if member.id == node_id(victim) && *at >= since => {
                    failed.push(offset);
                }
                _ => {}
            }
        }
    }
    suspected.sort();
    failed.sort();
    (suspected, failed)
}

#[test]
fn a_crashed_process_whose_host_answers_is_dead_everywhere_within_three_seconds() {
    let patience = Config::lan(cluster_id(), 16).stall_patience;
    let mut times = Vec::new();
    for s in 0..5 {
        let mut net = Net::lan(16, seed(40 + s));
        assert!(net.run_until(20 * SECOND, Net::converged).is_some());
        net.run_for(5 * SECOND);
        let crashed_at = net.now;
        net.crash_process(15);
        let took = net
            .run_until_dead_everywhere(15, 30 * SECOND)
            .expect("not detected");
        // Evidence comes with the first datagram sent to the crashed
        // process after the crash, which is up to chance: judged on the
        // median below.
        assert!(took < patience, "seed {}: took {took:?}", net.seed);
        times.push(took);
        let hastened: u64 = net
            .running()
            .map(|i| net.get(i).stats().suspicions_hastened)
            .sum();
        assert!(hastened > 0, "the unreachable evidence was not used");
        let (suspected, _) = detection(&net, 15, crashed_at);
        assert_eq!(suspected.len(), 15, "every survivor suspected first");
    }
    times.sort();
    assert!(times[2] <= 3 * SECOND, "median of {times:?}");
}

#[test]
fn a_crashed_process_that_held_its_port_a_moment_is_found_by_checking_again() {
    let patience = Config::lan(cluster_id(), 16).stall_patience;
    let mut times = Vec::new();
    let mut rechecks = 0;
    for s in 0..5 {
        let mut net = Net::lan(16, seed(70 + s));
        assert!(net.run_until(20 * SECOND, Net::converged).is_some());
        net.run_for(5 * SECOND);
        // Silent at first, as a process exiting or writing a core: the
        // first probes and check pings draw nothing, not even an ICMP error.
        net.crash(15);
        net.run_until(3 * SECOND, |net| {
            net.running().any(|i| net.get(i).stats().suspect_checks > 0)
        });
        net.run_for(Duration::from_millis(300));
        net.close_port(15);
        let took = net
            .run_until_dead_everywhere(15, 30 * SECOND)
            .expect("not detected");
        assert!(took < patience, "seed {}: took {took:?}", net.seed);
        times.push(took);
        rechecks += net
            .running()
            .map(|i| net.get(i).stats().suspect_rechecks)
            .sum::<u64>();
    }
    assert!(rechecks > 0, "no check was sent again");
    // From the port's closing: the evidence a check ping draws, then
    // `unreachable_suspicion` (1 s), then the death's spread. Without the
    // checks sent again, the members that checked while the port was open
    // waited out their suspicions (about 4 s).
    times.sort();
    assert!(
        times[2] <= Duration::from_millis(2500),
        "median of {times:?}"
    );
}

#[test]
fn a_lost_host_is_declared_dead_no_sooner_than_the_stall_patience() {
    let mut net = Net::lan(16, seed(45));
    assert!(net.run_until(20 * SECOND, Net::converged).is_some());
    net.run_for(5 * SECOND);
    let lost_at = net.now;
    net.crash(15);
    net.run_until_dead_everywhere(15, 60 * SECOND)
        .expect("not detected");
    let (suspected, failed) = detection(&net, 15, lost_at);
    let patience = Config::lan(cluster_id(), 16).stall_patience;
    assert!(failed[0] >= patience, "first death after {:?}", failed[0]);
    assert!(
        suspected[0] < 3 * SECOND,
        "first suspicion {:?}",
        suspected[0]
    );
}

#[test]
fn a_member_stalled_for_the_whole_patience_is_suspected_but_never_declared_dead() {
    let patience = Config::lan(cluster_id(), 16).stall_patience;
    for s in 0..5 {
        let mut net = Net::lan(16, seed(50 + s));
        assert!(net.run_until(20 * SECOND, Net::converged).is_some());
        net.run_for(Duration::from_millis(5_000 + 137 * s));
        let stalled_at = net.now;
        net.stall(3, patience);
        net.run_for(patience + 20 * SECOND);
        let (suspected, failed) = detection(&net, 3, stalled_at);
        assert!(
            failed.is_empty(),
            "seed {}: declared dead {failed:?}",
            net.seed
        );
        assert!(
            !suspected.is_empty(),
            "seed {}: never even suspected",
            net.seed
        );
        assert!(net.converged(), "seed {}", net.seed);
    }
}

#[test]
fn a_forged_unreachable_report_at_every_member_kills_no_live_member() {
    let mut net = Net::lan(8, seed(55));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    let forged_at = net.now;
    for i in (0..8).filter(|&i| i != 5) {
        let now = net.now;
        net.node(i).handle_unreachable(now, addr(5));
        net.drain(i);
    }
    net.run_for(20 * SECOND);
    let (suspected, failed) = detection(&net, 5, forged_at);
    assert!(
        !suspected.is_empty(),
        "the reports were not taken as evidence"
    );
    assert!(failed.is_empty(), "declared dead {failed:?}");
    assert!(net.converged());
}

/// When the first survivor suspected a lost host, with probe timeouts
/// adaptive or fixed.
fn first_suspicion_of_a_lost_host(adaptive: bool, seed_value: u64) -> Duration {
    let mut config = Config::lan(cluster_id(), 16);
    config.adaptive_probe_timeout = adaptive;
    let mut net = Net::new(16, config, seed_value);
    net.latency = Duration::from_millis(5);
    assert!(net.run_until(20 * SECOND, Net::converged).is_some());
    net.run_for(30 * SECOND);
    let lost_at = net.now;
    net.crash(15);
    net.run_for(15 * SECOND);
    detection(&net, 15, lost_at).0[0]
}

#[test]
fn measured_round_trips_shorten_the_probe_timeout_and_the_first_suspicion() {
    let mut net = Net::lan(4, seed(60));
    net.latency = Duration::from_millis(5);
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.run_for(10 * SECOND);
    let (smoothed, _) = net.get(0).round_trip(&node_id(1)).expect("measured");
    assert_eq!(smoothed, Duration::from_millis(10));
    let (mut adaptive, mut fixed) = (Duration::ZERO, Duration::ZERO);
    for s in 0..5 {
        adaptive += first_suspicion_of_a_lost_host(true, seed(61 + s));
        fixed += first_suspicion_of_a_lost_host(false, seed(61 + s));
    }
    assert!(adaptive < fixed, "adaptive {adaptive:?}, fixed {fixed:?}");
}

/// How long node 0's probe of a lost host took, from its probe tick to its
/// own suspicion, in a three-member cluster whose other member (the only
/// helper) stalls, so the indirect probe draws no answer.
fn probe_of_a_lost_host_with_a_silent_helper(adaptive: bool, seed_value: u64) -> Duration {
    let mut config = Config::lan(cluster_id(), 3);
    config.adaptive_probe_timeout = adaptive;
    // Local health would stretch the timeouts after the first silent probe.
    config.awareness_max = 1;
    let mut net = Net::new(3, config, seed_value);
    net.latency = Duration::from_millis(5);
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.run_for(10 * SECOND);
    net.crash(2);
    net.stall(1, 10 * SECOND);
    until_suspected_by_node_0(&mut net, 2)
}

/// Runs until node 0 suspects `target` (within 10 s) and returns how long
/// that took from the probe tick that began its probe.
fn until_suspected_by_node_0(net: &mut Net, target: usize) -> Duration {
    let suspected_by_node_0 = |net: &Net| {
        net.events[0].iter().find_map(|(at, event)| match event {
            Event::Suspected { member, by, .. }
                if member.id == node_id(target) && *by == node_id(0) =>
            {
                Some(*at)
            }
            _ => None,
        })
    };
    let (mut probes, mut tick) = (net.get(0).stats().probes, net.now);
    let limit = net.now + 10 * SECOND;
    while net.now < limit {
        net.step();
        // A probe that ends with its period concludes before the next tick,
        // in the same step.
        if suspected_by_node_0(net).is_some() {
            break;
        }
        if net.get(0).stats().probes != probes {
            probes = net.get(0).stats().probes;
            tick = net.now;
        }
    }
    let suspected = suspected_by_node_0(net).expect("node 0 never suspected its target");
    suspected.saturating_duration_since(tick)
}

#[test]
fn a_probe_with_a_short_measured_timeout_gives_its_indirect_probes_what_a_fixed_one_does() {
    // 10 ms round trips: the measured timeout is its floor, half the
    // configured 500 ms. The indirect probes get the rest of a fixed
    // probe's period (500 ms) either way, so the adaptive probe concludes
    // 250 ms sooner, not at the end of its period.
    let adaptive = probe_of_a_lost_host_with_a_silent_helper(true, seed(80));
    assert_eq!(adaptive, Duration::from_millis(750));
    let fixed = probe_of_a_lost_host_with_a_silent_helper(false, seed(80));
    assert_eq!(fixed, SECOND);
}

/// Node 0's probe of a lost host (node 4) when the nacks of the first
/// `silent` of its three helpers (nodes 1 to 3) are lost: how long from its
/// probe tick to its suspicion, and node 0's local health after it. The
/// helpers make no probes of their own, so node 0's suspicion is the first.
fn probe_with_lost_nacks(adaptive: bool, silent: usize) -> (Duration, u32) {
    let mut net = Net::with_configs(5, seed(81), |i| {
        let mut config = Config::lan(cluster_id(), 5);
        config.adaptive_probe_timeout = adaptive;
        if (1..=3).contains(&i) {
            config.probe_interval = 3_600 * SECOND;
        }
        config
    });
    net.latency = Duration::from_millis(5);
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.run_for(10 * SECOND);
    net.crash(4);
    for helper in 1..=silent {
        net.blocked.insert((helper, 0));
    }
    let took = until_suspected_by_node_0(&mut net, 4);
    (took, net.get(0).local_health())
}

#[test]
fn a_probe_concludes_once_all_helpers_but_one_have_nacked() {
    // 10 ms round trips. The helpers, with no round trips to the lost host,
    // nack 400 ms (0.8 of the configured 500 ms) after a ping-req: the
    // probe concludes on the second nack, 250 ms (adaptive) or 500 ms
    // (fixed) plus 410 ms after its tick, and the one it did not wait for
    // costs node 0 no health.
    let nacks_at = Duration::from_millis(410);
    assert_eq!(probe_with_lost_nacks(true, 1), (SECOND / 4 + nacks_at, 0));
    assert_eq!(probe_with_lost_nacks(false, 1), (SECOND / 2 + nacks_at, 0));
    // One nack of three is not enough: the probe waits out its indirect
    // probes' time, and the two missing nacks count against node 0.
    assert_eq!(
        probe_with_lost_nacks(true, 2),
        (Duration::from_millis(750), 2)
    );
    assert_eq!(probe_with_lost_nacks(false, 2), (SECOND, 2));
}

#[test]
fn a_member_stalled_through_a_suspicion_deadline_calls_the_suspect_before_declaring_it() {
    let mut net = Net::lan(8, seed(70));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    net.run_for(5 * SECOND);
    let since = net.now;
    // Node 3 stalls long enough to be suspected everywhere...
    net.stall(3, 4 * SECOND);
    net.run_until(10 * SECOND, |net| {
        (0..8)
            .filter(|&i| i != 3)
            .all(|i| net.view(i, 3) == Some(MemberStatus::Suspect))
    })
    .expect("node 3 suspected everywhere");
    // Confirmations bring every deadline to the minimum...
    net.run_for(SECOND / 2);
    // ...and node 1, holding that suspicion, stalls through its deadline and
    // loses everything sent to it meanwhile, node 3's refutation included.
    net.stall(1, 8 * SECOND);
    for from in (0..8).filter(|&i| i != 1) {
        net.blocked.insert((from, 1));
    }
    net.run_for(8 * SECOND);
    for from in (0..8).filter(|&i| i != 1) {
        net.blocked.remove(&(from, 1));
    }
    net.run_for(10 * SECOND);
    let (_, failed) = detection(&net, 3, since);
    assert!(failed.is_empty(), "node 3 declared dead {failed:?}");
    assert!(net.get(1).stats().late_calls >= 1, "no late call");
    assert!(net.converged());
}

#[test]
fn a_declarer_whose_input_lags_waits_for_it_before_declaring_a_stalled_member() {
    let patience = Config::lan(cluster_id(), 8).stall_patience;
    for s in 0..5 {
        let mut net = Net::lan(8, seed(75 + s));
        assert!(net.run_until(15 * SECOND, Net::converged).is_some());
        net.run_for(Duration::from_millis(5_000 + 211 * s));
        let since = net.now;
        // Node 3 stalls for a little less than the patience...
        net.stall(3, patience - SECOND / 10);
        net.run_for(patience - SECOND / 2);
        // ...and just before it wakes, what reaches node 1 starts to be
        // handled 2 s late, node 3's refutation included, while node 1's
        // timers keep time.
        net.slow_down(1, 2 * SECOND, 6 * SECOND);
        net.run_for(20 * SECOND);
        let (_, failed) = detection(&net, 3, since);
        assert!(
            failed.is_empty(),
            "seed {}: node 3 declared dead {failed:?}",
            net.seed
        );
        assert!(net.converged(), "seed {}", net.seed);
    }
}

/// Whether everything sent to node `i` is lost, as to a stopped process
/// whose socket buffer overflows.
fn lose_input(net: &mut Net, i: usize, lost: bool) {
    for o in (0..net.len()).filter(|&o| o != i) {
        if lost {
            net.blocked.insert((o, i));
        } else {
            net.blocked.remove(&(o, i));
        }
    }
}

/// Node `i` stalls for `duration`, losing what is sent to it meanwhile.
fn stall_losing_input(net: &mut Net, i: usize, duration: Duration) {
    lose_input(net, i, true);
    net.stall(i, duration);
    net.run_for(duration);
    lose_input(net, i, false);
}

/// On five converged eight-node networks (seeds from `first_seed`), runs
/// `stalls` (given the stall patience), then checks that node 3 was
/// suspected but never declared dead, that node `back` found itself back
/// from a stall, and that the views converged.
fn node_3_outlives(first_seed: u64, back: usize, stalls: impl Fn(&mut Net, Duration)) {
    let patience = Config::lan(cluster_id(), 8).stall_patience;
    for s in 0..5 {
        let mut net = Net::lan(8, seed(first_seed + s));
        assert!(net.run_until(15 * SECOND, Net::converged).is_some());
        net.run_for(Duration::from_millis(5_000 + 173 * s));
        let since = net.now;
        stalls(&mut net, patience);
        net.run_for(20 * SECOND);
        let (suspected, failed) = detection(&net, 3, since);
        assert!(!suspected.is_empty(), "seed {}: never suspected", net.seed);
        assert!(
            failed.is_empty(),
            "seed {}: node 3 declared dead {failed:?}",
            net.seed
        );
        assert!(net.get(back).stats().stalls >= 1, "seed {}", net.seed);
        assert!(net.converged(), "seed {}", net.seed);
    }
}

#[test]
fn a_member_back_from_a_stall_refutes_before_anyone_tells_it_of_its_suspicion() {
    // Node 3 stalls for a little less than the patience, is back for a
    // moment, too short to hear of its suspicion, and stalls again: each
    // stall within the patience.
    node_3_outlives(86, 3, |net, patience| {
        stall_losing_input(net, 3, patience - SECOND / 5);
        net.run_for(Duration::from_millis(1));
        stall_losing_input(net, 3, 3 * SECOND);
    });
}

#[test]
fn a_member_back_from_a_stall_tells_every_member_at_once() {
    // Forty members: an epidemic from the returning member takes hops, and
    // any of them may hold a suspicion whose deadline is near. One
    // millisecond a hop.
    let patience = Config::lan(cluster_id(), 40).stall_patience;
    let mut net = Net::lan(40, seed(95));
    assert!(net.run_until(30 * SECOND, Net::converged).is_some());
    net.run_for(5 * SECOND);
    let before = net.get(3).members().local().incarnation;
    stall_losing_input(&mut net, 3, patience - SECOND / 5);
    net.run_for(Duration::from_millis(3));
    let announced = net.get(3).members().local().incarnation;
    assert!(announced > before, "node 3 announced no new life");
    let behind: Vec<usize> = (0..40)
        .filter(|&i| i != 3)
        .filter(|&i| {
            net.get(i).members().get(&node_id(3)).map(|r| r.incarnation) != Some(announced)
        })
        .collect();
    assert!(
        behind.is_empty(),
        "members without node 3's new life 3 ms after its return: {behind:?}"
    );
}

#[test]
fn a_member_back_from_a_stall_declares_no_death_before_it_has_heard_the_news() {
    node_3_outlives(91, 1, |net, patience| {
        // Node 3 stalls for a little less than the patience, losing what is
        // sent to it, and is suspected...
        lose_input(net, 3, true);
        net.stall(3, patience - SECOND / 5);
        net.run_for(3 * SECOND);
        // ...and node 1, holding the suspicion, stalls from then to past its
        // deadline, losing node 3's refutation.
        lose_input(net, 1, true);
        net.stall(1, patience - SECOND / 5);
        net.run_for(patience - SECOND / 5 - 3 * SECOND);
        lose_input(net, 3, false);
        net.run_for(SECOND);
        // When node 1 is back, node 3 handles what reaches it a second late.
        net.slow_down(3, SECOND, 5 * SECOND);
        net.run_for(2 * SECOND);
        lose_input(net, 1, false);
    });
}

#[test]
fn many_suspicions_at_once_cost_at_most_eight_check_pings_a_period() {
    let mut net = Net::lan(40, seed(80));
    assert!(net.run_until(30 * SECOND, Net::converged).is_some());
    net.run_for(5 * SECOND);
    let before: Vec<u64> = (0..40).map(|i| net.get(i).stats().suspect_checks).collect();
    let left: Vec<usize> = (0..20).collect();
    let right: Vec<usize> = (20..40).collect();
    net.split(&left, &right);
    net.run_for(4 * SECOND);
    let skipped: u64 = (0..40)
        .map(|i| net.get(i).stats().suspect_checks_skipped)
        .sum();
    assert!(skipped > 0, "the partition's suspicions were all checked");
    for (i, before) in before.iter().enumerate() {
        let sent = net.get(i).stats().suspect_checks - before;
        // Four periods, and the one the split fell in.
        assert!(sent <= 8 * 5, "node {i} sent {sent} check pings");
    }
}
