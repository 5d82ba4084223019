//! The Merkle tree: a 16-ary trie over owner ids whose nodes carry the set
//! hash of the leaves beneath them.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use gossip_core::{Digest, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Children per inner node: one per hex digit of an owner id.
pub const FANOUT: usize = 16;

/// Nibbles in an owner id: the deepest a prefix can go.
pub const MAX_DEPTH: u8 = 64;

/// The first `len` nibbles (hex digits) of an owner id: the address of a node
/// of the tree. The root is the empty prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    len: u8,
    bytes: [u8; 32],
}

impl Prefix {
    /// The root's prefix.
    pub const ROOT: Prefix = Prefix {
        len: 0,
        bytes: [0; 32],
    };

    /// How many nibbles.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// `true` for the root.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The prefix one level down, towards `nibble`.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] below [`MAX_DEPTH`] or for a nibble over 15.
    pub fn child(&self, nibble: u8) -> Result<Prefix, Error> {
        if self.len >= MAX_DEPTH || usize::from(nibble) >= FANOUT {
            return Err(Error::Protocol("prefix out of range"));
        }
        let mut bytes = self.bytes;
        let index = usize::from(self.len / 2);
        let shift = if self.len.is_multiple_of(2) { 4 } else { 0 };
        if let Some(byte) = bytes.get_mut(index) {
            *byte |= nibble << shift;
        }
        Ok(Prefix {
            len: self.len + 1,
            bytes,
        })
    }

    /// `true` if `id` starts with this prefix.
    pub fn covers(&self, id: &NodeId) -> bool {
        (0..self.len).all(|depth| nibble(id, depth) == self.nibble(depth))
    }

    fn nibble(&self, depth: u8) -> u8 {
        nibble_at(&self.bytes, depth)
    }

    /// The ids that start with this prefix: a range in id order.
    pub fn ids(&self) -> RangeInclusive<NodeId> {
        let mut last = self.bytes;
        for depth in self.len..MAX_DEPTH {
            let shift = if depth.is_multiple_of(2) { 4 } else { 0 };
            if let Some(byte) = last.get_mut(usize::from(depth / 2)) {
                *byte |= 0x0f << shift;
            }
        }
        NodeId::from_bytes(self.bytes)..=NodeId::from_bytes(last)
    }
}

/// The `depth`-th nibble of `bytes` (0 is the high nibble of the first byte).
fn nibble_at(bytes: &[u8], depth: u8) -> u8 {
    let byte = bytes.get(usize::from(depth / 2)).copied().unwrap_or(0);
    if depth.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// The `depth`-th nibble of an id.
fn nibble(id: &NodeId, depth: u8) -> u8 {
    nibble_at(id.as_bytes(), depth)
}

// On the wire a prefix is its length and only the bytes it uses.
impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let used = usize::from(self.len.div_ceil(2));
        (self.len, &self.bytes[..used]).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let (len, used): (u8, &[u8]) = Deserialize::deserialize(deserializer)?;
        if len > MAX_DEPTH || used.len() != usize::from(len.div_ceil(2)) {
            return Err(D::Error::custom("bad prefix"));
        }
        let mut bytes = [0u8; 32];
        bytes[..used.len()].copy_from_slice(used);
        // Bits past the prefix must be zero, so equal prefixes compare equal.
        if len % 2 == 1 && used.last().is_some_and(|b| b & 0x0f != 0) {
            return Err(D::Error::custom("bad prefix"));
        }
        Ok(Prefix { len, bytes })
    }
}

/// What a node of the tree holds, as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Digests of the non-empty children, by nibble.
    Children(Vec<(u8, Digest)>),
    /// Every leaf beneath the node, in id order.
    Leaves(Vec<(NodeId, Digest)>),
}

/// Where a [`LeafTree`]'s leaves are kept. The tree keeps only sums, so a
/// store that already holds a record per owner (as [`SyncState`] does) adds
/// a digest to each record instead of keeping every owner's id twice: every
/// node holds a leaf per member.
///
/// [`SyncState`]: crate::SyncState
pub trait Leaves {
    /// Every leaf whose owner's id starts with `prefix`, in id order.
    fn leaves_under(&self, prefix: &Prefix) -> Vec<(NodeId, Digest)>;
}

/// A plain map of leaves, for a tree used on its own.
impl Leaves for BTreeMap<NodeId, Digest> {
    fn leaves_under(&self, prefix: &Prefix) -> Vec<(NodeId, Digest)> {
        self.range(prefix.ids())
            .map(|(id, digest)| (*id, *digest))
            .collect()
    }
}

