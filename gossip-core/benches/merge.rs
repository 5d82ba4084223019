//! Member-record merge throughput: the pure join and the table's `apply`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gossip_core::{
    Incarnation, Limits, Member, MemberMeta, MemberStatus, Membership, NodeId, Timestamp,
};

const STATUSES: [MemberStatus; 4] = [
    MemberStatus::Alive,
    MemberStatus::Suspect,
    MemberStatus::Dead,
    MemberStatus::Left,
];

fn records(count: usize) -> Vec<Member> {
    let meta = Arc::new(MemberMeta::new(
        "node",
        vec!["10.0.0.1:7946".parse().unwrap()],
    ));
    (0..count)
        .map(|i| Member {
            id: NodeId::from_bytes([(i % 64) as u8; 32]),
            incarnation: Incarnation::new((i % 5) as u64),
            status: STATUSES[i % 4],
            state_version: (i % 7) as u64,
            meta: meta.clone(),
        })
        .collect()
}

fn bench_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("member_merge");
    let base = records(1024);
    let mut other = records(1024);
    other.rotate_left(64); // same ids, different claims
    group.throughput(Throughput::Elements(base.len() as u64));
    group.bench_function("join_1024", |b| {
        b.iter(|| {
            for (x, y) in base.iter().zip(&other) {
                black_box(x.join(y));
            }
        })
    });

    // The table path: 1,024 claims about 64 known members, most of them news
    // already held (the common case for a rumor heard again).
    let local = NodeId::from_bytes([255; 32]);
    let mut table = Membership::new(Member::new(local, MemberMeta::default()), Limits::default());
    for m in records(64) {
        let alive = Member {
            status: MemberStatus::Alive,
            ..m
        };
        table
            .apply(Timestamp::ZERO, alive.clone(), alive.id)
            .unwrap();
    }
    let claims: Vec<Member> = records(1024)
        .into_iter()
        .map(|m| Member {
            status: MemberStatus::Suspect,
            incarnation: Incarnation::ZERO,
            ..m
        })
        .collect();
    group.bench_function("table_apply_1024", |b| {
        b.iter(|| {
            for claim in &claims {
                let _ = black_box(table.apply(Timestamp::ZERO, claim.clone(), local));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_join);
criterion_main!(benches);
