//! The crate's one error type.

/// What can end a sync session. On every error the session is over and the
/// local state is as it was before the offending message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message did not decode, or broke a cap.
    #[error("undecodable sync message: {0}")]
    Decode(#[from] gossip_core::Error),
    /// The peer broke the protocol: a message out of turn, a prefix out of
    /// range, more rounds or bytes than any honest sync needs.
    #[error("sync protocol violation: {0}")]
    Protocol(&'static str),
    /// The session saw no message for its idle timeout.
    #[error("sync session timed out")]
    TimedOut,
}
