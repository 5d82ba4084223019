//! Dissemination: claims heard are merged into the table, every change is
//! queued as a rumor, and rumors ride on probes, acks and pushes or, when
//! fresh, are pushed to a few members at once.

use std::net::SocketAddr;

use gossip_core::{
    Error as CoreError, HEADER_LEN, Incarnation, Member, MemberChange, MemberStatus,
    MembershipEvent, NodeId, PackedRumors, Placement, Rumor, Transition, choose_weighted,
    encode_frame, encoded_len,
};

use super::Swim;
use super::timer::Timer;
use crate::config::PeerSelection;
use crate::event::{Event, Provenance, Transmit};
use crate::message::{Message, StateDigest};

/// Most members a node back from a stall sends its record to directly:
/// every member of a cluster this size or smaller, a burst of small
/// datagrams once per stall.
const MAX_DIRECT_ANNOUNCEMENTS: usize = 1024;

/// Whether a claim's signatures were checked before it reached SWIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checked {
    /// Network input: SWIM's table checks them.
    No,
    /// Checked by a verifying table the claim came through.
    Already,
}

impl Swim {
    pub(super) fn queue_rumor(&mut self, rumor: Rumor) {
        // Suspicions, deaths, departures and refutations (any alive record
        // past incarnation 0) race a timer somewhere; joins and state do not.
        let urgent = matches!(&rumor, Rumor::Member { member, .. }
            if member.status != MemberStatus::Alive || member.incarnation > Incarnation::ZERO);
        self.urgent_news |= urgent;
        // Records were validated when taken, so a refusal here is
        // unreachable in practice; it is counted all the same.
        match self.rumors.push(rumor) {
            Ok(_) => self.fresh_news = true,
            Err(err) => {
                if let Some(reason) = err.refusal() {
                    self.stats.refused.count(reason);
                }
            }
        }
    }

    /// Encodes and queues one datagram, filling the room left with rumors.
    pub(super) fn send(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        message: Message,
        with_rumors: bool,
    ) {
        self.send_on(to, addr, message, with_rumors, false);
    }

    /// As [`send`](Swim::send), over a reliable channel if `reliable`.
    pub(super) fn send_on(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        message: Message,
        with_rumors: bool,
        reliable: bool,
    ) {
        let rumors = if with_rumors {
            let room = self
                .max_datagram
                .saturating_sub(HEADER_LEN + encoded_len(&message));
            self.rumors.pack(room, self.members.live_count())
        } else {
            PackedRumors::empty()
        };
        self.send_packed(to, addr, message, &rumors, reliable);
    }

    /// Encodes and queues one datagram carrying `rumors`.
    fn send_packed(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        message: Message,
        rumors: &PackedRumors,
        reliable: bool,
    ) {
        let mut payload = Vec::with_capacity(self.max_datagram);
        // The only failure is a frame over the configured cap, which our own
        // sizing prevents; such a frame is dropped rather than sent.
        if encode_frame(
            self.config.cluster,
            &message,
            rumors,
            &self.config.limits,
            &mut payload,
        )
        .is_ok()
        {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += payload.len() as u64;
            let push = matches!(message, Message::Gossip { .. });
            self.transmits.push(Transmit {
                to,
                addr,
                payload,
                push,
                reliable,
            });
        }
    }

    /// Work left at the end of every input: push fresh rumors, finish a leave.
    pub(super) fn flush(&mut self) {
        self.flush_excluding(&[]);
    }

    /// As [`flush`](Swim::flush), pushing to no one in `exclude`.
    pub(super) fn flush_excluding(&mut self, exclude: &[NodeId]) {
        if self.fresh_news && !self.push_waiting {
            match self.last_push.map(|at| at + self.config.push_interval) {
                Some(next) if next > self.now => {
                    self.push_waiting = true;
                    self.timers.set(next, Timer::Push);
                }
                _ => self.push_news(exclude),
            }
        }
        self.finish_leave();
    }

