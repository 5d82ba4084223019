//! Member records, their merge, and the membership table.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::by_id::ById;
use crate::error::{Error, Limited};
use crate::id::NodeId;
use crate::incarnation::Incarnation;
use crate::limits::Limits;
use crate::time::Timestamp;

/// What the cluster believes about a member.
///
/// The variants are listed in merge precedence: at equal incarnation a later
/// variant overrides an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberStatus {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left the cluster on purpose. Only the member itself can say so.
    Left,
}

impl MemberStatus {
    /// `true` for [`Dead`](MemberStatus::Dead) and [`Left`](MemberStatus::Left):
    /// the member is no longer part of the cluster.
    pub fn is_departed(self) -> bool {
        matches!(self, MemberStatus::Dead | MemberStatus::Left)
    }

    /// A lower-case name, for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Dead => "dead",
            MemberStatus::Left => "left",
        }
    }
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a member record that only change when its owner raises its
/// incarnation: a human-readable name and where to reach it.
///
/// Shared behind an `Arc` so that the many views of one member (one per
/// observer in a simulation, one per queued rumor) hold a single copy. Short
/// names (up to 23 bytes) and up to two addresses are stored inline, so a
/// decoded record costs one allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberMeta {
    name: SmolStr,
    addrs: Addrs,
}

/// Most addresses a record may carry on the wire, whatever the configured
/// cap: decoding stops here before allocating for a larger claimed count.
const MAX_WIRE_ADDRS: usize = 64;

/// A member's addresses, decoded without trusting the claimed count (the
/// stock `SmallVec` decoder reserves whatever length the input claims).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
struct Addrs(SmallVec<[SocketAddr; 2]>);

impl<'de> Deserialize<'de> for Addrs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Addrs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_WIRE_ADDRS} socket addresses")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Addrs, A::Error> {
                let claimed = seq.size_hint().unwrap_or(0);
                if claimed > MAX_WIRE_ADDRS {
                    return Err(serde::de::Error::invalid_length(claimed, &self));
                }
                let mut addrs = SmallVec::with_capacity(claimed);
                while let Some(addr) = seq.next_element()? {
                    if addrs.len() == MAX_WIRE_ADDRS {
                        return Err(serde::de::Error::invalid_length(addrs.len() + 1, &self));
                    }
                    addrs.push(addr);
                }
                Ok(Addrs(addrs))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

impl MemberMeta {
    /// Creates the metadata. IPv6 flow labels and scope ids are not carried
    /// on the wire (they mean nothing to another host).
    pub fn new(name: impl AsRef<str>, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        MemberMeta {
            name: SmolStr::new(name),
            addrs: Addrs(addrs.into_iter().collect()),
        }
    }

    /// A name for humans; not unique and not an identity.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Advertised addresses, preferred first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs.0
    }

    /// The preferred address: where the member is contacted, and what tells
    /// one live instance of an identity from another.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.0.first().copied()
    }

    /// Checks the metadata against `limits`.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] for too many addresses or too long a name.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        Error::check(
            Limited::AddressesPerMember,
            self.addrs.0.len(),
            limits.max_addrs_per_member,
        )?;
        Error::check(Limited::NameBytes, self.name.len(), limits.max_name_bytes)
    }
}

/// One member as seen by one observer.
///
/// Records about the same member merge with SWIM's precedence: the higher
/// `(incarnation, status)` wins, so
/// * `Alive(i)` overrides `Suspect(j)` only if `i > j`;
/// * `Suspect(i)` overrides `Alive(j)` if `i >= j`;
/// * `Dead(i)` and `Left(i)` override `Alive(j)` and `Suspect(j)` if `i >= j`.
///
/// `state_version` (how far the member's key/value state has advanced) is
/// merged independently, as a maximum. The merge, [`Member::join`], is
/// commutative, associative and idempotent, so replicas that see the same
/// records in any order agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Who.
    pub id: NodeId,
    /// The member's incarnation, raised only by itself.
    pub incarnation: Incarnation,
    /// What is believed of it.
    pub status: MemberStatus,
    /// The highest version of its key/value state known to exist.
    pub state_version: u64,
    /// Name and addresses.
    #[serde(deserialize_with = "deserialize_shared_meta")]
    pub meta: Arc<MemberMeta>,
}

