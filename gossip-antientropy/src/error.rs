//! The crate's one error type.

/// What can end a sync session. On every error the session is over and the
/// local state is as it was before the offending message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message did not decode: garbage, truncated, oversized, another
    /// cluster's or another version's.
    #[error("undecodable sync message: {0}")]
    Decode(gossip_core::Error),
    /// The message decoded, but its records or writes were refused (over a
    /// cap, inconsistent versions). None of the message was applied.
    #[error("sync message refused: {0}")]
    Refused(gossip_core::Error),
    /// The peer broke the protocol: a message out of turn, a prefix out of
    /// range, more rounds or bytes than any honest sync needs.
    #[error("sync protocol violation: {0}")]
    Protocol(&'static str),
    /// The session saw no message for its idle timeout.
    #[error("sync session timed out")]
    TimedOut,
    /// The peer refused the session: it was running as many as it allows.
    /// Nothing was exchanged; a later sync, or one with another peer, will do.
    #[error("sync refused: the peer is running as many sessions as it allows")]
    Busy,
}
