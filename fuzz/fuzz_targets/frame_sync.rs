//! Any bytes as an anti-entropy sync message, through the same core frame
//! decoder with the sync limits. Whatever decodes survives re-encoding.
#![no_main]

use gossip_antientropy::SyncMessage;
use gossip_core::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let config = gossip_fuzz::sync_config();
    let Ok(frame) = decode_frame::<SyncMessage>(bytes, config.cluster, &config.limits) else {
        return;
    };
    let body = postcard::to_allocvec(&frame.body).expect("a decoded message re-encodes");
    let again: SyncMessage = postcard::from_bytes(&body).expect("a re-encoded message decodes");
    assert_eq!(again, frame.body);
});
