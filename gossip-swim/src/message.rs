//! What SWIM nodes say to each other.

use std::net::SocketAddr;

use gossip_core::{Incarnation, Member, NodeId};
use serde::{Deserialize, Serialize};

/// An opaque digest of the driver's replicated state (for example a Merkle
/// root cut to 8 bytes). SWIM only carries and compares it: equal digests
/// mean "nothing to reconcile", and a rare false equality is caught by the
/// driver's periodic backstop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDigest(pub [u8; 8]);

/// Whom a ping is for: 8 bytes of a hash of the target's id and the
/// address it is probed at. A node answers only pings for itself at its own
/// address: not one whose sender meant another node (its address was
/// reused), nor one meant for its identity at another address (an earlier
/// life, or a second process holding its key, that the transport's
/// connection for the id happened to reach). Identity itself is the
/// transport's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetTag(pub [u8; 8]);

impl TargetTag {
    /// The tag of `id` probed at `addr`.
    pub fn of(id: &NodeId, addr: SocketAddr) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(id.as_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => hasher.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => hasher.update(&ip.octets()),
        };
        hasher.update(&addr.port().to_be_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        TargetTag(tag)
    }
}

impl std::fmt::Display for TargetTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// SWIM's messages: the body of every SWIM frame, which may also carry
/// piggybacked rumors. A frame names no sender: the sender is the peer the
/// driver's transport authenticated, passed to
/// [`Swim::handle_datagram`](crate::Swim::handle_datagram), so there is no
/// claim to forge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// A probe of `target`, answered with an [`Ack`](Message::Ack).
    Ping {
        /// Matches the ack to the probe.
        seq: u32,
        /// Who the probe is for; a node that is not `target` drops it (the
        /// address may have been reused by another node).
        target: TargetTag,
        /// Lifeguard's buddy system: the prober's record of the target when
        /// it suspects it, so the target can refute at once.
        suspicion: Option<Member>,
        /// The prober's digest of its replicated state (see
        /// [`Swim::set_state_digest`](crate::Swim::set_state_digest)), so the
        /// target can tell whether a sync is due without asking.
        state_digest: Option<StateDigest>,
    },
    /// The fallback probe: a ping sent over a reliable channel (the driver
    /// sends it on a stream, which retransmits what is lost) when a direct
    /// ack is overdue, answered with an [`Ack`](Message::Ack) over the same
    /// kind of channel. Loss alone then does not make a live member suspect.
    /// memberlist's TCP fallback ping.
    ReliablePing {
        /// Matches the ack to the probe.
        seq: u32,
        /// Who the probe is for, as on a [`Ping`](Message::Ping).
        target: TargetTag,
    },
    /// The answer to a ping; for an indirect probe, relayed by the helper.
    Ack {
        /// The probe's sequence number.
        seq: u32,
    },
    /// Asks the receiver to probe `target` on the sender's behalf.
    PingReq {
        /// The requester's sequence number, echoed in the relayed ack or nack.
        seq: u32,
        /// Who to probe.
        target: NodeId,
        /// Where the requester believes the target is.
        target_addr: SocketAddr,
    },
    /// Lifeguard: the helper of an indirect probe heard nothing from the
    /// target. Tells the requester that the helper, at least, is reachable.
    Nack {
        /// The requester's sequence number.
        seq: u32,
    },
    /// Rumors, pushed at once when there is news, with the sender's state
    /// digest (as on a ping).
    Gossip {
        /// The sender's digest of its replicated state.
        state_digest: Option<StateDigest>,
    },
    /// Push-pull of membership: the sender's records (its own first). A
    /// request is answered with the receiver's records.
    PushPull {
        /// `true` for the answer to a request.
        reply: bool,
        /// Member records; one table may span several messages.
        members: Vec<Member>,
    },
    /// The answer to a push-pull whose sender could not be taken into the
    /// table: the sender is told why instead of being left to wonder.
    JoinRefused {
        /// Why.
        reason: JoinRefusal,
    },
}

/// Why a member refused to take a joiner into its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// The refusing member's table holds as many members as its limits
    /// allow (departed ones count until they are forgotten).
    TableFull {
        /// The refusing member's cap.
        max_members: u64,
    },
    /// The joiner's identity is alive at another address in the refusing
    /// member's table: a second process holding the same key, or an earlier
    /// life not yet known to be gone. The joiner retries; it is taken in once
    /// the other address is known dead or gone.
    IdentityInUse {
        /// Where the identity is held alive.
        addr: SocketAddr,
        /// At what incarnation.
        incarnation: Incarnation,
    },
}

impl std::fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinRefusal::TableFull { max_members } => write!(
                f,
                "its member table is full ({max_members} members, departed ones included until forgotten)"
            ),
            JoinRefusal::IdentityInUse { addr, incarnation } => write!(
                f,
                "it holds this node's identity alive at {addr} (incarnation {incarnation}): another process with this node's key, or an earlier life not yet known to be gone"
            ),
        }
    }
}

impl Message {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::ReliablePing { .. } => "reliable-ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping-req",
            Message::Nack { .. } => "nack",
            Message::Gossip { .. } => "gossip",
            Message::PushPull { .. } => "push-pull",
            Message::JoinRefused { .. } => "join-refused",
        }
    }
}
