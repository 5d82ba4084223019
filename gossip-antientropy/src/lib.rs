//! Merkle anti-entropy whose cost follows the difference, not the cluster.
//!
//! Two replicas that agree exchange one root digest; replicas that differ
//! descend only into the subtrees that differ, then exchange just the writes
//! and member records one side lacks, in both directions.
//!
//! * [`SyncState`] holds a replica's member records and key/value state
//!   ([`gossip_core::KvStore`]) with its [`LeafTree`] kept current: one leaf
//!   per owner, whose digest covers the owner's member record, its versions
//!   and every one of its writes, tombstones included. A leaf is kept with
//!   its owner's record; the tree keeps sums of its top levels only, so an
//!   update costs three additions and the root is always current.
//! * [`Session`] runs one reconciliation as a sans-IO state machine.
//! * The crate knows nothing of failure detection: `gossip-member` composes
//!   a [`SyncState`] and its sessions with a SWIM machine.
//! * [`RootDigest`] (the root's 16 bytes and its leaf count) opens every
//!   session, and replicas that agree exchange nothing more. A driver can
//!   put a few bytes of [`SyncState::root`] on its probes and start a
//!   session only when they differ (as `gossip-member` does).
//!
//! Within an owner, versions already say exactly what a peer lacks (every
//! write after the version it has reached), so the tree stops at owners and
//! the writes themselves travel as [`gossip_core::OwnerDelta`]s; deleted keys
//! stay deleted through the same floors and resets as every other delta.
//!
//! # The sans-IO contract
//!
//! No clock, no sockets, no threads: the driver passes the state and `now`
//! into every call and sends what [`Session::poll_transmit`] returns.

#![forbid(unsafe_code)]

mod error;
mod message;
mod session;
mod state;
mod tree;

pub use error::Error;
pub use message::{LeafSummary, NodeSummary, NodeView, Part, RootDigest, ShortDigest, SyncMessage};
pub use session::{Session, SessionStats, SyncConfig};
pub use state::SyncState;
pub use tree::{FANOUT, LeafTree, Leaves, MAX_DEPTH, Prefix, SUMMED_DEPTH, View};
