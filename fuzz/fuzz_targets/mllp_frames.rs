//! Any byte stream, pushed in arbitrary pieces → the MLLP decoder: never a
//! panic, and memory stays bounded by the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = hl7v2::mllp::FrameDecoder::new(4096);
    let split = data.first().map(|b| *b as usize + 1).unwrap_or(1);
    for chunk in data.chunks(split) {
        dec.push(chunk);
        while let Some(ev) = dec.next_event() {
            if let hl7v2::mllp::FrameEvent::Frame(f) = ev {
                assert!(f.len() <= 4096);
            }
        }
        assert!(dec.buffered_len() <= 4096 + split + 1);
    }
});
