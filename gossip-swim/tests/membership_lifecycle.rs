//! Joining, leaving, restarting and healing partitions.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Net, addr, node_id, seed};
use gossip_core::{Incarnation, MemberStatus};
use gossip_swim::Event;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn joining_through_a_seed_that_starts_late_retries_with_backoff() {
    let mut net = Net::lan(3, seed(11));
    // Node 0, the seed, is down when the others try to join.
    net.crash(0);
    net.run_for(5 * SECOND);
    net.restart(0, Incarnation::ZERO, 0);
    let took = net
        .run_until(60 * SECOND, Net::converged)
        .expect("never converged");
    assert!(took < 40 * SECOND, "{took:?}");
    for i in 1..3 {
        assert!(
            net.events[i]
                .iter()
                .any(|(_, e)| matches!(e, Event::JoinCompleted { via } if *via == node_id(0)))
        );
    }
}

#[test]
fn a_graceful_leave_is_seen_as_left_not_failed() {
    let mut net = Net::lan(5, seed(12));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    let now = net.now;
    net.node(4).leave(now);
    net.drain(4);
    net.run_until(10 * SECOND, |net| {
        net.events[4]
            .iter()
            .any(|(_, e)| matches!(e, Event::LeaveCompleted))
    })
    .expect("leave never completed");
    net.crash(4); // the driver shuts down after LeaveCompleted
    net.run_for(60 * SECOND);
    for i in 0..4 {
        assert_eq!(net.view(i, 4), Some(MemberStatus::Left), "node {i}");
        let failed = net.events[i]
            .iter()
            .any(|(_, e)| matches!(e, Event::Failed { member, .. } if member.id == node_id(4)));
        assert!(!failed, "node {i} saw node 4 fail");
    }
}

#[test]
fn a_restarted_node_rejoins_with_a_higher_incarnation() {
    for persisted in [true, false] {
        let mut net = Net::lan(4, seed(13));
        assert!(net.run_until(10 * SECOND, Net::converged).is_some());
        net.crash(3);
        net.run_until_dead_everywhere(3, 60 * SECOND)
            .expect("crash not detected");
        // With a data directory the node comes back one incarnation up; without
        // one it starts from 0 and must refute its own death.
        let incarnation = if persisted {
            Incarnation::new(1)
        } else {
            Incarnation::ZERO
        };
        net.restart(3, incarnation, 1);
        net.run_until(30 * SECOND, Net::converged)
            .unwrap_or_else(|| panic!("persisted={persisted}: no rejoin"));
        for i in 0..3 {
            let record = net.get(i).members().get(&node_id(3)).unwrap().clone();
            assert!(
                record.incarnation >= Incarnation::new(1),
                "persisted={persisted}"
            );
            assert!(
                net.events[i]
                    .iter()
                    .any(|(_, e)| matches!(e, Event::Rejoined(m) if m.id == node_id(3)))
            );
            // No ghost: one record for node 3.
            assert_eq!(net.get(i).members().len(), 4);
        }
    }
}

#[test]
fn a_partition_heals_by_itself() {
    let mut net = Net::lan(6, seed(14));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    let (left, right) = ([0usize, 1, 2], [3usize, 4, 5]);
    net.split(&left, &right);
    net.run_until(120 * SECOND, |net| {
        left.iter().all(|&a| {
            right
                .iter()
                .all(|&b| net.view(a, b) == Some(MemberStatus::Dead))
        })
    })
    .expect("the halves never declared each other dead");
    net.blocked.clear();
    // While the halves heal, the far side's stale accusations arrive; no
    // node may take them as the death of a member on its own side, which it
    // could reach all along.
    let same_side_death = |net: &Net| {
        [left, right].iter().any(|side| {
            side.iter().any(|&a| {
                side.iter()
                    .any(|&b| net.view(a, b) == Some(MemberStatus::Dead))
            })
        })
    };
    let took = net
        .run_until(120 * SECOND, |net| {
            assert!(
                !same_side_death(net),
                "a node declared a member of its own side dead while healing (seed {})",
                seed(14)
            );
            net.converged()
        })
        .expect("the partition never healed");
    assert!(took <= 60 * SECOND, "healing took {took:?}");
}

