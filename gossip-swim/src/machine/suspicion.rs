//! Suspicions: who is suspected, by whom, confirmed by whom, and when each
//! suspicion runs out (Lifeguard's dynamic timeout). The table hands out
//! the deadlines; the machine schedules them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use gossip_core::{Incarnation, Member, MemberStatus, MembershipEvent, NodeId, Rumor, Timestamp};

use super::Swim;
use super::timer::Timer;
use crate::event::Event;
use crate::lifeguard::{suspicion_bounds, suspicion_timeout};
use crate::message::{Message, TargetTag};

/// One member under suspicion, as tracked locally.
#[derive(Debug, Clone)]
pub(super) struct Suspicion {
    incarnation: Incarnation,
    started: Timestamp,
    accuser: NodeId,
    confirmers: BTreeSet<NodeId>,
    min: Duration,
    max: Duration,
    /// Distinguishes this suspicion's live timer from stale ones.
    token: u64,
    /// When the suspect, heard from directly, was last shown this suspicion.
    reminded: Option<Timestamp>,
    /// The earlier deadline set because the network says the suspect's
    /// process is gone (see [`Swim::handle_unreachable`]).
    unreachable_deadline: Option<Timestamp>,
    /// The check ping sent when this node learned of the suspicion, and
    /// when, while its answer is awaited.
    check: Option<(u32, Timestamp)>,
    /// Whether the suspect has spoken to this node since the check ping.
    heard: bool,
    /// Last calls the suspect got after the deadline, which this node
    /// reached late (it was stalled itself) or waiting for its own input:
    /// one, and one more once the wait for input ended.
    late_calls: u32,
    /// Check pings sent again after one went unanswered.
    rechecks: u32,
    /// Since when the declaration has waited for this node's own input to
    /// catch up (see [`Swim::handle_late_datagram`]).
    waiting_for_input: Option<Timestamp>,
}

impl Suspicion {
    fn deadline(&self, k: u32) -> Timestamp {
        let normal = self.started + suspicion_timeout(self.min, self.max, self.confirmations(), k);
        self.unreachable_deadline
            .map_or(normal, |fast| fast.min(normal))
    }

    /// Whether a member other than `local` suspects the subject: the
    /// accuser, or a confirmer.
    fn held_by_another_than(&self, local: NodeId) -> bool {
        self.accuser != local || self.confirmers.iter().any(|c| *c != local)
    }

    /// Who raised the suspicion.
    pub(super) fn accuser(&self) -> NodeId {
        self.accuser
    }

    /// Independent confirmations counted so far.
    pub(super) fn confirmations(&self) -> u32 {
        u32::try_from(self.confirmers.len()).unwrap_or(u32::MAX)
    }
}

/// Most check pings a node sends per probe interval: a failure is checked
/// at once, and a mass event (a partition, a rack lost) costs no burst of a
/// ping per suspect; K confirmations are all a suspicion can use.
const MAX_CHECKS_PER_INTERVAL: u32 = 8;

/// Most times a node checks a silent suspect again, a probe timeout apart,
/// while it has no evidence of its own: a crashing process can hold its
/// port for a moment (exiting, writing a core), and a ping that reached it
/// then drew neither an answer nor the ICMP error that a ping after the
/// port closed draws.
const MAX_RECHECKS: u32 = 3;

/// The suspicions this node holds, one per suspect.
#[derive(Debug, Clone, Default)]
pub(super) struct Suspicions {
    by_subject: BTreeMap<NodeId, Suspicion>,
    next_token: u64,
    /// When the current interval of check pings began, and how many went.
    checks_since: Timestamp,
    checks_sent: u32,
}

impl Suspicions {
    /// Whether another check ping may go now, counting it if so.
    fn allow_check(&mut self, now: Timestamp, interval: Duration) -> bool {
        if now.saturating_duration_since(self.checks_since) >= interval {
            self.checks_since = now;
            self.checks_sent = 0;
        }
        let allowed = self.checks_sent < MAX_CHECKS_PER_INTERVAL;
        if allowed {
            self.checks_sent += 1;
        }
        allowed
    }

