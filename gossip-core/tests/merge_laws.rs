//! Member-record merge is a join-semilattice, and a table fed the same
//! claims in any order ends up the same.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::Arc;

use gossip_core::{
    Incarnation, Limits, Member, MemberMeta, MemberStatus, Membership, NodeId, Timestamp,
};
use proptest::prelude::*;

fn status() -> impl Strategy<Value = MemberStatus> {
    prop_oneof![
        Just(MemberStatus::Alive),
        Just(MemberStatus::Suspect),
        Just(MemberStatus::Dead),
        Just(MemberStatus::Left),
    ]
}

/// Claims about member `subject`, with few enough distinct values that ties
/// (same incarnation and status, different metadata) are common.
fn claim(subject: u8) -> impl Strategy<Value = Member> {
    (0u64..4, status(), 0u64..4, 0usize..3).prop_map(move |(inc, status, state_version, meta)| {
        Member {
            id: NodeId::from_bytes([subject; 32]),
            incarnation: Incarnation::new(inc),
            status,
            state_version,
            meta: Arc::new(MemberMeta::new(format!("name-{meta}"), vec![])),
        }
    })
}

proptest! {
    #![proptest_config(common::config(2048))]

    #[test]
    fn join_is_commutative(a in claim(1), b in claim(1)) {
        prop_assert_eq!(a.join(&b), b.join(&a));
    }

    #[test]
    fn join_is_associative(a in claim(1), b in claim(1), c in claim(1)) {
        prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
    }

    #[test]
    fn join_is_idempotent(a in claim(1), b in claim(1)) {
        prop_assert_eq!(a.join(&a), a.clone());
        let ab = a.join(&b);
        prop_assert_eq!(ab.join(&b), ab.clone());
    }

    #[test]
    fn join_never_lowers_incarnation_or_state_version(a in claim(1), b in claim(1)) {
        let joined = a.join(&b);
        prop_assert!(joined.incarnation >= a.incarnation.max(b.incarnation));
        prop_assert_eq!(joined.state_version, a.state_version.max(b.state_version));
    }

    /// Owner-made claims about several members, applied to two tables in two
    /// different orders, leave the tables identical.
    #[test]
    fn tables_converge_whatever_the_order(
        claims in prop::collection::vec((1u8..5).prop_flat_map(claim), 1..40),
        shuffle_seed in any::<u64>(),
    ) {
        let local = NodeId::from_bytes([0; 32]);
        let mut forward = Membership::new(Member::new(local, MemberMeta::default()), Limits::default());
        let mut other = forward.clone();
        let mut reordered = claims.clone();
        // A deterministic permutation derived from the generated seed.
        reordered.sort_by_key(|m| (m.state_version ^ shuffle_seed).wrapping_mul(m.incarnation.get() + 7) ^ u64::from(m.id.as_bytes()[0]));
        reordered.reverse();
        for m in claims {
            let origin = m.id;
            forward.apply(Timestamp::ZERO, m, origin).unwrap();
        }
        for m in reordered {
            let origin = m.id;
            other.apply(Timestamp::ZERO, m, origin).unwrap();
        }
        let a: Vec<_> = forward.iter().cloned().collect();
        let b: Vec<_> = other.iter().cloned().collect();
        prop_assert_eq!(a, b);
        // The table's O(1) counts and departed index agree with its records.
        for status in [MemberStatus::Alive, MemberStatus::Suspect, MemberStatus::Dead, MemberStatus::Left] {
            prop_assert_eq!(forward.count(status), forward.iter().filter(|m| m.status == status).count());
        }
        let departed: Vec<_> = forward.others().filter(|m| m.status.is_departed()).map(|m| m.id).collect();
        prop_assert_eq!(departed, forward.departed().map(|m| m.id).collect::<Vec<_>>());
    }
}
