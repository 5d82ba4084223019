//! The crate's one error type.

use crate::id::{ClusterId, NodeId};
use crate::incarnation::Incarnation;

/// Everything that can go wrong in gossip-core.
///
/// Every variant leaves the state it was returned from **unchanged**: a decode
/// error touches nothing, and a rejected merge, write or delta is refused whole
/// before anything is applied. Callers can therefore count an error and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame is larger than [`Limits::max_frame_bytes`](crate::Limits::max_frame_bytes).
    /// Nothing was decoded or encoded.
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    FrameTooLarge {
        /// Size of the offending frame in bytes.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The input ended before the frame did. Nothing was decoded.
    #[error("frame truncated: input ended before the frame did")]
    Truncated,
    /// The frame was written by a protocol version this build does not speak.
    /// Nothing was decoded.
    #[error("unsupported wire version {got} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The version byte found in the frame.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The frame belongs to another cluster. Nothing was decoded.
    #[error("frame from foreign cluster {got} (this node belongs to cluster {expected})")]
    ForeignCluster {
        /// The cluster id found in the frame.
        got: ClusterId,
        /// This node's cluster id.
        expected: ClusterId,
    },
    /// The bytes are not a valid encoding of the expected message. Nothing was decoded.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What was wrong, in a few words.
        reason: &'static str,
    },
    /// The frame carried bytes after its last field. Nothing was decoded.
    #[error("{trailing} unexpected bytes after the end of the frame")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },
    /// A count or size exceeds a configured cap. Nothing was applied.
    #[error("{what} is {got}, over the cap of {max}")]
    LimitExceeded {
        /// Which quantity is over its cap.
        what: Limited,
        /// The value found.
        got: usize,
        /// The cap in force.
        max: usize,
    },
    /// The node cannot raise its incarnation any further without wrapping. The
    /// incarnation is unchanged; the node must rejoin under a new identity.
    #[error("incarnation {current} cannot be raised past {accused} without overflow")]
    IncarnationExhausted {
        /// The node's incarnation.
        current: Incarnation,
        /// The incarnation it would have to exceed.
        accused: Incarnation,
    },
    /// A claim jumps an incarnation implausibly far ahead of what is known. The
    /// claim was not applied. This is how a forged claim at the maximum
    /// incarnation is stopped before it can wedge the refutation counter.
    #[error("incarnation {got} for {subject} jumps more than {max_jump} past the known {known}")]
    IncarnationJump {
        /// The member the claim is about.
        subject: NodeId,
        /// The incarnation known locally.
        known: Incarnation,
        /// The incarnation claimed.
        got: Incarnation,
        /// The largest jump accepted.
        max_jump: u64,
    },
    /// A key/value delta claims a version implausibly far past the one held
    /// for its owner; nothing of the delta was applied.
    #[error("version {got} for {owner} jumps more than {max_jump} past the held {known}")]
    VersionJump {
        /// Whose keys.
        owner: NodeId,
        /// The version held locally.
        known: u64,
        /// The version claimed.
        got: u64,
        /// The largest jump accepted.
        max_jump: u64,
    },
    /// A claim's signature does not verify: it is unsigned, signed by
    /// another key, or altered since it was signed. Nothing was applied.
    #[error("{claim} about {subject} is not signed by {signer}")]
    BadSignature {
        /// The member (or owner) the claim is about.
        subject: NodeId,
        /// Whose signature it needed: the subject, or for an accusation the
        /// accuser it names.
        signer: NodeId,
        /// What was claimed.
        claim: &'static str,
    },
    /// A claim older than the one held: a late rumor, or a replay of a
    /// claim the subject has since superseded. Nothing was applied.
    #[error("claim about {subject} at incarnation {got} is older than the held {held}")]
    Stale {
        /// The member the claim is about.
        subject: NodeId,
        /// The incarnation held.
        held: Incarnation,
        /// The incarnation claimed.
        got: Incarnation,
    },
    /// A claim by or about a node the operator revoked. Nothing was applied.
    #[error("{id} is revoked")]
    Revoked {
        /// The revoked node.
        id: NodeId,
    },
    /// A key/value delta that does not bring its owner's state to the one the
    /// owner signed (entries left out, altered or added by a relay). Nothing
    /// was applied.
    #[error("delta for {owner} does not reproduce the state its owner signed at version {version}")]
    StateMismatch {
        /// Whose keys.
        owner: NodeId,
        /// The version the delta claims to bring.
        version: u64,
    },
    /// The local node's version counter would overflow. Nothing was written.
    #[error("the local key/value version counter is exhausted")]
    VersionExhausted,
    /// A string is not the hex form of an id. Nothing was parsed.
    #[error("expected {expected} hex digits, got {got:?}")]
    ParseId {
        /// How many hex digits the id has.
        expected: usize,
        /// The start of the input.
        got: String,
    },
    /// A node's ring state does not parse (see
    /// [`RingState`](crate::RingState)). Nothing was parsed.
    #[error("ring state: {reason}")]
    ParseRingState {
        /// What was wrong.
        reason: String,
    },
    /// A number is above [`Incarnation::MAX`]. Nothing was converted.
    #[error("incarnation {got} is above the maximum {max}", max = Incarnation::MAX)]
    IncarnationOutOfRange {
        /// The number.
        got: u64,
    },
    /// A key/value delta is internally inconsistent (versions out of order, or
    /// entries past the version it claims to cover). Nothing was applied.
    #[error("inconsistent delta for {owner}: {reason}")]
    InconsistentDelta {
        /// The node whose state the delta carried.
        owner: NodeId,
        /// What was wrong.
        reason: &'static str,
    },
}

