//! After a sync both replicas hold identical state; the diff is empty exactly
//! when states are equal; concurrent updates during a sync are never lost.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::time::Duration;

use common::{content, deliver, member, owner_store, replica, run_session, sync_config};
use gossip_antientropy::SyncState;
use gossip_core::{KvStore, MemberStatus, Timestamp};
use proptest::prelude::*;

const OWNERS: usize = 24;
const KEYS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    /// An owner writes.
    Set { owner: usize, key: usize, value: u8 },
    /// An owner deletes.
    Delete { owner: usize, key: usize },
    /// An owner collects its old tombstones.
    Collect { owner: usize },
    /// Time passes.
    Tick,
    /// A replica catches up with an owner.
    Deliver { owner: usize, replica: usize },
    /// A replica hears a member claim.
    Claim {
        subject: usize,
        replica: usize,
        incarnation: u64,
        status: u8,
    },
    /// A replica writes its own key.
    Local {
        replica: usize,
        key: usize,
        value: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..OWNERS, 0..KEYS, any::<u8>()).prop_map(|(owner, key, value)| Op::Set { owner, key, value }),
        2 => (0..OWNERS, 0..KEYS).prop_map(|(owner, key)| Op::Delete { owner, key }),
        1 => (0..OWNERS).prop_map(|owner| Op::Collect { owner }),
        1 => Just(Op::Tick),
        5 => (0..OWNERS, 0..2usize).prop_map(|(owner, replica)| Op::Deliver { owner, replica }),
        2 => (0..OWNERS, 0..2usize, 0u64..3, 0u8..4)
            .prop_map(|(subject, replica, incarnation, status)| Op::Claim { subject, replica, incarnation, status }),
        2 => (0..2usize, 0..KEYS, any::<u8>()).prop_map(|(replica, key, value)| Op::Local { replica, key, value }),
    ]
}

struct World {
    owners: Vec<KvStore>,
    replicas: [SyncState; 2],
    now: Timestamp,
}

impl World {
    fn new() -> Self {
        World {
            owners: (0..OWNERS).map(owner_store).collect(),
            replicas: [replica(1), replica(2)],
            now: Timestamp::ZERO,
        }
    }

    fn apply(&mut self, op: &Op) {
        let key = |k: usize| format!("key-{k}");
        match *op {
            Op::Set {
                owner,
                key: k,
                value,
            } => {
                self.owners[owner].set(key(k), vec![value; 3]).unwrap();
            }
            Op::Delete { owner, key: k } => {
                self.owners[owner].delete(self.now, &key(k)).unwrap();
            }
            Op::Collect { owner } => {
                self.owners[owner].collect_tombstones(self.now, Duration::from_secs(1));
            }
            Op::Tick => self.now += Duration::from_secs(1),
            Op::Deliver { owner, replica } => {
                deliver(&self.owners[owner], &mut self.replicas[replica])
            }
            Op::Claim {
                subject,
                replica,
                incarnation,
                status,
            } => {
                let status = [
                    MemberStatus::Alive,
                    MemberStatus::Suspect,
                    MemberStatus::Dead,
                    MemberStatus::Left,
                ][usize::from(status)];
                self.replicas[replica]
                    .merge_member(member(subject, incarnation, status))
                    .unwrap();
            }
            Op::Local {
                replica,
                key: k,
                value,
            } => {
                self.replicas[replica].set(key(k), vec![value; 2]).unwrap();
            }
        }
    }
}

fn assert_identical(a: &SyncState, b: &SyncState) -> Result<(), TestCaseError> {
    prop_assert_eq!(content(a), content(b));
    prop_assert_eq!(a.root(), b.root());
    prop_assert!(a.diff(b).is_empty());
    Ok(())
}

