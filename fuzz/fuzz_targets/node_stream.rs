//! Any bytes as a node stream message (a large SWIM frame, or a turn of a
//! sync session). Parts never reach past the input, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use gossip_node::stream::{self, StreamMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match stream::decode(bytes) {
        Ok(StreamMessage::Swim(frame)) => assert_eq!(stream::encode_swim(frame), bytes),
        Ok(StreamMessage::Sync { role, id, parts }) => {
            let owned: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
            assert_eq!(stream::encode_sync(role, id, &owned), bytes);
        }
        Err(_) => {}
    }
});