/// The quantities that [`Error::LimitExceeded`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limited {
    /// Rumors in one frame.
    RumorsPerFrame,
    /// Advertised addresses of one member.
    AddressesPerMember,
    /// Bytes of a member's name.
    NameBytes,
    /// Bytes of a key.
    KeyBytes,
    /// Bytes of a value.
    ValueBytes,
    /// Keys held for one node, tombstones included.
    KeysPerNode,
    /// Members in the table.
    Members,
    /// Owners in one key/value delta.
    DeltaOwners,
    /// Bytes of one encoded rumor.
    RumorBytes,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limited::RumorsPerFrame => "the number of rumors in a frame",
            Limited::AddressesPerMember => "the number of addresses of a member",
            Limited::NameBytes => "the length of a member name in bytes",
            Limited::KeyBytes => "the length of a key in bytes",
            Limited::ValueBytes => "the length of a value in bytes",
            Limited::KeysPerNode => "the number of keys of one node",
            Limited::Members => "the number of members",
            Limited::DeltaOwners => "the number of nodes in a delta",
            Limited::RumorBytes => "the encoded size of a rumor in bytes",
        })
    }
}

/// Why a claim from the network was refused, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(usize)]
pub enum Refusal {
    /// Unsigned, or not signed by whom it must be ([`Error::BadSignature`]).
    BadSignature,
    /// Older than what is held ([`Error::Stale`]).
    Stale,
    /// An incarnation or version implausibly far ahead
    /// ([`Error::IncarnationJump`], [`Error::VersionJump`]).
    Implausible,
    /// By or about a revoked node ([`Error::Revoked`]).
    Revoked,
    /// Key/value writes that do not match their owner's signed state
    /// ([`Error::StateMismatch`], [`Error::InconsistentDelta`]).
    Inconsistent,
    /// Over a cap in [`Limits`](crate::Limits) ([`Error::LimitExceeded`]).
    OverLimit,
}

impl Refusal {
    /// Every reason, in declaration order.
    pub const ALL: [Refusal; 6] = [
        Refusal::BadSignature,
        Refusal::Stale,
        Refusal::Implausible,
        Refusal::Revoked,
        Refusal::Inconsistent,
        Refusal::OverLimit,
    ];

    /// A short lower-case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale",
            Refusal::Implausible => "implausible",
            Refusal::Revoked => "revoked",
            Refusal::Inconsistent => "inconsistent",
            Refusal::OverLimit => "over_limit",
        }
    }

    /// Its place in [`Refusal::ALL`], which lists the variants in
    /// declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refused claims counted by [`Refusal`]: what every layer that takes claims
/// from the network keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals([u64; Refusal::ALL.len()]);

impl Refusals {
    /// Counts one refusal.
    pub fn count(&mut self, reason: Refusal) {
        self.0[reason.index()] += 1;
    }

    /// How many were refused for `reason`.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.0[reason.index()]
    }

    /// How many were refused in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every reason with its count, in [`Refusal::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

impl std::ops::AddAssign for Refusals {
    fn add_assign(&mut self, other: Refusals) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

impl Error {
    /// Why a claim that failed with this error was refused, or `None` for
    /// errors that are not about a claim's content (decoding, the local
    /// node's own counters).
    pub fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            Error::BadSignature { .. } => Refusal::BadSignature,
            Error::Stale { .. } => Refusal::Stale,
            Error::IncarnationJump { .. } | Error::VersionJump { .. } => Refusal::Implausible,
            Error::Revoked { .. } => Refusal::Revoked,
            Error::StateMismatch { .. } | Error::InconsistentDelta { .. } => Refusal::Inconsistent,
            Error::LimitExceeded { .. } => Refusal::OverLimit,
            _ => return None,
        })
    }

    pub(crate) fn limit(what: Limited, got: usize, max: usize) -> Self {
        Error::LimitExceeded { what, got, max }
    }

    /// Checks `got <= max`, naming `what` in the error otherwise.
    pub(crate) fn check(what: Limited, got: usize, max: usize) -> Result<(), Self> {
        if got > max {
            Err(Self::limit(what, got, max))
        } else {
            Ok(())
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(err: postcard::Error) -> Self {
        use postcard::Error as P;
        match err {
            P::DeserializeUnexpectedEnd => Error::Truncated,
            P::DeserializeBadVarint => Error::Malformed {
                reason: "varint too long",
            },
            P::DeserializeBadBool => Error::Malformed {
                reason: "invalid boolean",
            },
            P::DeserializeBadChar => Error::Malformed {
                reason: "invalid character",
            },
            P::DeserializeBadUtf8 => Error::Malformed {
                reason: "invalid UTF-8",
            },
            P::DeserializeBadOption => Error::Malformed {
                reason: "invalid option tag",
            },
            P::DeserializeBadEnum => Error::Malformed {
                reason: "unknown enum variant",
            },
            // Our own bounded types reject out-of-range values through serde's
            // custom errors, which postcard reports without a payload.
            P::SerdeDeCustom => Error::Malformed {
                reason: "value out of range",
            },
            _ => Error::Malformed {
                reason: "invalid encoding",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_counted_in_its_own_place() {
        let mut counts = Refusals::default();
        for (place, reason) in Refusal::ALL.iter().enumerate() {
            assert_eq!(reason.index(), place, "{reason}");
            counts.count(*reason);
            assert_eq!(counts.get(*reason), 1, "{reason}");
        }
        assert_eq!(counts.total(), Refusal::ALL.len() as u64);
    }
}
