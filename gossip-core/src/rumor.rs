//! Rumors and the queue that piggybacks them on outgoing messages.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Limited};
use crate::id::ClusterId;
use crate::id::NodeId;
use crate::kv::{Entry, Key};
use crate::limits::Limits;
use crate::member::{Member, MemberStatus};
use crate::proof::{ClaimDigest, ClaimKind, NodeKey, Signature, claim_digest, verify};
use crate::wire::varint_len;

/// A piece of news spread by piggybacking on protocol messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rumor {
    /// A membership claim: alive, suspect, dead, left or a refutation. Who
    /// made it is in its proof ([`Member::origin`]).
    Member {
        /// The claim.
        member: Member,
    },
    /// A write to a node's key/value state, signed by the node.
    State {
        /// Whose state.
        owner: NodeId,
        /// The write.
        entry: Entry,
        /// The owner's signature over the write ([`Rumor::state`]).
        signature: Signature,
    },
}

/// The two lanes of the [`RumorQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Membership claims. Always packed first, so user data can never starve
    /// failure detection.
    Membership,
    /// Key/value writes: whatever room the membership lane leaves.
    Data,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Membership => 0,
            Lane::Data => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Member(NodeId),
    Key(NodeId, Key),
}

fn write_digest(cluster: ClusterId, owner: &NodeId, entry: &Entry) -> ClaimDigest {
    claim_digest(ClaimKind::Write, cluster, &(owner, entry))
}

impl Rumor {
    /// A rumor of the holder of `key`'s own `entry`, signed for `cluster`.
    pub fn state(key: &NodeKey, cluster: ClusterId, entry: Entry) -> Rumor {
        let owner = key.id();
        let signature = key.sign(&write_digest(cluster, &owner, &entry));
        Rumor::State {
            owner,
            entry,
            signature,
        }
    }

    /// Checks the rumor's signatures for `cluster`: a membership claim's (see
    /// [`Member::verify`]), or the owner's over a write.
    ///
    /// # Errors
    ///
    /// [`Error::BadSignature`].
    pub fn verify(&self, cluster: ClusterId) -> Result<(), Error> {
        match self {
            Rumor::Member { member } => member.verify(cluster),
            Rumor::State {
                owner,
                entry,
                signature,
            } => {
                if verify(owner, &write_digest(cluster, owner, entry), signature) {
                    Ok(())
                } else {
                    Err(Error::BadSignature {
                        subject: *owner,
                        signer: *owner,
                        claim: "a key/value write",
                    })
                }
            }
        }
    }

    /// Which lane the rumor travels in.
    pub fn lane(&self) -> Lane {
        match self {
            Rumor::Member { .. } => Lane::Membership,
            Rumor::State { .. } => Lane::Data,
        }
    }

    fn subject(&self) -> Subject {
        match self {
            Rumor::Member { member } => Subject::Member(member.id),
            Rumor::State { owner, entry, .. } => Subject::Key(*owner, entry.key.clone()),
        }
    }

    /// `true` if this rumor carries newer news than `older` about the same subject.
    fn is_newer_than(&self, older: &Rumor) -> bool {
        match (self, older) {
            (Rumor::Member { member: new }, Rumor::Member { member: old }) => {
                let same_claim = !new.overrides(old) && !old.overrides(new);
                new.overrides(old)
                    || (same_claim && new.state_version > old.state_version)
                    // Another accuser's suspicion is an independent
                    // confirmation (Lifeguard): it travels in place of the
                    // one already queued.
                    || (same_claim
                        && new.status == MemberStatus::Suspect
                        && new.origin() != old.origin())
            }
            (Rumor::State { entry: new, .. }, Rumor::State { entry: old, .. }) => {
                new.version > old.version
            }
            _ => false,
        }
    }

    /// Checks the rumor against `limits`.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] for oversized metadata, keys or values.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        match self {
            Rumor::Member { member } => member.validate(limits),
            Rumor::State { entry, .. } => {
                Error::check(
                    Limited::KeyBytes,
                    entry.key.as_str().len(),
                    limits.max_key_bytes,
                )?;
                let len = entry.value.as_ref().map_or(0, |v| v.len());
                Error::check(Limited::ValueBytes, len, limits.max_value_bytes)
            }
        }
    }
}

