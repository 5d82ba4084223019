//! One member of a cluster: SWIM failure detection ([`gossip_swim`]) and the
//! Merkle anti-entropy sync ([`gossip_antientropy`]) composed into one sans-IO
//! machine, [`Replica`].
//!
//! SWIM finds out who is alive and spreads fresh news on its probes; the
//! Merkle sync repairs whatever those rumors missed. The glue between them is
//! protocol, not IO, so it lives here, once: the reference node drives a
//! `Replica` on tokio and the simulator drives the same type on a virtual
//! clock, so what the simulator measures is what nodes run.
//!
//! The replica
//! * keeps the sync state's member records equal to SWIM's table;
//! * puts the first 8 bytes of its Merkle root on every probe, and syncs with
//!   a peer whose probe showed a different one (at most once per cooldown);
//! * syncs with a member that announces a newer state version or a rumor of
//!   a write it lacks, and with a random live member every `sync_interval`
//!   (the backstop);
//! * after joining, syncs again with the member that let it in until a few
//!   syncs in a row bring nothing new (a join storm keeps changing the table
//!   after the first one);
//! * hands SWIM the member records a sync brought, as claims relayed by the
//!   peer, so the table learns what the sync learned.
//!
//! Like the machines it holds, it never reads a clock and never touches a
//! socket: the driver passes `now` into every call, sends what
//! [`Replica::poll_transmit`] (SWIM datagrams) and [`Replica::poll_sync`]
//! (sync turns, for a reliable stream) return, and calls
//! [`Replica::handle_timeout`] at [`Replica::poll_timeout`].
//!
//! # Example
//!
//! Two replicas on a perfect network, stepped 10 ms at a time: one joins
//! through the other, which writes a key; the key reaches the joiner.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! use gossip_member::{Replica, ReplicaConfig, StoredKeys};
//! use gossip_core::{ClusterId, Incarnation, MemberMeta, NodeKey, Timestamp};
//! use gossip_swim::{Config, Swim};
//!
//! # fn main() -> Result<(), gossip_core::Error> {
//! let cluster = ClusterId::from_name("example");
//! let addrs = [
//!     SocketAddr::from(([10, 0, 0, 1], 7946)),
//!     SocketAddr::from(([10, 0, 0, 2], 7946)),
//! ];
//! // Each node's key (in the node, the key of its certificate).
//! let keys = [NodeKey::from_secret_bytes(&[1; 32]), NodeKey::from_secret_bytes(&[2; 32])];
//! let ids = [keys[0].id(), keys[1].id()];
//! let mut nodes = Vec::new();
//! for (i, (key, addr)) in keys.into_iter().zip(addrs).enumerate() {
//!     let meta = MemberMeta::new(format!("n{i}"), [addr]);
//!     let swim = Swim::new(Config::lan(cluster, 2), key, meta, Incarnation::ZERO, Timestamp::ZERO);
//!     nodes.push(Replica::new(ReplicaConfig::new(cluster), swim, StoredKeys::default(), Timestamp::ZERO)?);
//! }
//! nodes[1].join(Timestamp::ZERO, vec![addrs[0]]);
//! nodes[0].set(Timestamp::ZERO, "role", "leader")?;
//!
//! let mut now = Timestamp::ZERO;
//! for _ in 0..200 {
//!     for (from, to) in [(0, 1), (1, 0)] {
//!         // What one sends, the other receives, from the authenticated sender.
//!         while let Some(datagram) = nodes[from].poll_transmit() {
//!             let _ = nodes[to].handle_datagram(now, ids[from], addrs[from], &datagram.payload);
//!         }
//!         while let Some(turn) = nodes[from].poll_sync() {
//!             let parts = turn.parts.iter().map(Vec::as_slice);
//!             nodes[to].handle_sync(now, ids[from], addrs[from], turn.role, turn.id, parts);
//!         }
//!         while nodes[from].poll_event().is_some() {}
//!     }
//!     now = now + Duration::from_millis(10);
//!     for node in &mut nodes {
//!         if node.poll_timeout() <= now {
//!             node.handle_timeout(now);
//!         }
//!     }
//! }
//! let role = nodes[1].state().kv().get(&ids[0], "role");
//! assert_eq!(role.map(|v| &v[..]), Some(&b"leader"[..]));
//! assert_eq!(nodes[0].state().root(), nodes[1].state().root());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod replica;

pub use replica::{
    Replica, ReplicaConfig, ReplicaEvent, Role, StoredKeys, SyncStats, SyncTransmit,
};

/// What a [`ReplicaEvent::SyncEnded`] reports, from the sync it runs.
pub use gossip_antientropy::{Error as SyncError, SessionStats};