/// Halves that stayed apart past the departed horizon have forgotten each
/// other: no dead member is left to re-contact. The seed (node 0) is on one
/// side; the other side contacts it at steady state and the cluster is one
/// again soon after the network heals.
#[test]
fn a_partition_longer_than_the_departed_horizon_heals_through_the_seeds() {
    let mut config = gossip_swim::Config::lan(common::cluster_id(), 6);
    config.departed_horizon = 60 * SECOND;
    config.push_pull_interval = None;
    let mut net = Net::new(6, config, seed(31));
    assert!(net.run_until(15 * SECOND, Net::converged).is_some());
    let (left, right) = ([0usize, 1, 2], [3usize, 4, 5]);
    net.split(&left, &right);
    net.run_until(300 * SECOND, |net| {
        left.iter().all(|&a| {
            right
                .iter()
                .all(|&b| net.view(a, b).is_none() && net.view(b, a).is_none())
        })
    })
    .expect("the halves never forgot each other");
    // Past the last re-contact of a dead member, still apart.
    net.run_for(30 * SECOND);
    net.blocked.clear();
    let took = net
        .run_until(120 * SECOND, Net::converged)
        .expect("the halves never merged again");
    assert!(took <= 60 * SECOND, "healing took {took:?}");
}

#[test]
fn an_isolated_node_keeps_recontacting_its_seeds() {
    let mut net = Net::lan(3, seed(15));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    // Node 2 loses everyone for long enough to declare them all dead.
    for j in 0..2 {
        net.cut(2, j);
    }
    net.run_until(120 * SECOND, |net| {
        net.view(2, 0) == Some(MemberStatus::Dead) && net.view(2, 1) == Some(MemberStatus::Dead)
    })
    .expect("node 2 never gave up on the others");
    net.blocked.clear();
    net.run_until(60 * SECOND, Net::converged)
        .expect("node 2 never rejoined");
}

#[test]
fn a_differing_state_digest_on_a_ping_is_reported_and_an_equal_one_is_not() {
    use gossip_swim::StateDigest;
    let mut net = Net::lan(3, seed(16));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    for i in 0..3 {
        net.node(i).set_state_digest(Some(StateDigest([7; 8])));
    }
    let differs = |net: &Net, i: usize| {
        net.events[i]
            .iter()
            .filter(|(_, e)| matches!(e, Event::StateDigestDiffers { .. }))
            .count()
    };
    net.run_for(10 * SECOND);
    for i in 0..3 {
        assert_eq!(differs(&net, i), 0, "node {i}: equal digests reported");
    }
    // Node 2's state moves on: the others hear of it on its next pings.
    net.node(2).set_state_digest(Some(StateDigest([9; 8])));
    net.run_for(10 * SECOND);
    for i in 0..2 {
        let from_two = net.events[i].iter().any(
            |(_, e)| matches!(e, Event::StateDigestDiffers { peer, .. } if *peer == node_id(2)),
        );
        assert!(from_two, "node {i} never saw node 2's digest differ");
        assert!(net.get(i).stats().state_digest_mismatches > 0);
    }
}

#[test]
fn news_pushes_are_flagged_as_pushes_and_carry_the_state_digest() {
    use gossip_core::{Limits, MemberMeta};
    use gossip_swim::{Message, StateDigest};
    let mut net = Net::lan(4, seed(17));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    // Past the push interval of the join's news, so the next goes out at once.
    net.run_for(SECOND / 10);
    let now = net.now;
    net.node(1).set_state_digest(Some(StateDigest([5; 8])));
    net.node(1)
        .update_meta(now, MemberMeta::new("renamed", [common::addr(1)]))
        .unwrap();
    let mut pushes = 0;
    while let Some(t) = net.node(1).poll_transmit() {
        let frame = gossip_core::decode_frame::<Message>(
            &t.payload,
            common::cluster_id(),
            &Limits::default(),
        )
        .unwrap();
        let is_gossip = matches!(
            frame.body,
            Message::Gossip { state_digest: Some(digest) } if digest == StateDigest([5; 8])
        );
        assert_eq!(t.push, is_gossip, "{:?}", frame.body);
        pushes += usize::from(t.push);
    }
    assert!(pushes > 0, "the news was not pushed");
}