    /// Pushes the queued rumors to `gossip_fanout` members, none in `exclude`.
    pub(super) fn push_news(&mut self, exclude: &[NodeId]) {
        if self.config.gossip_fanout > 0 {
            // Urgent news goes to members drawn afresh, so every push reaches
            // new nodes. Other news goes to the members next in the probe
            // rotation: random per node, few at a time, about to be probed
            // anyway (see `ProbeOrder::upcoming`), so a join storm does not
            // make every node contact every other at once. Both cost
            // O(fanout), not O(n), per piece of news.
            let fanout = self.config.gossip_fanout;
            let targets = match self.config.peer_selection {
                PeerSelection::RoundRobin if !self.urgent_news => {
                    self.order.upcoming(fanout, exclude)
                }
                PeerSelection::RoundRobin | PeerSelection::Random => {
                    self.order.choose_random(fanout, exclude, &mut self.rng)
                }
                PeerSelection::Weighted { cross_zone_share } => {
                    let local_zone = self.placement(&self.local_id()).zone.clone();
                    let placements = &self.placements;
                    let candidates = self
                        .order
                        .iter()
                        .map(|id| (*id, placements.get(id).unwrap_or(&Placement::DEFAULT)));
                    choose_weighted(
                        candidates,
                        local_zone.as_deref(),
                        cross_zone_share,
                        fanout,
                        exclude,
                        &mut self.rng,
                    )
                }
            };
            for target in targets {
                if self.rumors.is_empty() {
                    break;
                }
                if let Some(addr) = self.address_of(&target) {
                    self.stats.gossip_pushes += 1;
                    self.last_push = Some(self.now);
                    self.send(
                        Some(target),
                        addr,
                        Message::Gossip {
                            state_digest: self.state_digest,
                        },
                        true,
                    );
                }
            }
        }
        self.fresh_news = false;
        self.urgent_news = false;
    }

    pub(super) fn handle_rumor(&mut self, from: NodeId, rumor: Rumor) {
        match rumor {
            Rumor::Member { member } => self.apply_claim(from, member, Checked::No),
            Rumor::State { owner, .. } => {
                let checked = if self.members.is_revoked(&owner) {
                    Err(CoreError::Revoked { id: owner })
                } else {
                    rumor.verify(self.config.cluster)
                };
                match (checked, rumor) {
                    (Err(err), _) => self.refused(from, owner, err),
                    (Ok(()), Rumor::State { owner, entry, .. }) => {
                        self.events.push(Event::StateRumor { owner, entry, from })
                    }
                    (Ok(()), _) => {}
                }
            }
            _ => {}
        }
    }

