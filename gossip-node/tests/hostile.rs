//! A hostile member: a holder of a valid certificate of the cluster, which
//! crafts its own frames and sync messages and sends them through the real
//! transport, tries to speak for another member. Every attempt must be
//! refused and counted by reason, the victim's state must stay
//! byte-identical, and the rest of the cluster unaffected.
//!
//! `cargo test hostile` runs the suite.

mod common;

use std::time::Duration;

use common::attack::{LIMIT, Setup, frame, pushing, refused, setup};
use common::{eventually, status_of};
use gossip_core::{
    Bytes, Delta, Incarnation, KvStore, Limits, Member, MemberMeta, MemberStatus, NodeKey, Refusal,
    Rumor, WIRE_VERSION,
};
use gossip_node::Metrics;
use gossip_swim::Message;

/// Node 1: the member the attacker speaks for.
const WITNESS: usize = 1;

/// The witness's record as the victim holds it.
fn held(setup: &Setup) -> Member {
    let witness = setup.cluster.nodes[WITNESS].id();
    setup.cluster.nodes[0]
        .members()
        .iter()
        .find(|m| m.id == witness)
        .expect("the victim holds the witness")
        .clone()
}

/// `record` as the attacker forges it: signed with the attacker's own key
/// in place of its subject's.
fn forged(setup: &Setup, record: &Member) -> Member {
    let key = setup.attacker_credentials.node_key();
    let mut as_attacker = Member {
        id: key.id(),
        ..record.clone()
    };
    as_attacker.sign(key, setup.cluster_id);
    Member {
        proof: as_attacker.proof,
        ..record.clone()
    }
}

fn counted_in_swim(reason: Refusal) -> impl Fn(&Metrics, &Metrics) -> bool {
    move |b, a| a.swim.refused.get(reason) > b.swim.refused.get(reason)
}

fn counted_in_sync(reason: Refusal) -> impl Fn(&Metrics, &Metrics) -> bool {
    move |b, a| a.sync.claims_refused.get(reason) > b.sync.claims_refused.get(reason)
}

