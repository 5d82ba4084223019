//! What the machine tells its driver.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_core::{Entry, Incarnation, Member, NodeId, Refusal};

use crate::message::JoinRefusal;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The node it is for, when known (a seed's id is not, until it answers):
    /// the transport should check that the peer at `addr` is this node.
    pub to: Option<NodeId>,
    /// Where to send it.
    pub addr: SocketAddr,
    /// The encoded frame.
    pub payload: Vec<u8>,
    /// A push of news (rumors only, addressed to no one in particular): any
    /// live member may take it in place of `to`. A driver whose transport
    /// charges for a new peer (a handshake) may send it to a member it
    /// already talks to instead.
    pub push: bool,
    /// Send it over a reliable channel (a stream that retransmits what is
    /// lost), not as a datagram: the fallback probe and its answer (see
    /// [`Config::fallback_probe`](crate::Config::fallback_probe)).
    pub reliable: bool,
}

/// Why a member is believed failed, so an operator can answer "why was X
/// declared dead".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Who made the claim that reached this node (the local node when its own
    /// suspicion timed out).
    pub declared_by: NodeId,
    /// The first accuser of the suspicion this node saw, if it saw one.
    pub suspected_by: Option<NodeId>,
    /// Independent confirmations of the suspicion received before the end.
    pub confirmations: u32,
    /// The local node's health score (Lifeguard) at the time: 0 is healthy;
    /// a high score means this node itself may be the slow one.
    pub local_health: u32,
}

/// Something the driver (and through it, the user) should know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A member was heard of for the first time.
    Joined(Member),
    /// A member's incarnation, metadata or state version changed.
    Updated(Member),
    /// A member is suspected of having failed.
    Suspected {
        /// Its record.
        member: Member,
        /// Who accused it.
        by: NodeId,
        /// The local health score at the time.
        local_health: u32,
    },
    /// A suspect refuted the suspicion.
    Recovered(Member),
    /// A member was declared dead.
    Failed {
        /// Its record.
        member: Member,
        /// Why.
        provenance: Provenance,
    },
    /// A member left on purpose.
    Left(Member),
    /// A dead or departed member came back with a higher incarnation.
    Rejoined(Member),
    /// A departed member was forgotten after the departed horizon.
    Removed(NodeId),
    /// The local node's timers ran a probe period or more late: it was
    /// stalled (a pause, a starved process, a suspended host). It raised
    /// its incarnation and spread its alive record, refuting any suspicion
    /// its silence drew, and holds back its own declarations for a while.
    BackFromStall {
        /// How far behind its timers were.
        behind: Duration,
        /// The new local incarnation.
        incarnation: Incarnation,
    },
    /// Someone accused the local node; it refuted by raising its incarnation.
    Refuted {
        /// The new local incarnation.
        incarnation: Incarnation,
        /// The accuser.
        accused_by: NodeId,
    },
    /// A seed refused this node's join and said why; the join goes on
    /// retrying with backoff.
    JoinRefused {
        /// Who refused.
        by: NodeId,
        /// Why.
        reason: JoinRefusal,
    },
    /// This node refused to take `member` into its table, and told it why.
    JoinerRefused {
        /// The member refused.
        member: NodeId,
        /// Where it asked from.
        addr: SocketAddr,
        /// Why.
        reason: JoinRefusal,
    },
    /// A live record of this node at another address than its own: an
    /// earlier life that peers still hold, or a second process holding this
    /// node's key. Nothing was applied (and a claim above this node's
    /// incarnation was refuted); the driver should find out which, by
    /// checking whether `addr` answers as this node. Reported at most once
    /// per 30 s; [`Stats::claims_elsewhere`](crate::Stats::claims_elsewhere)
    /// counts every one.
    ClaimedElsewhere {
        /// The other address.
        addr: SocketAddr,
        /// The incarnation claimed there.
        incarnation: Incarnation,
    },
    /// A claim would have moved a live member to another address, and was
    /// refused: one identity at two addresses. Reported at most once per
    /// member per 30 s; [`Stats::address_conflicts`](crate::Stats::address_conflicts)
    /// counts every one.
    AddressConflict {
        /// The member.
        member: NodeId,
        /// The address held for it, kept.
        held: Option<SocketAddr>,
        /// The address claimed, refused.
        claimed: Option<SocketAddr>,
        /// Who made the claim.
        origin: NodeId,
    },
    /// A claim that `from` passed on was refused: not signed by whom it must
    /// be, older than held, implausible, by or about a revoked node, or over
    /// a cap. Nothing was applied. Reported at most once per sender per 30 s;
    /// [`Stats::refused`](crate::Stats::refused) counts every one by reason.
    ClaimRefused {
        /// The authenticated peer that sent it (not necessarily its maker).
        from: NodeId,
        /// Whom the claim was about.
        subject: NodeId,
        /// Why it was refused.
        reason: Refusal,
        /// The refusal, in words.
        error: gossip_core::Error,
    },
    /// A seed or reconnect target answered: this node is part of a cluster.
    JoinCompleted {
        /// Who answered.
        via: NodeId,
    },
    /// A key/value write arrived as a rumor, signed by its owner (checked),
    /// for the driver: it may fetch the owner's state, whose signature
    /// covers every write, from `from`.
    StateRumor {
        /// Whose state.
        owner: NodeId,
        /// The write.
        entry: Entry,
        /// Who passed it on.
        from: NodeId,
    },
    /// A peer's ping carried a state digest different from the local one
    /// (see [`Swim::set_state_digest`](crate::Swim::set_state_digest)): the
    /// driver should reconcile with it.
    StateDigestDiffers {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// The leave announcement has been sent its budget (or timed out): the
    /// driver can shut down.
    LeaveCompleted,
}