#[test]
fn news_right_after_a_push_waits_for_the_push_interval_and_goes_out_in_one_round() {
    use gossip_core::MemberMeta;
    let mut net = Net::lan(8, seed(23));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.run_for(SECOND / 10);
    let interval = net.get(1).config().push_interval;
    let fanout = net.get(1).config().gossip_fanout as u64;
    let pushes = |net: &mut Net| {
        let mut pushed = 0;
        while let Some(t) = net.node(1).poll_transmit() {
            pushed += u64::from(t.push);
        }
        pushed
    };
    let before = net.get(1).stats().gossip_pushes;
    let start = net.now;
    for (i, name) in ["first", "second", "third"].into_iter().enumerate() {
        let now = start + interval / 4 * i as u32;
        net.node(1)
            .update_meta(now, MemberMeta::new(name, [common::addr(1)]))
            .unwrap();
        let pushed = pushes(&mut net);
        if i == 0 {
            assert_eq!(pushed, fanout, "the first news goes out at once");
        } else {
            assert_eq!(pushed, 0, "news {i} came within the push interval");
        }
    }
    // The waiting news goes out when the interval ends, in one round.
    net.node(1)
        .handle_timeout(start + (interval - Duration::from_millis(1)));
    assert_eq!(pushes(&mut net), 0, "too soon");
    net.node(1).handle_timeout(start + interval);
    assert_eq!(pushes(&mut net), fanout);
    assert_eq!(net.get(1).stats().gossip_pushes, before + 2 * fanout);
}

/// A node restarted without its incarnation (no data directory) learns what
/// its peers hold of its earlier life at its address, alive at a higher
/// incarnation or left, and refutes above it within a couple of periods;
/// its next graceful leave is then honoured as a leave.
#[test]
fn a_restart_that_kept_no_incarnation_refutes_its_earlier_life() {
    for earlier_left in [false, true] {
        let mut net = Net::lan(4, seed(24));
        assert!(net.run_until(10 * SECOND, Net::converged).is_some());
        // The earlier life refutes twice (two metadata updates do the same).
        let meta = net.get(3).members().local().meta.as_ref().clone();
        for _ in 0..2 {
            let now = net.now;
            net.node(3).update_meta(now, meta.clone()).expect("meta");
            net.drain(3);
        }
        let at_two = |net: &Net| {
            (0..3).all(|i| {
                net.get(i)
                    .members()
                    .get(&node_id(3))
                    .is_some_and(|m| m.incarnation == Incarnation::new(2))
            })
        };
        net.run_until(10 * SECOND, at_two)
            .expect("the earlier life's incarnation 2 spread");
        if earlier_left {
            let now = net.now;
            net.node(3).leave(now);
            net.drain(3);
            net.run_until(10 * SECOND, |net| {
                (0..3).all(|i| net.view(i, 3) == Some(MemberStatus::Left))
            })
            .expect("the earlier life's leave spread");
        }
        // A new life at incarnation 0, at the same address, joins at once.
        net.restart(3, Incarnation::ZERO, 1);
        let refuted = |net: &Net| {
            (0..3).all(|i| {
                net.get(i).members().get(&node_id(3)).is_some_and(|m| {
                    m.status == MemberStatus::Alive && m.incarnation > Incarnation::new(2)
                })
            })
        };
        net.run_until(3 * SECOND, refuted).unwrap_or_else(|| {
            panic!("earlier_left={earlier_left}: the new life did not refute within 3 s")
        });
        assert!(net.get(3).members().local().incarnation > Incarnation::new(2));
        // Its graceful leave now counts.
        let now = net.now;
        net.node(3).leave(now);
        net.drain(3);
        net.run_until(10 * SECOND, |net| {
            (0..3).all(|i| net.view(i, 3) == Some(MemberStatus::Left))
        })
        .unwrap_or_else(|| panic!("earlier_left={earlier_left}: the new life's leave was lost"));
    }
}