/// Every node still holds the witness alive, as it was.
async fn cluster_unaffected(setup: &Setup, witness_record: &Member) {
    let witness = witness_record.id;
    for (n, node) in setup.cluster.nodes.iter().enumerate() {
        if n == WITNESS {
            continue;
        }
        assert_eq!(
            status_of(node, witness).await,
            Some(MemberStatus::Alive),
            "node {n} no longer holds the witness alive"
        );
        let record = node.members().iter().find(|m| m.id == witness).cloned();
        assert_eq!(
            record.as_ref().map(|r| r.incarnation),
            Some(witness_record.incarnation)
        );
        assert_eq!(
            record.as_ref().map(|r| r.meta.clone()),
            Some(witness_record.meta.clone()),
            "node {n} holds other metadata for the witness"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_mark_another_as_left() {
    let s = setup(3).await;
    let record = held(&s);
    let left = Member {
        status: MemberStatus::Left,
        ..record.clone()
    };
    let attempts = [
        ("another's leave, signed by the attacker", forged(&s, &left)),
        (
            "another's leave, unsigned",
            Member {
                proof: Default::default(),
                ..left
            },
        ),
    ];
    for (what, member) in attempts {
        refused(
            &s,
            what,
            s.datagram(s.gossip(vec![Rumor::Member { member }])),
            counted_in_swim(Refusal::BadSignature),
        )
        .await;
    }
    cluster_unaffected(&s, &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_raise_anothers_incarnation() {
    let s = setup(3).await;
    let record = held(&s);
    let raised = Member {
        incarnation: Incarnation::new(record.incarnation.get() + 1),
        ..record.clone()
    };
    // By rumor, by a push-pull table, and by the sync's member records.
    refused(
        &s,
        "another's incarnation raised, in a push-pull table",
        s.datagram(frame(
            s.cluster_id,
            WIRE_VERSION,
            &Message::PushPull {
                reply: true,
                members: vec![forged(&s, &raised)],
            },
            Vec::new(),
        )),
        counted_in_swim(Refusal::BadSignature),
    )
    .await;
    refused(
        &s,
        "another's incarnation raised, by rumor",
        s.datagram(s.gossip(vec![Rumor::Member {
            member: forged(&s, &raised),
        }])),
        counted_in_swim(Refusal::BadSignature),
    )
    .await;
    refused(
        &s,
        "another's incarnation raised, by sync",
        s.sync_part(1, pushing(vec![forged(&s, &raised)], Delta::default())),
        counted_in_sync(Refusal::BadSignature),
    )
    .await;
    cluster_unaffected(&s, &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_move_another_or_change_its_metadata() {
    let s = setup(3).await;
    let record = held(&s);
    let elsewhere = "127.0.0.1:9".parse().expect("addr");
    let moved = Member {
        incarnation: Incarnation::new(record.incarnation.get() + 1),
        meta: MemberMeta::new(record.meta.name(), [elsewhere]).into(),
        ..record.clone()
    };
    let renamed = Member {
        incarnation: Incarnation::new(record.incarnation.get() + 1),
        meta: MemberMeta::new("hijacked", record.meta.addrs().iter().copied()).into(),
        ..record.clone()
    };
    for (what, member) in [("another's address", moved), ("another's name", renamed)] {
        refused(
            &s,
            what,
            s.datagram(s.gossip(vec![Rumor::Member {
                member: forged(&s, &member),
            }])),
            counted_in_swim(Refusal::BadSignature),
        )
        .await;
    }
    cluster_unaffected(&s, &record).await;
}

/// The witness's own store as it is now: its key `role` set once, signed
/// by it (what any relay of its state holds).
fn witness_store(s: &Setup) -> KvStore {
    let key: &NodeKey = s.cluster.credentials[WITNESS].node_key();
    let mut store = KvStore::new(key.clone(), s.cluster_id, Limits::default());
    store.set("role", &b"witness"[..]).expect("set");
    store
}

/// A store that writes under the attacker's key, its deltas then
/// relabelled as `owner`'s.
fn attacker_delta(s: &Setup, owner: gossip_core::NodeId, up_to_past: u64) -> Delta {
    let key = s.attacker_credentials.node_key().clone();
    let mut store = KvStore::starting_at(key, s.cluster_id, Limits::default(), up_to_past);
    store.set("role", &b"hijacked"[..]).expect("set");
    let _ = store.delete(gossip_core::Timestamp::ZERO, "role");
    let mut delta = store.delta_for(&[], 64 * 1024);
    for owner_delta in &mut delta.owners {
        owner_delta.owner = owner;
    }
    delta
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_write_or_delete_anothers_keys() {
    let s = setup(3).await;
    let record = held(&s);
    let witness = record.id;
    // A write of the witness's key as a rumor, signed by the attacker.
    let key = s.attacker_credentials.node_key();
    let Rumor::State {
        entry, signature, ..
    } = Rumor::state(
        key,
        s.cluster_id,
        gossip_core::Entry {
            key: "role".into(),
            value: Some(Bytes::from_static(b"hijacked")),
            version: 2,
        },
    )
    else {
        unreachable!("a state rumor")
    };
    refused(
        &s,
        "another's key written, by rumor",
        s.datagram(s.gossip(vec![Rumor::State {
            owner: witness,
            entry,
            signature,
        }])),
        counted_in_swim(Refusal::BadSignature),
    )
    .await;
    // A write and a delete of its key by sync, signed by the attacker.
    refused(
        &s,
        "another's key written and deleted, by sync",
        s.sync_part(1, pushing(Vec::new(), attacker_delta(&s, witness, 1))),
        counted_in_sync(Refusal::BadSignature),
    )
    .await;
    // The witness's genuine signature over its next state (its key
    // rewritten), with the value changed on the way, as a relay could pass
    // it on.
    let mut next = witness_store(&s);
    let held_digest = next.digest();
    next.set("role", &b"witness, later"[..]).expect("set");
    let mut altered = next.delta_for(&held_digest, 64 * 1024);
    for owner_delta in &mut altered.owners {
        for entry in &mut owner_delta.entries {
            entry.value = Some(Bytes::from_static(b"hijacked"));
        }
    }
    refused(
        &s,
        "another's signed state with a value changed on the way, by sync",
        s.sync_part(2, pushing(Vec::new(), altered)),
        counted_in_sync(Refusal::Inconsistent),
    )
    .await;
    let victim = &s.cluster.nodes[0];
    let role = victim.get(witness, "role").await.expect("get");
    assert_eq!(role.as_deref(), Some(&b"witness"[..]));
    cluster_unaffected(&s, &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_push_a_version_near_the_top() {
    let s = setup(3).await;
    let record = held(&s);
    let near_top = u64::MAX - 2;
    for (what, owner) in [
        ("a version near the top for another owner", record.id),
        ("a version near the top for the victim itself", s.victim_id),
    ] {
        refused(
            &s,
            what,
            s.sync_part(1, pushing(Vec::new(), attacker_delta(&s, owner, near_top))),
            counted_in_sync(Refusal::Implausible),
        )
        .await;
    }
    // The victim can still write.
    s.cluster.nodes[0]
        .set("after", "the attack")
        .await
        .expect("the victim still writes");
    cluster_unaffected(&s, &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_replaying_an_older_signed_claim_is_refused() {
    let s = setup(3).await;
    let older = held(&s);
    let witness = older.id;
    // An accusation is everyone's right: the attacker suspects the witness,
    // signing as itself, and the witness refutes with a signed, higher
    // incarnation that spreads.
    let accusation = older.accused(
        s.attacker_credentials.node_key(),
        s.cluster_id,
        MemberStatus::Suspect,
    );
    let witness_node = &s.cluster.nodes[WITNESS];
    s.attacker
        .send_datagram(
            Some(witness),
            witness_node.addr(),
            s.gossip(vec![Rumor::Member { member: accusation }]).into(),
        )
        .await
        .expect("an authenticated peer can send");
    let refuted = older.incarnation.get() + 1;
    eventually(LIMIT, "the refutation spreads", || async {
        s.cluster.nodes.iter().all(|node| {
            node.members()
                .iter()
                .any(|m| m.id == witness && m.incarnation.get() >= refuted)
        })
    })
    .await;
    let current = held(&s);
    assert_eq!(current.status, MemberStatus::Alive);
    // The older claim, signed by the witness itself, replayed.
    refused(
        &s,
        "a replay of another's older signed claim",
        s.datagram(s.gossip(vec![Rumor::Member { member: older }])),
        counted_in_swim(Refusal::Stale),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster_unaffected(&s, &current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_pass_a_self_claim_with_a_tampered_signature() {
    let s = setup(3).await;
    let record = held(&s);
    let mut tampered = Member {
        state_version: record.state_version + 1,
        ..record.clone()
    };
    let mut bytes = tampered.proof.owner.to_bytes();
    bytes[10] ^= 0x40;
    tampered.proof.owner = gossip_core::Signature::from_bytes(bytes);
    refused(
        &s,
        "another's self-claim with a tampered signature",
        s.datagram(s.gossip(vec![Rumor::Member { member: tampered }])),
        counted_in_swim(Refusal::BadSignature),
    )
    .await;
    cluster_unaffected(&s, &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_cannot_forge_the_accuser_of_a_death() {
    let s = setup(3).await;
    let record = held(&s);
    // The attacker accuses, signing as itself, but names the third node as
    // the accuser.
    let mut dead = record.accused(
        s.attacker_credentials.node_key(),
        s.cluster_id,
        MemberStatus::Dead,
    );
    if let Some(accusation) = dead.proof.accusation.as_mut() {
        accusation.accuser = s.cluster.nodes[2].id();
    }
    refused(
        &s,
        "a death with a forged accuser, by rumor",
        s.datagram(s.gossip(vec![Rumor::Member {
            member: dead.clone(),
        }])),
        counted_in_swim(Refusal::BadSignature),
    )
    .await;
    refused(
        &s,
        "a death with a forged accuser, by sync",
        s.sync_part(1, pushing(vec![dead], Delta::default())),
        counted_in_sync(Refusal::BadSignature),
    )
    .await;
    cluster_unaffected(&s, &record).await;
}
