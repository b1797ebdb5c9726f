//! `BootRecord::decode` never panics, and whatever it accepts re-encodes to
//! a frame that decodes to the same record.
//!
//! Each input is decoded as it is and, so that the fuzzer reaches the body
//! decoder rather than stopping at the checksum, once more framed as a
//! record body with a correct magic, length and checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_core::{BootRecord, RECORD_MAGIC};
use sha2::{Digest, Sha256};

fn framed(body: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(body.len()).ok()?;
    let mut frame = RECORD_MAGIC.to_vec();
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    let checksum = Sha256::digest(&frame);
    frame.extend_from_slice(&checksum[..8]);
    Some(frame)
}

fuzz_target!(|data: &[u8]| {
    for bytes in [Some(data.to_vec()), framed(data)].into_iter().flatten() {
        if let Ok(record) = BootRecord::decode(&bytes) {
            let frame = record.encode().expect("a decoded record re-encodes");
            assert_eq!(BootRecord::decode(&frame), Ok(record));
        }
    }
});
