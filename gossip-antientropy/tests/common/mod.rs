//! Shared helpers: replicas, owners that feed them, and a session runner.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::time::Duration;

use gossip_antientropy::{Session, SessionStats, SyncConfig, SyncState};
use gossip_core::{
    ClusterId, Incarnation, KvStore, Limits, Member, MemberMeta, MemberStatus, NodeId, NodeKey,
    Timestamp,
};
use proptest::test_runner::{Config, RngAlgorithm, RngSeed};

pub(crate) fn cluster() -> ClusterId {
    ClusterId::from_name("antientropy-tests")
}

/// Replica `n`'s key.
pub(crate) fn replica_key(n: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[n; 32])
}

pub(crate) fn id(n: u8) -> NodeId {
    replica_key(n).id()
}

/// Owner `n`'s key: ids spread over the tree (distinct first nibbles and
/// beyond).
pub(crate) fn owner_key(n: usize) -> NodeKey {
    NodeKey::from_secret_bytes(blake3::hash(format!("owner-{n}").as_bytes()).as_bytes())
}

pub(crate) fn owner_id(n: usize) -> NodeId {
    owner_key(n).id()
}

/// Owner `n`'s own store.
pub(crate) fn owner_store(n: usize) -> KvStore {
    KvStore::new(owner_key(n), cluster(), Limits::default())
}

pub(crate) fn replica(n: u8) -> SyncState {
    SyncState::new(
        replica_key(n),
        cluster(),
        MemberMeta::new(format!("r{n}"), []),
        Limits::default(),
    )
}

/// Owner `subject`'s record at `incarnation`, as its maker signed it: its
/// own for alive and left, an accusation by replica 200 otherwise.
pub(crate) fn member(subject: usize, incarnation: u64, status: MemberStatus) -> Member {
    let key = owner_key(subject);
    let mut m = Member::new(key.id(), MemberMeta::new("m", []));
    m.incarnation = Incarnation::new(incarnation);
    if status == MemberStatus::Left {
        m.status = status;
    }
    m.sign(&key, cluster());
    match status {
        MemberStatus::Suspect | MemberStatus::Dead => {
            m.accused(&replica_key(200), cluster(), status)
        }
        _ => m,
    }
}

/// The seed for property tests: `GOSSIP_TEST_SEED` or a fixed default.
pub(crate) fn seed() -> u64 {
    std::env::var("GOSSIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004)
}

/// Deterministic proptest configuration; the seed shows when a test fails.
pub(crate) fn config(cases: u32) -> Config {
    let seed = seed();
    eprintln!("property test seed: {seed} (replay with GOSSIP_TEST_SEED={seed})");
    Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

pub(crate) fn sync_config(max_message_bytes: usize) -> SyncConfig {
    let mut config = SyncConfig::new(cluster());
    config.max_message_bytes = max_message_bytes;
    config
}

/// Brings `replica`'s copy of `owner` up to date with one complete delta (as
/// a finished sync would).
pub(crate) fn deliver(owner: &KvStore, replica: &mut SyncState) {
    let id = owner.local_id();
    let (max, floor) = replica
        .kv()
        .node(&id)
        .map_or((0, 0), |n| (n.max_version(), n.floor()));
    if let Some(delta) = owner.owner_delta(&id, max, floor, usize::MAX) {
        replica
            .apply_delta(gossip_core::Delta {
                owners: vec![delta],
            })
            .expect("an owner's delta applies");
    }
}

/// The outcome of a session run to its end.
pub(crate) struct Run {
    pub(crate) initiator: SessionStats,
    pub(crate) responder: SessionStats,
    pub(crate) errors: Vec<String>,
}

impl Run {
    pub(crate) fn bytes(&self) -> u64 {
        self.initiator.bytes_sent + self.responder.bytes_sent
    }

    /// Round trips: turns in both directions, two to a trip.
    pub(crate) fn round_trips(&self) -> u32 {
        (self.initiator.turns_sent + self.responder.turns_sent).div_ceil(2)
    }
}

/// Runs a session from `a` (initiator) to `b`, calling `between` with both
/// states after every delivered message (for concurrent updates).
pub(crate) fn run_session(
    a: &mut SyncState,
    b: &mut SyncState,
    config: &SyncConfig,
    mut between: impl FnMut(&mut SyncState, &mut SyncState),
) -> Run {
    let now = Timestamp::ZERO + Duration::from_secs(1);
    let mut initiator = Session::initiate(config.clone(), b.local_id(), a, now);
    let mut responder = Session::respond(config.clone(), a.local_id(), now);
    let mut errors = Vec::new();
    for _ in 0..100_000 {
        if initiator.is_finished() && responder.is_finished() {
            break;
        }
        let mut moved = false;
        while let Some(bytes) = initiator.poll_transmit() {
            moved = true;
            if let Err(e) = responder.handle_bytes(now, b, &bytes) {
                errors.push(format!("responder: {e}"));
            }
            between(a, b);
        }
        while let Some(bytes) = responder.poll_transmit() {
            moved = true;
            if let Err(e) = initiator.handle_bytes(now, a, &bytes) {
                errors.push(format!("initiator: {e}"));
            }
            between(a, b);
        }
        if !moved {
            break;
        }
    }
    assert!(
        initiator.is_finished() && responder.is_finished(),
        "session did not finish"
    );
    Run {
        initiator: initiator.stats().clone(),
        responder: responder.stats().clone(),
        errors,
    }
}

/// One owner's replicated key/value state: id, version, floor, writes.
pub(crate) type OwnerContent = (NodeId, u64, u64, Vec<gossip_core::Entry>);

/// The replicated content of a state: member records, and per owner its
/// version, floor and every write.
pub(crate) fn content(state: &SyncState) -> (Vec<Member>, Vec<OwnerContent>) {
    let members = state.members().cloned().collect();
    let kv = state
        .kv()
        .owners()
        .filter(|(_, node)| node.max_version() > 0 || node.floor() > 0)
        .map(|(id, node)| {
            (
                *id,
                node.max_version(),
                node.floor(),
                node.entries().collect(),
            )
        })
        .collect();
    (members, kv)
}
