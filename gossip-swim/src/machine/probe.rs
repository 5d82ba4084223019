//! The probe: a direct ping, then indirect pings through helpers and a
//! fallback ping over a reliable channel, then the verdict once the helpers
//! have nacked or the indirect probes' time is up. Also the probes this node
//! makes on others' behalf.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_core::{Incarnation, MemberStatus, MembershipEvent, NodeId, Timestamp};

use super::Swim;
use super::timer::Timer;
use crate::lifeguard::Awareness;
use crate::message::{Message, TargetTag};

/// A helper nacks after this fraction of the probe timeout without an ack
/// from the target, so that the nack is back before the requester's probe
/// ends (it asked one probe timeout into the period).
const NACK_AFTER: f64 = 0.8;

/// Probes remembered while their answer is awaited: a handful covers the
/// stall patience's worth of a node that hears no one.
pub(super) const MAX_PROBES_UNHEARD: usize = 16;

/// The probe in flight: it records what came back and, at the end of its
/// period, gives its verdict.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    seq: u32,
    target: NodeId,
    /// The target's incarnation when the ping went out: the life probed.
    incarnation: Incarnation,
    /// When the direct ping went out.
    sent: Timestamp,
    acked: bool,
    /// Helpers asked to probe indirectly, and whether each nacked.
    helpers: Vec<(NodeId, bool)>,
}

/// What a probe found, once its period is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The target, or a helper on its behalf, acked.
    Acked,
    /// Not one helper answered, not even to say the target is silent: this
    /// node is likely the slow one, and its probe tells nothing of the target.
    Inconclusive,
    /// Nobody vouched for the target.
    Failed(NodeId),
}

impl Probe {
    fn new(seq: u32, target: NodeId, incarnation: Incarnation, sent: Timestamp) -> Self {
        Probe {
            seq,
            target,
            incarnation,
            sent,
            acked: false,
            helpers: Vec::new(),
        }
    }

    /// The member being probed.
    pub(super) fn target(&self) -> NodeId {
        self.target
    }

    /// Whether probe `seq` is this one and still waits for an ack.
    fn unanswered(&self, seq: u32) -> bool {
        self.seq == seq && !self.acked
    }

    /// An ack of probe `seq` from `from`: the target itself, or a helper
    /// relaying the target's. Returns when the ping went out if this is the
    /// target's own first ack, in time for a round-trip sample (before the
    /// indirect and reliable probes, whose acks take other paths).
    fn ack(&mut self, from: NodeId, seq: u32) -> Option<Timestamp> {
        if self.seq != seq
            || (self.target != from && !self.helpers.iter().any(|(id, _)| *id == from))
        {
            return None;
        }
        let sample =
            (!self.acked && self.target == from && self.helpers.is_empty()).then_some(self.sent);
        self.acked = true;
        sample
    }

    /// Whether enough helpers have nacked to conclude now: all of them, or
    /// all but one once at least two have. The target is then silent on
    /// every path tried or on two independent ones; a target that is alive
    /// acks a helper before that helper's nack timer would run out, so the
    /// last helper's answer would come no sooner than the others' nacks, and
    /// waiting for the end of the period mostly waits for a lost message.
    fn nacked_enough(&self) -> bool {
        let nacked = self.helpers.iter().filter(|(_, nacked)| *nacked).count();
        let outstanding = self.helpers.len() - nacked;
        !self.acked && nacked > 0 && (outstanding == 0 || (outstanding == 1 && nacked >= 2))
    }

    /// A helper's nack of probe `seq`; `true` if it counts (the first from
    /// a helper this probe asked).
    fn nack(&mut self, from: NodeId, seq: u32) -> bool {
        if self.seq != seq {
            return false;
        }
        match self.helpers.iter_mut().find(|(id, _)| *id == from) {
            Some(helper) if !helper.1 => {
                helper.1 = true;
                true
            }
            _ => false,
        }
    }

