//! What the fuzz targets share: the cluster, node ids and addresses, the
//! configurations the targets decode with, and a snapshot of replicated state
//! to compare before and after refused input.

use std::collections::VecDeque;
use std::net::SocketAddr;

use gossip_antientropy::{SyncConfig, SyncState};
use gossip_core::{
    ClusterId, Entry, Incarnation, Limits, Member, MemberMeta, MemberStatus, NodeId, NodeKey,
};

/// The cluster every target and every corpus file speaks for.
pub fn cluster() -> ClusterId {
    ClusterId::from_name("fuzz")
}

/// The signing key of node `n`.
pub fn node_key(n: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[n.wrapping_add(1); 32])
}

/// The id of node `n`.
pub fn node_id(n: u8) -> NodeId {
    node_key(n).id()
}

/// Node `subject`'s record at `incarnation` as its makers sign it: its own
/// (alive or left), or an accusation by node 0 (suspect or dead).
pub fn signed_record(subject: u8, incarnation: u64, status: MemberStatus) -> Member {
    let mut record = Member::new(
        node_id(subject),
        MemberMeta::new(format!("m{subject}"), [node_addr(subject)]),
    );
    record.incarnation = Incarnation::new(incarnation);
    if status == MemberStatus::Left {
        record.status = status;
    }
    record.sign(&node_key(subject), cluster());
    match status {
        MemberStatus::Suspect | MemberStatus::Dead => {
            record.accused(&node_key(0), cluster(), status)
        }
        _ => record,
    }
}

/// A replica's state for node `n`.
pub fn sync_state(n: u8) -> SyncState {
    SyncState::new(
        node_key(n),
        cluster(),
        MemberMeta::new(format!("r{n}"), []),
        Limits::default(),
    )
}

/// The address of node `n`.
pub fn node_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7946))
}

/// SWIM's configuration for node `n` of a small cluster.
pub fn swim_config(seed: u64) -> gossip_swim::Config {
    let mut config = gossip_swim::Config::lan(cluster(), 8);
    config.rng_seed = seed;
    config
}

/// The sync configuration.
pub fn sync_config() -> SyncConfig {
    SyncConfig::new(cluster())
}

/// Everything a replica holds that a sync may change: member records, and
/// per owner its version, floor and every entry.
pub type Snapshot = (Vec<Member>, Vec<(NodeId, u64, u64, Vec<Entry>)>);

/// The replicated content of `state`.
pub fn snapshot(state: &SyncState) -> Snapshot {
    let members = state.members().cloned().collect();
    let kv = state
        .kv()
        .owners()
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

/// Changes the byte at `at` (wrapped to the length) by `xor`, as a corrupted
/// message arrives; an empty message stays empty.
pub fn flip_byte(bytes: &mut [u8], at: u16, xor: u8) {
    if !bytes.is_empty() {
        let at = usize::from(at) % bytes.len();
        bytes[at] ^= xor;
    }
}

/// Queues `item` on a queue of messages in flight that holds at most `cap`:
/// past it, the oldest is lost.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    if queue.len() == cap {
        queue.pop_front();
    }
    queue.push_back(item);
}
