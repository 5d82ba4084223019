//! The replicated state a sync reconciles, with its Merkle tree kept current.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossip_core::{
    ById, Delta, Digest, Error as CoreError, HasId, Key, KvChange, KvStore, Limits, Member, NodeId,
    Timestamp,
};

use crate::message::{LeafSummary, RootDigest, ShortDigest};
use crate::tree::LeafTree;

/// A replica's view of the cluster state: member records and every node's
/// key/value writes, with the [`LeafTree`] over them kept current on every
/// change (one leaf per owner, O(log16 n) per update).
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
    /// Member records with their hashes, computed once per change.
    members: BTreeSet<ById<HashedMember>>,
    tree: LeafTree,
    limits: Limits,
}

/// A member record and its hash.
#[derive(Debug, Clone)]
struct HashedMember {
    /// Shared with SWIM's table where the replica can (see
    /// [`SyncState::merge_shared_member`]).
    member: Arc<Member>,
    hash: u64,
}

impl HashedMember {
    fn new(member: Arc<Member>) -> Self {
        let hash = member_hash(&member);
        HashedMember { member, hash }
    }
}

impl HasId for HashedMember {
    fn id(&self) -> &NodeId {
        &self.member.id
    }
}

/// The first 8 bytes of a hash, as a number.
fn short_hash(bytes: &[u8]) -> u64 {
    let hash = blake3::hash(bytes);
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(word)
}

fn member_hash(member: &Member) -> u64 {
    short_hash(&postcard::to_allocvec(member).unwrap_or_default())
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
            tree: LeafTree::default(),
            limits,
        };
        for member in members {
            // The last record of an id wins, as in a map.
            state
                .members
                .replace(ById(HashedMember::new(Arc::new(member))));
        }
        let owners: Vec<NodeId> = state
            .members
            .iter()
            .map(|record| record.0.member.id)
            .chain(state.kv.owners().map(|(id, _)| *id))
            .collect();
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

    /// The Merkle tree.
    pub fn tree(&self) -> &LeafTree {
        &self.tree
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
        let member = self.members.get(owner).map_or(0, |record| record.0.hash);
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

    /// Recomputes `owner`'s leaf after a change.
    fn refresh(&mut self, owner: NodeId) {
        let member = self.members.get(&owner);
        let node = self.kv.node(&owner);
        if member.is_none()
            && node.is_none_or(|n| n.max_version() == 0 && n.is_empty())
            && owner != self.local_id()
        {
            self.tree.remove(&owner);
            return;
        }
        let summary = self.summary(&owner);
        let content = node.map_or(Digest::ZERO, |n| n.content_digest());
        let mut hasher = blake3::Hasher::new();
        hasher.update(owner.as_bytes());
        hasher.update(&summary.member.to_le_bytes());
        hasher.update(&summary.max_version.to_le_bytes());
        hasher.update(&summary.floor.to_le_bytes());
        hasher.update(&content.to_bytes());
        self.tree.set(owner, Digest::from_hash(hasher.finalize()));
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
            .map(|held| (Arc::clone(&held.0.member), held.0.hash));
        let merged = match current {
            Some((current, hash)) => {
                let merged = current.join(&record);
                if merged == *current {
                    if share && *record == *current && !Arc::ptr_eq(&record, &current) {
                        // The same record, come by another way (a sync)
                        // before SWIM's table had it: hold SWIM's copy.
                        self.members.replace(ById(HashedMember {
                            member: record,
                            hash,
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
        self.members.replace(ById(HashedMember::new(merged)));
        self.refresh(id);
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
        self.members.take(owner);
        self.kv.forget(owner);
        self.refresh(*owner);
    }
}
