//! Encode + decode of a probe-sized frame carrying 6 rumors.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gossip_core::{
    ClusterId, Frame, Incarnation, Limits, Member, MemberMeta, MemberStatus, NodeId, NodeKey,
    Rumor, RumorQueue, decode_frame, encode_frame,
};
use serde::{Deserialize, Serialize};

/// Shaped like a SWIM probe: sequence number, target, and the sender's state digest.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    seq: u32,
    target: NodeId,
    root: [u8; 16],
}

fn bench_codec(c: &mut Criterion) {
    let limits = Limits::default();
    let cluster = ClusterId::from_name("bench");
    let mut queue = RumorQueue::new(1_000_000, limits.clone());
    for n in 0..6u8 {
        let key = NodeKey::from_secret_bytes(&[n; 32]);
        let meta = MemberMeta::new(
            format!("node-{n}"),
            vec![format!("10.0.0.{n}:7946").parse().unwrap()],
        );
        let mut member = Member::new(key.id(), meta);
        member.incarnation = Incarnation::new(u64::from(n) * 3);
        member.sign(&key, cluster);
        let accuser = NodeKey::from_secret_bytes(&[9; 32]);
        let member = member.accused(&accuser, cluster, MemberStatus::Suspect);
        queue.push(Rumor::Member { member }).unwrap();
    }
    let rumors = queue.pack(1200, 100);
    assert_eq!(rumors.count(), 6);
    let probe = Probe {
        seq: 42,
        target: NodeId::from_bytes([7; 32]),
        root: [3; 16],
    };
    let mut buf = Vec::with_capacity(1500);
    encode_frame(cluster, &probe, &rumors, &limits, &mut buf).unwrap();
    eprintln!("probe frame with 6 rumors: {} bytes", buf.len());

    let mut group = c.benchmark_group("codec");
    group.bench_function("probe_6_rumors_encode_decode", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(
                cluster,
                black_box(&probe),
                black_box(&rumors),
                &limits,
                &mut buf,
            )
            .unwrap();
            let frame: Frame<Probe> = decode_frame(black_box(&buf), cluster, &limits).unwrap();
            black_box(frame)
        })
    });
    group.bench_function("probe_6_rumors_decode", |b| {
        b.iter(|| {
            let frame: Frame<Probe> = decode_frame(black_box(&buf), cluster, &limits).unwrap();
            black_box(frame)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
