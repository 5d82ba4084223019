//! What a node tells its subscribers.

use std::net::SocketAddr;

use bytes::Bytes;
use gossip_core::{Key, Member, NodeId, Refusal};
use gossip_swim::{JoinRefusal, Provenance};

/// A node's stream of events, as [`Node::start`](crate::Node::start) and
/// [`Node::subscribe`](crate::Node::subscribe) return it.
pub type NodeEvents = tokio::sync::broadcast::Receiver<NodeEvent>;

/// A change in the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// This node's join completed: `via` answered with its membership.
    /// [`Node::joined`](crate::Node::joined) waits for it.
    JoinCompleted {
        /// The member that let this node in.
        via: NodeId,
    },
    /// A seed refused this node's join and said why; the join goes on
    /// retrying with backoff.
    JoinRefused {
        /// Who refused.
        by: NodeId,
        /// Why.
        reason: JoinRefusal,
    },
    /// Another process answers as this node at `addr`: it holds this node's
    /// key (a copy of its data directory or certificate). Logged as an
    /// error. Found while joining, it stops this node
    /// ([`Node::joined`](crate::Node::joined) returns
    /// [`Error::IdentityInUse`](crate::Error::IdentityInUse)); found later,
    /// both keep running and the cluster keeps the address it held.
    IdentityInUse {
        /// Where the other process answers.
        addr: SocketAddr,
    },
    /// A claim would have moved the live member `member` from `held` to
    /// `claimed`, and was refused: one identity at two addresses, most
    /// likely a second process holding its key. Logged as an error.
    AddressConflict {
        /// The member.
        member: NodeId,
        /// The address it is held at, kept.
        held: Option<SocketAddr>,
        /// The address claimed, refused.
        claimed: Option<SocketAddr>,
    },
    /// A claim `from` passed on was refused: a member record, accusation or
    /// key/value write its maker did not sign, one older than held, one
    /// implausible or revoked. Nothing was applied. Logged as a warning (a
    /// stale claim, which late rumors make too, at debug); at most once per
    /// sender per 30 s for rumors, once per session for syncs.
    ClaimRefused {
        /// The authenticated peer that sent it.
        from: NodeId,
        /// Why it was refused.
        reason: Refusal,
    },
    /// A member was heard of for the first time.
    Joined(Member),
    /// A member's incarnation, name, addresses or state version changed.
    Updated(Member),
    /// A member is suspected of having failed.
    Suspected {
        /// Its record.
        member: Member,
        /// Who accused it.
        by: NodeId,
        /// This node's own health score at the time (Lifeguard; 0 is
        /// healthy, a high score means this node may be the slow one).
        local_health: u32,
    },
    /// A suspect refuted the suspicion: it is alive.
    Recovered(Member),
    /// A member was declared dead.
    Failed {
        /// Its record.
        member: Member,
        /// Who declared it, who first suspected it, how many confirmed.
        provenance: Provenance,
    },
    /// A member left on purpose.
    Left(Member),
    /// A dead or departed member came back (it restarted).
    Rejoined(Member),
    /// A departed member was forgotten.
    Removed(NodeId),
    /// A member's key changed, as this node's replica learnt it.
    KeyChanged {
        /// Whose key.
        owner: NodeId,
        /// Which key.
        key: Key,
        /// The new value; `None` if deleted.
        value: Option<Bytes>,
    },
}

impl NodeEvent {
    /// The event for a SWIM event, if subscribers should see it.
    pub(crate) fn from_swim(event: &gossip_swim::Event) -> Option<NodeEvent> {
        use gossip_swim::Event;
        Some(match event {
            Event::Joined(member) => NodeEvent::Joined(member.clone()),
            Event::Updated(member) => NodeEvent::Updated(member.clone()),
            Event::Suspected {
                member,
                by,
                local_health,
            } => NodeEvent::Suspected {
                member: member.clone(),
                by: *by,
                local_health: *local_health,
            },
            Event::Recovered(member) => NodeEvent::Recovered(member.clone()),
            Event::Failed { member, provenance } => NodeEvent::Failed {
                member: member.clone(),
                provenance: provenance.clone(),
            },
            Event::Left(member) => NodeEvent::Left(member.clone()),
            Event::Rejoined(member) => NodeEvent::Rejoined(member.clone()),
            Event::Removed(id) => NodeEvent::Removed(*id),
            Event::JoinCompleted { via } => NodeEvent::JoinCompleted { via: *via },
            Event::JoinRefused { by, reason } => NodeEvent::JoinRefused {
                by: *by,
                reason: *reason,
            },
            Event::ClaimRefused { from, reason, .. } => NodeEvent::ClaimRefused {
                from: *from,
                reason: *reason,
            },
            Event::AddressConflict {
                member,
                held,
                claimed,
                ..
            } => NodeEvent::AddressConflict {
                member: *member,
                held: *held,
                claimed: *claimed,
            },
            _ => return None,
        })
    }
}
