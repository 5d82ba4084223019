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
use crate::id::{ClusterId, NodeId};
use crate::incarnation::Incarnation;
use crate::limits::Limits;
use crate::proof::{ClaimDigest, ClaimKind, NodeKey, Signature, claim_digest, verify};
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
/// A record joins two signed claims: the member's own (alive or left at an
/// incarnation, with its state version and metadata), signed with its key,
/// and for a suspect or dead record an accusation at the same incarnation,
/// signed by the accuser ([`Proof`]). [`verify`](Member::verify) checks
/// both, so a relay can pass a record on but not change it.
///
/// Records about the same member merge with SWIM's precedence: the higher
/// `(incarnation, status)` wins, so
/// * `Alive(i)` overrides `Suspect(j)` only if `i > j`;
/// * `Suspect(i)` overrides `Alive(j)` if `i >= j`;
/// * `Dead(i)` and `Left(i)` override `Alive(j)` and `Suspect(j)` if `i >= j`.
///
/// The merge, [`Member::join`], takes the latest of the member's own claims
/// (by incarnation, then leave over alive, then state version) and the
/// strongest accusation, which stands only at that claim's incarnation. It is
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
    /// The highest version of its key/value state it has announced.
    pub state_version: u64,
    /// Name and addresses.
    #[serde(deserialize_with = "deserialize_shared_meta")]
    pub meta: Arc<MemberMeta>,
    /// The signatures that make the record believable.
    pub proof: Proof,
}

/// The signatures behind a [`Member`] record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The member's signature over its own claim: the record's incarnation,
    /// state version and metadata, with status alive (for an alive, suspect or
    /// dead record) or left.
    pub owner: Signature,
    /// For a suspect or dead record, who accused the member and their
    /// signature; `None` for alive and left records.
    pub accusation: Option<Accusation>,
}

/// An accusation: a member's signed statement that another is suspect or
/// dead at an incarnation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Accusation {
    /// Who accuses.
    pub accuser: NodeId,
    /// What the accuser said: suspect or dead. A record may be weaker than
    /// its accusation (a death heard too early is held as a suspicion), never
    /// stronger.
    pub status: MemberStatus,
    /// The accuser's signature.
    pub signature: Signature,
}

/// serde's own `Arc<T>` decoder builds a `Box<T>` and then moves it into a new
/// `Arc`: two allocations where one will do.
fn deserialize_shared_meta<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Arc<MemberMeta>, D::Error> {
    MemberMeta::deserialize(deserializer).map(Arc::new)
}

/// The member's own claim inside a record, in the order the merge takes the
/// latest: incarnation, then a leave over alive, then state version, then
/// (only between two instances of one key) metadata and signature.
fn owner_claim_key(m: &Member) -> (Incarnation, bool, u64, &MemberMeta, &Signature) {
    (
        m.incarnation,
        m.status == MemberStatus::Left,
        m.state_version,
        &m.meta,
        &m.proof.owner,
    )
}

/// The accusation inside a record, in the order the merge takes the strongest.
fn accusation_key(m: &Member) -> Option<(Incarnation, MemberStatus, &Accusation)> {
    let accusation = m.proof.accusation.as_ref()?;
    matches!(m.status, MemberStatus::Suspect | MemberStatus::Dead).then_some((
        m.incarnation,
        m.status,
        accusation,
    ))
}

impl Member {
    /// A fresh member: alive at incarnation 0 with state version 0, not yet
    /// signed (see [`sign`](Member::sign)).
    pub fn new(id: NodeId, meta: MemberMeta) -> Self {
        Member {
            id,
            incarnation: Incarnation::ZERO,
            status: MemberStatus::Alive,
            state_version: 0,
            meta: Arc::new(meta),
            proof: Proof::default(),
        }
    }

    /// This record with another status and the same proof. Only a weaker
    /// status than its accusation still verifies (a death heard too early,
    /// held as a suspicion); a record of any other status needs signing.
    pub fn with_status(&self, status: MemberStatus) -> Member {
        Member {
            status,
            ..self.clone()
        }
    }

    /// The status the member itself claims: left for a left record, alive
    /// otherwise.
    fn owner_status(&self) -> MemberStatus {
        if self.status == MemberStatus::Left {
            MemberStatus::Left
        } else {
            MemberStatus::Alive
        }
    }

