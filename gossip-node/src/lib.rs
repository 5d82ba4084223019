//! A member of a gossip cluster on tokio: SWIM failure detection with
//! Lifeguard and Merkle anti-entropy of every node's key/value state, as
//! composed by the sans-IO [`gossip_member::Replica`], driven over
//! mutual-TLS QUIC ([`gossip_transport_quic`]) as one [`Node`].
//!
//! A node answers "who is alive, and what do they say about themselves":
//! [`Node::start`] returns the node and the stream of its changes
//! ([`NodeEvent`]) from the first, [`Node::joined`] waits for the join,
//! [`Node::members`] reads the membership as this node sees it (a shared
//! snapshot, without waiting on the node), [`Node::set`] publishes one of
//! this node's own keys, and [`Node::get`] reads any node's.
//!
//! How it runs: one driver task per node owns the state machines. It
//! selects over transport input, the earliest deadline and handle commands,
//! feeds one input, then drains every output. SWIM rides QUIC datagrams; an
//! 8-byte digest of the node's Merkle root over all replicated state rides
//! every probe, and a sync over a stream starts only when digests differ
//! (plus one with a random member every `sync_interval` as a backstop). The sender a
//! machine is told of is always the [`NodeId`] the
//! transport authenticated, never a claimed one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use gossip_node::{Node, NodeConfig};
//! use gossip_transport_quic::{ClusterCa, Validity};
//!
//! let ca = ClusterCa::generate("demo")?;
//! let validity = Validity::for_duration(Duration::from_secs(86_400));
//! let mut config = NodeConfig::new("demo", "node-1", "127.0.0.1:7946".parse()?, ca.trust());
//! config.credentials = Some(ca.issue("node-1", validity)?);
//! config.data_dir = Some("/var/lib/gossip".into());
//! // Published with the node's first announcement.
//! config.initial_keys = vec![("tokens".into(), "0,85,170".into())];
//! let (node, _events) = Node::start(config).await?;
//! node.joined().await?;
//! for member in node.members().iter() {
//!     println!("{} {} {}", member.meta.name(), member.id, member.status.as_str());
//! }
//! node.leave(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod config;
mod data_dir;
mod driver;
mod error;
mod event;
pub mod metrics;
mod node;
mod seeds;
pub mod stream;

pub use config::{NodeConfig, Preset};
pub use data_dir::{DataDir, StoredKeys};
pub use error::Error;
pub use event::{NodeEvent, NodeEvents};
pub use metrics::Metrics;
pub use node::Node;
pub use seeds::Seed;

pub use gossip_core::{
    Bytes, Key, Member, MemberMeta, MemberStatus, NodeId, RING_KEY, RingMember, RingState,
    RingStatus, RingView,
};
pub use gossip_swim::{JoinRefusal, PeerSelection, Provenance};

/// The README's examples, compiled and run as doc tests (here, in the crate
/// that depends on every other, so they may use any layer).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
