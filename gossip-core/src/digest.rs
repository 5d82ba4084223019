//! An incremental set hash: the digest of a set is the sum of its members'
//! blake3 hashes.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// The digest of a set of items: the lane-wise wrapping sum of the first 128
/// bits of their blake3 hashes (an additive set hash in the manner of Bellare
/// and Micciancio's AdHash).
///
/// 128 bits, because that is all a replica compares with a peer's (the
/// anti-entropy protocol sends 16 bytes of a digest), and every node keeps a
/// digest per member: a wider one would cost memory and buy nothing.
///
/// Adding or removing one item costs one hash and two additions, whatever
/// the size of the set, and the digest of a union of disjoint sets is the sum
/// of their digests, so a tree of sums stays current under updates in
/// O(depth) without rehashing siblings. Equal sets have equal digests;
/// different sets collide only with negligible probability unless someone
/// searches for a collision on purpose, which in this workspace could at
/// worst hide a difference from one sync round between authenticated members.
///
/// ```
/// use gossip_core::Digest;
/// let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
/// assert_eq!(a + b, b + a);
/// assert_eq!(a + b - b, a);
/// assert_eq!(Digest::ZERO + a, a);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest([u64; 2]);

impl Digest {
    /// The digest of the empty set.
    pub const ZERO: Digest = Digest([0; 2]);

    /// The digest of the one-item set `{bytes}`.
    pub fn of(bytes: &[u8]) -> Digest {
        Self::from_hash(blake3::hash(bytes))
    }

    /// The digest of the one-item set whose blake3 hash is `hash` (its
    /// first 16 bytes).
    pub fn from_hash(hash: blake3::Hash) -> Digest {
        let bytes = hash.as_bytes();
        let mut lanes = [0u64; 2];
        for (lane, chunk) in lanes.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *lane = u64::from_le_bytes(word);
        }
        Digest(lanes)
    }

    /// The digest as 16 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        for (chunk, lane) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        bytes
    }

    /// `true` for the digest of the empty set.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl Add for Digest {
    type Output = Digest;
    fn add(self, rhs: Digest) -> Digest {
        let mut out = self;
        out += rhs;
        out
    }
}

impl AddAssign for Digest {
    fn add_assign(&mut self, rhs: Digest) {
        for (lane, other) in self.0.iter_mut().zip(rhs.0) {
            *lane = lane.wrapping_add(other);
        }
    }
}

impl Sub for Digest {
    type Output = Digest;
    fn sub(self, rhs: Digest) -> Digest {
        let mut out = self;
        out -= rhs;
        out
    }
}

impl SubAssign for Digest {
    fn sub_assign(&mut self, rhs: Digest) {
        for (lane, other) in self.0.iter_mut().zip(rhs.0) {
            *lane = lane.wrapping_sub(other);
        }
    }
}

impl fmt::Display for Digest {
    /// The first 8 bytes in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0[0].swap_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_order_independent_and_removal_undoes_addition() {
        let items: Vec<Digest> = (0u8..50).map(|i| Digest::of(&[i])).collect();
        let forward = items.iter().fold(Digest::ZERO, |acc, d| acc + *d);
        let backward = items.iter().rev().fold(Digest::ZERO, |acc, d| acc + *d);
        assert_eq!(forward, backward);
        let without_last = items[..49].iter().fold(Digest::ZERO, |acc, d| acc + *d);
        assert_eq!(forward - items[49], without_last);
        assert_ne!(forward, without_last);
    }
}
