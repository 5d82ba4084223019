//! The crate's one error type.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gossip_core::NodeId;

/// What can go wrong in the transport. Nothing here panics on peer input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate, key or trust bundle is missing, malformed or unusable.
    #[error("certificate error: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built from the credentials.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The UDP socket could not be bound (for example, the port is in use).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Dialling failed: the peer is unreachable, refused our certificate, or
    /// presented one we do not trust.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer at the address is not the node we meant to reach.
    #[error("{addr} is {actual}, not the expected {expected}")]
    UnexpectedPeer {
        /// Where.
        addr: SocketAddr,
        /// Who we meant to reach.
        expected: NodeId,
        /// Who answered.
        actual: NodeId,
    },
    /// The datagram is larger than the connection can carry now. Nothing was
    /// sent; send it on a stream instead.
    #[error("datagram of {len} bytes exceeds the {max}-byte limit of this path")]
    DatagramTooLarge {
        /// The datagram's size.
        len: usize,
        /// The usable size now.
        max: usize,
    },
    /// A stream message is larger than the frame cap.
    #[error("message of {len} bytes exceeds the {max}-byte frame cap")]
    FrameTooLarge {
        /// The message's size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A stream ended inside a frame.
    #[error("stream ended inside a frame: {received} of {expected:?} bytes")]
    TruncatedFrame {
        /// The announced length, if the header was complete.
        expected: Option<usize>,
        /// Body bytes received.
        received: usize,
    },
    /// The connection failed while sending.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// No async runtime to run the endpoint on: [`Transport::bind`](crate::Transport::bind)
    /// was called outside a tokio runtime. Nothing was bound.
    #[error("no async runtime: bind the transport from within a tokio runtime")]
    NoRuntime,
    /// The transport has been closed.
    #[error("the transport is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
