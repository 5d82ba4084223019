//! Frames: the bytes every message travels in.
//!
//! ```text
//! +---------+--------------+------------------+----------------------------+
//! | version | cluster id   | body (postcard)  | rumors: count, then each   |
//! | 1 byte  | 8 bytes      | message-defined  | rumor's postcard encoding  |
//! +---------+--------------+------------------+----------------------------+
//! ```
//!
//! The rumor section is exactly postcard's encoding of a `Vec<Rumor>`, which
//! lets [`RumorQueue::pack`](crate::RumorQueue::pack) fill it with rumors that
//! were encoded once, when queued, and size them exactly.
//!
//! Decoding checks, in order and before decoding anything else: the frame size,
//! the version, the cluster id. Every collection is bounded by [`Limits`], and
//! every failure is a typed [`Error`]; nothing here panics or allocates beyond
//! a small multiple of the frame's size.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Limited};
use crate::id::ClusterId;
use crate::limits::Limits;
use crate::rumor::{PackedRumors, Rumor};

/// The wire version this build speaks. Bumped on any incompatible change
/// (2: signed member records, accusations and key/value state).
pub const WIRE_VERSION: u8 = 2;

/// Bytes taken by the version and cluster id at the start of every frame.
pub const HEADER_LEN: usize = 1 + ClusterId::LEN;

/// A decoded frame: the message body and the rumors it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<B> {
    /// The message.
    pub body: B,
    /// Piggybacked rumors, each checked against the limits.
    pub rumors: Vec<Rumor>,
}

/// The exact number of bytes postcard encodes `value` into.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    try_encoded_len(value).unwrap_or(usize::MAX)
}

/// As [`encoded_len`], with the error of a value that does not encode.
pub(crate) fn try_encoded_len<T: Serialize + ?Sized>(value: &T) -> postcard::Result<usize> {
    postcard::serialize_with_flavor::<T, _, usize>(value, postcard::ser_flavors::Size::default())
}

/// Bytes that postcard's varint encoding of `n` takes.
pub(crate) fn varint_len(n: usize) -> usize {
    let bits = (usize::BITS - n.leading_zeros()).max(1) as usize;
    bits.div_ceil(7)
}

/// Appends a frame to `out`: header, `body`, then the packed `rumors`.
///
/// # Errors
///
/// [`Error::FrameTooLarge`] if the frame would exceed
/// [`Limits::max_frame_bytes`]; `out` is then left as it was.
pub fn encode_frame<B: Serialize + ?Sized>(
    cluster: ClusterId,
    body: &B,
    rumors: &PackedRumors,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let len = HEADER_LEN + encoded_len(body) + rumors.encoded_len();
    if len > limits.max_frame_bytes {
        return Err(Error::FrameTooLarge {
            len,
            max: limits.max_frame_bytes,
        });
    }
    out.reserve(len);
    out.push(WIRE_VERSION);
    out.extend_from_slice(cluster.as_bytes());
    let buf = std::mem::take(out);
    let buf = postcard::to_extend(body, buf)?;
    let count = u32::try_from(rumors.count()).map_err(|_| {
        Error::limit(
            Limited::RumorsPerFrame,
            rumors.count(),
            limits.max_rumors_per_frame,
        )
    })?;
    let mut buf = postcard::to_extend(&count, buf)?;
    buf.extend_from_slice(rumors.bytes());
    *out = buf;
    Ok(())
}

/// Reads a frame's version and cluster id, checking both, and returns the rest.
fn split_header<'a>(
    bytes: &'a [u8],
    cluster: ClusterId,
    limits: &Limits,
) -> Result<&'a [u8], Error> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(Error::FrameTooLarge {
            len: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    let (&version, rest) = bytes.split_first().ok_or(Error::Truncated)?;
    if version != WIRE_VERSION {
        return Err(Error::UnsupportedVersion {
            got: version,
            supported: WIRE_VERSION,
        });
    }
    let (id, rest) = rest
        .split_first_chunk::<{ ClusterId::LEN }>()
        .ok_or(Error::Truncated)?;
    let got = ClusterId::from_bytes(*id);
    if got != cluster {
        return Err(Error::ForeignCluster {
            got,
            expected: cluster,
        });
    }
    Ok(rest)
}