/// Rumors packed for one frame: their count and their concatenated encodings,
/// ready for [`encode_frame`](crate::encode_frame).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedRumors {
    count: usize,
    bytes: Vec<u8>,
}

impl PackedRumors {
    /// No rumors.
    pub fn empty() -> Self {
        Self::default()
    }

    /// `rumor` alone, for a frame that must carry it whatever the queue
    /// holds; no rumors if it does not encode.
    pub fn one(rumor: &Rumor) -> Self {
        let mut packed = Self::default();
        packed.push(rumor);
        packed
    }

    /// How many rumors.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The rumors' concatenated encodings.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Exact bytes the rumor section takes in a frame, count included.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.count) + self.bytes.len()
    }

    /// Appends `rumor`'s encoding; `false` (and nothing appended) if it
    /// does not encode, which a rumor that encoded when queued does not.
    fn push(&mut self, rumor: &Rumor) -> bool {
        let start = self.bytes.len();
        let appended = postcard::serialize_with_flavor(rumor, AppendTo(&mut self.bytes));
        if appended.is_err() {
            self.bytes.truncate(start);
            return false;
        }
        self.count += 1;
        true
    }
    /// Bytes needed to add a rumor of `encoded` bytes.
    fn cost_of(&self, encoded: usize) -> usize {
        encoded + varint_len(self.count + 1) - varint_len(self.count)
    }
}

/// A postcard output that appends to a buffer it borrows, so that packing
/// encodes each rumor in place.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// What [`RumorQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushed {
    /// Queued as news about a new subject.
    Queued,
    /// Replaced an older rumor about the same subject, resetting its sends.
    Replaced,
    /// Ignored: a rumor at least as new about the same subject is queued.
    Stale,
    /// Dropped: the queue is full of membership rumors and this was data.
    Dropped,
}

#[derive(Debug, Clone)]
struct Queued {
    rumor: Rumor,
    /// Its encoding's length. The encoding itself is made again when the
    /// rumor is packed: kept, it was a third of what a queued rumor costs,
    /// and after a join every node queues a rumor of every member.
    encoded_len: usize,
    transmits: u32,
}

/// Sort key within a lane: fewest sends first, newest first among equals.
type Rank = (u32, Reverse<u64>);

/// Rumors waiting to be piggybacked, each sent a limited number of times.
///
/// * Each rumor is sent at most `mult * ceil(log10(n + 1))` times, `n` being
///   the cluster size at packing time (memberlist's retransmit limit: enough
///   for an infection-style spread to reach every member with high
///   probability).
/// * The least-sent rumors go first, the newest first among equals.
/// * A newer rumor about the same subject (member, or owner and key) replaces
///   the older one and starts again from zero sends.
/// * Membership rumors have their own lane, packed before any data, so
///   key/value traffic can never crowd out suspicions and refutations.
/// * Rumors are encoded once, when pushed; packing copies bytes and sizes them
///   exactly.
///
/// ```
/// use gossip_core::{Limits, Member, MemberMeta, NodeId, Rumor, RumorQueue};
/// let mut queue = RumorQueue::new(4, Limits::default());
/// let id = NodeId::from_bytes([1; 32]);
/// queue.push(Rumor::Member { member: Member::new(id, MemberMeta::default()) }).unwrap();
/// let packed = queue.pack(1200, 10);
/// assert_eq!(packed.count(), 1);
/// assert!(packed.encoded_len() <= 1200);
/// ```
#[derive(Debug, Clone)]
pub struct RumorQueue {
    queued: BTreeMap<u64, Queued>,
    by_subject: BTreeMap<Subject, u64>,
    lanes: [BTreeSet<Rank>; 2],
    next_seq: u64,
    retransmit_mult: u32,
    limits: Limits,
}

/// Once this many rumors in a row did not fit, packing stops looking: the
/// frame is as good as full, and scanning 10,000 rumors for a tiny one would
/// cost more than it saves.
const MAX_MISSES: usize = 8;