    /// The verdict, with Lifeguard's health adjusted on the way: an ack
    /// lowers the score; helpers that did not even nack suggest the problem
    /// is ours and raise it (with no helpers, any failed probe does). A
    /// probe concluded early, with one nack outstanding, does not count that
    /// one: it was not waited for. A probe no helper answered accuses no one
    /// until the score is at the top of its scale: a node that stays cut off
    /// gets there within a few probes and suspects again.
    fn conclude(self, awareness: &mut Awareness, health_on: bool, early: bool) -> Verdict {
        if self.acked {
            awareness.apply(-1);
            return Verdict::Acked;
        }
        let missing_nacks = if early {
            0
        } else {
            self.helpers.iter().filter(|(_, nacked)| !nacked).count()
        };
        let delta = if self.helpers.is_empty() {
            1
        } else {
            missing_nacks
        };
        awareness.apply(i64::try_from(delta).unwrap_or(i64::MAX));
        if health_on
            && !self.helpers.is_empty()
            && missing_nacks == self.helpers.len()
            && !awareness.is_at_max()
        {
            return Verdict::Inconclusive;
        }
        Verdict::Failed(self.target)
    }
}

/// The smoothed round trip to one member and its variation (RFC 6298's
/// estimator), from the acks of direct probes, forwarded probes and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RoundTrip {
    smoothed: Duration,
    variation: Duration,
}

impl RoundTrip {
    /// After one sample the timeout is twice it: RFC 6298 starts the
    /// variation at half a sample, which makes three, but a probe's ack
    /// is a datagram each way with no delayed acknowledgement in between.
    fn first(sample: Duration) -> Self {
        RoundTrip {
            smoothed: sample,
            variation: sample / 4,
        }
    }

    fn update(&mut self, sample: Duration) {
        let error = self.smoothed.abs_diff(sample);
        self.variation = self.variation * 3 / 4 + error / 4;
        self.smoothed = self.smoothed * 7 / 8 + sample / 8;
    }

    /// How long an ack may take before it is overdue: twice the round trip,
    /// or four variations above it when the link is jittery.
    fn timeout(&self) -> Duration {
        (self.smoothed * 2).max(self.smoothed + self.variation * 4)
    }
}

/// A probe this node makes on someone else's behalf.
#[derive(Debug, Clone)]
pub(super) struct Forward {
    requester: NodeId,
    requester_addr: SocketAddr,
    requester_seq: u32,
    target: NodeId,
    /// When the ping to the target went out, for a round-trip sample.
    sent: Timestamp,
}

impl Swim {
    /// The probe tick: concludes the probe still running, then pings the
    /// next member of the rotation.
    pub(super) fn probe_tick(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        if self.probe.is_some() {
            self.conclude_probe(false);
        }
        let interval = self.probe_interval();
        self.timers.set(self.now + interval, Timer::Probe);
        let Some(target) = self.order.next(&mut self.rng) else {
            return;
        };
        // The indirect probes get what they get after a configured timeout:
        // the rest of the period, and at least one configured timeout. A
        // shorter measured timeout concludes the probe sooner; a slow link's
        // longer one stretches the period.
        let timeout = self.probe_timeout_for(&target);
        let configured = self.awareness.scale(self.config.probe_timeout);
        let ends = timeout + interval.saturating_sub(configured).max(configured);
        let period = interval.max(ends);
        self.timers.set(self.now + period, Timer::Probe);
        let Some(record) = self.members.get(&target) else {
            return;
        };
        let suspicion = (self.config.buddy_system && record.status == MemberStatus::Suspect)
            .then(|| record.clone());
        let Some(addr) = record.meta.addr() else {
            return;
        };
        let incarnation = record.incarnation;
        let seq = self.next_seq();
        self.probe = Some(Probe::new(seq, target, incarnation, self.now));
        self.stats.probes += 1;
        if self.probes_unheard.len() == MAX_PROBES_UNHEARD {
            self.probes_unheard.pop_front();
        }
        self.probes_unheard.push_back((seq, self.now + timeout));
        self.timers
            .set(self.now + timeout, Timer::ProbeTimeout { seq });
        self.timers.set(self.now + ends, Timer::ProbeEnd { seq });
        self.send(
            Some(target),
            addr,
            Message::Ping {
                seq,
                target: TargetTag::of(&target, addr),
                suspicion,
                state_digest: self.state_digest,
            },
            true,
        );
    }