/// A joiner that a full table cannot take is told why, on its side and on
/// the refusing one, and keeps retrying; nothing is refused silently.
#[test]
fn a_joiner_past_the_member_cap_is_refused_and_told_why() {
    use gossip_core::ClusterId;
    use gossip_swim::{Config, JoinRefusal};
    let mut config = Config::lan(ClusterId::from_name("cap"), 4);
    config.limits.max_members = 3;
    let mut net = Net::new(4, config, seed(25));
    net.run_for(10 * SECOND);
    let refused_here: Vec<(usize, u32)> = net.events[0]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::JoinerRefused { member, reason, .. } => {
                let joiner = (1..4).find(|&j| node_id(j) == *member)?;
                Some((
                    joiner,
                    u32::from(matches!(reason, JoinRefusal::TableFull { max_members: 3 })),
                ))
            }
            _ => None,
        })
        .collect();
    assert!(!refused_here.is_empty(), "the seed never refused a joiner");
    assert!(
        refused_here.iter().all(|(_, full)| *full == 1),
        "{refused_here:?}"
    );
    let joiner = refused_here[0].0;
    let told = net.events[joiner].iter().any(|(_, e)| {
        matches!(e, Event::JoinRefused { by, reason: JoinRefusal::TableFull { max_members: 3 } } if *by == node_id(0))
    });
    assert!(told, "node {joiner} was never told why");
    assert!(net.get(0).stats().joiners_refused >= 1);
    assert!(net.get(joiner).stats().joins_refused >= 1);
    // The seed's table stays within its cap.
    assert_eq!(net.get(0).members().len(), 3);
}

/// Where `observer` holds `subject`'s identity, and in what status.
fn held_at(net: &Net, observer: usize, subject: usize) -> Option<(SocketAddr, MemberStatus)> {
    let record = net.get(observer).members().get(&node_id(subject))?;
    Some((record.meta.addr()?, record.status))
}

/// A second process with a live member's key is refused when it joins, is
/// told where the identity lives, and never takes the member's place: not
/// when it joins through a seed, not through the member itself, not when a
/// member joins it at run time, and not when it leaves.
#[test]
fn a_second_instance_of_a_live_member_never_takes_its_place() {
    use gossip_swim::JoinRefusal;
    let mut net = Net::lan(4, seed(26));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    let via_seed = net.start_as(2, 0);
    let via_itself = net.start_as(2, 2);
    net.run_for(20 * SECOND);
    for clone in [via_seed, via_itself] {
        let refused = net.events[clone].iter().any(|(_, e)| {
            matches!(e, Event::JoinRefused { reason: JoinRefusal::IdentityInUse { addr: a, .. }, .. } if *a == addr(2))
        });
        assert!(refused, "instance {clone} was not told where node 2 lives");
        assert!(
            !net.events[clone]
                .iter()
                .any(|(_, e)| matches!(e, Event::JoinCompleted { .. })),
            "instance {clone} was taken in"
        );
    }
    let seen_elsewhere = net.events[2].iter().any(
        |(_, e)| matches!(e, Event::ClaimedElsewhere { addr: a, .. } if *a == addr(via_itself)),
    );
    assert!(seen_elsewhere, "node 2 never heard of its second instance");

    // At run time: a member joins the second instance directly, as an
    // operator's mistake would have it.
    net.crash(via_seed);
    let now = net.now;
    net.node(1).join(now, vec![addr(via_itself)]);
    net.drain(1);
    net.run_for(10 * SECOND);
    let conflict = net.events[1].iter().any(|(_, e)| {
        matches!(e, Event::AddressConflict { member, held, claimed, .. }
            if *member == node_id(2) && *held == Some(addr(2)) && *claimed == Some(addr(via_itself)))
    });
    assert!(conflict, "node 1 never reported node 2 at two addresses");
    assert!(net.get(1).stats().address_conflicts >= 1);
    // Node 2's key/value state is taken only from where node 2 is held.
    assert!(
        net.get(1)
            .speaks_from_elsewhere(&node_id(2), addr(via_itself))
    );
    assert!(!net.get(1).speaks_from_elsewhere(&node_id(2), addr(2)));
    // The second instance leaves: the member it copied stays alive, where
    // it is.
    let now = net.now;
    net.node(via_itself).leave(now);
    net.drain(via_itself);
    net.run_for(10 * SECOND);
    net.crash(via_itself);
    net.run_for(30 * SECOND);
    for observer in [0, 1, 3] {
        assert_eq!(
            held_at(&net, observer, 2),
            Some((addr(2), MemberStatus::Alive)),
            "node {observer}"
        );
    }
}

