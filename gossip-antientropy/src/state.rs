//! The replicated state a sync reconciles, with its Merkle tree kept current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{
    ById, ClusterId, Delta, Digest, Error as CoreError, HasId, Key, KvChange, KvStore, Limits,
    Member, MemberMeta, NodeId, NodeKey, Timestamp,
};

use crate::message::{LeafSummary, RootDigest, ShortDigest};
use crate::tree::{LeafTree, Leaves, Prefix, View};

/// A replica's view of the cluster state: member records and every node's
/// key/value writes, with the [`LeafTree`] over them kept current on every
/// change (one leaf per owner, kept with the owner's member record).
///
/// All changes go through this type so the tree cannot fall out of step.
/// Records and writes from peers are taken only if their makers signed them
/// (see [`merge_member`](SyncState::merge_member) and
/// [`apply_delta`](SyncState::apply_delta)).
///
/// ```
/// use gossip_antientropy::SyncState;
/// use gossip_core::{ClusterId, Limits, MemberMeta, NodeKey};
/// let key = NodeKey::from_secret_bytes(&[1; 32]);
/// let cluster = ClusterId::from_name("doc");
/// let mut state = SyncState::new(key, cluster, MemberMeta::default(), Limits::default());
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
    /// Nodes the operator revoked: nothing by or about them is taken.
    revoked: BTreeSet<NodeId>,
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
    /// A state holding only the record of the holder of `key` (alive at
    /// incarnation 0 with `meta`), signed, in `cluster`.
    pub fn new(key: NodeKey, cluster: ClusterId, meta: MemberMeta, limits: Limits) -> Self {
        let mut local = Member::new(key.id(), meta);
        local.sign(&key, cluster);
        let kv = KvStore::new(key, cluster, limits.clone());
        Self::from_parts(kv, [local], limits)
    }

    /// A state built from an existing store and member records, taken as
    /// they are: the node's own, or records a verifying table holds.
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
            revoked: BTreeSet::new(),
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

    /// Merges a member record from a peer (the lattice join of SWIM's
    /// precedence), if its signatures verify. Returns `true` if the held
    /// record changed; a record older than the one held changes nothing.
    ///
    /// # Errors
    ///
    /// As [`check_member`](SyncState::check_member); nothing changes then.
    pub fn merge_member(&mut self, record: Member) -> Result<bool, CoreError> {
        match self.check_member(&record)? {
            Some(merged) => Ok(self.hold_merged(merged)),
            None => Ok(false),
        }
    }

    /// What merging `record` from a peer would hold, checked and changing
    /// nothing: `None` if it brings nothing new (the record held, or an older
    /// one).
    ///
    /// # Errors
    ///
    /// [`CoreError::BadSignature`] for a record its makers did not sign,
    /// [`CoreError::Revoked`] for a revoked member or accuser,
    /// [`CoreError::IncarnationJump`], [`CoreError::LimitExceeded`] for
    /// oversized metadata or a full table.
    pub fn check_member(&self, record: &Member) -> Result<Option<Member>, CoreError> {
        for id in [record.id, record.origin()] {
            if self.revoked.contains(&id) {
                return Err(CoreError::Revoked { id });
            }
        }
        let held = self.member(&record.id);
        let merged = match Member::merge_claim(held, record, &self.limits) {
            Ok(Some(merged)) => merged,
            Ok(None) | Err(CoreError::Stale { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        record.verify(self.kv.cluster())?;
        if held.is_none() {
            self.check_room()?;
        }
        Ok(Some(merged))
    }

    /// Whether the table has room for one more member.
    fn check_room(&self) -> Result<(), CoreError> {
        if self.members.len() >= self.limits.max_members {
            return Err(CoreError::LimitExceeded {
                what: gossip_core::Limited::Members,
                got: self.members.len() + 1,
                max: self.limits.max_members,
            });
        }
        Ok(())
    }

    /// Holds a record [`check_member`](SyncState::check_member) returned,
    /// joined with whatever was taken for its id since; `false` if the table
    /// has filled since.
    pub(crate) fn hold_merged(&mut self, merged: Member) -> bool {
        let merged = match self.member(&merged.id) {
            Some(held) => held.join(&merged),
            None if self.check_room().is_err() => return false,
            None => merged,
        };
        self.hold_member(Arc::new(merged));
        true
    }

    /// Merges a record of SWIM's table, which verified it, keeping
    /// `record`'s allocation when it is the merged record, so that every
    /// member's record is held once per node, not twice. Returns `true` if
    /// the held record changed.
    ///
    /// Signatures are **not** checked: pass only records of a table that
    /// checks them ([`gossip_core::Membership`]).
    ///
    /// # Errors
    ///
    /// [`CoreError::LimitExceeded`] for oversized metadata or a full table;
    /// nothing changes then.
    pub fn merge_verified_member(&mut self, record: Arc<Member>) -> Result<bool, CoreError> {
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
                    if *record == *current && !Arc::ptr_eq(&record, &current) {
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
                self.check_room()?;
                record
            }
        };
        self.hold_member(merged);
        Ok(true)
    }

    /// Revokes `id`: forgets its record and writes, and takes nothing by or
    /// about it until [`reinstate`](SyncState::reinstate). The local node
    /// cannot be revoked.
    pub fn revoke(&mut self, id: NodeId) {
        if id != self.local_id() {
            self.revoked.insert(id);
            self.forget(&id);
        }
    }

    /// Takes records and writes of `id` again.
    pub fn reinstate(&mut self, id: &NodeId) {
        self.revoked.remove(id);
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// Applies key/value writes from a peer, each owner's only if the
    /// state it brings is the one the owner signed. Writes of revoked
    /// owners are dropped.
    ///
    /// # Errors
    ///
    /// As [`KvStore::apply_delta`]: nothing changes on error.
    pub fn apply_delta(&mut self, mut delta: Delta) -> Result<Vec<KvChange>, CoreError> {
        delta.owners.retain(|d| !self.revoked.contains(&d.owner));
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

    const CLUSTER: ClusterId = ClusterId::from_bytes([4; 8]);

    fn key(n: u32) -> NodeKey {
        NodeKey::from_secret_bytes(blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn id(n: u32) -> NodeId {
        key(n).id()
    }

    /// Node `n`'s own signed record, alive at incarnation 0.
    fn record(n: u32, name: &str) -> Member {
        let mut record = Member::new(id(n), MemberMeta::new(name, []));
        record.sign(&key(n), CLUSTER);
        record
    }

    fn new_state(n: u32, limits: &Limits) -> SyncState {
        SyncState::new(key(n), CLUSTER, MemberMeta::default(), limits.clone())
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
        let mut state = new_state(0, &limits);
        for n in 1..200 {
            state.merge_member(record(n, &format!("n{n}"))).unwrap();
        }
        assert_consistent(&state, "members merged");

        // Writes of owners with no record here: leaves of their own.
        for n in [500, 501, 7] {
            let mut peer = new_state(n, &limits);
            peer.set("k", &b"v"[..]).unwrap();
            state
                .apply_delta(peer.kv().delta_for(&[], usize::MAX))
                .unwrap();
        }
        assert_eq!(state.tree().len(), 202);
        assert_consistent(&state, "writes applied");

        // A record arriving for an owner whose writes are held.
        state.merge_member(record(500, "")).unwrap();
        let suspect = record(3, "n3").accused(&key(0), CLUSTER, gossip_core::MemberStatus::Suspect);
        assert!(state.merge_member(suspect).unwrap());
        state.set("own", &b"key"[..]).unwrap();
        assert_consistent(&state, "records changed");

        for n in [7, 500, 501, 42] {
            state.forget(&id(n));
        }
        assert_eq!(state.tree().len(), 198);
        assert_consistent(&state, "owners forgotten");
    }
}

#[cfg(test)]
mod signature_tests {
    use gossip_core::{MemberMeta, MemberStatus, Refusal};

    use super::*;

    const CLUSTER: ClusterId = ClusterId::from_bytes([5; 8]);

    fn key(n: u8) -> NodeKey {
        NodeKey::from_secret_bytes(&[n; 32])
    }

    #[test]
    fn a_record_from_a_peer_is_held_only_as_its_makers_signed_it() {
        let mut state = SyncState::new(key(0), CLUSTER, MemberMeta::default(), Limits::default());
        let mut own = Member::new(key(1).id(), MemberMeta::new("one", []));
        own.sign(&key(1), CLUSTER);
        assert!(state.merge_member(own.clone()).unwrap());
        let root = state.root();
        // Left, with node 2's signature in place of node 1's.
        let mut forged = Member {
            status: MemberStatus::Left,
            ..own.clone()
        };
        forged.proof.owner = {
            let mut by_two = Member {
                id: key(2).id(),
                ..forged.clone()
            };
            by_two.sign(&key(2), CLUSTER);
            by_two.proof.owner
        };
        let err = state.merge_member(forged).unwrap_err();
        assert_eq!(err.refusal(), Some(Refusal::BadSignature));
        assert_eq!(state.root(), root, "nothing changed");
        // An older record changes nothing and is no error: a sync sends both
        // sides' records when they differ.
        let mut newer = own.clone();
        newer.incarnation = gossip_core::Incarnation::new(2);
        newer.sign(&key(1), CLUSTER);
        assert!(state.merge_member(newer).unwrap());
        assert!(!state.merge_member(own).unwrap());
        // A revoked member's records and writes are forgotten and refused.
        state.revoke(key(1).id());
        assert!(state.member(&key(1).id()).is_none());
        let mut again = Member::new(key(1).id(), MemberMeta::new("one", []));
        again.incarnation = gossip_core::Incarnation::new(3);
        again.sign(&key(1), CLUSTER);
        let err = state.merge_member(again).unwrap_err();
        assert_eq!(err.refusal(), Some(Refusal::Revoked));
    }
}