    fn owner_digest(&self, cluster: ClusterId) -> ClaimDigest {
        claim_digest(
            ClaimKind::Member,
            cluster,
            &(
                &self.id,
                self.incarnation,
                self.owner_status(),
                self.state_version,
                &*self.meta,
            ),
        )
    }

    fn accusation_digest(
        &self,
        cluster: ClusterId,
        status: MemberStatus,
        accuser: &NodeId,
    ) -> ClaimDigest {
        claim_digest(
            ClaimKind::Accusation,
            cluster,
            &(&self.id, self.incarnation, status, accuser),
        )
    }

    /// Signs the member's own claim with its `key` (whose id must be the
    /// record's), for `cluster`. An alive or left record then carries no
    /// accusation.
    pub fn sign(&mut self, key: &NodeKey, cluster: ClusterId) {
        debug_assert_eq!(key.id(), self.id, "a record signed by another key");
        self.proof.owner = key.sign(&self.owner_digest(cluster));
        if !matches!(self.status, MemberStatus::Suspect | MemberStatus::Dead) {
            self.proof.accusation = None;
        }
    }

    /// This record accused of `status` (suspect or dead) by the holder of
    /// `accuser`, at the record's incarnation: what an accuser sends.
    pub fn accused(&self, accuser: &NodeKey, cluster: ClusterId, status: MemberStatus) -> Member {
        let by = accuser.id();
        let signature = accuser.sign(&self.accusation_digest(cluster, status, &by));
        Member {
            status,
            proof: Proof {
                owner: self.proof.owner,
                accusation: Some(Accusation {
                    accuser: by,
                    status,
                    signature,
                }),
            },
            ..self.clone()
        }
    }

    /// Who made the claim: the accuser for a suspect or dead record, the
    /// member itself otherwise.
    pub fn origin(&self) -> NodeId {
        match (&self.proof.accusation, self.status) {
            (Some(accusation), MemberStatus::Suspect | MemberStatus::Dead) => accusation.accuser,
            _ => self.id,
        }
    }

