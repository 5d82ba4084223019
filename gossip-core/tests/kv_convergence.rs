//! Random interleavings of set, delete, sync and tombstone collection across
//! several replicas: they converge to identical state, and no deleted key ever
//! comes back.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use gossip_core::{Bytes, ClusterId, KvStore, Limits, NodeId, NodeKey, Timestamp};
use proptest::prelude::*;

const REPLICAS: usize = 4;
const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];
const GRACE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
enum Op {
    Set {
        replica: usize,
        key: usize,
        value: u8,
    },
    Delete {
        replica: usize,
        key: usize,
    },
    Sync {
        from: usize,
        to: usize,
        budget: usize,
    },
    Collect {
        replica: usize,
    },
    Tick {
        millis: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let replica = 0..REPLICAS;
    prop_oneof![
        4 => (replica.clone(), 0..KEYS.len(), any::<u8>()).prop_map(|(replica, key, value)| Op::Set { replica, key, value }),
        3 => (replica.clone(), 0..KEYS.len()).prop_map(|(replica, key)| Op::Delete { replica, key }),
        6 => (replica.clone(), replica.clone(), prop_oneof![Just(48usize), Just(90), Just(160), Just(1 << 20)])
            .prop_map(|(from, to, budget)| Op::Sync { from, to, budget }),
        2 => replica.prop_map(|replica| Op::Collect { replica }),
        2 => (0u64..25).prop_map(|millis| Op::Tick { millis }),
    ]
}

const CLUSTER: ClusterId = ClusterId::from_bytes([2; 8]);

fn key(replica: usize) -> NodeKey {
    NodeKey::from_secret_bytes(&[replica as u8 + 1; 32])
}

fn id(replica: usize) -> NodeId {
    key(replica).id()
}

fn live(store: &KvStore, owner: &NodeId) -> BTreeMap<String, Bytes> {
    store
        .node(owner)
        .map(|state| {
            state
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Owner-side history: for each owner and key, the version of the owner's
/// latest write and whether it was a delete.
type History = Vec<BTreeMap<&'static str, (u64, bool)>>;

fn check_no_resurrection(stores: &[KvStore], history: &History) -> Result<(), TestCaseError> {
    for (owner_index, writes) in history.iter().enumerate() {
        let owner = id(owner_index);
        let truth = live(&stores[owner_index], &owner);
        for store in stores {
            let Some(state) = store.node(&owner) else {
                continue;
            };
            // Never ahead of the owner.
            prop_assert!(state.max_version() <= stores[owner_index].local().max_version());
            for (key, &(version, deleted)) in writes {
                if deleted && version <= state.max_version() {
                    prop_assert!(
                        state.get(key).is_none(),
                        "{} holds {key} of {owner} although the owner deleted it at version {version} and it is at {}",
                        store.local_id(),
                        state.max_version()
                    );
                }
            }
            if state.max_version() == stores[owner_index].local().max_version() {
                prop_assert_eq!(
                    &live(store, &owner),
                    &truth,
                    "caught-up replica differs from the owner"
                );
            }
        }
    }
    Ok(())
}

/// Every replica holds exactly the owner's writes, tombstones included.
fn check_identical(stores: &[KvStore]) -> Result<(), TestCaseError> {
    for owner in 0..REPLICAS {
        let truth = stores[owner].local();
        let writes: Vec<_> = truth.entries().collect();
        for store in stores {
            let state = store.node(&id(owner));
            prop_assert_eq!(state.map_or(0, |s| s.max_version()), truth.max_version());
            if truth.max_version() == 0 {
                continue;
            }
            let state = state.unwrap();
            prop_assert_eq!(state.floor(), truth.floor());
            prop_assert_eq!(state.entries().collect::<Vec<_>>(), writes.clone());
            prop_assert_eq!(state.content_digest(), truth.content_digest());
        }
    }
    Ok(())
}

fn sync(stores: &mut [KvStore], from: usize, to: usize, budget: usize) {
    if from == to {
        return;
    }
    let mut delta = stores[from].delta_for(&stores[to].digest(), budget);
    // Only whole owner deltas apply; the parts of a split one wait for a
    // larger budget.
    delta.owners.retain(|owner| owner.complete);
    stores[to]
        .apply_delta(delta)
        .expect("deltas between honest replicas apply");
}

proptest! {
    #![proptest_config(common::config(512))]

    #[test]
    fn replicas_converge_and_deleted_keys_stay_deleted(ops in prop::collection::vec(op(), 1..160)) {
        let mut stores: Vec<KvStore> = (0..REPLICAS).map(|r| KvStore::new(key(r), CLUSTER, Limits::default())).collect();
        let mut history: History = vec![BTreeMap::new(); REPLICAS];
        let mut now = Timestamp::ZERO;

        for op in ops {
            match op {
                Op::Set { replica, key, value } => {
                    let version = stores[replica].set(KEYS[key], vec![value]).unwrap();
                    history[replica].insert(KEYS[key], (version, false));
                }
                Op::Delete { replica, key } => {
                    if let Some(version) = stores[replica].delete(now, KEYS[key]).unwrap() {
                        history[replica].insert(KEYS[key], (version, true));
                    }
                }
                Op::Sync { from, to, budget } => sync(&mut stores, from, to, budget),
                Op::Collect { replica } => {
                    stores[replica].collect_tombstones(now, GRACE);
                }
                Op::Tick { millis } => now += Duration::from_millis(millis),
            }
            check_no_resurrection(&stores, &history)?;
        }

        // Quiesce: full-budget anti-entropy between every pair until nothing moves.
        for _ in 0..4 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    sync(&mut stores, from, to, 1 << 20);
                }
            }
        }
        check_no_resurrection(&stores, &history)?;
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                prop_assert!(stores[from].delta_for(&stores[to].digest(), 1 << 20).is_empty(), "still moving");
            }
        }
        check_identical(&stores)?;

        // Every owner collects every tombstone; after another round of
        // anti-entropy the replicas are identical again, tombstones included.
        now += GRACE;
        for store in &mut stores {
            store.collect_tombstones(now, GRACE);
        }
        for _ in 0..2 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    sync(&mut stores, from, to, 1 << 20);
                }
            }
        }
        check_identical(&stores)?;
        for store in &stores {
            for (_, state) in store.owners() {
                prop_assert_eq!(state.tombstones(), 0);
            }
        }
    }
}
