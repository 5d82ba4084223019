//! Member-record merge is a join-semilattice, and a table fed the same
//! claims in any order ends up the same.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use gossip_core::{
    ClusterId, Error, Incarnation, Limits, Member, MemberMeta, MemberStatus, Membership, NodeKey,
    Timestamp,
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

const CLUSTER: ClusterId = ClusterId::from_bytes([3; 8]);

fn key(n: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[n; 32])
}

/// Signed claims about member `subject`: its own (alive, left), or an
/// accusation by one of two accusers, at times held weaker than it was made
/// (a death held as a suspicion). Few enough distinct values that ties (same
/// incarnation and status, different metadata or accuser) are common.
fn claim(subject: u8) -> impl Strategy<Value = Member> {
    (
        0u64..4,
        status(),
        0u64..4,
        0usize..3,
        10u8..12,
        any::<bool>(),
    )
        .prop_map(
            move |(inc, status, state_version, meta, accuser, held_weaker)| {
                let mut own = Member::new(
                    key(subject).id(),
                    MemberMeta::new(format!("name-{meta}"), vec![]),
                );
                own.incarnation = Incarnation::new(inc);
                own.state_version = state_version;
                own.status = if status == MemberStatus::Left {
                    status
                } else {
                    MemberStatus::Alive
                };
                own.sign(&key(subject), CLUSTER);
                match status {
                    MemberStatus::Dead if held_weaker => own
                        .accused(&key(accuser), CLUSTER, status)
                        .with_status(MemberStatus::Suspect),
                    MemberStatus::Suspect | MemberStatus::Dead => {
                        own.accused(&key(accuser), CLUSTER, status)
                    }
                    _ => own,
                }
            },
        )
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
    fn join_never_lowers_incarnation_and_its_result_verifies(a in claim(1), b in claim(1)) {
        let joined = a.join(&b);
        prop_assert_eq!(joined.incarnation, a.incarnation.max(b.incarnation));
        prop_assert!(joined.verify(CLUSTER).is_ok(), "{:?} from {:?} and {:?}", joined, a, b);
    }

    /// Owner-made claims about several members, applied to two tables in two
    /// different orders, leave the tables identical.
    #[test]
    fn tables_converge_whatever_the_order(
        claims in prop::collection::vec((1u8..5).prop_flat_map(claim), 1..40),
        shuffle_seed in any::<u64>(),
    ) {
        let local = key(0);
        let mut forward = Membership::new(
            local.clone(),
            CLUSTER,
            Member::new(local.id(), MemberMeta::default()),
            Limits::default(),
        );
        let mut other = forward.clone();
        let mut reordered = claims.clone();
        // A deterministic permutation derived from the generated seed.
        reordered.sort_by_key(|m| (m.state_version ^ shuffle_seed).wrapping_mul(m.incarnation.get() + 7) ^ u64::from(m.id.as_bytes()[0]));
        reordered.reverse();
        // Claims older than the one held are refused as stale; nothing else is.
        let take = |table: &mut Membership, m: Member| match table.apply(Timestamp::ZERO, m) {
            Ok(_) | Err(Error::Stale { .. }) => Ok(()),
            Err(err) => Err(err),
        };
        for m in claims {
            prop_assert!(take(&mut forward, m).is_ok());
        }
        for m in reordered {
            prop_assert!(take(&mut other, m).is_ok());
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