    /// Checks the record's signatures for `cluster`: the member's own over its
    /// claim, and for a suspect or dead record the accuser's over an
    /// accusation at least as strong.
    ///
    /// # Errors
    ///
    /// [`Error::BadSignature`] naming whose signature failed.
    pub fn verify(&self, cluster: ClusterId) -> Result<(), Error> {
        let bad = |signer: NodeId, claim: &'static str| Error::BadSignature {
            subject: self.id,
            signer,
            claim,
        };
        match (self.status, &self.proof.accusation) {
            (MemberStatus::Alive | MemberStatus::Left, None) => {}
            (MemberStatus::Alive | MemberStatus::Left, Some(_)) => {
                return Err(bad(self.id, "an accusation on a self-claim"));
            }
            (MemberStatus::Suspect | MemberStatus::Dead, None) => {
                return Err(bad(self.id, "an accusation without its accuser"));
            }
            (status, Some(accusation)) => {
                let backs = matches!(
                    accusation.status,
                    MemberStatus::Suspect | MemberStatus::Dead
                ) && accusation.status >= status;
                let digest =
                    self.accusation_digest(cluster, accusation.status, &accusation.accuser);
                if !backs || !verify(&accusation.accuser, &digest, &accusation.signature) {
                    return Err(bad(accusation.accuser, "an accusation"));
                }
            }
        }
        if verify(&self.id, &self.owner_digest(cluster), &self.proof.owner) {
            Ok(())
        } else {
            Err(bad(self.id, "a self-claim"))
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

    /// The merge of two records about the same member: the latest of the
    /// member's own claims, suspect or dead if the strongest accusation is at
    /// that claim's incarnation and the claim is not a leave.
    ///
    /// # Panics
    ///
    /// If the records are about different members (caller misuse).
    pub fn join(&self, other: &Member) -> Member {
        assert_eq!(self.id, other.id, "joined records of different members");
        let owner = if owner_claim_key(other) > owner_claim_key(self) {
            other
        } else {
            self
        };
        let accused = match (accusation_key(self), accusation_key(other)) {
            (Some(a), Some(b)) => Some(if b > a { other } else { self }),
            (Some(_), None) => Some(self),
            (None, Some(_)) => Some(other),
            (None, None) => None,
        }
        .filter(|a| a.incarnation == owner.incarnation && owner.status != MemberStatus::Left);
        match accused {
            // The accusation's own record already holds the latest claim.
            Some(a) if owner_claim_key(a) == owner_claim_key(owner) => a.clone(),
            Some(a) => Member {
                status: a.status,
                proof: Proof {
                    owner: owner.proof.owner,
                    accusation: a.proof.accusation.clone(),
                },
                ..owner.clone()
            },
            // No accusation stands at the latest claim's incarnation: the
            // member's own claim stands alone.
            None => Member {
                status: owner.owner_status(),
                proof: Proof {
                    owner: owner.proof.owner,
                    accusation: None,
                },
                ..owner.clone()
            },
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

    /// What taking `claim` would make of the record `held` (`None` for a
    /// member not held): the merged record, or `None` if it changes
    /// nothing. Signatures are the caller's to [`verify`](Member::verify),
    /// and only when something changes.
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] for oversized metadata,
    /// [`Error::IncarnationJump`] for an implausible incarnation,
    /// [`Error::Stale`] for a claim at an incarnation older than held.
    pub fn merge_claim(
        held: Option<&Member>,
        claim: &Member,
        limits: &Limits,
    ) -> Result<Option<Member>, Error> {
        claim.validate(limits)?;
        let Some(held) = held else {
            return Ok(Some(claim.clone()));
        };
        held.incarnation
            .check_jump(claim.id, claim.incarnation, limits.max_incarnation_jump)?;
        let merged = held.join(claim);
        if merged != *held {
            return Ok(Some(merged));
        }
        if claim.incarnation < held.incarnation {
            return Err(Error::Stale {
                subject: claim.id,
                held: held.incarnation,
                got: claim.incarnation,
            });
        }
        Ok(None)
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
    /// Only the signatures changed: another accuser's on the suspicion or
    /// death held.
    Reattested,
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
            _ if before.status == self.after.status
                && before.incarnation == self.after.incarnation
                && before.state_version == self.after.state_version
                && before.meta == self.after.meta =>
            {
                Transition::Reattested
            }
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
/// use gossip_core::{
///     ClusterId, Limits, Member, MemberMeta, MemberStatus, Membership, NodeKey, Timestamp,
/// };
/// let cluster = ClusterId::from_name("doc");
/// let (me, peer) = (NodeKey::from_secret_bytes(&[1; 32]), NodeKey::from_secret_bytes(&[2; 32]));
/// let my_record = Member::new(me.id(), MemberMeta::default());
/// let mut table = Membership::new(me, cluster, my_record, Limits::default());
///
/// // The peer announces itself, signed; whoever relays it, it is the peer's.
/// let now = Timestamp::ZERO;
/// let mut announced = Member::new(peer.id(), MemberMeta::default());
/// announced.sign(&peer, cluster);
/// table.apply(now, announced).unwrap();
/// assert_eq!(table.count(MemberStatus::Alive), 2);
///
/// // We accuse it (signed by us); it stays in the table as a suspect.
/// table.accuse(now, peer.id(), MemberStatus::Suspect).unwrap();
/// let held = table.get(&peer.id()).unwrap();
/// assert_eq!((held.status, held.origin()), (MemberStatus::Suspect, table.local_id()));
/// ```
#[derive(Debug, Clone)]
pub struct Membership {
    /// Signs the local record and this node's accusations.
    key: NodeKey,
    cluster: ClusterId,
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
    /// Departed members collected within the last horizon, with the
    /// incarnation they departed at and when they were collected: a peer
    /// that has not collected them yet would otherwise hand their records
    /// back, and two replicas could pass one ghost between them forever.
    forgotten: BTreeMap<NodeId, (Incarnation, Timestamp)>,
    /// Nodes the operator revoked: no claim by or about them is taken.
    revoked: BTreeSet<NodeId>,
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
    /// A table holding only the local node, whose record is `local` (its
    /// incarnation, state version and metadata) signed with `key` for
    /// `cluster`.
    pub fn new(key: NodeKey, cluster: ClusterId, local: Member, limits: Limits) -> Self {
        let mut local = Member {
            id: key.id(),
            status: MemberStatus::Alive,
            ..local
        };
        local.sign(&key, cluster);
        Membership {
            key,
            cluster,
            local,
            others: BTreeSet::new(),
            counts: [0; 4],
            departed: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            revoked: BTreeSet::new(),
            limits,
        }
    }

    /// The cluster whose claims this table takes.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The local node's signing key.
    pub fn key(&self) -> &NodeKey {
        &self.key
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

    /// Merges a claim about a member: its own record of itself, or an
    /// accusation by another ([`Member::origin`] says whose).
    ///
    /// A claim that would change the table is verified first
    /// ([`Member::verify`]); one that changes nothing costs no verification.
    /// Accusations of the local node, and records of it that this life did
    /// not make, are reported, not applied.
    ///
    /// Returns the change, if the claim changed anything.
    ///
    /// # Errors
    ///
    /// * [`Error::BadSignature`] for a claim its maker did not sign;
    /// * [`Error::Stale`] for a claim at an older incarnation than held;
    /// * [`Error::IncarnationJump`] for an implausible incarnation;
    /// * [`Error::Revoked`] for a claim by or about a revoked node;
    /// * [`Error::LimitExceeded`] for oversized metadata or a full table.
    ///
    /// In every error case the table is unchanged.
    pub fn apply(
        &mut self,
        now: Timestamp,
        claim: Member,
    ) -> Result<Option<MembershipEvent>, Error> {
        self.apply_claim(now, claim, false)
    }

    /// As [`apply`](Membership::apply), holding `claim`'s allocation when the
    /// claim is what the table ends up with.
    ///
    /// The claim is taken **without verifying its signatures**: for records
    /// this node held before (its own storage) or got from a table that
    /// verified them (the sync's state). Network input goes through
    /// [`apply`](Membership::apply).
    ///
    /// # Errors
    ///
    /// As [`apply`](Membership::apply), but for signatures.
    pub fn apply_verified(
        &mut self,
        now: Timestamp,
        claim: impl Into<Arc<Member>> + Borrow<Member>,
    ) -> Result<Option<MembershipEvent>, Error> {
        self.apply_claim(now, claim, true)
    }

    fn apply_claim<C: Borrow<Member> + Into<Arc<Member>>>(
        &mut self,
        now: Timestamp,
        shared_claim: C,
        verified: bool,
    ) -> Result<Option<MembershipEvent>, Error> {
        let claim = shared_claim.borrow();
        claim.validate(&self.limits)?;
        let subject = claim.id;
        let origin = claim.origin();
        for id in [subject, origin] {
            if self.revoked.contains(&id) {
                return Err(Error::Revoked { id });
            }
        }
        let verify = |claim: &Member| {
            if verified {
                Ok(())
            } else {
                claim.verify(self.cluster)
            }
        };

        if subject == self.local.id {
            self.local.incarnation.check_jump(
                subject,
                claim.incarnation,
                self.limits.max_incarnation_jump,
            )?;
            let here = claim.meta.addr() == self.local.meta.addr();
            let elsewhere = origin == subject && !here && !claim.status.is_departed();
            if *claim == self.local || (!elsewhere && !claim.overrides(&self.local)) {
                return Ok(None);
            }
            verify(claim)?;
            if elsewhere {
                return Ok(Some(MembershipEvent::ClaimedElsewhere {
                    claim: claim.clone(),
                }));
            }
            // An accusation, or a record of this node that this life did not
            // make: an earlier life here (a restart that kept no
            // incarnation) that peers still hold, or a leave made elsewhere.
            // Either way the node refutes above it.
            return Ok(Some(MembershipEvent::AccusedSelf {
                claim: claim.clone(),
                origin,
            }));
        }

        let current = self.other(&subject);
        if current.is_none()
            && claim.status.is_departed()
            && self
                .forgotten
                .get(&subject)
                .is_some_and(|(incarnation, _)| claim.incarnation <= *incarnation)
        {
            // The departure of a member collected here: old news.
            return Ok(None);
        }
        let Some(merged) = Member::merge_claim(current, claim, &self.limits)? else {
            return Ok(None);
        };
        verify(claim)?;
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

        if current.is_none() {
            Error::check(Limited::Members, self.len() + 1, self.limits.max_members)?;
        }
        let record: Arc<Member> = if merged == *claim {
            shared_claim.into()
        } else {
            Arc::new(merged.clone())
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
            self.forgotten.remove(&subject);
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
        let Some(claim) = self.accusation(subject, status) else {
            return Ok(None);
        };
        self.apply_claim(now, claim, true)
    }

    /// The local node's signed accusation of `subject` (not the local node)
    /// as `status`, at the incarnation it is held at; `None` for a member not
    /// held. Changes nothing: what a node sends to confirm a suspicion it
    /// already holds.
    pub fn accusation(&self, subject: NodeId, status: MemberStatus) -> Option<Member> {
        let held = self.other(&subject)?;
        Some(held.accused(&self.key, self.cluster, status))
    }

    /// Revokes `id` for good (until [`reinstate`](Membership::reinstate)d):
    /// its record is removed, and no claim by or about it is taken any more.
    /// Returns whether a record was removed. The local node cannot be revoked.
    pub fn revoke(&mut self, id: NodeId) -> bool {
        if id == self.local.id {
            return false;
        }
        self.revoked.insert(id);
        self.departed.remove(&id);
        match self.others.take(&id) {
            Some(ById(member)) => {
                self.counts[status_index(member.status)] -= 1;
                true
            }
            None => false,
        }
    }

    /// Takes claims by and about `id` again, after a revocation was lifted.
    pub fn reinstate(&mut self, id: &NodeId) {
        self.revoked.remove(id);
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// The revoked ids, in order.
    pub fn revoked(&self) -> impl Iterator<Item = &NodeId> {
        self.revoked.iter()
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
        self.sign_local();
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
        self.sign_local();
        Ok(&self.local)
    }

    /// Records that the local key/value state reached `version`.
    pub fn set_local_state_version(&mut self, version: u64) {
        if version > self.local.state_version {
            self.local.state_version = version;
            self.sign_local();
        }
    }

    /// Marks the local node as having left. Returns the record to announce.
    pub fn leave(&mut self) -> &Member {
        if self.local.status != MemberStatus::Left {
            self.local.status = MemberStatus::Left;
            self.sign_local();
        }
        &self.local
    }

    fn sign_local(&mut self) {
        self.local.sign(&self.key, self.cluster);
    }

    /// Removes departed members whose last change is at least `horizon` old,
    /// returning their ids. Choose a horizon longer than any rumor lives, so
    /// that a stale alive rumor cannot bring a removed member back. For
    /// another `horizon`, the departure of a removed member (at its
    /// incarnation or below) is old news, so a peer that has not collected
    /// it yet cannot hand it back; a new life (an alive claim) is taken.
    pub fn collect_departed(&mut self, now: Timestamp, horizon: Duration) -> Vec<NodeId> {
        let old = |at: &Timestamp| now.saturating_duration_since(*at) >= horizon;
        self.forgotten.retain(|_, (_, at)| !old(at));
        let expired: Vec<NodeId> = self
            .departed
            .iter()
            .filter(|(_, at)| old(at))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.departed.remove(id);
            if let Some(ById(member)) = self.others.take(id) {
                self.counts[status_index(member.status)] -= 1;
                self.forgotten.insert(*id, (member.incarnation, now));
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
    use crate::Refusal;
    use MemberStatus::*;

    const CLUSTER: ClusterId = ClusterId::from_bytes([1; 8]);
    const T: Timestamp = Timestamp::ZERO;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_secret_bytes(&[n; 32])
    }

    fn id(n: u8) -> NodeId {
        key(n).id()
    }

    /// Node `n`'s own record at `inc`, signed by it.
    fn own(n: u8, inc: u64, status: MemberStatus) -> Member {
        let mut record = Member::new(id(n), MemberMeta::default());
        record.incarnation = Incarnation::new(inc);
        record.status = status;
        record.sign(&key(n), CLUSTER);
        record
    }

    /// Node `n` at `inc` accused of `status` by node `by`.
    fn accused(n: u8, inc: u64, status: MemberStatus, by: u8) -> Member {
        own(n, inc, Alive).accused(&key(by), CLUSTER, status)
    }

    /// A record as its subject or (suspect, dead) node 99 would make it.
    fn rec(n: u8, inc: u64, status: MemberStatus) -> Member {
        match status {
            Suspect | Dead => accused(n, inc, status, 99),
            _ => own(n, inc, status),
        }
    }

    fn table() -> Membership {
        table_with(Limits::default())
    }

    fn table_with(limits: Limits) -> Membership {
        Membership::new(
            key(0),
            CLUSTER,
            Member::new(id(0), MemberMeta::default()),
            limits,
        )
    }

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
    fn a_joined_record_keeps_the_accusation_and_the_latest_own_claim_and_verifies() {
        let mut newer = Member::new(id(1), MemberMeta::default());
        newer.incarnation = Incarnation::new(1);
        newer.state_version = 9;
        newer.sign(&key(1), CLUSTER);
        let suspected = accused(1, 1, Suspect, 2);
        for joined in [newer.join(&suspected), suspected.join(&newer)] {
            assert_eq!(joined.status, Suspect);
            assert_eq!(joined.state_version, 9);
            assert_eq!(joined.origin(), id(2));
            joined.verify(CLUSTER).unwrap();
        }
        // A later life of its own clears an older accusation.
        let refuted = own(1, 2, Alive).join(&suspected);
        assert_eq!((refuted.status, &refuted.proof.accusation), (Alive, &None));
        refuted.verify(CLUSTER).unwrap();
        // A leave beats a death at its incarnation.
        let left = own(1, 1, Left).join(&accused(1, 1, Dead, 2));
        assert_eq!(left.status, Left);
        left.verify(CLUSTER).unwrap();
    }

    #[test]
    fn a_record_verifies_only_as_its_signers_made_it() {
        let good = accused(1, 3, Dead, 2);
        good.verify(CLUSTER).unwrap();
        // A death heard too early is held as a suspicion: still verifies.
        good.with_status(Suspect).verify(CLUSTER).unwrap();
        let bad = |record: Member| {
            let err = record.verify(CLUSTER).unwrap_err();
            assert!(matches!(err, Error::BadSignature { .. }), "{err}");
        };
        // A suspicion does not back a death.
        bad(accused(1, 3, Suspect, 2).with_status(Dead));
        // Another cluster, another incarnation, another state version.
        good.verify(ClusterId::from_bytes([2; 8])).unwrap_err();
        bad(Member {
            incarnation: Incarnation::new(4),
            ..good.clone()
        });
        bad(Member {
            state_version: 1,
            ..good.clone()
        });
        // The accuser named is not the one who signed.
        let mut forged_accuser = good.clone();
        if let Some(accusation) = forged_accuser.proof.accusation.as_mut() {
            accusation.accuser = id(3);
        }
        bad(forged_accuser);
        // Alive records carry no accusation; accusations need one.
        bad(Member {
            status: Alive,
            ..good.clone()
        });
        bad(own(1, 3, Alive).with_status(Dead));
        // Unsigned, or signed by another key.
        bad(Member::new(id(1), MemberMeta::default()));
        let mut by_another = Member::new(id(1), MemberMeta::default());
        by_another.proof.owner = own(2, 0, Alive).proof.owner;
        bad(by_another);
    }

    #[test]
    fn relayed_accusation_is_accepted_and_reports_origin() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive)).unwrap();
        let ev = t.apply(T, accused(1, 0, Suspect, 2)).unwrap().unwrap();
        let MembershipEvent::Changed(change) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(change.origin, id(2));
        assert_eq!(change.transition(), Transition::Suspected);
    }

    #[test]
    fn claims_not_signed_by_their_maker_are_refused_and_change_nothing() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive)).unwrap();
        let before = t.get(&id(1)).cloned();
        let forged = |mut record: Member| {
            // Signed by node 2, claiming to be node 1's.
            record.proof.owner = {
                let mut as_two = Member {
                    id: id(2),
                    ..record.clone()
                };
                as_two.sign(&key(2), CLUSTER);
                as_two.proof.owner
            };
            record
        };
        let claims = [
            forged(own(1, 1, Alive)),
            forged(own(1, 0, Left)),
            forged(at(own(1, 1, Alive), [10, 9, 9, 9])),
            Member::new(id(3), MemberMeta::default()),
        ];
        for claim in claims {
            let err = t.apply(T, claim).unwrap_err();
            assert!(matches!(err, Error::BadSignature { .. }), "{err}");
            assert_eq!(t.get(&id(1)).cloned(), before);
        }
        // A forged accuser on a death.
        let mut dead = accused(1, 0, Dead, 2);
        if let Some(accusation) = dead.proof.accusation.as_mut() {
            accusation.accuser = id(4);
        }
        assert!(matches!(t.apply(T, dead), Err(Error::BadSignature { .. })));
        assert_eq!(t.get(&id(1)).cloned(), before);
        // A member's own claim relayed by anyone is taken: it is signed.
        let relayed = t.apply(T, own(3, 0, Alive)).unwrap();
        assert!(matches!(relayed, Some(MembershipEvent::Changed(_))));
    }

    #[test]
    fn an_older_signed_claim_is_refused_as_stale() {
        let mut t = table();
        t.apply(T, own(1, 5, Alive)).unwrap();
        let before = t.get(&id(1)).cloned();
        for replay in [own(1, 4, Alive), own(1, 4, Left), accused(1, 4, Dead, 2)] {
            let err = t.apply(T, replay).unwrap_err();
            assert!(matches!(err, Error::Stale { .. }), "{err}");
            assert_eq!(err.refusal(), Some(Refusal::Stale));
            assert_eq!(t.get(&id(1)).cloned(), before);
        }
        // The record held, heard again: nothing to do, nothing refused.
        assert_eq!(t.apply(T, own(1, 5, Alive)).unwrap(), None);
    }

    #[test]
    fn suspicion_of_self_is_reported_not_applied() {
        let mut t = table();
        let ev = t.apply(T, accused(0, 0, Suspect, 2)).unwrap();
        assert!(matches!(ev, Some(MembershipEvent::AccusedSelf { .. })));
        assert_eq!(t.local().status, Alive);
        let refuted = t.refute(Incarnation::new(0)).unwrap();
        assert_eq!(refuted.incarnation, Incarnation::new(1));
        refuted.verify(CLUSTER).unwrap();
        assert_eq!(t.apply(T, accused(0, 0, Suspect, 2)).unwrap(), None);
        let forged_leave = Member {
            status: Left,
            ..accused(0, 1, Suspect, 2)
        };
        assert!(t.apply(T, forged_leave).is_err());
    }

    #[test]
    fn suspicion_at_the_maximum_incarnation_cannot_wedge_refutation() {
        let mut t = table();
        let mut top = Member::new(id(0), MemberMeta::default());
        top.incarnation = Incarnation::MAX;
        let forged = top.accused(&key(2), CLUSTER, Suspect);
        let err = t.apply(T, forged).unwrap_err();
        assert!(matches!(err, Error::IncarnationJump { .. }), "{err}");
        assert_eq!(t.local().incarnation, Incarnation::ZERO);
        assert!(t.refute(Incarnation::ZERO).is_ok());
    }

    #[test]
    fn restarted_member_rejoins_with_higher_incarnation() {
        let mut t = table();
        t.apply(T, rec(1, 4, Alive)).unwrap();
        t.accuse(T, id(1), Dead).unwrap();
        assert_eq!(t.get(&id(1)).unwrap().origin(), id(0));
        assert_eq!(
            t.apply(T, rec(1, 4, Alive)).unwrap(),
            None,
            "stale alive loses to dead"
        );
        let ev = t.apply(T, rec(1, 5, Alive)).unwrap().unwrap();
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
        let mut t = table_with(limits);
        let mut long = rec(1, 0, Alive);
        long.meta = Arc::new(MemberMeta::new("too long", []));
        long.sign(&key(1), CLUSTER);
        assert!(matches!(
            t.apply(T, long),
            Err(Error::LimitExceeded {
                what: Limited::NameBytes,
                ..
            })
        ));
        t.apply(T, rec(1, 0, Alive)).unwrap();
        let err = t.apply(T, rec(2, 0, Alive)).unwrap_err();
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
    fn a_revoked_node_is_removed_and_nothing_by_or_about_it_is_taken() {
        let mut t = table();
        t.apply(T, rec(1, 0, Alive)).unwrap();
        t.apply(T, rec(2, 0, Alive)).unwrap();
        assert!(t.revoke(id(1)));
        assert_eq!(t.get(&id(1)), None);
        assert_eq!(t.count(Alive), 2);
        let about = t.apply(T, rec(1, 1, Alive)).unwrap_err();
        assert!(matches!(about, Error::Revoked { .. }), "{about}");
        let by = t.apply(T, accused(2, 0, Dead, 1)).unwrap_err();
        assert_eq!(by.refusal(), Some(Refusal::Revoked));
        assert_eq!(t.get(&id(2)).unwrap().status, Alive);
        assert!(!t.revoke(id(0)), "the local node cannot be revoked");
        t.reinstate(&id(1));
        assert!(t.apply(T, rec(1, 1, Alive)).unwrap().is_some());
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
        t.apply(T, rec(1, 0, Alive)).unwrap();
        t.apply(T, rec(2, 0, Alive)).unwrap();
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
    fn a_collected_departure_is_old_news_for_a_horizon_but_a_new_life_is_taken() {
        let mut t = table();
        let h = Duration::from_secs(30);
        t.apply(T, rec(1, 3, Alive)).unwrap();
        t.accuse(Timestamp::from_millis(10), id(1), Dead).unwrap();
        let collected = Timestamp::from_millis(30_010);
        assert_eq!(t.collect_departed(collected, h), vec![id(1)]);
        // A peer that has not collected it yet hands its death back.
        let later = Timestamp::from_millis(31_000);
        assert_eq!(t.apply(later, rec(1, 3, Dead)).unwrap(), None);
        assert_eq!(t.apply(later, rec(1, 2, Left)).unwrap(), None);
        assert!(t.get(&id(1)).is_none(), "no ghost");
        // A departure at a later incarnation is news.
        assert!(t.apply(later, rec(1, 4, Left)).unwrap().is_some());
        assert_eq!(
            t.collect_departed(Timestamp::from_millis(61_000), h),
            vec![id(1)]
        );
        // A new life is taken whatever its incarnation (a restart that kept
        // none), and ends the memory of the old one.
        assert!(
            t.apply(Timestamp::from_millis(62_000), rec(1, 0, Alive))
                .unwrap()
                .is_some()
        );
        t.accuse(Timestamp::from_millis(62_000), id(1), Dead)
            .unwrap();
        assert_eq!(
            t.collect_departed(Timestamp::from_millis(92_000), h),
            vec![id(1)]
        );
        // After a second horizon, the departure is taken again.
        t.collect_departed(Timestamp::from_millis(122_000), h);
        assert!(
            t.apply(Timestamp::from_millis(122_000), rec(1, 0, Dead))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn an_earlier_life_at_this_address_is_refuted_and_one_elsewhere_is_reported() {
        let mut t = table();
        // Peers still hold this node's earlier life: alive at 2, here.
        let earlier = rec(0, 2, Alive);
        let ev = t.apply(T, earlier.clone()).unwrap();
        assert!(
            matches!(ev, Some(MembershipEvent::AccusedSelf { ref claim, .. }) if *claim == earlier),
            "{ev:?}"
        );
        // ... or its leave.
        let ev = t.apply(T, rec(0, 2, Left)).unwrap();
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
            let ev = t.apply(T, elsewhere.clone()).unwrap();
            assert_eq!(
                ev,
                Some(MembershipEvent::ClaimedElsewhere { claim: elsewhere })
            );
        }
        // A leave made elsewhere is refuted: whoever made it has gone.
        let ev = t.apply(T, at(rec(0, 2, Left), [10, 9, 9, 9])).unwrap();
        assert!(
            matches!(ev, Some(MembershipEvent::AccusedSelf { .. })),
            "{ev:?}"
        );
        assert_eq!(t.local().incarnation, Incarnation::ZERO, "nothing applied");
        // This life's own record, relayed back: nothing to do.
        let own = t.local().clone();
        assert_eq!(t.apply(T, own).unwrap(), None);
    }

    /// `record` (an alive or left one) with `ip` as its only address, signed
    /// again by its subject.
    fn at(mut record: Member, ip: [u8; 4]) -> Member {
        record.meta = Arc::new(MemberMeta::new(
            record.meta.name(),
            [SocketAddr::from((ip, 1))],
        ));
        let n = (0..=u8::MAX).find(|n| id(*n) == record.id).unwrap();
        record.sign(&key(n), CLUSTER);
        record
    }

    #[test]
    fn a_live_member_is_never_moved_to_another_address() {
        let mut t = table();
        let held = rec(1, 1, Alive);
        t.apply(T, held.clone()).unwrap();
        // Its key at another address, claiming a newer life, and then
        // leaving there: both refused, both reported.
        for status in [Alive, Left] {
            let impostor = at(rec(1, 2, status), [10, 9, 9, 9]);
            let ev = t.apply(T, impostor.clone()).unwrap();
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
        let err = t.apply(T, stale).unwrap_err();
        assert!(matches!(err, Error::Stale { .. }), "{err}");
        // Once the member is dead, its next life may come from anywhere.
        t.accuse(T, id(1), Dead).unwrap();
        let moved = at(rec(1, 2, Alive), [10, 9, 9, 9]);
        let ev = t.apply(T, moved.clone()).unwrap();
        assert!(matches!(ev, Some(MembershipEvent::Changed(_))), "{ev:?}");
        assert_eq!(t.get(&id(1)), Some(&moved));
    }
}
