//! The crate's errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use gossip_core::NodeId;

/// Why a node could not start or a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work; the message names the fix.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The advertised address is one no peer can reach.
    #[error(
        "the advertise address {0} is unspecified: peers cannot reach it; set `advertise` to this node's reachable address"
    )]
    UnspecifiedAdvertise(SocketAddr),
    /// The data directory could not be read or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process runs a node on the data directory (a second live
    /// instance of one identity is never what anyone wants).
    #[error(
        "data directory {path} is in use by another running node; stop it first, or give this node its own data directory"
    )]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
    },
    /// The data directory holds another node's identity.
    #[error(
        "data directory {path} belongs to node {stored}, but the configured certificate is node {configured}'s; use that node's certificate or another data directory"
    )]
    IdentityMismatch {
        /// The data directory.
        path: PathBuf,
        /// The id stored there.
        stored: NodeId,
        /// The id of the configured credentials.
        configured: NodeId,
    },
    /// What the data directory kept cannot be taken up: its incarnation is
    /// exhausted, or a stored key is over the configured limits.
    #[error("data directory {path}: the stored state cannot be used: {source}")]
    StoredState {
        /// The data directory.
        path: PathBuf,
        /// What the state refused.
        #[source]
        source: gossip_core::Error,
    },
    /// No credentials were configured and the data directory holds none.
    #[error(
        "no certificate: configure `credentials`, or a `data_dir` that holds node.crt and node.key"
    )]
    NoCredentials,
    /// The transport failed (bind, TLS, certificates).
    #[error(transparent)]
    Transport(#[from] gossip_transport_quic::Error),
    /// A key/value write was refused (over a cap).
    #[error(transparent)]
    Refused(#[from] gossip_core::Error),
    /// Another process answers as this node at `addr`: it holds this node's
    /// key. Found while joining, so this node stopped rather than run as a
    /// second instance.
    #[error(
        "another process holds this node's identity ({id}) and answers at {addr}; this node stopped rather than run twice. Stop the other process, or give this node its own certificate and data directory (was one copied?)"
    )]
    IdentityInUse {
        /// This node's id.
        id: NodeId,
        /// Where the other process answers.
        addr: SocketAddr,
    },
    /// The node has stopped; the handle can do nothing more.
    #[error("the node has stopped")]
    Stopped,
    /// `leave` did not complete in time; the node stopped anyway.
    #[error("the leave announcement did not complete in time")]
    LeaveTimedOut,
}