/// A node that comes back at another address while its earlier life is
/// still held alive waits, refused and told why, until that life is found
/// dead; then it is taken in above it, and its graceful leave counts.
#[test]
fn a_new_life_elsewhere_supersedes_its_earlier_life_once_that_is_dead() {
    let mut net = Net::lan(4, seed(27));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net.crash(3);
    let new_life = net.start_as(3, 0);
    let took = net
        .run_until(60 * SECOND, |net| {
            (0..3).all(|i| held_at(net, i, 3) == Some((addr(new_life), MemberStatus::Alive)))
        })
        .expect("the new life was never taken in everywhere");
    assert!(
        net.get(new_life).members().local().incarnation > Incarnation::ZERO,
        "the new life did not rise above its earlier one"
    );
    eprintln!("taken in everywhere after {took:?}");
    let now = net.now;
    net.node(new_life).leave(now);
    net.drain(new_life);
    net.run_until(10 * SECOND, |net| {
        (0..3).all(|i| held_at(net, i, 3) == Some((addr(new_life), MemberStatus::Left)))
    })
    .expect("the new life's leave was lost");
}

/// Weighted selection pushes by the zones members publish: with no share
/// across zones, every push stays in the pusher's zone.
#[test]
fn weighted_pushes_follow_the_zones_members_publish() {
    use gossip_core::{MemberMeta, Placement};
    use gossip_swim::PeerSelection;
    for cross_zone_share in [0.0, 1.0] {
        let mut config = gossip_swim::Config::lan(common::cluster_id(), 9);
        config.peer_selection = PeerSelection::Weighted { cross_zone_share };
        config.gossip_fanout = 2;
        let mut net = Net::new(9, config, seed(33));
        assert!(net.run_until(15 * SECOND, Net::converged).is_some());
        // Nodes 0-2 in zone a, the rest in zone b, as every node records.
        for observer in 0..9 {
            for subject in 0..9 {
                let zone = if subject < 3 { "a" } else { "b" };
                let placement = Placement {
                    zone: Some(zone.into()),
                    weight: 1,
                };
                net.node(observer)
                    .set_placement(node_id(subject), placement);
            }
        }
        net.run_for(SECOND);
        let (mut near, mut far) = (0, 0);
        for round in 0..20 {
            let now = net.now;
            net.node(1)
                .update_meta(now, MemberMeta::new(format!("r{round}"), [addr(1)]))
                .unwrap();
            while let Some(t) = net.node(1).poll_transmit() {
                if t.push {
                    let to = usize::from(t.addr.port()) - usize::from(addr(0).port());
                    if to < 3 { near += 1 } else { far += 1 }
                }
            }
            net.run_for(SECOND);
        }
        if cross_zone_share == 0.0 {
            // Zone a holds two peers of node 1: both get every push.
            assert_eq!((near, far), (40, 0), "seed {}", net.seed);
        } else {
            assert_eq!((near, far), (0, 40), "seed {}", net.seed);
        }
    }
}