    /// The direct ack of probe `seq` is overdue: ask helpers, and try the
    /// reliable channel.
    pub(super) fn probe_overdue(&mut self, seq: u32) {
        self.probe_indirectly(seq);
        self.probe_reliably(seq);
    }

    fn probe_indirectly(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if !probe.unanswered(seq) {
            return;
        }
        let target = probe.target;
        let Some(target_addr) = self.address_of(&target) else {
            return;
        };
        let helpers =
            self.order
                .choose_random(self.config.indirect_probes, &[target], &mut self.rng);
        if let Some(probe) = &mut self.probe {
            probe.helpers = helpers.iter().map(|id| (*id, false)).collect();
        }
        self.stats.indirect_probes += 1;
        for helper in helpers {
            if let Some(addr) = self.address_of(&helper) {
                let request = Message::PingReq {
                    seq,
                    target,
                    target_addr,
                };
                self.send(Some(helper), addr, request, true);
            }
        }
    }

    /// The fallback probe: once the direct ack is overdue, one ping over a
    /// reliable channel, whose ack counts as the direct one would.
    fn probe_reliably(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if !self.config.fallback_probe || !probe.unanswered(seq) {
            return;
        }
        let target = probe.target;
        let Some(addr) = self.address_of(&target) else {
            return;
        };
        self.stats.fallback_probes += 1;
        let ping = Message::ReliablePing {
            seq,
            target: TargetTag::of(&target, addr),
        };
        self.send_on(Some(target), addr, ping, true, true);
    }

    /// How long to wait for `id`'s ack: the configured probe timeout, or
    /// with `adaptive_probe_timeout` the one its measured round trips call
    /// for, bounded between half and four times the configured one; either
    /// stretched by local health.
    pub(super) fn probe_timeout_for(&self, id: &NodeId) -> Duration {
        self.awareness.scale(self.measured_timeout(id))
    }

    /// The probe timeout for `id` before local health stretches it.
    fn measured_timeout(&self, id: &NodeId) -> Duration {
        let configured = self.config.probe_timeout;
        match self.round_trips.get(id) {
            Some(rtt) if self.config.adaptive_probe_timeout => {
                rtt.timeout().clamp(configured / 2, configured * 4)
            }
            _ => configured,
        }
    }

    /// The measured round trip to `id`, if any: the smoothed value and its
    /// variation.
    pub fn round_trip(&self, id: &NodeId) -> Option<(Duration, Duration)> {
        self.round_trips.get(id).map(|r| (r.smoothed, r.variation))
    }

    fn sample_round_trip(&mut self, id: NodeId, sent: Timestamp) {
        let sample = self.now.saturating_duration_since(sent);
        self.round_trips
            .entry(id)
            .and_modify(|rtt| rtt.update(sample))
            .or_insert_with(|| RoundTrip::first(sample));
    }

