//! Per-node versioned key/value state, in the Scuttlebutt manner.
//!
//! Every node owns a small map of keys. Only the owner writes its keys; each
//! write (a set or a delete) takes the owner's next version number, so the
//! versions of one owner order all its writes. Replicas exchange, per owner,
//! everything newer than the version the other side has reached.
//!
//! # Deletes and garbage collection
//!
//! A delete leaves a tombstone that travels like a value. The owner collects
//! its tombstones after a grace period and remembers the highest version it
//! collected: its *floor*, which travels with its deltas; replicas drop the
//! owner's tombstones up to the floor when they learn it. A replica whose known
//! version of an owner is below the sender's floor may hold keys whose
//! tombstones are gone, so it is sent a *reset*: the sender's complete set of
//! that owner's writes, which replaces the receiver's. A plain delta could
//! never delete those keys, which is how deleted keys came back in other
//! systems (chitchat issues #110 and #121). The grace period only saves
//! bandwidth; no timing can resurrect a key.
//!
//! # Signed state
//!
//! The owner signs its whole state at every version it reaches: the
//! version, the floor and a blake3 commitment to every write it holds (one
//! signature covers everything, see [`NodeState::signature`]). Every delta
//! carries the signature of the state it brings its receiver to, and the
//! receiver applies it only if the state it would reach is exactly the one
//! the owner signed: a relay can pass an owner's writes on, but cannot add,
//! alter or leave out any.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Limited};
use crate::id::{ClusterId, NodeId};
use crate::limits::Limits;
use crate::proof::{ClaimDigest, ClaimKind, NodeKey, Signature, claim_digest, verify};
use crate::time::Timestamp;
use crate::wire::encoded_len;

/// A key of a node's state. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Keys order, compare and hash exactly as their strings do, so maps keyed by
// `Key` can be searched with a `&str`.
impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Arc::from(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Arc::from(s))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// One write of one key, as it travels: a value, or `None` for a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// The value, or `None` for a tombstone.
    pub value: Option<Bytes>,
    /// The owner's version at this write.
    pub version: u64,
}

/// How far a replica has got with one owner's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerDigest {
    /// The owner.
    pub owner: NodeId,
    /// Every write of the owner up to this version is reflected.
    pub max_version: u64,
    /// Tombstones up to this version have been collected (or reset past).
    pub floor: u64,
}

/// The writes of one owner that a peer lacks.
///
/// Apply only complete deltas: parts of a split one are joined with
/// [`append`](OwnerDelta::append) first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerDelta {
    /// The owner.
    pub owner: NodeId,
    /// `true` if `entries` replace the receiver's whole view of the owner
    /// (because the receiver is below the sender's floor).
    pub reset: bool,
    /// The sender's floor for this owner.
    pub floor: u64,
    /// After applying, the receiver reflects every write up to this version.
    pub up_to: u64,
    /// `false` if the sender had writes past `up_to` that did not fit. A
    /// receiver of an incomplete delta lacks, until it gets the rest, the keys
    /// whose latest write is past `up_to`, so two replicas at the same version
    /// can differ while a transfer is under way; anti-entropy sessions
    /// therefore apply an owner's delta only once it is complete.
    pub complete: bool,
    /// The writes, in increasing version order.
    pub entries: Vec<Entry>,
    /// The commitment to the owner's whole state at `up_to` (of the last
    /// part, for a split delta) that the owner signed.
    pub commitment: Commitment,
    /// The owner's signature over its state at `up_to`: version, floor and
    /// commitment.
    pub signature: Signature,
}

impl OwnerDelta {
    /// Appends the next part of a split delta.
    ///
    /// # Errors
    ///
    /// [`Error::InconsistentDelta`] if `next` is of another owner, is a
    /// reset, or does not start past this part's last version; nothing is
    /// appended then.
    pub fn append(&mut self, next: OwnerDelta) -> Result<(), Error> {
        let follows = next.owner == self.owner
            && !next.reset
            && next.entries.first().is_none_or(|e| e.version > self.up_to);
        if !follows {
            return Err(Error::InconsistentDelta {
                owner: next.owner,
                reason: "split delta out of order",
            });
        }
        self.entries.extend(next.entries);
        self.up_to = next.up_to;
        self.floor = next.floor;
        self.complete = next.complete;
        self.commitment = next.commitment;
        self.signature = next.signature;
        Ok(())
    }
}

/// A blake3 commitment to every write of one owner held at a version: what
/// the owner's signature covers, so that no relay can alter, add or leave
/// out a write unseen. (The [`Digest`] set hash, made to be summed in a
/// tree, could be matched on purpose by a chosen set of writes; this cannot.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Commitment(pub [u8; 32]);

/// A set of owner deltas, as sent from one replica to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// One delta per owner, at most once each.
    pub owners: Vec<OwnerDelta>,
}

impl Delta {
    /// `true` if the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// A change to the store caused by [`KvStore::apply_delta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// Whose key.
    pub owner: NodeId,
    /// Which key.
    pub key: Key,
    /// The new value, or `None` if the key was deleted.
    pub value: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    value: Option<Bytes>,
    version: u64,
    /// When the owner wrote the tombstone; `None` for live values and for
    /// other owners' tombstones (which are collected when the owner's floor
    /// passes them, not by local time).
    deleted_at: Option<Timestamp>,
}

