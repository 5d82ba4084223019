//! Any bytes as a SWIM datagram: the core frame decoder (header, body, rumor
//! section) with SWIM's message as the body. Whatever decodes must respect
//! the limits and survive re-encoding unchanged.
#![no_main]

use gossip_core::decode_frame;
use gossip_swim::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let limits = gossip_fuzz::swim_config(0).limits;
    let Ok(frame) = decode_frame::<Message>(bytes, gossip_fuzz::cluster(), &limits) else {
        return;
    };
    assert!(frame.rumors.len() <= limits.max_rumors_per_frame);
    for rumor in &frame.rumors {
        rumor
            .validate(&limits)
            .expect("a decoded rumor passed validation");
    }
    let body = postcard::to_allocvec(&frame.body).expect("a decoded message re-encodes");
    let again: Message = postcard::from_bytes(&body).expect("a re-encoded message decodes");
    assert_eq!(again, frame.body);
});