/// The deepest level whose sums the tree keeps: the root, its 16 children
/// and their 256. Below that, sums come from the leaves themselves: at
/// 10,000 owners a node at this depth covers about 40.
pub const SUMMED_DEPTH: u8 = 2;

/// Nodes in the summed levels: 1 + 16 + 256.
const SUMMED_NODES: usize = 1 + FANOUT + FANOUT * FANOUT;

/// Leaves at most in a view that [`LeafTree::diff`] compares leaf by leaf.
const DIFF_LEAVES: usize = 16;

/// The Merkle tree over owners: one leaf per owner, whose digest summarizes
/// everything known of it (member record, key/value writes, version).
///
/// Every node's digest is the [`Digest`] sum of the leaves beneath it, so a
/// leaf update adjusts the sums on its path with one addition per level and
/// no rehashing. The tree keeps the sums of its nodes down to depth
/// [`SUMMED_DEPTH`] (6.4 KiB whatever the size) and takes the leaves from a
/// [`Leaves`] store for anything deeper; digests do not depend on how a tree
/// is kept, so two replicas can compare any prefix.
///
/// The store and the tree must change together: [`update`](LeafTree::update)
/// is told each leaf's old and new digest.
///
/// ```
/// use std::collections::BTreeMap;
/// use gossip_antientropy::LeafTree;
/// use gossip_core::{Digest, NodeId};
/// let (mut a, mut a_leaves) = (LeafTree::default(), BTreeMap::new());
/// for n in 0..100u8 {
///     let (id, digest) = (NodeId::from_bytes([n; 32]), Digest::of(&[n]));
///     a.update(&id, None, Some(digest));
///     a_leaves.insert(id, digest);
/// }
/// let (mut b, mut b_leaves) = (a.clone(), a_leaves.clone());
/// assert_eq!(a.root(), b.root());
/// let changed = NodeId::from_bytes([7; 32]);
/// let old = b_leaves.insert(changed, Digest::of(b"changed"));
/// b.update(&changed, old, Some(Digest::of(b"changed")));
/// assert_eq!(a.diff(&a_leaves, &b, &b_leaves), vec![changed]);
/// ```
#[derive(Debug, Clone)]
pub struct LeafTree {
    /// Digest and leaf count of each summed node, level by level: the root,
    /// then its children by nibble, then theirs.
    sums: Box<[(Digest, usize)]>,
}

impl Default for LeafTree {
    fn default() -> Self {
        LeafTree {
            sums: vec![(Digest::ZERO, 0); SUMMED_NODES].into_boxed_slice(),
        }
    }
}

/// Where the summed node at `prefix` (at most [`SUMMED_DEPTH`] long) is kept.
fn summed_index(prefix: &Prefix) -> usize {
    match prefix.len() {
        0 => 0,
        1 => 1 + usize::from(prefix.nibble(0)),
        _ => 1 + FANOUT + usize::from(prefix.nibble(0)) * FANOUT + usize::from(prefix.nibble(1)),
    }
}

impl LeafTree {
    /// The root digest: the sum of every leaf.
    pub fn root(&self) -> Digest {
        self.summed(&Prefix::ROOT).0
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.summed(&Prefix::ROOT).1
    }

