//! What signed claims cost: signing and verifying a member's record, an
//! accusation and an owner's whole key/value state, and strict single
//! verification against batch verification of the same signatures.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure should stop the bench loudly"
)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use gossip_core::{
    ClusterId, KvStore, Limits, Member, MemberMeta, MemberStatus, NodeKey, OwnerDigest,
};

const CLUSTER: ClusterId = ClusterId::from_bytes([1; 8]);

fn key(n: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[n; 32])
}

fn record() -> Member {
    let mut record = Member::new(
        key(1).id(),
        MemberMeta::new("node-1", ["10.0.0.1:7946".parse().unwrap()]),
    );
    record.state_version = 42;
    record.sign(&key(1), CLUSTER);
    record
}

/// An owner's store holding `keys` keys of 64 bytes.
fn owner_with(keys: usize) -> KvStore {
    let mut store = KvStore::new(key(3), CLUSTER, Limits::default());
    for k in 0..keys {
        store.set(format!("key-{k}"), vec![7u8; 64]).unwrap();
    }
    store
}

fn bench_claims(c: &mut Criterion) {
    let mut group = c.benchmark_group("signatures");
    group.throughput(Throughput::Elements(1));
    let own = record();
    let signer = key(1);
    group.bench_function("sign_member_claim", |b| {
        b.iter(|| {
            let mut claim = own.clone();
            claim.sign(black_box(&signer), CLUSTER);
            claim
        })
    });
    group.bench_function("verify_member_claim", |b| {
        b.iter(|| black_box(&own).verify(CLUSTER).unwrap())
    });
    let accused = own.accused(&key(2), CLUSTER, MemberStatus::Suspect);
    group.bench_function("verify_accusation_and_claim", |b| {
        b.iter(|| black_box(&accused).verify(CLUSTER).unwrap())
    });

    // An owner's state: signing is one write's share (commitment over every
    // write held, then one signature); verifying is taking the delta that
    // brings a replica from nothing to it.
    for keys in [10usize, 100] {
        let owner = owner_with(keys);
        group.bench_function(format!("sign_leaf_write_{keys}_keys"), |b| {
            b.iter_batched(
                || owner.clone(),
                |mut store| store.set("key-0", &b"rewritten"[..]).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let delta = owner.delta_for(&[], usize::MAX);
        let replica = KvStore::new(key(4), CLUSTER, Limits::default());
        group.bench_function(format!("verify_leaf_delta_{keys}_keys"), |b| {
            b.iter_batched(
                || (replica.clone(), delta.clone()),
                |(mut store, delta)| store.apply_delta(delta).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let digest = [OwnerDigest {
            owner: key(3).id(),
            max_version: 0,
            floor: 0,
        }];
        group.bench_function(format!("unsigned_share_delta_{keys}_keys"), |b| {
            b.iter(|| black_box(&owner).delta_for(&digest, usize::MAX))
        });
    }
    group.finish();
}

/// Strict single verification (what the tables do) against batch
/// verification, for the choice ARCHITECTURE.md records.
fn bench_batch(c: &mut Criterion) {
    const N: usize = 16;
    let keys: Vec<SigningKey> = (0..N)
        .map(|n| SigningKey::from_bytes(&[n as u8 + 1; 32]))
        .collect();
    let messages: Vec<[u8; 32]> = (0..N).map(|n| [n as u8; 32]).collect();
    let signatures: Vec<ed25519_dalek::Signature> =
        keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
    let verifying: Vec<ed25519_dalek::VerifyingKey> =
        keys.iter().map(SigningKey::verifying_key).collect();
    let mut group = c.benchmark_group("ed25519_16");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("verify_strict_each", |b| {
        b.iter(|| {
            for ((key, message), signature) in verifying.iter().zip(&messages).zip(&signatures) {
                key.verify_strict(message, signature).unwrap();
            }
        })
    });
    group.bench_function("verify_each", |b| {
        b.iter(|| {
            for ((key, message), signature) in verifying.iter().zip(&messages).zip(&signatures) {
                key.verify(message, signature).unwrap();
            }
        })
    });
    let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
    group.bench_function("verify_batch", |b| {
        b.iter(|| ed25519_dalek::verify_batch(&refs, &signatures, &verifying).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_claims, bench_batch);
criterion_main!(benches);
