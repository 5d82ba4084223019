//! Writes the seed corpus: real messages, encoded by the real machines, for
//! every decoder target. Run from the repository root with
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_corpus`; the files
//! land in `fuzz/seeds/<target>/`, named by their blake3 hash.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use gossip_antientropy::Session;
use gossip_core::{Incarnation, MemberMeta, MemberStatus, Timestamp};
use gossip_fuzz::{
    node_addr, node_id, node_key, signed_record, swim_config, sync_config, sync_state,
};
use gossip_node::stream::{self, Role};
use gossip_swim::Swim;
use gossip_transport_quic::frame_header;

/// Datagrams from a small cluster that joins, gossips, loses a member and
/// sees one leave.
fn swim_frames() -> Vec<Vec<u8>> {
    let mut now = Timestamp::from_millis(1_000_000);
    let mut nodes: Vec<Swim> = (0..4u8)
        .map(|n| {
            let meta = MemberMeta::new(format!("node-{n}"), [node_addr(n)]);
            Swim::new(
                swim_config(u64::from(n)),
                node_key(n),
                meta,
                Incarnation::ZERO,
                now,
            )
        })
        .collect();
    for node in nodes.iter_mut().skip(1) {
        node.join(now, vec![node_addr(0)]);
    }
    let mut frames = Vec::new();
    for step in 0..400u32 {
        if step == 150 {
            nodes[1].set_state_version(now, 7);
        }
        if step == 300 {
            nodes[2].leave(now);
        }
        let crashed = step >= 200;
        let mut in_flight = Vec::new();
        for (n, node) in nodes.iter_mut().enumerate() {
            while let Some(transmit) = node.poll_transmit() {
                frames.push(transmit.payload.clone());
                in_flight.push((n, transmit));
            }
            while node.poll_event().is_some() {}
        }
        for (from, transmit) in in_flight {
            let to = (0..4u8).find(|&n| node_addr(n) == transmit.addr);
            // Node 3 crashes at step 200: it neither hears nor answers.
            if let Some(to) = to.filter(|&to| !(crashed && (to == 3 || from == 3))) {
                let from = u8::try_from(from).expect("four nodes");
                let _ = nodes[usize::from(to)].handle_datagram(
                    now,
                    node_id(from),
                    node_addr(from),
                    &transmit.payload,
                );
            }
        }
        now += Duration::from_millis(50);
        for node in &mut nodes {
            node.handle_timeout(now);
        }
    }
    frames
}

/// The messages of one session between replicas that differ in keys and
/// member records, each tagged with the side that sent it.
fn sync_messages() -> Vec<(Role, Vec<u8>)> {
    let now = Timestamp::from_millis(1_000_000);
    let mut states = [0u8, 1].map(sync_state);
    for key in 0..40 {
        states[0]
            .set(format!("k{key}"), vec![7u8; key * 3])
            .expect("within limits");
    }
    states[1].set("tokens", "1,2,3").expect("within limits");
    let _ = states[1].delete(now, "tokens");
    for subject in 2..30u8 {
        let status = if subject % 3 == 0 {
            MemberStatus::Dead
        } else {
            MemberStatus::Alive
        };
        let record = signed_record(subject, 0, status);
        let _ = states[usize::from(subject % 2)].merge_member(record);
    }
    let [mut a, mut b] = states;
    let mut initiator = Session::initiate(sync_config(), node_id(1), &a, now);
    let mut responder = Session::respond(sync_config(), node_id(0), now);
    let mut messages = Vec::new();
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit() {
            moved = true;
            let _ = responder.handle_bytes(now, &mut b, &bytes);
            messages.push((Role::Initiator, bytes));
        }
        while let Some(bytes) = responder.poll_transmit() {
            moved = true;
            let _ = initiator.handle_bytes(now, &mut a, &bytes);
            messages.push((Role::Responder, bytes));
        }
        if !moved {
            break;
        }
    }
    assert_eq!(a.root(), b.root(), "the corpus session converged");
    messages
}

fn write_all(dir: &Path, inputs: impl IntoIterator<Item = Vec<u8>>) -> std::io::Result<usize> {
    fs::create_dir_all(dir)?;
    let mut seen = BTreeSet::new();
    for input in inputs {
        let name = blake3::hash(&input).to_hex()[..16].to_string();
        if seen.insert(name.clone()) {
            fs::write(dir.join(name), &input)?;
        }
    }
    Ok(seen.len())
}

/// Frames a hostile member with a valid certificate sends (the cases of
/// `gossip-node/tests/hostile.rs`): another member's leave, raised
/// incarnation and moved address signed with the wrong key or not at all, a
/// death with a forged accuser, a self-claim with a tampered signature, and
/// an older signed claim.
fn hostile_frames() -> Vec<Vec<u8>> {
    let limits = gossip_core::Limits::default();
    let held = signed_record(1, 3, MemberStatus::Alive);
    let signed_by_attacker = |record: &gossip_core::Member| {
        let mut as_attacker = gossip_core::Member {
            id: node_id(9),
            ..record.clone()
        };
        as_attacker.sign(&node_key(9), gossip_fuzz::cluster());
        gossip_core::Member {
            proof: as_attacker.proof,
            ..record.clone()
        }
    };
    let left = gossip_core::Member {
        status: MemberStatus::Left,
        ..held.clone()
    };
    let raised = gossip_core::Member {
        incarnation: Incarnation::new(4),
        ..held.clone()
    };
    let moved = gossip_core::Member {
        meta: MemberMeta::new("m1", [node_addr(200)]).into(),
        ..raised.clone()
    };
    let mut forged_accuser = held.accused(&node_key(9), gossip_fuzz::cluster(), MemberStatus::Dead);
    if let Some(accusation) = forged_accuser.proof.accusation.as_mut() {
        accusation.accuser = node_id(2);
    }
    let mut tampered = gossip_core::Member {
        state_version: 9,
        ..held.clone()
    };
    let mut signature = tampered.proof.owner.to_bytes();
    signature[10] ^= 0x40;
    tampered.proof.owner = gossip_core::Signature::from_bytes(signature);
    let claims = [
        signed_by_attacker(&left),
        gossip_core::Member {
            proof: gossip_core::Proof::default(),
            ..left
        },
        signed_by_attacker(&raised),
        signed_by_attacker(&moved),
        forged_accuser,
        tampered,
        signed_record(1, 2, MemberStatus::Alive),
    ];
    claims
        .into_iter()
        .map(|member| {
            let mut queue = gossip_core::RumorQueue::new(4, limits.clone());
            queue
                .push(gossip_core::Rumor::Member { member })
                .expect("a claim fits a rumor");
            let mut out = Vec::new();
            gossip_core::encode_frame(
                gossip_fuzz::cluster(),
                &gossip_swim::Message::Gossip { state_digest: None },
                &queue.pack(1200, 4),
                &limits,
                &mut out,
            )
            .expect("the frame encodes");
            out
        })
        .collect()
}

fn main() -> std::io::Result<()> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let hostile = hostile_frames();
    let mut swim = swim_frames();
    swim.extend(hostile.iter().cloned());
    let sync = sync_messages();

    let node_stream = swim
        .iter()
        .take(20)
        .chain(&hostile)
        .map(|frame| stream::encode_swim(frame))
        .chain(sync.chunks(2).enumerate().map(|(id, turn)| {
            let parts: Vec<Vec<u8>> = turn.iter().map(|(_, bytes)| bytes.clone()).collect();
            stream::encode_sync(turn[0].0, id as u64, &parts)
        }));
    // Transport streams: cap 0xffff, chunk sizes 1, 7 and 64, then frames.
    let transport = sync.iter().take(30).map(|(_, message)| {
        let mut input = vec![0xff, 0xff, 3, 1, 7, 64];
        let len = message.len().min(0xffff);
        input.extend_from_slice(&frame_header(len, 0xffff).expect("under the cap"));
        input.extend_from_slice(&message[..len]);
        input
    });

    for (target, count) in [
        (
            "frame_swim",
            write_all(&seeds.join("frame_swim"), swim.iter().cloned())?,
        ),
        (
            "frame_sync",
            write_all(
                &seeds.join("frame_sync"),
                sync.iter().map(|(_, m)| m.clone()),
            )?,
        ),
        (
            "node_stream",
            write_all(&seeds.join("node_stream"), node_stream)?,
        ),
        (
            "transport_frames",
            write_all(&seeds.join("transport_frames"), transport)?,
        ),
    ] {
        println!("{target}: {count} seeds");
    }
    Ok(())
}
