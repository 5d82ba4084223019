//! What the application receives: a message tagged with its authenticated
//! sender.

use std::net::SocketAddr;

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
}
