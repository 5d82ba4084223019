//! One identity, one live address: a claim that would move a live member
//! elsewhere is refused and reported, a record of this node alive elsewhere
//! is reported for the driver to check, and a joiner whose identity is alive
//! at another address is refused and told where.

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::BTreeMap;

use gossip_core::{Error as CoreError, Member, NodeId, Timestamp};

use super::Swim;
use crate::event::Event;
use crate::message::JoinRefusal;

/// How often one member's conflict, or one sender's refused claims, become an
/// event; the stats count every one. A refusal repeats with every relay of
/// the refused claim.
const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Whether a report about `id` in `reported` is due at `now`; if so, notes
/// it as made.
fn due_report(reported: &mut BTreeMap<NodeId, Timestamp>, id: NodeId, now: Timestamp) -> bool {
    let due = reported
        .get(&id)
        .is_none_or(|at| now.saturating_duration_since(*at) >= REPORT_INTERVAL);
    if due {
        reported.insert(id, now);
    }
    due
}

impl Swim {
    /// A live record of this node at another address. A claim above this
    /// life is refuted, so that this life wins wherever the other address is
    /// known to be gone; the driver learns which of the two it was.
    pub(super) fn claimed_elsewhere(&mut self, claim: &Member) {
        self.stats.claims_elsewhere += 1;
        if claim.overrides(self.members.local()) {
            self.refute(claim.incarnation, claim.id);
        }
        if let Some(addr) = claim.meta.addr()
            && self.first_report(claim.id)
        {
            self.events.push(Event::ClaimedElsewhere {
                addr,
                incarnation: claim.incarnation,
            });
        }
    }

    /// A claim that would have moved the live member `held` to another
    /// address, refused by the table.
    pub(super) fn address_conflict(&mut self, held: &Member, claim: &Member, origin: NodeId) {
        self.stats.address_conflicts += 1;
        if self.first_report(held.id) {
            self.events.push(Event::AddressConflict {
                member: held.id,
                held: held.meta.addr(),
                claimed: claim.meta.addr(),
                origin,
            });
        }
    }

    /// Whether `peer`, speaking from `addr`, is a second instance of a
    /// member held at another address (a conflict about it was reported,
    /// and `addr` is not the one held), or of this node. Its key/value
    /// state is not taken from there: the member's writes are the ones made
    /// where it is held.
    pub fn speaks_from_elsewhere(&self, peer: &NodeId, addr: SocketAddr) -> bool {
        self.conflicts_reported.contains_key(peer)
            && self
                .members
                .get(peer)
                .and_then(|m| m.meta.addr())
                .is_some_and(|held| held != addr)
    }

    /// Whether a conflict about `id` is to be reported now.
    fn first_report(&mut self, id: NodeId) -> bool {
        due_report(&mut self.conflicts_reported, id, self.now)
    }

    /// A claim that `from` passed on, about `subject`, refused with `err`:
    /// counted by reason, and reported at most once per sender per
    /// interval.
    pub(super) fn refused(&mut self, from: NodeId, subject: NodeId, err: CoreError) {
        let Some(reason) = err.refusal() else {
            return;
        };
        self.stats.refused.count(reason);
        if due_report(&mut self.refusals_reported, from, self.now) {
            self.events.push(Event::ClaimRefused {
                from,
                subject,
                reason,
                error: err,
            });
        }
    }

    /// Forgets refusal reports older than the interval, so the table holds
    /// only senders heard from lately. (Conflicts stay until their member
    /// is collected: they also mark where its writes are not taken from.)
    pub(super) fn forget_old_refusals(&mut self) {
        let now = self.now;
        self.refusals_reported
            .retain(|_, at| now.saturating_duration_since(*at) < REPORT_INTERVAL);
    }

    /// Why `joiner`, whose own record names `joiner_addr`, is not to be
    /// taken in: this node's table holds its identity alive at another
    /// address (or it is this node's own).
    pub(super) fn identity_in_use(
        &self,
        joiner: NodeId,
        joiner_addr: Option<SocketAddr>,
    ) -> Option<JoinRefusal> {
        let held = self.members.get(&joiner)?;
        let addr = held.meta.addr()?;
        let in_use =
            joiner == self.local_id() || (!held.status.is_departed() && joiner_addr != Some(addr));
        in_use.then_some(JoinRefusal::IdentityInUse {
            addr,
            incarnation: held.incarnation,
        })
    }
}