    fn next_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Starts suspecting `subject` at `incarnation`, with timeout bounds
    /// `min` and `max`; returns the deadline and its token.
    fn start(
        &mut self,
        subject: NodeId,
        incarnation: Incarnation,
        accuser: NodeId,
        now: Timestamp,
        (min, max): (Duration, Duration),
        k: u32,
    ) -> (Timestamp, u64) {
        let suspicion = Suspicion {
            incarnation,
            started: now,
            accuser,
            confirmers: BTreeSet::new(),
            min,
            max,
            token: self.next_token(),
            reminded: None,
            unreachable_deadline: None,
            check: None,
            heard: false,
            late_calls: 0,
            rechecks: 0,
            waiting_for_input: None,
        };
        let deadline = (suspicion.deadline(k), suspicion.token);
        self.by_subject.insert(subject, suspicion);
        deadline
    }

    /// Whether `origin`'s suspicion of `subject` at `incarnation` would count
    /// as an independent confirmation: a suspicion at that incarnation is
    /// held, by another accuser, with fewer than `k` confirmations, none of
    /// them `origin`'s.
    fn would_confirm(
        &self,
        subject: &NodeId,
        incarnation: Incarnation,
        origin: NodeId,
        k: u32,
    ) -> bool {
        self.by_subject.get(subject).is_some_and(|s| {
            s.incarnation == incarnation
                && s.accuser != origin
                && s.confirmations() < k
                && !s.confirmers.contains(&origin)
        })
    }

    /// Counts `origin`'s suspicion of `subject` at `incarnation` as an
    /// independent confirmation, if it is one and fewer than `k` are
    /// counted; returns the new, earlier deadline and its token.
    fn confirm(
        &mut self,
        subject: &NodeId,
        incarnation: Incarnation,
        origin: NodeId,
        k: u32,
    ) -> Option<(Timestamp, u64)> {
        let token = self.next_token + 1;
        let suspicion = self.by_subject.get_mut(subject)?;
        if suspicion.incarnation != incarnation
            || suspicion.accuser == origin
            || suspicion.confirmations() >= k
            || !suspicion.confirmers.insert(origin)
        {
            return None;
        }
        self.next_token = token;
        suspicion.token = token;
        Some((suspicion.deadline(k), token))
    }

    /// Brings the deadline of the suspicion of `subject` to `at` (no sooner
    /// than its start plus `wait`), if that is earlier; returns the new
    /// deadline and its token.
    fn hasten(
        &mut self,
        subject: &NodeId,
        at: Timestamp,
        wait: Duration,
        k: u32,
    ) -> Option<(Timestamp, u64)> {
        let token = self.next_token + 1;
        let suspicion = self.by_subject.get_mut(subject)?;
        let at = at.max(suspicion.started + wait);
        if suspicion.deadline(k) <= at {
            return None;
        }
        suspicion.unreachable_deadline = Some(at);
        self.next_token = token;
        suspicion.token = token;
        Some((suspicion.deadline(k), token))
    }

    /// Ends every check ping in flight without a verdict: their answers
    /// were lost while this node was stalled.
    fn forget_checks(&mut self) {
        for suspicion in self.by_subject.values_mut() {
            suspicion.check = None;
        }
    }

    /// The check ping `seq` of `from` was acked: returns when it went out,
    /// for a round-trip sample.
    pub(super) fn check_answered(&mut self, from: &NodeId, seq: u32) -> Option<Timestamp> {
        let suspicion = self.by_subject.get_mut(from)?;
        let (check, sent) = suspicion.check?;
        (check == seq).then(|| {
            suspicion.check = None;
            sent
        })
    }

    /// Notes that `from` spoke to this node: if it is a suspect being
    /// checked, its check is answered.
    pub(super) fn heard_from(&mut self, from: &NodeId) {
        if let Some(suspicion) = self.by_subject.get_mut(from) {
            suspicion.heard = true;
        }
    }

