//! Caps on everything that arrives from the network.

/// Caps applied to decoded input and to local writes. Anything over a cap is an
/// [`Error::LimitExceeded`](crate::Error::LimitExceeded), never a panic or an
/// unbounded allocation.
///
/// The defaults suit clusters of up to about 100,000 members with modest
/// per-node metadata. Raise a cap only with a reason: each one bounds memory or
/// bandwidth that a single misbehaving peer could otherwise consume.
///
/// ```
/// use gossip_core::Limits;
/// let mut limits = Limits::default();
/// limits.max_value_bytes = 4096;
/// assert_eq!(limits.max_frame_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame decoded or encoded, in bytes. Default 64 KiB: datagrams
    /// are far smaller, and larger transfers are split into several frames.
    pub max_frame_bytes: usize,
    /// Most rumors piggybacked on one frame. Default 256.
    pub max_rumors_per_frame: usize,
    /// Most advertised addresses per member. Default 8.
    pub max_addrs_per_member: usize,
    /// Longest member name in bytes. Default 128.
    pub max_name_bytes: usize,
    /// Longest key in bytes. Default 256.
    pub max_key_bytes: usize,
    /// Longest value in bytes. Default 16 KiB: gossip is for small state.
    pub max_value_bytes: usize,
    /// Most keys held for one node, tombstones included. Default 1,024.
    pub max_keys_per_node: usize,
    /// Most members in the table, departed ones included until collected.
    /// Default 100,000.
    pub max_members: usize,
    /// Largest accepted jump of a member's incarnation over the known one.
    /// Default 2^32: far beyond any honest run of refutations, far below the
    /// 2^63 range, so a forged claim cannot exhaust the counter.
    pub max_incarnation_jump: u64,
    /// Largest accepted jump of an owner's key/value version over the one
    /// held (0 for an owner not yet held), in a delta about any owner, this
    /// node included. Default 2^32: more writes than an owner makes between
    /// two syncs, far below the 2^64 range, so a forged delta cannot
    /// exhaust an owner's versions.
    pub max_version_jump: u64,
    /// Most rumors queued for piggybacking; past it the most-sent rumor of the
    /// data lane is dropped first, then of the membership lane. Default 65,536.
    pub max_queued_rumors: usize,
    /// Largest encoded rumor in bytes. Default 32 KiB.
    pub max_rumor_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_rumors_per_frame: 256,
            max_addrs_per_member: 8,
            max_name_bytes: 128,
            max_key_bytes: 256,
            max_value_bytes: 16 * 1024,
            max_keys_per_node: 1024,
            max_members: 100_000,
            max_incarnation_jump: 1 << 32,
            max_version_jump: 1 << 32,
            max_queued_rumors: 65_536,
            max_rumor_bytes: 32 * 1024,
        }
    }
}
