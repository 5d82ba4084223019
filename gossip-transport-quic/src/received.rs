//! What the application receives: a message tagged with its authenticated
//! sender.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use gossip_core::NodeId;

/// How a message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An unreliable datagram.
    Datagram,
    /// A framed message on a stream.
    Stream,
}

/// A message from an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender, as its certificate proves.
    pub from: NodeId,
    /// The sender's address.
    pub addr: SocketAddr,
    /// How it arrived.
    pub channel: Channel,
    /// The message.
    pub bytes: Bytes,
    /// When the transport took it off the wire: a sealed datagram when it
    /// was opened, a stream message when its frame was read, a
    /// connection's datagram when the inbox read it from the connection.
    /// The time it then waits before being handled is the receiver's input
    /// lag.
    pub arrived: Instant,
}

/// The transport's monotonic clock: the one place it is read (the sealed channel's
/// key refresh and notice budget, and when a message arrived).
#[allow(
    clippy::disallowed_methods,
    reason = "IO crate: the transport's timing is its own"
)]
pub(crate) fn clock() -> Instant {
    Instant::now()
}
