//! Merkle tree update cost: a leaf update in a tree of 100,000 owners, and a
//! local key/value write through `SyncState` (content digest, leaf, path).

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gossip_antientropy::{LeafTree, SyncState};
use gossip_core::{ClusterId, Digest, Limits, MemberMeta, NodeId, NodeKey};

fn id(n: u32) -> NodeId {
    NodeId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn bench_tree(c: &mut Criterion) {
    const OWNERS: u32 = 100_000;
    let ids: Vec<NodeId> = (0..OWNERS).map(id).collect();
    let digests: Vec<Digest> = (0..1024u32).map(|n| Digest::of(&n.to_le_bytes())).collect();
    let mut tree = LeafTree::default();
    let mut held: Vec<Digest> = Vec::with_capacity(ids.len());
    for (n, owner) in ids.iter().enumerate() {
        let digest = digests[n % digests.len()];
        tree.update(owner, None, Some(digest));
        held.push(digest);
    }
    let mut group = c.benchmark_group("merkle");
    group.throughput(Throughput::Elements(1));
    let mut step = 0usize;
    group.bench_function("leaf_update_100000_owners", |b| {
        b.iter(|| {
            // A pseudo-random walk over owners, as sync traffic touches them.
            step = step
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let at = (step >> 33) % ids.len();
            let new = black_box(digests[step % digests.len()]);
            let old = std::mem::replace(&mut held[at], new);
            tree.update(&ids[at], Some(old), Some(new));
            black_box(tree.root())
        })
    });

    let key = NodeKey::from_secret_bytes(&[1; 32]);
    let cluster = ClusterId::from_name("bench");
    let mut state = SyncState::new(key, cluster, MemberMeta::default(), Limits::default());
    let keys: Vec<String> = (0..1000).map(|k| format!("key-{k}")).collect();
    let value = bytes::Bytes::from_static(b"a value of twenty-four!!");
    let mut k = 0usize;
    group.bench_function("local_write_through_sync_state", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            state.set(keys[k].as_str(), value.clone()).unwrap();
            black_box(state.root())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_tree);
criterion_main!(benches);
