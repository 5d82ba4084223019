//! Node and cluster identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A node's identity: its 32-byte Ed25519 public key, the key of its
/// certificate.
///
/// Binding the id to the key means a peer cannot speak for another node: the
/// transport derives the sender's id from the certificate it presented, and
/// every claim a node makes about itself carries its signature, which any
/// holder of the claim checks against the id alone (see [`NodeKey`]).
///
/// [`NodeKey`]: crate::NodeKey
///
/// `Display` shows the first 6 bytes in hex (like a short git hash); the
/// alternate form `{:#}` and `Debug` show all 32.
///
/// ```
/// use gossip_core::NodeId;
/// let id = NodeId::from_bytes([7; 32]);
/// assert_eq!(id.to_string().len(), 12);
/// assert_eq!(format!("{id:#}").parse::<NodeId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Length of an id in bytes.
    pub const LEN: usize = 32;

    /// Wraps raw id bytes: an Ed25519 public key. Bytes that are no valid key
    /// make an id that can sign nothing, so no claim of it is ever believed.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = blake3::Hash::from_bytes(self.0).to_hex();
        if f.alternate() {
            f.write_str(&hex)
        } else {
            f.write_str(&hex[..12])
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self:#})")
    }
}

fn parse_error(expected: usize, input: &str) -> Error {
    Error::ParseId {
        expected,
        got: input.chars().take(80).collect(),
    }
}

impl FromStr for NodeId {
    type Err = Error;

    /// Parses the full 64-digit hex form (as printed by `{:#}`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(|h| NodeId(*h.as_bytes()))
            .map_err(|_| parse_error(64, s))
    }
}

// In binary formats an id is a byte string (postcard: a 1-byte length and the
// 32 bytes), which decodes with one copy; as a fixed array it would decode
// byte by byte, several times slower. Human-readable formats get the hex form.
impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&format_args!("{self:#}"))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = NodeId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes of node id")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<NodeId, E> {
                <[u8; 32]>::try_from(v)
                    .map(NodeId)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }

        if deserializer.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            deserializer.deserialize_bytes(BytesVisitor)
        }
    }
}

/// A cluster's identity: 8 bytes carried in every frame so that nodes of
/// different clusters sharing a network ignore each other.
///
/// Derive it from a human-chosen cluster name with [`ClusterId::from_name`].
///
/// ```
/// use gossip_core::ClusterId;
/// let prod = ClusterId::from_name("prod-eu-1");
/// assert_ne!(prod, ClusterId::from_name("staging"));
/// assert_eq!(prod.to_string().parse::<ClusterId>().unwrap(), prod);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId([u8; 8]);

impl ClusterId {
    /// Length of a cluster id in bytes.
    pub const LEN: usize = 8;

    /// Derives the id from a cluster name: the first 8 bytes of its blake3 hash.
    pub fn from_name(name: &str) -> Self {
        let hash = blake3::hash(name.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash.as_bytes()[..8]);
        ClusterId(id)
    }

    /// Wraps raw id bytes.
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        ClusterId(bytes)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl FromStr for ClusterId {
    type Err = Error;

    /// Parses the 16-digit hex form printed by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || parse_error(16, s);
        if s.len() != 16 || !s.is_ascii() {
            return Err(err());
        }
        let mut id = [0u8; 8];
        for (slot, pair) in id.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| err())?;
            *slot = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(ClusterId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_the_public_key_of_its_node_key() {
        let key = crate::NodeKey::from_secret_bytes(&[3; 32]);
        let public = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert_eq!(key.id().as_bytes(), public.as_bytes());
    }

    #[test]
    fn node_id_display_is_short_and_alternate_is_full() {
        let id = NodeId::from_bytes([0xab; 32]);
        assert_eq!(id.to_string(), "abababababab");
        assert_eq!(format!("{id:#}"), "ab".repeat(32));
        assert_eq!(format!("{id:?}"), format!("NodeId({})", "ab".repeat(32)));
    }

    #[test]
    fn node_id_parse_rejects_short_or_bad_hex() {
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
    }

    #[test]
    fn node_id_serde_is_33_bytes_in_postcard_and_rejects_other_lengths() {
        let id = NodeId::from_bytes([5; 32]);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes.len(), 33);
        assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), id);
        let short = postcard::to_allocvec(&[1u8; 31][..]).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&short).is_err());
    }

    #[test]
    fn cluster_id_round_trips_through_hex() {
        let id = ClusterId::from_name("a");
        assert_eq!(id.to_string().parse::<ClusterId>().unwrap(), id);
        assert!("0011".parse::<ClusterId>().is_err());
        assert!("é".repeat(8).parse::<ClusterId>().is_err());
    }
}