    /// Whether a suspicion of `subject` at `incarnation` is held.
    fn holds(&self, subject: &NodeId, incarnation: Incarnation) -> bool {
        self.by_subject
            .get(subject)
            .is_some_and(|s| s.incarnation == incarnation)
    }

    /// Whether the timer with `token` is `subject`'s live one.
    fn is_current(&self, subject: &NodeId, token: u64) -> bool {
        self.by_subject
            .get(subject)
            .is_some_and(|s| s.token == token)
    }

    /// Whether the suspicion of `subject` began less than half its minimum
    /// timeout before `now`.
    fn is_young(&self, subject: &NodeId, now: Timestamp) -> bool {
        self.by_subject
            .get(subject)
            .is_some_and(|s| now.saturating_duration_since(s.started) < s.min / 2)
    }

    /// Ends the suspicion of `subject`, returning it.
    pub(super) fn remove(&mut self, subject: &NodeId) -> Option<Suspicion> {
        self.by_subject.remove(subject)
    }
}

impl Swim {
    /// A death claimed of a member that this node has not suspected for
    /// long (it holds the member alive at the same incarnation, or its
    /// suspicion began less than half the minimum suspicion timeout ago)
    /// counts here as a suspicion: the accused has not yet had its chance to
    /// refute where this node can see it. That happens when a partition
    /// heals: each side declared the other dead, and those claims reach
    /// members that were in touch with the accused all along. The accused
    /// refutes in time if it is alive; if it is not, this node's own
    /// suspicion ends in its death. After a real crash the suspicion arrives
    /// well before the death, and the death is taken at once.
    pub(super) fn unseen_suspicion(&self, claim: Member) -> Member {
        if claim.status != MemberStatus::Dead || self.unreachable.contains_key(&claim.id) {
            // This node has its own evidence that the process is gone.
            return claim;
        }
        let Some(current) = self.members.get(&claim.id) else {
            return claim;
        };
        let fresh = match current.status {
            MemberStatus::Alive => true,
            MemberStatus::Suspect => self.suspicions.is_young(&claim.id, self.now),
            _ => false,
        };
        if fresh && current.incarnation == claim.incarnation {
            claim.with_status(MemberStatus::Suspect)
        } else {
            claim
        }
    }

    /// A suspicion already held, heard again from another accuser (or
    /// confirmed by a failed probe of our own), counts as an independent
    /// confirmation: the deadline comes closer, and the confirmation (the
    /// accuser's own signed claim) is passed on so others can count it too.
    /// At most `suspicion_confirmations` are counted and relayed, which
    /// bounds the traffic. A confirmation is counted only once its signature
    /// checks; returns `false` if it did not (the claim was refused).
    pub(super) fn note_confirmation(&mut self, from: NodeId, claim: &Member) -> bool {
        if claim.status != MemberStatus::Suspect {
            return true;
        }
        let k = self.config.suspicion_confirmations;
        let origin = claim.origin();
        if !self
            .suspicions
            .would_confirm(&claim.id, claim.incarnation, origin, k)
        {
            return true;
        }
        if origin != self.local_id()
            && let Err(err) = claim.verify(self.config.cluster)
        {
            self.refused(from, claim.id, err);
            return false;
        }
        let Some((deadline, token)) =
            self.suspicions
                .confirm(&claim.id, claim.incarnation, origin, k)
        else {
            return true;
        };
        self.schedule_suspicion(claim.id, deadline.max(self.now), token);
        self.queue_rumor(Rumor::Member {
            member: claim.clone(),
        });
        self.hasten_if_unreachable(claim.id);
        true
    }

    /// Starts suspecting `id` at `incarnation` unless that suspicion is
    /// already held.
    pub(super) fn suspect(&mut self, id: NodeId, incarnation: Incarnation, accuser: NodeId) {
        if self.suspicions.holds(&id, incarnation) {
            return;
        }
        let bounds = suspicion_bounds(
            self.members.live_count(),
            self.config.suspicion_mult,
            self.config.suspicion_max_mult,
            self.config.probe_interval,
            self.config.stall_patience,
        );
        let k = self.config.suspicion_confirmations;
        let (deadline, token) =
            self.suspicions
                .start(id, incarnation, accuser, self.now, bounds, k);
        self.schedule_suspicion(id, deadline, token);
        if accuser != self.local_id() {
            self.check_suspect(id);
        }
        self.hasten_if_unreachable(id);
    }

