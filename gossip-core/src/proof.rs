//! Signatures: how a member speaks only for itself past every hop.
//!
//! A node's id is its Ed25519 public key, so anyone holding a claim can check
//! who made it without asking anyone. Every claim a node makes about itself
//! (its member record, its key/value state at a version, one of its writes)
//! carries its signature, and every accusation carries its accuser's; a
//! relay passes the signatures on and cannot alter what they cover. What is
//! signed is a blake3 digest, derived under a context string of its own and
//! bound to the cluster, of the claim's postcard encoding.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{ClusterId, NodeId};

/// A node's signing key: the private half of its [`NodeId`].
///
/// Held by the node alone (the node builds it from the key of its
/// certificate); everything it says of itself is signed with it. `Debug`
/// shows the id, never the secret.
///
/// ```
/// use gossip_core::NodeKey;
/// let key = NodeKey::from_secret_bytes(&[7; 32]);
/// assert_eq!(key.id(), NodeKey::from_secret_bytes(&[7; 32]).id());
/// ```
#[derive(Clone)]
pub struct NodeKey {
    key: SigningKey,
    id: NodeId,
}

impl NodeKey {
    /// The key whose 32-byte Ed25519 secret (RFC 8032's seed) is `secret`.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let id = NodeId::from_bytes(key.verifying_key().to_bytes());
        NodeKey { key, id }
    }

    /// The id this key speaks for: its public key.
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn sign(&self, digest: &ClaimDigest) -> Signature {
        Signature(self.key.sign(&digest.0).to_bytes())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.id)
    }
}

/// An Ed25519 signature (64 bytes).
///
/// [`Signature::NONE`] (all zeros) stands for a claim not yet signed; it
/// verifies for no key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Length in bytes.
    pub const LEN: usize = 64;

    /// No signature: verifies for no key.
    pub const NONE: Signature = Signature([0; 64]);

    /// Wraps raw signature bytes.
    pub const fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }

    /// The raw bytes.
    pub const fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl Default for Signature {
    fn default() -> Self {
        Signature::NONE
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0[..6].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "Signature({hex}…)")
    }
}

// A byte string on the wire (postcard: a 1-byte length and 64 bytes), which
// decodes with one copy, as `NodeId` does.
impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = Signature;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes of signature")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                <[u8; 64]>::try_from(v)
                    .map(Signature)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// What a signature covers: 32 bytes derived from a claim.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimDigest([u8; 32]);

/// The kinds of signed claim, each with a context string of its own so that
/// a signature over one kind never verifies as another.
#[derive(Clone, Copy)]
pub(crate) enum ClaimKind {
    /// A member's record of itself.
    Member,
    /// An accusation of a member by another.
    Accusation,
    /// An owner's whole key/value state at a version.
    Leaf,
    /// One key/value write, as a rumor carries it.
    Write,
}

impl ClaimKind {
    fn context(self) -> &'static str {
        match self {
            ClaimKind::Member => "gossip 2026-12 member claim",
            ClaimKind::Accusation => "gossip 2026-12 accusation",
            ClaimKind::Leaf => "gossip 2026-12 key-value leaf",
            ClaimKind::Write => "gossip 2026-12 key-value write",
        }
    }
}

/// The digest of `fields` (their postcard encoding) as a claim of `kind` in
/// `cluster`.
pub(crate) fn claim_digest<T: Serialize>(
    kind: ClaimKind,
    cluster: ClusterId,
    fields: &T,
) -> ClaimDigest {
    let mut hasher = blake3::Hasher::new_derive_key(kind.context());
    hasher.update(cluster.as_bytes());
    // Encoding into a hasher fails only if serialization does, which for
    // these plain types it cannot; a failed encoding would then yield a
    // digest no honest signer produced, so verification fails closed.
    let hasher = postcard::to_io(fields, hasher).unwrap_or_else(|_| {
        let mut poisoned = blake3::Hasher::new_derive_key("gossip unencodable claim");
        poisoned.update(cluster.as_bytes());
        poisoned
    });
    ClaimDigest(*hasher.finalize().as_bytes())
}

/// Whether `signature` is `signer`'s over `digest`. Strict verification:
/// no malleable or small-order signatures and keys, so every node decides
/// alike.
pub(crate) fn verify(signer: &NodeId, digest: &ClaimDigest, signature: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(signer.as_bytes()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(&digest.0, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_for_its_signer_kind_and_cluster_only() {
        let cluster = ClusterId::from_name("a");
        let key = NodeKey::from_secret_bytes(&[1; 32]);
        let other = NodeKey::from_secret_bytes(&[2; 32]);
        let digest = claim_digest(ClaimKind::Member, cluster, &(1u64, "x"));
        let signature = key.sign(&digest);
        assert!(verify(&key.id(), &digest, &signature));
        assert!(!verify(&other.id(), &digest, &signature));
        let as_leaf = claim_digest(ClaimKind::Leaf, cluster, &(1u64, "x"));
        assert!(!verify(&key.id(), &as_leaf, &signature));
        let elsewhere = claim_digest(ClaimKind::Member, ClusterId::from_name("b"), &(1u64, "x"));
        assert!(!verify(&key.id(), &elsewhere, &signature));
        assert!(!verify(&key.id(), &digest, &Signature::NONE));
        let mut tampered = signature.to_bytes();
        tampered[3] ^= 1;
        assert!(!verify(
            &key.id(),
            &digest,
            &Signature::from_bytes(tampered)
        ));
    }

    #[test]
    fn a_signature_round_trips_and_refuses_other_lengths() {
        let signature = Signature::from_bytes([9; 64]);
        let bytes = postcard::to_allocvec(&signature).unwrap();
        assert_eq!(bytes.len(), 65);
        assert_eq!(
            postcard::from_bytes::<Signature>(&bytes).unwrap(),
            signature
        );
        let short = postcard::to_allocvec(&[9u8; 63].as_slice()).unwrap();
        assert!(postcard::from_bytes::<Signature>(&short).is_err());
    }
}
