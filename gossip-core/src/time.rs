//! Time as an input.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

/// A point on a monotonic clock with an arbitrary epoch, passed into every
/// operation that needs to know the time.
///
/// gossip-core never reads a clock: the driver converts its own clock (a
/// `tokio::time::Instant`, a simulator's virtual time) into a `Timestamp` by
/// measuring from a start point of its choosing. That keeps runs replayable.
///
/// ```
/// use std::time::Duration;
/// use gossip_core::Timestamp;
/// let start = Timestamp::ZERO;
/// let later = start + Duration::from_millis(1500);
/// assert_eq!(later.saturating_duration_since(start), Duration::from_millis(1500));
/// assert_eq!(start.saturating_duration_since(later), Duration::ZERO);
/// assert_eq!(start.saturating_sub(Duration::from_secs(1)), start);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(Duration::ZERO);

    /// The timestamp `since_epoch` after the epoch.
    pub const fn from_duration(since_epoch: Duration) -> Self {
        Timestamp(since_epoch)
    }

    /// The timestamp `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(Duration::from_millis(millis))
    }

    /// Time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self - duration`, or the epoch if that is earlier.
    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration))
    }

    /// `self + duration`, saturating instead of overflowing.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturating: a deadline past the end of time is the end of time.
    fn add(self, rhs: Duration) -> Timestamp {
        self.saturating_add(rhs)
    }
}

impl AddAssign<Duration> for Timestamp {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:?}", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:.3}s", self.0.as_secs_f64())
    }
}
