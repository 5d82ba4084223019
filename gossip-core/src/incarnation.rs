//! Incarnation numbers: the version of a node's claim to be alive.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::NodeId;

/// A node's incarnation number, raised only by the node itself to refute a
/// suspicion or to announce a change of its own record (SWIM section 4.2).
///
/// Two guards stop the memberlist bug where a suspicion at the maximum
/// incarnation wrapped the refutation counter to 0, leaving the node unable to
/// ever refute again:
///
/// * raising never wraps: [`Incarnation::refute`] returns
///   [`Error::IncarnationExhausted`] at the top of the range;
/// * the range on the wire stops at [`Incarnation::MAX`], half of `u64`, so a
///   decoded claim can never sit at the top of the counter, and
///   [`Incarnation::check_jump`] rejects claims implausibly far ahead of what is
///   known, so a forged claim cannot climb there quickly either.
///
/// ```
/// use gossip_core::Incarnation;
/// let mine = Incarnation::new(3);
/// // Someone suspects us at incarnation 7 (say, an earlier life of this node):
/// let refuted = mine.refute(Incarnation::new(7)).unwrap();
/// assert_eq!(refuted, Incarnation::new(8));
/// assert!(Incarnation::MAX.refute(Incarnation::MAX).is_err());
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Incarnation(u64);

impl Incarnation {
    /// The first incarnation of a fresh node.
    pub const ZERO: Incarnation = Incarnation(0);

    /// The largest incarnation accepted anywhere (`2^63 - 1`). Decoding a larger
    /// value fails, so there is always room to refute.
    pub const MAX: Incarnation = Incarnation(u64::MAX >> 1);

    /// Creates an incarnation.
    ///
    /// # Panics
    ///
    /// If `value` is above [`Incarnation::MAX`]; that is caller misuse. Use
    /// `Incarnation::try_from(u64)` for untrusted values.
    pub const fn new(value: u64) -> Self {
        assert!(value <= Self::MAX.0, "incarnation above Incarnation::MAX");
        Incarnation(value)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The incarnation a node announces to refute a claim made about it at
    /// `accused`: one more than the larger of the two, so it wins the merge.
    ///
    /// # Errors
    ///
    /// [`Error::IncarnationExhausted`] when that would pass [`Incarnation::MAX`].
    pub fn refute(self, accused: Incarnation) -> Result<Incarnation, Error> {
        let base = self.max(accused);
        match base.0.checked_add(1) {
            Some(next) if next <= Self::MAX.0 => Ok(Incarnation(next)),
            _ => Err(Error::IncarnationExhausted {
                current: self,
                accused,
            }),
        }
    }

    /// The next incarnation, for a node that changes its own record.
    ///
    /// # Errors
    ///
    /// [`Error::IncarnationExhausted`] at [`Incarnation::MAX`].
    pub fn next(self) -> Result<Incarnation, Error> {
        self.refute(self)
    }

    /// Checks that a claim of `got` about `subject`, known locally at `self`,
    /// does not jump more than `max_jump` ahead.
    ///
    /// # Errors
    ///
    /// [`Error::IncarnationJump`] if it does.
    pub fn check_jump(self, subject: NodeId, got: Incarnation, max_jump: u64) -> Result<(), Error> {
        if got.0.saturating_sub(self.0) > max_jump {
            Err(Error::IncarnationJump {
                subject,
                known: self,
                got,
                max_jump,
            })
        } else {
            Ok(())
        }
    }
}

impl TryFrom<u64> for Incarnation {
    type Error = Error;

    /// # Errors
    ///
    /// [`Error::IncarnationOutOfRange`] above [`Incarnation::MAX`].
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        if value <= Self::MAX.0 {
            Ok(Incarnation(value))
        } else {
            Err(Error::IncarnationOutOfRange { got: value })
        }
    }
}

impl From<Incarnation> for u64 {
    fn from(value: Incarnation) -> u64 {
        value.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inc{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refute_goes_one_past_the_larger() {
        assert_eq!(
            Incarnation::new(5).refute(Incarnation::new(2)).unwrap(),
            Incarnation::new(6)
        );
        assert_eq!(
            Incarnation::new(2).refute(Incarnation::new(5)).unwrap(),
            Incarnation::new(6)
        );
    }

    #[test]
    fn refute_at_the_top_is_an_error_not_a_wrap() {
        let err = Incarnation::new(1).refute(Incarnation::MAX).unwrap_err();
        assert!(matches!(err, Error::IncarnationExhausted { .. }));
        assert!(Incarnation::MAX.next().is_err());
    }

    #[test]
    fn decoding_above_max_is_rejected() {
        let bytes = postcard::to_allocvec(&u64::MAX).unwrap();
        let err: Error = postcard::from_bytes::<Incarnation>(&bytes)
            .unwrap_err()
            .into();
        assert_eq!(
            err,
            Error::Malformed {
                reason: "value out of range"
            }
        );
        let ok = postcard::to_allocvec(&Incarnation::MAX).unwrap();
        assert_eq!(
            postcard::from_bytes::<Incarnation>(&ok).unwrap(),
            Incarnation::MAX
        );
    }

    #[test]
    fn absurd_jumps_are_rejected() {
        let id = NodeId::from_bytes([1; 32]);
        let known = Incarnation::new(10);
        assert!(known.check_jump(id, Incarnation::new(20), 10).is_ok());
        assert!(known.check_jump(id, Incarnation::new(21), 10).is_err());
        assert!(known.check_jump(id, Incarnation::new(0), 10).is_ok());
    }
}