/// What an owner signs of its state.
fn leaf_digest(
    cluster: ClusterId,
    owner: &NodeId,
    version: u64,
    floor: u64,
    commitment: &Commitment,
) -> ClaimDigest {
    claim_digest(
        ClaimKind::Leaf,
        cluster,
        &(owner, version, floor, commitment),
    )
}

/// An owner's signed statement of its state, as a delta carries it.
struct SignedState {
    owner: NodeId,
    version: u64,
    floor: u64,
    commitment: Commitment,
    signature: Signature,
}

impl SignedState {
    fn of(delta: &OwnerDelta) -> Self {
        SignedState {
            owner: delta.owner,
            version: delta.up_to,
            floor: delta.floor,
            commitment: delta.commitment,
            signature: delta.signature,
        }
    }

    /// Checks that the owner signed it.
    fn check(&self, cluster: ClusterId) -> Result<(), Error> {
        let digest = leaf_digest(
            cluster,
            &self.owner,
            self.version,
            self.floor,
            &self.commitment,
        );
        if verify(&self.owner, &digest, &self.signature) {
            Ok(())
        } else {
            Err(Error::BadSignature {
                subject: self.owner,
                signer: self.owner,
                claim: "a key/value state",
            })
        }
    }

    /// Checks that `state` is exactly the signed one.
    fn check_reached(&self, state: &NodeState) -> Result<(), Error> {
        let reached = state.max_version == self.version
            && state.floor == self.floor
            && state.commitment() == self.commitment;
        if reached {
            Ok(())
        } else {
            Err(Error::StateMismatch {
                owner: self.owner,
                version: self.version,
            })
        }
    }
}

/// The set-hash item of one stored write.
fn entry_digest(key: &Key, value: Option<&Bytes>, version: u64) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&version.to_le_bytes());
    hasher.update(&(key.as_str().len() as u64).to_le_bytes());
    hasher.update(key.as_str().as_bytes());
    match value {
        Some(value) => {
            hasher.update(&[1]);
            hasher.update(value);
        }
        None => {
            hasher.update(&[0]);
        }
    }
    Digest::from_hash(hasher.finalize())
}

/// One owner's state as held by one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    entries: BTreeMap<Key, Stored>,
    by_version: BTreeMap<u64, Key>,
    max_version: u64,
    floor: u64,
    /// The set hash of every stored write, tombstones included.
    content: Digest,
    /// The owner's signature over this state (version, floor, commitment),
    /// with the commitment it signed.
    signed: Option<(Commitment, Signature)>,
}

