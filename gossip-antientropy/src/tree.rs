//! The Merkle tree: an adaptive 16-ary trie over owner ids whose nodes carry
//! the set hash of the leaves beneath them.

use gossip_core::{Digest, NodeId};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Children per inner node: one per hex digit of an owner id.
pub const FANOUT: usize = 16;

/// Leaves a bucket holds before it splits into 16 children.
const BUCKET_MAX: usize = 16;

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

#[derive(Debug, Clone)]
enum Kind {
    Bucket(Vec<(NodeId, Digest)>),
    Inner(Box<[Node; FANOUT]>),
}

#[derive(Debug, Clone)]
struct Node {
    digest: Digest,
    count: usize,
    kind: Kind,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            digest: Digest::ZERO,
            count: 0,
            kind: Kind::Bucket(Vec::new()),
        }
    }
}

impl Node {
    /// Sets `id`'s leaf digest, returning the previous one.
    fn set(&mut self, id: NodeId, digest: Digest, depth: u8) -> Option<Digest> {
        let old = match &mut self.kind {
            Kind::Bucket(leaves) => match leaves.binary_search_by(|(leaf, _)| leaf.cmp(&id)) {
                Ok(at) => leaves
                    .get_mut(at)
                    .map(|slot| std::mem::replace(&mut slot.1, digest)),
                Err(at) => {
                    // Buckets hold a few leaves each and every node holds a
                    // leaf per member: no room to spare, one more at a time.
                    leaves.reserve_exact(1);
                    leaves.insert(at, (id, digest));
                    None
                }
            },
            Kind::Inner(children) => children
                .get_mut(usize::from(nibble(&id, depth)))
                .and_then(|child| child.set(id, digest, depth + 1)),
        };
        self.digest += digest;
        match old {
            Some(old) => self.digest -= old,
            None => self.count += 1,
        }
        self.split_if_full(depth);
        old
    }

    fn remove(&mut self, id: &NodeId, depth: u8) -> Option<Digest> {
        let old = match &mut self.kind {
            Kind::Bucket(leaves) => {
                let at = leaves.binary_search_by(|(leaf, _)| leaf.cmp(id)).ok()?;
                Some(leaves.remove(at).1)
            }
            Kind::Inner(children) => children
                .get_mut(usize::from(nibble(id, depth)))
                .and_then(|child| child.remove(id, depth + 1)),
        }?;
        self.digest -= old;
        self.count -= 1;
        if self.count <= BUCKET_MAX / 2 && matches!(self.kind, Kind::Inner(_)) {
            let mut leaves = Vec::with_capacity(self.count);
            self.collect(&mut leaves);
            leaves.sort_by_key(|leaf| leaf.0);
            self.kind = Kind::Bucket(leaves);
        }
        Some(old)
    }

    fn split_if_full(&mut self, depth: u8) {
        let Kind::Bucket(leaves) = &mut self.kind else {
            return;
        };
        if leaves.len() <= BUCKET_MAX || depth >= MAX_DEPTH {
            return;
        }
        let mut children: Box<[Node; FANOUT]> = Box::default();
        for (id, digest) in leaves.drain(..) {
            if let Some(child) = children.get_mut(usize::from(nibble(&id, depth))) {
                child.set(id, digest, depth + 1);
            }
        }
        self.kind = Kind::Inner(children);
    }

    fn get(&self, id: &NodeId, depth: u8) -> Option<Digest> {
        match &self.kind {
            Kind::Bucket(leaves) => leaves
                .binary_search_by(|(leaf, _)| leaf.cmp(id))
                .ok()
                .and_then(|at| leaves.get(at))
                .map(|(_, d)| *d),
            Kind::Inner(children) => children
                .get(usize::from(nibble(id, depth)))?
                .get(id, depth + 1),
        }
    }

    fn collect(&self, out: &mut Vec<(NodeId, Digest)>) {
        match &self.kind {
            Kind::Bucket(leaves) => out.extend_from_slice(leaves),
            Kind::Inner(children) => children.iter().for_each(|c| c.collect(out)),
        }
    }
}

/// The Merkle tree over owners: one leaf per owner, whose digest summarizes
/// everything known of it (member record, key/value writes, version).
///
/// Every node's digest is the [`Digest`] sum of the leaves beneath it, so a
/// leaf update adjusts the digests on its path with two additions per level:
/// O(log16 n) and no rehashing. The shape adapts to the leaves (a node splits
/// into 16 children past 16 leaves), but digests do not depend on the shape,
/// so two replicas can compare any prefix whatever their shapes.
///
/// ```
/// use gossip_antientropy::{LeafTree, Prefix};
/// use gossip_core::{Digest, NodeId};
/// let mut a = LeafTree::default();
/// let mut b = LeafTree::default();
/// for n in 0..100u8 {
///     a.set(NodeId::from_bytes([n; 32]), Digest::of(&[n]));
///     b.set(NodeId::from_bytes([n; 32]), Digest::of(&[n]));
/// }
/// assert_eq!(a.root(), b.root());
/// b.set(NodeId::from_bytes([7; 32]), Digest::of(b"changed"));
/// assert_eq!(a.diff(&b), vec![NodeId::from_bytes([7; 32])]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LeafTree {
    root: Node,
}