/// serde's own `Arc<T>` decoder builds a `Box<T>` and then moves it into a new
/// `Arc`: two allocations where one will do.
fn deserialize_shared_meta<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Arc<MemberMeta>, D::Error> {
    MemberMeta::deserialize(deserializer).map(Arc::new)
}

impl Member {
    /// A fresh member: alive at incarnation 0 with state version 0.
    pub fn new(id: NodeId, meta: MemberMeta) -> Self {
        Member {
            id,
            incarnation: Incarnation::ZERO,
            status: MemberStatus::Alive,
            state_version: 0,
            meta: Arc::new(meta),
        }
    }

    /// This record with another status.
    pub fn with_status(&self, status: MemberStatus) -> Member {
        Member {
            status,
            ..self.clone()
        }
    }

    /// Whether this record's liveness claim overrides `other`'s under SWIM's
    /// precedence. Records equal in `(incarnation, status)` are ordered by their
    /// metadata so that the merge stays deterministic even for conflicting
    /// claims; `state_version` plays no part.
    pub fn overrides(&self, other: &Member) -> bool {
        (self.incarnation, self.status)
            .cmp(&(other.incarnation, other.status))
            .then_with(|| self.meta.cmp(&other.meta))
            .is_gt()
    }

    /// The merge of two records about the same member: the liveness claim of
    /// whichever [overrides](Member::overrides), with the larger state version.
    ///
    /// # Panics
    ///
    /// If the records are about different members (caller misuse).
    pub fn join(&self, other: &Member) -> Member {
        assert_eq!(self.id, other.id, "joined records of different members");
        let winner = if other.overrides(self) { other } else { self };
        Member {
            state_version: self.state_version.max(other.state_version),
            ..winner.clone()
        }
    }

    /// Checks the record against `limits`.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] if its metadata is over a cap.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        self.meta.validate(limits)
    }
}

/// How a member's record changed, for events and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transition {
    /// First heard of.
    Joined,
    /// Alive became suspect.
    Suspected,
    /// A suspect refuted and is alive again.
    Recovered,
    /// Declared dead.
    Failed,
    /// Left on purpose.
    Left,
    /// A dead or departed member came back with a higher incarnation.
    Rejoined,
    /// Same status, new incarnation or metadata.
    Updated,
    /// Only the key/value state version advanced.
    StateAdvanced,
}

/// A change to the membership table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The record before, or `None` for a member not known until now.
    pub before: Option<Member>,
    /// The record now.
    pub after: Member,
    /// Who made the claim that caused the change (for accusations, the accuser).
    pub origin: NodeId,
}

impl MemberChange {
    /// Classifies the change.
    pub fn transition(&self) -> Transition {
        use MemberStatus::*;
        let Some(before) = &self.before else {
            return match self.after.status {
                Alive => Transition::Joined,
                Suspect => Transition::Suspected,
                Dead => Transition::Failed,
                Left => Transition::Left,
            };
        };
        match (before.status, self.after.status) {
            (Alive, Suspect) => Transition::Suspected,
            (Suspect, Alive) => Transition::Recovered,
            (Dead | Left, Alive | Suspect) => Transition::Rejoined,
            (_, Dead) if before.status != Dead => Transition::Failed,
            (_, Left) if before.status != Left => Transition::Left,
            _ if before.incarnation == self.after.incarnation && before.meta == self.after.meta => {
                Transition::StateAdvanced
            }
            _ => Transition::Updated,
        }
    }
}

