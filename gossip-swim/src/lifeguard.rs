//! Lifeguard's local health multiplier and dynamic suspicion timeout.

use std::time::Duration;

/// Lifeguard's local health multiplier (LHM): a score that rises when this
/// node misses acks and nacks it should have received (a sign that it, not
/// its peers, is slow) and falls with each successful probe. Probe interval
/// and timeout are multiplied by `score + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Awareness {
    score: u32,
    max: u32,
}

impl Awareness {
    pub(crate) fn new(max: u32) -> Self {
        Awareness {
            score: 0,
            max: max.max(1),
        }
    }

    /// The score, from 0 (healthy) to `max - 1`.
    pub(crate) fn score(self) -> u32 {
        self.score
    }

    /// `true` at the top of the scale: this node has been failing to hear
    /// from its peers for a while.
    pub(crate) fn is_at_max(self) -> bool {
        self.score + 1 >= self.max
    }

    pub(crate) fn apply(&mut self, delta: i64) {
        let raised = i64::from(self.score).saturating_add(delta);
        let top = i64::from(self.max - 1);
        self.score = u32::try_from(raised.clamp(0, top)).unwrap_or(0);
    }

    pub(crate) fn scale(self, duration: Duration) -> Duration {
        duration.saturating_mul(self.score + 1)
    }
}

/// The bounds of the suspicion timeout for a cluster of `live` members:
/// `min = max(patience, mult * max(1, log10(live)) * interval)` and
/// `max = max_mult * min`.
pub(crate) fn suspicion_bounds(
    live: usize,
    mult: u32,
    max_mult: u32,
    interval: Duration,
    patience: Duration,
) -> (Duration, Duration) {
    let scale = (live.max(1) as f64).log10().max(1.0);
    let min = interval.mul_f64(f64::from(mult) * scale).max(patience);
    (min, min.saturating_mul(max_mult.max(1)))
}

/// Lifeguard's dynamic suspicion timeout after `confirmations` independent
/// confirmations, expecting `k`:
/// `max(min, max - (max - min) * log(c + 1) / log(k + 1))`.
pub(crate) fn suspicion_timeout(
    min: Duration,
    max: Duration,
    confirmations: u32,
    k: u32,
) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let fraction = (f64::from(confirmations) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let shrink = (max - min).mul_f64(fraction.min(1.0));
    (max - shrink).max(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_is_clamped_and_scales() {
        let mut a = Awareness::new(8);
        a.apply(-3);
        assert_eq!(a.score(), 0);
        a.apply(20);
        assert_eq!(a.score(), 7);
        assert_eq!(a.scale(Duration::from_secs(1)), Duration::from_secs(8));
        let mut off = Awareness::new(1);
        off.apply(5);
        assert_eq!(off.scale(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn suspicion_bounds_follow_memberlist() {
        let s = Duration::from_secs(1);
        let none = Duration::ZERO;
        assert_eq!(
            suspicion_bounds(5, 4, 6, s, none),
            (Duration::from_secs(4), Duration::from_secs(24))
        );
        let (min, max) = suspicion_bounds(1000, 4, 6, s, none);
        assert_eq!(min, Duration::from_secs(12));
        assert_eq!(max, Duration::from_secs(72));
    }

    #[test]
    fn the_suspicion_timeout_never_undercuts_the_stall_patience() {
        let (s, patience) = (Duration::from_secs(1), Duration::from_secs(6));
        for live in [1, 16, 64, 100] {
            let (min, max) = suspicion_bounds(live, 3, 6, s, patience);
            assert_eq!(min, patience, "{live} members");
            assert_eq!(max, patience * 6);
        }
        let (min, _) = suspicion_bounds(1000, 3, 6, s, patience);
        assert_eq!(min, Duration::from_secs(9), "log10(n) takes over past 100");
    }

    #[test]
    fn suspicion_timeout_shrinks_with_confirmations() {
        let (min, max) = (Duration::from_secs(4), Duration::from_secs(24));
        let t0 = suspicion_timeout(min, max, 0, 2);
        let t1 = suspicion_timeout(min, max, 1, 2);
        let t2 = suspicion_timeout(min, max, 2, 2);
        assert_eq!(t0, max);
        assert!(min < t1 && t1 < t0, "{t1:?}");
        assert_eq!(t2, min);
        assert_eq!(suspicion_timeout(min, max, 9, 2), min);
        assert_eq!(suspicion_timeout(min, max, 0, 0), min);
    }
}
