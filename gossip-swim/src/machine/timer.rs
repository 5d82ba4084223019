//! Every deadline of the machine in one table: [`Swim::poll_timeout`] is its
//! first entry and [`Swim::handle_timeout`] pops and dispatches what is due.
//!
//! [`Swim::poll_timeout`]: super::Swim::poll_timeout
//! [`Swim::handle_timeout`]: super::Swim::handle_timeout

use std::collections::BTreeSet;

use gossip_core::{NodeId, Timestamp};

/// One deadline. The timers of a probe, a forward or a suspicion carry what
/// identifies their owner, so a timer whose owner has moved on is a no-op;
/// the periodic ones exist at most once each and are replaced when set
/// again.
///
/// The order of the variants is the order in which timers due at the same
/// instant fire: a probe's own timers before the next probe tick, the
/// periodic schedules after them, a leave's deadline last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The direct ack of probe `seq` is overdue: probe indirectly.
    ProbeTimeout { seq: u32 },
    /// Probe `seq`'s period is over: conclude it.
    ProbeEnd { seq: u32 },
    /// The target of our forwarded probe `seq` did not answer: nack.
    Forward { seq: u32 },
    /// A suspicion may have run out.
    Suspicion { subject: NodeId, token: u64 },
    /// A suspicion runs out in one probe timeout: ping the suspect once more.
    LastCall { subject: NodeId, token: u64 },
    /// The check ping `seq` of a suspect is overdue.
    Check { subject: NodeId, seq: u32 },
    /// The push interval is over: push the news that waited for it.
    Push,
    /// Periodic: start the next probe.
    Probe,
    /// Periodic while joining: ask the seeds again.
    JoinRetry,
    /// Periodic: re-contact a dead member (and the seeds when alone).
    Reconnect,
    /// Periodic when configured: push-pull with a random member.
    PushPull,
    /// Periodic: forget members departed longer than the horizon.
    Collect,
    /// A graceful leave's deadline.
    Leave,
}

impl Timer {
    /// The periodic timers, which exist at most once each, in their order.
    const PERIODIC: [Timer; 6] = [
        Timer::Probe,
        Timer::JoinRetry,
        Timer::Reconnect,
        Timer::PushPull,
        Timer::Collect,
        Timer::Leave,
    ];

    /// A periodic timer's slot in [`Timers::periodic`]; `None` for the
    /// timers that may be pending many at a time.
    fn slot(self) -> Option<usize> {
        match self {
            Timer::Probe => Some(0),
            Timer::JoinRetry => Some(1),
            Timer::Reconnect => Some(2),
            Timer::PushPull => Some(3),
            Timer::Collect => Some(4),
            Timer::Leave => Some(5),
            _ => None,
        }
    }
}

/// The machine's deadlines. The timers that may be pending many at a time
/// (those of probes, forwards and suspicions, and pushes) are ordered in a
/// set; each periodic one has a slot of its own, so moving it, which every
/// period does, costs no reordering.
#[derive(Debug, Clone, Default)]
pub(super) struct Timers {
    queue: BTreeSet<(Timestamp, Timer)>,
    periodic: [Option<Timestamp>; 6],
}

impl Timers {
    /// Schedules `timer` at `at`; a periodic timer already pending moves.
    pub(super) fn set(&mut self, at: Timestamp, timer: Timer) {
        match timer.slot() {
            Some(slot) => self.periodic[slot] = Some(at),
            None => {
                self.queue.insert((at, timer));
            }
        }
    }

    /// Cancels a periodic timer, if pending.
    pub(super) fn cancel(&mut self, timer: Timer) {
        if let Some(slot) = timer.slot() {
            self.periodic[slot] = None;
        }
    }

    /// The earliest timer: the first of the set or of the slots, in the
    /// order `(deadline, timer)`.
    fn first(&self) -> Option<(Timestamp, Timer)> {
        // The slots are in the variants' order, so the first earliest one
        // is the least `(deadline, timer)`.
        let mut periodic: Option<(Timestamp, usize)> = None;
        for (slot, at) in self.periodic.iter().enumerate() {
            if let Some(at) = *at
                && periodic.is_none_or(|(best, _)| at < best)
            {
                periodic = Some((at, slot));
            }
        }
        let periodic = periodic.map(|(at, slot)| (at, Timer::PERIODIC[slot]));
        match (self.queue.first().copied(), periodic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.first().map(|(at, _)| at)
    }

    /// Takes the earliest timer due at `now`, if any.
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<Timer> {
        let (at, timer) = self.first()?;
        if at > now {
            return None;
        }
        match timer.slot() {
            Some(slot) => self.periodic[slot] = None,
            None => {
                self.queue.pop_first();
            }
        }
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn a_periodic_timer_set_again_moves_and_a_cancelled_one_never_fires() {
        let mut timers = Timers::default();
        timers.set(at(10), Timer::Probe);
        timers.set(at(30), Timer::Probe);
        timers.set(at(20), Timer::Reconnect);
        timers.set(at(5), Timer::JoinRetry);
        timers.cancel(Timer::JoinRetry);
        assert_eq!(timers.next_deadline(), Some(at(20)));
        assert_eq!(timers.pop_due(at(100)), Some(Timer::Reconnect));
        assert_eq!(timers.pop_due(at(100)), Some(Timer::Probe));
        assert_eq!(timers.pop_due(at(100)), None);
    }

    #[test]
    fn timers_with_owners_stay_pending_side_by_side_and_fire_in_order() {
        let mut timers = Timers::default();
        timers.set(at(10), Timer::Probe);
        timers.set(at(10), Timer::ProbeEnd { seq: 1 });
        timers.set(at(10), Timer::ProbeEnd { seq: 2 });
        assert_eq!(timers.pop_due(at(9)), None);
        assert_eq!(timers.pop_due(at(10)), Some(Timer::ProbeEnd { seq: 1 }));
        assert_eq!(timers.pop_due(at(10)), Some(Timer::ProbeEnd { seq: 2 }));
        assert_eq!(timers.pop_due(at(10)), Some(Timer::Probe));
        assert_eq!(timers.next_deadline(), None);
    }
}