/// What [`Membership::apply`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// Another member's record changed.
    Changed(MemberChange),
    /// Someone made a claim about the local node that overrides its own record
    /// (a suspicion, a death, or an alive claim from an earlier life). The
    /// local record is unchanged: the caller should [refute](Membership::refute).
    AccusedSelf {
        /// The claim.
        claim: Member,
        /// Who made it.
        origin: NodeId,
    },
    /// A live record of the local node at another address than its own: an
    /// earlier life that peers still hold, or a second process holding this
    /// node's key. Nothing is applied; the caller finds out which (the
    /// address answers as this node, or does not).
    ClaimedElsewhere {
        /// The claim.
        claim: Member,
    },
    /// A claim that would move a live member to another address. Refused: a
    /// member's address changes only through a new life after the old one
    /// is known to be dead or gone, so a second process holding a member's
    /// key cannot take over its place while it runs.
    AddressConflict {
        /// The record held, unchanged.
        held: Member,
        /// The refused claim.
        claim: Member,
        /// Who made it.
        origin: NodeId,
    },
}

/// The membership table: the local node's record, which only it changes, and
/// what it believes of every other member.
///
/// Departed members (dead or left) stay in the table as tombstones, so that a
/// stale alive rumor cannot bring them back, until
/// [`collect_departed`](Membership::collect_departed) removes them after a
/// horizon longer than any rumor lives.
///
/// ```
/// use gossip_core::{Member, MemberMeta, Membership, MemberStatus, Limits, NodeId, Timestamp};
/// let me = NodeId::from_public_key(b"me");
/// let peer = NodeId::from_public_key(b"peer");
/// let mut table = Membership::new(Member::new(me, MemberMeta::default()), Limits::default());
///
/// // The peer announces itself; the authenticated sender is the peer.
/// let now = Timestamp::ZERO;
/// table.apply(now, Member::new(peer, MemberMeta::default()), peer).unwrap();
/// assert_eq!(table.count(MemberStatus::Alive), 2);
///
/// // We accuse it; it stays in the table as a suspect.
/// table.accuse(now, peer, MemberStatus::Suspect).unwrap();
/// assert_eq!(table.get(&peer).unwrap().status, MemberStatus::Suspect);
/// ```
#[derive(Debug, Clone)]
pub struct Membership {
    local: Member,
    /// Keyed by id without storing the id twice: every node holds one of
    /// these per member. Shared, so that a replicated copy of the table
    /// (the anti-entropy state's) can hold the same records.
    others: BTreeSet<ById<Arc<Member>>>,
    /// Records of other members by status, kept so counts cost O(1).
    counts: [usize; 4],
    /// Departed members and when they departed, so collecting and choosing
    /// among them costs O(departed), not O(members).
    departed: BTreeMap<NodeId, Timestamp>,
    limits: Limits,
}

fn status_index(status: MemberStatus) -> usize {
    match status {
        MemberStatus::Alive => 0,
        MemberStatus::Suspect => 1,
        MemberStatus::Dead => 2,
        MemberStatus::Left => 3,
    }
}

impl Membership {
    /// A table holding only the local node.
    pub fn new(local: Member, limits: Limits) -> Self {
        Membership {
            local,
            others: BTreeSet::new(),
            counts: [0; 4],
            departed: BTreeMap::new(),
            limits,
        }
    }

    /// The local node's id.
    pub fn local_id(&self) -> NodeId {
        self.local.id
    }

