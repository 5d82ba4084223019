//! What two replicas say to each other during a sync.

use gossip_core::{Delta, Digest, Member, NodeId, OwnerDigest};
use serde::{Deserialize, Serialize};

use crate::tree::Prefix;

/// A [`Digest`]'s 16 bytes on the wire: 2^-128 odds of hiding a difference
/// between honest replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShortDigest(pub [u8; 16]);

impl From<Digest> for ShortDigest {
    fn from(digest: Digest) -> Self {
        ShortDigest(digest.to_bytes())
    }
}

/// The summary of a replica's whole state, which opens every session: two
/// replicas with equal roots hold the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDigest {
    /// The tree's root, cut to 16 bytes.
    pub digest: ShortDigest,
    /// Number of owners (leaves).
    pub leaves: u64,
}

/// One owner's leaf, in parts, so the receiver can tell what differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafSummary {
    /// The owner.
    pub owner: NodeId,
    /// A hash of the owner's member record (0 if none is held).
    pub member: u64,
    /// How far the owner's key/value state has got.
    pub max_version: u64,
    /// Up to where the owner's tombstones are collected.
    pub floor: u64,
    /// The owner's key/value content digest, cut to 8 bytes.
    pub content: u64,
}

/// What a replica holds under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeView {
    /// The digests of its non-empty children.
    Children(Vec<(u8, ShortDigest)>),
    /// Its leaves.
    Leaves(Vec<LeafSummary>),
}

/// A node of the sender's tree that the sender believes differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Where.
    pub prefix: Prefix,
    /// What the sender holds there.
    pub view: NodeView,
}

/// One part of a turn. A turn is one or more parts, the last with
/// `end_of_turn` set; splitting keeps every message under the size cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Summaries of nodes to compare, one level further down.
    pub nodes: Vec<NodeSummary>,
    /// Member records the receiver lacks or holds older.
    pub members: Vec<Member>,
    /// Key/value writes the receiver lacks.
    pub delta: Delta,
    /// Owners whose writes the sender lacks: the sender's digest of each.
    pub wants: Vec<OwnerDigest>,
    /// Owners whose member records the sender lacks or holds older.
    pub member_wants: Vec<NodeId>,
    /// The last part of this turn.
    pub end_of_turn: bool,
}

impl Part {
    /// `true` if the turn this part belongs to asks for an answer.
    pub fn asks(&self) -> bool {
        !self.nodes.is_empty() || !self.wants.is_empty() || !self.member_wants.is_empty()
    }
}

/// A sync message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SyncMessage {
    /// The initiator's root: the first turn.
    Root(RootDigest),
    /// Part of a later turn.
    Part(Part),
    /// The responder's only answer to a root when it already runs as many
    /// sessions as it allows: the initiator ends the session at once
    /// instead of waiting out its idle timeout.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_digest_fits_on_a_probe() {
        let root = RootDigest {
            digest: ShortDigest([0xff; 16]),
            leaves: 1_000_000,
        };
        assert!(
            gossip_core::encoded_len(&root) <= 24,
            "{}",
            gossip_core::encoded_len(&root)
        );
    }
}