    /// The network said `id`'s process is gone (this node holds an ICMP
    /// unreachable for it and has heard nothing from it since): if another
    /// member suspects it too, the suspicion runs out `unreachable_suspicion`
    /// after the evidence, instead of after the patience for silence. Two
    /// members' word, one of them this node's own evidence, so no single
    /// forged packet, and no accuser alone, kills a member this way.
    pub(super) fn hasten_if_unreachable(&mut self, id: NodeId) {
        let Some(&since) = self.unreachable.get(&id) else {
            return;
        };
        let local = self.local_id();
        let held_by_another = self
            .suspicions
            .by_subject
            .get(&id)
            .is_some_and(|s| s.held_by_another_than(local));
        if !held_by_another {
            return;
        }
        let wait = self.config.unreachable_suspicion;
        let k = self.config.suspicion_confirmations;
        if let Some((deadline, token)) = self.suspicions.hasten(&id, since + wait, wait, k) {
            self.stats.suspicions_hastened += 1;
            self.schedule_suspicion(id, deadline.max(self.now), token);
        }
    }

    /// A death was claimed of `subject` while this node's suspicion of it
    /// is young, and taken as a suspicion (see [`Swim::unseen_suspicion`]):
    /// unless a check is in flight, ask the suspect now. An answer is its
    /// refutation; an ICMP unreachable is this node's own evidence, after
    /// which the next claim of the death is taken at once. Without it an
    /// accuser, which never checks its own suspicion, would hold out until
    /// its suspicion was no longer young although the process was gone.
    pub(super) fn check_before_death(&mut self, subject: NodeId) {
        let idle = self
            .suspicions
            .by_subject
            .get(&subject)
            .is_some_and(|s| s.check.is_none());
        if idle && !self.unreachable.contains_key(&subject) {
            self.check_suspect(subject);
        }
    }

    /// Checks a suspicion this node has just learned of from another
    /// member: pings the suspect now (with the suspicion, so it can refute
    /// at once) instead of waiting for its turn in the rotation, which at
    /// N members comes every N periods. No answer within its probe timeout
    /// is this node's confirmation; an ICMP unreachable, its evidence. At
    /// most [`MAX_CHECKS_PER_INTERVAL`] go per probe interval.
    fn check_suspect(&mut self, subject: NodeId) {
        if self.leaving.is_some() {
            return;
        }
        if !self
            .suspicions
            .allow_check(self.now, self.config.probe_interval)
        {
            self.stats.suspect_checks_skipped += 1;
            return;
        }
        let Some(record) = self.members.get(&subject).cloned() else {
            return;
        };
        let Some(addr) = record.meta.addr() else {
            return;
        };
        let seq = self.next_seq();
        let Some(suspicion) = self.suspicions.by_subject.get_mut(&subject) else {
            return;
        };
        suspicion.check = Some((seq, self.now));
        suspicion.heard = false;
        suspicion.reminded = Some(self.now);
        self.stats.suspect_checks += 1;
        let timeout = self.probe_timeout_for(&subject);
        self.timers
            .set(self.now + timeout, Timer::Check { subject, seq });
        let ping = Message::Ping {
            seq,
            target: TargetTag::of(&subject, addr),
            suspicion: self.config.buddy_system.then_some(record),
            state_digest: self.state_digest,
        };
        self.send(Some(subject), addr, ping, true);
    }