/// Decodes a frame for `cluster`.
///
/// # Errors
///
/// [`Error::FrameTooLarge`], [`Error::Truncated`],
/// [`Error::UnsupportedVersion`], [`Error::ForeignCluster`],
/// [`Error::Malformed`], [`Error::TrailingBytes`], and
/// [`Error::LimitExceeded`] for a rumor section or rumor over a cap.
pub fn decode_frame<'a, B: Deserialize<'a>>(
    bytes: &'a [u8],
    cluster: ClusterId,
    limits: &Limits,
) -> Result<Frame<B>, Error> {
    let rest = split_header(bytes, cluster, limits)?;
    let (body, rest) = postcard::take_from_bytes::<B>(rest)?;
    let (count, mut rest) = postcard::take_from_bytes::<u32>(rest)?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    Error::check(Limited::RumorsPerFrame, count, limits.max_rumors_per_frame)?;
    let mut rumors = Vec::with_capacity(count);
    for _ in 0..count {
        let (rumor, tail) = postcard::take_from_bytes::<Rumor>(rest)?;
        rumor.validate(limits)?;
        rumors.push(rumor);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Error::TrailingBytes {
            trailing: rest.len(),
        });
    }
    Ok(Frame { body, rumors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Member, MemberMeta, NodeId, RumorQueue};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        seq: u32,
    }

    fn cluster() -> ClusterId {
        ClusterId::from_name("test")
    }

    fn frame_with_rumors(n: u8) -> Vec<u8> {
        let limits = Limits::default();
        let mut queue = RumorQueue::new(4, limits.clone());
        for i in 0..n {
            let id = NodeId::from_bytes([i; 32]);
            queue
                .push(Rumor::Member {
                    member: Member::new(id, MemberMeta::default()),
                })
                .unwrap();
        }
        let packed = queue.pack(1200, 10);
        let mut out = Vec::new();
        encode_frame(cluster(), &Ping { seq: 7 }, &packed, &limits, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_with_rumors() {
        let bytes = frame_with_rumors(3);
        let frame: Frame<Ping> = decode_frame(&bytes, cluster(), &Limits::default()).unwrap();
        assert_eq!(frame.body, Ping { seq: 7 });
        assert_eq!(frame.rumors.len(), 3);
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = frame_with_rumors(3);
        for cut in 0..bytes.len() {
            let result = decode_frame::<Ping>(&bytes[..cut], cluster(), &Limits::default());
            assert!(result.is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn header_checks() {
        let limits = Limits::default();
        let mut bytes = frame_with_rumors(1);
        let foreign = decode_frame::<Ping>(&bytes, ClusterId::from_name("other"), &limits);
        assert!(matches!(foreign, Err(Error::ForeignCluster { .. })));
        bytes[0] = 9;
        let version = decode_frame::<Ping>(&bytes, cluster(), &limits);
        assert_eq!(
            version.unwrap_err(),
            Error::UnsupportedVersion {
                got: 9,
                supported: WIRE_VERSION
            }
        );
        let mut small = limits.clone();
        small.max_frame_bytes = 10;
        assert!(matches!(
            decode_frame::<Ping>(&bytes, cluster(), &small),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_huge_counts_are_rejected() {
        let limits = Limits::default();
        let mut bytes = frame_with_rumors(0);
        bytes.push(0);
        assert_eq!(
            decode_frame::<Ping>(&bytes, cluster(), &limits).unwrap_err(),
            Error::TrailingBytes { trailing: 1 }
        );
        // A count claiming 2^32-1 rumors in a tiny frame.
        let mut bytes = frame_with_rumors(0);
        bytes.pop();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = decode_frame::<Ping>(&bytes, cluster(), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    what: Limited::RumorsPerFrame,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn varint_len_matches_postcard() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, u32::MAX as usize] {
            assert_eq!(varint_len(n), encoded_len(&(n as u64)), "{n}");
        }
    }
}