    /// `true` with no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn summed(&self, prefix: &Prefix) -> (Digest, usize) {
        self.sums
            .get(summed_index(prefix))
            .copied()
            .unwrap_or((Digest::ZERO, 0))
    }

    /// Records that `id`'s leaf went from `old` to `new` (`None`: no leaf).
    pub fn update(&mut self, id: &NodeId, old: Option<Digest>, new: Option<Digest>) {
        let mut prefix = Prefix::ROOT;
        for depth in 0..=SUMMED_DEPTH {
            if let Some((digest, count)) = self.sums.get_mut(summed_index(&prefix)) {
                if let Some(old) = old {
                    *digest -= old;
                    *count -= 1;
                }
                if let Some(new) = new {
                    *digest += new;
                    *count += 1;
                }
            }
            if let Ok(child) = prefix.child(nibble(id, depth)) {
                prefix = child;
            }
        }
    }

    /// The view of the node at `prefix`: its children's digests, or, when it
    /// holds at most `leaf_threshold` leaves, the leaves themselves (taken
    /// from `leaves`, the store this tree sums). `None` if nothing lives under
    /// `prefix`.
    pub fn view(
        &self,
        prefix: &Prefix,
        leaf_threshold: usize,
        leaves: &impl Leaves,
    ) -> Option<View> {
        if prefix.len() <= SUMMED_DEPTH {
            let (_, count) = self.summed(prefix);
            if count == 0 {
                return None;
            }
            if count > leaf_threshold && prefix.len() < SUMMED_DEPTH {
                let children = (0..FANOUT as u8)
                    .filter_map(|nibble| {
                        let (digest, count) = self.summed(&prefix.child(nibble).ok()?);
                        (count > 0).then_some((nibble, digest))
                    })
                    .collect();
                return Some(View::Children(children));
            }
        }
        let under = leaves.leaves_under(prefix);
        if under.is_empty() {
            return None;
        }
        if under.len() <= leaf_threshold || prefix.len() >= MAX_DEPTH {
            return Some(View::Leaves(under));
        }
        let mut children = [(Digest::ZERO, 0usize); FANOUT];
        for (id, digest) in &under {
            if let Some((sum, count)) = children.get_mut(usize::from(nibble(id, prefix.len()))) {
                *sum += *digest;
                *count += 1;
            }
        }
        Some(View::Children(
            (0u8..)
                .zip(children)
                .filter(|(_, (_, count))| *count > 0)
                .map(|(nibble, (digest, _))| (nibble, digest))
                .collect(),
        ))
    }

    /// The digest of everything under `prefix` (zero if nothing).
    pub fn digest_at(&self, prefix: &Prefix, leaves: &impl Leaves) -> Digest {
        if prefix.len() <= SUMMED_DEPTH {
            return self.summed(prefix).0;
        }
        leaves
            .leaves_under(prefix)
            .iter()
            .fold(Digest::ZERO, |acc, (_, digest)| acc + *digest)
    }

    /// The owners whose leaves differ between this tree (over `leaves`) and
    /// `other` (over `other_leaves`): present in one only, or with different
    /// digests, in id order. Walks only the differing subtrees.
    pub fn diff(
        &self,
        leaves: &impl Leaves,
        other: &LeafTree,
        other_leaves: &impl Leaves,
    ) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut pending = vec![Prefix::ROOT];
        while let Some(prefix) = pending.pop() {
            let (mine, theirs) = (
                self.view(&prefix, DIFF_LEAVES, leaves),
                other.view(&prefix, DIFF_LEAVES, other_leaves),
            );
            match (mine, theirs) {
                (Some(View::Children(a)), Some(View::Children(b))) => {
                    for nibble in 0..FANOUT as u8 {
                        let da = a.iter().find(|(n, _)| *n == nibble).map(|(_, d)| *d);
                        let db = b.iter().find(|(n, _)| *n == nibble).map(|(_, d)| *d);
                        if da != db
                            && let Ok(child) = prefix.child(nibble)
                        {
                            pending.push(child);
                        }
                    }
                }
                (mine, theirs) => {
                    let all = |view: Option<View>, store: &dyn Fn() -> Vec<(NodeId, Digest)>| {
                        match view {
                            Some(View::Children(_)) => store(),
                            Some(View::Leaves(under)) => under,
                            None => Vec::new(),
                        }
                    };
                    let a = all(mine, &|| leaves.leaves_under(&prefix));
                    let b = all(theirs, &|| other_leaves.leaves_under(&prefix));
                    diff_sorted(&a, &b, &mut out);
                }
            }
        }
        out.sort();
        out
    }
}

