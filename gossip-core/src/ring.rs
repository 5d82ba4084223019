//! Cassandra's ring state as typed application state: each node publishes
//! its status in the ring, its load and its tokens under one key, and every
//! node builds the same token ring from the members it holds alive.
//!
//! The state rides the node's own signed keys like any other write, so only
//! the node itself can say where it sits in the ring.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::id::NodeId;
use crate::member::MemberStatus;

/// The key a node's [`RingState`] is published under.
pub const RING_KEY: &str = "ring";

/// Most tokens one node may publish: Cassandra's default is 16 per node and
/// its historical one 256.
pub const MAX_TOKENS: usize = 1024;

/// Where a node stands in the ring, as Cassandra's `STATUS` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RingStatus {
    /// Taking its ranges over (bootstrapping): it owns none yet.
    Joining,
    /// Owning its tokens' ranges.
    Normal,
    /// Handing its ranges over before it leaves: it owns them until it has
    /// left.
    Leaving,
    /// Owning new tokens after a move.
    Moved,
}

impl RingStatus {
    /// The status as it is written: `joining`, `normal`, `leaving`, `moved`.
    pub fn as_str(self) -> &'static str {
        match self {
            RingStatus::Joining => "joining",
            RingStatus::Normal => "normal",
            RingStatus::Leaving => "leaving",
            RingStatus::Moved => "moved",
        }
    }

    /// `true` if a node in this status owns its tokens' ranges.
    pub fn owns_ranges(self) -> bool {
        !matches!(self, RingStatus::Joining)
    }
}

impl FromStr for RingStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "joining" => Ok(RingStatus::Joining),
            "normal" => Ok(RingStatus::Normal),
            "leaving" => Ok(RingStatus::Leaving),
            "moved" => Ok(RingStatus::Moved),
            other => Err(Error::ParseRingState {
                reason: format!("status `{other}`: use joining, normal, leaving or moved"),
            }),
        }
    }
}

/// One node's ring state: its status, its load (bytes of data it holds, as
/// Cassandra's `LOAD`) and its tokens (positions on a ring of `u64`).
///
/// Written as one line of text, so that `gossip-node kv get` shows it:
///
/// ```
/// use gossip_core::{RingState, RingStatus};
/// let state = RingState { status: RingStatus::Normal, load: 1024, tokens: vec![7, 3] };
/// let text = state.to_string();
/// assert_eq!(text, "normal load=1024 tokens=3,7");
/// assert_eq!(text.parse::<RingState>()?, RingState { tokens: vec![3, 7], ..state });
/// # Ok::<(), gossip_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingState {
    /// Where the node stands in the ring.
    pub status: RingStatus,
    /// Bytes of data the node holds.
    pub load: u64,
    /// The node's positions on the ring, sorted and without repeats once
    /// written.
    pub tokens: Vec<u64>,
}

impl fmt::Display for RingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tokens = self.tokens.clone();
        tokens.sort_unstable();
        tokens.dedup();
        let tokens: Vec<String> = tokens.iter().map(u64::to_string).collect();
        write!(
            f,
            "{} load={} tokens={}",
            self.status.as_str(),
            self.load,
            tokens.join(",")
        )
    }
}

impl FromStr for RingState {
    type Err = Error;

    /// Parses what [`Display`](fmt::Display) writes; refuses anything else,
    /// and more than [`MAX_TOKENS`] tokens.
    fn from_str(text: &str) -> Result<Self, Error> {
        let malformed = |what: &str| Error::ParseRingState {
            reason: what.to_string(),
        };
        let mut parts = text.split(' ');
        let status = parts.next().unwrap_or_default().parse()?;
        let load = parts
            .next()
            .and_then(|p| p.strip_prefix("load="))
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| malformed("no `load=<bytes>`"))?;
        let tokens_text = parts
            .next()
            .and_then(|p| p.strip_prefix("tokens="))
            .ok_or_else(|| malformed("no `tokens=`"))?;
        if parts.next().is_some() {
            return Err(malformed("more than status, load and tokens"));
        }
        let mut tokens = Vec::new();
        for token in tokens_text.split(',').filter(|t| !t.is_empty()) {
            if tokens.len() == MAX_TOKENS {
                return Err(malformed("more tokens than MAX_TOKENS"));
            }
            tokens.push(
                token
                    .parse()
                    .map_err(|_| malformed("a token is not a u64"))?,
            );
        }
        tokens.sort_unstable();
        tokens.dedup();
        Ok(RingState {
            status,
            load,
            tokens,
        })
    }
}

/// A member as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    /// The member.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its membership status.
    pub member_status: MemberStatus,
    /// Its ring state, if it published one that parses.
    pub state: Option<RingState>,
}

/// The token ring as one node sees it: every token of every member that is
/// alive or suspect and whose ring status owns ranges. A member declared
/// dead, or that left, owns nothing, and neither does one still joining;
/// so the ring follows joins, leaves and deaths as membership does.
///
/// Nodes that hold the same members and ring states build the same ring.
/// Two members claiming one token: the lower id owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingView {
    tokens: BTreeMap<u64, NodeId>,
    members: Vec<RingMember>,
}

