//! Who may claim what, and what happens to bad input.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::time::Duration;

use common::{Net, addr, cluster_id, frame_for, node_id, node_key, seed};
use gossip_core::{
    ClusterId, Incarnation, Limits, Member, MemberStatus, Refusal, Rumor, WIRE_VERSION,
};
use gossip_swim::{Error, Event, Message, TargetTag};

const SECOND: Duration = Duration::from_secs(1);

/// A converged three-node network.
fn converged() -> Net {
    let mut net = Net::lan(3, seed(21));
    assert!(net.run_until(10 * SECOND, Net::converged).is_some());
    net
}

/// Encodes a frame as `sender` would, carrying `rumors`.
fn frame(sender: usize, message: Message, rumors: Vec<Rumor>) -> Vec<u8> {
    frame_for(cluster_id(), sender, message, rumors)
}

fn record(net: &Net, observer: usize, subject: usize) -> Member {
    net.get(observer)
        .members()
        .get(&node_id(subject))
        .unwrap()
        .clone()
}

/// A gossip frame from `origin` accusing `subject` of `status`, at the
/// incarnation node 0 knows it by, signed by `origin`.
fn claim(net: &Net, origin: usize, subject: usize, status: MemberStatus) -> Vec<u8> {
    let member = record(net, 0, subject).accused(&node_key(origin), cluster_id(), status);
    gossip(origin, member)
}

/// A gossip frame from `sender` carrying `member`.
fn gossip(sender: usize, member: Member) -> Vec<u8> {
    frame(
        sender,
        Message::Gossip { state_digest: None },
        vec![Rumor::Member { member }],
    )
}

/// Delivers `bytes` to node 0 as if authenticated as `from`.
fn deliver(net: &mut Net, from: usize, bytes: &[u8]) -> Result<(), Error> {
    let now = net.now;
    let result = net
        .node(0)
        .handle_datagram(now, node_id(from), addr(from), bytes);
    net.drain(0);
    result
}

#[test]
fn a_claim_about_another_member_that_it_did_not_sign_is_refused() {
    let mut net = converged();
    let held = record(&net, 0, 1);
    // Node 2 raises node 1's incarnation and announces its leave, signing
    // both itself; then sends them unsigned, and with a forged accuser.
    let mut raised = held.clone();
    raised.incarnation = Incarnation::new(5);
    let mut left = held.clone();
    left.status = MemberStatus::Left;
    let signed_by_two = |record: &Member| {
        let mut as_two = Member {
            id: node_id(2),
            ..record.clone()
        };
        as_two.sign(&node_key(2), cluster_id());
        Member {
            proof: as_two.proof,
            ..record.clone()
        }
    };
    let mut forged_accuser = held.accused(&node_key(2), cluster_id(), MemberStatus::Dead);
    if let Some(accusation) = forged_accuser.proof.accusation.as_mut() {
        accusation.accuser = node_id(0);
    }
    let forgeries = [
        signed_by_two(&raised),
        signed_by_two(&left),
        raised.clone(),
        left,
        forged_accuser,
    ];
    for forged in &forgeries {
        deliver(&mut net, 2, &gossip(2, forged.clone())).unwrap();
    }
    let refused = net.get(0).stats().refused;
    assert_eq!(refused.get(Refusal::BadSignature), forgeries.len() as u64);
    assert_eq!(record(&net, 0, 1), held, "node 1's record is unchanged");
    let reported = net.events[0].iter().any(|(_, e)| {
        matches!(e, Event::ClaimRefused { from, subject, reason: Refusal::BadSignature, .. }
            if *from == node_id(2) && *subject == node_id(1))
    });
    assert!(reported, "the refusal was not reported");
    // Node 1's own signed claim, relayed by node 2, is taken.
    raised.sign(&node_key(1), cluster_id());
    deliver(&mut net, 2, &gossip(2, raised)).unwrap();
    assert_eq!(record(&net, 0, 1).incarnation, Incarnation::new(5));
}

#[test]
fn accusations_record_their_accuser_and_deaths_their_provenance() {
    let mut net = converged();
    let bytes = claim(&net, 2, 1, MemberStatus::Suspect);
    deliver(&mut net, 2, &bytes).unwrap();
    let by = net.events[0].iter().rev().find_map(|(_, e)| match e {
        Event::Suspected { member, by, .. } if member.id == node_id(1) => Some(*by),
        _ => None,
    });
    assert_eq!(by, Some(node_id(2)));
    // Node 1 is gone; a death is taken at once from a suspicion held for
    // more than half the minimum timeout (4 s here).
    net.crash(1);
    net.run_for(3 * SECOND);
    let bytes = claim(&net, 2, 1, MemberStatus::Dead);
    deliver(&mut net, 2, &bytes).unwrap();
    let provenance = net.events[0].iter().rev().find_map(|(_, e)| match e {
        Event::Failed { member, provenance } if member.id == node_id(1) => Some(provenance.clone()),
        _ => None,
    });
    let provenance = provenance.expect("no Failed event");
    assert_eq!(provenance.declared_by, node_id(2));
    assert_eq!(provenance.suspected_by, Some(node_id(2)));
}

#[test]
fn a_death_claimed_of_a_member_never_suspected_here_counts_as_a_suspicion() {
    let mut net = converged();
    let bytes = claim(&net, 2, 1, MemberStatus::Dead);
    deliver(&mut net, 2, &bytes).unwrap();
    assert_eq!(net.view(0, 1), Some(MemberStatus::Suspect));
    // Node 1 hears of it and refutes; nobody ever holds it dead.
    let refuted = net.run_until(10 * SECOND, |net| {
        assert!(
            (0..3).all(|o| net.view(o, 1) != Some(MemberStatus::Dead)),
            "node 1 was declared dead (seed {})",
            seed(21)
        );
        net.view(0, 1) == Some(MemberStatus::Alive)
    });
    assert!(refuted.is_some(), "node 1 never refuted");
}

