//! The replicated state a sync reconciles, with its Merkle tree kept current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{
    ById, Delta, Digest, Error as CoreError, HasId, Key, KvChange, KvStore, Limits, Member, NodeId,
    Timestamp,
};

use crate::message::{LeafSummary, RootDigest, ShortDigest};
use crate::tree::{LeafTree, Leaves, Prefix, View};

/// A replica's view of the cluster state: member records and every node's
/// key/value writes, with the [`LeafTree`] over them kept current on every
/// change (one leaf per owner, kept with the owner's member record).
///
/// All changes go through this type so the tree cannot fall out of step.
///
/// ```
/// use gossip_antientropy::SyncState;
/// use gossip_core::{Limits, Member, MemberMeta, NodeId};
/// let me = Member::new(NodeId::from_public_key(b"me"), MemberMeta::default());
/// let mut state = SyncState::new(me, Limits::default());
/// let before = state.root();
/// state.set("role", &b"cache"[..]).unwrap();
/// assert_ne!(state.root(), before);
/// ```
#[derive(Debug, Clone)]
pub struct SyncState {
    kv: KvStore,
    /// Member records with their owners' leaves, computed once per change.
    members: BTreeSet<ById<HashedMember>>,
    /// The leaves of owners whose writes are held but whose member record
    /// is not (rare: a record forgotten, or not yet received).
    orphan_leaves: BTreeMap<NodeId, Digest>,
    /// Sums over the leaves.
    tree: LeafTree,
    limits: Limits,
}

/// A member record and its owner's leaf. The record's hash is not kept: it
/// is needed only when the leaf changes or a sync compares leaves, and every
/// node holds one of these per member.
#[derive(Debug, Clone)]
struct HashedMember {
    /// Shared with SWIM's table where the replica can (see
    /// [`SyncState::merge_shared_member`]).
    member: Arc<Member>,
    /// The owner's leaf digest: here rather than in the tree, so that the
    /// owner's id is not held twice.
    leaf: Digest,
}

impl HasId for HashedMember {
    fn id(&self) -> &NodeId {
        &self.member.id
    }
}

/// The first 8 bytes of the blake3 hash of the record's encoding, hashed as
/// it is encoded.
fn member_hash(member: &Member) -> u64 {
    let hasher = postcard::to_io(member, blake3::Hasher::new()).unwrap_or_default();
    let mut word = [0u8; 8];
    word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(word)
}

impl SyncState {
    /// A state holding only the local node's record.
    pub fn new(local: Member, limits: Limits) -> Self {
        let kv = KvStore::new(local.id, limits.clone());
        Self::from_parts(kv, [local], limits)
    }

    /// A state built from an existing store and member records.
    pub fn from_parts(
        kv: KvStore,
        members: impl IntoIterator<Item = Member>,
        limits: Limits,
    ) -> Self {
        let mut state = SyncState {
            kv,
            members: BTreeSet::new(),
            orphan_leaves: BTreeMap::new(),
            tree: LeafTree::default(),
            limits,
        };
        for member in members {
            // The last record of an id wins, as in a map.
            state.hold_member(Arc::new(member));
        }
        let owners: Vec<NodeId> = state.kv.owners().map(|(id, _)| *id).collect();
        for owner in owners {
            state.refresh(owner);
        }
        state
    }

    /// The local node's id.
    pub fn local_id(&self) -> NodeId {
        self.kv.local_id()
    }

