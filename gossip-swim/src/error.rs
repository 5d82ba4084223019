//! The crate's one error type.

use gossip_core::NodeId;

/// What can go wrong when feeding the machine. Every variant leaves the
/// machine's state unchanged (apart from the counter that records it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The datagram did not decode: garbage, truncated, oversized, another
    /// cluster's or another version's. Counted in
    /// [`Stats::decode_errors`](crate::Stats::decode_errors) and more
    /// precisely by its kind.
    #[error("undecodable datagram from {from}: {source}")]
    Decode {
        /// The authenticated sender.
        from: NodeId,
        /// Why.
        #[source]
        source: gossip_core::Error,
    },
    /// A ping meant for another node. Counted in
    /// [`Stats::misdirected`](crate::Stats::misdirected).
    #[error("ping from {from} meant for {target}")]
    Misdirected {
        /// The sender.
        from: NodeId,
        /// The tag of the node the ping was for.
        target: crate::TargetTag,
    },
    /// The local node's incarnation cannot be raised any further.
    #[error(transparent)]
    Core(#[from] gossip_core::Error),
}
