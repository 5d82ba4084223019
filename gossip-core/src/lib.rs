//! Pure membership state for gossip clusters.
//!
//! gossip-core holds what every layer of the workspace shares, as plain data
//! and pure functions: no clock, no sockets, no threads, no async runtime.
//! Time ([`Timestamp`]) and randomness (a seeded [`GossipRng`]) are inputs, so
//! everything built on it replays exactly from a seed.
//!
//! * [`NodeId`]: a node's identity, the blake3 hash of its public key;
//!   [`ClusterId`] keeps clusters apart on a shared network.
//! * [`Incarnation`]: the version of a node's liveness claim, guarded against
//!   wrapping.
//! * [`Member`] and [`Membership`]: member records, their merge under SWIM's
//!   precedence (a join-semilattice: commutative, associative, idempotent), and
//!   the table that enforces who may claim what.
//! * [`KvStore`]: per-node versioned key/value state with deltas, tombstones
//!   and garbage collection that never resurrects a deleted key.
//! * [`RumorQueue`]: rumors to piggyback, with a retransmit limit, exact
//!   packing into a byte budget and a membership lane data cannot starve.
//! * [`ProbeOrder`], [`choose_random`], [`choose_gossip_targets`]: peer
//!   selection.
//! * [`encode_frame`] / [`decode_frame`]: versioned, cluster-tagged postcard
//!   frames whose decoding is bounded by [`Limits`] and fails with a typed
//!   [`Error`].
//!
//! # Example
//!
//! Two nodes learn of each other and exchange a rumor in a frame:
//!
//! ```
//! use gossip_core::*;
//!
//! let cluster = ClusterId::from_name("demo");
//! let limits = Limits::default();
//! let a = NodeId::from_public_key(b"a's SubjectPublicKeyInfo");
//! let b = NodeId::from_public_key(b"b's SubjectPublicKeyInfo");
//! let mut table_b = Membership::new(Member::new(b, MemberMeta::default()), limits.clone());
//!
//! // a announces itself: the rumor is queued, packed and framed.
//! let mut queue = RumorQueue::new(4, limits.clone());
//! let me = Member::new(a, MemberMeta::new("a", vec!["127.0.0.1:7946".parse().unwrap()]));
//! queue.push(Rumor::Member { member: me, origin: a })?;
//! let mut datagram = Vec::new();
//! encode_frame(cluster, &"ping", &queue.pack(1200, 2), &limits, &mut datagram)?;
//!
//! // b decodes it; the transport tells b that `a` really sent it.
//! let authenticated_sender = a;
//! let frame: Frame<&str> = decode_frame(&datagram, cluster, &limits)?;
//! for rumor in frame.rumors {
//!     if let Rumor::Member { member, origin } = rumor {
//!         assert_eq!(origin, authenticated_sender);
//!         table_b.apply(Timestamp::ZERO, member, origin)?;
//!     }
//! }
//! assert_eq!(table_b.count(MemberStatus::Alive), 2);
//! # Ok::<(), gossip_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod by_id;
mod digest;
mod error;
mod id;
mod incarnation;
mod kv;
mod limits;
mod member;
mod queue;
mod rumor;
mod select;
mod time;
mod wire;

pub use by_id::{ById, HasId};
pub use digest::Digest;
pub use error::{Error, Limited};
pub use id::{ClusterId, NodeId};
pub use incarnation::Incarnation;
pub use kv::{Delta, Entry, Key, KvChange, KvStore, NodeState, OwnerDelta, OwnerDigest};
pub use limits::Limits;
pub use member::{
    Member, MemberChange, MemberMeta, MemberStatus, Membership, MembershipEvent, Transition,
};
pub use queue::OutputQueue;
pub use rumor::{Lane, PackedRumors, Pushed, Rumor, RumorQueue};
pub use select::{GossipRng, ProbeOrder, choose_gossip_targets, choose_random};
pub use time::Timestamp;
pub use wire::{Frame, HEADER_LEN, WIRE_VERSION, decode_frame, encode_frame, encoded_len};

/// Re-exported so users name the same `Bytes` type as the key/value API.
pub use bytes::Bytes;