    /// The key/value store.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// The member records, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|record| &*record.0.member)
    }

    /// One member's record.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id).map(|record| &*record.0.member)
    }

    /// The Merkle tree's sums; the leaves are this state's (see
    /// [`Leaves`]).
    pub fn tree(&self) -> &LeafTree {
        &self.tree
    }

    /// The view of the tree's node at `prefix`, as [`LeafTree::view`].
    pub fn view(&self, prefix: &Prefix, leaf_threshold: usize) -> Option<View> {
        self.tree.view(prefix, leaf_threshold, self)
    }

    /// The owners whose leaves differ between this state and `other`, in id
    /// order, as [`LeafTree::diff`].
    pub fn diff(&self, other: &SyncState) -> Vec<NodeId> {
        self.tree.diff(self, &other.tree, other)
    }

    /// `owner`'s leaf digest, if it has one.
    pub fn leaf(&self, owner: &NodeId) -> Option<Digest> {
        match self.members.get(owner) {
            Some(record) => Some(record.0.leaf),
            None => self.orphan_leaves.get(owner).copied(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The root digest, to compare with a peer's (for example on a probe).
    pub fn root(&self) -> RootDigest {
        RootDigest {
            digest: ShortDigest::from(self.tree.root()),
            leaves: self.tree.len() as u64,
        }
    }

    /// One owner's leaf, in parts.
    pub fn summary(&self, owner: &NodeId) -> LeafSummary {
        let member = self
            .members
            .get(owner)
            .map_or(0, |record| member_hash(&record.0.member));
        let (max_version, floor, content) =
            self.kv.node(owner).map_or((0, 0, Digest::ZERO), |node| {
                (node.max_version(), node.floor(), node.content_digest())
            });
        let mut content_word = [0u8; 8];
        content_word.copy_from_slice(&content.to_bytes()[..8]);
        LeafSummary {
            owner: *owner,
            member,
            max_version,
            floor,
            content: u64::from_le_bytes(content_word),
        }
    }

    /// Recomputes `owner`'s leaf after a change to its writes.
    fn refresh(&mut self, owner: NodeId) {
        let old = self.leaf(&owner);
        self.refresh_from(owner, old);
    }

    /// Recomputes `owner`'s leaf, which was `old` (in the tree's sums)
    /// before the change, and keeps it with the owner's record.
    fn refresh_from(&mut self, owner: NodeId, old: Option<Digest>) {
        let new = self.leaf_digest(&owner);
        self.tree.update(&owner, old, new);
        match (self.members.get(&owner), new) {
            (Some(record), Some(leaf)) => {
                let record = HashedMember {
                    leaf,
                    ..record.0.clone()
                };
                self.members.replace(ById(record));
                self.orphan_leaves.remove(&owner);
            }
            (None, Some(leaf)) => {
                self.orphan_leaves.insert(owner, leaf);
            }
            // A held record always has a leaf (`leaf_digest`), so this is
            // an owner with nothing left.
            (_, None) => {
                self.orphan_leaves.remove(&owner);
            }
        }
    }

    /// What `owner`'s leaf should be now: `None` if nothing of it is held.
    fn leaf_digest(&self, owner: &NodeId) -> Option<Digest> {
        let node = self.kv.node(owner);
        if !self.members.contains(owner)
            && node.is_none_or(|n| n.max_version() == 0 && n.is_empty())
            && *owner != self.local_id()
        {
            return None;
        }
        let summary = self.summary(owner);
        let content = node.map_or(Digest::ZERO, |n| n.content_digest());
        let mut hasher = blake3::Hasher::new();
        hasher.update(owner.as_bytes());
        hasher.update(&summary.member.to_le_bytes());
        hasher.update(&summary.max_version.to_le_bytes());
        hasher.update(&summary.floor.to_le_bytes());
        hasher.update(&content.to_bytes());
        Some(Digest::from_hash(hasher.finalize()))
    }

    /// Holds `member` in place of any record of its id, with its leaf
    /// brought up to date.
    fn hold_member(&mut self, member: Arc<Member>) {
        let id = member.id;
        let old = self.leaf(&id);
        self.members.replace(ById(HashedMember {
            member,
            // Replaced at once by `refresh_from`; the sums still hold `old`.
            leaf: Digest::ZERO,
        }));
        self.refresh_from(id, old);
    }

    /// Sets one of the local node's keys.
    ///
    /// # Errors
    ///
    /// As [`KvStore::set`].
    pub fn set(&mut self, key: impl Into<Key>, value: impl Into<Bytes>) -> Result<u64, CoreError> {
        let version = self.kv.set(key, value)?;
        self.refresh(self.local_id());
        Ok(version)
    }

    /// Deletes one of the local node's keys.
    ///
    /// # Errors
    ///
    /// As [`KvStore::delete`].
    pub fn delete(&mut self, now: Timestamp, key: &str) -> Result<Option<u64>, CoreError> {
        let version = self.kv.delete(now, key)?;
        self.refresh(self.local_id());
        Ok(version)
    }

    /// Collects the local node's old tombstones.
    pub fn collect_tombstones(&mut self, now: Timestamp, grace: Duration) -> usize {
        let collected = self.kv.collect_tombstones(now, grace);
        self.refresh(self.local_id());
        collected
    }

    /// Merges a member record (the lattice join of SWIM's precedence).
    /// Returns `true` if the held record changed.
    ///
    /// # Errors
    ///
    /// [`CoreError::LimitExceeded`] for oversized metadata or a full table;
    /// nothing changes then.
    pub fn merge_member(&mut self, record: Member) -> Result<bool, CoreError> {
        self.merge(Arc::new(record), false)
    }

    /// As [`merge_member`](SyncState::merge_member), keeping `record`'s
    /// allocation when it is the merged record: a replica passes the
    /// records of SWIM's table, so that every member's record is held once
    /// per node, not twice.
    ///
    /// # Errors
    ///
    /// As [`merge_member`](SyncState::merge_member).
    pub fn merge_shared_member(&mut self, record: Arc<Member>) -> Result<bool, CoreError> {
        self.merge(record, true)
    }

    /// Merges `record`; if `share` and it equals the record held, holds
    /// `record`'s allocation instead.
    fn merge(&mut self, record: Arc<Member>, share: bool) -> Result<bool, CoreError> {
        record.validate(&self.limits)?;
        let id = record.id;
        let current = self
            .members
            .get(&id)
            .map(|held| (Arc::clone(&held.0.member), held.0.leaf));
        let merged = match current {
            Some((current, leaf)) => {
                let merged = current.join(&record);
                if merged == *current {
                    if share && *record == *current && !Arc::ptr_eq(&record, &current) {
                        // The same record, come by another way (a sync)
                        // before SWIM's table had it: hold SWIM's copy.
                        self.members.replace(ById(HashedMember {
                            member: record,
                            leaf,
                        }));
                    }
                    return Ok(false);
                }
                if merged == *record {
                    record
                } else {
                    Arc::new(merged)
                }
            }
            None => {
                if self.members.len() >= self.limits.max_members {
                    return Err(CoreError::LimitExceeded {
                        what: gossip_core::Limited::Members,
                        got: self.members.len() + 1,
                        max: self.limits.max_members,
                    });
                }
                record
            }
        };
        self.hold_member(merged);
        Ok(true)
    }

    /// Applies key/value writes from a peer.
    ///
    /// # Errors
    ///
    /// As [`KvStore::apply_delta`]: nothing changes on error.
    pub fn apply_delta(&mut self, delta: Delta) -> Result<Vec<KvChange>, CoreError> {
        let owners: Vec<NodeId> = delta.owners.iter().map(|d| d.owner).collect();
        let changes = self.kv.apply_delta(delta)?;
        for owner in owners {
            self.refresh(owner);
        }
        Ok(changes)
    }

    /// Forgets an owner entirely (a member removed from the cluster).
    pub fn forget(&mut self, owner: &NodeId) {
        let old = self.leaf(owner);
        self.members.take(owner);
        self.kv.forget(owner);
        self.refresh_from(*owner, old);
    }
}

impl Leaves for SyncState {
    fn leaves_under(&self, prefix: &Prefix) -> Vec<(NodeId, Digest)> {
        let mut leaves: Vec<(NodeId, Digest)> = self
            .members
            .range::<NodeId, _>(prefix.ids())
            .map(|record| (record.0.member.id, record.0.leaf))
            .collect();
        if !self.orphan_leaves.is_empty() {
            leaves.extend(self.orphan_leaves.leaves_under(prefix));
            leaves.sort_unstable_by_key(|(id, _)| *id);
        }
        leaves
    }
}

#[cfg(test)]
mod tests {
    use gossip_core::MemberMeta;

    use super::*;

    fn id(n: u32) -> NodeId {
        NodeId::from_public_key(&n.to_le_bytes())
    }

    /// The sums kept step by step match the leaves held, and a state built
    /// afresh from the same records and writes.
    fn assert_consistent(state: &SyncState, step: &str) {
        let leaves = state.leaves_under(&Prefix::ROOT);
        let sum = leaves.iter().fold(Digest::ZERO, |acc, (_, d)| acc + *d);
        assert_eq!(state.tree().root(), sum, "{step}: root");
        assert_eq!(state.tree().len(), leaves.len(), "{step}: leaf count");
        let rebuilt = SyncState::from_parts(
            state.kv().clone(),
            state.members().cloned(),
            state.limits().clone(),
        );
        assert_eq!(rebuilt.root(), state.root(), "{step}: rebuilt");
        assert!(rebuilt.diff(state).is_empty(), "{step}: rebuilt diff");
    }

    #[test]
    fn leaves_follow_records_writes_and_forgetting() {
        let limits = Limits::default();
        let mut state = SyncState::new(Member::new(id(0), MemberMeta::default()), limits.clone());
        for n in 1..200 {
            state
                .merge_member(Member::new(id(n), MemberMeta::new(format!("n{n}"), [])))
                .unwrap();
        }
        assert_consistent(&state, "members merged");

        // Writes of owners with no record here: leaves of their own.
        for n in [500, 501, 7] {
            let mut peer =
                SyncState::new(Member::new(id(n), MemberMeta::default()), limits.clone());
            peer.set("k", &b"v"[..]).unwrap();
            state
                .apply_delta(peer.kv().delta_for(&[], usize::MAX))
                .unwrap();
        }
        assert_eq!(state.tree().len(), 202);
        assert_consistent(&state, "writes applied");

        // A record arriving for an owner whose writes are held.
        state
            .merge_member(Member::new(id(500), MemberMeta::default()))
            .unwrap();
        let mut suspect = Member::new(id(3), MemberMeta::new("n3", []));
        suspect.status = gossip_core::MemberStatus::Suspect;
        state.merge_member(suspect).unwrap();
        state.set("own", &b"key"[..]).unwrap();
        assert_consistent(&state, "records changed");

        for n in [7, 500, 501, 42] {
            state.forget(&id(n));
        }
        assert_eq!(state.tree().len(), 198);
        assert_consistent(&state, "owners forgotten");
    }
}
