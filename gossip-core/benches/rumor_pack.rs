//! Packing rumors into a 1,200-byte datagram budget with 10,000 queued.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gossip_core::{
    Accusation, Bytes, Entry, Key, Limits, Member, MemberMeta, MemberStatus, NodeId, Rumor,
    RumorQueue, Signature,
};

fn queue_of(count: usize) -> RumorQueue {
    // A multiplier so large no rumor reaches its limit: the queue stays at
    // `count` rumors however long the bench runs.
    let mut queue = RumorQueue::new(1_000_000, Limits::default());
    for i in 0..count {
        let n = (i as u32).to_le_bytes();
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&n);
        let id = NodeId::from_bytes(raw);
        let rumor = if i % 2 == 0 {
            let meta = MemberMeta::new(format!("node-{i}"), vec!["10.1.2.3:7946".parse().unwrap()]);
            // Packing sizes what it copies: the signatures' bytes count,
            // their validity does not.
            let mut member = Member::new(id, meta);
            member.proof.owner = Signature::from_bytes([6; 64]);
            member.proof.accusation = Some(Accusation {
                accuser: id,
                status: MemberStatus::Suspect,
                signature: Signature::from_bytes([7; 64]),
            });
            Rumor::Member {
                member: member.with_status(MemberStatus::Suspect),
            }
        } else {
            let entry = Entry {
                key: Key::from(format!("key-{i}")),
                value: Some(Bytes::from(vec![1u8; 24])),
                version: 1,
            };
            Rumor::State {
                owner: id,
                entry,
                signature: Signature::from_bytes([5; 64]),
            }
        };
        queue.push(rumor).unwrap();
    }
    queue
}

fn bench_pack(c: &mut Criterion) {
    let mut queue = queue_of(10_000);
    let packed = queue.pack(1200, 10_000);
    eprintln!(
        "one pack: {} rumors in {} bytes",
        packed.count(),
        packed.encoded_len()
    );
    c.bench_function("rumor_pack_1200B_of_10000", |b| {
        b.iter(|| black_box(queue.pack(black_box(1200), 10_000)))
    });
}

criterion_group!(benches, bench_pack);
criterion_main!(benches);