#[test]
fn a_ping_meant_for_another_node_is_dropped() {
    let mut net = converged();
    let ping = Message::Ping {
        seq: 9,
        target: TargetTag::of(&node_id(1), addr(1)),
        suspicion: None,
        state_digest: None,
    };
    let err = deliver(&mut net, 2, &frame(2, ping, vec![])).unwrap_err();
    assert!(matches!(err, Error::Misdirected { .. }));
    assert_eq!(net.get(0).stats().misdirected, 1);
    // Nor is a ping meant for this node's identity at another address (an
    // earlier life, or a second process with its key) answered here.
    let ping = Message::Ping {
        seq: 10,
        target: TargetTag::of(&node_id(0), addr(7)),
        suspicion: None,
        state_digest: None,
    };
    let err = deliver(&mut net, 2, &frame(2, ping, vec![])).unwrap_err();
    assert!(matches!(err, Error::Misdirected { .. }));
    assert_eq!(net.get(0).stats().misdirected, 2);
    let sent = net.get(0).stats().datagrams_out;
    let ping = Message::Ping {
        seq: 11,
        target: TargetTag::of(&node_id(0), addr(0)),
        suspicion: None,
        state_digest: None,
    };
    deliver(&mut net, 2, &frame(2, ping, vec![])).expect("a ping for this node here");
    assert_eq!(
        net.get(0).stats().datagrams_out,
        sent + 1,
        "the ping for this node at its address is acked"
    );
}

#[test]
fn bad_datagrams_get_typed_errors_and_counters_and_change_nothing() {
    let mut net = converged();
    let before: Vec<Member> = net.get(0).members().iter().cloned().collect();
    let good = frame(2, Message::Gossip { state_digest: None }, vec![]);

    let mut wrong_version = good.clone();
    wrong_version[0] = WIRE_VERSION + 1;
    let foreign = frame_for(
        ClusterId::from_name("elsewhere"),
        2,
        Message::Gossip { state_digest: None },
        vec![],
    );
    let oversized = vec![WIRE_VERSION; Limits::default().max_frame_bytes + 1];
    // A valid header in front, so the body decoder meets the garbage.
    let mut garbage = good[..gossip_core::HEADER_LEN].to_vec();
    garbage.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let mut trailing = good.clone();
    trailing.push(0);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("wrong version", wrong_version),
        ("foreign cluster", foreign),
        ("oversized", oversized),
        ("garbage", garbage),
        ("trailing bytes", trailing),
    ];
    for cut in [1, 5, 9, good.len() - 1] {
        cases.push(("truncated", good[..cut].to_vec()));
    }

    for (what, bytes) in &cases {
        let err = deliver(&mut net, 2, bytes).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{what}: {err}");
    }
    let stats = net.get(0).stats();
    assert_eq!(stats.decode_errors, cases.len() as u64);
    assert_eq!(stats.bad_version, 1);
    assert_eq!(stats.foreign_cluster, 1);
    assert_eq!(stats.oversized, 1);
    let after: Vec<Member> = net.get(0).members().iter().cloned().collect();
    assert_eq!(before, after);
    // And the node carries on.
    deliver(&mut net, 2, &good).unwrap();
    net.run_for(10 * SECOND);
    assert!(net.converged());
}

#[test]
fn a_stale_accusation_is_answered_with_the_refutation_again() {
    let mut net = converged();
    // Node 0 is told it is suspected, and refutes.
    let suspect = record(&net, 1, 0).accused(&node_key(1), cluster_id(), MemberStatus::Suspect);
    deliver(&mut net, 1, &gossip(1, suspect.clone())).unwrap();
    assert_eq!(
        net.get(0).members().local().incarnation,
        Incarnation::new(1)
    );
    // Its refutation goes out until its retransmit budget is spent.
    for seq in 0..20 {
        let ping = Message::Ping {
            seq,
            target: TargetTag::of(&node_id(0), addr(0)),
            suspicion: None,
            state_digest: None,
        };
        deliver(&mut net, 1, &frame(1, ping, vec![])).unwrap();
        while net.node(0).poll_transmit().is_some() {}
    }
    assert_eq!(net.get(0).queued_rumors(), 0);
    // Node 2 missed all of it and still suspects node 0 at incarnation 0:
    // its next probe carries the stale suspicion, and the ack must carry
    // the refutation again.
    let ping = Message::Ping {
        seq: 99,
        target: TargetTag::of(&node_id(0), addr(0)),
        suspicion: Some(suspect),
        state_digest: None,
    };
    let now = net.now;
    net.node(0)
        .handle_datagram(now, node_id(2), addr(2), &frame(2, ping, vec![]))
        .unwrap();
    let ack = net.node(0).poll_transmit().expect("an ack");
    let limits = Limits::default();
    let decoded =
        gossip_core::decode_frame::<Message>(&ack.payload, cluster_id(), &limits).unwrap();
    assert!(matches!(decoded.body, Message::Ack { seq: 99 }));
    let refutation = decoded.rumors.iter().any(|r| {
        matches!(r, Rumor::Member { member, .. } if member.id == node_id(0) && member.incarnation == Incarnation::new(1))
    });
    assert!(refutation, "the ack did not carry the refutation");
}
