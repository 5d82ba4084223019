//! How stream messages are framed: a 4-byte big-endian length, then that many
//! bytes. A stream may carry several messages back to back.
//!
//! [`FrameDecoder`] is the receiving side as a plain state machine, with no
//! I/O, so the transport's stream reader and the fuzzer run the same code.

use crate::error::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Most bytes reserved ahead of arrival for one frame. A frame's buffer grows
/// with what actually arrives, not with what its header claims, so a peer
/// cannot make us allocate for bytes it never sends.
const RESERVE_AHEAD: usize = 64 * 1024;

/// The length prefix for a message of `len` bytes.
///
/// # Errors
///
/// [`Error::FrameTooLarge`] if `len` exceeds `max_frame_bytes` (or 4 GiB).
pub fn frame_header(len: usize, max_frame_bytes: usize) -> Result<[u8; 4], Error> {
    let too_large = || Error::FrameTooLarge {
        len,
        max: max_frame_bytes,
    };
    if len > max_frame_bytes {
        return Err(too_large());
    }
    u32::try_from(len)
        .map(u32::to_be_bytes)
        .map_err(|_| too_large())
}

/// Reassembles length-framed messages from a stream's bytes, in whatever
/// chunks they arrive.
///
/// ```
/// use gossip_transport_quic::{FrameDecoder, frame_header};
///
/// let mut wire = frame_header(5, 1024).unwrap().to_vec();
/// wire.extend_from_slice(b"hello");
/// let mut decoder = FrameDecoder::new(1024);
/// let (frame, rest) = decoder.push(&wire[..3]).unwrap();
/// assert!(frame.is_none() && rest.is_empty());
/// let (frame, _) = decoder.push(&wire[3..]).unwrap();
/// assert_eq!(frame.as_deref(), Some(&b"hello"[..]));
/// assert!(decoder.finish().is_ok());
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// The announced length of the frame being read, once its header is in.
    body_len: Option<usize>,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max_frame_bytes,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            body_len: None,
            body: Vec::new(),
        }
    }

    /// Bytes still needed to finish the header or frame being read: a read of
    /// at most this many never spans two frames.
    pub fn wanted(&self) -> usize {
        match self.body_len {
            Some(len) => len - self.body.len(),
            None => FRAME_HEADER_LEN - self.header_len,
        }
    }

    /// Takes bytes up to the end of the current frame. Returns the frame if
    /// it completed, and the bytes not consumed (the start of the next one):
    /// push them again.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] as soon as a header announces more than the
    /// cap; the stream should then be dropped.
    pub fn push<'a>(&mut self, bytes: &'a [u8]) -> Result<(Option<Vec<u8>>, &'a [u8]), Error> {
        let mut rest = bytes;
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let take = rest.len().min(FRAME_HEADER_LEN - self.header_len);
                let (head, tail) = rest.split_at(take);
                self.header[self.header_len..self.header_len + take].copy_from_slice(head);
                self.header_len += take;
                rest = tail;
                if self.header_len < FRAME_HEADER_LEN {
                    return Ok((None, rest));
                }
                let len = u32::from_be_bytes(self.header) as usize;
                if len > self.max_frame_bytes {
                    return Err(Error::FrameTooLarge {
                        len,
                        max: self.max_frame_bytes,
                    });
                }
                self.body_len = Some(len);
                self.body = Vec::with_capacity(len.min(RESERVE_AHEAD));
                len
            }
        };
        let take = rest.len().min(len - self.body.len());
        let (head, tail) = rest.split_at(take);
        self.body.extend_from_slice(head);
        if self.body.len() < len {
            return Ok((None, tail));
        }
        self.header_len = 0;
        self.body_len = None;
        Ok((Some(std::mem::take(&mut self.body)), tail))
    }

    /// Checks that the stream ended between frames.
    ///
    /// # Errors
    ///
    /// [`Error::TruncatedFrame`] if a frame was cut short.
    pub fn finish(&self) -> Result<(), Error> {
        if self.header_len == 0 {
            return Ok(());
        }
        Err(Error::TruncatedFrame {
            expected: self.body_len,
            received: self.body.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for message in messages {
            wire.extend_from_slice(&frame_header(message.len(), 1024).unwrap());
            wire.extend_from_slice(message);
        }
        wire
    }

    fn decode_in_chunks(wire: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut decoder = FrameDecoder::new(1024);
        let mut frames = Vec::new();
        for mut piece in wire.chunks(chunk) {
            while !piece.is_empty() {
                let (frame, rest) = decoder.push(piece)?;
                frames.extend(frame);
                piece = rest;
            }
        }
        decoder.finish().map(|()| frames)
    }

    #[test]
    fn frames_survive_any_chunking() {
        let messages: [&[u8]; 4] = [b"one", b"", b"three", &[7; 300]];
        let wire = framed(&messages);
        for chunk in 1..=wire.len() {
            let frames = decode_in_chunks(&wire, chunk).unwrap();
            assert_eq!(frames, messages.map(<[u8]>::to_vec), "chunk {chunk}");
        }
    }

    #[test]
    fn a_cut_frame_and_an_oversized_header_are_typed_errors() {
        let wire = framed(&[b"hello"]);
        for cut in 1..wire.len() {
            assert!(matches!(
                decode_in_chunks(&wire[..cut], 2),
                Err(Error::TruncatedFrame { .. })
            ));
        }
        let huge = u32::MAX.to_be_bytes();
        let mut decoder = FrameDecoder::new(1024);
        assert!(matches!(
            decoder.push(&huge),
            Err(Error::FrameTooLarge {
                len: 4_294_967_295,
                max: 1024
            })
        ));
        assert!(matches!(
            frame_header(1025, 1024),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_header_that_claims_much_reserves_little() {
        let mut decoder = FrameDecoder::new(usize::MAX);
        let (frame, _) = decoder.push(&(u32::MAX).to_be_bytes()).unwrap();
        assert!(frame.is_none());
        assert!(decoder.body.capacity() <= RESERVE_AHEAD);
        assert_eq!(decoder.wanted(), u32::MAX as usize);
    }
}