impl NodeState {
    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries
            .get(key)
            .and_then(|stored| stored.value.as_ref())
    }

    /// The live keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Bytes)> {
        self.entries
            .iter()
            .filter_map(|(key, stored)| stored.value.as_ref().map(|v| (key, v)))
    }

    /// Every stored write (live values and tombstones), in version order.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.by_version.iter().filter_map(|(version, key)| {
            let stored = self.entries.get(key)?;
            Some(Entry {
                key: key.clone(),
                value: stored.value.clone(),
                version: *version,
            })
        })
    }

    /// Number of keys held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` if no key is held, tombstones included.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.entries.values().filter(|s| s.value.is_none()).count()
    }

    /// Every write of the owner up to this version is reflected here.
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    /// Tombstones up to this version have been collected.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The owner's signature over this state, and the commitment it covers;
    /// `None` for a state not yet signed.
    pub fn signature(&self) -> Option<(Commitment, Signature)> {
        self.signed
    }

    /// The blake3 commitment to every stored write, in version order: what
    /// the owner signs with its version and floor.
    pub fn commitment(&self) -> Commitment {
        let mut hasher = blake3::Hasher::new();
        for (version, key) in &self.by_version {
            let Some(stored) = self.entries.get(key) else {
                continue;
            };
            hasher.update(&version.to_le_bytes());
            hasher.update(&(key.as_str().len() as u64).to_le_bytes());
            hasher.update(key.as_str().as_bytes());
            match &stored.value {
                Some(value) => {
                    hasher.update(&[1]);
                    hasher.update(&(value.len() as u64).to_le_bytes());
                    hasher.update(value);
                }
                None => {
                    hasher.update(&[0]);
                }
            }
        }
        Commitment(*hasher.finalize().as_bytes())
    }

    /// Signs this state as its owner, the holder of `key`.
    fn sign(&mut self, key: &NodeKey, cluster: ClusterId) {
        let commitment = self.commitment();
        let digest = leaf_digest(
            cluster,
            &key.id(),
            self.max_version,
            self.floor,
            &commitment,
        );
        self.signed = Some((commitment, key.sign(&digest)));
    }

    /// Whether `self` and `other` hold the same writes at the same version
    /// and floor (signatures aside).
    fn same_state(&self, other: &NodeState) -> bool {
        self.max_version == other.max_version
            && self.floor == other.floor
            && self.content == other.content
            && self.entries == other.entries
    }

    /// The set hash ([`Digest`]) of every stored write, tombstones included:
    /// two replicas hold the same writes of this owner exactly when their
    /// content digests are equal. Kept current on every change, O(1) each.
    pub fn content_digest(&self) -> Digest {
        self.content
    }

    fn store(&mut self, deleted_at: Option<Timestamp>, entry: Entry) {
        self.content += entry_digest(&entry.key, entry.value.as_ref(), entry.version);
        let stored = Stored {
            deleted_at: deleted_at.filter(|_| entry.value.is_none()),
            value: entry.value,
            version: entry.version,
        };
        if let Some(old) = self.entries.insert(entry.key.clone(), stored) {
            self.content -= entry_digest(&entry.key, old.value.as_ref(), old.version);
            self.by_version.remove(&old.version);
        }
        self.by_version.insert(entry.version, entry.key);
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.content -= entry_digest(key, old.value.as_ref(), old.version);
            self.by_version.remove(&old.version);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.by_version.clear();
        self.content = Digest::ZERO;
    }

    /// Drops tombstones at or below `floor` and adopts it.
    fn raise_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        let collected: Vec<Key> = self
            .by_version
            .range(..=floor)
            .filter(|(_, key)| self.entries.get(*key).is_some_and(|s| s.value.is_none()))
            .map(|(_, key)| key.clone())
            .collect();
        for key in &collected {
            self.remove(key);
        }
        self.floor = floor;
    }

    /// The writes a replica at `(peer_max, peer_floor)` lacks, packed into
    /// about `budget` bytes, or `None` if it lacks nothing or the first entry
    /// it needs does not fit.
    fn delta_for(
        &self,
        owner: NodeId,
        peer_max: u64,
        peer_floor: u64,
        budget: usize,
    ) -> Option<OwnerDelta> {
        let behind = peer_max < self.max_version;
        let floor_behind = peer_max == self.max_version && peer_floor < self.floor;
        if !behind && !floor_behind {
            return None;
        }
        // Below our floor the peer may hold keys whose tombstones we no longer
        // have: only a full replacement can delete them.
        let reset = self.floor > peer_max.max(peer_floor);
        let from = if reset { 0 } else { peer_max.saturating_add(1) };
        let (commitment, signature) = self.signed.unwrap_or_default();
        let mut delta = OwnerDelta {
            owner,
            reset,
            floor: self.floor,
            up_to: self.max_version,
            complete: true,
            entries: Vec::new(),
            commitment,
            signature,
        };
        // Two bytes of slack for the entry count's varint growing.
        let mut used = encoded_len(&delta) + 2;
        if used > budget {
            return None;
        }
        for (version, key) in self.by_version.range(from..) {
            let Some(stored) = self.entries.get(key) else {
                continue;
            };
            let entry = Entry {
                key: key.clone(),
                value: stored.value.clone(),
                version: *version,
            };
            let len = encoded_len(&entry);
            if used + len > budget {
                match delta.entries.last() {
                    Some(last) => {
                        delta.up_to = last.version;
                        delta.complete = false;
                    }
                    None => return None,
                }
                break;
            }
            used += len;
            delta.entries.push(entry);
        }
        Some(delta)
    }

    /// Checks an incoming delta against this state and `limits`, changing nothing.
    fn validate(&self, delta: &OwnerDelta, limits: &Limits) -> Result<(), Error> {
        let inconsistent = |reason| Error::InconsistentDelta {
            owner: delta.owner,
            reason,
        };
        let mut previous = None;
        let mut new_keys = 0usize;
        for entry in &delta.entries {
            if previous.is_some_and(|p| entry.version <= p) {
                return Err(inconsistent("versions not strictly increasing"));
            }
            previous = Some(entry.version);
            Error::check(
                Limited::KeyBytes,
                entry.key.as_str().len(),
                limits.max_key_bytes,
            )?;
            let value_len = entry.value.as_ref().map_or(0, Bytes::len);
            Error::check(Limited::ValueBytes, value_len, limits.max_value_bytes)?;
            if delta.reset || !self.entries.contains_key(&entry.key) {
                new_keys += 1;
            }
        }
        if previous.is_some_and(|p| p > delta.up_to) {
            return Err(inconsistent("entry past the version the delta covers"));
        }
        if delta.floor > delta.up_to.saturating_add(1) {
            return Err(inconsistent("floor past the version the delta covers"));
        }
        let known = self.max_version();
        if delta.up_to.saturating_sub(known) > limits.max_version_jump {
            return Err(Error::VersionJump {
                owner: delta.owner,
                known,
                got: delta.up_to,
                max_jump: limits.max_version_jump,
            });
        }
        let total = if delta.reset {
            new_keys
        } else {
            self.len() + new_keys
        };
        // Duplicate keys in one delta only make this estimate larger; the
        // strictly increasing versions already reject a key listed twice at one
        // version.
        Error::check(Limited::KeysPerNode, total, limits.max_keys_per_node)
    }

    /// Applies a validated delta.
    fn apply(&mut self, delta: OwnerDelta, changes: &mut Vec<KvChange>) {
        let owner = delta.owner;
        if delta.reset {
            // A reset comes from a replica past a floor we have not reached:
            // its writes replace ours whole, even if we had reached a higher
            // version by another path (that knowledge may hide stale keys).
            if delta.floor <= self.floor {
                return;
            }
            let before = std::mem::take(&mut self.entries);
            self.clear();
            for entry in delta.entries {
                let old = before.get(&entry.key).and_then(|s| s.value.as_ref());
                if old != entry.value.as_ref() {
                    changes.push(KvChange {
                        owner,
                        key: entry.key.clone(),
                        value: entry.value.clone(),
                    });
                }
                self.store(None, entry);
            }
            for (key, stored) in before {
                if stored.value.is_some() && self.get(key.as_str()).is_none() {
                    changes.push(KvChange {
                        owner,
                        key,
                        value: None,
                    });
                }
            }
            self.floor = delta.floor;
            self.max_version = delta.up_to;
            return;
        }
        // We already stand past a floor this sender has not reached, and its
        // writes stop short of it: they may include keys whose tombstones the
        // owner has collected since. Taking them could resurrect those keys.
        if delta.floor < self.floor && delta.up_to < self.floor {
            return;
        }
        if delta.up_to > self.max_version {
            let collected_through = self.floor.max(delta.floor);
            for entry in delta.entries {
                let current = self.entries.get(&entry.key);
                if current.is_some_and(|c| c.version >= entry.version) {
                    continue;
                }
                let old_value = current.and_then(|c| c.value.as_ref());
                if old_value != entry.value.as_ref() {
                    changes.push(KvChange {
                        owner,
                        key: entry.key.clone(),
                        value: entry.value.clone(),
                    });
                }
                if entry.value.is_none() && entry.version <= collected_through {
                    // A tombstone the owner has already collected: it still
                    // deletes what we hold, but is not kept.
                    self.remove(&entry.key);
                } else {
                    self.store(None, entry);
                }
            }
            self.max_version = delta.up_to;
        }
        // The owner collected its tombstones up to `floor`; so do we. We have
        // seen every write up to it (the sender would have reset us otherwise).
        if delta.floor <= self.max_version {
            self.raise_floor(delta.floor);
        }
    }

    /// Collects the owner's own tombstones written at least `grace` ago,
    /// raising the floor. Tombstones age in version order, so everything up to
    /// the new floor is gone.
    fn collect(&mut self, now: Timestamp, grace: Duration) -> usize {
        let expired = self
            .by_version
            .iter()
            .map_while(|(version, key)| {
                let stored = self.entries.get(key)?;
                match stored.deleted_at {
                    Some(at) if now.saturating_duration_since(at) < grace => None,
                    _ => Some((*version, stored.value.is_none())),
                }
            })
            .filter(|(_, tombstone)| *tombstone)
            .map(|(version, _)| version)
            .last();
        let Some(floor) = expired else { return 0 };
        let before = self.len();
        self.raise_floor(floor);
        before - self.len()
    }
}