impl RumorQueue {
    /// An empty queue. `retransmit_mult` is the multiplier of the retransmit
    /// limit (memberlist's default is 4).
    pub fn new(retransmit_mult: u32, limits: Limits) -> Self {
        RumorQueue {
            queued: BTreeMap::new(),
            by_subject: BTreeMap::new(),
            lanes: [BTreeSet::new(), BTreeSet::new()],
            next_seq: 0,
            retransmit_mult,
            limits,
        }
    }

    /// How many times each rumor is sent in a cluster of `cluster_size`:
    /// `mult * ceil(log10(cluster_size + 1))`, at least `mult`.
    pub fn retransmit_limit(&self, cluster_size: usize) -> u32 {
        let mut digits = 0u32;
        let mut bound = 1usize;
        // The smallest d with 10^d >= n + 1 is ceil(log10(n + 1)).
        while bound < cluster_size.saturating_add(1) {
            bound = bound.saturating_mul(10);
            digits += 1;
        }
        self.retransmit_mult.saturating_mul(digits.max(1))
    }

    /// Number of queued rumors.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// `true` if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Number of queued rumors in `lane`.
    pub fn lane_len(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].len()
    }

    /// The queued rumors, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Rumor> {
        self.queued.values().map(|q| &q.rumor)
    }

    /// Queues a rumor.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] if the rumor breaks a cap or its encoding is
    /// larger than [`Limits::max_rumor_bytes`]; nothing is queued.
    pub fn push(&mut self, rumor: Rumor) -> Result<Pushed, Error> {
        rumor.validate(&self.limits)?;
        let encoded_len = crate::wire::try_encoded_len(&rumor)?;
        Error::check(
            Limited::RumorBytes,
            encoded_len,
            self.limits.max_rumor_bytes,
        )?;
        let subject = rumor.subject();
        let lane = rumor.lane();

        let mut outcome = Pushed::Queued;
        if let Some(&seq) = self.by_subject.get(&subject) {
            let Some(old) = self.queued.get(&seq) else {
                unreachable!("by_subject and queued are updated together");
            };
            if !rumor.is_newer_than(&old.rumor) {
                return Ok(Pushed::Stale);
            }
            self.remove(seq);
            outcome = Pushed::Replaced;
        } else if self.queued.len() >= self.limits.max_queued_rumors && !self.evict_for(lane) {
            return Ok(Pushed::Dropped);
        }

        let seq = self.next_seq;
        self.next_seq += 1;
        self.lanes[lane.index()].insert((0, Reverse(seq)));
        self.by_subject.insert(subject, seq);
        self.queued.insert(
            seq,
            Queued {
                rumor,
                encoded_len,
                transmits: 0,
            },
        );
        Ok(outcome)
    }

    /// Makes room for a rumor in `lane`: evicts the most-sent data rumor, or
    /// failing that (for membership news only) the most-sent membership rumor.
    fn evict_for(&mut self, lane: Lane) -> bool {
        let victim_lane = if !self.lanes[Lane::Data.index()].is_empty() {
            Lane::Data
        } else if lane == Lane::Membership {
            Lane::Membership
        } else {
            return false;
        };
        match self.lanes[victim_lane.index()].last().copied() {
            Some((_, Reverse(seq))) => {
                self.remove(seq);
                true
            }
            None => false,
        }
    }

    /// Drops every rumor about `id`: its membership claims, accusations by
    /// it, and its writes (for a node revoked). Returns how many.
    pub fn forget(&mut self, id: &NodeId) -> usize {
        let doomed: Vec<u64> = self
            .queued
            .iter()
            .filter(|(_, q)| match &q.rumor {
                Rumor::Member { member } => member.id == *id || member.origin() == *id,
                Rumor::State { owner, .. } => owner == id,
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &doomed {
            self.remove(*seq);
        }
        doomed.len()
    }

    fn remove(&mut self, seq: u64) -> Option<Queued> {
        let queued = self.queued.remove(&seq)?;
        self.lanes[queued.rumor.lane().index()].remove(&(queued.transmits, Reverse(seq)));
        self.by_subject.remove(&queued.rumor.subject());
        Some(queued)
    }

    /// Takes rumors for one frame: membership first, then data, fewest sends
    /// first, until `budget` bytes (count included) are used or
    /// [`Limits::max_rumors_per_frame`] is reached. Each packed rumor counts as
    /// sent once and leaves the queue at its retransmit limit for
    /// `cluster_size`.
    pub fn pack(&mut self, budget: usize, cluster_size: usize) -> PackedRumors {
        let mut packed = PackedRumors::default();
        let mut taken = Vec::new();
        let max_count = self.limits.max_rumors_per_frame;
        for lane in [Lane::Membership, Lane::Data] {
            let mut misses = 0;
            for &(_, Reverse(seq)) in &self.lanes[lane.index()] {
                if packed.count() >= max_count || misses >= MAX_MISSES {
                    break;
                }
                let Some(queued) = self.queued.get(&seq) else {
                    continue;
                };
                if packed.encoded_len() + packed.cost_of(queued.encoded_len) > budget {
                    misses += 1;
                    continue;
                }
                if packed.push(&queued.rumor) {
                    taken.push(seq);
                }
            }
        }

        let limit = self.retransmit_limit(cluster_size);
        for seq in taken {
            let Some(queued) = self.queued.get_mut(&seq) else {
                continue;
            };
            let lane = &mut self.lanes[queued.rumor.lane().index()];
            lane.remove(&(queued.transmits, Reverse(seq)));
            queued.transmits += 1;
            if queued.transmits >= limit {
                self.remove(seq);
            } else {
                lane.insert((queued.transmits, Reverse(seq)));
            }
        }
        packed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Incarnation, MemberMeta};
    use bytes::Bytes;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    fn member_rumor(n: u8, inc: u64, status: MemberStatus) -> Rumor {
        let mut member = Member::new(id(n), MemberMeta::default()).with_status(status);
        member.incarnation = Incarnation::new(inc);
        Rumor::Member { member }
    }

    fn data_rumor(owner: u8, key: &str, version: u64, len: usize) -> Rumor {
        Rumor::State {
            owner: id(owner),
            entry: Entry {
                key: Key::from(key),
                value: Some(Bytes::from(vec![0u8; len])),
                version,
            },
            signature: Signature::NONE,
        }
    }

    fn decode_all(packed: &PackedRumors) -> Vec<Rumor> {
        let mut rest = packed.bytes();
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (rumor, tail) = postcard::take_from_bytes::<Rumor>(rest).unwrap();
            out.push(rumor);
            rest = tail;
        }
        assert_eq!(out.len(), packed.count());
        out
    }

    #[test]
    fn retransmit_limit_follows_memberlist() {
        let q = RumorQueue::new(4, Limits::default());
        assert_eq!(q.retransmit_limit(1), 4);
        assert_eq!(q.retransmit_limit(9), 4);
        assert_eq!(q.retransmit_limit(10), 8);
        assert_eq!(q.retransmit_limit(99), 8);
        assert_eq!(q.retransmit_limit(100), 12);
        assert_eq!(q.retransmit_limit(1000), 16);
    }

    #[test]
    fn each_rumor_is_sent_exactly_its_limit_then_dropped() {
        let mut q = RumorQueue::new(2, Limits::default());
        q.push(member_rumor(1, 0, MemberStatus::Alive)).unwrap();
        for _ in 0..2 {
            assert_eq!(q.pack(1200, 5).count(), 1);
        }
        assert!(q.is_empty());
        assert_eq!(q.pack(1200, 5).count(), 0);
    }

    #[test]
    fn fewest_sent_first() {
        let mut q = RumorQueue::new(10, Limits::default());
        q.push(member_rumor(1, 0, MemberStatus::Alive)).unwrap();
        let one = q.queued.values().next().unwrap().encoded_len;
        // Budget for exactly one rumor.
        let budget = 1 + one;
        assert_eq!(
            decode_all(&q.pack(budget, 5)),
            vec![member_rumor(1, 0, MemberStatus::Alive)]
        );
        q.push(member_rumor(2, 0, MemberStatus::Alive)).unwrap();
        assert_eq!(
            decode_all(&q.pack(budget, 5)),
            vec![member_rumor(2, 0, MemberStatus::Alive)]
        );
        q.push(member_rumor(3, 0, MemberStatus::Alive)).unwrap();
        assert_eq!(
            decode_all(&q.pack(budget, 5)),
            vec![member_rumor(3, 0, MemberStatus::Alive)]
        );
        // All sent once now: the newest goes first among equals.
        assert_eq!(
            decode_all(&q.pack(budget, 5)),
            vec![member_rumor(3, 0, MemberStatus::Alive)]
        );
    }

    #[test]
    fn newer_news_replaces_older_and_stale_news_is_ignored() {
        let mut q = RumorQueue::new(4, Limits::default());
        assert_eq!(
            q.push(member_rumor(1, 0, MemberStatus::Alive)).unwrap(),
            Pushed::Queued
        );
        assert_eq!(
            q.push(member_rumor(1, 0, MemberStatus::Suspect)).unwrap(),
            Pushed::Replaced
        );
        assert_eq!(
            q.push(member_rumor(1, 0, MemberStatus::Alive)).unwrap(),
            Pushed::Stale
        );
        let suspect = member_rumor(1, 0, MemberStatus::Suspect);
        assert_eq!(q.push(suspect.clone()).unwrap(), Pushed::Stale);
        let Rumor::Member { mut member } = suspect else {
            unreachable!()
        };
        member.proof.accusation = Some(crate::Accusation {
            accuser: id(7),
            status: MemberStatus::Suspect,
            signature: Signature::NONE,
        });
        let confirmation = Rumor::Member { member };
        assert_eq!(
            q.push(confirmation).unwrap(),
            Pushed::Replaced,
            "another accuser confirms"
        );
        assert_eq!(q.len(), 1);
        assert_eq!(q.push(data_rumor(1, "k", 2, 1)).unwrap(), Pushed::Queued);
        assert_eq!(q.push(data_rumor(1, "k", 1, 1)).unwrap(), Pushed::Stale);
        assert_eq!(q.push(data_rumor(1, "k", 3, 1)).unwrap(), Pushed::Replaced);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn data_never_starves_membership() {
        let mut q = RumorQueue::new(100, Limits::default());
        for i in 0..200u8 {
            q.push(data_rumor(1, &format!("k{i}"), u64::from(i) + 1, 64))
                .unwrap();
        }
        q.push(member_rumor(9, 0, MemberStatus::Suspect)).unwrap();
        let rumors = decode_all(&q.pack(300, 10));
        assert_eq!(rumors[0], member_rumor(9, 0, MemberStatus::Suspect));
    }

    #[test]
    fn a_full_queue_evicts_data_for_membership_but_not_the_reverse() {
        let limits = Limits {
            max_queued_rumors: 2,
            ..Limits::default()
        };
        let mut q = RumorQueue::new(4, limits);
        q.push(member_rumor(1, 0, MemberStatus::Alive)).unwrap();
        q.push(data_rumor(1, "k", 1, 1)).unwrap();
        assert_eq!(
            q.push(member_rumor(2, 0, MemberStatus::Alive)).unwrap(),
            Pushed::Queued
        );
        assert_eq!(q.lane_len(Lane::Data), 0);
        assert_eq!(q.push(data_rumor(1, "j", 2, 1)).unwrap(), Pushed::Dropped);
        assert_eq!(q.lane_len(Lane::Membership), 2);
    }

    #[test]
    fn packing_respects_the_budget_exactly() {
        let mut q = RumorQueue::new(4, Limits::default());
        for i in 0..50u8 {
            q.push(data_rumor(i, "key", 1, usize::from(i) * 3)).unwrap();
        }
        for budget in [0, 1, 2, 40, 100, 333, 1200] {
            let packed = q.clone().pack(budget, 50);
            assert!(
                packed.encoded_len() <= budget.max(1),
                "budget {budget}: {}",
                packed.encoded_len()
            );
            decode_all(&packed);
        }
    }
}