    /// The check ping `seq` of `subject` is overdue: if the suspect has not
    /// spoken since, this node confirms the suspicion, and checks again
    /// (at most [`MAX_RECHECKS`] times) while it has no evidence of its own
    /// that the process is gone.
    pub(super) fn check_overdue(&mut self, subject: NodeId, seq: u32) {
        let Some(suspicion) = self.suspicions.by_subject.get_mut(&subject) else {
            return;
        };
        if suspicion.check.is_none_or(|(check, _)| check != seq) {
            return;
        }
        suspicion.check = None;
        if suspicion.heard {
            return;
        }
        let recheck = suspicion.rechecks < MAX_RECHECKS && !self.unreachable.contains_key(&subject);
        if recheck {
            suspicion.rechecks += 1;
        }
        if let Some(claim) = self.members.accusation(subject, MemberStatus::Suspect) {
            let local = self.local_id();
            self.note_confirmation(local, &claim);
        }
        if recheck && self.suspicions.by_subject.contains_key(&subject) {
            self.stats.suspect_rechecks += 1;
            self.check_suspect(subject);
        }
    }

    /// Sets a suspicion's deadline, and its last call one probe timeout
    /// before: a suspect that is alive but whose refutation this node
    /// missed (lost, or out of retransmits before it came here) answers the
    /// last call's ping with its refutation on the ack, in time. A dead one
    /// does not, and dies on time.
    fn schedule_suspicion(&mut self, subject: NodeId, deadline: Timestamp, token: u64) {
        self.timers
            .set(deadline, Timer::Suspicion { subject, token });
        if self.config.buddy_system {
            let ahead = self.probe_timeout_for(&subject);
            let last_call = self.now.max(deadline.saturating_sub(ahead));
            self.timers
                .set(last_call, Timer::LastCall { subject, token });
        }
    }

    /// The last call of suspicion `token` of `subject` is due.
    pub(super) fn last_call(&mut self, subject: NodeId, token: u64) {
        if self.suspicions.is_current(&subject, token) {
            self.remind_suspect(subject, None);
        }
    }

    /// Lifeguard's buddy system between probes: pings the suspect `subject`
    /// out of turn with the suspicion, so that its ack brings back its
    /// refutation, if it made one that this node missed. The ack's sequence
    /// number matches no probe and is ignored.
    ///
    /// With `heard_at`, the suspect has just spoken to this node from that
    /// address, so it is up: waiting for the next scheduled probe of it can
    /// take longer than the suspicion lasts (a slow node probes each member
    /// once per `members x stretched interval`). Those pings go at most once
    /// per probe interval per suspect. Without it, this is the last call
    /// before the suspicion runs out.
    pub(super) fn remind_suspect(&mut self, subject: NodeId, heard_at: Option<SocketAddr>) {
        if !self.config.buddy_system || self.leaving.is_some() {
            return;
        }
        let Some(record) = self
            .members
            .get(&subject)
            .filter(|r| r.status == MemberStatus::Suspect)
            .cloned()
        else {
            return;
        };
        let Some(held_at) = record.meta.addr() else {
            return;
        };
        let addr = heard_at.unwrap_or(held_at);
        let (now, interval) = (self.now, self.config.probe_interval);
        let Some(suspicion) = self.suspicions.by_subject.get_mut(&subject) else {
            return;
        };
        if heard_at.is_some()
            && suspicion
                .reminded
                .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        suspicion.reminded = Some(now);
        self.stats.suspect_reminders += 1;
        let ping = Message::Ping {
            seq: self.next_seq(),
            target: TargetTag::of(&subject, held_at),
            suspicion: Some(record),
            state_digest: self.state_digest,
        };
        // A death hangs on the last call: it goes over the reliable channel
        // too, so that one lost datagram does not decide it.
        if heard_at.is_none() && self.config.fallback_probe {
            self.send_on(Some(subject), addr, ping.clone(), true, true);
        }
        self.send(Some(subject), addr, ping, true);
    }