/// The key/value state of the whole cluster as one replica holds it: the local
/// node's own keys, which only it writes, and a copy of every other node's.
///
/// ```
/// use gossip_core::{ClusterId, KvStore, Limits, NodeKey};
/// let cluster = ClusterId::from_name("doc");
/// let (a, b) = (NodeKey::from_secret_bytes(&[1; 32]), NodeKey::from_secret_bytes(&[2; 32]));
/// let a_id = a.id();
/// let mut store_a = KvStore::new(a, cluster, Limits::default());
/// let mut store_b = KvStore::new(b, cluster, Limits::default());
///
/// store_a.set("tokens", &b"0,42,97"[..]).unwrap();
/// // b tells a how far it has got; a answers with what b lacks, signed by a.
/// let delta = store_a.delta_for(&store_b.digest(), 1200);
/// store_b.apply_delta(delta).unwrap();
/// assert_eq!(store_b.get(&a_id, "tokens").unwrap().as_ref(), b"0,42,97");
/// ```
#[derive(Debug, Clone)]
pub struct KvStore {
    /// Signs the local node's state at every change.
    key: NodeKey,
    cluster: ClusterId,
    local: NodeId,
    nodes: BTreeMap<NodeId, NodeState>,
    limits: Limits,
}

impl KvStore {
    /// An empty store for the holder of `key`, in `cluster`.
    pub fn new(key: NodeKey, cluster: ClusterId, limits: Limits) -> Self {
        Self::starting_at(key, cluster, limits, 0)
    }

    /// An empty store whose first local write takes version `version + 1`,
    /// for a node that restarts: pass the last version it persisted (or any
    /// value above every version an earlier life could have used). Peers that
    /// hold the earlier life's keys are below the new floor, so they are reset
    /// to the new life's state instead of keeping stale keys.
    pub fn starting_at(key: NodeKey, cluster: ClusterId, limits: Limits, version: u64) -> Self {
        let local = key.id();
        let mut state = NodeState {
            max_version: version,
            floor: version,
            ..NodeState::default()
        };
        state.sign(&key, cluster);
        let mut nodes = BTreeMap::new();
        nodes.insert(local, state);
        KvStore {
            key,
            cluster,
            local,
            nodes,
            limits,
        }
    }

