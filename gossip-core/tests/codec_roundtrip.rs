//! Frames round-trip, and no input bytes make decoding panic.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::Arc;

use gossip_core::{
    Accusation, Bytes, ClusterId, Entry, Frame, Incarnation, Key, Limits, Member, MemberMeta,
    MemberStatus, NodeId, Proof, Rumor, RumorQueue, Signature, decode_frame, encode_frame,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Body {
    seq: u32,
    target: NodeId,
    note: String,
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}

/// IPv6 flow labels and scope ids are local to a host, so the wire does not
/// carry them (serde encodes only the address and port).
fn without_scope(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr {
        std::net::SocketAddr::V6(v6) => {
            std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0).into()
        }
        v4 => v4,
    }
}

fn rumor() -> impl Strategy<Value = Rumor> {
    let member = (
        node_id(),
        0u64..1000,
        prop_oneof![
            Just(MemberStatus::Alive),
            Just(MemberStatus::Suspect),
            Just(MemberStatus::Dead),
            Just(MemberStatus::Left)
        ],
        any::<u64>(),
        "[a-z0-9-]{0,20}",
        prop::collection::vec(any::<std::net::SocketAddr>().prop_map(without_scope), 0..3),
        prop::option::of((node_id(), any::<[u8; 64]>())),
        any::<[u8; 64]>(),
    )
        .prop_map(
            |(id, inc, status, state_version, name, addrs, accusation, owner)| Rumor::Member {
                member: Member {
                    id,
                    incarnation: Incarnation::new(inc),
                    status,
                    state_version,
                    meta: Arc::new(MemberMeta::new(name, addrs)),
                    proof: Proof {
                        owner: Signature::from_bytes(owner),
                        accusation: accusation.map(|(accuser, signature)| Accusation {
                            accuser,
                            status,
                            signature: Signature::from_bytes(signature),
                        }),
                    },
                },
            },
        );
    let state = (
        node_id(),
        "[a-z/]{1,30}",
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        any::<u64>(),
        any::<[u8; 64]>(),
    )
        .prop_map(|(owner, key, value, version, signature)| Rumor::State {
            owner,
            entry: Entry {
                key: Key::from(key),
                value: value.map(Bytes::from),
                version,
            },
            signature: Signature::from_bytes(signature),
        });
    prop_oneof![member, state]
}

proptest! {
    #![proptest_config(common::config(1024))]

    #[test]
    fn frames_round_trip(
        body in (any::<u32>(), node_id(), ".{0,40}").prop_map(|(seq, target, note)| Body { seq, target, note }),
        rumors in prop::collection::vec(rumor(), 0..12),
    ) {
        let limits = Limits::default();
        let cluster = ClusterId::from_name("prop");
        let mut queue = RumorQueue::new(4, limits.clone());
        for r in &rumors {
            queue.push(r.clone()).unwrap();
        }
        let packed = queue.pack(limits.max_frame_bytes, 10);
        let mut bytes = Vec::new();
        encode_frame(cluster, &body, &packed, &limits, &mut bytes).unwrap();
        let frame: Frame<Body> = decode_frame(&bytes, cluster, &limits).unwrap();
        prop_assert_eq!(frame.body, body);
        prop_assert_eq!(frame.rumors.len(), packed.count());
        for r in &frame.rumors {
            prop_assert!(rumors.contains(r));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        let cluster = ClusterId::from_name("prop");
        // With a valid header in front, so the body and rumor decoders see the bytes.
        let mut framed = vec![gossip_core::WIRE_VERSION];
        framed.extend_from_slice(cluster.as_bytes());
        framed.extend_from_slice(&bytes);
        let _ = decode_frame::<Body>(&bytes, cluster, &limits);
        let _ = decode_frame::<Body>(&framed, cluster, &limits);
    }
}
