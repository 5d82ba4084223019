//! Member-record merge throughput: the pure join and the table's `apply`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gossip_core::{
    ClusterId, Incarnation, Limits, Member, MemberMeta, MemberStatus, Membership, NodeKey,
    Timestamp,
};

const CLUSTER: ClusterId = ClusterId::from_bytes([1; 8]);

fn key(n: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[n; 32])
}

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
    let keys: Vec<NodeKey> = (0..64).map(key).collect();
    (0..count)
        .map(|i| {
            let owner = &keys[i % 64];
            let mut record = Member::new(owner.id(), MemberMeta::clone(&meta));
            record.incarnation = Incarnation::new((i % 5) as u64);
            record.state_version = (i % 7) as u64;
            let status = STATUSES[i % 4];
            if status == MemberStatus::Left {
                record.status = status;
            }
            record.sign(owner, CLUSTER);
            match status {
                MemberStatus::Suspect | MemberStatus::Dead => {
                    record.accused(&keys[(i + 1) % 64], CLUSTER, status)
                }
                _ => record,
            }
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
    let local = key(255);
    let mut table = Membership::new(
        local.clone(),
        CLUSTER,
        Member::new(local.id(), MemberMeta::default()),
        Limits::default(),
    );
    let held = records(1024);
    for m in &held {
        let _ = table.apply(Timestamp::ZERO, m.clone());
    }
    group.bench_function("table_apply_1024", |b| {
        b.iter(|| {
            for claim in &held {
                let _ = black_box(table.apply(Timestamp::ZERO, claim.clone()));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_join);
criterion_main!(benches);
