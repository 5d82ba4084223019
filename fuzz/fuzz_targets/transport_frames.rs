//! Any bytes as a QUIC stream of length-framed messages, arriving in chunks
//! whose sizes the input also chooses. Frames never exceed the cap, never
//! hold more than arrived, and the same bytes in one piece give the same
//! frames.
//!
//! Input: 2 bytes of frame cap (big-endian), 1 byte `n`, `n` chunk sizes,
//! then the stream's bytes.
#![no_main]

use gossip_transport_quic::{FRAME_HEADER_LEN, FrameDecoder};
use libfuzzer_sys::fuzz_target;

/// Decodes `wire` in chunks of the given sizes (cycled); stops at the first
/// error. Returns the frames and whether the stream ended cleanly.
fn decode(max: usize, wire: &[u8], chunks: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = usize::from(*sizes.next().unwrap_or(&255)).max(1);
        let (mut piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        while !piece.is_empty() {
            assert!(decoder.wanted() > 0, "between pushes a decoder wants bytes");
            match decoder.push(piece) {
                Ok((frame, tail)) => {
                    assert!(tail.len() < piece.len(), "every push consumes");
                    frames.extend(frame);
                    piece = tail;
                }
                Err(_) => return (frames, false),
            }
        }
    }
    let ok = decoder.finish().is_ok();
    (frames, ok)
}

fuzz_target!(|input: &[u8]| {
    let Some((max, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*max));
    let Some((&count, rest)) = rest.split_first() else {
        return;
    };
    let (chunks, wire) = rest.split_at(usize::from(count).min(rest.len()));
    let (frames, ok) = decode(max, wire, chunks);
    let carried: usize = frames.iter().map(|f| f.len() + FRAME_HEADER_LEN).sum();
    assert!(carried <= wire.len());
    assert!(frames.iter().all(|f| f.len() <= max));
    if ok {
        assert_eq!(carried, wire.len(), "a clean end consumed every byte");
    }
    let (whole, whole_ok) = decode(max, wire, &[]);
    assert_eq!(frames, whole, "chunking changed the frames");
    assert_eq!(ok, whole_ok);
});