    /// Probe `seq`'s period is over.
    pub(super) fn probe_ended(&mut self, seq: u32) {
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            self.conclude_probe(false);
        }
    }

    /// Concludes the probe in flight, at the end of its period or `early`
    /// on the helpers' nacks: suspect the target if nobody vouched for it,
    /// or confirm the suspicion if it is already suspect.
    fn conclude_probe(&mut self, early: bool) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let health_on = self.config.awareness_max > 1;
        let probed = probe.incarnation;
        let target = match probe.conclude(&mut self.awareness, health_on, early) {
            Verdict::Acked => return,
            Verdict::Inconclusive => {
                self.stats.inconclusive_probes += 1;
                return;
            }
            Verdict::Failed(target) => target,
        };
        let Some(record) = self.members.get(&target) else {
            return;
        };
        // The target announced a newer life since the ping went out (it was
        // back from a stall, or refuted): the silence was the old life's.
        if record.incarnation > probed {
            self.stats.probes_outlived += 1;
            return;
        }
        match record.status {
            MemberStatus::Alive => {
                self.stats.suspicions_raised += 1;
                if let Ok(Some(MembershipEvent::Changed(change))) =
                    self.members.accuse(self.now, target, MemberStatus::Suspect)
                {
                    self.on_change(change);
                }
            }
            // Our own failed probe of a suspect confirms the suspicion.
            MemberStatus::Suspect => {
                if let Some(claim) = self.members.accusation(target, MemberStatus::Suspect) {
                    let local = self.local_id();
                    self.note_confirmation(local, &claim);
                }
            }
            _ => {}
        }
    }

    /// An ack: of a probe we forward (relay it to the requester), or of our
    /// own probe.
    pub(super) fn handle_ack(&mut self, from: NodeId, seq: u32) {
        if self.forwards.get(&seq).is_some_and(|f| f.target == from)
            && let Some(forward) = self.forwards.remove(&seq)
        {
            self.sample_round_trip(from, forward.sent);
            let ack = Message::Ack {
                seq: forward.requester_seq,
            };
            self.send(Some(forward.requester), forward.requester_addr, ack, true);
            return;
        }
        self.probes_unheard.retain(|(probe, _)| *probe != seq);
        let sent = self.probe.as_mut().and_then(|probe| probe.ack(from, seq));
        if let Some(sent) = sent.or_else(|| self.suspicions.check_answered(&from, seq)) {
            self.sample_round_trip(from, sent);
        }
    }

    /// A helper's nack of our probe `seq`.
    pub(super) fn handle_nack(&mut self, from: NodeId, seq: u32) {
        if let Some(probe) = &mut self.probe
            && probe.nack(from, seq)
        {
            self.stats.nacks_received += 1;
            if probe.nacked_enough() {
                self.stats.probes_concluded_early += 1;
                self.conclude_probe(true);
            }
        }
    }

    /// `requester` asks this node to probe `target` for it.
    pub(super) fn forward_probe(
        &mut self,
        requester: NodeId,
        requester_addr: SocketAddr,
        requester_seq: u32,
        target: NodeId,
        target_addr: SocketAddr,
    ) {
        let our_seq = self.next_seq();
        self.forwards.insert(
            our_seq,
            Forward {
                requester,
                requester_addr,
                requester_seq,
                target,
                sent: self.now,
            },
        );
        // The nack must reach the requester before its probe ends: it asked
        // us one of its probe timeouts into a period of at least two
        // configured ones, so ours waits no longer than a configured one.
        let wait = self
            .measured_timeout(&target)
            .min(self.config.probe_timeout);
        let at = self.now + wait.mul_f64(NACK_AFTER);
        self.timers.set(at, Timer::Forward { seq: our_seq });
        let ping = Message::Ping {
            seq: our_seq,
            target: TargetTag::of(&target, target_addr),
            suspicion: None,
            state_digest: self.state_digest,
        };
        self.send(Some(target), target_addr, ping, true);
    }

    /// The target of forwarded probe `seq` did not answer in time: tell the
    /// requester.
    pub(super) fn forward_timed_out(&mut self, seq: u32) {
        if let Some(forward) = self.forwards.remove(&seq) {
            self.stats.nacks_sent += 1;
            let nack = Message::Nack {
                seq: forward.requester_seq,
            };
            self.send(Some(forward.requester), forward.requester_addr, nack, true);
        }
    }
}