impl RingView {
    /// The ring of `members`.
    pub fn new(members: impl IntoIterator<Item = RingMember>) -> Self {
        let mut members: Vec<RingMember> = members.into_iter().collect();
        members.sort_by_key(|member| member.id);
        let mut tokens = BTreeMap::new();
        for member in &members {
            let owns = matches!(
                member.member_status,
                MemberStatus::Alive | MemberStatus::Suspect
            );
            match &member.state {
                Some(state) if owns && state.status.owns_ranges() => {
                    for token in &state.tokens {
                        tokens.entry(*token).or_insert(member.id);
                    }
                }
                _ => {}
            }
        }
        RingView { tokens, members }
    }

    /// Every member the ring was built from, in id order.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    /// Number of tokens in the ring.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// `true` if no member owns a token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The owner of `position`: the member with the first token at or after
    /// it, wrapping round.
    pub fn owner(&self, position: u64) -> Option<NodeId> {
        self.tokens
            .range(position..)
            .next()
            .or_else(|| self.tokens.iter().next())
            .map(|(_, owner)| *owner)
    }

    /// Up to `replicas` distinct owners of `position`, walking the ring
    /// clockwise from it (Cassandra's simple replication strategy).
    pub fn replicas(&self, position: u64, replicas: usize) -> Vec<NodeId> {
        let mut found = Vec::with_capacity(replicas);
        let walk = self
            .tokens
            .range(position..)
            .chain(self.tokens.range(..position));
        for (_, owner) in walk {
            if found.len() == replicas {
                break;
            }
            if !found.contains(owner) {
                found.push(*owner);
            }
        }
        found
    }

    /// The share of the ring (0 to 1) each owning member holds: the lengths
    /// of the ranges that end at its tokens.
    pub fn shares(&self) -> BTreeMap<NodeId, f64> {
        let mut shares = BTreeMap::new();
        let Some((&first, _)) = self.tokens.iter().next() else {
            return shares;
        };
        let mut previous = self.tokens.keys().next_back().copied().unwrap_or(first);
        for (&token, owner) in &self.tokens {
            let range = token.wrapping_sub(previous);
            // One token alone owns the whole ring.
            let range = if self.tokens.len() == 1 {
                u64::MAX
            } else {
                range
            };
            *shares.entry(*owner).or_insert(0.0) += range as f64 / u64::MAX as f64;
            previous = token;
        }
        shares
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, status: MemberStatus, state: Option<RingState>) -> RingMember {
        RingMember {
            id: NodeId::from_bytes([n; 32]),
            name: format!("n{n}"),
            member_status: status,
            state,
        }
    }

    fn normal(tokens: &[u64]) -> Option<RingState> {
        Some(RingState {
            status: RingStatus::Normal,
            load: 0,
            tokens: tokens.to_vec(),
        })
    }

    #[test]
    fn states_round_trip_and_bad_text_is_refused() {
        for status in [
            RingStatus::Joining,
            RingStatus::Normal,
            RingStatus::Leaving,
            RingStatus::Moved,
        ] {
            let state = RingState {
                status,
                load: 5,
                tokens: vec![1, u64::MAX],
            };
            assert_eq!(state.to_string().parse::<RingState>(), Ok(state));
        }
        for bad in [
            "",
            "normal",
            "normal load=x tokens=1",
            "normal load=1 tokens=a",
            "normal load=1 tokens=1 extra",
            "resting load=1 tokens=1",
        ] {
            assert!(bad.parse::<RingState>().is_err(), "{bad}");
        }
        let too_many: Vec<String> = (0..=MAX_TOKENS).map(|t| t.to_string()).collect();
        let text = format!("normal load=0 tokens={}", too_many.join(","));
        assert!(text.parse::<RingState>().is_err());
    }

    #[test]
    fn the_ring_follows_joins_leaves_and_deaths() {
        let ring = RingView::new([
            member(1, MemberStatus::Alive, normal(&[100, 300])),
            member(2, MemberStatus::Alive, normal(&[200])),
            member(3, MemberStatus::Dead, normal(&[250])),
            member(4, MemberStatus::Alive, None),
            member(
                5,
                MemberStatus::Alive,
                Some(RingState {
                    status: RingStatus::Joining,
                    load: 0,
                    tokens: vec![150],
                }),
            ),
        ]);
        let id = |n: u8| NodeId::from_bytes([n; 32]);
        assert_eq!(ring.len(), 3, "the dead and the joining own nothing");
        assert_eq!(ring.owner(150), Some(id(2)));
        assert_eq!(ring.owner(250), Some(id(1)));
        assert_eq!(ring.owner(301), Some(id(1)), "wraps round");
        assert_eq!(ring.replicas(150, 2), vec![id(2), id(1)]);
        assert_eq!(ring.replicas(150, 5).len(), 2, "no more than the owners");
        let shares = ring.shares();
        let total: f64 = shares.values().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!(RingView::new([]).owner(5).is_none());
    }
}
