//! Pure membership state for gossip clusters.
//!
//! gossip-core holds what every layer of the workspace shares, as plain data
//! and pure functions: no clock, no sockets, no threads, no async runtime.
//! Time ([`Timestamp`]) and randomness (a seeded [`GossipRng`]) are inputs, so
//! everything built on it replays exactly from a seed.
//!
//! * [`NodeId`]: a node's identity, its Ed25519 public key; [`NodeKey`], the
//!   private half, signs every claim the node makes about itself, so a
//!   claim is believed past every hop only if its subject (or, for an
//!   accusation, its accuser) signed it; [`ClusterId`] keeps clusters apart
//!   on a shared network.
//! * [`Incarnation`]: the version of a node's liveness claim, guarded against
//!   wrapping.
//! * [`Member`] and [`Membership`]: member records, their merge under SWIM's
//!   precedence (a join-semilattice: commutative, associative, idempotent), and
//!   the table that enforces who may claim what.
//! * [`KvStore`]: per-node versioned key/value state with deltas, tombstones
//!   and garbage collection that never resurrects a deleted key.
//! * [`RumorQueue`]: rumors to piggyback, with a retransmit limit, exact
//!   packing into a byte budget and a membership lane data cannot starve.
//! * [`ProbeOrder`], [`choose_random`], [`choose_weighted`] (by zone and
//!   weight, from a [`Placement`]): peer selection.
//! * [`RingState`] and [`RingView`]: Cassandra's ring state (status, load,
//!   tokens) as a node publishes it in its keys, and the token ring built
//!   from the members held alive.
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
//! let a = NodeKey::from_secret_bytes(&[1; 32]);
//! let b = NodeKey::from_secret_bytes(&[2; 32]);
//! let b_record = Member::new(b.id(), MemberMeta::default());
//! let mut table_b = Membership::new(b, cluster, b_record, limits.clone());
//!
//! // a announces itself, signed: the rumor is queued, packed and framed.
//! let mut queue = RumorQueue::new(4, limits.clone());
//! let mut me = Member::new(a.id(), MemberMeta::new("a", vec!["127.0.0.1:7946".parse().unwrap()]));
//! me.sign(&a, cluster);
//! queue.push(Rumor::Member { member: me })?;
//! let mut datagram = Vec::new();
//! encode_frame(cluster, &"ping", &queue.pack(1200, 2), &limits, &mut datagram)?;
//!
//! // b decodes it and takes the claim because a signed it, whoever relayed it.
//! let frame: Frame<&str> = decode_frame(&datagram, cluster, &limits)?;
//! for rumor in frame.rumors {
//!     if let Rumor::Member { member } = rumor {
//!         assert_eq!(member.origin(), a.id());
//!         table_b.apply(Timestamp::ZERO, member)?;
//!     }
//! }
//! // A claim about a that a did not sign is refused.
//! let mut forged = table_b.get(&a.id()).unwrap().clone();
//! forged.status = MemberStatus::Left;
//! assert!(table_b.apply(Timestamp::ZERO, forged).is_err());
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
mod proof;
mod queue;
mod ring;
mod rumor;
mod select;
mod time;
mod wire;

pub use by_id::{ById, HasId};
pub use digest::Digest;
pub use error::{Error, Limited, Refusal, Refusals};
pub use id::{ClusterId, NodeId};
pub use incarnation::Incarnation;
pub use kv::{
    Commitment, Delta, Entry, Key, KvChange, KvStore, NodeState, OwnerDelta, OwnerDigest,
};
pub use limits::Limits;
pub use member::{
    Accusation, Member, MemberChange, MemberMeta, MemberStatus, Membership, MembershipEvent, Proof,
    Transition,
};
pub use proof::{NodeKey, Signature};
pub use queue::OutputQueue;
pub use ring::{MAX_TOKENS, RING_KEY, RingMember, RingState, RingStatus, RingView};
pub use rumor::{Lane, PackedRumors, Pushed, Rumor, RumorQueue};
pub use select::{GossipRng, Placement, ProbeOrder, choose_random, choose_weighted};
pub use time::Timestamp;
pub use wire::{Frame, HEADER_LEN, WIRE_VERSION, decode_frame, encode_frame, encoded_len};

/// Re-exported so users name the same `Bytes` type as the key/value API.
pub use bytes::Bytes;