    /// The cluster whose signatures this store checks.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The local node's id.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// The local node's state.
    pub fn local(&self) -> &NodeState {
        self.nodes
            .get(&self.local)
            .expect("the local node's state is created in new() and never removed")
    }

    fn local_mut(&mut self) -> &mut NodeState {
        self.nodes
            .get_mut(&self.local)
            .expect("the local node's state is created in new() and never removed")
    }

    fn sign_local(&mut self) {
        // Field by field, so the key is borrowed beside the state, not cloned.
        let local = self
            .nodes
            .get_mut(&self.local)
            .expect("the local node's state is created in new() and never removed");
        local.sign(&self.key, self.cluster);
    }

    /// The state of `owner`, if any of it is known.
    pub fn node(&self, owner: &NodeId) -> Option<&NodeState> {
        self.nodes.get(owner)
    }

    /// Every owner with known state, in id order.
    pub fn owners(&self) -> impl Iterator<Item = (&NodeId, &NodeState)> {
        self.nodes.iter()
    }

    /// The live value of `owner`'s `key`.
    pub fn get(&self, owner: &NodeId, key: &str) -> Option<&Bytes> {
        self.nodes.get(owner)?.get(key)
    }

    fn write(&mut self, now: Timestamp, key: Key, value: Option<Bytes>) -> Result<u64, Error> {
        let limits = &self.limits;
        Error::check(Limited::KeyBytes, key.as_str().len(), limits.max_key_bytes)?;
        Error::check(
            Limited::ValueBytes,
            value.as_ref().map_or(0, Bytes::len),
            limits.max_value_bytes,
        )?;
        let max_keys = limits.max_keys_per_node;
        let local = self.local_mut();
        if !local.entries.contains_key(&key) {
            Error::check(Limited::KeysPerNode, local.len() + 1, max_keys)?;
        }
        let version = local
            .max_version
            .checked_add(1)
            .ok_or(Error::VersionExhausted)?;
        local.store(
            Some(now),
            Entry {
                key,
                value,
                version,
            },
        );
        local.max_version = version;
        self.sign_local();
        Ok(version)
    }

    /// Sets one of the local node's keys, returning the write's version.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] for an oversized key or value or one key too
    /// many; [`Error::VersionExhausted`]. Nothing is written on error.
    pub fn set(&mut self, key: impl Into<Key>, value: impl Into<Bytes>) -> Result<u64, Error> {
        self.write(Timestamp::ZERO, key.into(), Some(value.into()))
    }

    /// Deletes one of the local node's keys, leaving a tombstone stamped `now`.
    /// Returns the write's version, or `None` if the key held no value.
    ///
    /// # Errors
    ///
    /// As [`set`](KvStore::set).
    pub fn delete(&mut self, now: Timestamp, key: &str) -> Result<Option<u64>, Error> {
        if self.local().get(key).is_none() {
            return Ok(None);
        }
        self.write(now, Key::from(key), None).map(Some)
    }

    /// How far this replica has got with each owner.
    pub fn digest(&self) -> Vec<OwnerDigest> {
        self.nodes
            .iter()
            .map(|(owner, state)| OwnerDigest {
                owner: *owner,
                max_version: state.max_version,
                floor: state.floor,
            })
            .collect()
    }

    /// What a replica with `peer` digest lacks, in at most about `budget` bytes
    /// of encoding. Owners the peer is furthest behind on go first; owners
    /// missing from the digest count as known up to version 0.
    pub fn delta_for(&self, peer: &[OwnerDigest], budget: usize) -> Delta {
        let known: BTreeMap<NodeId, (u64, u64)> = peer
            .iter()
            .map(|d| (d.owner, (d.max_version, d.floor)))
            .collect();
        let mut behind: Vec<(u64, NodeId, u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(owner, state)| {
                let (max, floor) = known.get(owner).copied().unwrap_or((0, 0));
                let lag = state.max_version.checked_sub(max)?;
                // Behind in versions, or only in the floor (the owner has
                // collected tombstones since).
                (lag > 0 || state.floor > floor).then_some((lag, *owner, max, floor))
            })
            .collect();
        behind.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut delta = Delta::default();
        // Two bytes of slack for the owner count's varint growing.
        let mut used = encoded_len(&delta) + 2;
        for (_, owner, max, floor) in behind {
            let Some(state) = self.nodes.get(&owner) else {
                continue;
            };
            let Some(owner_delta) = state.delta_for(owner, max, floor, budget.saturating_sub(used))
            else {
                continue;
            };
            used += encoded_len(&owner_delta);
            delta.owners.push(owner_delta);
        }
        delta
    }

    /// What a replica at `(peer_max, peer_floor)` lacks of `owner`'s writes,
    /// in at most about `budget` bytes: a plain delta, or a reset if the peer
    /// is below this replica's floor. `None` if it lacks nothing, or if not
    /// even the first write it needs fits the budget.
    pub fn owner_delta(
        &self,
        owner: &NodeId,
        peer_max: u64,
        peer_floor: u64,
        budget: usize,
    ) -> Option<OwnerDelta> {
        self.nodes
            .get(owner)?
            .delta_for(*owner, peer_max, peer_floor, budget)
    }

