//! How the node frames what it sends on streams (public so that other
//! implementations and the fuzzer can speak it). Datagrams carry SWIM frames
//! as they are; a stream message starts with a tag:
//!
//! * `0`: a SWIM frame too large for a datagram, as it is;
//! * `1` / `2`: sync messages from a session's initiator / responder: the
//!   session id (8 bytes, little-endian), then the session's messages, each
//!   as a 4-byte big-endian length and the bytes. One stream message carries
//!   a whole turn, so its parts arrive in order.

pub use gossip_member::Role;
use thiserror::Error;

const TAG_SWIM: u8 = 0;
const TAG_FROM_INITIATOR: u8 = 1;
const TAG_FROM_RESPONDER: u8 = 2;

/// A decoded stream message, borrowing from the received bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamMessage<'a> {
    /// A SWIM frame.
    Swim(&'a [u8]),
    /// A turn of a sync session.
    Sync {
        /// The sender's role.
        role: Role,
        /// The session, as numbered by its initiator.
        id: u64,
        /// The session's messages.
        parts: Vec<&'a [u8]>,
    },
}

/// Why a stream message did not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The first byte names no kind of message.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// The message ends inside its session id or a part.
    #[error("truncated message")]
    Truncated,
}

/// A SWIM frame too large for a datagram.
pub fn encode_swim(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(TAG_SWIM);
    out.extend_from_slice(frame);
    out
}

/// A sync message from the side `role` of session `id`.
pub fn encode_sync(role: Role, id: u64, parts: &[Vec<u8>]) -> Vec<u8> {
    let len = 9 + parts.iter().map(|p| p.len() + 4).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(match role {
        Role::Initiator => TAG_FROM_INITIATOR,
        Role::Responder => TAG_FROM_RESPONDER,
    });
    out.extend_from_slice(&id.to_le_bytes());
    for part in parts {
        // Parts are capped by the sync config far below 4 GiB.
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Decodes a stream message without copying.
///
/// # Errors
///
/// [`DecodeError`]; nothing panics on any input. The part list is bounded by the message length
/// (every part costs at least its 4-byte length).
pub fn decode(bytes: &[u8]) -> Result<StreamMessage<'_>, DecodeError> {
    let (&tag, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let role = match tag {
        TAG_SWIM => return Ok(StreamMessage::Swim(rest)),
        TAG_FROM_INITIATOR => Role::Initiator,
        TAG_FROM_RESPONDER => Role::Responder,
        other => return Err(DecodeError::UnknownTag(other)),
    };
    let (id, mut rest) = rest
        .split_first_chunk::<8>()
        .ok_or(DecodeError::Truncated)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or(DecodeError::Truncated)?;
        let len = u32::from_be_bytes(*len) as usize;
        if after.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (part, after) = after.split_at(len);
        parts.push(part);
        rest = after;
    }
    Ok(StreamMessage::Sync {
        role,
        id: u64::from_le_bytes(*id),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_typed_errors() {
        let parts = vec![b"one".to_vec(), Vec::new(), b"three".to_vec()];
        let encoded = encode_sync(Role::Responder, 42, &parts);
        assert_eq!(
            decode(&encoded),
            Ok(StreamMessage::Sync {
                role: Role::Responder,
                id: 42,
                parts: vec![&b"one"[..], &b""[..], &b"three"[..]],
            })
        );
        assert_eq!(
            decode(&encode_swim(b"frame")),
            Ok(StreamMessage::Swim(&b"frame"[..]))
        );
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(DecodeError::UnknownTag(9)));
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Truncated));
        for cut in 10..encoded.len() {
            // Every truncation inside a part is caught, none panics.
            let _ = decode(&encoded[..cut]);
        }
        assert_eq!(
            decode(&encoded[..encoded.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }
}