    /// The local node's record.
    pub fn local(&self) -> &Member {
        &self.local
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The record of `id`, the local node's included.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        if *id == self.local.id {
            Some(&self.local)
        } else {
            self.other(id)
        }
    }

    /// The record of `id` among the others.
    fn other(&self, id: &NodeId) -> Option<&Member> {
        self.get_shared(id).map(|record| &**record)
    }

    /// The shared record of `id`, for a copy of the table that should hold
    /// the same allocation rather than its own (the local node's is not
    /// shared).
    pub fn get_shared(&self, id: &NodeId) -> Option<&Arc<Member>> {
        self.others.get(id).map(|record| &record.0)
    }

    /// Every record other than the local one, in id order.
    pub fn others(&self) -> impl Iterator<Item = &Member> {
        self.others.iter().map(|record| &*record.0)
    }

    /// Every record, the local one first.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.local).chain(self.others())
    }

    /// Number of records, the local one and departed ones included.
    pub fn len(&self) -> usize {
        self.others.len() + 1
    }

    /// Always `false`: the table holds at least the local node.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of records with `status`, the local one included. O(1).
    pub fn count(&self, status: MemberStatus) -> usize {
        self.counts[status_index(status)] + usize::from(self.local.status == status)
    }

    /// Number of members believed part of the cluster (alive or suspect),
    /// the local one included. O(1).
    pub fn live_count(&self) -> usize {
        self.count(MemberStatus::Alive) + self.count(MemberStatus::Suspect)
    }

    /// Merges a claim about a member, made by `origin`.
    ///
    /// `origin` is who made the claim: for a message, the authenticated sender
    /// (never a claimed id); for a relayed rumor, the node that started it, as
    /// far as the caller trusts the relay. Claims only the subject itself may
    /// make (a higher incarnation than known, a first alive announcement, a
    /// leave) are refused from anyone else. Accusations (suspect, dead) may come
    /// from anyone and are reported with their origin.
    ///
    /// Returns the change, if the claim changed anything.
    ///
    /// # Errors
    ///
    /// * [`Error::NotOwner`] for a self-claim by someone else;
    /// * [`Error::IncarnationJump`] for an implausible incarnation;
    /// * [`Error::LimitExceeded`] for oversized metadata or a full table.
    ///
    /// In every error case the table is unchanged.
    pub fn apply(
        &mut self,
        now: Timestamp,
        claim: Member,
        origin: NodeId,
    ) -> Result<Option<MembershipEvent>, Error> {
        self.apply_claim(now, claim, origin)
    }

    /// As [`apply`](Membership::apply), holding `claim`'s allocation when the
    /// claim is what the table ends up with: many tables restored from one
    /// set of records (a simulation of a converged cluster) then hold one
    /// copy of each record between them.
    ///
    /// # Errors
    ///
    /// As [`apply`](Membership::apply).
    pub fn apply_shared(
        &mut self,
        now: Timestamp,
        claim: Arc<Member>,
        origin: NodeId,
    ) -> Result<Option<MembershipEvent>, Error> {
        self.apply_claim(now, claim, origin)
    }

    fn apply_claim<C: Borrow<Member> + Into<Arc<Member>>>(
        &mut self,
        now: Timestamp,
        shared_claim: C,
        origin: NodeId,
    ) -> Result<Option<MembershipEvent>, Error> {
        let claim = shared_claim.borrow();
        claim.validate(&self.limits)?;
        let subject = claim.id;
        let owner_only = |what: &'static str| Error::NotOwner {
            subject,
            origin,
            claim: what,
        };

        if subject == self.local.id {
            self.local.incarnation.check_jump(
                subject,
                claim.incarnation,
                self.limits.max_incarnation_jump,
            )?;
            if claim.status == MemberStatus::Left && origin != subject {
                return Err(owner_only("a leave"));
            }
            let here = claim.meta.addr() == self.local.meta.addr();
            if origin == subject && !here && !claim.status.is_departed() {
                return Ok(Some(MembershipEvent::ClaimedElsewhere {
                    claim: claim.clone(),
                }));
            }
            // An accusation, or a record of this node that this life did not
            // make: an earlier life here (a restart that kept no
            // incarnation) that peers still hold, or a leave made elsewhere.
            // Either way the node refutes above it.
            if claim.overrides(&self.local) {
                return Ok(Some(MembershipEvent::AccusedSelf {
                    claim: claim.clone(),
                    origin,
                }));
            }
            return Ok(None);
        }

        let current = self.other(&subject);
        if let Some(current) = current {
            current.incarnation.check_jump(
                subject,
                claim.incarnation,
                self.limits.max_incarnation_jump,
            )?;
        }
        if origin != subject {
            if claim.status == MemberStatus::Left {
                return Err(owner_only("a leave"));
            }
            let raises = current.is_none_or(|c| claim.incarnation > c.incarnation);
            if claim.status == MemberStatus::Alive && raises {
                return Err(owner_only("a new incarnation"));
            }
        }
        if let Some(current) = current
            && !current.status.is_departed()
            && claim.meta.addr() != current.meta.addr()
        {
            // Stale news of an earlier address changes nothing; only a claim
            // that would win the merge is a conflict.
            return Ok(claim
                .overrides(current)
                .then(|| MembershipEvent::AddressConflict {
                    held: current.clone(),
                    claim: claim.clone(),
                    origin,
                }));
        }

        let (record, merged): (Arc<Member>, Member) = match current {
            Some(current) => {
                let merged = current.join(claim);
                if merged == *current {
                    return Ok(None);
                }
                if merged == *claim {
                    (shared_claim.into(), merged)
                } else {
                    (Arc::new(merged.clone()), merged)
                }
            }
            None => {
                Error::check(Limited::Members, self.len() + 1, self.limits.max_members)?;
                let record = shared_claim.into();
                let merged = Member::clone(&record);
                (record, merged)
            }
        };
        let before = self
            .others
            .replace(ById(record))
            .map(|record| Arc::unwrap_or_clone(record.0));
        if let Some(before) = &before {
            self.counts[status_index(before.status)] -= 1;
        }
        self.counts[status_index(merged.status)] += 1;
        if merged.status.is_departed() {
            // A member that stays departed (dead, then left) keeps the time
            // of its latest change, as its slot does.
            self.departed.insert(subject, now);
        } else {
            self.departed.remove(&subject);
        }
        Ok(Some(MembershipEvent::Changed(MemberChange {
            before,
            after: merged,
            origin,
        })))
    }

    /// Records the local node's own accusation of `subject` at the incarnation
    /// it is known by: `status` is [`Suspect`](MemberStatus::Suspect) after a
    /// failed probe, [`Dead`](MemberStatus::Dead) after the suspicion timeout.
    ///
    /// # Errors
    ///
    /// As [`apply`](Membership::apply); accusing an unknown member or the local
    /// node changes nothing and returns `Ok(None)`.
    pub fn accuse(
        &mut self,
        now: Timestamp,
        subject: NodeId,
        status: MemberStatus,
    ) -> Result<Option<MembershipEvent>, Error> {
        if subject == self.local.id {
            return Ok(None);
        }
        let Some(ById(member)) = self.others.get(&subject) else {
            return Ok(None);
        };
        let claim = member.with_status(status);
        let origin = self.local.id;
        self.apply(now, claim, origin)
    }

    /// Raises the local incarnation past `accused` and marks the local node
    /// alive, refuting a claim made about it. Returns the new local record, to
    /// be gossiped.
    ///
    /// # Errors
    ///
    /// [`Error::IncarnationExhausted`] at the top of the range; the record is
    /// unchanged.
    pub fn refute(&mut self, accused: Incarnation) -> Result<&Member, Error> {
        self.local.incarnation = self.local.incarnation.refute(accused)?;
        self.local.status = MemberStatus::Alive;
        Ok(&self.local)
    }

    /// Replaces the local metadata, raising the incarnation so the change wins
    /// the merge everywhere. Returns the new local record.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] for oversized metadata,
    /// [`Error::IncarnationExhausted`] at the top of the range; the record is
    /// unchanged in both cases.
    pub fn set_local_meta(&mut self, meta: MemberMeta) -> Result<&Member, Error> {
        meta.validate(&self.limits)?;
        self.local.incarnation = self.local.incarnation.next()?;
        self.local.meta = Arc::new(meta);
        Ok(&self.local)
    }

    /// Records that the local key/value state reached `version`.
    pub fn set_local_state_version(&mut self, version: u64) {
        self.local.state_version = self.local.state_version.max(version);
    }

    /// Marks the local node as having left. Returns the record to announce.
    pub fn leave(&mut self) -> &Member {
        self.local.status = MemberStatus::Left;
        &self.local
    }

    /// Removes departed members whose last change is at least `horizon` old,
    /// returning their ids. Choose a horizon longer than any rumor lives, so
    /// that a stale alive rumor cannot bring a removed member back.
    pub fn collect_departed(&mut self, now: Timestamp, horizon: Duration) -> Vec<NodeId> {
        let expired: Vec<NodeId> = self
            .departed
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= horizon)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.departed.remove(id);
            if let Some(ById(member)) = self.others.take(id) {
                self.counts[status_index(member.status)] -= 1;
            }
        }
        expired
    }

    /// Departed (dead or left) members still remembered, in id order. O(departed).
    pub fn departed(&self) -> impl Iterator<Item = &Member> {
        self.departed.keys().filter_map(|id| self.other(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberStatus::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    fn rec(n: u8, inc: u64, status: MemberStatus) -> Member {
        Member {
            id: id(n),
            incarnation: Incarnation::new(inc),
            status,
            state_version: 0,
            meta: Arc::new(MemberMeta::default()),
        }
    }

    fn table() -> Membership {
        Membership::new(rec(0, 0, Alive), Limits::default())
    }

    const T: Timestamp = Timestamp::ZERO;

    /// One check per precedence rule of the SWIM paper: does `new` override `old`?
    fn check(old: (u64, MemberStatus), new: (u64, MemberStatus), expect: bool) {
        let (o, n) = (rec(1, old.0, old.1), rec(1, new.0, new.1));
        assert_eq!(n.overrides(&o), expect, "{new:?} over {old:?}");
    }

    #[test]
    fn swim_precedence() {
        check((1, Suspect), (2, Alive), true);
        check((1, Suspect), (1, Alive), false);
        check((1, Alive), (1, Suspect), true);
        check((2, Alive), (1, Suspect), false);
        check((1, Suspect), (1, Suspect), false);
        check((1, Alive), (1, Dead), true);
        check((1, Suspect), (1, Dead), true);
        check((2, Suspect), (1, Dead), false);
        check((1, Alive), (1, Left), true);
        check((1, Dead), (1, Left), true);
        check((1, Dead), (2, Alive), true);
    }

    #[test]
    fn join_takes_the_larger_state_version_independently() {
        let mut a = rec(1, 1, Alive);
        a.state_version = 9;
        let b = rec(1, 1, Suspect);
        let joined = a.join(&b);
        assert_eq!(joined.status, Suspect);
        assert_eq!(joined.state_version, 9);
    }

    #[test]
    fn relayed_accusation_is_accepted_and_reports_origin() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive), id(1)).unwrap();
        let ev = t.apply(T, rec(1, 0, Suspect), id(2)).unwrap().unwrap();
        let MembershipEvent::Changed(change) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(change.origin, id(2));
        assert_eq!(change.transition(), Transition::Suspected);
    }

    #[test]
    fn only_the_owner_may_raise_its_incarnation_or_leave() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive), id(1)).unwrap();
        let err = t.apply(T, rec(1, 1, Alive), id(2)).unwrap_err();
        assert!(matches!(err, Error::NotOwner { .. }), "{err}");
        let err = t.apply(T, rec(1, 0, Left), id(2)).unwrap_err();
        assert!(matches!(err, Error::NotOwner { .. }), "{err}");
        let err = t.apply(T, rec(3, 0, Alive), id(2)).unwrap_err();
        assert!(
            matches!(err, Error::NotOwner { .. }),
            "unknown member introduced by a third party"
        );
        assert_eq!(t.get(&id(1)).unwrap().status, Alive);
        let ev = t.apply(T, rec(1, 0, Left), id(1)).unwrap().unwrap();
        let MembershipEvent::Changed(change) = ev else {
            panic!()
        };
        assert_eq!(change.transition(), Transition::Left);
    }

    #[test]
    fn suspicion_of_self_is_reported_not_applied() {
        let mut t = table();
        let ev = t.apply(T, rec(0, 0, Suspect), id(2)).unwrap();
        assert!(matches!(ev, Some(MembershipEvent::AccusedSelf { .. })));
        assert_eq!(t.local().status, Alive);
        let refuted = t.refute(Incarnation::new(0)).unwrap();
        assert_eq!(refuted.incarnation, Incarnation::new(1));
        // The stale suspicion no longer overrides us.
        assert_eq!(t.apply(T, rec(0, 0, Suspect), id(2)).unwrap(), None);
        assert!(t.apply(T, rec(0, 1, Left), id(2)).is_err());
    }

    #[test]
    fn suspicion_at_the_maximum_incarnation_cannot_wedge_refutation() {
        let mut t = table();
        let forged = Member {
            incarnation: Incarnation::MAX,
            ..rec(0, 0, Suspect)
        };
        let err = t.apply(T, forged, id(2)).unwrap_err();
        assert!(matches!(err, Error::IncarnationJump { .. }), "{err}");
        assert_eq!(t.local().incarnation, Incarnation::ZERO);
        assert!(t.refute(Incarnation::ZERO).is_ok());
    }

    #[test]
    fn restarted_member_rejoins_with_higher_incarnation() {
        let mut t = table();
        t.apply(T, rec(1, 4, Alive), id(1)).unwrap();
        t.accuse(T, id(1), Dead).unwrap();
        assert_eq!(
            t.apply(T, rec(1, 4, Alive), id(1)).unwrap(),
            None,
            "stale alive loses to dead"
        );
        let ev = t.apply(T, rec(1, 5, Alive), id(1)).unwrap().unwrap();
        let MembershipEvent::Changed(change) = ev else {
            panic!()
        };
        assert_eq!(change.transition(), Transition::Rejoined);
    }

    #[test]
    fn oversized_metadata_and_full_table_are_errors() {
        let limits = Limits {
            max_members: 2,
            max_name_bytes: 4,
            ..Limits::default()
        };
        let mut t = Membership::new(rec(0, 0, Alive), limits);
        let mut long = rec(1, 0, Alive);
        long.meta = Arc::new(MemberMeta::new("too long", []));
        assert!(matches!(
            t.apply(T, long, id(1)),
            Err(Error::LimitExceeded {
                what: Limited::NameBytes,
                ..
            })
        ));
        t.apply(T, rec(1, 0, Alive), id(1)).unwrap();
        let err = t.apply(T, rec(2, 0, Alive), id(2)).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitExceeded {
                what: Limited::Members,
                ..
            }
        ));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn address_counts_are_bounded_when_decoding() {
        let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // A claimed count far beyond the input: refused before reserving.
        let mut bytes = postcard::to_allocvec(&MemberMeta::new("n", [])).unwrap();
        bytes.pop();
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]);
        assert!(postcard::from_bytes::<MemberMeta>(&bytes).is_err());
        // A count backed by real input but over the wire ceiling.
        let many = MemberMeta::new("n", std::iter::repeat_n(addr, MAX_WIRE_ADDRS + 1));
        let bytes = postcard::to_allocvec(&many).unwrap();
        let err: Error = postcard::from_bytes::<MemberMeta>(&bytes)
            .unwrap_err()
            .into();
        assert_eq!(
            err,
            Error::Malformed {
                reason: "value out of range"
            }
        );
        let enough = MemberMeta::new("n", std::iter::repeat_n(addr, MAX_WIRE_ADDRS));
        let bytes = postcard::to_allocvec(&enough).unwrap();
        assert_eq!(postcard::from_bytes::<MemberMeta>(&bytes).unwrap(), enough);
    }

    #[test]
    fn departed_members_are_collected_after_the_horizon() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive), id(1)).unwrap();
        t.apply(T, rec(2, 0, Alive), id(2)).unwrap();
        t.accuse(Timestamp::from_millis(10), id(1), Dead).unwrap();
        let h = Duration::from_secs(30);
        assert!(
            t.collect_departed(Timestamp::from_millis(29_000), h)
                .is_empty()
        );
        assert_eq!(
            t.collect_departed(Timestamp::from_millis(30_010), h),
            vec![id(1)]
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_earlier_life_at_this_address_is_refuted_and_one_elsewhere_is_reported() {
        let mut t = table();
        // Peers still hold this node's earlier life: alive at 2, here.
        let earlier = rec(0, 2, Alive);
        let ev = t.apply(T, earlier.clone(), id(0)).unwrap();
        assert!(
            matches!(ev, Some(MembershipEvent::AccusedSelf { ref claim, .. }) if *claim == earlier),
            "{ev:?}"
        );
        // ... or its leave.
        let left = rec(0, 2, Left);
        let ev = t.apply(T, left, id(0)).unwrap();
        assert!(
            matches!(ev, Some(MembershipEvent::AccusedSelf { .. })),
            "{ev:?}"
        );
        assert_eq!(t.local().incarnation, Incarnation::ZERO, "nothing applied");
        // A live record at another address may be a second live instance:
        // reported for the caller to check, not refuted, whatever its
        // incarnation.
        for incarnation in [0, 2] {
            let elsewhere = at(rec(0, incarnation, Alive), [10, 9, 9, 9]);
            let ev = t.apply(T, elsewhere.clone(), id(0)).unwrap();
            assert_eq!(
                ev,
                Some(MembershipEvent::ClaimedElsewhere { claim: elsewhere })
            );
        }
        // A leave made elsewhere is refuted: whoever made it has gone.
        let ev = t
            .apply(T, at(rec(0, 2, Left), [10, 9, 9, 9]), id(0))
            .unwrap();
        assert!(
            matches!(ev, Some(MembershipEvent::AccusedSelf { .. })),
            "{ev:?}"
        );
        assert_eq!(t.local().incarnation, Incarnation::ZERO, "nothing applied");
        // This life's own record, relayed back: nothing to do.
        let own = t.local().clone();
        assert_eq!(t.apply(T, own, id(0)).unwrap(), None);
    }

    /// `record` with `ip` as its only address.
    fn at(mut record: Member, ip: [u8; 4]) -> Member {
        record.meta = Arc::new(MemberMeta::new(
            record.meta.name(),
            [SocketAddr::from((ip, 1))],
        ));
        record
    }

    #[test]
    fn a_live_member_is_never_moved_to_another_address() {
        let mut t = table();
        let held = rec(1, 1, Alive);
        t.apply(T, held.clone(), id(1)).unwrap();
        // Its key at another address, claiming a newer life, and then
        // leaving there: both refused, both reported.
        for status in [Alive, Left] {
            let impostor = at(rec(1, 2, status), [10, 9, 9, 9]);
            let ev = t.apply(T, impostor.clone(), id(1)).unwrap();
            assert_eq!(
                ev,
                Some(MembershipEvent::AddressConflict {
                    held: held.clone(),
                    claim: impostor,
                    origin: id(1),
                })
            );
            assert_eq!(t.get(&id(1)), Some(&held), "nothing applied");
        }
        // Stale news of another address changes nothing and is no conflict.
        let stale = at(rec(1, 0, Alive), [10, 9, 9, 9]);
        assert_eq!(t.apply(T, stale, id(1)).unwrap(), None);
        // Once the member is dead, its next life may come from anywhere.
        t.accuse(T, id(1), Dead).unwrap();
        let moved = at(rec(1, 2, Alive), [10, 9, 9, 9]);
        let ev = t.apply(T, moved.clone(), id(1)).unwrap();
        assert!(matches!(ev, Some(MembershipEvent::Changed(_))), "{ev:?}");
        assert_eq!(t.get(&id(1)), Some(&moved));
    }
}