    /// Applies what a peer sent, returning the changes to live values.
    ///
    /// Writes newer than what is held win; a reset replaces the owner's state
    /// whole. An owner's delta is taken only if the state it brings is exactly
    /// the one its owner signed. Claims about the local node's own state are
    /// never applied, but a signed version of it higher than the local one
    /// (left by an earlier life of this node) raises the local version and
    /// floor past it, so the next write wins and peers drop the stale keys.
    ///
    /// # Errors
    ///
    /// [`Error::InconsistentDelta`] (also for a part of a split delta),
    /// [`Error::BadSignature`], [`Error::StateMismatch`],
    /// [`Error::VersionJump`] and [`Error::LimitExceeded`]. The whole delta is
    /// checked before any of it is applied, so on error nothing changes.
    pub fn apply_delta(&mut self, delta: Delta) -> Result<Vec<KvChange>, Error> {
        Error::check(
            Limited::DeltaOwners,
            delta.owners.len(),
            self.limits.max_members,
        )?;
        let empty = NodeState::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut changes = Vec::new();
        // Each owner's state as the delta would leave it, checked before any
        // is kept.
        let mut updated: Vec<(NodeId, NodeState)> = Vec::new();
        let mut local_past = None;
        for owner_delta in delta.owners {
            let owner = owner_delta.owner;
            if !seen.insert(owner) {
                return Err(Error::InconsistentDelta {
                    owner,
                    reason: "owner listed twice",
                });
            }
            let state = self.nodes.get(&owner).unwrap_or(&empty);
            state.validate(&owner_delta, &self.limits)?;
            if !owner_delta.complete {
                return Err(Error::InconsistentDelta {
                    owner,
                    reason: "a part of a split delta, applied before the rest",
                });
            }
            if owner == self.local {
                let ahead = owner_delta.up_to > state.max_version
                    || (owner_delta.up_to == state.max_version && owner_delta.floor > state.floor);
                if ahead {
                    SignedState::of(&owner_delta).check(self.cluster)?;
                    local_past = Some(owner_delta.up_to.saturating_add(1));
                }
                continue;
            }
            let mut next = state.clone();
            let mut owner_changes = Vec::new();
            let signed = SignedState::of(&owner_delta);
            next.apply(owner_delta, &mut owner_changes);
            if next.same_state(state) {
                continue;
            }
            signed.check(self.cluster)?;
            signed.check_reached(&next)?;
            next.signed = Some((signed.commitment, signed.signature));
            changes.extend(owner_changes);
            updated.push((owner, next));
        }
        let new_owners = updated
            .iter()
            .filter(|(owner, _)| !self.nodes.contains_key(owner))
            .count();
        Error::check(
            Limited::Members,
            self.nodes.len() + new_owners,
            self.limits.max_members,
        )?;

        for (owner, state) in updated {
            self.nodes.insert(owner, state);
        }
        if let Some(past) = local_past {
            let local = self.local_mut();
            local.max_version = local.max_version.max(past);
            local.floor = local.floor.max(past);
            self.sign_local();
        }
        Ok(changes)
    }

    /// Collects the local node's tombstones written at least `grace` before
    /// `now`, raising its floor. Returns how many were removed.
    ///
    /// Only the owner collects: replicas drop an owner's tombstones when the
    /// owner's floor reaches them through a delta, so replicas that agree on
    /// an owner's version and floor hold exactly the same writes (and the same
    /// [`content_digest`](NodeState::content_digest)).
    pub fn collect_tombstones(&mut self, now: Timestamp, grace: Duration) -> usize {
        let collected = self.local_mut().collect(now, grace);
        if collected > 0 {
            self.sign_local();
        }
        collected
    }