/// No replica holds a live key that its owner has deleted at a version the
/// replica claims to have reached.
fn assert_no_resurrection(world: &World) -> Result<(), TestCaseError> {
    for owner in &world.owners {
        let id = owner.local_id();
        let truth = owner.local();
        for replica in &world.replicas {
            let Some(node) = replica.kv().node(&id) else {
                continue;
            };
            if node.max_version() == truth.max_version() {
                let live: Vec<_> = node.iter().collect();
                let expected: Vec<_> = truth.iter().collect();
                prop_assert_eq!(live, expected, "a caught-up replica differs from its owner");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config(256))]

    #[test]
    fn a_completed_sync_leaves_both_replicas_identical(
        ops in prop::collection::vec(op(), 0..120),
        cap in prop_oneof![Just(700usize), Just(4096), Just(65_536)],
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        let [a, b] = &mut world.replicas;
        let run = run_session(a, b, &sync_config(cap), |_, _| {});
        prop_assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_identical(a, b)?;
        assert_no_resurrection(&world)?;
        // A second sync between equal replicas is one tiny exchange.
        let [a, b] = &mut world.replicas;
        let again = run_session(a, b, &sync_config(cap), |_, _| {});
        prop_assert_eq!(again.round_trips(), 1);
        prop_assert!(again.bytes() <= 64, "{} bytes", again.bytes());
    }

    #[test]
    fn the_diff_is_empty_exactly_when_states_are_equal(
        ops in prop::collection::vec(op(), 0..80),
        extra in prop::option::of(op()),
    ) {
        // Two replicas fed the same history are equal; one more operation on
        // one of them (if it changes anything) makes them differ.
        let mut first = World::new();
        let mut second = World::new();
        for op in &ops {
            first.apply(op);
            second.apply(op);
        }
        let (a, b) = (&first.replicas[0], &second.replicas[0]);
        prop_assert!(a.diff(b).is_empty());
        prop_assert_eq!(a.root(), b.root());
        if let Some(extra) = extra {
            second.apply(&extra);
        }
        let (a, b) = (&first.replicas[0], &second.replicas[0]);
        let equal = content(a) == content(b);
        prop_assert_eq!(a.diff(b).is_empty(), equal);
        prop_assert_eq!(a.root() == b.root(), equal);
    }

    #[test]
    fn concurrent_updates_during_a_sync_are_never_lost(
        before in prop::collection::vec(op(), 0..60),
        during in prop::collection::vec(op(), 0..40),
        cap in prop_oneof![Just(700usize), Just(65_536)],
    ) {
        let mut world = World::new();
        for op in &before {
            world.apply(op);
        }
        let mut during = during.into_iter();
        let World { owners, replicas, now } = &mut world;
        let mut side = World { owners: std::mem::take(owners), replicas: [replica(9), replica(10)], now: *now };
        let [a, b] = replicas;
        run_session(a, b, &sync_config(cap), |a, b| {
            // Interleave one operation between messages, on the real replicas.
            if let Some(op) = during.next() {
                std::mem::swap(&mut side.replicas[0], a);
                std::mem::swap(&mut side.replicas[1], b);
                side.apply(&op);
                std::mem::swap(&mut side.replicas[0], a);
                std::mem::swap(&mut side.replicas[1], b);
            }
        });
        for op in during {
            std::mem::swap(&mut side.replicas[0], a);
            std::mem::swap(&mut side.replicas[1], b);
            side.apply(&op);
            std::mem::swap(&mut side.replicas[0], a);
            std::mem::swap(&mut side.replicas[1], b);
        }
        world.owners = side.owners;
        // The next round picks up what the first missed.
        let [a, b] = &mut world.replicas;
        let run = run_session(a, b, &sync_config(cap), |_, _| {});
        prop_assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_identical(a, b)?;
        // Every write each replica accepted for itself is on the other side.
        for (mine, other) in [(&world.replicas[0], &world.replicas[1]), (&world.replicas[1], &world.replicas[0])] {
            let own: Vec<_> = mine.kv().local().entries().collect();
            let copy: Vec<_> = other.kv().node(&mine.local_id()).map(|n| n.entries().collect()).unwrap_or_default();
            prop_assert_eq!(own, copy);
        }
        assert_no_resurrection(&world)?;
    }
}