impl LeafTree {
    /// The root digest: the sum of every leaf.
    pub fn root(&self) -> Digest {
        self.root.digest
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.root.count
    }

    /// `true` with no leaves.
    pub fn is_empty(&self) -> bool {
        self.root.count == 0
    }

    /// Sets `id`'s leaf, returning its previous digest.
    pub fn set(&mut self, id: NodeId, digest: Digest) -> Option<Digest> {
        self.root.set(id, digest, 0)
    }

    /// Removes `id`'s leaf, returning its digest.
    pub fn remove(&mut self, id: &NodeId) -> Option<Digest> {
        self.root.remove(id, 0)
    }

    /// `id`'s leaf digest.
    pub fn get(&self, id: &NodeId) -> Option<Digest> {
        self.root.get(id, 0)
    }

    /// The view of the node at `prefix`: its children's digests, or, when it
    /// holds at most `leaf_threshold` leaves (or is a bucket), the leaves
    /// themselves. `None` if nothing lives under `prefix`.
    pub fn view(&self, prefix: &Prefix, leaf_threshold: usize) -> Option<View> {
        let mut node = &self.root;
        for depth in 0..prefix.len() {
            match &node.kind {
                Kind::Inner(children) => node = children.get(usize::from(prefix.nibble(depth)))?,
                Kind::Bucket(leaves) => {
                    let under: Vec<_> = leaves
                        .iter()
                        .filter(|(id, _)| prefix.covers(id))
                        .copied()
                        .collect();
                    return (!under.is_empty()).then_some(View::Leaves(under));
                }
            }
        }
        if node.count == 0 {
            return None;
        }
        match &node.kind {
            Kind::Inner(children) if node.count > leaf_threshold => Some(View::Children(
                children
                    .iter()
                    .enumerate()
                    .filter(|(_, child)| child.count > 0)
                    .map(|(nibble, child)| (nibble as u8, child.digest))
                    .collect(),
            )),
            _ => {
                let mut leaves = Vec::with_capacity(node.count);
                node.collect(&mut leaves);
                leaves.sort_by_key(|leaf| leaf.0);
                Some(View::Leaves(leaves))
            }
        }
    }

    /// The digest of everything under `prefix` (zero if nothing).
    pub fn digest_at(&self, prefix: &Prefix) -> Digest {
        match self.view(prefix, 0) {
            None => Digest::ZERO,
            Some(View::Children(children)) => {
                children.iter().fold(Digest::ZERO, |acc, (_, d)| acc + *d)
            }
            Some(View::Leaves(leaves)) => leaves.iter().fold(Digest::ZERO, |acc, (_, d)| acc + *d),
        }
    }

    /// The owners whose leaves differ between the two trees (present in one
    /// only, or with different digests), in id order. Walks only the
    /// differing subtrees.
    pub fn diff(&self, other: &LeafTree) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut pending = vec![Prefix::ROOT];
        while let Some(prefix) = pending.pop() {
            let (mine, theirs) = (
                self.view(&prefix, BUCKET_MAX),
                other.view(&prefix, BUCKET_MAX),
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
                    let leaves = |view: Option<View>, tree: &LeafTree| match view {
                        Some(View::Children(_)) => tree.leaves_under(&prefix),
                        Some(View::Leaves(leaves)) => leaves,
                        None => Vec::new(),
                    };
                    let (a, b) = (leaves(mine, self), leaves(theirs, other));
                    diff_sorted(&a, &b, &mut out);
                }
            }
        }
        out.sort();
        out
    }

    /// Every leaf under `prefix`, in id order.
    pub fn leaves_under(&self, prefix: &Prefix) -> Vec<(NodeId, Digest)> {
        match self.view(prefix, usize::MAX) {
            Some(View::Leaves(leaves)) => leaves,
            _ => Vec::new(),
        }
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
        NodeId::from_public_key(&n.to_le_bytes())
    }

    #[test]
    fn root_is_the_sum_of_leaves_whatever_the_order_and_shape() {
        let mut a = LeafTree::default();
        let mut b = LeafTree::default();
        for n in 0..1000 {
            a.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        for n in (0..1000).rev() {
            b.set(id(n), Digest::of(&n.to_le_bytes()));
        }
        let sum = (0..1000u32).fold(Digest::ZERO, |acc, n| acc + Digest::of(&n.to_le_bytes()));
        assert_eq!(a.root(), sum);
        assert_eq!(b.root(), sum);
        assert_eq!(a.len(), 1000);
        for n in 0..992 {
            a.remove(&id(n));
        }
        let rest = (992..1000u32).fold(Digest::ZERO, |acc, n| acc + Digest::of(&n.to_le_bytes()));
        assert_eq!(a.root(), rest);
        assert!(
            matches!(a.view(&Prefix::ROOT, 0), Some(View::Leaves(l)) if l.len() == 8),
            "merged back into a bucket"
        );
    }

    #[test]
    fn diff_finds_exactly_the_changed_leaves() {
        let mut a = LeafTree::default();
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

    #[test]
    fn prefixes_round_trip_and_reject_junk() {
        let p = Prefix::ROOT
            .child(0xa)
            .unwrap()
            .child(0x3)
            .unwrap()
            .child(0xf)
            .unwrap();
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