    /// Drops everything known of `owner` (for a member removed from the
    /// cluster). The local node's state cannot be dropped.
    pub fn forget(&mut self, owner: &NodeId) -> bool {
        *owner != self.local && self.nodes.remove(owner).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: ClusterId = ClusterId::from_bytes([1; 8]);

    fn key(n: u8) -> NodeKey {
        NodeKey::from_secret_bytes(&[n; 32])
    }

    fn id(n: u8) -> NodeId {
        key(n).id()
    }

    fn store(n: u8) -> KvStore {
        KvStore::new(key(n), CLUSTER, Limits::default())
    }

    /// Every part `from` has for `to`, joined, as the anti-entropy session
    /// joins them.
    fn joined_delta(from: &KvStore, to: &KvStore, budget: usize) -> Delta {
        let mut joined: BTreeMap<NodeId, OwnerDelta> = BTreeMap::new();
        let mut digest = to.digest();
        loop {
            let delta = from.delta_for(&digest, budget);
            if delta.is_empty() {
                break;
            }
            for part in delta.owners {
                let known = digest.iter_mut().find(|d| d.owner == part.owner);
                match known {
                    Some(d) => {
                        d.max_version = part.up_to;
                        if part.reset {
                            d.floor = part.floor;
                        }
                    }
                    None => digest.push(OwnerDigest {
                        owner: part.owner,
                        max_version: part.up_to,
                        floor: if part.reset { part.floor } else { 0 },
                    }),
                }
                match joined.get_mut(&part.owner) {
                    Some(held) => held.append(part).unwrap(),
                    None => {
                        joined.insert(part.owner, part);
                    }
                }
            }
        }
        Delta {
            owners: joined.into_values().collect(),
        }
    }

    fn sync(from: &KvStore, to: &mut KvStore, budget: usize) -> Vec<KvChange> {
        to.apply_delta(joined_delta(from, to, budget)).unwrap()
    }

    #[test]
    fn set_bumps_the_version_and_delta_carries_only_news() {
        let mut a = store(1);
        let mut b = store(2);
        assert_eq!(a.set("x", &b"1"[..]).unwrap(), 1);
        assert_eq!(a.set("y", &b"2"[..]).unwrap(), 2);
        sync(&a, &mut b, 10_000);
        assert_eq!(b.node(&id(1)).unwrap().max_version(), 2);
        a.set("x", &b"3"[..]).unwrap();
        let delta = a.delta_for(&b.digest(), 10_000);
        assert_eq!(delta.owners.len(), 1);
        assert_eq!(
            delta.owners[0].entries.len(),
            1,
            "only the new write travels"
        );
        b.apply_delta(delta).unwrap();
        assert_eq!(b.get(&id(1), "x").unwrap().as_ref(), b"3");
        assert!(a.delta_for(&b.digest(), 10_000).is_empty());
    }

    #[test]
    fn small_budgets_split_a_delta_in_version_order_and_only_the_whole_applies() {
        let mut a = store(1);
        let mut b = store(2);
        for i in 0..20 {
            a.set(format!("key-{i}"), vec![7u8; 20]).unwrap();
        }
        let part = a.delta_for(&b.digest(), 300);
        assert!(encoded_len(&part) <= 300, "{} bytes", encoded_len(&part));
        assert!(!part.owners[0].complete);
        let err = b.apply_delta(part).unwrap_err();
        assert!(matches!(err, Error::InconsistentDelta { .. }), "{err}");
        assert!(b.node(&id(1)).is_none());
        sync(&a, &mut b, 300);
        assert_eq!(b.node(&id(1)).unwrap().iter().count(), 20);
        assert_eq!(b.node(&id(1)).unwrap().signature(), a.local().signature());
    }

    #[test]
    fn a_relay_cannot_add_alter_or_leave_out_an_owners_write() {
        let mut owner = store(1);
        owner.set("a", &b"1"[..]).unwrap();
        owner.set("b", &b"2"[..]).unwrap();
        let receiver = store(2);
        let honest = owner.delta_for(&receiver.digest(), 10_000);
        let tamper = |change: &dyn Fn(&mut OwnerDelta)| {
            let mut delta = honest.clone();
            change(&mut delta.owners[0]);
            let mut receiver = receiver.clone();
            let err = receiver.apply_delta(delta).unwrap_err();
            assert!(receiver.node(&id(1)).is_none(), "changed by {err}");
            err
        };
        let altered = tamper(&|d| d.entries[0].value = Some(Bytes::from_static(b"forged")));
        assert!(matches!(altered, Error::StateMismatch { .. }), "{altered}");
        let left_out = tamper(&|d| {
            d.entries.remove(0);
        });
        assert!(
            matches!(left_out, Error::StateMismatch { .. }),
            "{left_out}"
        );
        let other_version = tamper(&|d| d.up_to = 3);
        assert!(
            matches!(other_version, Error::BadSignature { .. }),
            "{other_version}"
        );
        let unsigned = tamper(&|d| d.signature = Signature::NONE);
        assert!(matches!(unsigned, Error::BadSignature { .. }), "{unsigned}");
        let mut receiver = receiver.clone();
        receiver.apply_delta(honest).unwrap();
        assert_eq!(receiver.get(&id(1), "b").unwrap().as_ref(), b"2");
    }

    #[test]
    fn only_a_signed_state_of_the_local_node_moves_it_past_an_earlier_life() {
        let mut local = store(2);
        local.set("mine", &b"1"[..]).unwrap();
        let mut forged = store(1);
        for i in 0..5 {
            forged.set(format!("k{i}"), &b"x"[..]).unwrap();
        }
        let mut delta = forged.delta_for(&[], 10_000);
        delta.owners[0].owner = id(2);
        let err = local.apply_delta(delta).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
        assert_eq!(local.local().max_version(), 1);
    }

    #[test]
    fn a_replica_below_the_floor_is_reset_and_loses_the_deleted_key() {
        let t0 = Timestamp::ZERO;
        let t1 = Timestamp::from_millis(60_000);
        let mut owner = store(1);
        let mut stale = store(2);
        owner.set("doomed", &b"v"[..]).unwrap();
        sync(&owner, &mut stale, 10_000);
        owner.delete(t0, "doomed").unwrap();
        owner.set("other", &b"w"[..]).unwrap();
        assert_eq!(owner.collect_tombstones(t1, Duration::from_secs(30)), 1);
        assert_eq!(owner.local().floor(), 2);

        let delta = owner.delta_for(&stale.digest(), 10_000);
        assert!(delta.owners[0].reset);
        let changes = stale.apply_delta(delta).unwrap();
        assert!(
            changes
                .iter()
                .any(|c| c.key.as_str() == "doomed" && c.value.is_none())
        );
        assert_eq!(stale.get(&id(1), "doomed"), None);
        assert_eq!(stale.get(&id(1), "other").unwrap().as_ref(), b"w");
    }

    #[test]
    fn a_restarted_owner_moves_past_its_earlier_life() {
        let mut old_life = store(1);
        old_life.set("a", &b"1"[..]).unwrap();
        old_life.set("b", &b"2"[..]).unwrap();
        let mut peer = store(2);
        sync(&old_life, &mut peer, 10_000);

        let mut new_life = store(1);
        new_life.set("a", &b"fresh"[..]).unwrap();
        // The peer tells the restarted owner what it holds of it.
        sync(&peer, &mut new_life, 10_000);
        assert!(new_life.local().max_version() > 2);
        sync(&new_life, &mut peer, 10_000);
        assert_eq!(peer.get(&id(1), "a").unwrap().as_ref(), b"fresh");
        assert_eq!(
            peer.get(&id(1), "b"),
            None,
            "the earlier life's key is gone"
        );
    }

    #[test]
    fn inconsistent_or_oversized_deltas_change_nothing() {
        let mut b = store(2);
        let entry = |v| Entry {
            key: Key::from("k"),
            value: Some(Bytes::from_static(b"v")),
            version: v,
        };
        let bad = Delta {
            owners: vec![OwnerDelta {
                owner: id(1),
                reset: false,
                floor: 0,
                up_to: 5,
                complete: true,
                entries: vec![entry(3), entry(2)],
                commitment: Commitment::default(),
                signature: Signature::NONE,
            }],
        };
        assert!(matches!(
            b.apply_delta(bad),
            Err(Error::InconsistentDelta { .. })
        ));
        let past = Delta {
            owners: vec![OwnerDelta {
                owner: id(1),
                reset: false,
                floor: 0,
                up_to: 1,
                complete: true,
                entries: vec![entry(3)],
                commitment: Commitment::default(),
                signature: Signature::NONE,
            }],
        };
        assert!(b.apply_delta(past).is_err());
        let mut big = entry(1);
        big.value = Some(Bytes::from(vec![
            0u8;
            Limits::default().max_value_bytes + 1
        ]));
        let oversized = Delta {
            owners: vec![OwnerDelta {
                owner: id(1),
                reset: false,
                floor: 0,
                up_to: 1,
                complete: true,
                entries: vec![big],
                commitment: Commitment::default(),
                signature: Signature::NONE,
            }],
        };
        assert!(matches!(
            b.apply_delta(oversized),
            Err(Error::LimitExceeded {
                what: Limited::ValueBytes,
                ..
            })
        ));
        assert!(b.node(&id(1)).is_none());
    }

    #[test]
    fn a_delta_that_jumps_an_owners_version_is_refused_for_any_owner() {
        let mut b = store(2);
        b.set("mine", &b"1"[..]).unwrap();
        let jump = Limits::default().max_version_jump;
        let delta = |owner, up_to, floor| Delta {
            owners: vec![OwnerDelta {
                owner,
                reset: false,
                floor,
                up_to,
                complete: true,
                entries: vec![Entry {
                    key: Key::from("k"),
                    value: Some(Bytes::from_static(b"v")),
                    version: up_to,
                }],
                commitment: Commitment::default(),
                signature: Signature::NONE,
            }],
        };
        // Another owner's version near the top, and this node's own: both
        // refused, and this node can still write.
        for owner in [id(1), id(2)] {
            let err = b.apply_delta(delta(owner, u64::MAX - 1, 0)).unwrap_err();
            assert!(matches!(err, Error::VersionJump { .. }), "{err}");
        }
        let err = b.apply_delta(delta(id(1), 5, u64::MAX)).unwrap_err();
        assert!(matches!(err, Error::InconsistentDelta { .. }), "{err}");
        assert!(b.node(&id(1)).is_none());
        assert_eq!(b.local().max_version(), 1);
        assert_eq!(b.set("mine", &b"2"[..]).unwrap(), 2);
        // A signed jump up to the cap is taken.
        let mut far = KvStore::starting_at(key(1), CLUSTER, Limits::default(), jump - 1);
        far.set("k", &b"v"[..]).unwrap();
        b.apply_delta(far.delta_for(&b.digest(), 10_000)).unwrap();
        assert_eq!(b.node(&id(1)).unwrap().max_version(), jump);
    }

    #[test]
    fn local_writes_respect_the_caps() {
        let limits = Limits {
            max_keys_per_node: 2,
            max_key_bytes: 3,
            ..Limits::default()
        };
        let mut a = KvStore::new(key(1), CLUSTER, limits);
        assert!(a.set("long", &b""[..]).is_err());
        a.set("a", &b""[..]).unwrap();
        a.set("b", &b""[..]).unwrap();
        assert!(matches!(
            a.set("c", &b""[..]),
            Err(Error::LimitExceeded {
                what: Limited::KeysPerNode,
                ..
            })
        ));
        a.set("a", &b"overwrite is fine"[..]).unwrap();
        assert_eq!(a.local().max_version(), 3);
    }
}
