//! Authenticated QUIC transport for gossip clusters: quinn + rustls, mutual
//! TLS, with each node's identity bound to its certificate.
//!
//! * Every connection is TLS 1.3 with both sides authenticated against the
//!   cluster's CA ([`TrustBundle`]); 0-RTT is off. A peer whose certificate
//!   does not chain to the bundle, or has expired, is refused inside the
//!   handshake, before anything of ours sees it, and counted.
//! * A peer's [`NodeId`](gossip_core::NodeId) is the blake3 hash of its
//!   certificate's SubjectPublicKeyInfo ([`node_id_of`]); every [`Received`]
//!   message carries it, so upper layers know who really spoke.
//! * Small messages go as datagrams (RFC 9221) sized to the path
//!   ([`Transport::max_datagram_size`]); a larger one is an error the caller
//!   sees, never a silent drop. Anything else goes as a length-framed stream
//!   message ([`Transport::send_message`]). Once a connection is up, small
//!   datagrams to its peer go *sealed* beside QUIC on the same socket, with
//!   keys the connection's TLS session exports: exactly as authenticated,
//!   replay-protected, and acknowledged by nothing, where every QUIC
//!   datagram draws an acknowledgement packet. A [`Link`] holds one peer's
//!   connection, for a stream of datagrams without a lookup each.
//! * Connections are dialled on demand, cached per peer and address (a send
//!   to a peer at an address never reaches another process holding the
//!   peer's key elsewhere), shared between concurrent dials, kept without
//!   keep-alive traffic while idle, and resumed with TLS session tickets when
//!   re-dialled.
//! * Every received UDP datagram is screened before quinn sees it. Sealed
//!   packets are taken out and opened, or counted (`sealed_rejected`,
//!   `sealed_replayed`). Any other datagram that can be no QUIC packet for
//!   this endpoint (too short, a QUIC version other than 1, a connection id
//!   this endpoint never issued) is counted by its [`RejectedDatagram`]
//!   reason in [`TransportStats`]. quinn would drop it without counting;
//!   quinn still gets every such datagram and decides.
//! * [`ClusterCa`] makes a CA and node certificates (rcgen) and loads and
//!   saves them as PEM.
//!
//! The crate knows nothing of SWIM or sync: it moves authenticated bytes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gossip_transport_quic::Error> {
//! use std::time::Duration;
//! use gossip_transport_quic::{ClusterCa, Transport, TransportConfig, Validity};
//!
//! let ca = ClusterCa::generate("demo")?;
//! let me = ca.issue("node-1", Validity::for_duration(Duration::from_secs(86_400)))?;
//! let config = TransportConfig::new("127.0.0.1:7946".parse().unwrap());
//! let (transport, mut inbox) = Transport::bind(config, &me, &ca.trust())?;
//! transport.send_datagram(None, "127.0.0.1:7947".parse().unwrap(), b"hello"[..].into()).await?;
//! if let Some(message) = inbox.recv().await {
//!     println!("{} says {:?}", message.from, message.bytes);
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod cache;
mod certs;
mod config;
mod counters;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod framing;
mod inbox;
mod link;
mod received;
mod screen;
mod sealed;
mod shared;
mod tasks;
mod tls;
mod transport;
mod unreachable;

pub use certs::{
    ClusterCa, NodeCredentials, SERVER_NAME, TrustBundle, Validity, load_revoked, node_id_of,
    parse_revoked, server_name_of, write_private,
};
pub use config::{ALPN, TransportConfig};
pub use counters::TransportStats;
pub use error::Error;
#[cfg(feature = "fault-injection")]
pub use fault::{FaultConfig, FaultHandle, FaultySocket};
pub use framing::{FRAME_HEADER_LEN, FrameDecoder, frame_header};
pub use inbox::Inbox;
pub use link::Link;
pub use received::{Channel, Received};
pub use screen::RejectedDatagram;
pub use tls::quinn_configs;
pub use transport::Transport;
pub use unreachable::{Unreachable, UnreachableKind, UnreachableReports};