    /// Suspicion `token` of `subject` ran out: declare it dead, unless it
    /// refuted or moved on meanwhile. With the buddy system, only once the
    /// suspect was called (pinged with the suspicion) at least a probe
    /// timeout ago and within the last probe interval: a node that reaches
    /// the deadline having made no such call (it was stalled itself through
    /// the last call, and what the suspect said meanwhile may be lost on
    /// it) calls now and waits one probe timeout more. A node that hears no
    /// one at the deadline (a probe's answer overdue, nothing that arrived
    /// since handled) first waits for its input, up to the stall patience.
    pub(super) fn suspicion_expired(&mut self, subject: NodeId, token: u64) {
        if !self.suspicions.is_current(&subject, token) {
            return;
        }
        if self.config.buddy_system {
            let timeout = self.probe_timeout_for(&subject);
            let window = timeout + self.config.probe_interval;
            let now = self.now;
            // While the ack of a probe this node sent is overdue and
            // nothing that arrived after it was due has been handled, this
            // node hears no one (its input lags or stopped): the suspect's
            // answer to the last call may be waiting in it, and its silence
            // says nothing. So too while the latest datagram was handled
            // more than half a probe timeout late: an answer takes a round
            // trip, at most half the timeout, so one to a call made a
            // timeout ago may not have been handled yet. And while it is
            // back from a stall, having missed what was said meanwhile.
            // Waited for up to the stall patience, so a node cut off from
            // all input still declares, after one more call.
            let deaf = self.probes_unheard.iter().any(|(_, due)| *due < now)
                || self.input_lag > timeout / 2
                || self.back_from_stall_until.is_some_and(|until| now < until);
            if let Some(suspicion) = self.suspicions.by_subject.get_mut(&subject) {
                let called = suspicion.reminded.is_some_and(|at| {
                    let age = now.saturating_duration_since(at);
                    age >= timeout && age <= window
                });
                let calls = if suspicion.waiting_for_input.is_some() {
                    2
                } else {
                    1
                };
                if !called && suspicion.late_calls < calls {
                    suspicion.late_calls += 1;
                    self.stats.late_calls += 1;
                    self.remind_suspect(subject, None);
                    self.timers
                        .set(now + timeout, Timer::Suspicion { subject, token });
                    return;
                }
                if deaf {
                    let since = *suspicion.waiting_for_input.get_or_insert_with(|| {
                        self.stats.declarations_awaiting_input += 1;
                        now
                    });
                    if now.saturating_duration_since(since) < self.config.stall_patience {
                        self.timers
                            .set(now + timeout, Timer::Suspicion { subject, token });
                        return;
                    }
                }
            }
        }
        let still_suspect = self.members.get(&subject).is_some_and(|m| {
            m.status == MemberStatus::Suspect && self.suspicions.holds(&subject, m.incarnation)
        });
        if !still_suspect {
            self.suspicions.remove(&subject);
            return;
        }
        self.stats.deaths_declared += 1;
        if let Ok(Some(MembershipEvent::Changed(change))) =
            self.members.accuse(self.now, subject, MemberStatus::Dead)
        {
            self.on_change(change);
        }
    }

    /// This node's timers ran `behind` late: it was stalled (a pause, a
    /// starved process, a suspended host), heard nothing meanwhile, and
    /// others may suspect it. It speaks for itself at once: it raises its
    /// incarnation and sends its alive record to every member directly
    /// (and as a rumor), which refutes any suspicion its silence drew
    /// before anyone tells it of one, in time for the earliest deadline.
    /// What it started before the stall tells nothing (the answers were
    /// lost), so its probe in flight and its check pings end without a
    /// verdict; and for as long as it was away (up to the stall patience)
    /// it declares no death, calling each suspect once more and waiting for
    /// the news it missed.
    pub(super) fn back_from_stall(&mut self, behind: Duration) {
        self.stats.stalls += 1;
        self.probe = None;
        self.suspicions.forget_checks();
        self.back_from_stall_until = Some(self.now + behind.min(self.config.stall_patience));
        if self.leaving.is_some() || self.joining.is_some() {
            return;
        }
        if let Some(incarnation) = self.announce_alive(self.members.local().incarnation) {
            self.announce_to_all();
            self.events.push(Event::BackFromStall {
                behind,
                incarnation,
            });
        }
    }
}