/// Appends the ids present in one sorted list only, or in both with
/// different digests.
fn diff_sorted(a: &[(NodeId, Digest)], b: &[(NodeId, Digest)], out: &mut Vec<NodeId>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                if x.1 != y.1 {
                    out.push(x.0);
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(x.0);
                i += 1;
            }
            (Some(_), Some(y)) => {
                out.push(y.0);
                j += 1;
            }
            (Some(x), None) => {
                out.push(x.0);
                i += 1;
            }
            (None, Some(y)) => {
                out.push(y.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NodeId {
        NodeId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    /// A tree with its leaves, changed together as `SyncState` changes them.
    #[derive(Clone, Default)]
    struct Owned {
        tree: LeafTree,
        leaves: BTreeMap<NodeId, Digest>,
    }

    impl Owned {
        fn set(&mut self, id: NodeId, digest: Digest) {
            let old = self.leaves.insert(id, digest);
            self.tree.update(&id, old, Some(digest));
        }

        fn remove(&mut self, id: &NodeId) {
            let old = self.leaves.remove(id);
            self.tree.update(id, old, None);
        }

        fn diff(&self, other: &Owned) -> Vec<NodeId> {
            self.tree.diff(&self.leaves, &other.tree, &other.leaves)
        }
    }

    #[test]
    fn root_is_the_sum_of_leaves_whatever_the_order() {
        let mut a = Owned::default();
        let mut b = Owned::default();
        for n in 0..1000 {
            a.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        for n in (0..1000).rev() {
            b.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        let sum = (0..1000u32).fold(Digest::ZERO, |acc, n| acc + Digest::of(&n.to_le_bytes()));
        assert_eq!(a.tree.root(), sum);
        assert_eq!(b.tree.root(), sum);
        assert_eq!(a.tree.len(), 1000);
        for n in 0..992 {
            a.remove(&id(n));
        }
        let rest = (992..1000u32).fold(Digest::ZERO, |acc, n| acc + Digest::of(&n.to_le_bytes()));
        assert_eq!(a.tree.root(), rest);
        assert!(
            matches!(a.tree.view(&Prefix::ROOT, 16, &a.leaves), Some(View::Leaves(l)) if l.len() == 8),
            "few enough leaves to list"
        );
    }

    #[test]
    fn every_prefix_sums_its_leaves_above_and_below_the_summed_levels() {
        let mut a = Owned::default();
        for n in 0..5000 {
            a.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        let mut prefix = Prefix::ROOT;
        for depth in 0..6u8 {
            let first = a.leaves.keys().next().copied().unwrap();
            let expected = a
                .leaves
                .iter()
                .filter(|(leaf, _)| prefix.covers(leaf))
                .fold(Digest::ZERO, |acc, (_, d)| acc + *d);
            assert_eq!(
                a.tree.digest_at(&prefix, &a.leaves),
                expected,
                "depth {depth}"
            );
            match a.tree.view(&prefix, 4, &a.leaves) {
                Some(View::Children(children)) => {
                    let sum = children.iter().fold(Digest::ZERO, |acc, (_, d)| acc + *d);
                    assert_eq!(sum, expected, "children at depth {depth}");
                }
                Some(View::Leaves(under)) => {
                    assert!(under.len() <= 4 && under.iter().all(|(l, _)| prefix.covers(l)));
                }
                None => assert!(expected.is_zero()),
            }
            prefix = prefix.child(nibble(&first, depth)).unwrap();
        }
    }

    #[test]
    fn diff_finds_exactly_the_changed_leaves() {
        let mut a = Owned::default();
        for n in 0..5000 {
            a.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        let mut b = a.clone();
        assert!(a.diff(&b).is_empty());
        b.set(id(17), Digest::of(b"x"));
        b.remove(&id(4000));
        b.set(id(9999), Digest::of(b"new"));
        let mut expected = vec![id(17), id(4000), id(9999)];
        expected.sort();
        assert_eq!(a.diff(&b), expected);
        assert_eq!(b.diff(&a), expected);
    }

    /// The prefix `a3f`: three nibbles, ending half-way through a byte.
    fn prefix_a3f() -> Prefix {
        [0xa, 0x3, 0xf]
            .into_iter()
            .fold(Prefix::ROOT, |prefix, nibble| prefix.child(nibble).unwrap())
    }

    #[test]
    fn a_prefix_covers_exactly_its_id_range() {
        let p = prefix_a3f();
        let range = p.ids();
        assert_eq!(range.start().as_bytes()[..2], [0xa3, 0xf0]);
        assert_eq!(range.end().as_bytes()[..2], [0xa3, 0xff]);
        assert!(range.end().as_bytes()[2..].iter().all(|b| *b == 0xff));
        assert!(p.covers(range.start()) && p.covers(range.end()));
        assert_eq!(Prefix::ROOT.ids().end().as_bytes(), &[0xff; 32]);
    }

    #[test]
    fn prefixes_round_trip_and_reject_junk() {
        let p = prefix_a3f();
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<Prefix>(&bytes).unwrap(), p);
        let too_deep = postcard::to_allocvec(&(65u8, &[0u8; 33][..])).unwrap();
        assert!(
            postcard::from_bytes::<Prefix>(&too_deep).is_err(),
            "too deep"
        );
        let stray = postcard::to_allocvec(&(1u8, &[0x1fu8][..])).unwrap();
        assert!(
            postcard::from_bytes::<Prefix>(&stray).is_err(),
            "stray bits"
        );
        let short = postcard::to_allocvec(&(3u8, &[0xa3u8][..])).unwrap();
        assert!(
            postcard::from_bytes::<Prefix>(&short).is_err(),
            "too few bytes"
        );
        assert!(Prefix::ROOT.child(16).is_err());
    }
}