    /// Merges one membership claim that `from` passed on, turning the
    /// outcome into events, rumors and suspicion bookkeeping.
    pub(super) fn apply_claim(&mut self, from: NodeId, claim: Member, checked: Checked) {
        let local = self.members.local();
        if claim.id == local.id
            && matches!(claim.status, MemberStatus::Suspect | MemberStatus::Dead)
            && claim.incarnation < local.incarnation
            && self.leaving.is_none()
        {
            // An accusation we have already refuted: its sender missed the
            // refutation (lost, or out of retransmits). Say it again, so it
            // rides on our answer, before that sender's timer runs out.
            let member = local.clone();
            if let Ok(gossip_core::Pushed::Queued) = self.rumors.push(Rumor::Member { member }) {
                self.fresh_news = true;
            }
            return;
        }
        let claimed_dead = claim.status == MemberStatus::Dead;
        let claim = self.unseen_suspicion(claim);
        let death_held_back = claimed_dead && claim.status == MemberStatus::Suspect;
        if !self.note_confirmation(from, &claim) {
            return;
        }
        let subject = claim.id;
        let outcome = match checked {
            Checked::No => self.members.apply(self.now, claim),
            Checked::Already => self.members.apply_verified(self.now, claim),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(MembershipEvent::Changed(change))) => self.on_change(change),
            Ok(Some(MembershipEvent::AccusedSelf { claim, origin })) => {
                self.refute(claim.incarnation, origin);
            }
            Ok(Some(MembershipEvent::ClaimedElsewhere { claim })) => self.claimed_elsewhere(&claim),
            Ok(Some(MembershipEvent::AddressConflict {
                held,
                claim,
                origin,
            })) => self.address_conflict(&held, &claim, origin),
            Ok(Some(_)) => {}
            Err(err) => self.refused(from, subject, err),
        }
        if death_held_back {
            self.check_before_death(subject);
        }
    }

    pub(super) fn on_change(&mut self, change: MemberChange) {
        let transition = change.transition();
        self.update_rotation(change.before.as_ref(), &change.after);
        let MemberChange { after, origin, .. } = change;
        let id = after.id;

        // Suspicion bookkeeping first, so events can report it.
        let ended = if after.status == MemberStatus::Suspect {
            self.suspect(id, after.incarnation, origin);
            None
        } else {
            self.unreachable.remove(&id);
            self.suspicions.remove(&id)
        };

        if after.status.is_departed() && self.probe.as_ref().is_some_and(|p| p.target() == id) {
            self.probe = None;
        }

        if transition == Transition::Reattested {
            // Another accuser's signature on the suspicion or death held:
            // not news (confirmations travel on their own).
            return;
        }
        let event = match transition {
            Transition::Joined => Event::Joined(after.clone()),
            Transition::Suspected => Event::Suspected {
                member: after.clone(),
                by: origin,
                local_health: self.awareness.score(),
            },
            Transition::Recovered => Event::Recovered(after.clone()),
            Transition::Failed => Event::Failed {
                member: after.clone(),
                provenance: Provenance {
                    declared_by: origin,
                    suspected_by: ended.as_ref().map(|s| s.accuser()),
                    confirmations: ended.as_ref().map_or(0, |s| s.confirmations()),
                    local_health: self.awareness.score(),
                },
            },
            Transition::Left => Event::Left(after.clone()),
            Transition::Rejoined => Event::Rejoined(after.clone()),
            _ => Event::Updated(after.clone()),
        };
        self.events.push(event);
        self.queue_rumor(Rumor::Member { member: after });
    }

    /// Puts a member that comes into the cluster (new, or back from the
    /// dead) into the probe rotation, and takes one that departs out of it.
    pub(super) fn update_rotation(&mut self, before: Option<&Member>, after: &Member) {
        let was_live = before.is_some_and(|b| !b.status.is_departed());
        let is_live = !after.status.is_departed();
        if after.id != self.local_id() {
            match (was_live, is_live) {
                (false, true) => self.order.insert(after.id, &mut self.rng),
                (true, false) => {
                    self.order.remove(&after.id);
                    self.round_trips.remove(&after.id);
                }
                _ => {}
            }
        }
        debug_assert_eq!(
            self.order.len(),
            self.members.count(MemberStatus::Alive) + self.members.count(MemberStatus::Suspect)
                - usize::from(!self.members.local().status.is_departed()),
            "the rotation holds exactly the live members other than this one"
        );
    }

    /// Someone claims something about us at `accused` that overrides our
    /// record: raise our incarnation past it and say so.
    pub(super) fn refute(&mut self, accused: Incarnation, accuser: NodeId) {
        if self.leaving.is_some() {
            return;
        }
        if let Some(incarnation) = self.announce_alive(accused) {
            self.stats.refutations += 1;
            // Lifeguard: being suspected is a hint that we are the slow one.
            self.awareness.apply(1);
            self.events.push(Event::Refuted {
                incarnation,
                accused_by: accuser,
            });
        }
    }

    /// Raises the local incarnation past `above`, marks this node alive and
    /// spreads the new record; returns the new incarnation, or `None` (and
    /// counts it) when the incarnations are spent.
    pub(super) fn announce_alive(&mut self, above: Incarnation) -> Option<Incarnation> {
        match self.members.refute(above) {
            Ok(record) => {
                let record = record.clone();
                let incarnation = record.incarnation;
                self.queue_rumor(Rumor::Member { member: record });
                Some(incarnation)
            }
            Err(_) => {
                self.stats.refutations_failed += 1;
                None
            }
        }
    }

    /// Sends this node's own record straight to up to
    /// [`MAX_DIRECT_ANNOUNCEMENTS`] members, beside the rumor: a node back
    /// from a stall may be suspected by any of them, with deadlines that
    /// come before an epidemic would reach them all (and it may stall again
    /// before it answers their last calls).
    pub(super) fn announce_to_all(&mut self) {
        let rumor = Rumor::Member {
            member: self.members.local().clone(),
        };
        let packed = PackedRumors::one(&rumor);
        let targets = self
            .order
            .choose_random(MAX_DIRECT_ANNOUNCEMENTS, &[], &mut self.rng);
        for target in targets {
            if let Some(addr) = self.address_of(&target) {
                let message = Message::Gossip {
                    state_digest: self.state_digest,
                };
                self.send_packed(Some(target), addr, message, &packed, false);
            }
        }
    }

    /// Applies a table of records that `from` sent: each is its subject's
    /// own claim or an accusation, believed only if signed by its maker.
    pub(super) fn apply_records(
        &mut self,
        from: NodeId,
        records: impl IntoIterator<Item = Member>,
    ) {
        for record in records {
            self.apply_claim(from, record, Checked::No);
        }
    }

    /// Reports a peer whose state digest differs from the local one.
    pub(super) fn compare_digest(
        &mut self,
        from: NodeId,
        addr: SocketAddr,
        theirs: Option<StateDigest>,
    ) {
        if let (Some(theirs), Some(ours)) = (theirs, self.state_digest)
            && theirs != ours
            && !self.speaks_from_elsewhere(&from, addr)
        {
            self.stats.state_digest_mismatches += 1;
            self.events
                .push(Event::StateDigestDiffers { peer: from, addr });
        }
    }
}
